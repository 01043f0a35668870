"""JSON-lines face: every event of the stream as one JSON object per line (schema in README)."""

from __future__ import annotations

import json
from typing import TextIO

from socirun import events as ev
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
            self.out.write(alias_line(event) + "\n")
        if isinstance(event, ev.PullFinished):
            self.out.write(summary_line(self.model, event) + "\n")
            self.out.flush()

    def tick(self, now: float) -> None:
        pass
