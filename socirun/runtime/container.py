"""The engine of `socirun run`: docker run's behaviour over containerd's gRPC API, for options and a context the
command (socirun.commands.run) built once, reporting through the `emit` it was handed.

resolve the image per --pull (pulling with the engine and its progress face when needed) → rw snapshot under a
lease → volumes, GPUs, network namespace + CNI → spec (pure) → Containers.Create → task with FIFOs → wait →
the container's exit code; teardown (task, CNI DEL, netns; with --rm container, snapshot, anonymous volumes).
A container still running when socirun is ended (--sig-proxy=false and a signal) is handed to the -d reaper
instead: nothing is removed under a live task.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from socirun import events as ev
from socirun.containerd import labels
from socirun.containerd.client import ContainerdClient
from socirun.containerd.runtime import ContainerRunError, Runtime
from socirun.containerd.types import Mount
from socirun.errors import EXIT_DAEMON, ContainerdError, ImageNotFoundError, SocirunError, UsageError
from socirun.oci import INDEX_TYPES, Descriptor, Platform, chain_ids
from socirun.pull.leases import owner_labels
from socirun.pull.request import PullChoices, PullSetup
from socirun.reference import ImageReference
from socirun.registry.client import select_platform
from socirun.runtime import cni, logs, reaper
from socirun.runtime.apparmor import (
    DEFAULT_PROFILE,
    apparmor_enabled,
    container_profile,
    ensure_default_profile,
    find_parser,
)
from socirun.runtime.gpus import GpuInjection, plan_gpus
from socirun.runtime.image_users import read_rootfs_file
from socirun.runtime.lifecycle import (
    ContainerState,
    claim_ports,
    cni_ipam_dir,
    prepare_data_root,
    reserve_name,
    sweep_abandoned,
    teardown,
)
from socirun.runtime.options import CAPABILITIES, RunOptions
from socirun.runtime.seccomp import load_profile as load_seccomp_profile
from socirun.runtime.spec import (
    ImageConfig,
    SpecDevice,
    SpecInputs,
    SpecMount,
    bounding_caps,
    build_spec,
    device_from_stat,
    hosts_file,
    image_volume_on_kernel_fs,
    resolv_conf,
    rlimit_error_sentence,
    rlimit_problem,
)
from socirun.runtime.stdio import TaskIO
from socirun.runtime.tty import raw_mode, terminal_size
from socirun.runtime.volumes import resolve_volumes
from socirun.text import terminal_safe

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
OUTPUT_DRAIN_S = 10.0
_SKIP_DEV_DIRS = {"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev", "console"}


# ---------------------------------------------------------------------------------------------- image


async def _read_json(ctd: ContainerdClient, digest: str) -> Any:
    return json.loads(await ctd.read_content(digest))


async def local_image(ctd: ContainerdClient, name: str, platform: Platform) -> tuple[ImageConfig, str] | None:
    """(image config, top chainID) of image record `name` for `platform`, or None when it is not there."""
    record = await ctd.image_get(name)
    if record is None:
        return None
    target: Descriptor = record.target
    try:
        doc = await _read_json(ctd, target.digest)
        if target.media_type in INDEX_TYPES or "manifests" in doc:
            entries = [Descriptor.from_json(entry) for entry in doc.get("manifests") or []]
            # The same choice the pull made (artifacts such as a SOCI index entry are never the image).
            chosen = select_platform(entries, platform) or next(
                (d for d in entries if d.platform is None and not d.artifact_type), None
            )
            if chosen is None:
                return None
            doc = await _read_json(ctd, chosen.digest)
        config_blob = await _read_json(ctd, str(doc["config"]["digest"]))
    except (SocirunError, KeyError, ValueError):
        return None  # content missing or unreadable: treat as not present, a pull repairs it
    diff_ids = list((config_blob.get("rootfs") or {}).get("diff_ids") or [])
    if not diff_ids:
        raise SocirunError(f"image {name} has no layers; socirun cannot run it")
    return ImageConfig.from_blob(config_blob), chain_ids(diff_ids)[-1]


def _since_command_start() -> float:
    """Seconds since this socirun process began: the "time to container start" the user waited."""
    import psutil

    return max(0.0, time.time() - psutil.Process().create_time())


@dataclass(frozen=True)
class RunContext:
    """Where the container goes and how its image is brought in: decided once by the command (socirun.commands.run)
    from the flags, the configuration and the environment, then only read."""

    address: str
    namespace: str
    data_root: str  # absolute
    reference: ImageReference
    expanded_from: str | None  # the short-name alias the user typed, if any
    platform: Platform
    snapshotter: str | None  # --snapshotter / CONTAINERD_SNAPSHOTTER / config; None: the plan picks
    pull_choices: PullChoices  # what the flags asked of a pull (snapshotter, --pull-mode)
    # The pull's shared inputs (mode, host, transfer, SOCI config), gathered on first use and then kept: a run of
    # an image that is already here probes nothing (SOCI's config may take a `config dump` subprocess).
    pull: Callable[[], PullSetup]
    hosts_dir: str | None
    insecure_registries: tuple[str, ...]
    soci_log: str | None
    bridge: cni.BridgeNetwork


@dataclass(frozen=True)
class EnsuredImage:
    """The image ready to run (nerdctl's EnsuredImage): its config, top chainID and the snapshotter it is in."""

    config: ImageConfig
    top_chain_id: str
    snapshotter: str


async def ensure_image(ctd: ContainerdClient, opts: RunOptions, ctx: RunContext, emit: ev.Emit, *,
                       observe: bool = True) -> EnsuredImage:
    """The image ready to run. With no snapshotter chosen, an image already unpacked for overlayfs or soci is used
    as it is; a pull lets the plan pick (SOCI lazy loading when the host and the image allow it), exactly as
    `socirun pull` does. `observe=False` when the caller already follows lazily loaded layers."""
    name = str(ctx.reference)
    found = None if opts.pull == "always" else await local_image(ctd, name, ctx.platform)
    if found is not None:
        for candidate in [ctx.snapshotter] if ctx.snapshotter else ["overlayfs", "soci"]:
            with contextlib.suppress(ContainerdError):  # a snapshotter this containerd does not have
                if await ctd.snapshot_stat(candidate, found[1]) is not None:
                    return EnsuredImage(found[0], found[1], candidate)
    if opts.pull == "never":
        raise ImageNotFoundError(f"No such image: {ctx.reference.familiar()} (--pull=never)")
    if found is None and opts.pull == "missing" and not opts.quiet:
        print(f"Unable to find image '{terminal_safe(ctx.reference.familiar())}' locally", file=sys.stderr)
    from socirun.pull.engine import pull_image
    from socirun.pull.request import build_pull_request
    from socirun.registry.client import RegistryClient
    from socirun.soci.observer import observe_lazy_layers

    setup = ctx.pull()
    request = build_pull_request(ctx.reference, ctx.platform, setup, ctx.pull_choices,
                                 expanded_from=ctx.expanded_from)
    async with RegistryClient(hosts_dir=ctx.hosts_dir, insecure=list(ctx.insecure_registries)) as registry:
        if observe:
            async with observe_lazy_layers(emit, setup.soci, ctx.soci_log) as tapped:
                result = await pull_image(ctd, registry, request, tapped)
        else:
            result = await pull_image(ctd, registry, request, emit)
    # The pull's own result says what it wrote: the config it stored and the chain it unpacked.
    image = ImageConfig.from_blob(json.loads(result.image.config_bytes))
    return EnsuredImage(image, result.top_chain_id, result.snapshotter)


# ---------------------------------------------------------------------------------------------- host lookups


def find_init_binary() -> str:
    # Static builds first: the container may have no libc for a dynamically linked tini.
    for name in ("docker-init", "tini-static", "tini"):
        found = shutil.which(name)
        if found:
            return found
    raise UsageError("--init needs tini or docker-init on the host (Debian/Ubuntu: apt-get install tini)")


def host_devices(root: str = "/dev") -> list[SpecDevice]:
    """Every device node under /dev (one level of subdirectories), for --privileged (containerd's HostDevices)."""
    out: list[SpecDevice] = []
    for entry in sorted(os.listdir(root)):
        if entry in _SKIP_DEV_DIRS:
            continue
        path = os.path.join(root, entry)
        paths = [os.path.join(path, e) for e in sorted(os.listdir(path))] if os.path.isdir(path) and not \
            os.path.islink(path) else [path]  # fmt: skip
        for p in paths:
            if os.path.islink(p):
                continue
            found = _stat_device(p, p)
            if found is not None:
                out.append(found)
    return out


def _own_bounding_caps() -> tuple[str, ...]:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("CapBnd:"):
                return bounding_caps(line.split()[1])
    return CAPABILITIES


def _stat_device(host_path: str, container_path: str, permissions: str = "rwm") -> SpecDevice | None:
    try:
        return device_from_stat(container_path, os.stat(host_path), permissions)
    except OSError:
        return None


def device_for(host_path: str, container_path: str, permissions: str) -> SpecDevice:
    found = _stat_device(host_path, container_path, permissions)
    if found is None:
        raise UsageError(f'error gathering device information while adding custom device "{host_path}": '
                         "not a device node")  # fmt: skip
    return found


# ---------------------------------------------------------------------------------------------- labels


def image_labels_for_container(image_labels: Mapping[str, str]) -> dict[str, str]:
    """The image's labels a container inherits (as nerdctl's WithImageConfigLabels), less the reserved ones."""
    return {k: v for k, v in image_labels.items() if not k.startswith(labels.RESERVED_PREFIXES)}


def container_labels(opts: RunOptions, image: ImageConfig, *, name: str, namespace: str, hostname: str,
                     state_dir: str, platform: Platform, mounts: list[dict[str, object]],
                     anonymous: list[str]) -> dict[str, str]:  # fmt: skip
    """nerdctl's labels (socirun.containerd.labels), so `nerdctl ps` shows socirun's containers."""
    out: dict[str, str] = image_labels_for_container(image.labels)
    out.update({
        labels.NAMESPACE: namespace,
        labels.NAME: name,
        labels.HOSTNAME: hostname,
        labels.STATE_DIR: state_dir,
        labels.NETWORKS: json.dumps([opts.network if opts.network != "container"
                                     else f"container:{opts.network_container}"]),
        labels.PLATFORM: str(platform),
        labels.EXTRA_HOSTS: json.dumps([f"{h}:{ip}" for h, ip in opts.add_hosts]),
        labels.IPC: json.dumps({"mode": opts.ipc, "victimContainerId": opts.ipc_container,
                                "shmSize": str(opts.shm_size)}),
        labels.AUTO_REMOVE: str(opts.rm).lower(),
        labels.STOP_SIGNAL: opts.stop_signal if opts.stop_signal != "SIGTERM" or
        not image.stop_signal else image.stop_signal,
    })  # fmt: skip
    if opts.privileged:
        out[labels.PRIVILEGED] = "true"
    if opts.user or image.user:
        out[labels.USER] = opts.user or image.user
    if opts.stop_timeout is not None:
        out[labels.STOP_TIMEOUT] = str(opts.stop_timeout)
    if anonymous:
        out[labels.ANONYMOUS_VOLUMES] = json.dumps(anonymous)
    for i, record in enumerate(mounts):
        out[f"{labels.MOUNTS_PREFIX}{i}"] = json.dumps(record)
    out.update(opts.labels)
    return out


# ---------------------------------------------------------------------------------------------- run


class CidFile:
    """--cidfile as docker does it: created exclusively before anything else exists (O_EXCL never follows a
    symlink, so a dangling one planted at the path is refused, not written through), the ID written as soon as the
    container exists, the file removed again when the run ends without one."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.written = False
        try:
            self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                           0o666)  # fmt: skip
        except FileExistsError:
            raise SocirunError("Container ID file found, make sure the other container isn't running or delete "
                               f"{path}") from None  # fmt: skip
        except OSError as err:
            reason = (err.strerror or str(err)).lower()
            raise SocirunError(f"failed to create the container ID file: open {path}: {reason}") from None

    def write(self, container_id: str) -> None:
        if self._fd is None:
            return
        try:
            data = container_id.encode()
            while data:
                data = data[os.write(self._fd, data):]
        except OSError as err:
            raise SocirunError(f"failed to write the container ID to the file {self.path}: "
                               f"{err.strerror or err}") from None  # fmt: skip
        finally:
            os.close(self._fd)
            self._fd = None
        self.written = True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if not self.written:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


async def _reserve_name(rt: Runtime, ctx: RunContext, name: str, container_id: str) -> None:
    async def labelled() -> str | None:
        taken = await rt.list_containers([labels.name_filter(name)])
        return taken[0].id if taken else None

    async def exists(holder_id: str) -> bool:
        return await rt.get_container(holder_id) is not None

    await reserve_name(ctx.data_root, ctx.namespace, name, container_id, labelled=labelled, container_exists=exists)


async def _sweep_killed_runs(rt: Runtime, ctx: RunContext) -> None:
    """Clean what earlier runs that were killed left (socirun.runtime.lifecycle.sweep_abandoned). Best effort: a
    failure here must not stop this run, so it is reported and the run goes on."""
    try:
        await sweep_abandoned(rt, ctx.data_root, ctx.namespace)
    except (SocirunError, OSError) as err:
        print(f"socirun: cleanup of earlier runs: {terminal_safe(str(err))}", file=sys.stderr)


async def _joined_ns(rt: Runtime, target: str, kind: str) -> str:
    found = await rt.find_container(target)
    if found is None:
        raise SocirunError(f"No such container: {target}")
    task = await rt.get_task(found.id)
    if task is None or task.status != "RUNNING":
        raise SocirunError(f"cannot join the {kind} namespace of {target}: it is not running")
    return f"/proc/{task.pid}/ns/{kind}"


def _nr_open() -> int | None:
    """The kernel's most open files per process (fs.nr_open), None where /proc does not say."""
    try:
        return int(Path("/proc/sys/fs/nr_open").read_text(encoding="ascii"))
    except (OSError, ValueError):
        return None


async def run_container(opts: RunOptions, ctx: RunContext, emit: ev.Emit, *, print_id: bool = True,
                        observe: bool = True) -> int:
    """Pull if needed, create and start the container; attached, wait for it and return its exit code.

    Events go to `emit` (the face is the caller's choice); `print_id=False` leaves printing a detached
    container's ID to the caller (the TUI prints it when the user leaves); `observe=False` when the caller
    already follows lazily loaded layers, or when its face shows nothing of them."""
    cidfile = CidFile(opts.cidfile) if opts.cidfile else None  # first, as docker: nothing exists yet
    try:
        return await _run_container(opts, ctx, emit, cidfile, print_id=print_id, observe=observe)
    except ContainerRunError as err:
        sentence = rlimit_error_sentence(err.message)  # runc's raw "error setting rlimit type N"
        if sentence is None:
            raise
        raise ContainerRunError(sentence) from None
    finally:
        if cidfile is not None:
            cidfile.close()


async def _run_container(opts: RunOptions, ctx: RunContext, emit: ev.Emit, cidfile: CidFile | None, *,
                         print_id: bool, observe: bool) -> int:  # fmt: skip
    problem = rlimit_problem(opts.ulimits, _nr_open())
    if problem:
        raise UsageError(problem)
    prepare_data_root(ctx.data_root)
    gpu: GpuInjection | None = plan_gpus(opts.gpus) if opts.gpus is not None else None
    async with await ContainerdClient.connect(ctx.address, ctx.namespace) as ctd, \
            _observing_lazy_layers(emit, ctx, observe) as emit:
        rt = Runtime(ctd)
        await _sweep_killed_runs(rt, ctx)
        image = await ensure_image(ctd, opts, ctx, emit, observe=False)
        for path in (v for v in image.config.volumes if image_volume_on_kernel_fs(v)):
            emit(ev.WarningMessage(message=f"ignoring the image's VOLUME {path}: a volume there would hide the "
                                           "kernel filesystem the container needs"))  # fmt: skip
        container_id = secrets.token_hex(32)
        name = opts.name or f"{os.path.basename(ctx.reference.path)}-{container_id[:5]}"
        await _reserve_name(rt, ctx, name, container_id)
        state_dir = os.path.join(ctx.data_root, "containers", ctx.namespace, container_id)
        state = ContainerState(
            id=container_id, name=name, namespace=ctx.namespace, address=ctx.address, snapshotter=image.snapshotter,
            data_root=ctx.data_root, state_dir=state_dir, rm=opts.rm, network=opts.network,
            image=ctx.reference.familiar(), created=time.time(), tty=opts.tty, log_max_size=opts.log_max_size,
            log_max_file=opts.log_max_file,
        )
        created = False
        try:
            os.makedirs(state_dir, mode=0o700)
            # One lease from Prepare to Containers.Create: once the record references the snapshot the lease
            # can go; ending it earlier lets containerd's GC remove the unreferenced snapshot.
            async with ctd.lease(labels=owner_labels("run")):  # a killed run's lease ends at the next run
                spec, record_labels, rootfs = await _prepare(rt, opts, image, ctx, state, gpu)
                await rt.create_container(container_id, image=str(ctx.reference), runtime=opts.runtime,
                                          runtime_binary=opts.runtime_binary, spec=spec,
                                          snapshotter=image.snapshotter, labels=record_labels)  # fmt: skip
            if cidfile is not None:
                cidfile.write(container_id)  # before `created`: a failed write removes the container again
            created = True
            emit(ev.ContainerCreated(container_id=container_id, name=name))
        except BaseException:
            if not created:
                await teardown(rt, state, remove=True)
            raise
        if opts.detach:
            return await _run_detached(rt, opts, state, rootfs, emit, print_id=print_id)
        return await _run_foreground(rt, opts, state, rootfs, emit)


def _observing_lazy_layers(emit: ev.Emit, ctx: RunContext,
                           observe: bool) -> contextlib.AbstractAsyncContextManager[ev.Emit]:
    """Follow the layers SOCI mounts lazily for as long as the container runs, not only during the pull: the
    files it reads and the spans SOCI fetches for them happen after the start. SOCI's config is gathered only
    once a layer is lazy (an image already present needs none of it)."""
    if not observe:
        return contextlib.nullcontext(emit)
    from socirun.soci.observer import observe_lazy_layers

    return observe_lazy_layers(emit, lambda: ctx.pull().soci, ctx.soci_log)


async def _prepare(rt: Runtime, opts: RunOptions, ensured: EnsuredImage, ctx: RunContext, state: ContainerState,
                   gpu: GpuInjection | None) -> tuple[dict[str, Any], dict[str, str], list[Mount]]:
    """Snapshot, volumes, network and files; returns the spec, the labels and the rootfs mounts."""
    ctd = rt.ctd
    image, bridge = ensured.config, ctx.bridge
    rootfs = await ctd.snapshot_prepare(state.snapshotter, state.id, ensured.top_chain_id, {})
    hostname = opts.hostname or state.id[:12]
    image_volumes = [v for v in image.volumes if not image_volume_on_kernel_fs(v)]  # warned in run_container
    volumes = resolve_volumes(opts.volumes, image_volumes, state.data_root, state.namespace, os.getcwd())
    state.anonymous_volumes = volumes.anonymous
    inputs = SpecInputs(container_id=state.id, namespace=state.namespace, hostname=hostname,
                        passwd=read_rootfs_file(rootfs, "/etc/passwd"),
                        group=read_rootfs_file(rootfs, "/etc/group"))  # fmt: skip
    inputs.mounts += volumes.mounts
    if gpu is not None:
        inputs.devices += gpu.devices
        inputs.mounts += gpu.mounts
        inputs.env += gpu.env
        for stage, hooks in gpu.hooks.items():
            inputs.hooks.setdefault(stage, []).extend(hooks)
    for dev in opts.devices:
        if dev.cdi_name:
            raise UsageError(f"CDI device injection failed: unresolvable CDI devices {dev.cdi_name}; "
                             "use --gpus for NVIDIA GPUs")  # fmt: skip
        inputs.devices.append(device_for(dev.host_path, dev.container_path, dev.permissions))
    if opts.privileged:
        inputs.devices += host_devices()
    if opts.init:
        inputs.init_binary = find_init_binary()
    inputs.host_caps = _own_bounding_caps()
    inputs.seccomp_profile = load_seccomp_profile(opts.seccomp, privileged=opts.privileged)
    inputs.apparmor_enabled = apparmor_enabled()
    if container_profile(opts.apparmor, enabled=inputs.apparmor_enabled, privileged=opts.privileged) == DEFAULT_PROFILE:
        ensure_default_profile(parser=find_parser())  # docker loads docker-default on demand too
    inputs.cgroup_v2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
    if opts.tty:
        inputs.console_size = terminal_size(sys.stdin.fileno()) or terminal_size(sys.stdout.fileno())
    inputs.host_ipc_dirs = tuple(d for d in ("/dev/shm", "/dev/mqueue") if os.path.isdir(d))
    if opts.ipc == "container":
        inputs.ipc_ns_path = await _joined_ns(rt, opts.ipc_container, "ipc")
    container_ip: str | None = None
    if opts.network == "container":
        inputs.netns_path = await _joined_ns(rt, opts.network_container, "net")
    elif opts.network in ("bridge", "none"):
        ns_name = cni.netns_name(state.id)
        netns_path = cni.create_netns(ns_name)
        state.netns = ns_name
        inputs.netns_path = netns_path
        if opts.network == "bridge":
            state.bridge = asdict(bridge)
            publish = claim_ports(state, list(opts.publish))  # host ports checked, 0 chosen, recorded
            plugins = cni.Cni(cni.find_plugin_dir(), bridge, cni_ipam_dir(state.data_root))
            container_ip = plugins.add(state.id, netns_path, publish) or None
            with open(os.path.join(state.state_dir, "network-config.json"), "w", encoding="utf-8") as f:
                json.dump({"portMappings": cni.port_mappings(publish)}, f)
        else:
            cni.Cni(cni.find_plugin_dir(), bridge, cni_ipam_dir(state.data_root)).loopback(state.id, netns_path)
    state.save()
    etc = _write_etc_files(opts, state.state_dir, hostname, container_ip)
    inputs.mounts = [*etc, *inputs.mounts]
    spec = build_spec(opts, image, inputs)
    state.command = list(spec.get("process", {}).get("args") or [])
    state.save()
    record_labels = container_labels(opts, image, name=state.name, namespace=state.namespace, hostname=hostname,
                                     state_dir=state.state_dir, platform=ctx.platform, mounts=volumes.records,
                                     anonymous=volumes.anonymous)  # fmt: skip
    return spec, record_labels, rootfs


def _write_etc_files(opts: RunOptions, state_dir: str, hostname: str, ip: str | None) -> list[SpecMount]:
    host_resolv = ""
    with contextlib.suppress(OSError):
        host_resolv = Path("/etc/resolv.conf").read_text(encoding="utf-8")
    files = {
        "hostname": hostname + "\n",
        "hosts": hosts_file(hostname, ip, opts.add_hosts),
        "resolv.conf": resolv_conf(host_resolv, opts.dns, opts.dns_search, opts.dns_options,
                                   host_network=opts.network == "host"),
    }  # fmt: skip
    mounts = []
    for name, text in files.items():
        path = os.path.join(state_dir, name)
        Path(path).write_text(text, encoding="utf-8")
        mounts.append(SpecMount(f"/etc/{name}", "bind", path, ("rbind", "rprivate", "rw")))
    return mounts


async def _run_detached(rt: Runtime, opts: RunOptions, state: ContainerState, rootfs: list[Mount],
                        emit: ev.Emit, *, print_id: bool = True) -> int:  # fmt: skip
    # No daemon: a reaper process drains the output FIFOs into <state>/<id>-json.log, waits for the exit and does
    # the teardown (network; with --rm everything). It starts before Tasks.Create because it must already hold
    # the FIFOs' read ends (the shim's open blocks Create). A file:// URI would do for non-tty output, but the
    # shim may still be copying when the task is deleted, and it is refused with -t.
    log_path = logs.log_path(state.state_dir, state.id)
    fifos = [os.path.join(state.state_dir, name) for name in (("out.fifo",) if opts.tty else ("out.fifo", "err.fifo"))]
    for fifo in fifos:
        os.mkfifo(fifo, 0o600)
    stdio = ("", fifos[0], "" if opts.tty else fifos[1])
    reaper.start(state.state_dir, log_path, fifos)
    try:
        pid = await rt.create_task(state.id, rootfs, stdio, opts.tty)
        await rt.start_task(state.id)
    except BaseException:
        for fifo in fifos:
            with contextlib.suppress(OSError):  # lets the reaper's readers see EOF; it then finds no task and leaves
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        await teardown(rt, state, remove=opts.rm)
        raise
    emit(ev.ContainerStarted(container_id=state.id, pid=pid, since_command_start=_since_command_start()))
    if print_id:
        print(state.id, flush=True)
    return 0


async def _run_foreground(rt: Runtime, opts: RunOptions, state: ContainerState, rootfs: list[Mount],
                          emit: ev.Emit) -> int:  # fmt: skip
    loop = asyncio.get_running_loop()
    fifo_dir = os.path.join(state.state_dir, "fifo")
    io = TaskIO(fifo_dir, state.id, stdin=opts.interactive, stderr=not opts.tty)
    io.create()
    io.start_output("stdout", sys.stdout.fileno())
    if not opts.tty:
        io.start_output("stderr", sys.stderr.fileno())
    exit_code = EXIT_DAEMON
    tty_fd = sys.stdin.fileno()
    started = False
    try:
        try:
            pid = await rt.create_task(state.id, rootfs, io.paths, opts.tty)
        except BaseException:
            io.unblock()
            raise
        wait = asyncio.ensure_future(rt.wait_task(state.id))
        with raw_mode(tty_fd) if (opts.tty and opts.interactive) else contextlib.nullcontext():
            try:
                await rt.start_task(state.id)
            except BaseException:
                wait.cancel()
                raise
            started = True
            if opts.interactive:
                # Only now: before Start, runc's init waits on the console, and what stdin brings would reach it
                # first. Its end (or CloseIO) makes the shim close the console's master, and the kernel's hang-up
                # kills the init ("cannot start a container that has stopped"); a Ctrl-C byte signals it. Input
                # typed meanwhile waits in our terminal's buffer (the shim opens the FIFO without blocking).

                def stdin_eof() -> None:
                    loop.call_soon_threadsafe(lambda: _background(rt.close_stdin(state.id)))

                io.start_input(sys.stdin.fileno(), stdin_eof)
            emit(ev.ContainerStarted(container_id=state.id, pid=pid, since_command_start=_since_command_start()))
            detached: asyncio.Future[int] = loop.create_future()
            installed = _install_signal_handlers(loop, rt, opts, state.id, detached)
            try:
                await asyncio.wait((wait, detached), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for sig in installed:
                    loop.remove_signal_handler(sig)
                if not wait.done():
                    wait.cancel()
        if wait.done() and not wait.cancelled():
            exit_code = wait.result()
            state.record_exit(exit_code, time.time())  # for `socirun ps` / `inspect` of a kept container
            await asyncio.to_thread(io.wait_output, OUTPUT_DRAIN_S)
            emit(ev.ContainerExited(container_id=state.id, exit_code=exit_code))
        else:
            # Left by a signal (--sig-proxy=false): the container keeps running, as docker's does when its
            # client goes, and `finally` hands it to a reaper. 128+signal: docker's status for a signalled client.
            exit_code = 128 + detached.result()
    finally:
        with contextlib.suppress(ValueError, OSError):
            sys.stdout.flush()
        if started and not await task_gone_or_stopped(rt, state.id):
            await _hand_over(state, io, opts)
            io.close()
        else:
            io.close()
            report_cleanup_errors(await teardown(rt, state, remove=opts.rm))
    return exit_code


def report_cleanup_errors(errors: list[str]) -> None:
    """One line each on stderr; their text comes from containerd and the CNI plugins."""
    for err in errors:
        print(f"socirun: cleanup: {terminal_safe(err)}", file=sys.stderr)


REAPER_OPEN_TIMEOUT_S = 10.0


async def task_gone_or_stopped(rt: Runtime, container_id: str) -> bool:
    """Whether the task exited (or is gone): only then may a foreground run tear the container down itself."""
    try:
        task = await rt.get_task(container_id)
    except ContainerdError:
        return False  # cannot tell: treat it as running, so nothing is removed under it
    return task is None or task.status == "STOPPED"


async def _hand_over(state: ContainerState, io: TaskIO, opts: RunOptions) -> None:
    """Leave a container that still runs to a reaper (the one `-d` uses): it drains the output into
    <state>/<id>-json.log (docker's json-file), waits for the exit and then tears down (with --rm: removes
    everything). Our readers close only once the reaper holds the FIFOs, so the shim never writes into a FIFO
    nobody reads."""
    log_path = logs.log_path(state.state_dir, state.id)
    fifos = [io.path("stdout"), *([] if opts.tty else [io.path("stderr")])]
    try:
        child = reaper.start(state.state_dir, log_path, fifos)
    except OSError as err:
        print(f"socirun: container {state.id[:12]} keeps running, and its reaper could not start "
              f"({terminal_safe(err.strerror or str(err))}); remove it with nerdctl rm -f", file=sys.stderr)
        return
    deadline = time.monotonic() + REAPER_OPEN_TIMEOUT_S
    while time.monotonic() < deadline and child.poll() is None and not reaper.holds(child.pid, fifos):
        await asyncio.sleep(0.02)
    removal = "removed when it exits" if opts.rm else "torn down when it exits"
    print(f"socirun: container {state.id[:12]} keeps running in the background; it is {removal}",
          file=sys.stderr)


_pending: set[asyncio.Future[None]] = set()


def _background(coro: Coroutine[Any, Any, None]) -> None:
    """Run a fire-and-forget RPC (signal forwarding, resize, CloseIO), keeping a reference until it is done."""
    fut = asyncio.ensure_future(coro)
    _pending.add(fut)
    fut.add_done_callback(_pending.discard)


# The signals that end a client that does not proxy them: the container is left running (docker's client exits
# and its daemon keeps the container), and socirun hands it to a reaper instead of exiting mid-teardown.
DETACHING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _install_signal_handlers(loop: asyncio.AbstractEventLoop, rt: Runtime, opts: RunOptions,
                             container_id: str, detached: asyncio.Future[int]) -> list[int]:  # fmt: skip
    installed: list[int] = []

    def resize() -> None:
        size = terminal_size(sys.stdin.fileno()) or terminal_size(sys.stdout.fileno())
        if size is not None:
            _background(rt.resize_pty(container_id, size[0], size[1]))

    if opts.tty:
        resize()
        loop.add_signal_handler(signal.SIGWINCH, resize)
        installed.append(signal.SIGWINCH)
    if opts.sig_proxy:
        for sig in FORWARDED_SIGNALS:

            def forward(s: int = int(sig)) -> None:
                _background(rt.kill_task(container_id, s))

            loop.add_signal_handler(sig, forward)
            installed.append(sig)
    else:
        for sig in DETACHING_SIGNALS:

            def detach(s: int = int(sig)) -> None:
                if not detached.done():
                    detached.set_result(s)

            loop.add_signal_handler(sig, detach)
            installed.append(sig)
    return installed
