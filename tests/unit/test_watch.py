"""`run -d`'s decision table, the readiness flags, and the watch view: events in → lines / JSON out."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from socirun import events as ev
from socirun.commands.run import DetachSteps, ReadyFace, detached_steps
from socirun.commands.run_flags import parse_run_args
from socirun.commands.watch import LogTail, ready_check
from socirun.containerd.api.cgroups.v1 import metrics_pb2 as v1
from socirun.containerd.api.cgroups.v2 import metrics_pb2 as v2
from socirun.containerd.client import decode_task_metrics
from socirun.errors import UsageError
from socirun.ui.jsonl import JsonRenderer
from socirun.ui.watch import WatchModel, WatchPlainRenderer, ready_line

CID = "c0ffee" * 10 + "abcd"

# ------------------------------------------------------------------------------------------ -d decisions


@pytest.mark.parametrize(
    ("mode", "pull", "here", "probe", "timeout", "watch", "expected"),
    [
        # the image is here: no TUI at all, the ID at once (issue 14: an empty TUI waited for q)
        ("tty", "missing", True, False, None, False, DetachSteps(False, False, False)),
        ("tty", "never", False, False, None, False, DetachSteps(False, False, False)),
        # it must pull: the TUI shows the pull (and closes at the start)
        ("tty", "missing", False, False, None, False, DetachSteps(True, False, False)),
        ("tty", "always", True, False, None, False, DetachSteps(True, False, False)),
        # the line faces never open a TUI
        ("plain", "always", False, False, None, False, DetachSteps(False, False, False)),
        ("json", "missing", False, True, 30.0, False, DetachSteps(False, True, False)),
        # waiting for readiness is --ready-timeout's; --watch waits in its own view
        ("tty", "missing", True, True, None, False, DetachSteps(False, False, False)),
        ("tty", "missing", True, True, 30.0, False, DetachSteps(False, True, False)),
        ("tty", "missing", True, True, 30.0, True, DetachSteps(False, False, True)),
        ("tty", "missing", False, False, None, True, DetachSteps(True, False, True)),
    ],
)
def test_detached_steps(mode: str, pull: str, here: bool, probe: bool, timeout: float | None, watch: bool,
                        expected: DetachSteps) -> None:
    assert detached_steps(mode=mode, pull=pull, image_here=here, probe=probe, ready_timeout=timeout,
                          watch=watch) == expected


def test_run_flags_carry_readiness_and_watch() -> None:
    opts = parse_run_args(["-d", "--ready-url", "http://localhost:8000/h", "--ready-timeout", "1m30s", "--watch",
                           "img", "arg"])
    assert (opts.ready_url, opts.ready_timeout, opts.watch, opts.image, opts.command) == (
        "http://localhost:8000/h", 90.0, True, "img", ["arg"])
    assert parse_run_args(["--ready-port", "8080", "img"]).ready_port == 8080
    with pytest.raises(UsageError, match="--ready-port"):
        parse_run_args(["--ready-port", "http", "img"])


@pytest.mark.parametrize(("url", "port", "timeout", "detach", "watch", "match"), [
    ("http://x/", 80, None, True, False, "not both"),
    ("", 0, 5.0, True, False, "needs --ready-url"),
    ("", 0, None, False, True, "--watch goes with -d"),
])
def test_ready_flag_combinations_are_sentences(url: str, port: int, timeout: float | None, detach: bool,
                                               watch: bool, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        ready_check(url, port, timeout, detach=detach, watch=watch)


def test_no_readiness_flags_no_probe() -> None:
    assert ready_check("", 0, None, detach=True) is None


# ------------------------------------------------------------------------------------------ task metrics


def test_cgroup_v2_metrics_decode_as_docker_stats_reads_them() -> None:
    m = v2.Metrics()
    m.cpu.usage_usec = 1500
    m.memory.usage, m.memory.inactive_file, m.memory.usage_limit = 10_000_000, 2_000_000, 1 << 30
    m.pids.current = 3
    stats = decode_task_metrics("io.containerd.cgroups.v2.Metrics", m.SerializeToString(), at=5.0)
    assert stats is not None
    assert (stats.cpu_ns, stats.memory, stats.memory_limit, stats.pids) == (1_500_000, 8_000_000, 1 << 30, 3)


def test_cgroup_v1_metrics_decode_and_unknown_types_are_none() -> None:
    m = v1.Metrics()
    m.cpu.usage.total = 42
    m.memory.usage.usage, m.memory.total_inactive_file, m.memory.usage.limit = 500, 100, 1000
    stats = decode_task_metrics("type.googleapis.com/io.containerd.cgroups.v1.Metrics", m.SerializeToString(),
                                at=1.0)
    assert stats is not None and (stats.cpu_ns, stats.memory, stats.memory_limit) == (42, 400, 1000)
    assert decode_task_metrics("io.containerd.windows.Stats", b"", at=1.0) is None


# ------------------------------------------------------------------------------------------ the view


def _stream() -> list[ev.Event]:
    d = "sha256:" + "ab" * 32
    return [
        ev.ContainerCreated(container_id=CID, name="web", time=100.0),
        ev.ContainerStarted(container_id=CID, pid=7, time=100.0),
        ev.LayerPlanned(index=0, digest=d, media_type="application/vnd.oci.image.layer.v1.tar+gzip",
                        size=50_000_000, mode="lazy", time=101.0),
        ev.LayerClassified(digest=d, mode="lazy", time=101.0),
        ev.LazyLayerStats(digest=d, fetched=12_000_000, size=50_000_000, source="metrics", on_demand_fetches=3,
                          background_spans=0, time=101.5),
        ev.ReadyWaiting(container_id=CID, probe="tcp 10.4.0.2:8080", timeout=None, time=101.0),
        ev.ContainerLogLine(container_id=CID, stream="stdout", line="listening on :8080", time=103.0),
        ev.ContainerLogLine(container_id=CID, stream="stderr", line="warn \x1b[31mred", time=103.0),
        ev.ContainerStats(container_id=CID, cpu_percent=None, memory=5_000_000, memory_limit=0, pids=2,
                          time=103.0),
        ev.ContainerStats(container_id=CID, cpu_percent=50.0, memory=6_000_000, memory_limit=0, pids=2,
                          time=104.0),
        ev.ContainerReady(container_id=CID, probe="tcp 10.4.0.2:8080", after=3.2, fetched=12_000_000, time=103.2),
        ev.ContainerExited(container_id=CID, exit_code=0, time=110.0),
    ]


def test_model_folds_the_watch_stream() -> None:
    m = WatchModel()
    for event in _stream()[:-1]:
        m.apply(event)
    assert m.name == "web" and m.state_text() == "running"
    assert list(m.log)[-1] == ("stderr", "warn \x1b[31mred")
    assert m.stats is not None and m.stats.cpu_percent == 50.0
    assert m.readiness_text() == "ready after 3.2s (tcp 10.4.0.2:8080); 12.0 MB fetched lazily by then"
    assert m.lazy.fetched_so_far() == 12_000_000
    m.apply(_stream()[-1])
    assert m.state_text() == "exited (0)"


def test_not_ready_yet_counts_from_the_start() -> None:
    m = WatchModel()
    for event in _stream()[:6]:
        m.apply(event)
    assert m.readiness_text(now=112.5) == "not ready yet (12.5s; tcp 10.4.0.2:8080)"


def test_plain_face_lines() -> None:
    out = io.StringIO()
    face = WatchPlainRenderer(out, stats_every_s=5.0)
    for event in _stream():
        face.handle(event)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(f"watching container {CID[:12]} (web), running for")
    assert "| listening on :8080" in lines
    assert not any("\x1b" in line for line in lines)  # the container's escapes never reach the terminal
    assert any(line.startswith("! warn") for line in lines)
    assert sum(line.startswith("cpu ") for line in lines) == 1  # the second sample is within 5 s
    assert "ready after 3.2s (tcp 10.4.0.2:8080); 12.0 MB fetched lazily by then" in lines
    assert any("SOCI holds 12.0 MB of 50.0 MB" in line for line in lines)  # the lazy layer, as a pull says it
    assert lines[-1] == f"container {CID[:12]} exited with code 0"


def test_json_face_carries_ready_with_both_figures_and_round_trips() -> None:
    out = io.StringIO()
    face = JsonRenderer(out)
    for event in _stream():
        face.handle(event)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    ready = next(r for r in records if r["type"] == "container_ready")
    assert (ready["after"], ready["fetched"], ready["container_id"]) == (3.2, 12_000_000, CID)
    assert {r["type"] for r in records} >= {"container_stats", "container_log_line", "ready_waiting"}
    assert [ev.from_record(r) for r in records] == _stream()


def test_run_ready_face_says_only_readiness() -> None:
    out = io.StringIO()
    face = ReadyFace("plain", out)
    for event in _stream():
        face.handle(event)
    assert out.getvalue() == f"socirun: container {CID[:12]} {ready_line(_stream()[-2])}\n"  # type: ignore[arg-type]
    out = io.StringIO()
    face = ReadyFace("json", out)
    for event in _stream():
        face.handle(event)
    assert [json.loads(line)["type"] for line in out.getvalue().splitlines()] == ["ready_waiting", "container_ready"]


# ------------------------------------------------------------------------------------------ log tail


def test_log_tail_reads_the_raw_log_then_what_is_appended(tmp_path: Path) -> None:
    raw = tmp_path / "container.log"
    raw.write_bytes(b"".join(f"line {i}\n".encode() for i in range(30)) + b"part")
    tail = LogTail(str(tmp_path), CID)
    assert tail.last(3) == [("stdout", "line 27"), ("stdout", "line 28"), ("stdout", "line 29")]
    with open(raw, "ab") as f:
        f.write(b"ial\nnext\n")
    assert tail.new() == [("stdout", "partial"), ("stdout", "next")]
    tail.close()


def test_log_tail_prefers_the_json_file_log(tmp_path: Path) -> None:
    from socirun.runtime import logs

    (tmp_path / "container.log").write_bytes(b"raw\n")
    path = logs.log_path(str(tmp_path), CID)
    writer = logs.JsonFileWriter(path)
    writer.write(b"one\n", "stdout")
    writer.write(b"two\n", "stderr")
    tail = LogTail(str(tmp_path), CID)
    assert tail.last(5) == [("stdout", "one"), ("stderr", "two")]
    writer.write(b"three\n", "stdout")
    assert tail.new() == [("stdout", "three")]
    writer.close()
    tail.close()
    assert os.path.exists(path)
