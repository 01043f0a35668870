"""Issue 13: runs, first contact and progress that is true — the parts that need no containerd.

The JSON face's stderr holds nothing but JSON lines; an interrupted work ends its stream (and its recording) with an
`interrupted` event; "started after" counts from the run's own start; numbers are humane; an attached run opens the
TUI only to show a pull; the demo's closing commands work in a fresh shell; `plan --help` explains every option;
scripts/install-deps.sh keeps pip quiet unless it fails."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os
import re
import signal
import subprocess
from contextlib import redirect_stderr
from pathlib import Path

import pytest

from socirun import events as ev
from socirun.commands.main import build_parser, main
from socirun.commands.run import counted_from, opens_tui
from socirun.commands.sandbox import demo_hints
from socirun.decide.transfer import TransferPlan, TransferSettings, iec_size, parse_size
from socirun.errors import RegistryError
from socirun.ui.model import PullModel
from socirun.ui.progress import INTERRUPTED, Reported, run_work
from tests.support import streams

NO_CONTAINERD = ("--address", "/nonexistent.sock")
ROOT = Path(__file__).resolve().parents[2]


def cli(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with redirect_stderr(err):
        code = main(list(argv))
    return code, err.getvalue()


def json_lines(text: str) -> list[dict[str, object]]:
    """Every line of `text` as JSON (a line that is not JSON fails the test)."""
    return [json.loads(line) for line in text.splitlines()]


# -- --progress json: stderr is JSON lines only ------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ("pull", "--progress", "json", *NO_CONTAINERD, "127.0.0.1:1/demo/x:v1"),  # containerd unreachable
    ("pull", "--progress", "json", *NO_CONTAINERD, "Bad::Tag"),  # a bad reference: the setup's own error
    (*NO_CONTAINERD, "run", "--progress", "json", "--rm", "127.0.0.1:1/demo/x:v1", "true"),
], ids=["pull-unreachable", "pull-bad-reference", "run-unreachable"])
def test_json_errors_are_only_json_lines(argv: tuple[str, ...]) -> None:
    code, err = cli(*argv)
    assert code == 125, err
    records = json_lines(err)  # a plain "socirun: ..." line here fails to parse
    assert records[-1]["type"] == "error" and records[-1]["exit_code"] == 125
    assert isinstance(records[-1]["message"], str) and records[-1]["message"]


def test_json_unexpected_error_is_an_error_event_and_125() -> None:
    async def work(emit: ev.Emit) -> int:
        raise RuntimeError("boom")

    out = io.StringIO()
    with pytest.raises(Reported) as caught:
        run_work(work, "json", out=out)
    assert caught.value.exit_code == 125 and isinstance(caught.value.__cause__, RuntimeError)
    assert json_lines(out.getvalue())[-1]["message"] == "unexpected error (RuntimeError: boom)"


def test_plain_errors_still_reach_the_shell() -> None:
    async def work(emit: ev.Emit) -> int:
        raise RegistryError("no such tag")

    with pytest.raises(RegistryError):
        run_work(work, "plain", out=io.StringIO())


# -- an interrupted work says so -----------------------------------------------------------------------------


def _interrupted_pull(emit: ev.Emit) -> asyncio.Future[int]:
    async def work() -> int:
        for event in streams.until(streams.standard_pull(), 5.3):
            emit(event)
        signal.raise_signal(signal.SIGINT)  # Ctrl-C: asyncio.run cancels the work and raises KeyboardInterrupt
        await asyncio.sleep(30)
        return 0

    return asyncio.ensure_future(work())


@pytest.mark.parametrize("mode", ["plain", "json", "quiet"])
def test_a_recording_of_an_interrupted_pull_ends_with_interrupted(mode: str, tmp_path: Path) -> None:
    record = tmp_path / "rec.jsonl"
    out = io.StringIO()
    expected: type[BaseException] = Reported if mode == "json" else KeyboardInterrupt
    with pytest.raises(expected):
        run_work(_interrupted_pull, mode, record=str(record), out=out)
    last = json_lines(record.read_text())[-1]
    assert last["type"] == "interrupted" and last["exit_code"] == 130 and last["message"] == INTERRUPTED
    if mode == "json":
        assert json_lines(out.getvalue())[-1]["type"] == "interrupted"


def test_json_interrupt_exits_130_with_no_plain_line(tmp_path: Path) -> None:
    out = io.StringIO()
    with pytest.raises(Reported) as caught:
        run_work(_interrupted_pull, "json", out=out)
    assert caught.value.exit_code == 130


def test_a_detached_tui_leaving_is_no_interruption() -> None:
    # `run -d` in the TUI cancels its work when the user presses q: the container keeps running, nothing stopped.
    events: list[ev.Event] = []

    class Collect:
        def handle(self, event: ev.Event) -> None:
            events.append(event)

        def tick(self, now: float) -> None:
            pass

    async def cancelled(emit: ev.Emit) -> int:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        run_work(cancelled, "plain", renderer=Collect(), detach=True)
    assert events == []
    with pytest.raises(asyncio.CancelledError):
        run_work(cancelled, "plain", renderer=Collect())
    assert [e.type_name for e in events] == ["interrupted"]


def test_the_model_and_tui_header_show_interrupted() -> None:
    m = PullModel()
    for event in streams.until(streams.standard_pull(), 5.3):
        m.apply(event)
    assert m.phase() == "pulling"
    m.apply(ev.Interrupted(message=INTERRUPTED, time=streams.T0 + 5.4))
    assert m.phase() == "interrupted"
    assert ev.from_record(ev.to_record(m.interrupted)) == m.interrupted  # type: ignore[arg-type]


# -- "started after N s" ---------------------------------------------------------------------------------------


def test_started_after_counts_from_the_run_s_own_start() -> None:
    got: list[ev.Event] = []
    started = ev.ContainerStarted(container_id="c" * 64, pid=1, since_command_start=15.2, time=1000.0)
    counted_from(got.append, 997.5)(started)
    counted_from(got.append, None)(started)  # a plain `socirun run`: the process's own start, as before
    assert got == [dataclasses.replace(started, since_command_start=2.5), started]


# -- an attached run opens the TUI only for a pull ----------------------------------------------------------


@pytest.mark.parametrize(("pull", "here", "opens"), [
    ("missing", True, False), ("missing", False, True),
    ("always", True, True), ("always", False, True),
    ("never", True, False), ("never", False, False),
])
def test_opens_tui_only_when_it_pulls(pull: str, here: bool, opens: bool) -> None:
    assert opens_tui(pull, image_here=here) is opens


# -- humane numbers ---------------------------------------------------------------------------------------------


def test_sizes_in_sentences_are_humane() -> None:
    assert [iec_size(n) for n in (300, 262144, 8388608, 1572864, 1 << 30)] == [
        "300 B", "256 KiB", "8 MiB", "1.5 MiB", "1 GiB"]
    settings = TransferSettings(max_concurrent_downloads=8, chunk_size=parse_size("8MiB"), window=16)
    plan = TransferPlan("parallel", (), settings)
    sentence = plan.how("overlayfs")
    assert "chunks of 8 MiB over" in sentence and "8388608" not in sentence
    code, err = cli("pull", *NO_CONTAINERD, "--progress", "plain", "--chunk-size", "2GiB", "127.0.0.1:1/x:y")
    assert code == 125 and "not 2 GiB" in err and "2147483648" not in err, err


# -- first contact -----------------------------------------------------------------------------------------------


def test_demo_hints_work_in_a_fresh_shell() -> None:
    exe = "/work/main/.venv/bin/socirun"
    lines = demo_hints(exe, "127.0.0.1:5000/demo/lazy:latest", None)
    text = "\n".join(lines)
    assert f'eval "$({exe} sandbox env)"' in text
    assert f"{exe} plan 127.0.0.1:5000/demo/lazy:latest" in text
    assert "source /work/main/.venv/bin/activate" in text and f"{exe} sandbox down" in text
    # No command relies on `socirun` being on PATH already.
    commands = re.sub(r"#.*", "", text.replace(exe, "EXE"))  # the comments may name it
    assert not re.search(r"(^|[\s(;])socirun ", commands), text
    with_dir = "\n".join(demo_hints(exe, "r:1", "/tmp/my box"))
    assert "sandbox env --dir '/tmp/my box'" in with_dir and "sandbox down --dir '/tmp/my box'" in with_dir


def test_plan_help_explains_every_option() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    plan = sub.choices["plan"]  # type: ignore[attr-defined]
    silent = [a.dest for a in plan._actions if not a.help]
    assert silent == []


def _quiet_pip(tmp_path: Path, *, fail: bool) -> subprocess.CompletedProcess[str]:
    """scripts/install-deps.sh's `quiet_pip` against a fake .venv/bin/python that talks like setuptools."""
    script = (ROOT / "scripts" / "install-deps.sh").read_text()
    match = re.search(r"^quiet_pip\(\) \{\n.*?^\}\n", script, re.MULTILINE | re.DOTALL)
    assert match, "scripts/install-deps.sh has no quiet_pip function"
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    fake = bin_dir / "python"
    fake.write_text("#!/bin/sh\necho 'SetuptoolsDeprecationWarning: project.license as a TOML table'\n"
                    f"echo 'more noise' >&2\nexit {1 if fail else 0}\n")
    fake.chmod(0o755)
    return subprocess.run(["bash", "-c", match.group(0) + "quiet_pip install -q -e ."], cwd=tmp_path,
                          capture_output=True, text=True, timeout=30, env={**os.environ}, check=False)


