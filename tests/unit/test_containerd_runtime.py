"""socirun.containerd.runtime without containerd: typed container and task records from canned answers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio
import pytest

from socirun.containerd.api.services.containers.v1 import containers_pb2
from socirun.containerd.api.services.tasks.v1 import tasks_pb2
from socirun.containerd.api.types.task import task_pb2
from socirun.containerd.errors import NotFoundError, RpcError
from socirun.containerd.runtime import ContainerRecord, ContainerRunError, Runtime, TaskInfo
from socirun.errors import EXIT_NOT_FOUND


def _container(container_id: str, name: str = "") -> Any:
    return containers_pb2.Container(
        id=container_id,
        labels={"nerdctl/name": name} if name else {},
        image="docker.io/library/alpine:latest",
        runtime=containers_pb2.Container.Runtime(name="io.containerd.runc.v2"),
        snapshotter="overlayfs",
        snapshot_key=container_id,
    )


class FakeClient:
    """Stands in for ContainerdClient: `call` answers by RPC name from `answers` (a value or a callable)."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.channel = grpc.aio.insecure_channel("unix:/nonexistent.sock")
        self.answers = answers
        self.requests: list[tuple[str, Any]] = []

    async def call(self, rpc: str, method: Callable[..., Any], request: Any, *, timeout: float | None = None) -> Any:
        self.requests.append((rpc, request))
        answer = self.answers[rpc]
        return answer(request) if callable(answer) else answer


def _not_found(rpc: str) -> NotFoundError:
    return NotFoundError(f"containerd {rpc}: not found", rpc=rpc, code=grpc.StatusCode.NOT_FOUND, details="not found")


def test_container_record_from_proto() -> None:
    record = ContainerRecord.from_proto(_container("abc123", "web"))
    assert record == ContainerRecord(
        id="abc123", labels={"nerdctl/name": "web"}, image="docker.io/library/alpine:latest",
        runtime="io.containerd.runc.v2", snapshotter="overlayfs", snapshot_key="abc123",
    )  # fmt: skip


def test_task_info_from_proto() -> None:
    assert TaskInfo.from_proto(task_pb2.Process(pid=42, status=task_pb2.RUNNING)) == TaskInfo(42, "RUNNING")
    assert TaskInfo.from_proto(task_pb2.Process(pid=7, status=task_pb2.STOPPED)).status == "STOPPED"


async def test_get_task_is_typed_and_none_without_a_task() -> None:
    def get(request: Any) -> Any:
        if request.container_id == "gone":
            raise _not_found("Tasks.Get")
        return tasks_pb2.GetResponse(process=task_pb2.Process(pid=1234, status=task_pb2.CREATED))

    rt = Runtime(FakeClient({"Tasks.Get": get}))  # type: ignore[arg-type]
    assert await rt.get_task("c1") == TaskInfo(pid=1234, status="CREATED")
    assert await rt.get_task("gone") is None


async def test_find_container_by_id_then_name_then_unique_prefix() -> None:
    containers = [_container("abc123", "web"), _container("abd456"), _container("fff000")]

    def get(request: Any) -> Any:
        for c in containers:
            if c.id == request.id:
                return containers_pb2.GetContainerResponse(container=c)
        raise _not_found("Containers.Get")

    def list_(request: Any) -> Any:
        found = containers
        if request.filters:
            found = [c for c in containers if f'labels."nerdctl/name"=={c.labels.get("nerdctl/name")}'
                     in request.filters]  # fmt: skip
        return containers_pb2.ListContainersResponse(containers=found)

    rt = Runtime(FakeClient({"Containers.Get": get, "Containers.List": list_}))  # type: ignore[arg-type]
    by_id = await rt.find_container("fff000")
    assert isinstance(by_id, ContainerRecord) and by_id.id == "fff000"
    by_name = await rt.find_container("web")
    assert by_name is not None and by_name.id == "abc123" and by_name.labels == {"nerdctl/name": "web"}
    by_prefix = await rt.find_container("abd")
    assert by_prefix is not None and by_prefix.id == "abd456"
    assert await rt.find_container("ab") is None  # ambiguous
    assert [c.id for c in await rt.list_containers()] == ["abc123", "abd456", "fff000"]


async def test_a_failed_start_is_a_container_run_error_with_docker_exit_code() -> None:
    details = 'exec: "nope": executable file not found in $PATH: unknown'

    def start(request: Any) -> Any:
        raise RpcError("containerd Tasks.Start failed", rpc="Tasks.Start", code=grpc.StatusCode.UNKNOWN,
                       details=details)  # fmt: skip

    rt = Runtime(FakeClient({"Tasks.Start": start}))  # type: ignore[arg-type]
    with pytest.raises(ContainerRunError) as info:
        await rt.start_task("c1")
    assert info.value.exit_code == EXIT_NOT_FOUND
    assert str(info.value) == f"failed to start container: {details}"
