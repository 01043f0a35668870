"""The typed event stream: the only contract between the engine and what the user sees.

The engine emits these frozen dataclasses; every renderer (plain, json, tui) consumes the same stream, so what
each face shows cannot drift apart. `to_record` / `from_record` give the versioned JSON form used by
`--progress=json` and by recorded streams that are replayed into any renderer.

Adding a field is compatible; renaming or removing one bumps SCHEMA.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

SCHEMA = 1

LayerStateName = Literal["waiting", "downloading", "downloaded", "unpacking", "done", "exists", "failed"]
# Per-layer expectation of how its bytes reach the host.
LayerMode = Literal["standard", "parallel", "lazy", "snapshotter", "cached"]


def _now() -> float:
    return time.time()


@dataclass(frozen=True)
class Event:
    """Base of every event; `time` is wall-clock seconds since the epoch when it was made."""

    type_name: ClassVar[str] = "event"
    time: float = field(default_factory=_now, kw_only=True)


@dataclass(frozen=True)
class Resolving(Event):
    """socirun started resolving `reference` (after alias expansion) with the registry."""

    type_name: ClassVar[str] = "resolving"
    reference: str
    expanded_from: str | None = None


@dataclass(frozen=True)
class ImageResolved(Event):
    """The reference resolved to a platform manifest; sizes are compressed bytes."""

    type_name: ClassVar[str] = "image_resolved"
    reference: str
    digest: str  # what the reference points at (index or manifest)
    manifest_digest: str
    platform: str
    layer_count: int
    total_size: int


@dataclass(frozen=True)
class PlanMade(Event):
    """Which mode and snapshotter will be used, and why, in plain sentences."""

    type_name: ClassVar[str] = "plan_made"
    mode: str
    snapshotter: str
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class LayerPlanned(Event):
    """One row of the layer table, announced before any transfer starts."""

    type_name: ClassVar[str] = "layer_planned"
    index: int
    digest: str
    media_type: str
    size: int
    mode: LayerMode


@dataclass(frozen=True)
class LayerStateChanged(Event):
    type_name: ClassVar[str] = "layer_state"
    digest: str
    state: LayerStateName
    detail: str = ""


@dataclass(frozen=True)
class LayerClassified(Event):
    """What the snapshotter actually did with a layer, once known (from its committed snapshot's labels, or
    because it deferred the layer to socirun): may differ from the LayerPlanned expectation."""

    type_name: ClassVar[str] = "layer_classified"
    digest: str
    mode: LayerMode
    detail: str = ""


@dataclass(frozen=True)
class LayerProgress(Event):
    """Bytes of the compressed blob in the content store (`downloaded`) and already unpacked (`applied`)."""

    type_name: ClassVar[str] = "layer_progress"
    digest: str
    downloaded: int
    total: int
    applied: int = 0


@dataclass(frozen=True, kw_only=True)
class FetchLogEntry(Event):
    """A line of the lazy-loading log.

    `reason` "read": a container read `path` through a lazily mounted layer (SOCI's `FUSE operation` log lines
    with operation `file.Read`; one line per FUSE read request, folded per path). SOCI does not say which layer
    served the read, nor whether the read needed a fetch, so `layer_digest` is "" and `offset` / `length` are 0;
    `requests` counts the FUSE read requests seen for `path` so far. The first entry for a path is the moment it
    was first read (the log line's own time); a later entry for the same path only updates `requests`.

    Other reasons ("on-demand", "background", "prefetch", with `layer_digest`, `offset`, `length` in compressed
    bytes) are only found in recordings made before socirun followed the real soci-snapshotter; nothing emits
    them now (SOCI logs no per-fetch byte ranges: its fetch counts are LazyLayerStats)."""

    type_name: ClassVar[str] = "fetch_log"
    layer_digest: str = ""
    offset: int = 0
    length: int = 0
    reason: str  # "read" (older recordings: "on-demand" | "background" | "prefetch")
    path: str = ""
    requests: int = 0  # reason "read": FUSE read requests for `path` seen so far


@dataclass(frozen=True)
class LazyLayerStats(Event):
    """SOCI's own figures for one lazily mounted layer, as last read from `source`; every field is SOCI's number,
    none is estimated. Emitted when one of them changes.

    `fetched` / `size`: compressed bytes of the layer SOCI holds so far, and the layer's compressed size
    (metrics `soci_fs_layer_fetched_size_bytes` / `soci_fs_layer_size_bytes`, or the layer's state file
    `fetchedSize` / `size`). The counters need the metrics (None when `source` is "state file"):
    `on_demand_fetches` spans fetched because a read needed them (`synchronous_read_remote_registry_fetch_count`);
    `background_spans` spans SOCI's background fetcher has been through (`background_span_fetch_count`; it also
    counts spans an earlier read had already fetched) and `background_failures` those it failed to fetch;
    `bytes_served` uncompressed bytes SOCI returned to readers (`synchronous_bytes_served`). SOCI keeps these
    counters per layer digest from its start; they count from when this pull's plan was made (the observer
    subtracts what they were then; when it could not read them then, from SOCI's start).
    `complete`: SOCI holds the whole layer (its background fetch finished, or fetched == size)."""

    type_name: ClassVar[str] = "lazy_layer_stats"
    digest: str
    fetched: int
    size: int
    source: str  # "metrics" | "state file"
    on_demand_fetches: int | None = None
    background_spans: int | None = None
    background_failures: int | None = None
    bytes_served: int | None = None
    complete: bool = False
    error: str = ""  # the state file's `error` (a failed read or fetch SOCI reported for this layer)


@dataclass(frozen=True)
class ObservationSources(Event):
    """Which of SOCI's sources the fetch log is built from, said once a layer is mounted lazily and again when
    that changes: `live` names each source in use; `missing` says, per source that is not, what is lost and how
    to turn it on (sentences)."""

    type_name: ClassVar[str] = "observation_sources"
    live: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()


@dataclass(frozen=True)
class PullFinished(Event):
    """The image is in containerd, unpacked for `snapshotter`. `fetched` counts bytes moved in this run."""

    type_name: ClassVar[str] = "pull_finished"
    reference: str
    manifest_digest: str
    snapshotter: str
    mode: str
    fetched: int
    total_size: int
    elapsed: float


@dataclass(frozen=True)
class ContainerCreated(Event):
    type_name: ClassVar[str] = "container_created"
    container_id: str
    name: str = ""


@dataclass(frozen=True)
class ContainerStarted(Event):
    type_name: ClassVar[str] = "container_started"
    container_id: str
    pid: int
    since_command_start: float = 0.0


@dataclass(frozen=True)
class ContainerExited(Event):
    type_name: ClassVar[str] = "container_exited"
    container_id: str
    exit_code: int


@dataclass(frozen=True)
class ContainerStats(Event):
    """A running container's CPU and memory, from containerd's task metrics (its cgroup), as `docker stats` shows
    them: `cpu_percent` over the interval since the previous sample (100 = one CPU busy; None for the first
    sample), `memory` in use less the inactive page cache, `memory_limit` (0: none known), `pids` in the cgroup."""

    type_name: ClassVar[str] = "container_stats"
    container_id: str
    cpu_percent: float | None
    memory: int
    memory_limit: int = 0
    pids: int = 0


@dataclass(frozen=True)
class ContainerLogLine(Event):
    """One line the container wrote (`stream` stdout or stderr), read from its log file, without the newline."""

    type_name: ClassVar[str] = "container_log_line"
    container_id: str
    stream: str
    line: str


@dataclass(frozen=True)
class ContainerReady(Event):
    """The readiness probe (`--ready-url` / `--ready-port`) answered: `after` seconds since the container started;
    `fetched`: compressed bytes the lazy snapshotter held of the image's lazily loaded layers by then (SOCI's own
    figures), None when no layer is loaded lazily."""

    type_name: ClassVar[str] = "container_ready"
    container_id: str
    probe: str  # what answered, e.g. "GET http://10.4.0.5:8080/health" or "tcp 10.4.0.5:8080"
    after: float
    fetched: int | None = None


@dataclass(frozen=True)
class ReadyWaiting(Event):
    """The readiness probe started: `probe` is what is tried, `timeout` the --ready-timeout (None: no limit)."""

    type_name: ClassVar[str] = "ready_waiting"
    container_id: str
    probe: str
    timeout: float | None = None


@dataclass(frozen=True)
class WarningMessage(Event):
    type_name: ClassVar[str] = "warning"
    message: str


@dataclass(frozen=True)
class Error(Event):
    type_name: ClassVar[str] = "error"
    message: str
    exit_code: int


@dataclass(frozen=True)
class Interrupted(Event):
    """The user stopped the work (Ctrl-C, or q in the TUI) and what was in flight was rolled back: the last event
    of such a stream, as `error` is of a failed one, so a recording says how it ended (replay exits 130)."""

    type_name: ClassVar[str] = "interrupted"
    message: str
    exit_code: int = 130


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type_name: cls
    for cls in (
        Resolving,
        ImageResolved,
        PlanMade,
        LayerPlanned,
        LayerStateChanged,
        LayerClassified,
        LayerProgress,
        FetchLogEntry,
        LazyLayerStats,
        ObservationSources,
        PullFinished,
        ContainerCreated,
        ContainerStarted,
        ContainerExited,
        ContainerStats,
        ContainerLogLine,
        ContainerReady,
        ReadyWaiting,
        WarningMessage,
        Error,
        Interrupted,
    )
}

Emit = Callable[[Event], None]
# What a command does, as a function of where its events go: any face can run it (plain under asyncio.run,
# the TUI in its own loop) and receives what it emits.
Work = Callable[[Emit], Awaitable[int]]


def to_record(event: Event) -> dict[str, Any]:
    """The JSON-lines form: schema, type and time first, then the event's own fields."""
    record: dict[str, Any] = {"schema": SCHEMA, "type": event.type_name, "time": round(event.time, 6)}
    for f in dataclasses.fields(event):
        if f.name == "time":
            continue
        value = getattr(event, f.name)
        record[f.name] = list(value) if isinstance(value, tuple) else value
    return record


def from_record(record: dict[str, Any]) -> Event:
    """Inverse of `to_record`; unknown fields (from a newer minor version) are ignored."""
    if record.get("schema") != SCHEMA:
        raise ValueError(f"unsupported event schema {record.get('schema')!r} (this socirun reads {SCHEMA})")
    cls = EVENT_TYPES[record["type"]]
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in record:
            value = record[f.name]
            kwargs[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)
