import io
import json
import re
from pathlib import Path

import pytest

from socirun import events as ev
from socirun.errors import UsageError
from socirun.ui.jsonl import JsonRenderer, QuietRenderer
from socirun.ui.model import PullModel, human_bytes, human_duration
from socirun.ui.plain import PlainRenderer, lazy_stats_line
from socirun.ui.progress import choose_progress
from socirun.ui.replay import dump_events, load_events, replay_lines
from tests.support import streams
from tests.support.streams import T0, standard_pull

ANSI = re.compile(r"\x1b\[|\x1b\]|\r")


def replay_plain(stream: list[ev.Event]) -> str:
    out = io.StringIO()
    renderer = PlainRenderer(out)
    for event in stream:
        # A tick after every event, at the event's own time, as a live run would have had.
        renderer.handle(event)
        renderer.tick(event.time)
    return out.getvalue()


def test_plain_output_golden() -> None:
    text = replay_plain(standard_pull())
    assert text.splitlines() == [
        "resolving 127.0.0.1:5000/demo/sample:latest",
        "resolved 127.0.0.1:5000/demo/sample:latest to sha256:" + "d" * 64 + " (linux/amd64): 3 layers, 60.0 MB",
        "plan: standard pull, snapshotter overlayfs",
        "  - one reason",
        "aaaaaaaaaaaa: exists (10.0 MB): snapshot present",
        "bbbbbbbbbbbb: downloading (20.0 MB)",
        "cccccccccccc: downloading (30.0 MB)",
        # No layer unpacked yet: the downloads alone take 20 s, the unpacking is not guessed (issue 13).
        "pulling 127.0.0.1:5000/demo/sample:latest 33% 20.0 MB/60.0 MB 2.0 MB/s eta >20.0s elapsed 5.3s [1/3 layers]",
        "bbbbbbbbbbbb: downloaded (20.0 MB)",
        "bbbbbbbbbbbb: unpacking (20.0 MB)",
        "bbbbbbbbbbbb: done (20.0 MB) in 9.0s",
        # All downloaded, 30 MB left to unpack at the 20 MB/s layer bbbb… took: not "eta 0.0s" (issue 13).
        "pulling 127.0.0.1:5000/demo/sample:latest 100% 60.0 MB/60.0 MB 5.0 MB/s eta 1.5s elapsed 11.3s [2/3 layers]",
        "cccccccccccc: downloaded (30.0 MB)",
        "cccccccccccc: unpacking (30.0 MB)",
        "cccccccccccc: done (30.0 MB) in 11.7s",
        "pulled 127.0.0.1:5000/demo/sample:latest (standard, overlayfs): fetched 50.0 MB of 60.0 MB in 12.0s "
        "(4.2 MB/s); 3 layers, 1 cached",
    ]
    assert not ANSI.search(text)


def test_plain_heartbeat_waits_five_seconds_and_stops_after_finish() -> None:
    out = io.StringIO()
    renderer = PlainRenderer(out)
    for event in standard_pull()[:10]:
        renderer.handle(event)
    renderer.tick(T0 + 3.0)
    assert "pulling" not in out.getvalue()
    renderer.tick(T0 + 5.1)
    assert out.getvalue().count("pulling ") == 1
    renderer.tick(T0 + 6.0)
    assert out.getvalue().count("pulling ") == 1
    for event in standard_pull()[10:]:
        renderer.handle(event)
    before = out.getvalue()
    renderer.tick(T0 + 100)
    assert out.getvalue() == before


def test_json_lines_round_trip() -> None:
    out = io.StringIO()
    renderer = JsonRenderer(out)
    stream = standard_pull()
    for event in stream:
        renderer.handle(event)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(records) == len(stream)
    assert all(r["schema"] == 1 and {"type", "time"} <= r.keys() for r in records)
    assert [ev.from_record(r) for r in records] == stream
    assert records[-1]["type"] == "pull_finished" and records[-1]["fetched"] == 50_000_000


