"""The TUI fed outside strings that carry ESC/CSI/OSC sequences, a C1 CSI and bidi overrides (file names an image
chose, a platform, the registry's error, SOCI's words): what it paints, its plan view and the recap it leaves in
the scrollback hold none of them raw, only their visible escapes."""

from __future__ import annotations

import io
from typing import Any

import pytest
from textual.app import App

from socirun import events as ev
from socirun.errors import SocirunError
from socirun.text import terminal_safe
from socirun.ui.replay import replay_work
from socirun.ui.tui import run_with_tui_async
from socirun.ui.tui.app import PullApp
from socirun.ui.tui.widgets import PlanScreen
from tests.support.hostile import hostile_pull, unsafe_characters
from tests.support.tui import app_with


def screen_text(app: App[Any]) -> str:
    """The text of every cell of the active screen as Textual would send it (style codes aside)."""
    strips = app.screen._compositor.render_strips()
    return "\n".join("".join(seg.text for seg in strip if not seg.control) for strip in strips)


async def test_screen_and_plan_view_paint_no_raw_escape() -> None:
    app = app_with(hostile_pull())
    async with app.run_test(size=(160, 40)) as pilot:
        app.refresh_view()
        await pilot.pause()
        shown = screen_text(app)
        assert unsafe_characters(shown) == []
        # What was hostile is still readable as escapes: the platform in the header, the file name in the
        # fetch log, the registry's message in the error box.
        assert "linux/amd64\\x1b[2J" in shown
        assert "read /etc/\\x1b[2J" in shown
        assert "denied: \\x1b[2J" in shown
        await pilot.press("p")
        await pilot.pause()
        assert isinstance(app.screen, PlanScreen)
        plan = screen_text(app)
        assert unsafe_characters(plan) == []
        assert "• because" in plan and "• state files:" in plan and plan.count("\\x1b[2J") >= 5


async def test_recap_after_the_tui_closes_is_safe() -> None:
    err = io.StringIO()
    code = await run_with_tui_async(replay_work(hostile_pull(with_error=False), speed=0), headless=True, err=err)
    assert code == 0
    recap = err.getvalue()
    assert "pulled 127.0.0.1:5000/demo/evil:latest" in recap
    assert unsafe_characters(recap) == []
    assert terminal_safe("lazy\x1b[2J") in recap


async def test_a_hostile_error_closes_the_app_and_is_raised_for_the_shell() -> None:
    """The error box shows the escaped message; the app closes by itself (the shell prints the line)."""
    # The recorded error is re-raised for the CLI's shell, which makes its line safe (tests/unit/test_sanitise.py).
    with pytest.raises(SocirunError, match="denied"):
        await run_with_tui_async(replay_work(hostile_pull(), speed=0), headless=True, err=io.StringIO())


async def test_an_unexpected_failure_shows_exit_code_125_as_the_shell_returns() -> None:
    """Not a SocirunError: the TUI says 125 (what the CLI's shell exits with), not 1, and the message is safe."""
    async def work(emit: ev.Emit) -> int:
        raise RuntimeError("bad \x1b[2J entry")

    app = PullApp(work)
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.pause(0.3)
    assert app.return_code == 125 and isinstance(app.work_error, RuntimeError)
    shown = str(app.error_w.render())  # painted by the last frame, before the app closed
    assert "RuntimeError: bad \\x1b[2J entry (exit code 125)" in shown and unsafe_characters(shown) == []
