"""The Textual face of a pull (and of a run's pull and start): header, summary, layer table, fetch log, footer.

The work (`async (emit) -> int`) runs as an asyncio task next to the app. `emit` only folds the event into the
same pure `PullModel` the plain face uses and queues fetch-log lines; a 10 Hz timer applies what changed to the
widgets in one batch, so a burst of thousands of progress events costs one repaint per tick.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import ClassVar

from rich.text import Text
from textual import events as tevents
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.widgets import Footer, Log, Static

from socirun import events as ev
from socirun.errors import EXIT_DAEMON, EXIT_INTERRUPTED, SocirunError
from socirun.text import terminal_safe
from socirun.ui.model import PullModel
from socirun.ui.tui import format as fmt
from socirun.ui.tui.driver import PromptStopDriver
from socirun.ui.tui.widgets import HelpScreen, LayerTable, PlanScreen, TextLine, columns_for

TICK_S = 0.1
FETCH_LOG_MAX = 500
NOTHING_LAZY = "Nothing is fetched lazily: this pull downloads every layer whole before anything starts."
NO_READS_YET = ("No file reads yet: SOCI fetches the parts of a layer a container reads, and logs each file read "
                "(with --log-level debug and [fuse] log_fuse_operations).")


class PullApp(App[int]):
    """Shows one pull (and, for `run`, the container's start). See `runner.run_with_tui` for the lifecycle."""

    CSS_PATH = "socirun.tcss"
    TITLE = "socirun"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit_or_detach", "Quit", id="quit"),
        Binding("l", "toggle_log", "Log", id="toggle_log"),
        Binding("p", "plan", "Plan", id="plan"),
        Binding("f", "toggle_follow", "Follow", id="follow"),
        Binding("question_mark", "help", "Help", key_display="?", id="help"),
        Binding("ctrl+c", "cancel", "Cancel", show=False, priority=True, id="cancel"),
    ]

    def __init__(
        self,
        work: ev.Work | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        interactive: bool = True,  # no longer read (an error never waits for a key); kept for existing callers
        detach: bool = False,
        foreground: bool = False,
        log_max: int = FETCH_LOG_MAX,
    ) -> None:
        super().__init__(driver_class=PromptStopDriver)  # headless runs (tests) still get Textual's own driver
        self.work = work
        self.clock = clock
        self.detach = detach
        self.foreground = foreground
        self.log_max = log_max
        self.model = PullModel()
        self.work_task: asyncio.Task[None] | None = None
        self.work_code: int | None = None
        self.work_error: BaseException | None = None
        self.cancelled = False
        self.detached = False
        self.handed_off = False
        self.closed = False
        self.ticks = 0
        self._t0 = clock()
        self._pending_log: list[str] = []
        self._mounted = False
        self._close_on_mount = False
        self._shown_fetches: bool | None = None
        self._said_missing: set[str] = set()
        self._note = NOTHING_LAZY

    # -- layout ---------------------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield TextLine(id="header")
        yield TextLine(id="summary")
        yield LayerTable(id="layers")
        with Vertical(id="logpane"):
            yield Static(Text(NOTHING_LAZY), id="log-note")
            yield Log(max_lines=self.log_max, auto_scroll=True, id="fetchlog")
        yield Static(id="error")
        yield Static(id="status")
        yield Footer()

    def on_mount(self) -> None:
        # Kept, not queried per frame: queries run against the active screen, which is a modal while help or
        # the plan is open.
        self.header_w = self.query_one("#header", TextLine)
        self.summary_w = self.query_one("#summary", TextLine)
        self.table_w = self.query_one(LayerTable)
        self.log_w = self.query_one("#fetchlog", Log)
        self.note_w = self.query_one("#log-note", Static)
        self.pane_w = self.query_one("#logpane")
        self.error_w = self.query_one("#error", Static)
        self.status_w = self.query_one("#status", Static)
        self._mounted = True
        self.pane_w.border_title = "fetch log (following)"
        self.table_w.use_columns(columns_for(self.size.width))
        self._apply_size_classes()
        self.set_interval(TICK_S, self.refresh_view)
        # Textual's widgets and the imported modules live as long as the app: moving them out of the
        # collector's generations keeps full collections (seen as 100+ ms frame gaps) short.
        gc.freeze()
        if self.work is not None:
            self.work_task = asyncio.create_task(self._run_work(self.work))
        self.refresh_view()
        if self._close_on_mount:
            self._close(0)

    def on_resize(self, event: tevents.Resize) -> None:
        if not self._mounted:
            return
        self._apply_size_classes()
        table = self.table_w
        columns = columns_for(event.size.width)
        if columns != table.layout_columns:
            table.use_columns(columns)
            self.refresh_view()

    def _apply_size_classes(self) -> None:
        # Below 80x24 the log pane gives its rows to the layer table, and the summary keeps one line.
        self.screen.set_class(self.size.height < 22, "-short")
        self.screen.set_class(self.size.width < 60, "-narrow")

    # -- events in -----------------------------------------------------------------------------------------

    def emit(self, event: ev.Event) -> None:
        """The work's `emit`: fold into the model; never touches a widget (the tick does)."""
        if self.closed:
            return
        self.model.apply(event)
        if isinstance(event, ev.FetchLogEntry):
            if event.reason != "read" or self.model.last_read_new:  # a read's later entries only update counts
                self._pending_log.append(fmt.fetch_line(self.model.started, event))
        elif isinstance(event, ev.ObservationSources):
            for sentence in event.missing:
                if sentence not in self._said_missing:
                    self._said_missing.add(sentence)
                    self._pending_log.append(fmt.missing_line(sentence))
        elif isinstance(event, ev.ContainerStarted) and self.foreground:
            # Foreground run: the container gets the terminal as soon as it starts.
            self.handed_off = True
            if self._mounted:
                self._close(0)
            else:
                self._close_on_mount = True

    async def _run_work(self, work: ev.Work) -> None:
        try:
            code = await work(self.emit)
        except asyncio.CancelledError:
            if not self.closed:
                self._close(EXIT_INTERRUPTED)
            raise
        except Exception as err:
            self.work_error = err
            if self.closed:
                return
            if self.model.error is None:
                message = err.message if isinstance(err, SocirunError) else f"{type(err).__name__}: {err}"
                code = err.exit_code if isinstance(err, SocirunError) else EXIT_DAEMON  # as the CLI's shell says
                self.model.apply(ev.Error(message=message, exit_code=code))
            self._show_error()
            return
        self.work_code = code
        if self.closed:
            return
        if self.model.error is not None:
            self._show_error()
        elif self.detach and self.model.container_id:
            self._status("container started; press q to leave (it keeps running)")
        else:
            self._close(code)

    def _show_error(self) -> None:
        # Close at once, never "press any key": a script run in a terminal would hang on it. The runner raises
        # the error once the alternate screen is gone, so the CLI's sentence lands in the scrollback.
        error = self.model.error
        assert error is not None
        self._close(error.exit_code)

    def on_unmount(self) -> None:
        gc.unfreeze()  # what the app held can be collected again once it is gone (tests run many apps)

    def _close(self, code: int) -> None:
        if self.closed:
            return
        self.closed = True
        self.refresh_view()
        self.exit(code, return_code=code)

    def _status(self, message: str) -> None:
        if self._mounted:
            self.status_w.update(Text(message, style="bold"))

    # -- the 10 Hz frame -----------------------------------------------------------------------------------

    def elapsed(self) -> float:
        m = self.model
        if m.finished is not None and m.container_started is None:
            return m.finished.elapsed
        return max(m.elapsed(), self.clock() - self._t0)

    def refresh_view(self) -> None:
        if not self._mounted:
            return
        self.ticks += 1
        m = self.model
        width = self.size.width
        # Only what changed is touched, and never in a way that needs a new layout: a layout pass per frame
        # would cost more than everything else the TUI does.
        with self.batch_update():
            self.header_w.set_text(fmt.header_text(m, self.elapsed()))
            lazy = m.is_lazy()
            if self.summary_w.has_class("-lazy") != lazy:
                self.summary_w.set_class(lazy, "-lazy")
            now = m.started + self.elapsed() if m.started is not None else None  # in the events' clock
            self.summary_w.set_text(fmt.summary_text(m, max(width - 2, 20), now))
            self.table_w.sync(m)
            log = self.log_w
            if self._pending_log:
                log.write_lines(self._pending_log)
                self._pending_log = []
            has_fetches = m.fetch_count > 0 or bool(m.reads)
            if self._shown_fetches != has_fetches:
                self._shown_fetches = has_fetches
                self.note_w.display = not has_fetches
                log.display = has_fetches
            note = NOTHING_LAZY
            if lazy:
                missing = m.sources.missing if m.sources is not None else ()
                note = "\n".join((NO_READS_YET, *(terminal_safe(sentence) for sentence in missing)))
            if not has_fetches and note != self._note:
                self._note = note
                self.note_w.update(Text(note))  # a Text: sentences hold brackets ([fuse]) that are not markup
            if m.error is not None:
                self._render_error(m.error)

    def _render_error(self, error: ev.Error) -> None:
        box = self.error_w
        if box.has_class("-shown"):
            return
        text = Text()
        text.append("error: ", style="bold red")
        text.append(terminal_safe(error.message))  # registries' and images' words: no escapes reach the terminal
        text.append(f" (exit code {error.exit_code})", style="dim")
        box.update(text)
        box.add_class("-shown")

    # -- keys ----------------------------------------------------------------------------------------------

    def action_quit_or_detach(self) -> None:
        if self.detach and self.model.container_id:
            self.detached = True
            if self.work_task is not None and not self.work_task.done():
                self.work_task.cancel()
            self._close(0)
        elif self.work_task is not None and not self.work_task.done():
            self.action_cancel()
        else:
            self._close(self.work_code or 0)

    def action_cancel(self) -> None:
        if self.work_task is not None and not self.work_task.done():
            self.cancelled = True
            self._status("cancelling: removing half-unpacked layers, keeping the downloaded bytes for a rerun…")
            self.work_task.cancel()
        elif self.model.error is not None:
            self._close(self.model.error.exit_code)
        else:
            self._close(self.work_code or 0)

    def action_toggle_log(self) -> None:
        self.pane_w.display = not self.pane_w.display

    def action_toggle_follow(self) -> None:
        log = self.log_w
        log.auto_scroll = not log.auto_scroll
        pane = self.pane_w
        if log.auto_scroll:
            log.scroll_end(animate=False)
            pane.border_title = "fetch log (following)"
        else:
            pane.border_title = "fetch log (not following; f follows)"

    def action_plan(self) -> None:
        self.push_screen(PlanScreen(self.model))

    def action_help(self) -> None:
        self.push_screen(HelpScreen())
