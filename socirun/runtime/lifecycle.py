"""The data root, container names, the per-container state file, and the teardown shared by a foreground run and
the background reaper of `-d`.

Order of a run: the data root's modes checked, the name claimed (`<data-root>/names/<ns>/<name>`, under a lock)
→ Snapshots.Prepare (under a lease) → Containers.Create → FIFO readers → Tasks.Create →
Tasks.Wait (before Start, so the exit cannot be missed) → Tasks.Start → … → Tasks.Delete → CNI DEL, netns
removal → with --rm: Containers.Delete, Snapshots.Remove, anonymous volumes, the state directory, the name.
The containerd calls themselves are socirun/containerd/runtime.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import shutil
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from socirun.containerd.runtime import Runtime
from socirun.errors import ContainerdError, SocirunError

STATE_FILE = "socirun-state.json"
# The data root is traversable (0711, as docker's is 0710/0711 since CVE-2021-41091) but not listable; what holds
# container state and volume contents is root's alone: a setuid binary a container writes into a volume must not
# be reachable by the host's other users.
DATA_ROOT_MODE = 0o711
PRIVATE_DIRS = ("containers", "volumes", "names")
PRIVATE_DIR_MODE = 0o700
NAMES_DIR = "names"
# docker's container name pattern (daemon/names.go), matched whole: `$` alone would also accept "name\n".
NAME_PATTERN = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
_LOCK_POLL_S = 0.02


# ---------------------------------------------------------------------------------------------- data root


def tightened_mode(mode: int, limit: int) -> int | None:
    """The permission bits of `mode` cut down to `limit`, or None when they are already within it."""
    perms = stat.S_IMODE(mode)
    return None if perms & ~limit == 0 else perms & limit


def prepare_data_root(data_root: str) -> None:
    """Create the data root (0711) and its private directories (0700); tighten them where an older socirun or a
    hand-made tree left them looser."""
    wanted = [(data_root, DATA_ROOT_MODE), *((os.path.join(data_root, d), PRIVATE_DIR_MODE) for d in PRIVATE_DIRS)]
    for path, limit in wanted:
        try:
            os.makedirs(path, mode=limit, exist_ok=True)
            mode = tightened_mode(os.stat(path).st_mode, limit)
            if mode is not None:
                os.chmod(path, mode)
        except OSError as err:
            raise SocirunError(f"cannot prepare socirun's data root {data_root}: {err.strerror or err}") from None


# ---------------------------------------------------------------------------------------------- state


@dataclass
class ContainerState:
    """What teardown needs, written to `<state_dir>/socirun-state.json` (read again by the -d reaper)."""

    id: str
    name: str
    namespace: str
    address: str
    snapshotter: str
    data_root: str
    state_dir: str
    rm: bool = False
    network: str = "bridge"
    netns: str = ""  # the name under /run/netns, "" when none was created
    bridge: dict[str, str] = field(default_factory=dict)  # BridgeNetwork fields
    ports: list[dict[str, Any]] = field(default_factory=list)  # PortMapping fields
    anonymous_volumes: list[str] = field(default_factory=list)
    # For `socirun ps`, `logs`, `inspect` (socirun/commands/containers.py): what docker's daemon would remember.
    image: str = ""  # the reference as the user named it
    command: list[str] = field(default_factory=list)  # the process's argv (entrypoint + command)
    created: float = 0.0  # epoch seconds
    tty: bool = False
    log_max_size: int = 0  # the json-file log's rotation (--log-opt), 0: unlimited
    log_max_file: int = 1
    exit_code: int | None = None  # recorded when the exit is seen (reaper, foreground run)
    finished_at: float = 0.0

    def save(self) -> None:
        path = os.path.join(self.state_dir, STATE_FILE)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(asdict(self), f, indent=2)
        os.replace(tmp, path)

    @classmethod
    def load(cls, state_dir: str) -> ContainerState:
        with open(os.path.join(state_dir, STATE_FILE), encoding="utf-8") as f:
            data = json.load(f)
        # Fields a newer socirun added are ignored, so a container keeps working across versions.
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def record_exit(self, exit_code: int, when: float) -> None:
        """Remember the exit (docker's `Exited (N) … ago`), re-reading the file so nothing else written is lost."""
        with contextlib.suppress(OSError, ValueError, TypeError):
            fresh = ContainerState.load(self.state_dir)
            fresh.exit_code, fresh.finished_at = exit_code, when
            fresh.save()
        self.exit_code, self.finished_at = exit_code, when


# ---------------------------------------------------------------------------------------------- names


@dataclass(frozen=True)
class NameHolder:
    """Who holds a container name: written to `<data-root>/names/<namespace>/<name>` while the name is taken."""

    id: str  # the container's ID
    pid: int  # the socirun process that reserved it
    started: float  # that process's start time, so a reused PID is not taken for it

    @classmethod
    def me(cls, container_id: str) -> NameHolder:
        import psutil

        return cls(container_id, os.getpid(), psutil.Process().create_time())

    def reserver_alive(self) -> bool:
        import psutil

        try:
            return abs(psutil.Process(self.pid).create_time() - self.started) < 0.5
        except psutil.Error:
            return False


def name_conflict(name: str, holder_id: str) -> SocirunError:
    return SocirunError(f'Conflict. The container name "/{name}" is already in use by container "{holder_id}". '
                        "You have to remove (or rename) that container to be able to reuse that name.")  # fmt: skip


@contextlib.asynccontextmanager
async def _names_locked(data_root: str, namespace: str) -> AsyncIterator[str]:
    """The namespace's names directory, under an exclusive flock (polled: waiting never blocks the event loop, and
    a cancelled wait leaves no lock behind)."""
    names = os.path.join(data_root, NAMES_DIR, namespace)
    os.makedirs(names, mode=PRIVATE_DIR_MODE, exist_ok=True)
    fd = os.open(os.path.join(names, ".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(_LOCK_POLL_S)
        yield names
    finally:
        os.close(fd)  # releases the lock


def _read_holder(path: str) -> NameHolder | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return NameHolder(str(data["id"]), int(data["pid"]), float(data["started"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent, or torn by a crash: nobody holds the name


async def reserve_name(data_root: str, namespace: str, name: str, container_id: str, *,
                       labelled: Callable[[], Awaitable[str | None]],
                       container_exists: Callable[[str], Awaitable[bool]]) -> None:  # fmt: skip
    """Take `name` for `container_id` or raise docker's conflict. Check and claim happen under one lock, so of two
    runs with one --name exactly one gets it. `labelled` finds a container that already carries the name (made by
    nerdctl or before this reservation existed); a reservation whose container is gone and whose reserving process
    has ended is stale and taken over."""
    if not NAME_PATTERN.fullmatch(name):
        raise SocirunError(f"Invalid container name ({name!r}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
    async with _names_locked(data_root, namespace) as names:
        taken = await labelled()
        if taken and taken != container_id:
            raise name_conflict(name, taken)
        path = os.path.join(names, name)
        holder = _read_holder(path)
        if holder is not None and holder.id != container_id and (
            holder.reserver_alive() or await container_exists(holder.id)
        ):
            raise name_conflict(name, holder.id)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(asdict(NameHolder.me(container_id)), f)
        os.replace(tmp, path)


async def release_name(data_root: str, namespace: str, name: str, container_id: str) -> None:
    """Give `name` back, if `container_id` still holds it."""
    if not NAME_PATTERN.fullmatch(name):
        return
    async with _names_locked(data_root, namespace) as names:
        path = os.path.join(names, name)
        holder = _read_holder(path)
        if holder is not None and holder.id == container_id:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


# ---------------------------------------------------------------------------------------------- teardown


def teardown_network(state: ContainerState) -> list[str]:
    """CNI DEL and netns removal (idempotent). Returns what failed, as sentences."""
    from socirun.runtime import cni
    from socirun.runtime.options import PortMapping

    errors: list[str] = []
    if not state.netns:
        return errors
    netns_path = os.path.join(cni.NETNS_DIR, state.netns)
    if state.network == "bridge" and os.path.exists(netns_path):
        try:
            net = cni.BridgeNetwork(**state.bridge)
            plugins = cni.Cni(cni.find_plugin_dir(), net, cni_ipam_dir(state.data_root))
            ports = [PortMapping(**p) for p in state.ports]
            errors += plugins.delete(state.id, netns_path, ports)
        except SocirunError as err:
            errors.append(err.message)
    try:
        cni.delete_netns(state.netns)
    except SocirunError as err:
        errors.append(err.message)
    return errors


def cni_ipam_dir(data_root: str) -> str:
    return os.path.join(data_root, "cni", "networks")


async def task_gone(rt: Runtime, container_id: str) -> bool:
    """Whether the container has no task any more (False also when containerd cannot say)."""
    try:
        return await rt.get_task(container_id) is None
    except ContainerdError:
        return False


async def teardown(rt: Runtime, state: ContainerState, *, remove: bool, volumes: bool = True) -> list[str]:
    """Delete the task, the network; with `remove` the container, its snapshot, anonymous volumes (unless
    `volumes` is False: docker's `rm` without -v keeps them) and state.

    Nothing is removed while the task exists: Tasks.Delete refuses a task that still runs, and the network, the
    snapshot (its rootfs is still mounted) and the state under a live process would be pulled from under it. Such
    a container is left whole (its own reaper, or `nerdctl rm -f`, removes it) and the refusal is reported."""
    from socirun.runtime.volumes import remove_volumes

    errors: list[str] = []
    try:
        await rt.delete_task(state.id)
    except ContainerdError as err:
        errors.append(err.message)
    if not await task_gone(rt, state.id):
        errors.append(f"container {state.id[:12]} still has a task, so its network, snapshot and state were "
                      "left in place")  # fmt: skip
        return errors
    errors += teardown_network(state)
    if remove:
        try:
            await rt.delete_container(state.id)
            await rt.ctd.snapshot_remove(state.snapshotter, state.id)
        except ContainerdError as err:
            errors.append(err.message)
        if volumes:
            remove_volumes(state.data_root, state.namespace, state.anonymous_volumes)
        shutil.rmtree(state.state_dir, ignore_errors=True)
        try:
            await release_name(state.data_root, state.namespace, state.name, state.id)
        except OSError as err:
            errors.append(f"cannot release the name {state.name}: {err.strerror or err}")
    return errors


# ---------------------------------------------------------------------------------------------- killed runs

# A SIGKILLed run (or one whose machine lost power) tears nothing down: its task, network namespace, CNI IP and
# iptables rules, snapshot, record, state directory and name stay. socirun has no daemon, so the next run sweeps
# what such runs left, as nerdctl's client-side --rm cannot. Only what no live process owns is touched: the
# reserving socirun (names/<ns>/<name>) and a reaper (its argv names the state directory) are owners, and a task
# that still runs keeps its container whole, whoever started it.
RUNNING_STATUSES = ("RUNNING", "PAUSED", "PAUSING")
SWEEP_LOCK = ".sweep.lock"
CREATED_KILL_WAIT_S = 5.0
_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")
_RESERVING = re.compile(r"\.[0-9]+\.tmp$")  # reserve_name's temporary file, before its rename


def sweep_action(*, owner_alive: bool, task_status: str | None, has_state: bool, rm: bool,
                 network_left: bool) -> str:  # fmt: skip
    """What to do with a container state directory: "leave" it, "teardown" (task and network, the container
    stays, as a finished run without --rm leaves it) or "remove" (everything, as --rm does). `task_status` is
    None when the container has no task."""
    if owner_alive or task_status in RUNNING_STATUSES:
        return "leave"
    if not has_state or rm:
        # No state file: killed before the container existed; nothing of it is worth keeping.
        return "remove"
    return "teardown" if task_status is not None or network_left else "leave"


def _name_holders(data_root: str, namespace: str) -> dict[str, tuple[str, NameHolder]]:
    """container ID → (name, holder) from the names directory."""
    names = os.path.join(data_root, NAMES_DIR, namespace)
    found: dict[str, tuple[str, NameHolder]] = {}
    with contextlib.suppress(OSError):
        for entry in os.listdir(names):
            if NAME_PATTERN.fullmatch(entry) and not _RESERVING.search(entry):
                holder = _read_holder(os.path.join(names, entry))
                if holder is not None:
                    found[holder.id] = (entry, holder)
    return found


def _dirs_held_by_processes(base: str) -> set[str]:
    """The state directories (under `base`) that a running process names in its argv: the reapers."""
    import psutil

    prefix = base.rstrip("/") + "/"
    held: set[str] = set()
    for proc in psutil.process_iter(["cmdline"]):
        for arg in proc.info.get("cmdline") or ():
            if arg.startswith(prefix):
                held.add(os.path.join(base, arg[len(prefix):].split("/", 1)[0]))
    return held


@contextlib.contextmanager
def _sweep_lock(base: str) -> Iterator[bool]:
    """A non-blocking exclusive lock: when another run is sweeping, this one does not (it would only repeat it)."""
    fd = os.open(os.path.join(base, SWEEP_LOCK), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


async def _stop_created_task(rt: Runtime, container_id: str) -> None:
    """A task created but never started by a run that died: its start can never come, so kill it and wait."""
    import signal

    await rt.kill_task(container_id, signal.SIGKILL)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CREATED_KILL_WAIT_S
    while loop.time() < deadline:
        task = await rt.get_task(container_id)
        if task is None or task.status == "STOPPED":
            return
        await asyncio.sleep(0.05)


def _orphan_state(state_dir: str, container_id: str, data_root: str, namespace: str, name: str) -> ContainerState:
    """The state of a run killed before it saved any: its network namespace (created first) is all it can own
    besides the directory, and its snapshot is held only by its lease, which `drop_dead_leases` ends."""
    from socirun.runtime import cni

    netns = cni.netns_name(container_id)
    return ContainerState(id=container_id, name=name, namespace=namespace, address="", snapshotter="",
                          data_root=data_root, state_dir=state_dir, rm=True, network="none",
                          netns=netns if os.path.exists(os.path.join(cni.NETNS_DIR, netns)) else "")  # fmt: skip


async def sweep_abandoned(rt: Runtime, data_root: str, namespace: str) -> list[str]:
    """Tear down what runs killed earlier left in `namespace` (see above), and end the leases of dead socirun
    processes. Returns the IDs of the containers it tore down or removed."""
    from socirun.pull.leases import drop_dead_leases
    from socirun.runtime.cni import NETNS_DIR

    with contextlib.suppress(ContainerdError):
        await drop_dead_leases(rt.ctd)
    base = os.path.join(data_root, "containers", namespace)
    if not os.path.isdir(base):
        return []
    swept: list[str] = []
    with _sweep_lock(base) as mine:
        if not mine:
            return []
        # List the directories before reading who owns them: a run reserves its name before it makes its
        # directory, so every directory listed here has its holder on disk by the time the holders are read.
        # Read the other way round, a run starting between the two reads shows a fresh directory with no owner,
        # which the sweep took for a killed run's and removed under it.
        entries = sorted(os.listdir(base))
        holders = _name_holders(data_root, namespace)
        held = _dirs_held_by_processes(base)
        for entry in entries:
            state_dir = os.path.join(base, entry)
            if not _CONTAINER_ID.fullmatch(entry) or not os.path.isdir(state_dir):
                continue
            name, holder = holders.get(entry, ("", None))
            owner_alive = state_dir in held or (holder is not None and holder.reserver_alive())
            if owner_alive:
                continue
            try:
                task = await rt.get_task(entry)
            except ContainerdError:
                continue  # cannot tell whether it runs: leave it
            try:
                state = ContainerState.load(state_dir)
                has_state = True
            except (OSError, ValueError, TypeError):
                state = _orphan_state(state_dir, entry, data_root, namespace, name)
                has_state = False
            network_left = bool(state.netns) and os.path.exists(os.path.join(NETNS_DIR, state.netns))
            action = sweep_action(owner_alive=False, task_status=task.status if task else None,
                                  has_state=has_state, rm=state.rm, network_left=network_left)  # fmt: skip
            if action == "leave":
                continue
            if task is not None and task.status == "CREATED":
                await _stop_created_task(rt, entry)
            if has_state:
                await teardown(rt, state, remove=action == "remove")
            else:
                teardown_network(state)
                shutil.rmtree(state_dir, ignore_errors=True)
                if name:
                    await release_name(data_root, namespace, name, entry)
            swept.append(entry)
        await _sweep_names(rt, data_root, namespace, holders)
    return swept


async def _sweep_names(rt: Runtime, data_root: str, namespace: str,
                       holders: dict[str, tuple[str, NameHolder]]) -> None:  # fmt: skip
    """Release the names held by dead runs that left neither a state directory nor a container."""
    for container_id, (name, holder) in holders.items():
        if holder.reserver_alive() or os.path.isdir(os.path.join(data_root, "containers", namespace, container_id)):
            continue
        try:
            if await rt.get_container(container_id) is not None:
                continue
        except ContainerdError:
            continue
        await release_name(data_root, namespace, name, container_id)


# ---------------------------------------------------------------------------------------------- published ports

PORTS_LOCK = ".ports.lock"


def published_ports(data_root: str, *, exclude: str = "") -> list[tuple[str, dict[str, Any]]]:
    """(container ID, PortMapping fields) of every port a socirun container under `data_root` publishes now, in
    every namespace: host ports are the host's. A container publishes its ports while its network namespace
    exists (from its CNI ADD until its teardown)."""
    from socirun.runtime.cni import NETNS_DIR

    found: list[tuple[str, dict[str, Any]]] = []
    base = os.path.join(data_root, "containers")
    with contextlib.suppress(OSError):
        for namespace in os.listdir(base):
            ns_dir = os.path.join(base, namespace)
            if not os.path.isdir(ns_dir):
                continue
            for entry in os.listdir(ns_dir):
                if entry == exclude or not _CONTAINER_ID.fullmatch(entry):
                    continue
                try:
                    state = ContainerState.load(os.path.join(ns_dir, entry))
                except (OSError, ValueError, TypeError):
                    continue
                if state.ports and state.netns and os.path.exists(os.path.join(NETNS_DIR, state.netns)):
                    found += [(state.id, p) for p in state.ports]
    return found


@contextlib.contextmanager
def _blocking_lock(path: str) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held for a directory scan and a bind: milliseconds
        yield
    finally:
        os.close(fd)


def claim_ports(state: ContainerState, requested: list[Any]) -> list[Any]:
    """Check and choose the host ports of `requested` (PortMappings) and record them in the state, under one lock,
    so two runs never take the same port. Returns the mappings with the chosen host ports."""
    from socirun.runtime import cni
    from socirun.runtime.options import PortMapping

    base = os.path.join(state.data_root, "containers")
    os.makedirs(base, mode=PRIVATE_DIR_MODE, exist_ok=True)
    with _blocking_lock(os.path.join(base, PORTS_LOCK)):
        held = [PortMapping(**p) for _, p in published_ports(state.data_root, exclude=state.id)]
        ports = cni.resolve_host_ports(requested, held, endpoint=state.name)
        state.ports = [asdict(p) for p in ports]
        state.save()
    return ports


# ---------------------------------------------------------------------------------------------- stop, remove

KILL_WAIT_S = 10.0
OWNER_WAIT_S = 20.0
_POLL_S = 0.05


def state_dir_of(data_root: str, namespace: str, container_id: str) -> str:
    """Where socirun keeps a container's state: from the data root, never from a label anyone could set."""
    return os.path.join(data_root, "containers", namespace, container_id)


def load_state(data_root: str, namespace: str, container_id: str) -> ContainerState | None:
    try:
        return ContainerState.load(state_dir_of(data_root, namespace, container_id))
    except (OSError, ValueError, TypeError):
        return None


def owner_pids(state: ContainerState) -> list[int]:
    """The live processes that will tear the container down when its task exits: its reaper (its argv names the
    state directory) and, for a foreground run, the socirun that reserved its name."""
    import psutil

    pids: list[int] = []
    for proc in psutil.process_iter(["cmdline"]):
        if state.state_dir in (proc.info.get("cmdline") or ()):
            pids.append(proc.pid)
    holder = _read_holder(os.path.join(state.data_root, NAMES_DIR, state.namespace, state.name))
    if holder is not None and holder.id == state.id and holder.reserver_alive() and holder.pid != os.getpid():
        pids.append(holder.pid)
    return pids


async def wait_pids_gone(pids: list[int], timeout: float) -> bool:
    import psutil

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    while any(alive(p) for p in pids):
        if loop.time() > deadline:
            return False
        await asyncio.sleep(_POLL_S)
    return True


async def wait_stopped(rt: Runtime, container_id: str, timeout: float) -> bool:
    """Whether the task exited (or is gone) within `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        task = await rt.get_task(container_id)
        if task is None or task.status == "STOPPED":
            return True
        if loop.time() > deadline:
            return False
        await asyncio.sleep(_POLL_S)


async def stop_task(rt: Runtime, container_id: str, sig: int, timeout: float) -> bool:
    """docker stop: `sig`, then SIGKILL to every process once `timeout` seconds passed (a negative timeout waits
    for ever). Returns whether it was running."""
    import signal

    task = await rt.get_task(container_id)
    if task is None or task.status not in RUNNING_STATUSES:
        return False
    await rt.kill_task(container_id, sig)
    if timeout < 0:
        timeout = float("inf")
    if not await wait_stopped(rt, container_id, timeout):
        await rt.kill_task(container_id, signal.SIGKILL, all_processes=True)
        await wait_stopped(rt, container_id, KILL_WAIT_S)
    return True


async def settle(rt: Runtime, state: ContainerState) -> None:
    """After the task exited: let its owner (reaper or foreground run) finish the teardown it does on exit; when
    it has none (killed, or a run that kept no reaper), do that teardown here."""
    pids = owner_pids(state)
    if pids and await wait_pids_gone(pids, OWNER_WAIT_S):
        return
    if pids or not os.path.isdir(state.state_dir):
        return
    await teardown(rt, state, remove=state.rm)


async def remove_container(rt: Runtime, container_id: str, state: ContainerState | None, *, force: bool,
                           volumes: bool, name: str) -> list[str]:  # fmt: skip
    """docker rm: refuses a running container unless `force` (then SIGKILL); removes the task, network, container,
    snapshot, state, name and, with `volumes`, the anonymous volumes. Returns cleanup failures."""
    import signal

    task = await rt.get_task(container_id)
    if task is not None and task.status in (*RUNNING_STATUSES, "CREATED"):
        if not force:
            raise SocirunError(f'cannot remove container "/{name}": container is running: stop the container '
                               "before removing or force remove", exit_code=1)  # fmt: skip
        await rt.kill_task(container_id, signal.SIGKILL, all_processes=True)
        await wait_stopped(rt, container_id, KILL_WAIT_S)
    if state is not None:
        pids = owner_pids(state)
        if pids:
            await wait_pids_gone(pids, OWNER_WAIT_S)
        if os.path.isdir(state.state_dir):
            return await teardown(rt, state, remove=True, volumes=volumes)
    # Not socirun's (or its --rm reaper removed most of it just now): what containerd holds.
    errors: list[str] = []
    try:
        await rt.delete_task(container_id)
        record = await rt.get_container(container_id)
        if record is not None:
            await rt.delete_container(container_id)
            if record.snapshotter and record.snapshot_key:
                with contextlib.suppress(ContainerdError):
                    await rt.ctd.snapshot_remove(record.snapshotter, record.snapshot_key)
    except ContainerdError as err:
        errors.append(err.message)
    return errors
