"""The background half of `socirun run -d` (and of a foreground run whose client leaves while the container runs,
`--sig-proxy=false` then Ctrl-C): drains the container's output FIFOs into its log file (docker's json-file format,
rotated: socirun/runtime/logs.py; the first FIFO is stdout, the second stderr), records the exit code, waits for
the task to exit, then tears down what a foreground run would have (task, CNI DEL + netns; with --rm the
container, snapshot, anonymous volumes and state).

Started by socirun/runtime/container.py through start() in its own session, before Tasks.Create, with the
arguments `STATE_DIR --log LOG FIFO [FIFO]`. If it is killed, the teardown does not happen (socirun has no
daemon), as with nerdctl's client-side --rm.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO, Any

import socirun
from socirun.containerd.client import ContainerdClient
from socirun.containerd.runtime import Runtime
from socirun.errors import SocirunError
from socirun.runtime.lifecycle import ContainerState, teardown
from socirun.runtime.logs import JsonFileWriter, StreamLines

TASK_APPEAR_TIMEOUT_S = 120
DRAIN_TIMEOUT_S = 10


STREAMS = ("stdout", "stderr")


def drain(fifo: str, lines: StreamLines) -> threading.Thread:
    """Copy `fifo` into the log as json-file entries until EOF (the shim closes its end once the process exited
    and was drained)."""

    def copy() -> None:
        with contextlib.suppress(OSError), open(fifo, "rb", buffering=0) as src:
            while chunk := src.read(65536):
                lines.feed(chunk)
        with contextlib.suppress(OSError):
            lines.flush()  # a last line without its newline

    thread = threading.Thread(target=copy, daemon=True)
    thread.start()
    return thread


async def reap(state_dir: str, log_path: str, fifos: list[str]) -> int:
    state = ContainerState.load(state_dir)
    log = JsonFileWriter(log_path, max_size=state.log_max_size, max_file=state.log_max_file)
    try:
        copiers = [drain(fifo, StreamLines(log, stream)) for fifo, stream in zip(fifos, STREAMS, strict=False)]
        async with await ContainerdClient.connect(state.address, state.namespace) as ctd:
            rt = Runtime(ctd)
            # Started before Tasks.Create: wait for the task to exist. If the readers ended and there is still no
            # task, the create failed and the foreground run has already cleaned up.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + TASK_APPEAR_TIMEOUT_S
            while await rt.get_task(state.id) is None:
                if not any(c.is_alive() for c in copiers) or loop.time() > deadline:
                    return 0
                await asyncio.sleep(0.1)
            exit_code: int | None = None
            with contextlib.suppress(SocirunError):
                exit_code = await rt.wait_task(state.id)
            for copier in copiers:
                await asyncio.to_thread(copier.join, DRAIN_TIMEOUT_S)
            for fifo in fifos:
                with contextlib.suppress(OSError):
                    os.unlink(fifo)
            if exit_code is not None:
                # After the drain: `socirun logs -f` ends once it sees the exit, and must have every line by then.
                state.record_exit(exit_code, time.time())
            await teardown(rt, state, remove=state.rm)
    finally:
        log.close()
    return 0


# The child's whole program: it runs as root, so it must import exactly the socirun (and the dependencies) this
# process imported, never a `socirun` planted in the caller's working directory or named by PYTHONPATH: `-I`
# (isolated: no cwd or script directory on sys.path, PYTHON* variables and the user's site ignored; it implies
# -P and -E) with cwd "/", and this process's own import path handed over explicitly as the first argument.
_BOOTSTRAP = (
    "import json, sys; sys.path[:0] = json.loads(sys.argv.pop(1)); "
    "from socirun.runtime.reaper import main; sys.exit(main(sys.argv[1:]))"
)


def command(state_dir: str, log_path: str, fifos: Sequence[str]) -> list[str]:
    """The reaper's argv: the running interpreter in isolated mode, with this process's absolute import path."""
    # The directory this socirun came from goes first: even with this process's cwd on its sys.path (started as
    # `python -m socirun`), the child's `socirun` is this one. "" and relative entries would mean the cwd.
    home = os.path.dirname(os.path.dirname(os.path.abspath(socirun.__file__)))
    paths = [home, *(p for p in sys.path if os.path.isabs(p) and p != home)]
    return [sys.executable, "-I", "-c", _BOOTSTRAP, json.dumps(paths), state_dir, "--log", log_path, *fifos]


def start(state_dir: str, log_path: str, fifos: Sequence[str], *,
          stderr: int | IO[Any] = subprocess.DEVNULL) -> subprocess.Popen[bytes]:  # fmt: skip
    """Start the reaper detached from this process (own session, cwd "/", no inherited descriptors)."""
    for path in (state_dir, log_path, *fifos):
        if not os.path.isabs(path):
            raise ValueError(f"reaper paths must be absolute (it runs in /): {path}")
    return subprocess.Popen(command(state_dir, log_path, fifos), cwd="/", stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True, close_fds=True)


def holds(pid: int, paths: Sequence[str]) -> bool:
    """Whether process `pid` has every one of `paths` open (a foreground run handing its container over waits for
    this before closing its own FIFO readers)."""
    wanted = {os.path.realpath(p) for p in paths}
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return False
    for name in names:
        with contextlib.suppress(OSError):
            wanted.discard(os.readlink(os.path.join(fd_dir, name)))
    return not wanted


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[1] != "--log":
        print("usage: reaper STATE_DIR --log LOG FIFO [FIFO]", file=sys.stderr)
        return 2
    try:
        return asyncio.run(reap(argv[0], argv[2], argv[3:]))
    except (SocirunError, OSError) as err:
        print(f"socirun reaper: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
