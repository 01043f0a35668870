"""What the SOCI emulator exposes, under SOCI's own names
(https://github.com/awslabs/soci-snapshotter/blob/v0.15.0/fs/metrics/common/metrics.go): the Prometheus metrics
endpoint, the per-layer state files, and logrus-style JSON log lines on stderr."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from aiohttp import web

from socirun.soci import constants as c

# SOCI's millisecond histogram buckets: 1, 2, 4, … 16384.
MS_BUCKETS = tuple(float(1 << i) for i in range(15))


def log(level: str, msg: str, out: TextIO | None = None, **fields: Any) -> None:
    """One logrus JSON line: level, msg, time, then the fields."""
    record: dict[str, Any] = {"level": level, "msg": msg}
    record |= {k.replace("_", "-") if k in _DASHED else k: v for k, v in fields.items()}
    record["time"] = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    stream = out or sys.stderr
    stream.write(json.dumps(record) + "\n")
    stream.flush()


# Field names SOCI spells with dashes (Python keywords cannot).
_DASHED = {"remote_snapshot_prepared", "defer_snapshot_runtime", "local_snapshot_prepared"}


@dataclass
class LayerStats:
    digest: str
    mountpoint: str
    size: int
    fetched: int = 0
    spans: int = 0
    span_failures: int = 0
    started: float = field(default_factory=time.monotonic)
    duration_ms: float | None = None  # observed once, when the background fetch completed
    error: str = ""


class Metrics:
    """Thread-safe per-layer counters, rendered in Prometheus' text format."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.layers: dict[str, LayerStats] = {}
        self.fuse_mount_failures = 0
        self.local_mount_failures = 0

    def add_layer(self, digest: str, mountpoint: str, size: int) -> LayerStats:
        with self._lock:
            stats = LayerStats(digest, mountpoint, size)
            self.layers[digest] = stats
            return stats

    def span_fetched(self, digest: str, nbytes: int) -> None:
        with self._lock:
            stats = self.layers[digest]
            stats.fetched = min(stats.size, stats.fetched + nbytes)
            stats.spans += 1

    def complete(self, digest: str) -> None:
        with self._lock:
            stats = self.layers[digest]
            stats.duration_ms = (time.monotonic() - stats.started) * 1000

    def fail(self, digest: str, error: str) -> None:
        with self._lock:
            stats = self.layers[digest]
            stats.span_failures += 1
            stats.error = error

    def render(self) -> str:
        with self._lock:
            layers = list(self.layers.values())
            lines: list[str] = []
            lines.append(f"# HELP {c.M_LAYER_FETCHED} Fetched size of a layer (SOCI emulator)")
            lines.append(f"# TYPE {c.M_LAYER_FETCHED} gauge")
            for s in layers:
                lines.append(f'{c.M_LAYER_FETCHED}{{digest="{s.digest}",mountpoint="{s.mountpoint}"}} {s.fetched}')
            lines.append(f"# HELP {c.M_LAYER_SIZE} Total size of a layer (SOCI emulator)")
            lines.append(f"# TYPE {c.M_LAYER_SIZE} gauge")
            for s in layers:
                lines.append(f'{c.M_LAYER_SIZE}{{digest="{s.digest}",mountpoint="{s.mountpoint}"}} {s.size}')
            lines.append(f"# HELP {c.M_OPERATION_COUNT} Operation counts (SOCI emulator)")
            lines.append(f"# TYPE {c.M_OPERATION_COUNT} counter")
            for op, value in ((c.OP_FUSE_MOUNT_FAILURE, self.fuse_mount_failures),
                              ("local_mount_failure_count", self.local_mount_failures)):
                lines.append(f'{c.M_OPERATION_COUNT}{{layer="",operation_type="{op}"}} {value}')
            for s in layers:
                for op, value in ((c.OP_BG_SPAN, s.spans), (c.OP_BG_SPAN_FAILURE, s.span_failures),
                                  (c.OP_ONDEMAND_FETCH, 0)):
                    lines.append(f'{c.M_OPERATION_COUNT}{{layer="{s.digest}",operation_type="{op}"}} {value}')
            lines.append(f"# HELP {c.M_DURATION_MS} Operation latency in milliseconds (SOCI emulator)")
            lines.append(f"# TYPE {c.M_DURATION_MS} histogram")
            for s in layers:
                if s.duration_ms is None:
                    continue
                labels = f'layer="{s.digest}",operation_type="{c.OP_BG_FETCH}"'
                for bound in MS_BUCKETS:
                    lines.append(f'{c.M_DURATION_MS}_bucket{{{labels},le="{bound:g}"}} '
                                 f"{1 if s.duration_ms <= bound else 0}")
                lines.append(f'{c.M_DURATION_MS}_bucket{{{labels},le="+Inf"}} 1')
                lines.append(f"{c.M_DURATION_MS}_sum{{{labels}}} {s.duration_ms:.3f}")
                lines.append(f"{c.M_DURATION_MS}_count{{{labels}}} 1")
        return "\n".join(lines) + "\n"


def write_state_file(stats: LayerStats) -> None:
    """`<mountpoint>/.soci-snapshotter/<digest>.json` with digest, size, fetchedSize, fetchedPercent."""
    state_dir = Path(stats.mountpoint) / c.STATE_DIR_NAME
    state_dir.mkdir(mode=0o500, exist_ok=True)
    doc: dict[str, Any] = {
        "digest": stats.digest,
        "size": stats.size,
        "fetchedSize": stats.fetched,
        "fetchedPercent": round(100.0 * stats.fetched / stats.size, 2) if stats.size else 100.0,
    }
    if stats.error:
        doc["error"] = stats.error
    path = state_dir / f"{stats.digest}.json"
    tmp = state_dir / f".{stats.digest}.json.tmp"
    tmp.write_text(json.dumps(doc))
    os.chmod(tmp, 0o400)
    os.replace(tmp, path)


async def serve_metrics(metrics: Metrics, address: str, network: str) -> web.AppRunner:
    """GET /metrics on TCP host:port or a unix socket path."""

    async def handler(_request: web.Request) -> web.Response:
        return web.Response(text=metrics.render(), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site: web.BaseSite
    if network == "unix":
        if os.path.exists(address):
            os.unlink(address)
        site = web.UnixSite(runner, address)
    else:
        host, _, port = address.rpartition(":")
        site = web.TCPSite(runner, host or "127.0.0.1", int(port))
    await site.start()
    return runner
