"""TUI test helpers: apps fed from the synthetic streams with a fixed clock, and the SVG extension that keeps
snapshots in the repository's top-level `snapshots/` folder."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pytest_textual_snapshot import SVGImageExtension

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
