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
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
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

    def save(self) -> None:
        path = os.path.join(self.state_dir, STATE_FILE)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(asdict(self), f, indent=2)
        os.replace(tmp, path)

    @classmethod
    def load(cls, state_dir: str) -> ContainerState:
        with open(os.path.join(state_dir, STATE_FILE), encoding="utf-8") as f:
            return cls(**json.load(f))


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


async def teardown(rt: Runtime, state: ContainerState, *, remove: bool) -> list[str]:
    """Delete the task, the network; with `remove` the container, its snapshot, anonymous volumes and state."""
    from socirun.runtime.volumes import remove_volumes

    errors: list[str] = []
    try:
        await rt.delete_task(state.id)
    except ContainerdError as err:
        errors.append(err.message)
    errors += teardown_network(state)
    if remove:
        try:
            await rt.delete_container(state.id)
            await rt.ctd.snapshot_remove(state.snapshotter, state.id)
        except ContainerdError as err:
            errors.append(err.message)
        remove_volumes(state.data_root, state.namespace, state.anonymous_volumes)
        shutil.rmtree(state.state_dir, ignore_errors=True)
        try:
            await release_name(state.data_root, state.namespace, state.name, state.id)
        except OSError as err:
            errors.append(f"cannot release the name {state.name}: {err.strerror or err}")
    return errors
