"""The OCI runtime spec, built by a pure function from the options, the image config and lookups already made
in the rootfs (`/etc/passwd`, `/etc/group`) and on the host (devices, mounts, namespace paths).

Layering, as containerd and nerdctl do it (https://github.com/containerd/containerd/blob/v1.6.20/oci/spec_opts.go and
nerdctl's pkg/cmd/container/create.go):
containerd's Linux defaults, then nerdctl's changes (no /run tmpfs, a ro cgroup mount, NoNewPrivileges off; but
containerd's NOFILE 1024 is kept where nerdctl drops every rlimit, see DEFAULT_RLIMITS), docker's masked paths and
seccomp rules (socirun.runtime.seccomp), then the image's Env/Entrypoint/Cmd/WorkingDir/User, then the flags.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from socirun.errors import SocirunError
from socirun.oci import check_image_config
from socirun.runtime.apparmor import container_profile
from socirun.runtime.image_users import resolve_user
from socirun.runtime.options import CAPABILITIES, RunOptions, Ulimit, VolumeSpec
from socirun.runtime.seccomp import kernel_version, native_arch, to_oci_seccomp

OCI_VERSION = "1.0.2-dev"
DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_CAPS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
    "CAP_AUDIT_WRITE",
)  # fmt: skip
# docker's current default list (containerd 2's has all but /proc/interrupts): /proc/interrupts shows the host's
# IRQ counts, powercap its RAPL energy counters (a power side channel, CVE-2020-8694).
MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi", "/sys/devices/virtual/powercap",
    "/proc/interrupts",
)  # fmt: skip
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
# oci.WithDefaultUnixDevices: (major, minor) allowed in the device cgroup; -1 is "*".
DEFAULT_DEVICE_RULES = ((1, 3), (1, 8), (1, 7), (5, 0), (1, 5), (1, 9), (5, 1), (136, -1), (5, 2))
INIT_PATH_IN_CONTAINER = "/sbin/docker-init"
# containerd's default spec (oci.populateDefaultUnixSpec): NOFILE 1024:1024. nerdctl drops every rlimit and docker
# sets none by default, so their containers inherit the shim's limits: about 10^9 open files under current systemd
# (LimitNOFILE=infinity), which makes programs that loop over every fd or size tables by the limit crawl. The
# default is the one a login shell gets; --ulimit nofile=... replaces it.
DEFAULT_RLIMITS = (("RLIMIT_NOFILE", 1024, 1024),)
# The kernel filesystems the runtime mounts: a volume there would replace them with a host directory (and runc
# would create device nodes in it, for /dev).
KERNEL_FS_TARGETS = ("/proc", "/sys", "/dev")
CPU_PERIOD = 100_000


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image config (`config` object of the config blob) a run uses."""

    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    stop_signal: str = ""
    volumes: tuple[str, ...] = ()

    @classmethod
    def from_blob(cls, blob: Mapping[str, Any]) -> ImageConfig:
        check_image_config(blob, "the image's config")  # types first: a string Cmd must not become characters
        cfg = blob.get("config") or {}
        return cls(
            env=tuple(cfg.get("Env") or ()),
            entrypoint=tuple(cfg.get("Entrypoint") or ()),
            cmd=tuple(cfg.get("Cmd") or ()),
            working_dir=str(cfg.get("WorkingDir") or ""),
            user=str(cfg.get("User") or ""),
            labels=dict(cfg.get("Labels") or {}),
            stop_signal=str(cfg.get("StopSignal") or ""),
            volumes=tuple(sorted((cfg.get("Volumes") or {}).keys())),
        )


@dataclass(frozen=True)
class SpecMount:
    destination: str
    type: str
    source: str
    options: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"destination": self.destination, "type": self.type, "source": self.source,
                "options": list(self.options)}  # fmt: skip


@dataclass(frozen=True)
class SpecDevice:
    """A device node to create in the container (and allow in the device cgroup)."""

    path: str
    type: str  # "c" | "b"
    major: int
    minor: int
    file_mode: int = 0o666
    uid: int = 0
    gid: int = 0
    permissions: str = "rwm"


@dataclass(frozen=True)
class Hook:
    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()


