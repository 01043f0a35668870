"""`run_with_tui`: run a piece of work (`async (emit) -> int`) with the TUI owning the terminal.

Lifecycle (what `socirun pull` and `socirun run` rely on):

- pull (default): the TUI closes when the work returns; the layer rows and the summary line are then printed to
  stderr so the final state stays in the scrollback; returns the work's code.
- `foreground=True` (run, attached): the TUI closes as soon as `ContainerStarted` is emitted; the summary line is
  printed to stderr and the work keeps running with the terminal restored (the container owns it); returns the
  work's code (the container's exit code).
- `detach=True` (run -d): after `ContainerStarted` the TUI keeps showing lazy fetches until `q`; then the work is
  cancelled if still running (the container keeps running), the container ID goes to stdout, returns 0.
- errors: a SocirunError (or an `Error` event) closes the app at once, never waiting for a key (a script in a
  terminal would hang); the error is re-raised once the alternate screen is gone, so the CLI's single handler
  prints it into the scrollback (exit 125, or the error's own code).
- Ctrl-C (or `q` during a pull): the work task is cancelled (the engine rolls back under its lease) and
  `Interrupted` (exit 130) is raised once it has finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import sys
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TextIO

from socirun import events as ev
from socirun.errors import Interrupted, SocirunError
from socirun.ui.progress import INTERRUPTED

if TYPE_CHECKING:
    from textual.pilot import Pilot



def run_with_tui(
    work: ev.Work,
    *,
    detach: bool = False,
    foreground: bool = False,
    headless: bool = False,
    size: tuple[int, int] | None = None,
    clock: Callable[[], float] = time.monotonic,
    err: TextIO | None = None,
    out: TextIO | None = None,
) -> int:
    """Synchronous entry point: owns the event loop (asyncio.run) for the whole work, TUI or not."""
    return asyncio.run(
        run_with_tui_async(work, detach=detach, foreground=foreground, headless=headless,
                           size=size, clock=clock, err=err, out=out)
    )


async def run_with_tui_async(
    work: ev.Work,
    *,
    detach: bool = False,
    foreground: bool = False,
    headless: bool = False,
    size: tuple[int, int] | None = None,
    clock: Callable[[], float] = time.monotonic,
    err: TextIO | None = None,
    out: TextIO | None = None,
    auto_pilot: Callable[[Pilot[object]], Coroutine[Any, Any, None]] | None = None,
) -> int:
    """As `run_with_tui`, inside a running loop; `auto_pilot` drives the app with keys (tests, benchmarks)."""
    err = err or sys.stderr
    out = out or sys.stdout
    # Start the work at once and load textual in a thread meanwhile (~0.2 s): the pull does not wait for the
    # UI. Events emitted before the app exists are kept and handed over in order.
    early: list[ev.Event] = []
    sink: list[ev.Emit] = [early.append]
    started: asyncio.Future[int] = asyncio.ensure_future(work(lambda event: sink[0](event)))
    try:
        tui = await asyncio.to_thread(importlib.import_module, "socirun.ui.tui.app")
    except BaseException:
        started.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await started
        raise
    from socirun.ui.tui import format as fmt

    async def adopted(emit: ev.Emit) -> int:
        # Cancelling the app's task cancels `started` too (it is awaited unshielded) and waits for its cleanup.
        return await started

    app = tui.PullApp(adopted, clock=clock, detach=detach, foreground=foreground)
    for event in early:
        app.emit(event)
    sink[0] = app.emit
    try:
        await app.run_async(headless=headless, size=size, auto_pilot=auto_pilot)
    finally:
        task = app.work_task
        if task is None and not started.done():
            started.cancel()  # the app never mounted (it failed to start): do not leave the work running
            with contextlib.suppress(asyncio.CancelledError):
                await started
        if task is not None and not task.done() and not app.handed_off:
            # The app closed while the work still ran (q, Ctrl-C, detach, or a crash): cancel it and wait, so
            # the engine's cleanup (lease release, ingest abort) completes before we return.
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    model = app.model
    if app.handed_off:
        for line in fmt.summary_lines(model):
            print(line, file=err)
        err.flush()
        assert app.work_task is not None
        await app.work_task
        if app.work_error is not None:
            raise app.work_error
        return app.work_code or 0
    if app.work_error is not None:
        raise app.work_error
    if model.error is not None:
        raise SocirunError(model.error.message, exit_code=model.error.exit_code)
    if app.cancelled or (app.work_task is not None and app.work_task.cancelled() and not app.detached):
        raise Interrupted(INTERRUPTED)
    for line in fmt.recap_lines(model):
        print(line, file=err)
    err.flush()
    if app.detached or (detach and model.container_id):
        print(model.container_id, file=out)
        out.flush()
        return 0
    return app.work_code or 0
