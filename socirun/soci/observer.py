"""The SOCI observer: what the real soci-snapshotter (v0.16) says about the layers it mounts lazily, turned into
events, with every number taken from SOCI's own sources and nothing estimated.

Sources, each optional (`observation_sources` says which this host has and how to turn on the others):
- the metrics endpoint (`metrics_address`, TCP or unix;
  https://github.com/awslabs/soci-snapshotter/blob/v0.16.1/fs/metrics/common/metrics.go): per layer
  `soci_fs_layer_fetched_size_bytes` / `soci_fs_layer_size_bytes` (compressed bytes held / layer size, labels
  `digest`, `mountpoint`), and `soci_fs_operation_count{layer=<compressed layer digest>}` counters:
  `synchronous_read_remote_registry_fetch_count` (a span fetched because a read needed it),
  `background_span_fetch_count` (a span the background fetcher went through, including spans a read had
  already fetched), `background_span_fetch_failure_count`; `soci_fs_bytes_served` (bytes returned to readers);
  the `background_fetch` duration, observed once when a layer's background fetch is finished; and
  `fuse_mount_failure_count` (label `layer=""`: a layer that could not be mounted lazily and was fetched whole);
- the per-layer state files `<root>/snapshotter/snapshots/<id>/fs/.soci-snapshotter/<digest>.json` (`size`,
  `fetchedSize`, `error`), served by the layer's FUSE mount (reading one fetches nothing): byte counts when
  the metrics are off;
- the daemon's JSON log (its standard output: a file named by SOCIRUN_SOCI_LOG, or journald): with
  `--log-level debug` and `[fuse] log_fuse_operations = true`, a `FUSE operation` line per FUSE request, with
  `operation` and the `path` inside the layer but no layer. Only `file.Read` lines are reads (lookups, opens,
  getxattr are not); there is one per read request (dozens per file), so they are folded per path. The log is
  the daemon's: a read by any container on a SOCI mount appears, not only this run's.

`fetching span` log lines are not used: SOCI logs one per span its background fetcher visits (spans already
fetched by a read, and one past the layer's last span, included), and its `spanId` numbers ~4 MiB spans of the
*uncompressed* layer, not offsets in the blob; the metrics count those spans without either error.

Parsing is pure (`parse_metrics_dump`, `parse_log_line`, `parse_state_file`, `FileReads`); `SociObserver`
polls and follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import re
import shutil
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from socirun import events as ev
from socirun.decide.facts import SociConfig
from socirun.soci import constants as c
from socirun.soci.parallel import SOURCE as PARALLEL_SOURCE
from socirun.soci.parallel import ParallelWatcher

POLL_INTERVAL_S = 0.5
DEBUG_SCAN_BYTES = 256 * 1024  # how much of the log's tail `log_shows_debug` reads
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


# ------------------------------------------------------------------------------------------ metrics


# LayerMetrics' counters (they only grow while SOCI runs).
_COUNTERS = ("on_demand_fetches", "background_spans", "background_failures", "bytes_served", "background_done")


@dataclass
class LayerMetrics:
    """One layer's figures in a metrics dump; `size` is 0 when SOCI has no size gauge for it (not mounted)."""

    digest: str
    size: int = 0
    fetched: int = 0
    mountpoint: str = ""
    on_demand_fetches: int = 0
    background_spans: int = 0
    background_failures: int = 0
    bytes_served: int = 0
    background_done: int = 0  # background_fetch durations observed: one each time the fetcher finished the layer
    background_ms: float = 0.0

    @property
    def complete(self) -> bool:
        """SOCI's background fetcher finished this layer (at some time since the daemon started)."""
        return self.background_done >= 1


@dataclass
class MetricsDump:
    layers: dict[str, LayerMetrics] = field(default_factory=dict)
    fuse_mount_failures: int = 0  # since the daemon started, all images


def _labels(text: str) -> dict[str, str]:
    return {k: v.replace('\\"', '"').replace("\\\\", "\\") for k, v in _LABEL.findall(text or "")}


