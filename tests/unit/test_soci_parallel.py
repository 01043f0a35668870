"""Following SOCI's parallel pull: download files under its root and its log lines become per-layer events."""

from __future__ import annotations

import json
import os
from pathlib import Path

from socirun import events as ev
from socirun.soci.observer import parse_log_line
from socirun.soci.parallel import ParallelWatcher, parallel_event, read_download_files

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64


def _line(msg: str, **fields: object) -> str:
    return json.dumps({"level": "info", "msg": msg, "time": "2026-12-02T08:10:39Z", **fields})


def _event(msg: str, **fields: object) -> tuple[str, dict[str, object]]:
    """(msg, fields) as the observer hands them over, read back from a real-shaped log line."""
    parsed = parse_log_line(_line(msg, **fields))
    assert parsed is not None
    return parsed.msg, dict(parsed.fields)


def _sparse(path: Path, written: int, apparent: int) -> None:
    """A download file with `written` bytes at its start and a hole up to `apparent` (chunks out of order)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(os.urandom(written))
        f.truncate(apparent)


def test_download_files_count_allocated_bytes_not_the_apparent_size(tmp_path: Path) -> None:
    _sparse(tmp_path / "unpack" / "x1" / A, written=1 << 20, apparent=64 << 20)
    _sparse(tmp_path / "unpack" / "x2" / "sha256:other", written=4096, apparent=4096)
    found = read_download_files(str(tmp_path), {A: 100 << 20, B: 10})
    assert set(found) == {A}
    # Allocated blocks: about the 1 MiB written, far from the 64 MiB the file claims.
    assert (1 << 20) <= found[A] < (2 << 20)


def test_download_files_are_capped_at_the_layer_size(tmp_path: Path) -> None:
    _sparse(tmp_path / "unpack" / "x" / A, written=8192, apparent=8192)
    assert read_download_files(str(tmp_path), {A: 5000}) == {A: 5000}


def test_missing_root_is_no_progress(tmp_path: Path) -> None:
    assert read_download_files(str(tmp_path / "nowhere"), {A: 1}) == {}


def test_log_lines_of_a_parallel_download() -> None:
    kinds = [parallel_event(*_event(msg, digest=A)) for msg in (
        "fetching artifact from remote", "Artifact successfully fetched from remote", "Layer successfully unpacked")]
    assert [k.kind if k else None for k in kinds] == ["fetching", "fetched", "unpacked"]
    assert parallel_event(*_event("preparing snapshot", digest=A)) is None
    assert parallel_event(*_event("fetching artifact from remote")) is None
    # journald's record of the same line (its MESSAGE holds the JSON) says the same
    journal = parse_log_line(json.dumps({"MESSAGE": _line("Layer successfully unpacked", digest=A)}))
    assert journal is not None and parallel_event(journal.msg, journal.fields) == kinds[2]


def test_watcher_moves_forward_only_and_ends_at_the_size(tmp_path: Path) -> None:
    seen: list[ev.Event] = []
    watcher = ParallelWatcher(seen.append, str(tmp_path), sizes={A: 10 << 20, B: 1 << 20})
    watcher.on_log(*_event("fetching artifact from remote", digest=A))
    _sparse(tmp_path / "unpack" / "d" / A, written=2 << 20, apparent=10 << 20)
    watcher.poll()
    watcher.poll()  # nothing new: no second event
    (tmp_path / "unpack" / "d" / A).unlink()  # discarded after unpack: never a step back
    watcher.poll()
    watcher.on_log(*_event("Artifact successfully fetched from remote", digest=A, size=10 << 20))
    watcher.on_log(*_event("fetching artifact from remote", digest=A))  # late duplicate: no state step back
    watcher.on_log(*_event("Layer successfully unpacked", digest=A))
    watcher.on_log(*_event("fetching artifact from remote", digest="sha256:" + "c" * 64))  # not this pull's
    progress = [e.downloaded for e in seen if isinstance(e, ev.LayerProgress)]
    assert progress[0] >= 2 << 20 and progress[-1] == 10 << 20 and progress == sorted(progress)
    assert len(progress) == 2
    states = [e.state for e in seen if isinstance(e, ev.LayerStateChanged)]
    assert states == ["downloading", "downloaded", "unpacking"]
    assert all(getattr(e, "digest", A) == A for e in seen)
