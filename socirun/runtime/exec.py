"""`socirun exec`: a second process in a running container through containerd's Tasks.Exec, with FIFOs (or a pty
with -t) as the main process gets them (socirun/runtime/stdio.py, tty.py), and the process's exit code.

Order: Containers.Get (the container's own process spec: env, user, cwd, capabilities, …) → the exec's process
spec (pure: `exec_process_spec`) → FIFO readers → Tasks.Exec → Tasks.Wait (before Start, so the exit cannot be
missed) → Tasks.Start → copy stdio until the exit → Tasks.DeleteProcess.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import any_pb2  # type: ignore[import-untyped]

from socirun.containerd.api.services.containers.v1 import containers_pb2, containers_pb2_grpc
from socirun.containerd.api.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from socirun.containerd.errors import NotFoundError, RpcError
from socirun.containerd.runtime import Runtime, exit_code_for
from socirun.errors import SocirunError
from socirun.runtime.image_users import ResolvedUser, read_rootfs_file, resolve_user
from socirun.runtime.stdio import TaskIO
from socirun.runtime.tty import raw_mode, terminal_size

PROCESS_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
OUTPUT_DRAIN_S = 10.0
EXIT_GENERAL = 1  # docker's exit for a failed request that is not about the process (e.g. "is not running")


@dataclass(frozen=True)
class ExecRequest:
    args: list[str]
    env: list[str]  # KEY=VALUE, added to (and overriding) the container's
    workdir: str = ""
    user: str = ""
    tty: bool = False
    interactive: bool = False
    detach: bool = False


def merged_env(base: Sequence[str], extra: Sequence[str]) -> list[str]:
    """The container's environment with `extra` added; a KEY in `extra` replaces the container's KEY in place."""
    out: dict[str, str] = {}
    for item in [*base, *extra]:
        key = item.partition("=")[0]
        out[key] = item
    return list(out.values())


def exec_process_spec(base: dict[str, Any], req: ExecRequest, user: ResolvedUser | None) -> dict[str, Any]:
    """The exec's OCI process: the container's (env, capabilities, rlimits, apparmor, no-new-privileges, …) with
    docker exec's overrides: argv, -e, -w, -u and -t."""
    process: dict[str, Any] = json.loads(json.dumps(base))  # a deep copy
    process["args"] = list(req.args)
    process["env"] = merged_env(process.get("env") or [], req.env)
    process["terminal"] = req.tty
    process.pop("consoleSize", None)
    if req.workdir:
        process["cwd"] = req.workdir
    if user is not None:
        process["user"] = {"uid": user.uid, "gid": user.gid, "additionalGids": list(user.additional_gids)}
    return process


class Exec:
    """One exec'd process of a container."""

    def __init__(self, rt: Runtime, container_id: str, exec_id: str | None = None) -> None:
        self.rt = rt
        self.container_id = container_id
        self.exec_id = exec_id or f"exec-{secrets.token_hex(8)}"
        self._tasks = tasks_pb2_grpc.TasksStub(rt.ctd.channel)
        self._containers = containers_pb2_grpc.ContainersStub(rt.ctd.channel)

    async def container_process(self) -> tuple[dict[str, Any], str, str]:
        """(the container's OCI process, its snapshotter, its snapshot key)."""
        try:
            resp = await self.rt.ctd.call("Containers.Get", self._containers.Get,
                                          containers_pb2.GetContainerRequest(id=self.container_id))  # fmt: skip
        except NotFoundError:
            raise SocirunError(f"No such container: {self.container_id}", exit_code=EXIT_GENERAL) from None
        spec = json.loads(bytes(resp.container.spec.value) or b"{}")
        return dict(spec.get("process") or {}), str(resp.container.snapshotter), str(resp.container.snapshot_key)

    async def create(self, process: dict[str, Any], stdio: tuple[str, str, str], terminal: bool) -> None:
        request = tasks_pb2.ExecProcessRequest(
            container_id=self.container_id, exec_id=self.exec_id, stdin=stdio[0], stdout=stdio[1], stderr=stdio[2],
            terminal=terminal, spec=any_pb2.Any(type_url=PROCESS_TYPE_URL, value=json.dumps(process).encode()),
        )
        try:
            await self.rt.ctd.call("Tasks.Exec", self._tasks.Exec, request)
        except RpcError as err:
            raise SocirunError(f"exec failed: {err.details}", exit_code=exit_code_for(err.details)) from None

    async def start(self) -> None:
        try:
            await self.rt.ctd.call("Tasks.Start", self._tasks.Start,
                                   tasks_pb2.StartRequest(container_id=self.container_id, exec_id=self.exec_id))
        except RpcError as err:
            raise SocirunError(f"OCI runtime exec failed: {err.details}",
                               exit_code=exit_code_for(err.details)) from None  # fmt: skip

    async def wait(self) -> int:
        resp = await self.rt.ctd.call("Tasks.Wait", self._tasks.Wait,
                                      tasks_pb2.WaitRequest(container_id=self.container_id, exec_id=self.exec_id))
        return int(resp.exit_status)

    async def delete(self) -> None:
        with contextlib.suppress(RpcError):
            await self.rt.ctd.call("Tasks.DeleteProcess", self._tasks.DeleteProcess,
                                   tasks_pb2.DeleteProcessRequest(container_id=self.container_id,
                                                                  exec_id=self.exec_id))  # fmt: skip

    async def close_stdin(self) -> None:
        with contextlib.suppress(RpcError):
            await self.rt.ctd.call("Tasks.CloseIO", self._tasks.CloseIO,
                                   tasks_pb2.CloseIORequest(container_id=self.container_id, exec_id=self.exec_id,
                                                            stdin=True))  # fmt: skip

    async def resize(self, columns: int, rows: int) -> None:
        with contextlib.suppress(RpcError):
            await self.rt.ctd.call("Tasks.ResizePty", self._tasks.ResizePty,
                                   tasks_pb2.ResizePtyRequest(container_id=self.container_id, exec_id=self.exec_id,
                                                              width=columns, height=rows))  # fmt: skip