def parse_metrics_dump(text: str) -> MetricsDump:
    """Per-layer figures and the daemon-wide FUSE mount failure count from a Prometheus text dump."""
    dump = MetricsDump()

    def layer(digest: str) -> LayerMetrics:
        return dump.layers.setdefault(digest, LayerMetrics(digest))

    counters = {
        c.OP_ONDEMAND_FETCH: "on_demand_fetches",
        c.OP_BG_SPAN: "background_spans",
        c.OP_BG_SPAN_FAILURE: "background_failures",
    }
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels, raw = match.group(1), _labels(match.group(2) or ""), match.group(3)
        try:
            value = float(raw)
        except ValueError:
            continue
        op = labels.get("operation_type", "")
        digest = labels.get("layer", "")
        if name in (c.M_LAYER_FETCHED, c.M_LAYER_SIZE) and labels.get("digest"):
            entry = layer(labels["digest"])
            entry.mountpoint = labels.get("mountpoint", entry.mountpoint)
            if name == c.M_LAYER_FETCHED:
                entry.fetched = int(value)
            else:
                entry.size = int(value)
        elif name == c.M_OPERATION_COUNT and op == c.OP_FUSE_MOUNT_FAILURE:
            dump.fuse_mount_failures += int(value)
        elif name == c.M_OPERATION_COUNT and digest and op in counters:
            setattr(layer(digest), counters[op], int(value))
        elif name == c.M_BYTES_SERVED and digest and op == c.OP_BYTES_SERVED:
            layer(digest).bytes_served = int(value)
        elif name == c.M_DURATION_MS + "_count" and op == c.OP_BG_FETCH and digest:
            layer(digest).background_done = int(value)
        elif name == c.M_DURATION_MS + "_sum" and op == c.OP_BG_FETCH and digest:
            layer(digest).background_ms = value
    return dump


def parse_metrics(text: str) -> dict[str, LayerMetrics]:
    return parse_metrics_dump(text).layers


# ------------------------------------------------------------------------------------------ log lines


@dataclass(frozen=True)
class LogEvent:
    kind: str  # fuse_op | span | remote_prepared | local | parallel | defer | fetch_artifact | other
    msg: str
    at: float | None = None  # the line's own time (seconds since the epoch), when it has one
    layer: str = ""
    span_id: int = -1
    path: str = ""
    operation: str = ""
    fields: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_read(self) -> bool:
        """A FUSE read request on a file (not a lookup, open, getxattr, …), with the file's path."""
        return self.kind == "fuse_op" and self.operation == c.FUSE_FILE_READ and bool(self.path)


_KINDS = {
    c.LOG_FETCHING_SPAN: "span",
    c.LOG_FUSE_OPERATION: "fuse_op",
    c.LOG_REMOTE_PREPARED: "remote_prepared",
    c.LOG_LOCAL: "local",
    c.LOG_PARALLEL: "parallel",
    c.LOG_PARALLEL_FALLBACK: "parallel",
    c.LOG_DEFER: "defer",
    c.LOG_FETCH_ARTIFACT: "fetch_artifact",
}


def _time(value: Any) -> float | None:
    """logrus' RFC 3339 time (nanoseconds, `Z`) as epoch seconds."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def parse_log_line(line: str) -> LogEvent | None:
    """One logrus JSON line, or one `journalctl -o json` record (whose MESSAGE holds the logrus JSON)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    if "MESSAGE" in record and "msg" not in record:
        message = record["MESSAGE"]
        if isinstance(message, list):  # journald gives non-UTF-8 messages as byte arrays
            message = bytes(message).decode(errors="replace")
        try:
            inner = json.loads(str(message))
        except ValueError:
            return None
        if not isinstance(inner, dict):
            return None
        record = inner
    msg = str(record.get("msg", ""))
    if not msg:
        return None
    span = record.get("spanId", -1)
    return LogEvent(
        kind=_KINDS.get(msg, "other"), msg=msg, at=_time(record.get("time")),
        layer=str(record.get("layer") or record.get("layerDigest") or record.get("digest") or ""),
        span_id=int(span) if isinstance(span, int | str) and str(span).lstrip("-").isdigit() else -1,
        path=str(record.get("path", "")), operation=str(record.get("operation", "")), fields=record)


