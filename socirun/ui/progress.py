"""Choosing the face for `--progress`, and driving it: events in, lines (or a screen) out, a tick for heartbeats."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Mapping
from typing import Protocol, TextIO

from socirun import events as ev
from socirun.config import PROGRESS_MODES, SocirunConfig
from socirun.errors import EXIT_DAEMON, EXIT_INTERRUPTED, SocirunError, UsageError
from socirun.ui.jsonl import JsonRenderer, QuietRenderer
from socirun.ui.plain import PlainRenderer

TICK_S = 1.0
# What Ctrl-C (or q during a pull) leaves, said by the TUI, the CLI's shell and the `interrupted` event alike: the
# engine removes a half-unpacked snapshot and keeps the downloaded bytes under a "resume" lease (pull/leases.py).
INTERRUPTED = "interrupted; half-unpacked layers were removed and the downloaded bytes kept, so a rerun resumes"


class Reported(Exception):
    """The work failed or was interrupted and its face has said so already: the JSON stream's last line is the
    `error` or `interrupted` event. The CLI's shell then adds no line of its own (stderr holds nothing but JSON
    lines) and exits with `exit_code`; the original exception is the cause (--debug prints it)."""

    def __init__(self, exit_code: int) -> None:
        super().__init__(f"reported on the event stream (exit {exit_code})")
        self.exit_code = exit_code


def error_event(err: BaseException) -> ev.Error:
    """The `error` event for what escaped the work: a SocirunError's sentence and code; anything else is
    socirun's own failure, exit 125, as the CLI's shell says it."""
    if isinstance(err, SocirunError):
        return ev.Error(message=err.message, exit_code=err.exit_code)
    return ev.Error(message=f"unexpected error ({type(err).__name__}: {err or 'no message'})", exit_code=EXIT_DAEMON)



class Renderer(Protocol):
    def handle(self, event: ev.Event) -> None: ...
    def tick(self, now: float) -> None: ...


def choose_progress(requested: str, *, stdin_tty: bool, stderr_tty: bool, env: Mapping[str, str]) -> str:
    """`auto` is the TUI only for a person at a terminal: stdin and stderr are TTYs, TERM is not dumb, no CI."""
    if requested not in PROGRESS_MODES:
        raise UsageError(
            f'invalid value "{requested}" for --progress: choose one of {", ".join(PROGRESS_MODES)}'
        )
    if requested != "auto":
        return requested
    interactive = stdin_tty and stderr_tty and env.get("TERM", "") != "dumb" and not env.get("CI")
    return "tty" if interactive else "plain"


def make_renderer(mode: str, out: TextIO) -> Renderer:
    if mode == "plain":
        return PlainRenderer(out)
    if mode == "json":
        return JsonRenderer(out)
    if mode == "quiet":
        return QuietRenderer(out)
    # tty is not a line renderer: the TUI owns the event loop, so `run_work` runs it (run_with_tui).
    raise UsageError(f"--progress={mode} has no line renderer; choose plain, json or quiet")


class Silent:
    """No output at all (docker run -q prints nothing of the pull; pull -q still names the image)."""

    def handle(self, event: ev.Event) -> None:
        pass

    def tick(self, now: float) -> None:
        pass


class PullOnly:
    """A line face for `socirun run` that shows the pull only: once the container runs, stderr belongs to it
    (as with docker)."""

    def __init__(self, inner: Renderer) -> None:
        self.inner = inner

    def handle(self, event: ev.Event) -> None:
        if not isinstance(event, ev.ContainerCreated | ev.ContainerStarted | ev.ContainerExited):
            self.inner.handle(event)

    def tick(self, now: float) -> None:
        self.inner.tick(now)


def run_renderer(mode: str, out: TextIO) -> Renderer:
    """The line face of `socirun run` for `mode` (plain, json or quiet; the TUI is run_work's)."""
    if mode == "quiet":
        return Silent()
    renderer = make_renderer(mode, out)
    return renderer if mode == "json" else PullOnly(renderer)


def open_recording(path: str) -> TextIO:
    """The `--record-events` file, opened for writing before any work starts; a path that cannot be written is
    the user's to fix, so it is a sentence (exit 125), not a traceback."""
    try:
        return open(path, "w", encoding="utf-8")  # the caller closes it
    except OSError as err:
        raise UsageError(f"cannot write --record-events file {path}: {err.strerror or err}") from None


class Recorder:
    """Tees the stream into a JSON-lines file (`--record-events`) for replay into any face."""

    def __init__(self, inner: Renderer, path: str) -> None:
        self.inner = inner
        self._file = open_recording(path)

    def handle(self, event: ev.Event) -> None:
        self._file.write(json.dumps(ev.to_record(event), separators=(",", ":")) + "\n")
        self.inner.handle(event)

    def tick(self, now: float) -> None:
        self.inner.tick(now)

    def close(self) -> None:
        self._file.close()


@contextlib.asynccontextmanager
async def rendering(renderer: Renderer) -> AsyncIterator[ev.Emit]:
    """Yield an `emit` for the engine; tick the renderer about once a second until the block ends."""

    async def ticker() -> None:
        while True:
            await asyncio.sleep(TICK_S)
            renderer.tick(time.time())

    task = asyncio.create_task(ticker())
    try:
        yield renderer.handle
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def progress_mode_for(flag: str | None, config: SocirunConfig) -> str:
    """The one resolution of the face: the flag, else the configuration (file, then SOCIRUN_PROGRESS: see
    load_config), with `auto` decided against this process's terminals."""
    return choose_progress(
        flag or config.progress, stdin_tty=sys.stdin.isatty(), stderr_tty=sys.stderr.isatty(), env=os.environ
    )


def run_work(work: ev.Work, mode: str, *, record: str | None = None, out: TextIO | None = None,
             detach: bool = False, foreground: bool = False, renderer: Renderer | None = None) -> int:
    """Run `work` with the face `mode` (already resolved: tty, plain, json or quiet) and return its code.

    tty hands the terminal and the event loop to the Textual app (`socirun.ui.tui.run_with_tui`, imported only
    here, so the plain path never loads textual); the other faces run the work under `asyncio.run` with
    `rendering()` (`renderer`, or the one `mode` names). `record` tees every event into a JSON-lines file,
    whatever the face. How the work ends is always the stream's last event: a SocirunError from the work is an
    `error` event, and a cancellation (Ctrl-C, q) an `interrupted` one, so JSON consumers and recordings see it.
    The error is then re-raised for the CLI's single handler, except in json mode, where the event was the report:
    `Reported` carries only the exit code. `detach` / `foreground` only matter to the TUI (see `run_with_tui`);
    a detached TUI run cancels its work when the user leaves, which interrupts nothing.
    """
    recording = open_recording(record) if record else None

    def tee(emit: ev.Emit) -> ev.Emit:
        if recording is None:
            return emit

        def both(event: ev.Event) -> None:
            recording.write(json.dumps(ev.to_record(event), separators=(",", ":")) + "\n")
            recording.flush()  # a recording ends with how the run ended, even when the process is killed next
            emit(event)

        return both

    async def with_error_event(emit: ev.Emit) -> int:
        try:
            return await work(emit)
        except asyncio.CancelledError:
            if not detach:
                emit(ev.Interrupted(message=INTERRUPTED, exit_code=EXIT_INTERRUPTED))
            raise
        except Exception as err:
            emit(error_event(err))
            raise

    try:
        if mode == "tty":
            from socirun.ui.tui import run_with_tui

            return run_with_tui(lambda emit: with_error_event(tee(emit)), detach=detach, foreground=foreground)
        face = renderer or make_renderer(mode, out or sys.stderr)

        async def main() -> int:
            async with rendering(face) as emit:
                return await with_error_event(tee(emit))

        try:
            return asyncio.run(main())
        except KeyboardInterrupt as err:
            if mode == "json":
                raise Reported(EXIT_INTERRUPTED) from err
            raise
        except Exception as err:
            if mode == "json":
                raise Reported(error_event(err).exit_code) from err
            raise
    finally:
        if recording is not None:
            recording.close()
