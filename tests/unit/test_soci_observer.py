"""The SOCI observer's parsers over real-format fixtures (metric and log names as
https://github.com/awslabs/soci-snapshotter/blob/v0.15.0/fs/metrics/common/metrics.go gives
them), and the events it turns them into."""

from __future__ import annotations

import json
from pathlib import Path

from socirun import events as ev
from socirun.soci.config import SociConfig
from socirun.soci.observer import (
    SociObserver,
    observation_sources,
    parse_log_line,
    parse_metrics,
    read_state_files,
)

FIXTURES = Path(__file__).parent / "fixtures"
L1 = "sha256:" + "1" * 64
L2 = "sha256:" + "2" * 64


def test_parse_metrics_dump() -> None:
    layers = parse_metrics((FIXTURES / "soci_metrics.txt").read_text())
    assert set(layers) == {L1, L2}
    one, two = layers[L1], layers[L2]
    assert (one.fetched, one.size) == (8 << 20, 32 << 20)
    assert one.mountpoint.endswith("/snapshots/3/fs")
    assert one.on_demand_fetches == 2 and one.background_spans == 0 and not one.complete
    assert (two.fetched, two.size, two.background_spans) == (50 << 20, 50 << 20, 13)
    assert two.complete and two.background_ms == 6543


def test_parse_log_lines() -> None:
    lines = (FIXTURES / "soci_log.jsonl").read_text().splitlines()
    parsed = [parse_log_line(line) for line in lines]
    kinds = [p.kind if p else None for p in parsed]
    assert kinds == ["other", "other", "remote_prepared", "local", "defer", "parallel", "span", "span", "fuse_op",
                     None]
    span = parsed[7]
    assert span is not None and span.layer == L1 and span.span_id == 7
    fuse = parsed[8]
    assert fuse is not None and fuse.operation == "file.Read" and fuse.path.endswith("libtorch_cuda.so")
    assert parsed[3] is not None and parsed[3].layer == "sha256:" + "3" * 64


def test_journalctl_json_record_wraps_the_logrus_line() -> None:
    inner = json.dumps({"layer": L2, "level": "debug", "msg": "fetching span", "spanId": 3,
                        "time": "2026-08-11T10:00:01Z"})
    record = json.dumps({"_SYSTEMD_UNIT": "soci-snapshotter.service", "MESSAGE": inner, "PRIORITY": "7"})
    event = parse_log_line(record)
    assert event is not None and event.kind == "span" and event.layer == L2 and event.span_id == 3
    as_bytes = json.dumps({"MESSAGE": list(inner.encode())})
    assert parse_log_line(as_bytes) == event


def test_state_files(tmp_path: Path) -> None:
    state = tmp_path / "snapshotter" / "snapshots" / "3" / "fs" / ".soci-snapshotter"
    state.mkdir(parents=True)
    (state / f"{L1}.json").write_text(json.dumps(
        {"digest": L1, "size": 100, "fetchedSize": 40, "fetchedPercent": 40.0}))
    (state / "broken.json").write_text("{")
    assert read_state_files(str(tmp_path)) == {L1: (100, 40)}


def test_observer_turns_sources_into_events(tmp_path: Path) -> None:
    seen: list[ev.Event] = []
    observer = SociObserver(SociConfig(root=str(tmp_path)), seen.append, use_journal=False, layers=frozenset({L1}))
    for line in (FIXTURES / "soci_log.jsonl").read_text().splitlines():
        observer.on_log(line)
    spans = [e for e in seen if isinstance(e, ev.FetchLogEntry) and e.reason == "background"]
    assert [(e.offset, e.length) for e in spans] == [(0, 4 << 20), (7 << 22, 4 << 20)]
    paths = [e.path for e in seen if isinstance(e, ev.FetchLogEntry) and e.reason == "on-demand"]
    assert paths == ["/usr/lib/python3/dist-packages/torch/lib/libtorch_cuda.so"]
    for layer in parse_metrics((FIXTURES / "soci_metrics.txt").read_text()).values():
        observer._progress(layer.digest, layer.size, layer.fetched, layer.complete)
    progress = [e for e in seen if isinstance(e, ev.LayerProgress)]
    assert [(e.digest, e.downloaded, e.total) for e in progress] == [(L1, 8 << 20, 32 << 20)]  # L2 not asked for
    observer._progress(L1, 32 << 20, 32 << 20, True)
    assert isinstance(seen[-1], ev.LayerStateChanged) and seen[-1].state == "done"
    assert observer.all_complete()


def test_observation_sources_say_how_to_turn_them_on(tmp_path: Path) -> None:
    off = {s.name: s for s in observation_sources(SociConfig(root=str(tmp_path)), None)}
    assert not off["metrics"].live and "metrics_address" in off["metrics"].enable
    assert not off["log detail"].live and "log_fuse_operations" in off["log detail"].enable
    on = {s.name: s for s in observation_sources(
        SociConfig(metrics_address="127.0.0.1:9000", log_fuse_operations=True, root=str(tmp_path)),
        str(tmp_path / "soci.log"))}
    assert on["metrics"].live and on["log detail"].live
    assert on["log"].detail == f"file {tmp_path / 'soci.log'}" and not on["log"].live