@dataclass
class FileReads:
    """`file.Read` lines folded per path: when each path was first read and how many FUSE read requests it got.
    `add` says whether the path is new; `take_updates` hands over the paths whose count changed since."""

    first: dict[str, float] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)
    _changed: set[str] = field(default_factory=set)

    def add(self, path: str, at: float) -> bool:
        new = path not in self.requests
        if new:
            self.first[path] = at
            self.requests[path] = 0
        self.requests[path] += 1
        if not new:
            self._changed.add(path)
        return new

    def take_updates(self) -> list[tuple[str, int]]:
        out = [(p, self.requests[p]) for p in sorted(self._changed)]
        self._changed.clear()
        return out


# ------------------------------------------------------------------------------------------ state files


@dataclass(frozen=True)
class StateFile:
    digest: str
    size: int
    fetched: int
    error: str = ""


def parse_state_file(text: str) -> StateFile | None:
    """One `<digest>.json` state file (https://github.com/awslabs/soci-snapshotter/blob/v0.16.1/fs/layer/node.go,
    `statJSON`): digest, size, fetchedSize, fetchedPercent, and `error` when SOCI reported one."""
    try:
        doc = json.loads(text)
        return StateFile(str(doc["digest"]), int(doc["size"]), int(doc["fetchedSize"]), str(doc.get("error") or ""))
    except (ValueError, KeyError, TypeError):
        return None


def state_root(cfg: SociConfig) -> Path:
    return Path(cfg.root) / "snapshotter" / "snapshots"


def read_state_files(root: str) -> dict[str, StateFile]:
    """digest → state of every lazily mounted layer under SOCI's root (`--root`, SOCI_SNAPSHOTTER_ROOT)."""
    out: dict[str, StateFile] = {}
    pattern = os.path.join(root, "snapshotter", "snapshots", "*", "fs", c.STATE_DIR_NAME, "*.json")
    for path in glob.glob(pattern):
        try:
            with open(path, encoding="utf-8") as f:
                state = parse_state_file(f.read())
        except OSError:
            continue
        if state is not None:
            out[state.digest] = state
    return out


# ------------------------------------------------------------------------------------------ sources


@dataclass(frozen=True)
class Source:
    name: str
    live: bool
    detail: str
    enable: str = ""  # how to turn it on, when it is not live
    lost: str = ""  # what is not shown while it is off


def journal_available() -> bool:
    return shutil.which("journalctl") is not None and os.path.isdir("/run/systemd/system")