def test_quiet_prints_only_the_summary() -> None:
    out = io.StringIO()
    renderer = QuietRenderer(out)
    for event in standard_pull():
        renderer.handle(event)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pulled 127.0.0.1:5000/demo/sample:latest")


def test_model_counts_cached_layers_as_done_but_not_as_moved() -> None:
    model = PullModel()
    for event in standard_pull():
        model.apply(event)
    assert model.bytes_done() == 60_000_000
    assert model.bytes_moved() == 50_000_000
    assert model.counts() == (3, 3)
    assert model.layers[standard_pull()[3].digest].mode == "cached"  # type: ignore[attr-defined]


def test_unknown_schema_is_refused() -> None:
    with pytest.raises(ValueError, match="schema"):
        ev.from_record({"schema": 2, "type": "warning", "time": 0, "message": "x"})


@pytest.mark.parametrize(
    ("requested", "stdin", "stderr", "env", "expected"),
    [
        ("auto", True, True, {"TERM": "xterm"}, "tty"),
        ("auto", False, True, {"TERM": "xterm"}, "plain"),
        ("auto", True, False, {"TERM": "xterm"}, "plain"),
        ("auto", True, True, {"TERM": "dumb"}, "plain"),
        ("auto", True, True, {"TERM": "xterm", "CI": "true"}, "plain"),
        ("json", False, False, {}, "json"),
        ("quiet", True, True, {}, "quiet"),
    ],
)
def test_choose_progress(requested: str, stdin: bool, stderr: bool, env: dict[str, str], expected: str) -> None:
    assert choose_progress(requested, stdin_tty=stdin, stderr_tty=stderr, env=env) == expected


def test_choose_progress_rejects_unknown_mode() -> None:
    with pytest.raises(UsageError, match="--progress"):
        choose_progress("fancy", stdin_tty=True, stderr_tty=True, env={})


def test_human_units() -> None:
    assert human_bytes(999) == "999 B"
    assert human_bytes(1_500_000) == "1.5 MB"
    assert human_bytes(2_000_000_000_000) == "2000.0 GB"
    assert human_duration(None) == "?"
    assert human_duration(75) == "1m15s"
    assert human_duration(3 * 3600 + 60) == "3h01m"


GOLDEN = Path(__file__).parent / "golden"


def test_plain_and_json_golden_files_of_the_same_recorded_stream(tmp_path: Path) -> None:
    """The lazy run (pull, start, on-demand fetches, exit) recorded to a file and replayed into both faces."""
    recording = tmp_path / "events.jsonl"
    dump_events(streams.lazy_run(), recording)
    plain, json_out = io.StringIO(), io.StringIO()
    replay_lines(load_events(recording), "plain", plain)
    replay_lines(load_events(recording), "json", json_out)
    assert plain.getvalue() == (GOLDEN / "lazy_run.plain.txt").read_text()
    assert not ANSI.search(plain.getvalue())
    assert json_out.getvalue() == (GOLDEN / "lazy_run.jsonl").read_text() == recording.read_text()
    types = [json.loads(line)["type"] for line in json_out.getvalue().splitlines()]
    assert {"fetch_log", "container_started", "container_exited"} <= set(types)


def test_model_phase_and_lazy_totals() -> None:
    model = PullModel()
    phases = []
    stream = streams.lazy_run()
    for event in stream:
        model.apply(event)
        phases.append(model.phase())
    assert [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p] == [
        "resolving", "pulling", "pulled", "starting", "running", "exited"]
    assert model.mode_badge() == "LAZY" and model.is_lazy()
    # Every lazy figure is SOCI's latest for its layer, never a sum of log lines.
    last = {e.digest: e for e in stream if isinstance(e, ev.LazyLayerStats)}
    downloaded = sum(e.downloaded for e in stream if isinstance(e, ev.LayerProgress) and e.downloaded == e.total)
    assert model.fetched_so_far() == downloaded + sum(s.fetched for s in last.values())
    assert model.span_counts() == (sum(s.on_demand_fetches or 0 for s in last.values()),
                                   sum(s.background_spans or 0 for s in last.values()))
    assert model.lazy_source() == "metrics" and model.fetch_count == 0
    reads = {e.path: e.requests for e in stream if isinstance(e, ev.FetchLogEntry)}
    assert model.read_totals() == (len(reads), sum(reads.values()))
    assert list(model.reads) == list(dict.fromkeys(e.path for e in stream if isinstance(e, ev.FetchLogEntry)))


