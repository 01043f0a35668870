"""A terminal driver whose input thread stops as soon as the TUI closes.

Textual's Linux driver reads keys in a thread that polls stdin every 100 ms and, once told to stop, polls
once more for late input; the app's shutdown waits for that thread. Closing the TUI therefore took 0.11-0.13 s
(measured at the end of every `socirun pull --progress tty`), and `socirun run` handed the terminal to the
container that much later. Here the thread also watches a pipe that `disable_input` writes to, so it returns
at once.

It also takes its size from the terminal it draws on. Textual's driver writes to stderr but asks
`shutil.get_terminal_size()`, which reads stdout: `socirun pull IMAGE > file` in a 160x48 terminal drew an 80x24
layout (shutil's fallback) with the old screen's garbage to its right.
"""

from __future__ import annotations

import contextlib
import os
import selectors
from codecs import getincrementaldecoder
from collections.abc import Iterable, Mapping
from typing import Any

from textual._xterm_parser import XTermParser
from textual.drivers.linux_driver import LinuxDriver

POLL_S = 0.1  # how often the parser's tick runs (it times out a lone ESC), as in Textual's driver
FALLBACK_SIZE = (80, 25)  # Textual's own, when no terminal says


def drawing_size(fds: Iterable[int], env: Mapping[str, str]) -> tuple[int, int]:
    """(columns, rows): of the first of `fds` that is a terminal (the one drawn on first), else COLUMNS / LINES,
    else Textual's 80x25. A real terminal wins over the variables: a shell's exported COLUMNS goes stale."""
    for fd in fds:
        try:
            size = os.get_terminal_size(fd)
        except (OSError, ValueError):
            continue
        if size.columns > 0 and size.lines > 0:
            return size.columns, size.lines
    try:
        columns, rows = int(env.get("COLUMNS", "")), int(env.get("LINES", ""))
    except ValueError:
        return FALLBACK_SIZE
    return (columns, rows) if columns > 0 and rows > 0 else FALLBACK_SIZE


class PromptStopDriver(LinuxDriver):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)

    def _get_terminal_size(self) -> tuple[int, int]:
        # `_file` is what Textual draws on (stderr); stdin is the terminal it reads keys from.
        drawn_on = [] if self._file is None else [self._file.fileno()]
        return drawing_size((*drawn_on, self.fileno), os.environ)

    def disable_input(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_write, b"\0")
        super().disable_input()

    def close(self) -> None:
        super().close()
        for fd in (self._wake_read, self._wake_write):
            with contextlib.suppress(OSError):
                os.close(fd)

    def run_input_thread(self) -> None:
        self._drain_wake_pipe()  # a wake-up left by an earlier stop (suspend, then resume) is not for us
        parser = XTermParser(self._debug)
        decode = getincrementaldecoder("utf-8")().decode
        with selectors.DefaultSelector() as selector:
            selector.register(self.fileno, selectors.EVENT_READ)
            selector.register(self._wake_read, selectors.EVENT_READ)
            while not self.exit_event.is_set():
                ready = {key.fd for key, _mask in selector.select(POLL_S)}
                if self._wake_read in ready:
                    return
                if self.fileno in ready:
                    text = decode(os.read(self.fileno, 4096))
                    if not text:  # stdin reached its end: nothing more will come, and select would spin
                        selector.unregister(self.fileno)
                    for event in parser.feed(text) if text else ():
                        self.process_message(event)
                for event in parser.tick():
                    self.process_message(event)

    def _drain_wake_pipe(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._wake_read, 64):
                pass
