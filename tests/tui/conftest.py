"""TUI test helpers: apps fed from the synthetic streams with a fixed clock, and SVG snapshots kept in the
repository's top-level `snapshots/` folder (the README shows them) instead of `__snapshots__/<module>/`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from pytest_textual_snapshot import SVGImageExtension
from syrupy.assertion import SnapshotAssertion
from textual.app import App
from textual.pilot import Pilot

from socirun import events as ev
from socirun.ui.tui.app import PullApp

SNAPSHOT_DIR = Path(__file__).resolve().parents[2] / "snapshots"


class TopLevelSVG(SVGImageExtension):
    @classmethod
    def dirname(cls, *, test_location: Any) -> str:
        return str(SNAPSHOT_DIR)


def app_with(events: Iterable[ev.Event], **kwargs: Any) -> PullApp:
    """An app with no work, already holding `events` (folded before it starts, as if just received)."""
    kwargs.setdefault("clock", lambda: 0.0)
    app = PullApp(None, **kwargs)
    for event in events:
        app.emit(event)
    return app


@pytest.fixture
def snap_compare(snapshot: SnapshotAssertion) -> Callable[..., bool]:
    """Like pytest-textual-snapshot's fixture, but stored under the top-level snapshots/ folder."""
    from textual._doc import take_svg_screenshot

    snap = snapshot.use_extension(TopLevelSVG)

    def compare(app: App[Any], *, terminal_size: tuple[int, int] = (80, 24),
                run_before: Callable[[Pilot[Any]], Awaitable[None] | None] | None = None) -> bool:
        svg = take_svg_screenshot(app=app, terminal_size=terminal_size, run_before=run_before)
        return bool(snap == svg)

    return compare