def test_plain_says_each_read_once_and_not_as_a_fetch() -> None:
    text = replay_plain(streams.lazy_run())
    read_lines = [line for line in text.splitlines() if line.startswith("read /")]
    paths = list(dict.fromkeys(e.path for e in streams.lazy_run() if isinstance(e, ev.FetchLogEntry)))
    assert read_lines == [f"read {p}" for p in paths]
    assert "fetched" not in "\n".join(read_lines) and "on-demand" not in text and "@" not in text


def test_plain_lazy_figures_name_their_source_and_are_not_repeated_every_poll() -> None:
    stream = streams.lazy_run()
    lines = replay_plain(stream).splitlines()
    stats_lines = [line for line in lines if "SOCI holds" in line]
    assert all(line.endswith("[metrics]") or "[metrics];" in line for line in stats_lines)
    polls = sum(1 for e in stream if isinstance(e, ev.LazyLayerStats))
    assert 2 <= len(stats_lines) < polls
    # the last figures of each layer are said by the time the container exits
    last = {e.digest: e for e in stream if isinstance(e, ev.LazyLayerStats)}
    exited = next(i for i, line in enumerate(lines) if "exited with code" in line)
    for digest, stats in last.items():
        said = [i for i, line in enumerate(lines) if line.startswith(digest[7:19] + ": SOCI holds")]
        assert lines[said[-1]] == lazy_stats_line(stats) and said[-1] < exited


def test_plain_says_which_source_is_missing_and_how_to_turn_it_on() -> None:
    text = replay_plain(streams.lazy_run(streams.NO_METRICS))
    assert "observing SOCI through state files:" in text
    assert f"  {streams.NO_METRICS.missing[0]}" in text.splitlines()
    assert "(span counts need SOCI's metrics)" in text and "spans fetched on demand" not in text


def test_read_entries_round_trip_and_old_fetch_entries_still_render() -> None:
    read = ev.FetchLogEntry(reason="read", path="/usr/bin/python3", requests=12, time=T0)
    record = ev.to_record(read)
    assert record["reason"] == "read" and record["requests"] == 12 and ev.from_record(record) == read
    # a recording made before the `requests` field: still this schema, still readable
    old = {"schema": 1, "type": "fetch_log", "time": T0, "layer_digest": streams.L2, "offset": 4194304,
           "length": 65536, "reason": "on-demand", "path": "/etc/ld.so.cache"}
    out = io.StringIO()
    replay_lines([*streams.until(streams.lazy_run(), 0.6), ev.from_record(old)], "plain", out)
    assert out.getvalue().splitlines()[-1] == "222222222222: fetched 65.5 kB at 4.2 MB (on-demand) /etc/ld.so.cache"


def test_plain_golden_of_a_real_lazy_run() -> None:
    """The plain face of a real run against soci-snapshotter v0.16.1 (tests/support/recordings/): every file
    the container read, once, as a read; SOCI's figures with their source; nothing that SOCI did not say."""
    stream = streams.recorded("real_lazy_run")
    plain = io.StringIO()
    replay_lines(stream, "plain", plain)
    assert plain.getvalue() == (GOLDEN / "real_lazy_run.plain.txt").read_text()
    reads = [line for line in plain.getvalue().splitlines() if line.startswith("read /")]
    assert len(reads) == len(set(reads)) == len({e.path for e in stream if isinstance(e, ev.FetchLogEntry)})
    assert "/data/layer-3/big.bin" in {line.removeprefix("read ") for line in reads}
