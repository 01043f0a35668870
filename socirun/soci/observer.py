"""The SOCI observer: turns what the snapshotter exposes into fetch-log and progress events
(https://github.com/awslabs/soci-snapshotter/blob/v0.15.0/fs/metrics/common/metrics.go).

Three sources, each optional:
- the metrics endpoint (`metrics_address`, TCP or unix): per-layer `soci_fs_layer_fetched_size_bytes` /
  `soci_fs_layer_size_bytes` (byte progress), `synchronous_read_remote_registry_fetch_count` (on-demand span
  fetches), `background_span_fetch_count`, and the one `background_fetch` duration observation that means
  "layer complete";
- the per-layer state files `<root>/snapshotter/snapshots/<n>/fs/.soci-snapshotter/<digest>.json`;
- the JSON log lines (`journalctl -u soci-snapshotter -o json -f`, or a file): `fetching span` (layer,
  spanId), `FUSE operation` (operation, path; needs debug level and `[fuse] log_fuse_operations`), and the
  prepare / defer / parallel lines.

Parsing is pure (`parse_metrics`, `parse_log_line`, `read_state_files`); `SociObserver` polls and follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import re
import shutil
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from socirun import events as ev
from socirun.decide.facts import SociConfig
from socirun.soci import constants as c

POLL_INTERVAL_S = 0.5
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass
class LayerMetrics:
    digest: str
    size: int = 0
    fetched: int = 0
    mountpoint: str = ""
    on_demand_fetches: int = 0
    background_spans: int = 0
    complete: bool = False  # the background_fetch duration was observed
    background_ms: float = 0.0


def _labels(text: str) -> dict[str, str]:
    return {k: v.replace('\\"', '"').replace("\\\\", "\\") for k, v in _LABEL.findall(text or "")}


def parse_metrics(text: str) -> dict[str, LayerMetrics]:
    """Per-layer figures from a Prometheus text dump of SOCI's metrics endpoint."""
    layers: dict[str, LayerMetrics] = {}

    def layer(digest: str) -> LayerMetrics:
        return layers.setdefault(digest, LayerMetrics(digest))

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
        if name in (c.M_LAYER_FETCHED, c.M_LAYER_SIZE) and labels.get("digest"):
            entry = layer(labels["digest"])
            entry.mountpoint = labels.get("mountpoint", entry.mountpoint)
            if name == c.M_LAYER_FETCHED:
                entry.fetched = int(value)
            else:
                entry.size = int(value)
        elif name == c.M_OPERATION_COUNT and labels.get("layer"):
            op = labels.get("operation_type")
            if op == c.OP_ONDEMAND_FETCH:
                layer(labels["layer"]).on_demand_fetches = int(value)
            elif op == c.OP_BG_SPAN:
                layer(labels["layer"]).background_spans = int(value)
        elif (name == c.M_DURATION_MS + "_count" and labels.get("operation_type") == c.OP_BG_FETCH
              and labels.get("layer") and value >= 1):
            layer(labels["layer"]).complete = True
        elif (name == c.M_DURATION_MS + "_sum" and labels.get("operation_type") == c.OP_BG_FETCH
              and labels.get("layer")):
            layer(labels["layer"]).background_ms = value
    return layers


@dataclass(frozen=True)
class LogEvent:
    kind: str  # span | fuse_op | remote_prepared | local | parallel | defer | fetch_artifact | other
    msg: str
    layer: str = ""
    span_id: int = -1
    path: str = ""
    operation: str = ""
    fields: Mapping[str, Any] = field(default_factory=dict)


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
    kind = _KINDS.get(msg, "other")
    layer = str(record.get("layer") or record.get("layerDigest") or record.get("digest") or "")
    span = record.get("spanId", -1)
    return LogEvent(kind=kind, msg=msg, layer=layer, span_id=int(span) if isinstance(span, int | str) and str(
        span).lstrip("-").isdigit() else -1, path=str(record.get("path", "")),
        operation=str(record.get("operation", "")), fields=record)


