"""The TUI's widgets: a keyed layer table updated in place, the fetch log, and the help / plan overlays."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from socirun.ui.model import LayerRow, PullModel
from socirun.ui.tui import format as fmt


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    width: int


# Column sets by terminal width: drop ETA, type and state first, then narrow the bar (no hidden 110-column rule).
WIDE = (
    Column("glyph", "", 1), Column("layer", "layer", 12), Column("state", "state", 11), Column("type", "type", 4),
    Column("mode", "mode", 11), Column("bar", "progress", 20), Column("bytes", "bytes", 19),
    Column("rate", "rate", 10), Column("eta", "eta", 6),
)
MEDIUM = (
    Column("glyph", "", 1), Column("layer", "layer", 12), Column("mode", "mode", 8), Column("bar", "progress", 14),
    Column("bytes", "bytes", 19), Column("rate", "rate", 10),
)
NARROW = (Column("glyph", "", 1), Column("layer", "layer", 12), Column("bar", "", 8), Column("bytes", "bytes", 19))


def columns_for(width: int) -> tuple[Column, ...]:
    if width >= 120:
        return WIDE
    if width >= 76:
        return MEDIUM
    return NARROW


def cell(row: LayerRow, column: Column) -> Text | str:
    match column.key:
        case "glyph":
            return fmt.layer_glyph(row)
        case "layer":
            return Text(row.short)
        case "state":
            return fmt.layer_state(row)
        case "type":
            return fmt.media_short(row.media_type)
        case "mode":
            return fmt.layer_mode(row)
        case "bar":
            return fmt.bar(fmt.layer_fraction(row), column.width, fmt.bar_style(row))
        case "bytes":
            return fmt.layer_bytes(row)
        case "rate":
            return fmt.layer_rate(row)
        case "eta":
            return fmt.layer_eta(row)
    return ""  # pragma: no cover - every column key is handled above


def _key(value: Text | str) -> str:
    """What a cell looks like, for diffing: a row is touched only when its rendered text changed."""
    return value.markup if isinstance(value, Text) else value


class LayerTable(DataTable[Text | str]):
    """One row per layer, keyed by digest and updated in place; only rows on screen are re-rendered each tick
    (rows scrolled out of view catch up as soon as they are visible again)."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, show_cursor=False, **kwargs)  # type: ignore[arg-type]
        self.layout_columns: tuple[Column, ...] = ()
        self._order: list[str] = []
        self._shown: dict[str, tuple[str, ...]] = {}

    def use_columns(self, columns: tuple[Column, ...]) -> None:
        if columns == self.layout_columns:
            return
        self.layout_columns = columns
        self.clear(columns=True)
        for column in columns:
            self.add_column(column.label, width=column.width, key=column.key)
        self._order = []
        self._shown = {}

    def sync(self, model: PullModel) -> int:
        """Bring the visible rows in line with `model`; returns how many cells changed."""
        for digest, row in model.layers.items():
            if digest not in self._shown:
                cells = [cell(row, c) for c in self.layout_columns]
                self.add_row(*cells, key=digest)
                self._order.append(digest)
                self._shown[digest] = tuple(_key(c) for c in cells)
        first = int(self.scroll_offset.y)
        visible = self._order[first : first + max(self.size.height, 1)]
        changed = 0
        for digest in visible:
            row = model.layers[digest]
            old = self._shown[digest]
            cells = [cell(row, c) for c in self.layout_columns]
            keys = tuple(_key(c) for c in cells)
            if keys == old:
                continue
            for column, value, new_key, old_key in zip(self.layout_columns, cells, keys, old, strict=True):
                if new_key != old_key:
                    self.update_cell(digest, column.key, value)
                    changed += 1
            self._shown[digest] = keys
        return changed

    def row_text(self, digest: str) -> list[str]:
        """The plain text of one row (for tests and the tmux check)."""
        return [c.plain if isinstance(c, Text) else str(c) for c in self.get_row(digest)]


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss", "Close"),
        Binding("question_mark", "dismiss", "Close"),
        Binding("q", "dismiss", "Close"),
    ]

    KEYS = (
        ("q", "quit: cancel a pull in flight (exit 130), leave a finished one; with -d, detach (the container "
              "keeps running)"),
        ("l", "show or hide the fetch log"),
        ("p", "show the plan and why it was chosen"),
        ("f", "follow the fetch log's tail, or stop following"),
        ("?", "this help"),
        ("ctrl+c", "cancel the pull cleanly (nothing half-written is kept) and exit 130"),
    )

    def compose(self) -> ComposeResult:
        text = Text()
        text.append("socirun keys\n\n", style="bold")
        for key, what in self.KEYS:
            text.append(f"{key:>7}  ", style="bold cyan")
            text.append(f"{what}\n")
        text.append("\nEsc closes this help.", style="dim")
        with Vertical(id="help-box"):
            yield Static(text, id="help-text")


class PlanScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss", "Close"),
        Binding("p", "dismiss", "Close"),
        Binding("q", "dismiss", "Close"),
    ]

    def __init__(self, model: PullModel) -> None:
        super().__init__()
        self.model = model

    def compose(self) -> ComposeResult:
        text = fmt.plan_text(self.model)
        text.append("\nEsc closes this view.", style="dim")
        with Vertical(id="plan-box"):
            yield Static(text, id="plan-text")
