"""Bad input and unexpected failures end in one sentence on stderr and exit 125, never a traceback (issue 12,
item 11): the run parser validates what it used to hand on raw, and the CLI's shell turns any exception into a
sentence (the traceback only with --debug)."""

from __future__ import annotations

import io
from contextlib import redirect_stderr
from pathlib import Path

import pytest

from socirun.commands import plan as plan_module
from socirun.commands.main import main
from socirun.errors import EXIT_CANNOT_INVOKE, SocirunError

DIGITS_400 = "1" * 400
NO_CONTAINERD = ("--address", "/nonexistent.sock")


def run_cli(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with redirect_stderr(err):
        code = main(list(argv))
    return code, err.getvalue()


def assert_one_sentence(code: int, err: str, fragment: str) -> None:
    assert code == 125, err
    assert "Traceback" not in err
    assert err.startswith("socirun: ") and len(err.splitlines()) == 1, err
    assert fragment in err, err


@pytest.mark.parametrize(("argv", "fragment"), [
    (("run", "-m", DIGITS_400, "x"), "strconv.ParseFloat: parsing \"1111"),
    (("run", "--memory", DIGITS_400 + "g", "x"), "value out of range"),
    (("run", "--shm-size", DIGITS_400, "x"), '"--shm-size" flag: strconv.ParseFloat'),
    (("run", "--cpus", "nan", "x"), "failed to parse nan as a rational number"),
    (("run", "--cpus", "inf", "x"), "failed to parse inf as a rational number"),
    (("run", "--cpus", "-inf", "x"), "failed to parse -inf as a rational number"),
    (("run", "--cpus", "1e308", "x"), "range of CPUs is from 0.01"),
    (("run", "--stop-signal", "²", "x"), "invalid signal: ²"),
    (("run", "--stop-signal", DIGITS_400, "x"), "invalid signal"),
    (("run", "-u", "²", "x"), '"²" for "-u, --user" flag'),
    (("run", "-u", "0:²", "x"), "'²' is neither a name nor a number"),
    (("run", "-u", "99999999999", "x"), "out of range"),
    (("run", "--group-add", "²", "x"), "--group-add"),
    (("run", "--stop-timeout", DIGITS_400, "x"), "value out of range"),
    (("run", "--pids-limit", "٣", "x"), "invalid syntax"),
    (("run", "--ulimit", f"nofile={DIGITS_400}", "x"), "value out of range"),
    (("run", "-m", "٣m", "x"), "invalid size"),
], ids=lambda v: " ".join(v)[:40] if isinstance(v, tuple) else None)
def test_bad_run_values_are_one_sentence_and_125(argv: tuple[str, ...], fragment: str) -> None:
    code, err = run_cli(argv[0], *NO_CONTAINERD, *argv[1:])
    assert_one_sentence(code, err, fragment)


def test_a_non_utf8_env_file_is_docker_s_sentence(tmp_path: Path) -> None:
    env = tmp_path / "bad.env"
    env.write_bytes(b"A=1\nB=\xff\xfe\n")
    code, err = run_cli("run", *NO_CONTAINERD, "--env-file", str(env), "x")
    assert_one_sentence(code, err, f"env file {env} contains invalid utf8 bytes at line 2")


@pytest.mark.parametrize(("path", "why"), [("/nonexistent/x", "No such file or directory"), ("/", "Is a directory")])
def test_an_unwritable_recording_is_a_sentence(path: str, why: str) -> None:
    code, err = run_cli("pull", *NO_CONTAINERD, "--progress", "plain", "--record-events", path, "alpine")
    assert_one_sentence(code, err, f"cannot write --record-events file {path}: {why}")


def test_any_unexpected_exception_is_one_sentence_and_125(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> int:
        raise KeyError("no 'digest' in \x1b[2Jthe index entry")

    monkeypatch.setattr(plan_module, "plan_command", broken)
    code, err = run_cli("plan", "img")
    assert_one_sentence(code, err, "unexpected error (KeyError: ")
    assert "\x1b" not in err and "\\x1b[2J" in err and err.rstrip().endswith("rerun with --debug for the traceback")


def test_debug_adds_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> int:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(plan_module, "plan_command", broken)
    code, err = run_cli("--debug", "plan", "img")
    assert code == 125
    assert "Traceback" in err and err.splitlines()[-1] == (
        "socirun: unexpected error (RecursionError: maximum recursion depth exceeded)")


def test_a_socirun_error_inside_an_exception_group_keeps_its_sentence_and_code(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def grouped(*_: object) -> int:
        ours = SocirunError("cannot invoke", exit_code=EXIT_CANNOT_INVOKE)
        raise ExceptionGroup("unhandled errors in a TaskGroup", [ValueError("later"), ExceptionGroup("inner", [ours])])

    monkeypatch.setattr(plan_module, "plan_command", grouped)
    code, err = run_cli("plan", "img")
    assert (code, err) == (EXIT_CANNOT_INVOKE, "socirun: cannot invoke\n")
