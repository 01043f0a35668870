"""The TUI tests' snapshot fixture: SVG snapshots kept in the repository's top-level `snapshots/` folder (the
README shows them) instead of `__snapshots__/<module>/`. Helpers are in tests/support/tui.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from syrupy.assertion import SnapshotAssertion
from textual.app import App
from textual.pilot import Pilot

from tests.support.tui import TopLevelSVG


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
