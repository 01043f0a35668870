"""Containers and tasks over containerd's gRPC API, returning typed records instead of protobuf messages.

The services: https://github.com/containerd/containerd/blob/v1.6.20/api/services/containers/v1/containers.proto
and https://github.com/containerd/containerd/blob/v1.6.20/api/services/tasks/v1/tasks.proto. What a run does
with them, and the teardown, is socirun/runtime/lifecycle.py's.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from google.protobuf import any_pb2  # type: ignore[import-untyped]

from socirun.containerd.api.runc.options import oci_pb2 as runc_options_pb2
from socirun.containerd.api.services.containers.v1 import containers_pb2, containers_pb2_grpc
from socirun.containerd.api.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from socirun.containerd.errors import NotFoundError, RpcError
from socirun.containerd.labels import name_filter
from socirun.containerd.types import Mount, labels_from_proto, seconds_from_proto
from socirun.errors import EXIT_CANNOT_INVOKE, EXIT_DAEMON, EXIT_NOT_FOUND, SocirunError

if TYPE_CHECKING:
    from socirun.containerd.client import ContainerdClient

SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
# The bare name: containerd 1.6 rejects the type.googleapis.com/ form (Tasks.Create then fails with "failed to
# start shim: ... not found").
RUNC_OPTIONS_TYPE_URL = "containerd.runc.v1.Options"
# Task status enum (containerd.v1.types.Status).
STATUS_NAMES = {0: "UNKNOWN", 1: "CREATED", 2: "RUNNING", 3: "STOPPED", 4: "PAUSED", 5: "PAUSING"}


class ContainerRunError(SocirunError):
    """The runtime could not create or start the container's process (exit 125, 126 or 127)."""


def exit_code_for(details: str) -> int:
    """docker's mapping of a create/start error message to an exit code: toStatusError in
    https://github.com/docker/cli/blob/master/cli/command/container/run.go"""
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


@dataclass(frozen=True)
class ContainerRecord:
    """A container record (containerd.services.containers.v1.Container), without its spec and extensions."""

    id: str
    labels: dict[str, str] = field(hash=False)
    image: str = ""
    runtime: str = ""  # the runtime's name, e.g. "io.containerd.runc.v2"
    snapshotter: str = ""
    snapshot_key: str = ""
    created_at: float = 0.0  # seconds since the epoch
    updated_at: float = 0.0

    @classmethod
    def from_proto(cls, msg: Any) -> ContainerRecord:
        return cls(
            id=str(msg.id),
            labels=labels_from_proto(msg.labels),
            image=str(msg.image),
            runtime=str(msg.runtime.name),
            snapshotter=str(msg.snapshotter),
            snapshot_key=str(msg.snapshot_key),
            created_at=seconds_from_proto(msg.created_at),
            updated_at=seconds_from_proto(msg.updated_at),
        )


@dataclass(frozen=True)
class TaskInfo:
    """A container's task (its init process): pid and status name, one of STATUS_NAMES' values."""

    pid: int
    status: str

    @classmethod
    def from_proto(cls, process: Any) -> TaskInfo:
        """From a containerd.v1.types.Process (GetResponse.process)."""
        return cls(pid=int(process.pid), status=STATUS_NAMES.get(int(process.status), "UNKNOWN"))


