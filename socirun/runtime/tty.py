"""The local terminal for `-t`: raw mode while the container runs, and its size for `Tasks.ResizePty`."""

from __future__ import annotations

import contextlib
import os
import termios
import tty
from collections.abc import Iterator


@contextlib.contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """Put `fd` in raw mode when it is a terminal (Ctrl-C then reaches the container as a byte); restore after."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def terminal_size(fd: int) -> tuple[int, int] | None:
    """(columns, rows) of the terminal on `fd`, or None when it is not one."""
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return None
    return size.columns, size.lines
