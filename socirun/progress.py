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
from socirun.config import PROGRESS_MODES
from socirun.errors import UsageError
from socirun.ui.jsonl import JsonRenderer, QuietRenderer
from socirun.ui.plain import PlainRenderer

TICK_S = 1.0


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
    raise UsageError(f"--progress={mode} is not available in this version of socirun; use plain, json or quiet")


class Recorder:
    """Tees the stream into a JSON-lines file (`--record-events`) for replay into any face."""

    def __init__(self, inner: Renderer, path: str) -> None:
        self.inner = inner
        self._file = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()

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


def progress_mode_for(requested: str) -> str:
    return choose_progress(
        requested, stdin_tty=sys.stdin.isatty(), stderr_tty=sys.stderr.isatty(), env=os.environ
    )
