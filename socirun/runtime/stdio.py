"""The task's stdio: FIFOs in the container's state directory, copied by threads.

containerd's shim opens the stdout/stderr FIFOs for writing with a blocking open, so `Tasks.Create` blocks until
the read ends are open (https://github.com/containerd/containerd/blob/v1.6.20/cio/io_unix.go): the readers are opened
in threads *before* Create. Closing
our write end of stdin does not give the container EOF; `Tasks.CloseIO` does, and `on_stdin_eof` is called for it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

CHUNK = 64 * 1024


@dataclass
class TaskIO:
    dir: str
    container_id: str
    stdin: bool
    stdout: bool = True
    stderr: bool = True  # False with a tty: the pty merges stderr into stdout
    _threads: list[threading.Thread] = field(default_factory=list)
    _fds: list[int] = field(default_factory=list)
    _opened: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closed: bool = False

    def path(self, stream: str) -> str:
        return os.path.join(self.dir, f"{self.container_id}-{stream}")

    @property
    def paths(self) -> tuple[str, str, str]:
        return (
            self.path("stdin") if self.stdin else "",
            self.path("stdout") if self.stdout else "",
            self.path("stderr") if self.stderr else "",
        )

    def create(self) -> None:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        for stream, wanted in (("stdin", self.stdin), ("stdout", self.stdout), ("stderr", self.stderr)):
            if wanted:
                with contextlib.suppress(FileExistsError):
                    os.mkfifo(self.path(stream), 0o700)

    def start_output(self, stream: str, out_fd: int) -> None:
        """Open `stream`'s read end in a thread (blocks until the shim opens it) and copy it to `out_fd`."""

        def copy() -> None:
            try:
                fd = os.open(self.path(stream), os.O_RDONLY)
            except OSError:
                return
            with self._lock:
                self._fds.append(fd)
                if self._closed:
                    return
            try:
                while True:
                    try:
                        data = os.read(fd, CHUNK)
                    except OSError as err:
                        if err.errno == errno.EINTR:
                            continue
                        return
                    if not data:
                        return
                    _write_all(out_fd, data)
            finally:
                self._close_fd(fd)

        thread = threading.Thread(target=copy, name=f"socirun-{stream}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def start_input(self, in_fd: int, on_eof: Callable[[], None]) -> None:
        """Open the stdin FIFO for writing (blocks until the shim opens it) and copy `in_fd` into it."""

        def copy() -> None:
            try:
                fd = os.open(self.path("stdin"), os.O_WRONLY)
            except OSError:
                return
            with self._lock:
                self._fds.append(fd)
            try:
                while True:
                    try:
                        data = os.read(in_fd, CHUNK)
                    except OSError as err:
                        if err.errno == errno.EINTR:
                            continue
                        break
                    if not data:
                        break
                    try:
                        _write_all(fd, data)
                    except OSError:
                        return
            finally:
                self._close_fd(fd)
            on_eof()

        thread = threading.Thread(target=copy, name="socirun-stdin", daemon=True)
        thread.start()  # not joined: a read on our stdin may block forever after the container exited

    def _close_fd(self, fd: int) -> None:
        with self._lock:
            if fd in self._fds:
                self._fds.remove(fd)
                with contextlib.suppress(OSError):
                    os.close(fd)

    def unblock(self) -> None:
        """After a failed Create: open the other end of each FIFO so threads stuck in open(2) return."""
        for stream, flags in (("stdout", os.O_WRONLY), ("stderr", os.O_WRONLY), ("stdin", os.O_RDONLY)):
            path = self.path(stream)
            if os.path.exists(path):
                with contextlib.suppress(OSError):
                    os.close(os.open(path, flags | os.O_NONBLOCK))

    def wait_output(self, timeout: float) -> None:
        """Wait until the output threads saw EOF (the shim drained and closed its ends after the exit)."""
        for thread in self._threads:
            thread.join(timeout)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            fds, self._fds = list(self._fds), []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        for stream in ("stdin", "stdout", "stderr"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(stream))
        with contextlib.suppress(OSError):
            os.rmdir(self.dir)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except InterruptedError:
            continue
        view = view[n:]
