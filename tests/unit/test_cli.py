import io
from contextlib import redirect_stderr

import pytest

from socirun import events as ev
from socirun.commands.main import main
from socirun.ui.jsonl import QuietRenderer
from socirun.ui.plain import PlainRenderer


def run_cli(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with redirect_stderr(err):
        code = main(list(argv))
    return code, err.getvalue()


def test_unknown_flag_is_exit_125_with_one_sentence() -> None:
    code, err = run_cli("pull", "--no-such-flag", "x")
    assert code == 125
    assert err.startswith("socirun: ") and "--no-such-flag" in err and len(err.strip().splitlines()) == 1


def test_bad_reference_is_exit_125() -> None:
    code, err = run_cli("pull", "--address", "/nonexistent.sock", "UPPER/Case:tag!")
    assert code == 125
    assert "invalid reference format" in err and "Traceback" not in err


def test_bad_progress_value_is_refused_before_anything_runs() -> None:
    code, err = run_cli("pull", "--progress", "fancy", "--address", "/nonexistent.sock", "alpine")
    assert code == 125 and "--progress" in err


def test_a_bare_image_and_run_both_route_to_the_run_command() -> None:
    # Both reach `socirun run`'s parser and then containerd (absent here): one sentence, exit 125.
    for argv in (("--address", "/nonexistent.sock", "ubuntu", "echo", "hi"),
                 ("run", "--address", "/nonexistent.sock", "--rm", "ubuntu"),
                 ("-a", "/nonexistent.sock", "--rm", "-it", "ubuntu", "sh")):
        code, err = run_cli(*argv)
        assert code == 125 and "/nonexistent.sock" in err and "Traceback" not in err, (argv, err)
    code, err = run_cli("-h", "box", "--address", "/nonexistent.sock", "ubuntu")
    assert code == 125 and "/nonexistent.sock" in err  # -h is --hostname, as in docker
    code, err = run_cli("--bogus", "ubuntu")
    assert code == 125 and "unknown flag: --bogus" in err
    code, err = run_cli("run", "--health-cmd", "x", "ubuntu")
    assert code == 125 and "--health-cmd is not supported" in err


@pytest.mark.parametrize("renderer_cls", [PlainRenderer, QuietRenderer])
def test_alias_expansion_is_always_printed(renderer_cls: type[PlainRenderer] | type[QuietRenderer]) -> None:
    out = io.StringIO()
    renderer = renderer_cls(out)
    renderer.handle(ev.Resolving(reference="public.ecr.aws/deep-learning-containers/vllm:0.19.0",
                                 expanded_from="vllm"))
    assert "short name 'vllm' expanded to public.ecr.aws/deep-learning-containers/vllm:0.19.0" in out.getvalue()
