"""PullModel: what every renderer knows about a pull, folded from the event stream (pure).

Rates and ETAs are computed from the events' own timestamps, so a replayed stream renders the same every
time and tests need no real clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from socirun import events as ev

RATE_WINDOW_S = 10.0


@dataclass
class LayerRow:
    index: int
    digest: str
    media_type: str
    size: int
    mode: str
    state: str = "waiting"
    downloaded: int = 0
    applied: int = 0
    started: float | None = None
    finished: float | None = None
    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))

    @property
    def short(self) -> str:
        return short_digest(self.digest)

    def rate(self) -> float:
        return _rate(self.samples)


@dataclass
class PullModel:
    reference: str = ""
    expanded_from: str | None = None
    digest: str = ""
    platform: str = ""
    mode: str = ""
    snapshotter: str = ""
    reasons: tuple[str, ...] = ()
    total_size: int = 0
    started: float | None = None
    finished: ev.PullFinished | None = None
    error: ev.Error | None = None
    warnings: list[str] = field(default_factory=list)
    layers: dict[str, LayerRow] = field(default_factory=dict)
    now: float = 0.0
    # (time, bytes moved in this run) for the aggregate rate; cached layers do not count.
    _samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=256))

    def apply(self, event: ev.Event) -> None:
        self.now = max(self.now, event.time)
        if self.started is None:
            self.started = event.time
        match event:
            case ev.Resolving():
                self.reference = event.reference
                self.expanded_from = event.expanded_from
            case ev.ImageResolved():
                self.reference = event.reference
                self.digest = event.digest
                self.platform = event.platform
                self.total_size = event.total_size
            case ev.PlanMade():
                self.mode, self.snapshotter, self.reasons = event.mode, event.snapshotter, event.reasons
            case ev.LayerPlanned():
                self.layers[event.digest] = LayerRow(
                    event.index, event.digest, event.media_type, event.size, event.mode
                )
            case ev.LayerStateChanged():
                row = self.layers.get(event.digest)
                if row is not None:
                    row.state = event.state
                    if event.state == "downloading" and row.started is None:
                        row.started = event.time
                    if event.state in ("done", "exists", "failed"):
                        row.finished = event.time
                    if event.state == "exists":
                        row.mode = "cached"
            case ev.LayerProgress():
                row = self.layers.get(event.digest)
                if row is not None:
                    row.downloaded, row.applied = event.downloaded, event.applied
                    _sample(row.samples, event.time, event.downloaded)
                    _sample(self._samples, event.time, self.bytes_moved())
            case ev.PullFinished():
                self.finished = event
            case ev.Error():
                self.error = event
            case ev.WarningMessage():
                self.warnings.append(event.message)
            case _:
                pass

    def bytes_moved(self) -> int:
        """Bytes this run put into the content store (cached layers excluded)."""
        return sum(r.downloaded for r in self.layers.values() if r.state != "exists")

    def bytes_done(self) -> int:
        """Progress towards the image size: cached and finished layers count whole."""
        return sum(r.size if r.state in ("done", "exists") else r.downloaded for r in self.layers.values())

    def fraction(self) -> float:
        return self.bytes_done() / self.total_size if self.total_size else 0.0

    def rate(self) -> float:
        return _rate(self._samples)

    def eta(self) -> float | None:
        rate = self.rate()
        remaining = self.total_size - self.bytes_done()
        if remaining <= 0:
            return 0.0
        return remaining / rate if rate > 0 else None

    def elapsed(self) -> float:
        return self.now - self.started if self.started is not None else 0.0

    def counts(self) -> tuple[int, int]:
        finished = sum(1 for r in self.layers.values() if r.state in ("done", "exists"))
        return finished, len(self.layers)


def _sample(samples: deque[tuple[float, int]], at: float, value: int) -> None:
    """Record (time, bytes); events sharing a timestamp collapse into one sample, so rates are not skewed."""
    if samples and samples[-1][0] == at:
        samples[-1] = (at, value)
    else:
        samples.append((at, value))


def _rate(samples: deque[tuple[float, int]]) -> float:
    """Bytes per second over the last RATE_WINDOW_S seconds of samples."""
    if len(samples) < 2:
        return 0.0
    t_last, b_last = samples[-1]
    first = next(((t, b) for t, b in samples if t_last - t <= RATE_WINDOW_S), samples[0])
    dt = t_last - first[0]
    return (b_last - first[1]) / dt if dt > 0 else 0.0


def short_digest(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


def human_bytes(n: float) -> str:
    """Decimal units, as docker prints sizes."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover - unreachable, kept for the type checker


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
