"""The SOCI observer against text captured from the real soci-snapshotter v0.16.1 (tests/unit/fixtures/soci/, from a
lazy `socirun run` in the sandbox that read one .py file and 5 MB of a big file, trimmed):
- metrics-after-read.txt: the metrics endpoint right after the container exited (before the background fetch);
- metrics-background-done.txt: the same endpoint once the background fetcher had been through every layer;
- state-files-after-read.json: the three layers' state files at the first dump (path under SOCI's root → text);
- soci-lazy-run.log: the daemon's JSON log lines of that run (every file.Read line, a few of each other FUSE
  operation, the `fetching span` lines, the prepare lines)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from socirun import events as ev
from socirun.decide.facts import SociConfig
from socirun.soci import observer as obs
from socirun.soci.observer import (
    FileReads,
    MetricsDump,
    SociObserver,
    observation_sources,
    observe_lazy_layers,
    parse_log_line,
    parse_metrics_dump,
    read_state_files,
    sources_event,
)

FIXTURES = Path(__file__).parent / "fixtures" / "soci"
AFTER_READ = (FIXTURES / "metrics-after-read.txt").read_text()
DONE = (FIXTURES / "metrics-background-done.txt").read_text()
LOG = (FIXTURES / "soci-lazy-run.log").read_text().splitlines()
STATE = json.loads((FIXTURES / "state-files-after-read.json").read_text())
# The run's image: busybox base, a small data layer nothing read, the data layer the container read.
BASE = "sha256:d7add4a7f52ae0ceb3f278358055188eec95039256cd09fc28e6b6454bd53a6c"
UNREAD = "sha256:bfa8c79c9755e80e86c16103fa478a4e6cfd499f22602fc5005e071eb911252a"
READ = "sha256:57162d148a9888f00406ede05d8c449d01de273b5b961138d0378d643a35f8bc"
IMAGE = frozenset({BASE, UNREAD, READ})
OTHER = "sha256:0f5c63642a230f18de3dc9efbd9ec3ebd2490ee28ccd063cd28e19e5536753f2"  # an earlier image's layer


def _records(kind: str | None = None) -> list[dict[str, object]]:
    out = [json.loads(line) for line in LOG]
    return [r for r in out if kind is None or r.get("operation") == kind]


def _state_tree(root: Path) -> None:
    for rel, text in STATE.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_metrics_and_state_files_agree_on_bytes_and_metrics_add_counts(tmp_path: Path) -> None:
    dump = parse_metrics_dump(AFTER_READ)
    assert IMAGE | {OTHER} <= set(dump.layers)
    _state_tree(tmp_path)
    states = read_state_files(str(tmp_path))
    assert set(states) == IMAGE
    for digest in IMAGE:  # two sources, one truth
        assert (dump.layers[digest].fetched, dump.layers[digest].size) == (states[digest].fetched,
                                                                          states[digest].size)
    read, unread, base = dump.layers[READ], dump.layers[UNREAD], dump.layers[BASE]
    assert 0 < read.fetched < read.size and read.on_demand_fetches > 0 and read.bytes_served > 0
    assert unread.on_demand_fetches == 0 and unread.fetched < 100  # SOCI's probe only
    assert base.fetched == base.size and base.on_demand_fetches > 0  # sh read the whole small layer
    assert not any(m.complete or m.background_spans for m in dump.layers.values())  # silence period
    assert read.mountpoint.endswith("/fs") and dump.fuse_mount_failures == 0


def test_background_fetch_done_and_its_span_count_is_not_the_log_s() -> None:
    dump = parse_metrics_dump(DONE)
    for digest in IMAGE:
        layer = dump.layers[digest]
        assert layer.complete and layer.fetched == layer.size and layer.background_ms > 0
    # SOCI logs `fetching span` for one span past the last (and for spans a read had fetched): the counter
    # is the truth, the lines are not.
    span_lines = Counter(r["layer"] for r in _records() if r["msg"] == "fetching span")
    assert span_lines[READ] == dump.layers[READ].background_spans + 1
    assert parse_metrics_dump(AFTER_READ).layers[READ].on_demand_fetches <= dump.layers[READ].background_spans


def test_a_fuse_mount_failure_is_counted_daemon_wide() -> None:
    # The counter carries layer="" (snapshot/snapshot.go IncOperationCount(FuseMountFailureCount, "")); it only
    # appears once it is incremented, so this line is written in the dump's own format.
    line = 'soci_fs_operation_count{layer="",operation_type="fuse_mount_failure_count"} 2\n'
    assert parse_metrics_dump(AFTER_READ + line).fuse_mount_failures == 2


def test_log_lines_only_file_read_is_a_read() -> None:
    parsed = [parse_log_line(line) for line in LOG]
    assert all(p is not None for p in parsed)
    reads = [p for p in parsed if p is not None and p.is_read]
    assert len(reads) == len(_records("file.Read")) > 0
    others = {p.operation for p in parsed if p is not None and p.kind == "fuse_op" and not p.is_read}
    assert {"node.Lookup", "node.Open", "node.Getxattr"} <= others
    assert {p.kind for p in parsed if p is not None and p.msg == "fetching span"} == {"span"}
    first = reads[0]
    assert first.at is not None and abs(first.at - 1796199280.0) < 3600  # the line's own time, parsed
    assert parse_log_line("not json") is None and parse_log_line("[1]") is None


def test_journalctl_json_record_wraps_the_logrus_line() -> None:
    inner = LOG[-1]
    record = json.dumps({"_SYSTEMD_UNIT": "soci-snapshotter.service", "MESSAGE": inner, "PRIORITY": "6"})
    assert parse_log_line(record) == parse_log_line(inner)
    assert parse_log_line(json.dumps({"MESSAGE": list(inner.encode())})) == parse_log_line(inner)


def test_file_reads_fold_per_path() -> None:
    reads = FileReads()
    assert reads.add("/a", 1.0) and not reads.add("/a", 2.0) and reads.add("/b", 3.0) and not reads.add("/a", 4.0)
    assert reads.take_updates() == [("/a", 3)] and reads.take_updates() == []
    assert reads.first == {"/a": 1.0, "/b": 3.0}


def test_observer_reports_each_path_once_then_counts_and_no_span_lines(tmp_path: Path) -> None:
    seen: list[ev.Event] = []
    observer = SociObserver(SociConfig(root=str(tmp_path)), seen.append, use_journal=False, layers=IMAGE)
    for line in LOG:
        observer.on_log(line)
    observer.flush_reads()
    entries = [e for e in seen if isinstance(e, ev.FetchLogEntry)]
    assert len(entries) == len(seen)  # no event from span lines, lookups, opens, prepare lines
    expected = Counter("/" + str(r["path"]) for r in _records("file.Read"))
    firsts = [e for e in entries if e.requests == 1]
    assert [e.path for e in firsts] == list(dict.fromkeys("/" + str(r["path"]) for r in _records("file.Read")))
    assert all(e.reason == "read" and e.layer_digest == "" and e.offset == e.length == 0 for e in entries)
    final = {e.path: e.requests for e in entries}
    assert final == dict(expected)
    assert "/data/layer-2/site-packages/pkg000/mod000.py" in final and "/bin" not in final
    first_time = obs._time(next(r["time"] for r in _records("file.Read")))
    assert firsts[0].time == first_time


def test_observer_emits_soci_figures_once_per_change(tmp_path: Path) -> None:
    seen: list[ev.Event] = []
    observer = SociObserver(SociConfig(root=str(tmp_path)), seen.append, use_journal=False, layers=IMAGE)
    observer.on_metrics(parse_metrics_dump(AFTER_READ))
    stats = {e.digest: e for e in seen if isinstance(e, ev.LazyLayerStats)}
    assert set(stats) == IMAGE  # the other image's layer is not this pull's
    dump = parse_metrics_dump(AFTER_READ).layers
    assert stats[READ].fetched == dump[READ].fetched and stats[READ].on_demand_fetches == dump[READ].on_demand_fetches
    assert stats[READ].source == "metrics" and not stats[READ].complete and stats[BASE].complete
    count = len(seen)
    observer.on_metrics(parse_metrics_dump(AFTER_READ))
    assert len(seen) == count  # nothing changed, nothing said
    assert not observer.all_complete()
    observer.on_metrics(parse_metrics_dump(DONE))
    assert observer.all_complete() and observer.fetched[READ] == dump[READ].size


def test_counters_count_from_the_plan_not_from_the_daemon_s_start(tmp_path: Path) -> None:
    """SOCI's counters live per layer digest from its start: an earlier mount's fetches are not this pull's."""
    seen: list[ev.Event] = []
    observer = SociObserver(SociConfig(root=str(tmp_path)), seen.append, use_journal=False, layers=IMAGE)
    observer.on_baseline(parse_metrics_dump(AFTER_READ))  # what an earlier run of the same layers left
    observer.on_metrics(parse_metrics_dump(AFTER_READ))
    stats = {e.digest: e for e in seen if isinstance(e, ev.LazyLayerStats)}
    assert {s.on_demand_fetches for s in stats.values()} == {0} and {s.bytes_served for s in stats.values()} == {0}
    assert not stats[READ].complete and stats[BASE].complete  # bytes are the mount's own: all of BASE is there
    observer.on_metrics(parse_metrics_dump(DONE))
    done, before = parse_metrics_dump(DONE).layers[READ], parse_metrics_dump(AFTER_READ).layers[READ]
    last = [e for e in seen if isinstance(e, ev.LazyLayerStats) and e.digest == READ][-1]
    assert last.background_spans == done.background_spans - before.background_spans > 0 and last.complete


