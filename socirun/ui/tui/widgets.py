"""The TUI's widgets: a keyed layer table updated in place, the fetch log, and the help / plan overlays."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.geometry import Region, Size
from textual.screen import ModalScreen
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Static

from socirun.text import terminal_safe
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
            return Text(terminal_safe(row.short))  # the digest as an event or a recording named it
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
    return f"{value.plain}\x00{value.style}" if isinstance(value, Text) else value


class TextLine(Widget):
    """A fixed-height line of rich Text that repaints only when the text changes, and never asks for a layout
    (Static.update does, which at 10 Hz made layout the TUI's biggest cost)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._text = Text()

    def set_text(self, text: Text) -> None:
        if text == self._text:
            return
        self._text = text
        self.refresh()

    def render(self) -> Text:
        return self._text


class LayerTable(ScrollView):
    """One row per layer, keyed by digest and updated in place, with a pinned header line.

    A Line-API widget rather than a DataTable: a DataTable re-renders every visible cell after any
    `update_cell`, which at 200 layers x 10 Hz costs more CPU than the pull. Here each row is one cached
    Strip; `sync` rebuilds and refreshes only rows that are on screen and whose text changed. Rows off screen
    drop their strip and are rebuilt from the model when scrolled into view.
    """

    DEFAULT_CSS = """
    LayerTable {
        height: 1fr;
    }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.layout_columns: tuple[Column, ...] = ()
        self.order: list[str] = []
        self._model: PullModel | None = None
        self._cells: dict[str, list[Text | str]] = {}
        self._keys: dict[str, tuple[str, ...]] = {}
        self._strips: dict[str, Strip] = {}
        self._header: Strip | None = None
        # Per row: (the strip it was made from, the strip as painted at the current scroll and width).
        self._final: dict[str, tuple[Strip, Strip]] = {}
        self._base = Style()
        self._view: tuple[int, int, Style] = (0, 0, Style())

    def use_columns(self, columns: tuple[Column, ...]) -> None:
        if columns == self.layout_columns:
            return
        self.layout_columns = columns
        self._cells.clear()
        self._keys.clear()
        self._strips.clear()
        self._header = None
        self._resize_virtual()
        self.refresh()

    def _line_width(self) -> int:
        return sum(c.width + 2 for c in self.layout_columns)

    def _resize_virtual(self) -> None:
        self.virtual_size = Size(self._line_width(), len(self.order) + 1)

    def _compute(self, digest: str) -> tuple[list[Text | str], tuple[str, ...]]:
        assert self._model is not None
        row = self._model.layers[digest]
        cells = [cell(row, c) for c in self.layout_columns]
        return cells, tuple(_key(c) for c in cells)

    def sync(self, model: PullModel) -> int:
        """Bring the rows on screen in line with `model`; returns how many rows were re-rendered."""
        self._model = model
        if len(model.layers) != len(self.order):
            known = set(self.order)
            self.order.extend(d for d in model.layers if d not in known)
            self._resize_virtual()
        first = int(self.scroll_offset.y)
        shown = max(self.size.height - 1, 1)
        visible = set(range(first, min(first + shown, len(self.order))))
        changed = 0
        for index in visible:
            digest = self.order[index]
            cells, keys = self._compute(digest)
            if keys == self._keys.get(digest):
                continue
            self._cells[digest], self._keys[digest] = cells, keys
            self._strips.pop(digest, None)
            self.refresh_line(index + 1)
            changed += 1
        if len(self._strips) > len(visible):
            for index, digest in enumerate(self.order):
                if index not in visible:
                    self._strips.pop(digest, None)
                    self._keys.pop(digest, None)
        return changed

    def _strip_for(self, cells: list[Text | str], header: bool = False) -> Strip:
        line = Text(no_wrap=True, overflow="crop", style="bold" if header else "")
        for column, value in zip(self.layout_columns, cells, strict=True):
            text = value.copy() if isinstance(value, Text) else Text(value)
            text.truncate(column.width, overflow="ellipsis", pad=True)
            line.append(" ")
            line.append(text)
            line.append(" ")
        segments = list(line.render(self.app.console, end=""))
        return Strip(segments).adjust_cell_length(self._line_width())

    def render_lines(self, crop: Region) -> list[Strip]:
        # The base style walks the DOM; look it up once per paint, not once per line.
        self._base = self.rich_style
        view = (int(self.scroll_offset.x), self.size.width, self._base)
        if view != self._view:
            self._view = view
            self._final.clear()
        return super().render_lines(crop)

    def render_line(self, y: int) -> Strip:
        scroll_x, width, base = self._view
        if y == 0:
            key = ""
            if self._header is None:
                self._header = self._strip_for([c.label for c in self.layout_columns], header=True)
            strip = self._header
        else:
            index = int(self.scroll_offset.y) + y - 1
            if index >= len(self.order) or self._model is None:
                return Strip.blank(width, base)
            key = self.order[index]
            built = self._strips.get(key)
            if built is None:
                cells, keys = self._compute(key)
                self._cells[key], self._keys[key] = cells, keys
                built = self._strips[key] = self._strip_for(cells)
                self._final.pop(key, None)
            strip = built
        final = self._final.get(key)
        if final is None or final[0] is not strip:
            final = self._final[key] = (strip, strip.crop_extend(scroll_x, scroll_x + width, base).apply_style(base))
        return final[1]

    def row_text(self, digest: str) -> list[str]:
        """The plain text of one row as last synced (for tests and the tmux check)."""
        cells = self._cells.get(digest)
        if cells is None:
            cells, _ = self._compute(digest)
        return [c.plain if isinstance(c, Text) else str(c) for c in cells]


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
        ("ctrl+c", "cancel the pull (downloaded bytes are kept for a rerun) and exit 130"),
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
