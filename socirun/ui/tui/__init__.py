"""The Textual TUI (`--progress tty`). The only package that imports textual; loaded only when chosen.

`run_with_tui` itself imports textual only after the work has started (see runner.py)."""

from __future__ import annotations

from socirun.ui.tui.runner import run_with_tui, run_with_tui_async

__all__ = ["run_with_tui", "run_with_tui_async"]