def read_state_files(root: str) -> dict[str, tuple[int, int]]:
    """digest → (size, fetchedSize) from every lazily mounted layer's state file under SOCI's root."""
    out: dict[str, tuple[int, int]] = {}
    pattern = os.path.join(root, "snapshotter", "snapshots", "*", "fs", c.STATE_DIR_NAME, "*.json")
    for path in glob.glob(pattern):
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
            out[str(doc["digest"])] = (int(doc["size"]), int(doc["fetchedSize"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


# ------------------------------------------------------------------------------------------ sources


@dataclass(frozen=True)
class Source:
    name: str
    live: bool
    detail: str
    enable: str = ""  # how to turn it on, when it is not live


def journal_available() -> bool:
    return shutil.which("journalctl") is not None and os.path.isdir("/run/systemd/system")


def observation_sources(cfg: SociConfig, soci_log: str | None = None) -> list[Source]:
    """Which of SOCI's observation sources this host has, and how to turn on the others."""
    out: list[Source] = []
    if cfg.metrics_enabled:
        out.append(Source("metrics", True, f"{cfg.metrics_network} {cfg.metrics_address}"))
    else:
        out.append(Source("metrics", False, "metrics_address is empty (metrics are off by default)",
                          'set metrics_address = "/var/lib/soci-snapshotter-grpc/metrics.sock" and '
                          'metrics_network = "unix" in SOCI\'s config.toml, then restart soci-snapshotter'))
    state_root = os.path.join(cfg.root, "snapshotter", "snapshots")
    out.append(Source("state files", os.path.isdir(state_root), state_root,
                      "" if os.path.isdir(state_root) else "appear once SOCI mounts a layer lazily (needs root)"))
    if soci_log:
        out.append(Source("log", os.path.exists(soci_log), f"file {soci_log}",
                          "" if os.path.exists(soci_log) else f"{soci_log} does not exist"))
    elif journal_available():
        out.append(Source("log", True, f"journalctl -u {c.SYSTEMD_UNIT} -o json -f"))
    else:
        out.append(Source("log", False, "no journald here", "pass --soci-log FILE with SOCI's log file"))
    detail = "per-span lines need --log-level debug"
    if not cfg.log_fuse_operations:
        detail += "; file paths need [fuse] log_fuse_operations = true"
    out.append(Source("log detail", cfg.log_fuse_operations, detail,
                      "" if cfg.log_fuse_operations else
                      "set [fuse] log_fuse_operations = true and run soci-snapshotter-grpc --log-level debug"))
    return out


# ------------------------------------------------------------------------------------------ the observer


async def fetch_metrics(address: str, network: str, timeout: float = 2.0) -> str:
    if network == "unix":
        connector: aiohttp.BaseConnector = aiohttp.UnixConnector(path=address)
        url = "http://soci/metrics"
    else:
        connector = aiohttp.TCPConnector()
        url = f"http://{address}/metrics"
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as s, \
            s.get(url) as resp:
        return await resp.text()


async def follow_file(path: str, stop: asyncio.Event, *, from_start: bool = False) -> AsyncIterator[str]:
    """Lines appended to `path` (like tail -f), until `stop` is set."""
    while not os.path.exists(path):
        if stop.is_set():
            return
        await asyncio.sleep(POLL_INTERVAL_S)
    with open(path, encoding="utf-8", errors="replace") as f:
        if not from_start:
            f.seek(0, os.SEEK_END)
        pending = ""
        while not stop.is_set():
            chunk = f.read()
            if not chunk:
                await asyncio.sleep(0.1)
                continue
            pending += chunk
            *lines, pending = pending.split("\n")
            for line in lines:
                yield line


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


class SociObserver:
    """Polls metrics and state files and follows the log; emits LayerProgress for lazy layers, a
    FetchLogEntry per span fetched, LayerStateChanged(done) when a layer's background fetch completes."""

    def __init__(self, cfg: SociConfig, emit: ev.Emit, *, soci_log: str | None = None,
                 use_journal: bool | None = None, layers: frozenset[str] | None = None,
                 span_size: int = c.DEFAULT_SPAN_SIZE, log_from_start: bool = False) -> None:
        self.cfg = cfg
        self.emit = emit
        self.soci_log = soci_log
        self.use_journal = journal_available() if use_journal is None else use_journal
        self.layers = layers  # only these digests (None: all)
        self.span_size = span_size
        self.log_from_start = log_from_start  # read a --soci-log file from its beginning, not only new lines
        self.stop = asyncio.Event()
        self.fetched: dict[str, int] = {}
        self.sizes: dict[str, int] = {}
        self.complete: set[str] = set()
        self.spans_logged: dict[str, int] = {}

    def _wanted(self, digest: str) -> bool:
        return bool(digest) and (self.layers is None or digest in self.layers)

    def _progress(self, digest: str, size: int, fetched: int, done: bool) -> None:
        if not self._wanted(digest) or size <= 0:
            return
        before = self.fetched.get(digest, -1)
        self.sizes[digest] = size
        if fetched != before:
            self.fetched[digest] = fetched
            self.emit(ev.LayerProgress(digest=digest, downloaded=fetched, total=size))
        if (done or fetched >= size) and digest not in self.complete:
            self.complete.add(digest)
            self.emit(ev.LayerStateChanged(digest=digest, state="done", detail="SOCI's background fetch completed"))

    def on_log(self, line: str) -> None:
        event = parse_log_line(line)
        if event is None:
            return
        if event.kind == "span" and self._wanted(event.layer):
            self.spans_logged[event.layer] = self.spans_logged.get(event.layer, 0) + 1
            offset = max(0, event.span_id) * self.span_size
            size = self.sizes.get(event.layer)
            length = self.span_size if size is None else max(0, min(self.span_size, size - offset))
            self.emit(ev.FetchLogEntry(layer_digest=event.layer, offset=offset, length=length, reason="background"))
        elif event.kind == "fuse_op" and event.path:
            self.emit(ev.FetchLogEntry(layer_digest="", offset=0, length=0, reason="on-demand",
                                       path=f"/{event.path}"))

    async def poll_once(self) -> None:
        if self.cfg.metrics_enabled:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                text = await fetch_metrics(self.cfg.metrics_address, self.cfg.metrics_network)
                for m in parse_metrics(text).values():
                    self._progress(m.digest, m.size, m.fetched, m.complete)
                return
        for digest, (size, fetched) in (await asyncio.to_thread(read_state_files, self.cfg.root)).items():
            self._progress(digest, size, fetched, False)

    def _idle(self) -> bool:
        """Watching an empty set of layers (nothing lazy yet): touch no source."""
        return self.layers is not None and not self.layers

    async def _poll(self) -> None:
        while not self.stop.is_set():
            if not self._idle():
                await self.poll_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), POLL_INTERVAL_S)

    async def _follow(self) -> None:
        while self._idle() and not self.stop.is_set():
            await asyncio.sleep(0.1)
        if self.stop.is_set():
            return
        if self.soci_log:
            lines = follow_file(self.soci_log, self.stop, from_start=self.log_from_start)
        elif self.use_journal:
            lines = follow_journal(self.stop)
        else:
            return
        async for line in lines:
            self.on_log(line)

    def all_complete(self) -> bool:
        return self.layers is not None and bool(self.layers) and self.layers <= self.complete

    async def run(self) -> None:
        await asyncio.gather(self._poll(), self._follow())

    async def close(self) -> None:
        self.stop.set()


@contextlib.asynccontextmanager
async def observing(observer: SociObserver) -> AsyncIterator[SociObserver]:
    task = asyncio.create_task(observer.run())
    try:
        yield observer
    finally:
        await observer.close()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(task, 5)


def state_root(cfg: SociConfig) -> Path:
    return Path(cfg.root) / "snapshotter" / "snapshots"


@contextlib.asynccontextmanager
async def observe_lazy_layers(emit: ev.Emit, cfg: SociConfig, soci_log: str | None) -> AsyncIterator[ev.Emit]:
    """Wrap `emit` for a pull or run: every layer the engine reports as lazily mounted (LayerClassified lazy) is
    then followed through SOCI's metrics / state files / log (`soci_log`; None: journald), as progress and
    fetch-log events. Yields the emit to hand the engine."""
    observer = SociObserver(cfg, emit, soci_log=soci_log, layers=frozenset())

    def tap(event: ev.Event) -> None:
        if isinstance(event, ev.LayerClassified) and event.mode == "lazy":
            observer.layers = (observer.layers or frozenset()) | {event.digest}
        emit(event)

    async with observing(observer):
        yield tap
