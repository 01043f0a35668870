"""Terminal safety: the sanitiser, and every line face, `plan`, the TUI's recap and the CLI's error line fed an
event stream (or an error) whose outside strings carry ESC/CSI/OSC sequences, a C1 CSI and bidi overrides."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr
from typing import Any

import pytest

from socirun import events as ev
from socirun.commands import plan as plan_module
from socirun.commands.main import main
from socirun.commands.plan import render_plan
from socirun.errors import RegistryError
from socirun.text import terminal_safe
from socirun.ui.jsonl import JsonRenderer, QuietRenderer
from socirun.ui.model import PullModel
from socirun.ui.plain import PlainRenderer
from socirun.ui.tui import format as fmt
from tests.support.hostile import ERROR, FILE, HOSTILE, PLATFORM, hostile_pull, unsafe_characters

# ------------------------------------------------------------------------------------------------ the sanitiser


@pytest.mark.parametrize(("raw", "shown"), [
    ("\x1b[2Jgone", "\\x1b[2Jgone"),
    ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),
    ("\x9b31m", "\\x9b31m"),
    ("a\x00b\x7fc", "a\\x00b\\x7fc"),
    ("over\rwrite", "over\\rwrite"),
    ("two\nlines", "two\\nlines"),
    ("col\tumn", "col umn"),
    ("txt\u202eexe.", "txt\\u202eexe."),
    ("\u202a\u202b\u202c\u202d\u2066\u2067\u2068\u2069", "\\u202a\\u202b\\u202c\\u202d\\u2066\\u2067\\u2068\\u2069"),
    ("undecodable \udcff byte", "undecodable \\udcff byte"),
])
def test_control_and_bidi_characters_become_visible_escapes(raw: str, shown: str) -> None:
    assert terminal_safe(raw) == shown


def test_printable_text_is_unchanged_and_sanitising_twice_changes_nothing() -> None:
    text = "café ✔ 日本語 /usr/lib/python3.12/enc—odings ◐ 42% [3/4 layers] \\x1b literally"
    assert terminal_safe(text) == text
    once = terminal_safe(HOSTILE)
    assert terminal_safe(once) == once and not unsafe_characters(once)


def test_multiline_keeps_newlines_only() -> None:
    assert terminal_safe("one\n\x1b[1mtwo\r\n", multiline=True) == "one\n\\x1b[1mtwo\\r\n"


# ------------------------------------------------------------------------------------------------ the faces


def test_plain_face_writes_no_escape_from_a_hostile_stream() -> None:
    out = io.StringIO()
    plain = PlainRenderer(out, heartbeat_s=0.0)
    for event in hostile_pull():
        plain.handle(event)
        plain.tick(event.time)
    text = out.getvalue()
    assert unsafe_characters(text) == []
    # The hostile parts are still there for a person to read, as escapes.
    assert "\\x1b]0;pwned\\x07" in text and "\\u202e" in text and "\\x9b31m" in text
    assert terminal_safe(FILE) in text and terminal_safe(PLATFORM) in text
    assert all(line for line in text.split("\n")[:-1])  # a CR or newline in a name made no extra line


def test_quiet_face_writes_no_escape() -> None:
    out = io.StringIO()
    quiet = QuietRenderer(out)
    for event in hostile_pull():
        quiet.handle(event)
    assert "pulled" in out.getvalue() and "short name" in out.getvalue()
    assert unsafe_characters(out.getvalue()) == []


def test_json_face_escapes_control_characters_and_keeps_the_data() -> None:
    """The JSON face is data: json.dumps escapes every control and non-ASCII character, and a consumer gets the
    original strings back."""
    out = io.StringIO()
    json_face = JsonRenderer(out)
    stream = hostile_pull()
    for event in stream:
        json_face.handle(event)
    text = out.getvalue()
    assert unsafe_characters(text) == [] and text.isascii()
    paths = [json.loads(line).get("path") for line in text.splitlines()]
    assert FILE in paths


def test_tui_recap_and_summary_lines_are_safe() -> None:
    model = PullModel()
    for event in hostile_pull(with_error=False):
        model.apply(event)
    lines = fmt.recap_lines(model)
    assert len(lines) >= 3
    assert all(unsafe_characters(line) == [] for line in lines)
    assert unsafe_characters(fmt.fetch_line(model.started, ev.FetchLogEntry(reason="read", path=FILE))) == []


def test_plan_text_and_json_output_are_safe() -> None:
    doc: dict[str, Any] = {"reference": "r" + HOSTILE, "text": ["mode lazy: " + HOSTILE, "SOCI metrics: " + HOSTILE]}
    text = render_plan(doc, as_json=False)
    assert unsafe_characters(text) == [] and len(text.splitlines()) == 2
    as_json = render_plan(doc, as_json=True)
    assert unsafe_characters(as_json) == [] and json.loads(as_json) == {"reference": "r" + HOSTILE}


def test_plan_command_prints_safe_text(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    async def fake_plan(*_: object) -> dict[str, Any]:
        return {"text": ["plan for " + PLATFORM]}

    monkeypatch.setattr(plan_module, "_plan", fake_plan)
    assert main(["plan", "--address", "/nonexistent.sock", "img"]) == 0
    out = capsys.readouterr().out
    assert "plan for linux/amd64" in out and unsafe_characters(out) == []


# ------------------------------------------------------------------------------------------------ the error line


def test_error_line_of_a_hostile_registry_message_is_one_safe_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object) -> int:
        raise RegistryError(ERROR)

    monkeypatch.setattr(plan_module, "plan_command", refuse)
    err = io.StringIO()
    with redirect_stderr(err):
        code = main(["plan", "img"])
    assert code == 125
    assert err.getvalue() == f"socirun: {terminal_safe(ERROR)}\n"
    assert unsafe_characters(err.getvalue()) == [] and len(err.getvalue().splitlines()) == 1
