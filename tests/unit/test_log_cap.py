"""The `-d` log is capped by default (issue 12, item 19): a run without `--log-opt` records 20 MiB × 5 files in its
state, the reaper's json-file writer is built with that cap, and the writer rotates exactly there, keeping five
files (socirun/runtime/options.py, socirun/runtime/reaper.py, socirun/runtime/logs.py)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from socirun.commands.run_flags import parse_run_args
from socirun.containerd.client import ContainerdClient
from socirun.runtime import logs, reaper
from socirun.runtime.lifecycle import ContainerState
from socirun.runtime.options import DEFAULT_LOG_MAX_FILE, DEFAULT_LOG_MAX_SIZE, RunOptions

MIB = 1 << 20


def test_a_run_without_log_opts_is_capped_at_20_mib_and_5_files() -> None:
    assert (DEFAULT_LOG_MAX_SIZE, DEFAULT_LOG_MAX_FILE) == (20 * MIB, 5)
    opts = parse_run_args(["img"], read_file=None)
    assert (opts.log_max_size, opts.log_max_file) == (20 * MIB, 5)
    assert (RunOptions().log_max_size, RunOptions().log_max_file) == (20 * MIB, 5)


class _Stop(Exception):
    """Ends reap() where it would connect to containerd: the writer is built by then."""


def test_the_reaper_writes_with_the_cap_the_run_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opts = parse_run_args(["img"], read_file=None)
    state = ContainerState(id="c1", name="n", namespace="default", address="/nonexistent.sock", snapshotter="overlayfs",
                           data_root=str(tmp_path), state_dir=str(tmp_path), log_max_size=opts.log_max_size,
                           log_max_file=opts.log_max_file)  # fmt: skip
    state.save()  # as socirun/runtime/container.py records it for the reaper
    built: list[logs.JsonFileWriter] = []

    class Recording(logs.JsonFileWriter):
        def __init__(self, path: str, **kwargs: Any) -> None:
            super().__init__(path, **kwargs)
            built.append(self)

    async def no_containerd(*_: object, **__: object) -> None:
        raise _Stop

    monkeypatch.setattr(reaper, "JsonFileWriter", Recording)
    monkeypatch.setattr(ContainerdClient, "connect", no_containerd)
    with pytest.raises(_Stop):
        asyncio.run(reaper.reap(str(tmp_path), str(tmp_path / "c1-json.log"), []))
    assert [(w.max_size, w.max_file) for w in built] == [(20 * MIB, 5)]


def test_the_default_writer_rotates_at_20_mib_and_keeps_5_files(tmp_path: Path) -> None:
    """Driven with the defaults; the files are made sparse up to the cap, so no 100 MiB is written."""
    path = str(tmp_path / "c-json.log")
    line, ns = b"x" * 100 + b"\n", 1
    size = len(logs.entry(line, "stdout", ns))
    for older in logs.rotated_paths(path, 5)[:-1]:  # .4 … .1, as a chatty container leaves them
        with open(older, "wb") as f:
            f.truncate(DEFAULT_LOG_MAX_SIZE)
    with open(path, "wb") as f:
        f.truncate(DEFAULT_LOG_MAX_SIZE - size)
    writer = logs.JsonFileWriter(path)
    writer.write(line, "stdout", ns)  # exactly fills the file to the cap: no rotation yet
    assert os.path.getsize(path) == DEFAULT_LOG_MAX_SIZE
    with open(path + ".4", "r+b") as f:
        f.write(b"oldest")  # marks the file that the rotation must drop
    writer.write(line, "stdout", ns)  # would pass the cap: the current file becomes .1, .4 is dropped
    writer.close()
    assert sorted(os.listdir(tmp_path)) == ["c-json.log", *(f"c-json.log.{n}" for n in range(1, 5))]
    assert os.path.getsize(path) == size
    assert all(os.path.getsize(f"{path}.{n}") == DEFAULT_LOG_MAX_SIZE for n in range(1, 5))
    with open(path + ".4", "rb") as f:
        assert f.read(6) != b"oldest"
    assert sum(os.path.getsize(p) for p in logs.rotated_paths(path, 5)) <= 5 * 20 * MIB