@dataclass
class SpecInputs:
    """What the caller looked up on the host and in the rootfs; the builder itself does no I/O."""

    container_id: str
    namespace: str
    hostname: str
    netns_path: str | None = None  # joined network namespace; None with --network host
    ipc_ns_path: str | None = None  # for --ipc container:<c>
    passwd: str | None = None  # contents of the rootfs's /etc/passwd
    group: str | None = None
    mounts: list[SpecMount] = field(default_factory=list)  # volumes, /etc files, GPU libraries, init
    devices: list[SpecDevice] = field(default_factory=list)  # --device, --privileged host devices, GPUs
    env: list[str] = field(default_factory=list)  # from the GPU injection (NVIDIA_VISIBLE_DEVICES, ...)
    hooks: dict[str, list[Hook]] = field(default_factory=dict)  # "prestart", "createRuntime", ...
    init_binary: str | None = None  # host path of tini / docker-init for --init
    host_ipc_dirs: tuple[str, ...] = ("/dev/shm", "/dev/mqueue")  # those that exist on the host, for --ipc host
    # Our own bounding set: what "all capabilities" can mean here (runc fails on caps we do not hold).
    host_caps: tuple[str, ...] = CAPABILITIES
    # (columns, rows) of the user's terminal for -t: the pty starts at that size (docker sets consoleSize too),
    # so a process that asks at once does not see 0x0 before the first ResizePty arrives.
    console_size: tuple[int, int] | None = None
    # The seccomp profile to apply (socirun.runtime.seccomp.load_profile; None: unconfined), converted here for the
    # container's capabilities, on the host's architecture and kernel.
    seccomp_profile: Mapping[str, Any] | None = None
    arch: str = field(default_factory=native_arch)
    kernel: tuple[int, int] | None = field(default_factory=kernel_version)
    # /sys/module/apparmor/parameters/enabled: the container gets an AppArmor profile (socirun-default unless
    # --security-opt apparmor= / --privileged say otherwise; the caller has loaded it).
    apparmor_enabled: bool = False
    cgroup_v2: bool = False  # a unified hierarchy: the container gets its own cgroup namespace, as docker's default


# ------------------------------------------------------------------------------------------------ users


# resolve_user lives in socirun.runtime.image_users, next to the safe reads of /etc/passwd and /etc/group.


# ------------------------------------------------------------------------------------------------ pieces


def merge_env(base: Sequence[str], overrides: Sequence[str]) -> list[str]:
    """replaceOrAppendEnvValues: later entries replace earlier ones by key; `KEY` alone unsets KEY."""
    out: dict[str, str | None] = {}
    for item in base:
        key, sep, value = item.partition("=")
        out[key] = value if sep else None
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep:
            out[key] = value  # in place, as Go's replaceOrAppendEnvValues
        else:
            out.pop(key, None)
    return [f"{k}={v}" for k, v in out.items() if v is not None]


def process_args(opts: RunOptions, image: ImageConfig) -> list[str]:
    """docker's rule: --entrypoint replaces the image's and drops its Cmd; a command replaces Cmd."""
    entrypoint = list(image.entrypoint) if opts.entrypoint is None else list(opts.entrypoint)
    if opts.command:
        cmd = list(opts.command)
    elif opts.entrypoint is None:
        cmd = list(image.cmd)
    else:
        cmd = []
    args = entrypoint + cmd
    if not args:
        raise SocirunError("no command specified: the image has no Entrypoint or Cmd; give a command after IMAGE")
    return args


def bounding_caps(cap_bnd_hex: str) -> tuple[str, ...]:
    """The capability names in a /proc/<pid>/status CapBnd mask."""
    mask = int(cap_bnd_hex, 16)
    return tuple(name for bit, name in enumerate(CAPABILITIES) if mask >> bit & 1)


def capabilities(opts: RunOptions, host_caps: Sequence[str] = CAPABILITIES) -> list[str]:
    if opts.privileged:
        return list(host_caps)
    caps = list(DEFAULT_CAPS)
    if "ALL" in opts.cap_add:
        caps = list(host_caps)
    else:
        caps += [c for c in opts.cap_add if c not in caps]
    if "ALL" in opts.cap_drop:
        caps = [c for c in opts.cap_add if c != "ALL"]
    else:
        caps = [c for c in caps if c not in opts.cap_drop]
    return caps


