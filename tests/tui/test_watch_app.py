"""Pilot tests of `socirun watch`'s TUI (WatchApp): events in, the container's view on screen, `q` leaves."""

from __future__ import annotations

import asyncio

from textual.widgets import Log

from socirun import events as ev
from socirun.ui.model import human_bytes
from socirun.ui.tui.watch_app import WatchApp
from socirun.ui.tui.widgets import LayerTable, TextLine
from tests.support.streams import GZ, L2, T0

CID = "feedface" * 8
SIZE = 2_000_000_000


def watched_events() -> list[ev.Event]:
    """What watch_container emits for a lazily loaded container that logs, reports stats and becomes ready."""
    return [
        ev.ContainerCreated(container_id=CID, name="model-server", time=T0),
        ev.ContainerStarted(container_id=CID, pid=4242, time=T0),
        ev.LayerPlanned(index=0, digest=L2, media_type=GZ, size=SIZE, mode="lazy", time=T0 + 0.1),
        ev.LayerClassified(digest=L2, mode="lazy", detail="mounted by SOCI", time=T0 + 0.1),
        ev.LazyLayerStats(digest=L2, fetched=300_000_000, size=SIZE, source="state file", time=T0 + 1),
        ev.ContainerLogLine(container_id=CID, stream="stdout", line="loading weights", time=T0 + 1.5),
        ev.ContainerLogLine(container_id=CID, stream="stderr", line="warning: slow disk", time=T0 + 1.6),
        ev.ReadyWaiting(container_id=CID, probe="tcp 10.4.0.5:8000", time=T0 + 1.7),
        ev.ContainerStats(container_id=CID, cpu_percent=150.0, memory=512_000_000, memory_limit=0, pids=7,
                          time=T0 + 2),
        ev.ContainerReady(container_id=CID, probe="tcp 10.4.0.5:8000", after=3.25, fetched=300_000_000,
                          time=T0 + 3.25),
    ]


def text_of(app: WatchApp, widget_id: str) -> str:
    return app.query_one(widget_id, TextLine).render().plain


async def test_events_in_show_the_log_tail_the_lazy_row_stats_and_readiness() -> None:
    app = WatchApp(None)
    async with app.run_test(size=(120, 30)) as pilot:
        for event in watched_events():
            app.emit(event)
        app.refresh_view()
        await pilot.pause()
        assert text_of(app, "#w-header").startswith(f"{CID[:12]} model-server  running  up 3.2")
        assert text_of(app, "#w-stats") == "cpu 150.0%  mem 512.0 MB  pids 7"
        assert text_of(app, "#w-ready") == ("ready after 3.2s (tcp 10.4.0.5:8000); "
                                            f"{human_bytes(300_000_000)} fetched lazily by then")
        assert text_of(app, "#w-lazy").startswith(f"lazy layers: {human_bytes(300_000_000)} fetched so far of "
                                                  f"{human_bytes(SIZE)}")
        table = app.query_one(LayerTable)
        assert table.display and table.order == [L2]
        cells = dict(zip([c.key for c in table.layout_columns], table.row_text(L2), strict=True))
        assert cells["mode"] == "lazy" and cells["bytes"] == f"{human_bytes(300_000_000)}/{human_bytes(SIZE)}"
        assert list(app.query_one("#w-log", Log).lines) == ["| loading weights", "! warning: slow disk"]


async def test_before_readiness_the_probe_is_shown_waiting() -> None:
    app = WatchApp(None)
    async with app.run_test(size=(120, 30)) as pilot:
        for event in watched_events()[:8]:  # up to ReadyWaiting
            app.emit(event)
        app.refresh_view()
        await pilot.pause()
        assert text_of(app, "#w-ready").startswith("not ready yet (") and "tcp 10.4.0.5:8000" in text_of(
            app, "#w-ready")


async def test_q_leaves_the_view_and_only_stops_following() -> None:
    """`q` ends the app with 0 by cancelling the follow (the work), which never saw the container exit: the
    watch stops nothing (it has no way to: the stop would be the work's, and it is cancelled, not completed)."""
    followed: list[str] = []
    release = asyncio.Event()

    async def work(emit: ev.Emit) -> int:
        for event in watched_events():
            emit(event)
        followed.append("emitted")
        try:
            await release.wait()  # the container keeps running
        except asyncio.CancelledError:
            followed.append("cancelled")
            raise
        followed.append("exited")
        return 0

    app = WatchApp(work)
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.pause()
        while "emitted" not in followed:
            await pilot.pause(0.05)
        app.refresh_view()
        assert "| loading weights" in app.query_one("#w-log", Log).lines
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0 and app.closed
    assert followed == ["emitted", "cancelled"]
    assert app.model.exit_code is None and app.work_error is None


async def test_a_failing_follow_closes_the_view_with_its_exit_code() -> None:
    from socirun.errors import SocirunError

    async def work(emit: ev.Emit) -> int:
        raise SocirunError("No such container: nope", exit_code=1)

    app = WatchApp(work)
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.pause(0.2)
    assert app.return_code == 1 and isinstance(app.work_error, SocirunError)
    assert app.model.error is not None and app.model.error.message == "No such container: nope"