class Runtime:
    """Containers + Tasks stubs bound to a ContainerdClient's channel and namespace."""

    def __init__(self, ctd: ContainerdClient) -> None:
        self.ctd = ctd
        self._containers = containers_pb2_grpc.ContainersStub(ctd.channel)
        self._tasks = tasks_pb2_grpc.TasksStub(ctd.channel)

    # -------------------------------------------------------------------------------- containers

    async def list_containers(self, filters: Sequence[str] = ()) -> list[ContainerRecord]:
        resp = await self.ctd.call("Containers.List", self._containers.List,
                                   containers_pb2.ListContainersRequest(filters=list(filters)))  # fmt: skip
        return [ContainerRecord.from_proto(c) for c in resp.containers]

    async def get_container(self, container_id: str) -> ContainerRecord | None:
        try:
            resp = await self.ctd.call("Containers.Get", self._containers.Get,
                                       containers_pb2.GetContainerRequest(id=container_id))  # fmt: skip
        except NotFoundError:
            return None
        return ContainerRecord.from_proto(resp.container)

    async def find_container(self, name_or_id: str) -> ContainerRecord | None:
        """By full ID, by nerdctl/name label, or by a unique ID prefix (docker's lookup order)."""
        found = await self.get_container(name_or_id)
        if found is not None:
            return found
        by_name = await self.list_containers([name_filter(name_or_id)])
        if by_name:
            return by_name[0]
        matches = [c for c in await self.list_containers() if c.id.startswith(name_or_id)]
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
        await self.ctd.call("Containers.Create", self._containers.Create,
                            containers_pb2.CreateContainerRequest(container=container))  # fmt: skip

    async def delete_container(self, container_id: str) -> None:
        with contextlib.suppress(NotFoundError):
            await self.ctd.call("Containers.Delete", self._containers.Delete,
                                containers_pb2.DeleteContainerRequest(id=container_id))  # fmt: skip

    # -------------------------------------------------------------------------------- tasks

    async def create_task(self, container_id: str, rootfs: Sequence[Mount], stdio: tuple[str, str, str],
                          terminal: bool) -> int:  # fmt: skip
        request = tasks_pb2.CreateTaskRequest(
            container_id=container_id, rootfs=[m.to_proto() for m in rootfs], stdin=stdio[0], stdout=stdio[1],
            stderr=stdio[2], terminal=terminal,
        )
        try:
            resp = await self.ctd.call("Tasks.Create", self._tasks.Create, request)
        except RpcError as err:
            raise _runtime_error("failed to create task for container", err) from None
        return int(resp.pid)

    async def start_task(self, container_id: str) -> int:
        try:
            request = tasks_pb2.StartRequest(container_id=container_id)
            resp = await self.ctd.call("Tasks.Start", self._tasks.Start, request)
        except RpcError as err:
            raise _runtime_error("failed to start container", err) from None
        return int(resp.pid)

    async def wait_task(self, container_id: str) -> int:
        resp = await self.ctd.call("Tasks.Wait", self._tasks.Wait, tasks_pb2.WaitRequest(container_id=container_id))
        return int(resp.exit_status)

    async def kill_task(self, container_id: str, signal: int, *, all_processes: bool = False) -> None:
        with contextlib.suppress(NotFoundError):
            await self.ctd.call("Tasks.Kill", self._tasks.Kill,
                                tasks_pb2.KillRequest(container_id=container_id, signal=signal, all=all_processes))

    async def delete_task(self, container_id: str) -> int | None:
        try:
            resp = await self.ctd.call("Tasks.Delete", self._tasks.Delete,
                                       tasks_pb2.DeleteTaskRequest(container_id=container_id))  # fmt: skip
        except NotFoundError:
            return None
        return int(resp.exit_status)

    async def get_task(self, container_id: str) -> TaskInfo | None:
        """The container's task, or None when it has none."""
        try:
            resp = await self.ctd.call("Tasks.Get", self._tasks.Get, tasks_pb2.GetRequest(container_id=container_id))
        except NotFoundError:
            return None
        return TaskInfo.from_proto(resp.process)

    async def close_stdin(self, container_id: str) -> None:
        with contextlib.suppress(NotFoundError):
            await self.ctd.call("Tasks.CloseIO", self._tasks.CloseIO,
                                tasks_pb2.CloseIORequest(container_id=container_id, stdin=True))

    async def resize_pty(self, container_id: str, columns: int, rows: int) -> None:
        with contextlib.suppress(NotFoundError):
            await self.ctd.call("Tasks.ResizePty", self._tasks.ResizePty,
                                tasks_pb2.ResizePtyRequest(container_id=container_id, width=columns, height=rows))
