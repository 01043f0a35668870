"""Replaying a recorded event stream (`--record-events FILE`) into any face, without containerd.

`socirun replay FILE [--progress ...] [--speed X]` and the tests use these. The plain / json / quiet faces get
every event followed by a tick at the event's own time, exactly as a live run would have had them, so their
output is deterministic; `--speed X` also waits between events (X times real time). The TUI gets the events
from a work function that sleeps between them (default: real time).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TextIO

from socirun import events as ev
from socirun.errors import Interrupted, SocirunError, UsageError
from socirun.ui.progress import Reported, make_renderer


def load_events(path: str | Path) -> list[ev.Event]:
    """Read a JSON-lines recording; a line that is not an event of this schema is a UsageError naming it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise UsageError(f"cannot read the event recording {path}: {err.strerror}") from None
    events: list[ev.Event] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            events.append(ev.from_record(json.loads(line)))
        except (ValueError, KeyError, TypeError) as err:
            raise UsageError(f"{path}:{number} is not a socirun event: {err}") from None
    return events


def dump_events(events: Iterable[ev.Event], path: str | Path) -> None:
    """Write events in the `--record-events` format (for fixtures)."""
    with open(path, "w", encoding="utf-8") as f:
        for event in events:
            f.write(json.dumps(ev.to_record(event), separators=(",", ":")) + "\n")


def _raise_recorded_error(events: Sequence[ev.Event]) -> None:
    """A recorded failure or interruption ends the replay the way the live run ended: one sentence, the same
    exit code (130 after Ctrl-C)."""
    for event in events:
        if isinstance(event, ev.Error):
            raise SocirunError(event.message, exit_code=event.exit_code)
        if isinstance(event, ev.Interrupted):
            raise Interrupted(event.message, exit_code=event.exit_code)


def replay_work(events: Sequence[ev.Event], *, speed: float = 1.0) -> ev.Work:
    """A work function emitting `events` with their recorded spacing divided by `speed` (0: no waiting)."""

    async def work(emit: ev.Emit) -> int:
        previous: float | None = None
        for i, event in enumerate(events):
            if speed > 0 and previous is not None and event.time > previous:
                await asyncio.sleep((event.time - previous) / speed)
            elif i % 200 == 0:
                await asyncio.sleep(0)  # let the UI breathe on long instantaneous replays
            previous = event.time
            emit(event)
        _raise_recorded_error(events)
        return 0

    return work


def replay_lines(events: Sequence[ev.Event], mode: str, out: TextIO, *, speed: float = 0.0) -> int:
    """Replay into the plain / json / quiet face writing to `out`; returns 0 or raises the recorded error."""
    renderer = make_renderer(mode, out)
    previous: float | None = None
    for event in events:
        if speed > 0 and previous is not None and event.time > previous:
            time.sleep((event.time - previous) / speed)
        previous = event.time
        renderer.handle(event)
        renderer.tick(event.time)
    try:
        _raise_recorded_error(events)
    except SocirunError as err:
        if mode == "json":  # the replayed `error` / `interrupted` line said it: stderr stays JSON
            raise Reported(err.exit_code) from err
        raise
    return 0


def replay(path: str | Path, mode: str, *, speed: float | None = None, out: TextIO | None = None) -> int:
    """`socirun replay`: `mode` is a resolved face (plain, json, quiet or tty)."""
    events = load_events(path)
    if mode == "tty":
        from socirun.ui.tui import run_with_tui

        return run_with_tui(replay_work(events, speed=1.0 if speed is None else speed))
    return replay_lines(events, mode, out or sys.stderr, speed=speed or 0.0)