def test_a_restarted_soci_s_counters_are_carried_not_subtracted(tmp_path: Path) -> None:
    """SOCI restarted mid-pull counts from 0 again: the counts never go negative, and what was counted before the
    restart is kept (seen once: on_demand_fetches -3 and bytes_served -12 MiB after a restart)."""
    seen: list[ev.Event] = []
    observer = SociObserver(SociConfig(root=str(tmp_path)), seen.append, use_journal=False, layers=IMAGE)
    observer.on_baseline(parse_metrics_dump(AFTER_READ))
    observer.on_metrics(parse_metrics_dump(DONE))
    done, before = parse_metrics_dump(DONE).layers[READ], parse_metrics_dump(AFTER_READ).layers[READ]
    counted = done.background_spans - before.background_spans
    restarted = replace(done, on_demand_fetches=1, background_spans=2, bytes_served=4096, background_done=0)
    observer.on_metrics(MetricsDump(layers={READ: restarted}))
    last = [e for e in seen if isinstance(e, ev.LazyLayerStats) and e.digest == READ][-1]
    assert last.background_spans == counted + 2
    assert last.on_demand_fetches == done.on_demand_fetches - before.on_demand_fetches + 1 >= 1
    assert last.bytes_served == done.bytes_served - before.bytes_served + 4096 > 0
    assert last.complete  # the background fetcher had finished the layer before the restart


