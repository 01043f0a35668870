"""JSON-lines face: every event of the stream as one JSON object per line (schema in README)."""

from __future__ import annotations

import json
from typing import TextIO

from socirun import events as ev
from socirun.text import terminal_safe
from socirun.ui.model import PullModel
from socirun.ui.plain import alias_line, summary_line


class JsonRenderer:
    def __init__(self, out: TextIO) -> None:
        self.out = out

    def handle(self, event: ev.Event) -> None:
        self.out.write(json.dumps(ev.to_record(event), separators=(",", ":")) + "\n")
        self.out.flush()

    def tick(self, now: float) -> None:
        pass


class QuietRenderer:
    """Errors (printed by the CLI's handler) and the final summary only."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.model = PullModel()

    def handle(self, event: ev.Event) -> None:
        self.model.apply(event)
        if isinstance(event, ev.Resolving) and event.expanded_from:
            # Which image an alias stood for is always said, even in quiet mode.
            self._line(alias_line(event))
        if isinstance(event, ev.PullFinished):
            self._line(summary_line(self.model, event))

    def _line(self, text: str) -> None:
        # The reference, alias and snapshotter in these lines come from the user, the config or the registry: made
        # safe here, where the text meets the terminal, whatever the helper that built it did.
        self.out.write(terminal_safe(text) + "\n")
        self.out.flush()

    def tick(self, now: float) -> None:
        pass
