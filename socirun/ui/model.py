"""PullModel: what every renderer knows about a pull, folded from the event stream (pure).

Rates and ETAs are computed from the events' own timestamps, so a replayed stream renders the same every
time and tests need no real clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from socirun import events as ev

RATE_WINDOW_S = 10.0
# The layer modes whose unpacking socirun does (Diff.Apply): a lazy or snapshotter layer is the snapshotter's.
UNPACKED_BY_SOCIRUN = ("standard", "parallel")


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
    unpack_started: float | None = None  # when its Diff.Apply began ("unpacking")
    unpack_took: float | None = None  # seconds from "unpacking" to "done", once applied in this run
    fetched: int = 0  # bytes named by fetch-log entries of recordings made before LazyLayerStats existed
    lazy: ev.LazyLayerStats | None = None  # SOCI's latest figures for this lazily mounted layer
    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))

    @property
    def lazy_fetched(self) -> int:
        """Compressed bytes the lazy snapshotter holds of this layer: SOCI's own figure (LazyLayerStats); in
        older recordings, its progress events or the byte ranges its fetch log named, whichever knew more."""
        if self.lazy is not None:
            return self.lazy.fetched
        return max(self.fetched, self.downloaded)

    @property
    def lazy_size(self) -> int:
        return self.lazy.size if self.lazy is not None and self.lazy.size > 0 else self.size

    @property
    def short(self) -> str:
        return short_digest(self.digest)

    def rate(self) -> float:
        return _rate(self.samples)

    def eta(self) -> float | None:
        if self.state in ("done", "exists"):
            return 0.0
        rate = self.rate()
        return (self.size - self.downloaded) / rate if rate > 0 else None

    @property
    def unpack_pending(self) -> bool:
        """socirun still has to apply this layer (its download may be finished or not)."""
        return self.mode in UNPACKED_BY_SOCIRUN and self.state not in ("done", "exists", "failed")


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
    interrupted: ev.Interrupted | None = None
    warnings: list[str] = field(default_factory=list)
    layers: dict[str, LayerRow] = field(default_factory=dict)
    now: float = 0.0
    container_id: str = ""
    container_started: ev.ContainerStarted | None = None
    exit_code: int | None = None
    fetch_count: int = 0  # fetch-log entries with a byte range (recordings made before LazyLayerStats)
    fetch_bytes: int = 0  # bytes they named
    reads: dict[str, int] = field(default_factory=dict)  # path → FUSE read requests, in the order first read
    read_first: dict[str, float] = field(default_factory=dict)  # path → when it was first read
    last_read_new: bool = False  # the FetchLogEntry "read" just applied named a path for the first time
    sources: ev.ObservationSources | None = None  # where the lazy figures come from, and what is missing
    # (time, bytes moved in this run) for the aggregate rate; cached layers do not count.
    _samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=256))
    # Running totals, so folding a LayerProgress costs the same for 5 layers as for 500.
    _moved: int = 0
    _done: int = 0

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
                    self._count_out(row)
                    row.state = event.state
                    if event.state == "downloading" and row.started is None:
                        row.started = event.time
                    if event.state == "unpacking":
                        row.unpack_started = event.time
                    elif event.state == "done" and row.unpack_started is not None:
                        row.unpack_took = max(0.0, event.time - row.unpack_started)
                    if event.state in ("done", "exists", "failed"):
                        row.finished = event.time
                    if event.state == "exists":
                        row.mode = "cached"
                    self._count_in(row)
            case ev.LayerProgress():
                row = self.layers.get(event.digest)
                if row is not None:
                    self._count_out(row)
                    row.downloaded, row.applied = event.downloaded, event.applied
                    self._count_in(row)
                    _sample(row.samples, event.time, event.downloaded)
                    _sample(self._samples, event.time, self._moved)
            case ev.FetchLogEntry(reason="read"):
                self.last_read_new = event.path not in self.reads
                if self.last_read_new:
                    self.read_first[event.path] = event.time
                self.reads[event.path] = max(self.reads.get(event.path, 0), event.requests, 1)
            case ev.FetchLogEntry():
                self.fetch_count += 1
                self.fetch_bytes += event.length
                row = self.layers.get(event.layer_digest)
                if row is not None:
                    row.fetched += event.length
            case ev.LazyLayerStats():
                row = self.layers.get(event.digest)
                if row is not None:
                    row.lazy = event
            case ev.ObservationSources():
                self.sources = event
            case ev.PullFinished():
                self.finished = event
            case ev.ContainerCreated():
                self.container_id = event.container_id
            case ev.ContainerStarted():
                self.container_id = event.container_id
                self.container_started = event
            case ev.ContainerExited():
                self.exit_code = event.exit_code
            case ev.Error():
                self.error = event
            case ev.Interrupted():
                self.interrupted = event
            case ev.WarningMessage():
                self.warnings.append(event.message)
            case _:
                pass

    def _count_out(self, row: LayerRow) -> None:
        if row.state != "exists":
            self._moved -= row.downloaded
        self._done -= row.size if row.state in ("done", "exists") else row.downloaded

    def _count_in(self, row: LayerRow) -> None:
        if row.state != "exists":
            self._moved += row.downloaded
        self._done += row.size if row.state in ("done", "exists") else row.downloaded

    def bytes_moved(self) -> int:
        """Bytes this run put into the content store (cached layers excluded)."""
        return self._moved

    def bytes_done(self) -> int:
        """Progress towards the image size: cached and finished layers count whole."""
        return self._done

    def is_lazy(self) -> bool:
        """A lazy pull: the snapshotter fetches on demand, so only a fraction of the image is ever moved."""
        return _mode_class(self.mode) == "lazy" or any(r.mode in ("lazy", "snapshotter") for r in self.layers.values())

    def fetched_so_far(self) -> int:
        """Bytes that crossed the network for this image: socirun's downloads plus what the lazy snapshotter
        holds of its lazily mounted layers (SOCI's own figure, which counts from the mount, not from this run)."""
        lazy = 0
        for r in self.layers.values():
            if r.lazy is not None:
                lazy += r.lazy.fetched
            elif r.mode == "lazy":  # an older recording: its progress events are already in _moved
                lazy += r.lazy_fetched - r.downloaded
        return self._moved + lazy

    def lazy_stats(self) -> list[ev.LazyLayerStats]:
        return [r.lazy for r in self.layers.values() if r.lazy is not None]

    def lazy_source(self) -> str:
        """Where the lazy byte figures come from ("metrics", "state file", both), "" before any arrived."""
        return ", ".join(sorted({s.source for s in self.lazy_stats()}))

    def span_counts(self) -> tuple[int, int] | None:
        """(on-demand span fetches, background spans) over the lazy layers, from SOCI's metrics; None when no
        layer's figures came with them (state files carry no counts)."""
        counted = [s for s in self.lazy_stats() if s.on_demand_fetches is not None]
        if not counted:
            return None
        return (sum(s.on_demand_fetches or 0 for s in counted), sum(s.background_spans or 0 for s in counted))

    def read_totals(self) -> tuple[int, int]:
        """(files read, FUSE read requests) through the lazy mounts, from SOCI's log."""
        return len(self.reads), sum(self.reads.values())

    def mode_badge(self) -> str:
        """LAZY / PARALLEL / STANDARD, from the plan; empty before the plan is made."""
        return _mode_class(self.mode).upper() if self.mode else ""

    def phase(self) -> str:
        """resolving → pulling → starting → running → exited (or failed, or interrupted)."""
        if self.error is not None:
            return "failed"
        if self.interrupted is not None:
            return "interrupted"
        if self.exit_code is not None:
            return "exited"
        if self.container_started is not None:
            return "running"
        if self.finished is not None or self.container_id:
            return "starting" if self.container_id else "pulled"
        if self.layers or self.total_size:
            return "pulling"
        return "resolving"

    def fraction(self) -> float:
        return self.bytes_done() / self.total_size if self.total_size else 0.0

    def rate(self) -> float:
        return _rate(self._samples)

    def download_eta(self) -> float | None:
        rate = self.rate()
        remaining = self.total_size - self.bytes_done()
        if remaining <= 0:
            return 0.0
        return remaining / rate if rate > 0 else None

    def eta(self, now: float | None = None) -> float | None:
        """Seconds until the image is pulled: the downloads, then the unpacking they leave (see
        `unpack_ahead`). Layers already downloaded unpack while the others download, so only the later ones'
        unpacking adds to the download ETA. None when either part is unknown: no rate yet, or unpacking left
        and no layer of this pull applied yet to measure it by (a guess would be the `eta 0.0s` of issue 13)."""
        download = self.download_eta()
        overlapping = self.unpack_ahead(now, downloaded=True)
        after = self.unpack_ahead(now, downloaded=False)
        if download is None or overlapping is None or after is None:
            return None
        return max(download, overlapping) + after

    def unpack_rate(self) -> float | None:
        """Compressed bytes per second that Diff.Apply took for the layers this pull applied; None before one."""
        applied = [r for r in self.layers.values() if r.unpack_took is not None]
        if not applied:
            return None
        took = sum(r.unpack_took or 0.0 for r in applied)
        return sum(r.size for r in applied) / took if took > 0 else float("inf")

    def unpack_ahead(self, now: float | None = None, *, downloaded: bool | None = None) -> float | None:
        """Seconds of unpacking still ahead at this pull's own unpack rate (the layer being unpacked counts
        what is left of its estimate, never below zero): 0.0 when nothing is left, None when something is and
        no rate is known. `downloaded`: only the layers whose download is (True) or is not (False) finished."""
        now = self.now if now is None else max(now, self.now)
        pending = [r for r in self.layers.values() if r.unpack_pending
                   and (downloaded is None or (r.downloaded >= r.size or r.state == "unpacking") == downloaded)]
        if not pending:
            return 0.0
        rate = self.unpack_rate()
        if rate is None:
            return None
        ahead = 0.0
        for r in pending:
            need = r.size / rate
            if r.state == "unpacking" and r.unpack_started is not None:
                need = max(0.0, need - (now - r.unpack_started))
            ahead += need
        return ahead

    def unpacking(self) -> list[LayerRow]:
        """The layers being unpacked now."""
        return [r for r in self.layers.values() if r.state == "unpacking"]

    def unpack_bytes(self) -> tuple[int, int]:
        """(applied, to apply) compressed bytes of the layers socirun unpacks in this pull: the unpacking's
        own progress, beside the download's."""
        rows = [r for r in self.layers.values() if r.mode in UNPACKED_BY_SOCIRUN and r.state != "exists"]
        return sum(r.size for r in rows if r.state == "done"), sum(r.size for r in rows)

    def unpack_text(self, now: float | None = None) -> str:
        """What the faces say about unpacking while a layer is being unpacked, "" otherwise: the applied bytes
        and, per layer, how long it has been unpacking (Diff.Apply reports no progress of its own)."""
        current = self.unpacking()
        if not current:
            return ""
        now = self.now if now is None else max(now, self.now)
        applied, to_apply = self.unpack_bytes()
        layers = ", ".join(f"{r.short} for {human_duration(now - (r.unpack_started or now))}" for r in current)
        return f"unpacked {human_bytes(applied)}/{human_bytes(to_apply)}, unpacking {layers}"

    def eta_text(self, now: float | None = None) -> str:
        """The ETA as the faces print it: "eta 4.2s"; "eta ?" before any rate; while unpacking of unknown length
        is left (no layer applied yet), "eta >3.0s" during the downloads (they alone take that long) and
        nothing once only the unpacking is left (the faces say "unpacking" instead)."""
        eta = self.eta(now)
        if eta is not None:
            return f"eta {human_duration(eta)}"
        download = self.download_eta()
        if download is None:
            return "eta ?"
        return f"eta >{human_duration(download)}" if download > 0 else ""

    def elapsed(self) -> float:
        return self.now - self.started if self.started is not None else 0.0

    def counts(self) -> tuple[int, int]:
        finished = sum(1 for r in self.layers.values() if r.state in ("done", "exists"))
        return finished, len(self.layers)


def _mode_class(mode: str) -> str:
    lowered = mode.lower()
    if "parallel" in lowered:
        return "parallel"
    if "lazy" in lowered or "soci" in lowered:
        return "lazy"
    return "standard"


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