def log_shows_debug(path: str, scan: int = DEBUG_SCAN_BYTES) -> bool | None:
    """Whether the tail of SOCI's log file has debug lines (the daemon runs with --log-level debug); None when
    the file is missing or empty, so nothing can be told from it."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            if size == 0:
                return None
            f.seek(max(0, size - scan))
            tail = f.read()
    except OSError:
        return None
    return b'"level":"debug"' in tail


def _metrics_source(cfg: SociConfig) -> Source:
    lost = "span fetch counts (on demand, background) are not shown and bytes fetched come from the state files"
    if cfg.metrics_enabled:
        return Source("metrics", True, f"{cfg.metrics_network} {cfg.metrics_address}")
    if cfg.metrics_address and cfg.no_prometheus:
        return Source("metrics", False, f"no_prometheus = true in {cfg.source} turns SOCI's metrics off",
                      "remove no_prometheus from SOCI's config.toml, then restart soci-snapshotter-grpc", lost)
    return Source("metrics", False, f"metrics_address is not set ({cfg.source}); SOCI's metrics are off by default",
                  'set metrics_address = "127.0.0.1:9400" (or a socket path with metrics_network = "unix") in '
                  "SOCI's config.toml, then restart soci-snapshotter-grpc", lost)


def _state_source(cfg: SociConfig) -> Source:
    root = str(state_root(cfg))
    lost = "" if cfg.metrics_enabled else "bytes fetched per layer are not shown"
    if os.path.isdir(root) and os.access(root, os.R_OK | os.X_OK):
        return Source("state files", True, root)
    if os.path.isdir(root):
        return Source("state files", False, f"cannot read {root}", "run socirun as root (SOCI's files are root's)",
                      lost)
    if os.path.isdir(cfg.root):
        return Source("state files", False, f"{root} does not exist yet",
                      "it appears when SOCI mounts its first layer lazily", lost)
    return Source("state files", False, f"{cfg.root} does not exist",
                  "set SOCI_SNAPSHOTTER_ROOT to soci-snapshotter-grpc's --root (default "
                  "/var/lib/soci-snapshotter-grpc)", lost)


def _log_source(soci_log: str | None) -> Source:
    lost = "the files containers read are not shown"
    if soci_log:
        if os.path.exists(soci_log):
            return Source("log", True, f"file {soci_log}")
        return Source("log", False, f"{soci_log} does not exist",
                      "SOCIRUN_SOCI_LOG (or --soci-log) must name the file soci-snapshotter-grpc's standard output "
                      "is written to", lost)
    if journal_available():
        return Source("log", True, f"journalctl -u {c.SYSTEMD_UNIT} -o json (the daemon's standard output)")
    return Source("log", False, "soci-snapshotter-grpc logs to its standard output, and this host has no journald",
                  "redirect its standard output to a file and set SOCIRUN_SOCI_LOG (or --soci-log) to that file",
                  lost)


def _detail_source(cfg: SociConfig, soci_log: str | None) -> Source:
    lost = "the files containers read are not shown"
    debug = log_shows_debug(soci_log) if soci_log else None
    off: list[str] = []
    wants: list[str] = []
    if not cfg.log_fuse_operations:
        off.append(f"[fuse] log_fuse_operations is off ({cfg.source})")
        wants.append("set [fuse] log_fuse_operations = true in SOCI's config.toml")
    if debug is False:
        off.append("the log has no debug lines")
        wants.append("add --log-level debug to soci-snapshotter-grpc's command line")
    if wants:
        how = " and ".join(wants) + ", then restart soci-snapshotter-grpc"
        if journal_available() and not soci_log:
            how += f" (systemctl edit {c.SYSTEMD_UNIT} changes its ExecStart)"
        return Source("log detail", False, "SOCI logs file reads only with [fuse] log_fuse_operations = true and "
                      f"--log-level debug; {' and '.join(off)}", how, lost)
    if debug is None:
        return Source("log detail", True, "[fuse] log_fuse_operations is on; file reads also need "
                                          "soci-snapshotter-grpc --log-level debug (not in its config file)")
    return Source("log detail", True, "[fuse] log_fuse_operations is on and the log has debug lines")


def observation_sources(cfg: SociConfig, soci_log: str | None = None) -> list[Source]:
    """Which of SOCI's observation sources this host has, and how to turn on the others."""
    return [_metrics_source(cfg), _state_source(cfg), _log_source(soci_log), _detail_source(cfg, soci_log)]


def sources_event(sources: list[Source], metrics_problem: str = "") -> ev.ObservationSources:
    """What the faces show: the sources in use, and one sentence per missing one that matters."""
    live: list[str] = []
    missing: list[str] = []
    by_name = {s.name: s for s in sources}
    for source in sources:
        if source.name == "metrics" and source.live and metrics_problem:
            missing.append("span fetch counts (on demand, background) are not shown and bytes fetched come from the "
                           f"state files: SOCI's metrics at {source.detail} do not answer ({metrics_problem}); "
                           "to turn it on: check that soci-snapshotter-grpc runs with this metrics_address")
        elif source.live:
            live.append(f"{source.name}: {source.detail}")
        elif source.lost and not (source.name == "log detail" and not by_name["log"].live):
            missing.append(f"{source.lost}: {source.detail}; to turn it on: {source.enable}")
    return ev.ObservationSources(live=tuple(live), missing=tuple(missing))


