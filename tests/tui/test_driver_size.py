"""The TUI's size comes from the terminal it draws on (stderr), not stdout: `socirun pull IMAGE > file` in a
160x48 terminal drew an 80x24 layout, Textual's driver asking shutil, which reads stdout."""

from __future__ import annotations

import fcntl
import os
import struct
import termios
from collections.abc import Iterator
from typing import Any, cast

import pytest

from socirun.ui.tui.driver import FALLBACK_SIZE, PromptStopDriver, drawing_size


@pytest.fixture
def pty_160x48() -> Iterator[int]:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 48, 160, 0, 0))
    try:
        yield slave
    finally:
        os.close(slave)
        os.close(master)


def test_drawing_size_prefers_the_terminal_then_the_variables() -> None:
    with open(os.devnull, "rb") as null:
        assert drawing_size([null.fileno()], {"COLUMNS": "120", "LINES": "40"}) == (120, 40)
        assert drawing_size([null.fileno()], {"COLUMNS": "x"}) == FALLBACK_SIZE
        assert drawing_size([], {}) == FALLBACK_SIZE


def test_drawing_size_reads_a_terminal_before_stale_variables(pty_160x48: int) -> None:
    assert drawing_size([pty_160x48], {"COLUMNS": "80", "LINES": "24"}) == (160, 48)


async def test_driver_sizes_itself_from_stderr_with_stdout_in_a_file(pty_160x48: int, tmp_path: Any,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)
    driver = PromptStopDriver(cast(Any, None))
    try:
        driver._file = os.fdopen(os.dup(pty_160x48), "w")  # stderr: the terminal Textual draws on
        with open(os.devnull, "rb") as null, open(tmp_path / "out", "w") as stdout_file:
            driver.fileno = null.fileno()  # stdin: not a terminal here
            monkeypatch.setattr("sys.stdout", stdout_file)
            monkeypatch.setattr("sys.__stdout__", stdout_file)  # what shutil.get_terminal_size reads
            assert driver._get_terminal_size() == (160, 48)
    finally:
        driver._file.close()
        driver.close()
