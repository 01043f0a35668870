"""The background half of `socirun run -d`: waits for the task to exit, then tears down what the foreground
run would have (task, CNI DEL + netns; with --rm the container, snapshot, anonymous volumes and state).

Started by run.py in its own session with `python -m socirun.runtime.reaper STATE_DIR`; if it is killed, the
teardown does not happen (socirun has no daemon), as with nerdctl's client-side --rm.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from socirun.containerd.client import ContainerdClient
from socirun.errors import SocirunError
from socirun.runtime.lifecycle import ContainerState, Runtime, teardown


async def reap(state_dir: str) -> int:
    state = ContainerState.load(state_dir)
    async with await ContainerdClient.connect(state.address, state.namespace) as ctd:
        rt = Runtime(ctd)
        with contextlib.suppress(SocirunError):
            await rt.wait_task(state.id)
        await teardown(rt, state, remove=state.rm)
    return 0


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python -m socirun.runtime.reaper STATE_DIR", file=sys.stderr)
        return 2
    try:
        return asyncio.run(reap(sys.argv[1]))
    except (SocirunError, OSError) as err:
        print(f"socirun reaper: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
