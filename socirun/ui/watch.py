"""The watch view of a running container (`socirun watch`, `run -d --watch`), folded from events (pure), and its
plain face. The JSON face is the common one (socirun.ui.jsonl: every event as a line); the TUI's is
socirun.ui.tui.watch_app. Every face says the same things with the same words (`ready_line`, `stats_line`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TextIO

from socirun import events as ev
from socirun.text import terminal_safe
from socirun.ui.model import PullModel, human_bytes, human_duration
from socirun.ui.plain import PlainRenderer

LOG_KEEP = 500
STATS_EVERY_S = 5.0  # the plain face prints CPU/memory at most this often


@dataclass
class WatchModel:
    """What every face of the watch view knows. The lazy layers (rows, SOCI's figures, file reads) are a
    PullModel's, so the watch view shows them exactly as a pull does."""

    lazy: PullModel = field(default_factory=PullModel)
    container_id: str = ""
    name: str = ""
    started_at: float | None = None  # when the container's task started (epoch seconds)
    stats: ev.ContainerStats | None = None
    log: deque[tuple[str, str]] = field(default_factory=lambda: deque(maxlen=LOG_KEEP))
    log_count: int = 0
    waiting: ev.ReadyWaiting | None = None
    ready: ev.ContainerReady | None = None
    exit_code: int | None = None
    error: ev.Error | None = None
    now: float = 0.0

    def apply(self, event: ev.Event) -> None:
        self.now = max(self.now, event.time)
        self.lazy.apply(event)
        match event:
            case ev.ContainerCreated():
                self.container_id = event.container_id
                self.name = event.name or self.name
            case ev.ContainerStarted():
                self.container_id = event.container_id
                self.started_at = event.time
            case ev.ContainerStats():
                self.stats = event
            case ev.ContainerLogLine():
                self.log.append((event.stream, event.line))
                self.log_count += 1
            case ev.ReadyWaiting():
                self.waiting = event
            case ev.ContainerReady():
                self.ready = event
            case ev.ContainerExited():
                self.exit_code = event.exit_code
            case ev.Error():
                self.error = event
            case _:
                pass

    def uptime(self, now: float | None = None) -> float | None:
        if self.started_at is None:
            return None
        return max(0.0, (self.now if now is None else max(now, self.now)) - self.started_at)

    def state_text(self) -> str:
        if self.exit_code is not None:
            return f"exited ({self.exit_code})"
        return "running" if self.started_at is not None else "looking up"

    def readiness_text(self, now: float | None = None) -> str:
        """"ready after 3.2s …", "not ready yet (12.0s)", or "" when no probe was asked for."""
        if self.ready is not None:
            return ready_line(self.ready)
        if self.waiting is None:
            return ""
        up = self.uptime(now)
        return f"not ready yet ({human_duration(up)}; {self.waiting.probe})" if up is not None else "not ready yet"


def ready_line(event: ev.ContainerReady) -> str:
    """The one sentence every face uses for readiness."""
    text = f"ready after {human_duration(event.after)} ({event.probe})"
    if event.fetched is not None:
        text += f"; {human_bytes(event.fetched)} fetched lazily by then"
    return terminal_safe(text)


def stats_line(stats: ev.ContainerStats) -> str:
    cpu = "?" if stats.cpu_percent is None else f"{stats.cpu_percent:.1f}%"
    limit = f" / {human_bytes(stats.memory_limit)}" if 0 < stats.memory_limit < 2**62 else ""
    return f"cpu {cpu}  mem {human_bytes(stats.memory)}{limit}  pids {stats.pids}"


def log_line(stream: str, line: str) -> str:
    """A container's line as the faces print it: marked, and made terminal-safe (it is the container's text)."""
    return terminal_safe(f"{'!' if stream == 'stderr' else '|'} {line}")


class WatchPlainRenderer:
    """Plain face of the watch view: the container's lines (marked `|`, stderr `!`), readiness, CPU/memory every
    few seconds, and the lazy layers as the pull's plain face reports them (it gets those events)."""

    def __init__(self, out: TextIO, *, stats_every_s: float = STATS_EVERY_S) -> None:
        self.out = out
        self.model = WatchModel()
        self.stats_every_s = stats_every_s
        self._lazy = PlainRenderer(out)
        self._stats_at: float | None = None

    def _line(self, text: str) -> None:
        self.out.write(terminal_safe(text) + "\n")
        self.out.flush()

    def handle(self, event: ev.Event) -> None:
        m = self.model
        m.apply(event)
        match event:
            case ev.ContainerStarted():
                up = m.uptime()
                name = f" ({m.name})" if m.name else ""
                self._line(f"watching container {event.container_id[:12]}{name}, running for {human_duration(up)}")
            case ev.ContainerLogLine():
                self._line(log_line(event.stream, event.line))
            case ev.ContainerStats():
                if self._stats_at is None or event.time - self._stats_at >= self.stats_every_s:
                    self._stats_at = event.time
                    self._line(stats_line(event))
            case ev.ReadyWaiting():
                limit = f" (timeout {human_duration(event.timeout)})" if event.timeout is not None else ""
                self._line(f"waiting for readiness: {event.probe}{limit}")
            case ev.ContainerReady():
                self._line(ready_line(event))
            case ev.ContainerExited():
                self._line(f"container {event.container_id[:12]} exited with code {event.exit_code}")
            case ev.ContainerCreated() | ev.Error():
                pass  # the name is said with the start; an error is the CLI's sentence
            case _:
                self._lazy.handle(event)

    def tick(self, now: float) -> None:
        pass