def default_mounts(opts: RunOptions, host_ipc_dirs: Sequence[str] = ("/dev/shm", "/dev/mqueue")) -> list[SpecMount]:
    # docker sets the bytes asked for (--shm-size 32 is 32 bytes, which tmpfs rounds up to a page); `size=0k`
    # would mean no limit at all.
    shm_size = f"{opts.shm_size // 1024}k" if opts.shm_size % 1024 == 0 else str(opts.shm_size)
    mounts = [
        SpecMount("/proc", "proc", "proc", ("nosuid", "noexec", "nodev")),
        SpecMount("/dev", "tmpfs", "tmpfs", ("nosuid", "strictatime", "mode=755", "size=65536k")),
        SpecMount("/dev/pts", "devpts", "devpts",
                  ("nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5")),
        SpecMount("/dev/shm", "tmpfs", "shm", ("nosuid", "noexec", "nodev", "mode=1777", f"size={shm_size}")),
        SpecMount("/dev/mqueue", "mqueue", "mqueue", ("nosuid", "noexec", "nodev")),
        SpecMount("/sys", "sysfs", "sysfs", ("nosuid", "noexec", "nodev", "rw" if opts.privileged else "ro")),
        SpecMount("/sys/fs/cgroup", "cgroup", "cgroup",
                  ("nosuid", "noexec", "nodev", "relatime", "rw" if opts.privileged else "ro")),
    ]  # fmt: skip
    if opts.ipc == "host":
        # The host's IPC namespace: its /dev/shm and /dev/mqueue too; --shm-size has no effect (as docker).
        # (A host without /dev/mqueue keeps the mqueue mount, which then shows the host namespace's queues.)
        mounts = [m for m in mounts if m.destination not in host_ipc_dirs]
        mounts += [SpecMount(d, "bind", d, ("rbind", "nosuid", "noexec", "nodev")) for d in host_ipc_dirs]
    return mounts


def device_from_stat(container_path: str, st: os.stat_result, permissions: str = "rwm") -> SpecDevice | None:
    """The device entry for a host node: its type and numbers, and its mode, uid and gid as on the host
    (containerd's DeviceFromPath, docker's too), so e.g. a 0600 /dev/loop0 does not become 0666 inside.
    None when `st` is not a character or block device."""
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        return None
    return SpecDevice(container_path, kind, os.major(st.st_rdev), os.minor(st.st_rdev),
                      file_mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
                      permissions=permissions)  # fmt: skip


def kernel_fs_mount_problem(spec: VolumeSpec) -> str | None:
    """Why a -v/--mount/--tmpfs cannot go where it asks, or None. Onto /proc, /sys or /dev only the host's own
    filesystem may be bound (`-v /sys:/sys:ro`, `-v /dev:/dev`, as cAdvisor and device tools do with docker):
    a volume, tmpfs or other host directory there would replace the kernel filesystem, and for /dev runc would
    then create the container's device nodes inside that host directory."""
    target = posixpath.normpath(spec.target)
    if target not in KERNEL_FS_TARGETS:
        return None
    if spec.kind == "bind" and posixpath.normpath(spec.source) == target:
        return None
    return (f"{target} is the kernel's {target.lstrip('/')} filesystem in every container: only the host's own "
            f"{target} can be mounted there (-v {target}:{target})")  # fmt: skip


def image_volume_on_kernel_fs(path: str) -> bool:
    """An image VOLUME that would hide a kernel filesystem: /dev itself, or /proc or /sys or anything below them
    (docker would mount an empty host directory there; runc refuses most of /proc)."""
    target = posixpath.normpath("/" + path.lstrip("/"))
    return target == "/dev" or any(target == d or target.startswith(d + "/") for d in ("/proc", "/sys"))


def _device_json(d: SpecDevice) -> dict[str, Any]:
    return {"path": d.path, "type": d.type, "major": d.major, "minor": d.minor, "fileMode": d.file_mode,
            "uid": d.uid, "gid": d.gid}  # fmt: skip


def _rule(type_: str, major: int, minor: int, access: str) -> dict[str, Any]:
    rule: dict[str, Any] = {"allow": True, "type": type_, "access": access}
    if major >= 0:
        rule["major"] = major
    if minor >= 0:
        rule["minor"] = minor
    return rule


def _namespaces(opts: RunOptions, inputs: SpecInputs) -> list[dict[str, str]]:
    ns: list[dict[str, str]] = [{"type": "mount"}]
    if not opts.pid_host:
        ns.append({"type": "pid"})
    if opts.ipc == "container" and inputs.ipc_ns_path:
        ns.append({"type": "ipc", "path": inputs.ipc_ns_path})
    elif opts.ipc != "host":
        ns.append({"type": "ipc"})
    if not opts.uts_host:
        ns.append({"type": "uts"})
    if opts.network != "host":
        net: dict[str, str] = {"type": "network"}
        if inputs.netns_path:
            net["path"] = inputs.netns_path
        ns.append(net)
    if inputs.cgroup_v2:
        # docker's default --cgroupns: private on cgroup v2, host on v1 (nerdctl's too).
        ns.append({"type": "cgroup"})
    return ns