def test_state_files_give_bytes_and_no_counts(tmp_path: Path) -> None:
    _state_tree(tmp_path)
    seen: list[ev.Event] = []
    observer = SociObserver(SociConfig(root=str(tmp_path)), seen.append, use_journal=False, layers=IMAGE)
    asyncio.run(observer.poll_once())  # metrics off: the state files
    stats = [e for e in seen if isinstance(e, ev.LazyLayerStats)]
    assert {s.digest for s in stats} == IMAGE
    assert all(s.source == "state file" and s.on_demand_fetches is None and s.background_spans is None
               for s in stats)
    sources = [e for e in seen if isinstance(e, ev.ObservationSources)]
    assert len(sources) == 1 and any("metrics_address" in m for m in sources[0].missing)


def test_state_file_error_is_kept(tmp_path: Path) -> None:
    text = json.loads(STATE[next(iter(STATE))])
    text["error"] = "failed to read the layer"  # statJSON's `error` field (fs/layer/node.go), set on failure
    state = obs.parse_state_file(json.dumps(text))
    assert state is not None and state.error == "failed to read the layer"
    assert obs.parse_state_file("{") is None


def test_fuse_mount_failures_warn_only_when_they_rise(tmp_path: Path) -> None:
    seen: list[ev.Event] = []
    observer = SociObserver(SociConfig(root=str(tmp_path)), seen.append, use_journal=False, layers=frozenset())
    observer.on_mount_failures(3)  # not watching: a pull without SOCI
    observer.watch_mount_failures = True
    observer.on_mount_failures(3)  # the baseline
    observer.on_mount_failures(3)
    assert seen == []
    observer.on_mount_failures(4)
    assert len(seen) == 1 and isinstance(seen[0], ev.WarningMessage) and "1 layer(s)" in seen[0].message


