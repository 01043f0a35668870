"""Pilot tests: the TUI driven by replayed streams (no containerd), keys, and the run_with_tui lifecycle."""

from __future__ import annotations

import asyncio
import io

import pytest
from textual.filter import Monochrome, NoColor
from textual.pilot import Pilot
from textual.widgets import Log

from socirun import events as ev
from socirun.errors import SocirunError
from socirun.ui.model import human_bytes
from socirun.ui.replay import replay_work
from socirun.ui.tui import run_with_tui_async
from socirun.ui.tui.app import NO_READS_YET, NOTHING_LAZY, PullApp
from socirun.ui.tui.widgets import HelpScreen, LayerTable, PlanScreen, TextLine
from tests.support import streams
from tests.support.streams import L2, T0, A, B, C
from tests.support.tui import app_with


def row(app: PullApp, digest: str) -> dict[str, str]:
    table = app.query_one(LayerTable)
    return dict(zip([c.key for c in table.layout_columns], table.row_text(digest), strict=True))


async def test_rows_appear_in_order_and_bytes_advance() -> None:
    app = PullApp(None, clock=lambda: 0.0)
    stream = streams.standard_pull()
    async with app.run_test(size=(120, 30)) as pilot:
        table = app.query_one(LayerTable)
        seen: list[tuple[str, str]] = []
        for event in stream:
            app.emit(event)
            app.refresh_view()
            await pilot.pause()
            if B in app.model.layers:
                seen.append((row(app, B)["bytes"], row(app, B)["bar"]))
        assert table.order == [A, B, C]
        byte_texts = [b for b, _ in seen]
        assert byte_texts[0] == "0 B/20.0 MB" and "10.0 MB/20.0 MB" in byte_texts and byte_texts[-1] == "20.0 MB"
        filled = [bar.count("█") for _, bar in seen]
        assert filled == sorted(filled) and filled[0] == 0 and filled[-1] == len(seen[-1][1])
        cached = row(app, A)
        assert cached["mode"] == "cached" and cached["glyph"] == "=" and cached["bytes"].startswith("cached")
        assert row(app, C)["state"] == "done"


async def test_updates_are_batched_per_tick() -> None:
    """A thousand progress events between two ticks change each cell at most once."""
    app = app_with(streams.until(streams.standard_pull(), 0.3))
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.pause()
        table = app.query_one(LayerTable)
        for i in range(1, 1001):
            app.emit(ev.LayerProgress(digest=B, downloaded=i * 10_000, total=20_000_000, time=T0 + 0.3 + i / 1000))
        assert row(app, B)["bytes"] == "0 B/20.0 MB"  # nothing touches a widget until the tick
        assert table.sync(app.model) == 1  # one row re-rendered, once
        assert row(app, B)["bytes"] == "10.0 MB/20.0 MB"


async def test_fetch_log_fills_stays_bounded_and_follows_only_at_the_bottom() -> None:
    app = app_with(streams.until(streams.lazy_run(), 2.8), log_max=50)
    async with app.run_test(size=(100, 40)) as pilot:
        log = app.query_one("#fetchlog", Log)
        for i in range(200):
            app.emit(ev.FetchLogEntry(reason="read", path=f"/f{i}", requests=1, time=T0 + 3 + i / 100))
        app.refresh_view()
        await pilot.pause()
        assert log.line_count == 50
        assert log.lines[-1].endswith("read /f199") and "/f150" in log.lines[0]
        assert log.scroll_y == log.max_scroll_y > 0  # following the tail
        log.scroll_home(animate=False)
        await pilot.pause()
        app.emit(ev.FetchLogEntry(reason="read", path="/late", requests=1, time=T0 + 9))
        app.refresh_view()
        await pilot.pause()
        assert log.scroll_y == 0  # the user scrolled up: new lines do not drag the view down
        await pilot.press("f")
        assert not log.auto_scroll and "not following" in str(app.query_one("#logpane").border_title)
        await pilot.press("f")
        await pilot.pause()
        assert log.auto_scroll and log.scroll_y == log.max_scroll_y