def _resources(opts: RunOptions, devices: Sequence[SpecDevice]) -> dict[str, Any]:
    rules: list[dict[str, Any]] = [{"allow": False, "access": "rwm"}]
    if opts.privileged:
        rules = [{"allow": True, "access": "rwm"}]
    else:
        rules += [_rule("c", major, minor, "rwm") for major, minor in DEFAULT_DEVICE_RULES]
        rules += [_rule(d.type, d.major, d.minor, d.permissions) for d in devices]
    res: dict[str, Any] = {"devices": rules}
    if opts.memory:
        res["memory"] = {"limit": opts.memory}
    if opts.cpus:
        # moby's NanoCPUs to CFS quota, in integers: 1/3 of a CPU's 10^9 nano-CPUs would not be exact as a float.
        res["cpu"] = {"quota": round(opts.cpus * 1e9) * CPU_PERIOD // 10**9, "period": CPU_PERIOD}
    if opts.pids_limit:
        res["pids"] = {"limit": opts.pids_limit}
    return res


def build_spec(opts: RunOptions, image: ImageConfig, inputs: SpecInputs) -> dict[str, Any]:
    """The runtime spec (as JSON-ready dicts) for one container. Raises SocirunError for impossible input."""
    user = resolve_user(opts.user or image.user, inputs.passwd, inputs.group, opts.group_add)
    env_base = list(image.env) if any(e.startswith("PATH=") for e in image.env) else [DEFAULT_PATH_ENV, *image.env]
    extra = list(inputs.env)
    if opts.tty:
        extra.append("TERM=xterm")
    env = merge_env(env_base, [*extra, *opts.env])
    if not any(e.startswith("HOSTNAME=") for e in opts.env):
        env = merge_env(env, [f"HOSTNAME={inputs.hostname}"])
    args = process_args(opts, image)
    mounts = default_mounts(opts, inputs.host_ipc_dirs)
    if inputs.init_binary:
        args = [INIT_PATH_IN_CONTAINER, "--", *args]
        mounts.append(SpecMount(INIT_PATH_IN_CONTAINER, "bind", inputs.init_binary, ("bind", "ro")))
    # Later mounts over the same destination win in runc's order; drop the earlier ones to keep it clear.
    for m in inputs.mounts:
        mounts = [x for x in mounts if x.destination != m.destination]
        mounts.append(m)
    caps = capabilities(opts, inputs.host_caps)
    process: dict[str, Any] = {
        "terminal": opts.tty,
        "user": {"uid": user.uid, "gid": user.gid, "additionalGids": list(user.additional_gids)},
        "args": args,
        "env": env,
        "cwd": opts.workdir or image.working_dir or "/",
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "noNewPrivileges": opts.no_new_privileges,
    }
    if opts.tty and inputs.console_size is not None:
        process["consoleSize"] = {"width": inputs.console_size[0], "height": inputs.console_size[1]}
    process["rlimits"] = rlimits(opts)
    # docker sets a profile only where the host has AppArmor (runc fails otherwise).
    apparmor = container_profile(opts.apparmor, enabled=inputs.apparmor_enabled, privileged=opts.privileged)
    if apparmor is not None:
        process["apparmorProfile"] = apparmor
    linux: dict[str, Any] = {
        "resources": _resources(opts, inputs.devices),
        "cgroupsPath": f"/{inputs.namespace}/{inputs.container_id}",
        "namespaces": _namespaces(opts, inputs),
        "devices": [_device_json(d) for d in inputs.devices],
    }
    if inputs.seccomp_profile is not None and not opts.privileged:
        seccomp = to_oci_seccomp(inputs.seccomp_profile, caps, inputs.arch, inputs.kernel)
        if seccomp is not None:
            linux["seccomp"] = seccomp
    if not opts.privileged:
        linux["maskedPaths"] = list(MASKED_PATHS)
        linux["readonlyPaths"] = list(READONLY_PATHS)
    sysctls = dict(opts.sysctls)
    if opts.network != "host" and opts.network != "container":
        # nerdctl: let non-root users bind low ports inside their own network namespace.
        sysctls.setdefault("net.ipv4.ip_unprivileged_port_start", "0")
    if sysctls:
        linux["sysctl"] = sysctls
    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": "rootfs", "readonly": opts.read_only},
        "mounts": [m.to_json() for m in mounts],
        "linux": linux,
    }
    if not opts.uts_host:
        spec["hostname"] = inputs.hostname
        if opts.domainname:
            spec["domainname"] = opts.domainname
    if opts.labels:
        # containerd's label store drops a label whose value is "" (`--label key`, `--label key=`); docker keeps
        # it. The spec's annotations keep every --label as given.
        spec["annotations"] = dict(opts.labels)
    if inputs.hooks:
        spec["hooks"] = {
            stage: [{"path": h.path, "args": list(h.args), **({"env": list(h.env)} if h.env else {})} for h in hooks]
            for stage, hooks in inputs.hooks.items()
        }
    return spec


