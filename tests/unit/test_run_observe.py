"""Who follows SOCI after the start: only a face that shows it. Quiet (and the attached run after the TUI) shows
nothing of it, and parsing SOCI's debug log costs the container CPU while it starts."""

from __future__ import annotations

import json
from typing import Any

import pytest

from socirun import events as ev
from socirun.commands import run as run_cmd
from socirun.commands.context import GlobalOptions
from socirun.config import SocirunConfig
from socirun.soci import observer as obs
from socirun.soci.config import SociConfig


def _observe_flag(monkeypatch: pytest.MonkeyPatch, progress: str) -> bool:
    seen: list[bool] = []

    async def fake_run_container(opts: Any, ctx: Any, emit: ev.Emit, *, observe: bool = True) -> int:
        seen.append(observe)
        return 0

    monkeypatch.setattr(run_cmd, "run_container", fake_run_container)
    assert run_cmd.run_command(["--progress", progress, "busybox", "true"], SocirunConfig(), GlobalOptions()) == 0
    assert len(seen) == 1
    return seen[0]


@pytest.mark.parametrize(("progress", "observed"), [("quiet", False), ("plain", True), ("json", True)])
def test_only_a_face_that_shows_soci_follows_it(monkeypatch: pytest.MonkeyPatch, progress: str,
                                                observed: bool) -> None:
    assert _observe_flag(monkeypatch, progress) is observed


def test_observer_parses_only_read_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    def fuse(operation: str, at: str) -> str:
        return json.dumps({"level": "debug", "msg": "FUSE operation", "operation": operation, "path": "data/a",
                           "time": f"2026-12-02T11:12:57.{at}Z"})

    lines = [fuse("node.Lookup", "1"), fuse("file.Read", "2"),
             json.dumps({"level": "debug", "msg": "fetching span", "spanId": 3}), fuse("node.Getxattr", "4")]
    parsed: list[str] = []
    real = obs.parse_log_line

    def counting(line: str) -> obs.LogEvent | None:
        parsed.append(line)
        return real(line)

    monkeypatch.setattr(obs, "parse_log_line", counting)
    seen: list[ev.Event] = []
    observer = obs.SociObserver(SociConfig(root="/nonexistent"), seen.append, use_journal=False, layers=())
    for line in lines:
        observer.on_log(line)
    assert parsed == [lines[1]]
    assert [(e.path, e.requests) for e in seen if isinstance(e, ev.FetchLogEntry)] == [("/data/a", 1)]