# ------------------------------------------------------------------------------------------ I/O


async def fetch_metrics(address: str, network: str, timeout: float = 2.0) -> str:
    if network == "unix":
        connector: aiohttp.BaseConnector = aiohttp.UnixConnector(path=address)
        url = "http://soci/metrics"
    else:
        connector = aiohttp.TCPConnector()
        url = f"http://{address}/metrics"
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as s, \
            s.get(url) as resp:
        resp.raise_for_status()
        return await resp.text()


class FileFollower:
    """Lines appended to a file since `start` (like tail -f), read without blocking on a missing file."""

    def __init__(self, path: str, *, from_start: bool = False) -> None:
        self.path = path
        self.from_start = from_start
        self._file: TextIO | None = None
        self._pending = ""
        self.start()

    def start(self) -> None:
        """Open the file and remember where it ends now (or its start), so later lines are all seen."""
        if self._file is not None:
            return
        try:
            self._file = open(self.path, encoding="utf-8", errors="replace")  # noqa: SIM115 - held while following
        except OSError:
            return
        if not self.from_start:
            self._file.seek(0, os.SEEK_END)

    def read_lines(self) -> list[str]:
        self.start()
        if self._file is None:
            return []
        chunk = self._file.read()
        if not chunk:
            return []
        *lines, self._pending = (self._pending + chunk).split("\n")
        return lines

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


async def follow_journal(stop: asyncio.Event) -> AsyncIterator[str]:
    proc = await asyncio.create_subprocess_exec(
        "journalctl", "-u", c.SYSTEMD_UNIT, "-o", "json", "-f", "-n", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    assert proc.stdout is not None
    try:
        while not stop.is_set():
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), timeout=POLL_INTERVAL_S)
            except TimeoutError:
                continue
            if not line:
                return
            yield line.decode(errors="replace")
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        await proc.wait()


# ------------------------------------------------------------------------------------------ the observer


def _stats_key(stats: ev.LazyLayerStats) -> tuple[Any, ...]:
    return (stats.fetched, stats.size, stats.source, stats.on_demand_fetches, stats.background_spans,
            stats.background_failures, stats.bytes_served, stats.complete, stats.error)