def rlimits(opts: RunOptions) -> list[dict[str, Any]]:
    """DEFAULT_RLIMITS, each replaced by an --ulimit of the same name, then the other --ulimit values in order."""
    out: dict[str, dict[str, Any]] = {kind: {"type": kind, "soft": soft, "hard": hard}
                                      for kind, soft, hard in DEFAULT_RLIMITS}  # fmt: skip
    for u in opts.ulimits:
        kind = f"RLIMIT_{u.name.upper()}"
        out[kind] = {"type": kind, "soft": _rlimit(u.soft), "hard": _rlimit(u.hard)}
    return list(out.values())


# go-units' ulimitNameMapping: the RLIMIT_* numbers runc names in "error setting rlimit type N".
RLIMIT_NUMBERS = {"cpu": 0, "fsize": 1, "data": 2, "stack": 3, "core": 4, "rss": 5, "nproc": 6, "nofile": 7,
                  "memlock": 8, "as": 9, "locks": 10, "sigpending": 11, "msgqueue": 12, "nice": 13, "rtprio": 14,
                  "rttime": 15}  # fmt: skip


def rlimit_problem(ulimits: Sequence[Ulimit], nr_open: int | None) -> str | None:
    """Why the kernel will refuse an --ulimit, before runc says it rawly: nofile can be at most fs.nr_open, and
    -1 (unlimited) is above it."""
    for u in ulimits:
        if u.name != "nofile" or nr_open is None:
            continue
        for value in (u.soft, u.hard):
            if value < 0 or value > nr_open:
                asked = "-1 (unlimited)" if value < 0 else str(value)
                return (f"--ulimit nofile={u.soft}:{u.hard} cannot be set: the kernel allows at most {nr_open} open "
                        f"files per process (fs.nr_open), not {asked}")  # fmt: skip
    return None


_RUNC_RLIMIT_ERROR = re.compile(r"error setting rlimit type (\d+): ([^:]+)")


def rlimit_error_sentence(details: str) -> str | None:
    """runc's "error setting rlimits for ready process: error setting rlimit type 7: operation not permitted" as
    one sentence naming the --ulimit, or None for any other error."""
    m = _RUNC_RLIMIT_ERROR.search(details)
    if m is None:
        return None
    number = int(m.group(1))
    name = next((n for n, num in RLIMIT_NUMBERS.items() if num == number), f"type {number}")
    return f"the kernel refused --ulimit {name} ({m.group(2).strip()}): the value is above what this host allows"


def _rlimit(value: int) -> int:
    # -1 means unlimited: RLIM_INFINITY as the unsigned 64-bit value runc expects.
    return (1 << 64) - 1 if value < 0 else value


def hosts_file(hostname: str, ip: str | None, extra: Sequence[tuple[str, str]]) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    if ip:
        lines.append(f"{ip}\t{hostname}")
    else:
        lines.append(f"127.0.1.1\t{hostname}")
    lines += [f"{addr}\t{name}" for name, addr in extra]
    return "\n".join(lines) + "\n"


def resolv_conf(host_text: str, dns: Sequence[str], search: Sequence[str], options: Sequence[str],
                *, host_network: bool) -> str:
    """The container's resolv.conf: the host's, minus loopback nameservers off the host network (docker),
    with --dns/--dns-search/--dns-option replacing their parts."""
    servers: list[str] = []
    searches: list[str] = []
    opts: list[str] = []
    for line in host_text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "nameserver" and len(words) > 1:
            servers.append(words[1])
        elif words[0] in ("search", "domain"):
            searches = words[1:]
        elif words[0] == "options":
            opts += words[1:]
    if not host_network:
        servers = [s for s in servers if not s.startswith("127.") and s != "::1"]
        if not servers:
            servers = ["8.8.8.8", "8.8.4.4"]  # docker's fallback when only loopback resolvers remain
    servers = list(dns) or servers
    searches = list(search) or searches
    opts = list(options) or opts
    out = [f"nameserver {s}" for s in servers]
    if searches:
        out.append("search " + " ".join(searches))
    if opts:
        out.append("options " + " ".join(opts))
    return "\n".join(out) + "\n"
