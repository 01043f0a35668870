"""Recorded streams replayed into the line faces and through the CLI; the plain path never loads textual."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from socirun import events as ev
from socirun.commands.main import main
from socirun.errors import SocirunError, UsageError
from socirun.ui.replay import dump_events, load_events, replay_lines, replay_work
from tests.support import streams


def test_recording_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    dump_events(streams.lazy_run(), path)
    assert load_events(path) == streams.lazy_run()


def test_a_line_that_is_not_an_event_is_named(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    path.write_text('{"schema":1,"type":"warning","time":1,"message":"ok"}\nnot json\n')
    with pytest.raises(UsageError, match=r"rec.jsonl:2 is not a socirun event"):
        load_events(path)
    with pytest.raises(UsageError, match="cannot read"):
        load_events(tmp_path / "missing.jsonl")


def test_a_recorded_failure_ends_the_replay_with_its_code() -> None:
    out = io.StringIO()
    with pytest.raises(SocirunError, match="does not match its digest") as caught:
        replay_lines(streams.failed_pull(), "plain", out)
    assert caught.value.exit_code == 125
    assert "cccccccccccc: failed (30.0 MB): digest mismatch" in out.getvalue()


def test_replay_work_keeps_the_recorded_spacing_scaled_by_speed() -> None:
    stream = streams.standard_pull()  # 12 s recorded
    got: list[ev.Event] = []

    async def go() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await replay_work(stream, speed=40)(got.append) == 0
        return loop.time() - start

    took = asyncio.run(go())
    assert got == stream and 0.25 <= took < 2.0


def test_cli_replay_plain_and_quiet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "rec.jsonl"
    dump_events(streams.standard_pull(), path)
    assert main(["replay", "--progress", "plain", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "bbbbbbbbbbbb: done (20.0 MB) in 9.0s" in captured.err
    assert main(["replay", "--progress", "quiet", str(path)]) == 0
    assert capsys.readouterr().err.startswith("pulled 127.0.0.1:5000/demo/sample:latest")
    dump_events(streams.failed_pull(), path)
    assert main(["replay", "--progress", "plain", str(path)]) == 125
    assert capsys.readouterr().err.splitlines()[-1].startswith("socirun: layer sha256:cccccccccccc")
    # JSON: stderr holds JSON lines only; the `error` event is the report, no plain line follows it.
    assert main(["replay", "--progress", "json", str(path)]) == 125
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert records[-1]["type"] == "error" and records[-1]["exit_code"] == 125
    assert main(["replay", "--speed", "-1", str(path)]) == 125


def test_replay_of_an_interrupted_pull_exits_130(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "rec.jsonl"
    stopped = [*streams.until(streams.standard_pull(), 5.3),
               ev.Interrupted(message="interrupted; the downloaded bytes kept", time=streams.T0 + 5.4)]
    dump_events(stopped, path)
    assert load_events(path)[-1] == stopped[-1]  # the event survives its JSON form
    for mode in ("plain", "quiet"):
        assert main(["replay", "--progress", mode, str(path)]) == 130
        assert capsys.readouterr().err.splitlines()[-1] == "socirun: interrupted; the downloaded bytes kept"
    assert main(["replay", "--progress", "json", str(path)]) == 130
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert records[-1] == {"schema": 1, "type": "interrupted", "time": streams.T0 + 5.4,
                           "message": "interrupted; the downloaded bytes kept", "exit_code": 130}


@pytest.mark.parametrize("module", ["socirun.commands.main", "socirun.ui.progress", "socirun.ui.replay"])
def test_the_plain_path_never_imports_textual(module: str, tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    dump_events(streams.standard_pull(), path)
    code = (
        f"import sys, io, {module}\n"
        "from socirun.ui.progress import make_renderer\n"
        "from socirun.ui.replay import load_events, replay_lines\n"
        f"replay_lines(load_events({str(path)!r}), 'plain', io.StringIO())\n"
        "from socirun.commands.main import main\n"
        f"main(['replay', '--progress', 'plain', {str(path)!r}])\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'textual' or m.startswith('socirun.ui.tui'))\n"
        "print(','.join(bad))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "", f"{module} pulled in {done.stdout.strip()}"