async def _user(rt: Runtime, spec: str, snapshotter: str, key: str) -> ResolvedUser | None:
    """-u as docker exec takes it, names looked up in the container's own /etc/passwd and /etc/group (read from
    its snapshot's layers, never through a path the container could point elsewhere)."""
    if not spec:
        return None
    mounts = await rt.ctd.snapshot_mounts(snapshotter, key) if snapshotter and key else []
    passwd = read_rootfs_file(mounts, "/etc/passwd") if mounts else None
    group = read_rootfs_file(mounts, "/etc/group") if mounts else None
    return resolve_user(spec, passwd, group)


async def run_exec(rt: Runtime, container_id: str, req: ExecRequest, fifo_root: str | None = None) -> int:
    """Run `req` in the container; its exit code (0 at once with detach)."""
    task = await rt.get_task(container_id)
    if task is None or task.status != "RUNNING":
        raise SocirunError(f"container {container_id} is not running", exit_code=EXIT_GENERAL)
    ex = Exec(rt, container_id)
    base, snapshotter, key = await ex.container_process()
    process = exec_process_spec(base, req, await _user(rt, req.user, snapshotter, key))
    if req.detach:
        await ex.create(process, ("", "", ""), req.tty)
        await ex.start()
        return 0
    fifo_dir = tempfile.mkdtemp(prefix="socirun-exec-", dir=fifo_root)  # 0700
    io = TaskIO(fifo_dir, ex.exec_id, stdin=req.interactive, stderr=not req.tty)
    loop = asyncio.get_running_loop()
    try:
        io.create()
        io.start_output("stdout", sys.stdout.fileno())
        if not req.tty:
            io.start_output("stderr", sys.stderr.fileno())
        try:
            await ex.create(process, io.paths, req.tty)
        except BaseException:
            io.unblock()
            raise
        waiting = asyncio.ensure_future(ex.wait())
        tty_fd = sys.stdin.fileno()
        with raw_mode(tty_fd) if (req.tty and req.interactive) else contextlib.nullcontext():
            try:
                await ex.start()
            except BaseException:
                waiting.cancel()
                io.unblock()
                await ex.delete()
                raise
            if req.tty:
                size = terminal_size(tty_fd) or terminal_size(sys.stdout.fileno())
                if size is not None:
                    await ex.resize(*size)
                loop.add_signal_handler(signal.SIGWINCH, lambda: _resize_soon(ex, tty_fd))
            if req.interactive:

                def stdin_eof() -> None:
                    loop.call_soon_threadsafe(_close_stdin_soon, ex)

                io.start_input(tty_fd, stdin_eof)
            try:
                code = await waiting
            finally:
                if req.tty:
                    loop.remove_signal_handler(signal.SIGWINCH)
        await asyncio.to_thread(io.wait_output, OUTPUT_DRAIN_S)
        await ex.delete()
        return code
    finally:
        with contextlib.suppress(ValueError, OSError):
            sys.stdout.flush()
        io.close()
        shutil.rmtree(fifo_dir, ignore_errors=True)


_pending: set[asyncio.Future[None]] = set()


def _background(fut: asyncio.Future[None]) -> None:
    _pending.add(fut)
    fut.add_done_callback(_pending.discard)


def _resize_soon(ex: Exec, fd: int) -> None:
    size = terminal_size(fd) or terminal_size(sys.stdout.fileno())
    if size is not None:
        _background(asyncio.ensure_future(ex.resize(*size)))


def _close_stdin_soon(ex: Exec) -> None:
    _background(asyncio.ensure_future(ex.close_stdin()))