def test_observation_sources_say_how_to_turn_them_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(obs, "journal_available", lambda: False)
    off = {s.name: s for s in observation_sources(SociConfig(root=str(tmp_path / "nope")), None)}
    assert not off["metrics"].live and "metrics_address" in off["metrics"].enable
    assert not off["state files"].live and "SOCI_SNAPSHOTTER_ROOT" in off["state files"].enable
    assert not off["log"].live and "standard output" in off["log"].detail and "SOCIRUN_SOCI_LOG" in off["log"].enable
    assert not off["log detail"].live and "log_fuse_operations" in off["log detail"].enable

    info_only = tmp_path / "info.log"
    info_only.write_text("\n".join(line for line in LOG if '"level":"info"' in line) + "\n")
    (tmp_path / "snapshotter" / "snapshots").mkdir(parents=True)
    cfg = SociConfig(metrics_address="127.0.0.1:9000", log_fuse_operations=True, root=str(tmp_path))
    no_debug = {s.name: s for s in observation_sources(cfg, str(info_only))}
    assert no_debug["metrics"].live and no_debug["state files"].live and no_debug["log"].live
    assert not no_debug["log detail"].live and "--log-level debug" in no_debug["log detail"].enable
    assert "no debug lines" in no_debug["log detail"].detail

    debug = tmp_path / "debug.log"
    debug.write_text("\n".join(LOG) + "\n")
    on = {s.name: s for s in observation_sources(cfg, str(debug))}
    assert on["log detail"].live and on["log"].detail == f"file {debug}"
    assert sources_event(list(on.values())).missing == ()
    # metrics configured but not answering: said, with what is lost
    event = sources_event(list(on.values()), metrics_problem="Connection refused")
    assert len(event.missing) == 1 and "do not answer (Connection refused)" in event.missing[0]
    # without a log, "needs debug" is not said twice
    missing_log = sources_event(list(off.values())).missing
    assert sum("files containers read" in m for m in missing_log) == 1


async def test_observe_lazy_layers_follows_a_pull_and_its_container(tmp_path: Path) -> None:
    """The whole adapter: a metrics endpoint serving the captured dumps, the captured log appended to a file
    while "the container runs", the engine's events through the tap."""
    dumps = [AFTER_READ]

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=dumps[-1])

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    log = tmp_path / "soci.log"
    log.write_text(LOG[0] + "\n")  # what the daemon wrote before the pull: not this run's
    cfg = SociConfig(metrics_address=f"127.0.0.1:{port}", log_fuse_operations=True, root=str(tmp_path))
    seen: list[ev.Event] = []
    try:
        async with observe_lazy_layers(seen.append, lambda: cfg, str(log)) as emit:
            emit(ev.PlanMade(mode="lazy", snapshotter="soci"))
            for digest in sorted(IMAGE):
                emit(ev.LayerClassified(digest=digest, mode="lazy"))
            with log.open("a") as f:
                f.write("\n".join(LOG) + "\n")
            await asyncio.sleep(3 * obs.POLL_INTERVAL_S)
            emit(ev.ContainerExited(container_id="c", exit_code=0))
            dumps.append(DONE)
    finally:
        await runner.cleanup()
    exited = next(i for i, e in enumerate(seen) if isinstance(e, ev.ContainerExited))
    reads = [e for e in seen if isinstance(e, ev.FetchLogEntry)]
    assert {e.path for e in reads} == {"/" + str(r["path"]) for r in _records("file.Read")}
    assert all(seen.index(e) < exited for e in reads)  # the container's reads come before its exit
    sources = [e for e in seen if isinstance(e, ev.ObservationSources)]
    assert sources and sources[0].missing == () and any("metrics" in s for s in sources[0].live)
    last = {e.digest: e for e in seen if isinstance(e, ev.LazyLayerStats)}
    assert set(last) == IMAGE and all(s.complete for s in last.values())  # the final poll saw DONE
    assert not any(isinstance(e, ev.WarningMessage) for e in seen)
