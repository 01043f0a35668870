"""Containers and tasks over containerd's gRPC API (reference §§7–8), the per-container state file, and the
teardown shared by a foreground run and the background reaper of `-d`.

Order of a run: Snapshots.Prepare (under a lease) → Containers.Create → FIFO readers → Tasks.Create →
Tasks.Wait (before Start, so the exit cannot be missed) → Tasks.Start → … → Tasks.Delete → CNI DEL, netns
removal → with --rm: Containers.Delete, Snapshots.Remove, anonymous volumes, the state directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from google.protobuf import any_pb2  # type: ignore[import-untyped]

from socirun.containerd.api.runc.options import oci_pb2 as runc_options_pb2
from socirun.containerd.api.services.containers.v1 import containers_pb2, containers_pb2_grpc
from socirun.containerd.api.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from socirun.containerd.client import ContainerdClient, Mount, NotFoundError, RpcError
from socirun.errors import EXIT_CANNOT_INVOKE, EXIT_DAEMON, EXIT_NOT_FOUND, ContainerdError, SocirunError

SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
# The bare name: containerd 1.6 rejects the type.googleapis.com/ form (pitfall 14).
RUNC_OPTIONS_TYPE_URL = "containerd.runc.v1.Options"
STATE_FILE = "socirun-state.json"
# Task status enum (containerd.v1.types.Status).
STATUS_NAMES = {0: "UNKNOWN", 1: "CREATED", 2: "RUNNING", 3: "STOPPED", 4: "PAUSED", 5: "PAUSING"}


class ContainerRunError(SocirunError):
    """The runtime could not create or start the container's process (exit 125, 126 or 127)."""


def exit_code_for(details: str) -> int:
    """docker's toStatusError mapping of a create/start error message (reference §2.1)."""
    lowered = details.lower()
    if "executable file not found" in lowered or "no such file or directory" in lowered or (
        "system cannot find the file specified" in lowered
    ):
        return EXIT_NOT_FOUND
    if "permission denied" in lowered or "is a directory" in lowered:
        return EXIT_CANNOT_INVOKE
    return EXIT_DAEMON


def _runtime_error(what: str, err: RpcError) -> ContainerRunError:
    return ContainerRunError(f"{what}: {err.details}", exit_code=exit_code_for(err.details))