async def test_reads_are_one_line_per_path_and_counts_go_to_the_summary() -> None:
    stream = streams.lazy_run()
    app = app_with(stream)
    reads = [e for e in stream if isinstance(e, ev.FetchLogEntry)]
    paths = list(dict.fromkeys(e.path for e in reads))
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        lines = app.query_one("#fetchlog", Log).lines
        assert [line.split(" read ", 1)[1] for line in lines] == paths  # first reads only, in order
        final = {e.path: e.requests for e in reads}
        summary = app.query_one("#summary", TextLine).render().plain
        assert f"read {len(paths)} files ({sum(final.values())} requests)" in summary
        last = {e.digest: e for e in stream if isinstance(e, ev.LazyLayerStats)}
        on_demand = sum(s.on_demand_fetches or 0 for s in last.values())
        assert f"spans on demand {on_demand}," in summary and "SOCI metrics)" in summary
        assert row(app, L2)["bytes"] == f"{human_bytes(last[L2].fetched)}/{human_bytes(last[L2].size)}"


async def test_a_missing_source_is_said_with_how_to_turn_it_on() -> None:
    before_reads = streams.until(streams.lazy_run(streams.NO_METRICS), 2.4)
    app = app_with(before_reads)
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        note = str(app.query_one("#log-note").render())
        assert note.startswith(NO_READS_YET) and "to turn it on: set metrics_address" in note
        summary = app.query_one("#summary", TextLine).render().plain
        assert "state file" in summary and "span counts need" in summary and "on demand" not in summary
        app.emit(ev.FetchLogEntry(reason="read", path="/etc/passwd", requests=1, time=T0 + 2.5))
        app.refresh_view()
        await pilot.pause()
        lines = app.query_one("#fetchlog", Log).lines
        assert lines[0].startswith("! span fetch counts") and lines[-1].endswith("read /etc/passwd")
        await pilot.press("p")
        assert "to turn it on: set metrics_address" in str(app.screen.query_one("#plan-text").render())


async def test_nothing_lazy_explains_the_empty_log() -> None:
    app = app_with(streams.standard_pull())
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        note = app.query_one("#log-note")
        assert note.display and not app.query_one("#fetchlog").display
        assert str(note.render()) == NOTHING_LAZY


async def test_keys_do_what_the_footer_says() -> None:
    app = app_with(streams.until(streams.lazy_run(), 1.9))
    async with app.run_test(size=(80, 24)) as pilot:
        footer_keys = {b.key for _, b, enabled, _ in app.active_bindings.values() if b.show and enabled}
        assert {"q", "l", "p", "f", "question_mark"} <= footer_keys
        pane = app.query_one("#logpane")
        await pilot.press("l")
        assert not pane.display
        await pilot.press("l")
        assert pane.display
        await pilot.press("p")
        assert isinstance(app.screen, PlanScreen)
        plan = str(app.screen.query_one("#plan-text").render())
        assert "SOCI v2 index" in plan and "metrics: tcp 127.0.0.1:45673" in plan
        await pilot.press("escape")
        assert not isinstance(app.screen, PlanScreen)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        assert "fetch log" in str(app.screen.query_one("#help-text").render())
        await pilot.press("escape")
        await pilot.press("q")  # no work in flight, nothing failed: leave with 0
    assert app.return_code == 0


async def test_small_terminal_keeps_the_table() -> None:
    app = app_with(streams.until(streams.standard_pull(), 5.3))
    async with app.run_test(size=(50, 14)) as pilot:
        await pilot.pause()
        assert not app.query_one("#logpane").display  # the log pane gives its rows to the layers
        assert [c.key for c in app.query_one(LayerTable).layout_columns] == ["glyph", "layer", "bar", "bytes"]
        assert app.query_one(LayerTable).size.height >= 4


# -- run_with_tui lifecycle --------------------------------------------------------------------------------


async def test_finished_pull_closes_and_leaves_the_rows_in_scrollback() -> None:
    err = io.StringIO()
    code = await run_with_tui_async(replay_work(streams.standard_pull(), speed=0), headless=True, err=err)
    assert code == 0
    lines = err.getvalue().splitlines()
    assert lines[0] == "aaaaaaaaaaaa: cached (10.0 MB, cached)"
    assert lines[-1].startswith("pulled 127.0.0.1:5000/demo/sample:latest (standard, overlayfs)")


async def test_error_without_a_terminal_exits_at_once_with_its_code() -> None:
    with pytest.raises(SocirunError, match="does not match its digest") as caught:
        await run_with_tui_async(replay_work(streams.failed_pull(), speed=0), headless=True,
                                 err=io.StringIO())
    assert caught.value.exit_code == 125


