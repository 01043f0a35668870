"""The background half of `socirun run -d`: waits for the task to exit, then tears down what the foreground
run would have (task, CNI DEL + netns; with --rm the container, snapshot, anonymous volumes and state).
With `-dt` it also drains the pty's FIFO into the container's log file.

Started by run.py in its own session with `python -m socirun.runtime.reaper STATE_DIR [--tty-log FIFO LOG]`;
if it is killed, the teardown does not happen (socirun has no daemon), as with nerdctl's client-side --rm.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading

from socirun.containerd.client import ContainerdClient
from socirun.errors import SocirunError
from socirun.runtime.lifecycle import ContainerState, Runtime, teardown

TASK_APPEAR_TIMEOUT_S = 120


def drain(fifo: str, log: str) -> threading.Thread:
    def copy() -> None:
        with contextlib.suppress(OSError), open(fifo, "rb", buffering=0) as src, open(log, "ab") as dst:
            while chunk := src.read(65536):
                dst.write(chunk)
                dst.flush()

    thread = threading.Thread(target=copy, daemon=True)
    thread.start()
    return thread


async def reap(state_dir: str, tty_log: tuple[str, str] | None = None) -> int:
    state = ContainerState.load(state_dir)
    copier = drain(*tty_log) if tty_log else None
    async with await ContainerdClient.connect(state.address, state.namespace) as ctd:
        rt = Runtime(ctd)
        # Started before Tasks.Create: wait for the task to exist. If the reader ended and there is still no
        # task, the create failed and the foreground run has already cleaned up.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TASK_APPEAR_TIMEOUT_S
        while await rt.get_task(state.id) is None:
            if (copier is not None and not copier.is_alive()) or loop.time() > deadline:
                return 0
            await asyncio.sleep(0.1)
        with contextlib.suppress(SocirunError):
            await rt.wait_task(state.id)
        if copier is not None:
            await asyncio.to_thread(copier.join, 5)
            with contextlib.suppress(OSError):
                os.unlink(tty_log[0])  # type: ignore[index]
        await teardown(rt, state, remove=state.rm)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[1] == "--tty-log":
        tty_log: tuple[str, str] | None = (argv[2], argv[3])
    elif len(argv) == 1:
        tty_log = None
    else:
        print("usage: python -m socirun.runtime.reaper STATE_DIR [--tty-log FIFO LOG]", file=sys.stderr)
        return 2
    try:
        return asyncio.run(reap(argv[0], tty_log))
    except (SocirunError, OSError) as err:
        print(f"socirun reaper: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