class Runtime:
    """Containers + Tasks stubs bound to a ContainerdClient's channel and namespace."""

    def __init__(self, ctd: ContainerdClient) -> None:
        self.ctd = ctd
        self.containers = containers_pb2_grpc.ContainersStub(ctd.channel)
        self.tasks = tasks_pb2_grpc.TasksStub(ctd.channel)

    # -------------------------------------------------------------------------------- containers

    async def list_containers(self, filters: Sequence[str] = ()) -> list[Any]:
        resp = await self.ctd.call("Containers.List", self.containers.List,
                                   containers_pb2.ListContainersRequest(filters=list(filters)))  # fmt: skip
        return list(resp.containers)

    async def get_container(self, container_id: str) -> Any | None:
        try:
            resp = await self.ctd.call("Containers.Get", self.containers.Get,
                                       containers_pb2.GetContainerRequest(id=container_id))  # fmt: skip
        except NotFoundError:
            return None
        return resp.container

    async def find_container(self, name_or_id: str) -> Any | None:
        """By full ID, by nerdctl/name label, or by a unique ID prefix (docker's lookup order)."""
        found = await self.get_container(name_or_id)
        if found is not None:
            return found
        by_name = await self.list_containers([f'labels."nerdctl/name"=={name_or_id}'])
        if by_name:
            return by_name[0]
        matches = [c for c in await self.list_containers() if str(c.id).startswith(name_or_id)]
        return matches[0] if len(matches) == 1 else None

    async def create_container(
        self, container_id: str, *, image: str, runtime: str, runtime_binary: str, spec: Mapping[str, Any],
        snapshotter: str, labels: Mapping[str, str],
    ) -> None:  # fmt: skip
        runtime_msg = containers_pb2.Container.Runtime(name=runtime)
        if runtime_binary:
            opts = runc_options_pb2.Options(binary_name=runtime_binary)
            runtime_msg.options.CopyFrom(any_pb2.Any(type_url=RUNC_OPTIONS_TYPE_URL, value=opts.SerializeToString()))
        container = containers_pb2.Container(
            id=container_id,
            labels=dict(labels),
            image=image,
            runtime=runtime_msg,
            spec=any_pb2.Any(type_url=SPEC_TYPE_URL, value=json.dumps(spec).encode()),
            snapshotter=snapshotter,
            snapshot_key=container_id,
        )
        await self.ctd.call("Containers.Create", self.containers.Create,
                            containers_pb2.CreateContainerRequest(container=container))  # fmt: skip

    async def delete_container(self, container_id: str) -> None:
        with contextlib.suppress(NotFoundError):
            await self.ctd.call("Containers.Delete", self.containers.Delete,
                                containers_pb2.DeleteContainerRequest(id=container_id))  # fmt: skip

    # -------------------------------------------------------------------------------- tasks

    async def create_task(self, container_id: str, rootfs: Sequence[Mount], stdio: tuple[str, str, str],
                          terminal: bool) -> int:  # fmt: skip
        request = tasks_pb2.CreateTaskRequest(
            container_id=container_id, rootfs=[m.to_proto() for m in rootfs], stdin=stdio[0], stdout=stdio[1],
            stderr=stdio[2], terminal=terminal,
        )
        try:
            resp = await self.ctd.call("Tasks.Create", self.tasks.Create, request)
        except RpcError as err:
            raise _runtime_error("failed to create task for container", err) from None
        return int(resp.pid)

    async def start_task(self, container_id: str) -> int:
        try:
            request = tasks_pb2.StartRequest(container_id=container_id)
            resp = await self.ctd.call("Tasks.Start", self.tasks.Start, request)
        except RpcError as err:
            raise _runtime_error("failed to start container", err) from None
        return int(resp.pid)

    async def wait_task(self, container_id: str) -> int:
        resp = await self.ctd.call("Tasks.Wait", self.tasks.Wait, tasks_pb2.WaitRequest(container_id=container_id))
        return int(resp.exit_status)

    async def kill_task(self, container_id: str, signal: int, *, all_processes: bool = False) -> None:
        with contextlib.suppress(NotFoundError):
            await self.ctd.call("Tasks.Kill", self.tasks.Kill,
                                tasks_pb2.KillRequest(container_id=container_id, signal=signal, all=all_processes))

    async def delete_task(self, container_id: str) -> int | None:
        try:
            resp = await self.ctd.call("Tasks.Delete", self.tasks.Delete,
                                       tasks_pb2.DeleteTaskRequest(container_id=container_id))  # fmt: skip
        except NotFoundError:
            return None
        return int(resp.exit_status)

    async def get_task(self, container_id: str) -> tuple[int, str] | None:
        """(pid, status name) of the container's task, or None when it has none."""
        try:
            resp = await self.ctd.call("Tasks.Get", self.tasks.Get, tasks_pb2.GetRequest(container_id=container_id))
        except NotFoundError:
            return None
        return int(resp.process.pid), STATUS_NAMES.get(int(resp.process.status), "UNKNOWN")

    async def close_stdin(self, container_id: str) -> None:
        with contextlib.suppress(NotFoundError):
            await self.ctd.call("Tasks.CloseIO", self.tasks.CloseIO,
                                tasks_pb2.CloseIORequest(container_id=container_id, stdin=True))

    async def resize_pty(self, container_id: str, columns: int, rows: int) -> None:
        with contextlib.suppress(NotFoundError):
            await self.ctd.call("Tasks.ResizePty", self.tasks.ResizePty,
                                tasks_pb2.ResizePtyRequest(container_id=container_id, width=columns, height=rows))


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


def teardown_network(state: ContainerState) -> list[str]:
    """CNI DEL and netns removal (idempotent). Returns what failed, as sentences."""
    from socirun.options import PortMapping
    from socirun.runtime import cni

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
    return errors