class SociObserver:
    """Polls the metrics (else the state files) for the layers in `layers` and follows the log: emits
    LazyLayerStats when a layer's figures change, a FetchLogEntry "read" when a path is first read and as its
    read-request count grows, ObservationSources once something is watched and whenever a source changes, and a
    WarningMessage when SOCI's FUSE mount failure count rises during the pull (`watch_mount_failures`).

    `cfg` may be a function, called once a layer is watched, so that a run whose image is already present does
    not gather SOCI's config for nothing."""

    def __init__(self, cfg: SociConfig | Callable[[], SociConfig], emit: ev.Emit, *, soci_log: str | None = None,
                 use_journal: bool | None = None, layers: frozenset[str] | None = None,
                 log_from_start: bool = False) -> None:
        self._cfg_source = cfg
        self._cfg: SociConfig | None = cfg if isinstance(cfg, SociConfig) else None
        self.emit = emit
        self.soci_log = soci_log
        self.use_journal = journal_available() if use_journal is None else use_journal
        self.layers = layers  # only these digests (None: all)
        self.stop = asyncio.Event()
        self.fetched: dict[str, int] = {}
        self.complete: set[str] = set()
        self.reads = FileReads()
        self.watch_mount_failures = False
        self._mount_failures: int | None = None  # the count when watching began
        # SOCI's counters are per layer digest since the daemon started (a layer mounted before, by an earlier
        # image, keeps its counts): what they were when the plan was made is subtracted.
        self._base: dict[str, LayerMetrics] = {}
        # A restarted SOCI counts from 0 again (a counter reset, as Prometheus calls it): per layer, the last
        # figures seen, and what this pull had counted before each reset.
        self._last: dict[str, LayerMetrics] = {}
        self._carried: dict[tuple[str, str], int] = {}
        self._wake = asyncio.Event()
        self._stats: dict[str, tuple[Any, ...]] = {}
        self._sources: ev.ObservationSources | None = None
        self._source_list: list[Source] | None = None  # looked at once: it reads the log's tail
        self._metrics_problem = ""
        self._follower = FileFollower(soci_log, from_start=log_from_start) if soci_log else None
        # SOCI's own parallel pull (socirun.soci.parallel): set when the plan says SOCI downloads every layer.
        self.parallel: ParallelWatcher | None = None

    @property
    def cfg(self) -> SociConfig:
        if self._cfg is None:
            assert not isinstance(self._cfg_source, SociConfig)
            self._cfg = self._cfg_source()
        return self._cfg

    def _wanted(self, digest: str) -> bool:
        return bool(digest) and (self.layers is None or digest in self.layers)

    def _idle(self) -> bool:
        """Watching an empty set of layers (nothing lazy yet, no parallel download): touch no source."""
        return self.layers is not None and not self.layers and not (self.parallel and self.parallel.sizes)

    def follow_parallel_pull(self) -> None:
        """The plan says SOCI downloads and unpacks every layer itself (its parallel mode): follow its download
        files and log lines for the layers `LayerPlanned` names (see socirun.soci.parallel)."""
        self.parallel = ParallelWatcher(self.emit, self.cfg.root)
        live = [PARALLEL_SOURCE.format(root=self.cfg.root.rstrip("/"))]
        missing = []
        if self._follower is not None or self.use_journal:
            live.append("log: when SOCI starts, finishes and unpacks each download")
        else:
            missing.append("when SOCI starts and finishes each download is not shown: SOCI's log is not "
                           "followed; to turn it on: set SOCIRUN_SOCI_LOG to the file soci-snapshotter-grpc "
                           "logs to (or run it under systemd)")
        self.emit(ev.ObservationSources(live=tuple(live), missing=tuple(missing)))

    # -- what comes in -------------------------------------------------------------------------------------

    def on_stats(self, stats: ev.LazyLayerStats) -> None:
        if not self._wanted(stats.digest) or stats.size <= 0:
            return
        key = _stats_key(stats)
        if self._stats.get(stats.digest) == key:
            return
        self._stats[stats.digest] = key
        self.fetched[stats.digest] = stats.fetched
        if stats.complete:
            self.complete.add(stats.digest)
        self.emit(stats)

    def on_metrics(self, dump: MetricsDump) -> None:
        for m in dump.layers.values():
            n = self._counted(m)
            self.on_stats(ev.LazyLayerStats(
                digest=m.digest, fetched=m.fetched, size=m.size, source="metrics",
                on_demand_fetches=n["on_demand_fetches"], background_spans=n["background_spans"],
                background_failures=n["background_failures"], bytes_served=n["bytes_served"],
                complete=n["background_done"] > 0 or (m.size > 0 and m.fetched >= m.size)))
        self.on_mount_failures(dump.fuse_mount_failures)

    def _counted(self, m: LayerMetrics) -> dict[str, int]:
        """This pull's share of each of the layer's SOCI counters: now less the baseline. A counter below its last
        figure means SOCI restarted and counts from 0 again: what was counted up to then is carried over, and
        the baseline no longer applies."""
        base = self._base.get(m.digest, LayerMetrics(m.digest))
        last = self._last.get(m.digest)
        counted: dict[str, int] = {}
        for name in _COUNTERS:
            now, start = getattr(m, name), getattr(base, name)
            if last is not None and now < getattr(last, name):
                key = (m.digest, name)
                self._carried[key] = self._carried.get(key, 0) + getattr(last, name) - start
                base = replace(base)  # a copy: the baseline dump's own record stays as it was
                setattr(base, name, 0)
                start = 0
            counted[name] = self._carried.get((m.digest, name), 0) + now - start
        self._base[m.digest] = base
        self._last[m.digest] = m
        return counted

    def on_baseline(self, dump: MetricsDump) -> None:
        """SOCI's counters before this pull prepared anything (see `_base`)."""
        self._base = dict(dump.layers)
        self.on_mount_failures(dump.fuse_mount_failures)

    def wake(self) -> None:
        """Poll now rather than at the next tick (the plan is made, or a first layer is lazy)."""
        self._wake.set()

    def on_state_files(self, states: Mapping[str, StateFile]) -> None:
        for s in states.values():
            self.on_stats(ev.LazyLayerStats(digest=s.digest, fetched=s.fetched, size=s.size, source="state file",
                                            complete=s.size > 0 and s.fetched >= s.size, error=s.error))

    def on_mount_failures(self, count: int) -> None:
        if not self.watch_mount_failures:
            return
        if self._mount_failures is None:
            self._mount_failures = count
            return
        if count > self._mount_failures:
            rose = count - self._mount_failures
            self._mount_failures = count
            self.emit(ev.WarningMessage(message=(
                f"SOCI could not mount {rose} layer(s) lazily while this pull ran (its fuse_mount_failure_count "
                "went up) and fetched them whole instead; its log says why (\"failed to prepare remote "
                "snapshot\")")))

    def on_log(self, line: str) -> None:
        if self.parallel is None and c.FUSE_FILE_READ not in line:
            # Only read requests matter here, and they are a quarter of the lines SOCI logs while a program
            # starts (lookups, opens and getxattrs are the rest): skip the JSON parse of the others.
            return
        event = parse_log_line(line)
        if event is not None and self.parallel is not None:
            self.parallel.on_log(event.msg, event.fields)
        if event is None or not event.is_read:
            return
        at = event.at if event.at is not None else time.time()
        path = "/" + event.path.lstrip("/")
        if self.reads.add(path, at):
            self.emit(ev.FetchLogEntry(reason="read", path=path, requests=1, time=at))

    def flush_reads(self) -> None:
        """Emit the new read-request counts of paths already reported (called each poll and at the end)."""
        for path, count in self.reads.take_updates():
            self.emit(ev.FetchLogEntry(reason="read", path=path, requests=count))

    def drain_log(self) -> None:
        """Read what the log file has now and report it (synchronous: a container's exit is reported after its
        reads)."""
        if self._follower is not None and not self._idle():
            for line in self._follower.read_lines():
                self.on_log(line)
        self.flush_reads()

    def report_sources(self) -> None:
        if self._source_list is None:
            self._source_list = observation_sources(self.cfg, self.soci_log)
        event = sources_event(self._source_list, self._metrics_problem)
        if self._sources is None or (event.live, event.missing) != (self._sources.live, self._sources.missing):
            self._sources = event
            self.emit(event)

    # -- polling -------------------------------------------------------------------------------------------

    async def _read_metrics(self) -> MetricsDump | None:
        if not self.cfg.metrics_enabled:
            return None
        try:
            text = await fetch_metrics(self.cfg.metrics_address, self.cfg.metrics_network)
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            self._metrics_problem = str(err) or type(err).__name__
            return None
        self._metrics_problem = ""
        return parse_metrics_dump(text)

    async def poll_once(self) -> None:
        if self.parallel is not None:
            await asyncio.to_thread(self.parallel.poll)
            if not self.layers:
                return
        dump = await self._read_metrics()
        self.report_sources()  # first: the figures that follow say where they come from
        if dump is not None:
            self.on_metrics(dump)
        else:
            self.on_state_files(await asyncio.to_thread(read_state_files, self.cfg.root))

    async def _baseline(self) -> None:
        """SOCI's counters and FUSE mount failure count before any layer is prepared (both are the daemon's,
        since it started). Taken as soon as the plan is made: a layer's Prepare takes SOCI longer (it fetches the
        index and the zTOC) than one loopback GET, but a failure in the first few milliseconds would be missed."""
        if self._mount_failures is None and self.cfg.metrics_enabled:
            dump = await self._read_metrics()
            if dump is not None:
                self.on_baseline(dump)

    async def _poll(self) -> None:
        while not self.stop.is_set():
            if not self._idle():
                await self.poll_once()
                self.flush_reads()
            elif self.watch_mount_failures:
                await self._baseline()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_INTERVAL_S)
            self._wake.clear()

    async def _follow(self) -> None:
        if self._follower is not None:
            while not self.stop.is_set():
                self.drain_log()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), 0.1)
            return
        while self._idle() and not self.stop.is_set():
            await asyncio.sleep(0.1)
        if self.stop.is_set() or not self.use_journal:
            return
        async for line in follow_journal(self.stop):
            self.on_log(line)

    async def finish(self) -> None:
        """The last word, after `stop`: what the log and SOCI's figures say now, so a short run's reads and
        fetches are all reported."""
        self.drain_log()
        if not self._idle():
            await self.poll_once()
        elif self.watch_mount_failures and self._mount_failures is not None:
            dump = await self._read_metrics()
            if dump is not None:
                self.on_mount_failures(dump.fuse_mount_failures)
        if self._follower is not None:
            self._follower.close()

    def all_complete(self) -> bool:
        return self.layers is not None and bool(self.layers) and self.layers <= self.complete

    async def run(self) -> None:
        await asyncio.gather(self._poll(), self._follow())
        await self.finish()

    async def close(self) -> None:
        self.stop.set()
        self._wake.set()