async def test_error_closes_at_once_without_waiting_for_a_key() -> None:
    """A failed pull in a terminal: the app shows the error and closes by itself (nobody presses a key); the
    error is re-raised only after the app is gone, for the shell to print into the scrollback (exit 125)."""
    seen_running_after_error: list[bool] = []

    async def pilot(p: Pilot[object]) -> None:
        await p.pause(0.5)  # no key pressed: the old app still waited here for one
        seen_running_after_error.append(p.app.is_running)

    with pytest.raises(SocirunError, match="does not match its digest") as caught:
        await asyncio.wait_for(run_with_tui_async(replay_work(streams.failed_pull(), speed=0), headless=True,
                                                  err=io.StringIO(), auto_pilot=pilot), timeout=10)
    assert caught.value.exit_code == 125
    assert seen_running_after_error in ([], [False])


async def test_error_box_says_the_error_without_a_key_hint() -> None:
    app = app_with(streams.failed_pull())
    async with app.run_test(size=(120, 30)) as pilot:
        app.refresh_view()
        await pilot.pause()
        shown = str(app.query_one("#error").render())
        assert "does not match its digest" in shown and "(exit code 125)" in shown and "press" not in shown


@pytest.mark.parametrize("key", ["ctrl+c", "q"])
async def test_cancel_during_a_pull_rolls_back_and_exits_130(key: str) -> None:
    cleaned = asyncio.Event()

    async def work(emit: ev.Emit) -> int:
        for event in streams.until(streams.standard_pull(), 5.3):
            emit(event)
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0.05)  # cleanup that itself awaits, like releasing the lease
            cleaned.set()
        return 0

    async def pilot(p: Pilot[object]) -> None:
        await p.pause(0.2)
        await p.press(key)

    with pytest.raises(SocirunError) as caught:
        await run_with_tui_async(work, headless=True, err=io.StringIO(), auto_pilot=pilot)
    assert caught.value.exit_code == 130 and cleaned.is_set()


async def test_foreground_run_hands_the_terminal_over_when_the_container_starts() -> None:
    err = io.StringIO()
    closed_at_start: list[bool] = []
    stream = streams.lazy_run()
    started = next(i for i, e in enumerate(stream) if isinstance(e, ev.ContainerStarted))

    async def work(emit: ev.Emit) -> int:
        for event in stream[: started + 1]:
            emit(event)
        await asyncio.sleep(0.2)  # the container runs; the TUI must be gone by now
        closed_at_start.append("started after" in err.getvalue())
        return 7  # the container's exit code

    code = await run_with_tui_async(work, foreground=True, headless=True, err=err)
    assert code == 7 and closed_at_start == [True]
    assert err.getvalue().splitlines()[-1] == "container c0ffeec0ffee started after 2.7s"


async def test_detached_run_keeps_showing_fetches_until_q_then_prints_the_id() -> None:
    err, out = io.StringIO(), io.StringIO()
    stream = streams.lazy_run()[:-1]  # everything but the exit: the container keeps running

    async def work(emit: ev.Emit) -> int:
        for event in stream:
            emit(event)
        await asyncio.sleep(3600)  # keeps watching the snapshotter's fetches until the user leaves
        return 0

    async def pilot(p: Pilot[object]) -> None:
        await p.pause(0.3)
        app = p.app
        assert isinstance(app, PullApp) and app.is_running and app.model.phase() == "running"
        paths = {e.path for e in stream if isinstance(e, ev.FetchLogEntry)}
        assert app.query_one("#fetchlog", Log).line_count == len(paths)
        await p.press("q")

    code = await run_with_tui_async(work, detach=True, headless=True, err=err, out=out,
                                    auto_pilot=pilot)
    assert code == 0 and out.getvalue() == "c0ffee" * 10 + "abcd\n"


async def test_rows_scrolled_into_view_show_current_values() -> None:
    stream = streams.many_layers(60, 2, 5, size=10_000_000)
    app = app_with(stream[: len(stream) // 2])
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        table = app.query_one(LayerTable)
        last = table.order[-1]
        for event in stream[len(stream) // 2 :]:
            app.emit(event)
        app.refresh_view()
        table.scroll_end(animate=False)
        await pilot.pause()
        app.refresh_view()
        await pilot.pause()
        assert len(table.order) == 60 and row(app, last)["bytes"] == "9.1 MB/10.0 MB"
        screen = "".join(s.text for s in table.render_line(table.size.height - 1))
        assert last.split(":")[1][:12] in screen and "9.1 MB/10.0 MB" in screen


async def test_no_color_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    app = app_with(streams.until(streams.standard_pull(), 5.3))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        # Textual turns NO_COLOR into a filter on every line it writes (monochrome, or no colour at all).
        assert app.no_color and any(isinstance(f, Monochrome | NoColor) for f in app._filters)