def test_install_deps_pip_is_quiet_unless_it_fails(tmp_path: Path) -> None:
    ok = _quiet_pip(tmp_path / "ok", fail=False)
    assert ok.returncode == 0 and ok.stdout == "" and ok.stderr == ""
    bad = _quiet_pip(tmp_path / "bad", fail=True)
    assert bad.returncode != 0 and "SetuptoolsDeprecationWarning" in bad.stderr and "more noise" in bad.stderr
    assert "failed" in bad.stderr


def test_run_record_events_writes_the_stream_the_readme_promises(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # `socirun run --record-events FILE` (README, faces): the stream of a non-TTY run goes to FILE, ending with how
    # the run ended; here containerd is unreachable, so the recording ends with the error event.
    from socirun.commands import run as run_cmd
    from socirun.commands.context import GlobalOptions
    from socirun.config import SocirunConfig
    from socirun.errors import SocirunError

    record = tmp_path / "run.jsonl"

    async def failing_run_container(opts: object, ctx: object, emit: ev.Emit, **_: object) -> int:
        emit(ev.WarningMessage(message="about to fail"))
        raise SocirunError("containerd is not there")

    monkeypatch.setattr(run_cmd, "run_container", failing_run_container)
    with pytest.raises(SocirunError):
        run_cmd.run_command(["--progress", "plain", "--record-events", str(record), "busybox", "true"],
                            SocirunConfig(), GlobalOptions())
    kinds = [json.loads(line)["type"] for line in record.read_text().splitlines()]
    assert kinds[0] == "warning" and kinds[-1] == "error"