@contextlib.asynccontextmanager
async def observing(observer: SociObserver) -> AsyncIterator[SociObserver]:
    task = asyncio.create_task(observer.run())
    try:
        yield observer
    finally:
        await observer.close()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(task, 5)


@contextlib.asynccontextmanager
async def observe_lazy_layers(emit: ev.Emit, cfg: SociConfig | Callable[[], SociConfig],
                              soci_log: str | None) -> AsyncIterator[ev.Emit]:
    """Wrap `emit` for a pull or run: every layer the engine reports as lazily mounted (LayerClassified lazy) is
    then followed through SOCI's metrics / state files / log (`soci_log`; None: journald), until the block
    ends; a plan for the soci snapshotter also watches SOCI's FUSE mount failures, and a plan for SOCI's
    parallel pull follows its downloads (socirun.soci.parallel). Yields the emit to hand the
    engine. `cfg` may be a function (see SociObserver)."""
    observer = SociObserver(cfg, emit, soci_log=soci_log, layers=frozenset())

    def tap(event: ev.Event) -> None:
        if isinstance(event, ev.PlanMade) and event.snapshotter == "soci":
            observer.watch_mount_failures = True
            if event.mode == "parallel":
                emit(event)
                observer.follow_parallel_pull()
                return
            observer.wake()
        elif isinstance(event, ev.LayerPlanned) and event.mode == "parallel" and observer.parallel is not None:
            observer.parallel.sizes[event.digest] = event.size
            emit(event)
            observer.wake()
            return
        elif isinstance(event, ev.LayerClassified) and observer.parallel is not None:
            # SOCI's Prepare answered: the engine reports the layer done; later log lines must not step back.
            observer.parallel.sizes.pop(event.digest, None)
        elif isinstance(event, ev.LayerClassified) and event.mode == "lazy":
            first = not observer.layers
            observer.layers = (observer.layers or frozenset()) | {event.digest}
            emit(event)
            if first:  # before any figure or read: where they will come from, and what will be missing
                observer.report_sources()
                observer.wake()
            return
        elif isinstance(event, ev.ContainerExited):
            observer.drain_log()  # the container's reads come before its exit
        emit(event)

    async with observing(observer):
        yield tap
