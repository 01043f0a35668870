"""The Textual face of `socirun watch` (and `run -d --watch`): a running container's header (name, uptime,
readiness), its CPU/memory, its lazily loaded layers (bytes SOCI fetched per layer so far, the pull's own table),
the container's log tail and the fetch log. `q` leaves; the container keeps running.

As the pull's app, `emit` only folds the event into the pure WatchModel (socirun.ui.watch) and queues log lines;
a 10 Hz timer applies what changed to the widgets in one batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import ClassVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.widgets import Footer, Log, Static

from socirun import events as ev
from socirun.errors import EXIT_DAEMON, SocirunError
from socirun.text import terminal_safe
from socirun.ui.model import human_bytes, human_duration
from socirun.ui.tui import format as fmt
from socirun.ui.tui.widgets import LayerTable, TextLine, columns_for
from socirun.ui.watch import WatchModel, log_line, stats_line

TICK_S = 0.1
LOG_MAX = 1000
CSS = """
#w-header { height: 1; padding: 0 1; background: $boost; text-wrap: nowrap; text-overflow: ellipsis; }
#w-stats, #w-ready, #w-lazy { height: 1; padding: 0 1; }
#w-layers { height: auto; max-height: 8; }
#w-logpane { height: 1fr; border-top: solid $primary-darken-1; border-title-align: left; }
#w-fetchpane { height: 6; border-top: solid $primary-darken-1; border-title-align: left; }
#w-status { height: auto; max-height: 2; padding: 0 1; }
"""


class WatchApp(App[int]):
    """Shows one running container; the work (`async (emit) -> int`) follows it until it exits."""

    CSS = CSS
    TITLE = "socirun watch"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "leave", "Leave (keeps running)", id="quit"),
        Binding("f", "toggle_fetch", "Fetch log", id="toggle_fetch"),
        Binding("ctrl+c", "leave", "Leave", show=False, priority=True, id="cancel"),
    ]

    def __init__(self, work: ev.Work | None = None) -> None:
        super().__init__()
        self.work = work
        self.model = WatchModel()
        self.work_task: asyncio.Task[None] | None = None
        self.work_code: int | None = None
        self.work_error: BaseException | None = None
        self._pending_log: list[str] = []
        self._pending_fetch: list[str] = []
        self._mounted = False
        self.closed = False

    def compose(self) -> ComposeResult:
        yield TextLine(id="w-header")
        yield TextLine(id="w-stats")
        yield TextLine(id="w-ready")
        yield TextLine(id="w-lazy")
        yield LayerTable(id="w-layers")
        with Vertical(id="w-logpane"):
            yield Log(max_lines=LOG_MAX, auto_scroll=True, id="w-log")
        with Vertical(id="w-fetchpane"):
            yield Log(max_lines=LOG_MAX, auto_scroll=True, id="w-fetch")
        yield Static(id="w-status")
        yield Footer()

    def on_mount(self) -> None:
        self.header_w = self.query_one("#w-header", TextLine)
        self.stats_w = self.query_one("#w-stats", TextLine)
        self.ready_w = self.query_one("#w-ready", TextLine)
        self.lazy_w = self.query_one("#w-lazy", TextLine)
        self.table_w = self.query_one(LayerTable)
        self.log_w = self.query_one("#w-log", Log)
        self.fetch_w = self.query_one("#w-fetch", Log)
        self.status_w = self.query_one("#w-status", Static)
        self.query_one("#w-logpane").border_title = "container log"
        self.query_one("#w-fetchpane").border_title = "fetch log (files read through SOCI's lazy mounts)"
        self.table_w.use_columns(columns_for(self.size.width))
        self._mounted = True
        self.set_interval(TICK_S, self.refresh_view)
        if self.work is not None:
            self.work_task = asyncio.create_task(self._run_work(self.work))
        self.refresh_view()

    # -- events in -----------------------------------------------------------------------------------------

    def emit(self, event: ev.Event) -> None:
        if self.closed:
            return
        self.model.apply(event)
        if isinstance(event, ev.ContainerLogLine):
            self._pending_log.append(log_line(event.stream, event.line))
        elif isinstance(event, ev.FetchLogEntry) and (event.reason != "read" or self.model.lazy.last_read_new):
            self._pending_fetch.append(fmt.fetch_line(self.model.started_at, event))

    async def _run_work(self, work: ev.Work) -> None:
        try:
            self.work_code = await work(self.emit)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            self.work_error = err
            message = err.message if isinstance(err, SocirunError) else f"{type(err).__name__}: {err}"
            code = err.exit_code if isinstance(err, SocirunError) else EXIT_DAEMON
            self.model.apply(ev.Error(message=message, exit_code=code))
            self._close(code)  # never wait for a key on an error: the CLI's sentence follows in the scrollback
            return
        self._status(f"container exited with code {self.model.exit_code}; q closes this view")

    def _close(self, code: int) -> None:
        if self.closed:
            return
        self.closed = True
        self.exit(code, return_code=code)

    def _status(self, message: str) -> None:
        if self._mounted:
            self.status_w.update(Text(terminal_safe(message), style="bold"))

    # -- the 10 Hz frame -----------------------------------------------------------------------------------

    def refresh_view(self) -> None:
        if not self._mounted:
            return
        m = self.model
        with self.batch_update():
            name = f" {m.name}" if m.name else ""
            up = m.uptime(m.now if m.now else None)
            header = Text()
            header.append(f"{m.container_id[:12]}{name}", style="bold")
            header.append(f"  {m.state_text()}")
            if up is not None:
                header.append(f"  up {human_duration(up)}", style="dim")
            self.header_w.set_text(header)
            self.stats_w.set_text(Text(stats_line(m.stats) if m.stats is not None else "cpu ?  mem ?"))
            ready = m.readiness_text()
            self.ready_w.set_text(Text(ready or "no readiness probe (--ready-url / --ready-port)",
                                       style="bold green" if m.ready is not None else "dim"))
            lazy = m.lazy
            if lazy.layers:
                fetched = lazy.fetched_so_far()
                files, _ = lazy.read_totals()
                self.lazy_w.set_text(Text(f"lazy layers: {human_bytes(fetched)} fetched so far of "
                                          f"{human_bytes(sum(r.size for r in lazy.layers.values()))}; "
                                          f"{files} files read"))
            else:
                self.lazy_w.set_text(Text("no lazily loaded layers: the image was fetched whole", style="dim"))
            self.table_w.display = bool(lazy.layers)
            self.table_w.sync(lazy)
            if self._pending_log:
                self.log_w.write_lines(self._pending_log)
                self._pending_log = []
            if self._pending_fetch:
                self.fetch_w.write_lines(self._pending_fetch)
                self._pending_fetch = []

    # -- keys ----------------------------------------------------------------------------------------------

    def action_leave(self) -> None:
        if self.work_task is not None and not self.work_task.done():
            self.work_task.cancel()
        self._close(0)

    def action_toggle_fetch(self) -> None:
        pane = self.query_one("#w-fetchpane")
        pane.display = not pane.display


async def run_watch_tui_async(work: ev.Work, *, headless: bool = False, size: tuple[int, int] | None = None,
                              app: WatchApp | None = None) -> int:
    app = app or WatchApp(work)
    if app.work is None:
        app.work = work
    try:
        await app.run_async(headless=headless, size=size)
    finally:
        task = app.work_task
        if task is not None and not task.done():
            task.cancel()  # q: stop following; the container keeps running
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if app.work_error is not None:
        raise app.work_error
    return 0


def run_watch_tui(work: ev.Work) -> int:
    return asyncio.run(run_watch_tui_async(work))
