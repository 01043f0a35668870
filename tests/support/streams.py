"""Event streams with fixed timestamps, shared by the renderer tests: synthetic ones, and recordings of real
runs (recordings/) rebased to the same clock."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from socirun import events as ev
from socirun.ui.replay import load_events

RECORDINGS = Path(__file__).parent / "recordings"

T0 = 1_700_000_000.0
A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
C = "sha256:" + "c" * 64
GZ = "application/vnd.oci.image.layer.v1.tar+gzip"


def standard_pull() -> list[ev.Event]:
    """Three layers: one cached, two downloaded, 12 s in all."""
    return [
        ev.Resolving(reference="127.0.0.1:5000/demo/sample:latest", time=T0),
        ev.ImageResolved(reference="127.0.0.1:5000/demo/sample:latest", digest="sha256:" + "d" * 64,
                         manifest_digest="sha256:" + "d" * 64, platform="linux/amd64", layer_count=3,
                         total_size=60_000_000, time=T0 + 0.2),
        ev.PlanMade(mode="standard", snapshotter="overlayfs", reasons=("one reason",), time=T0 + 0.2),
        ev.LayerPlanned(index=0, digest=A, media_type=GZ, size=10_000_000, mode="cached", time=T0 + 0.2),
        ev.LayerPlanned(index=1, digest=B, media_type=GZ, size=20_000_000, mode="standard", time=T0 + 0.2),
        ev.LayerPlanned(index=2, digest=C, media_type=GZ, size=30_000_000, mode="standard", time=T0 + 0.2),
        ev.LayerStateChanged(digest=A, state="exists", detail="snapshot present", time=T0 + 0.3),
        ev.LayerStateChanged(digest=B, state="downloading", time=T0 + 0.3),
        ev.LayerStateChanged(digest=C, state="downloading", time=T0 + 0.3),
        ev.LayerProgress(digest=B, downloaded=0, total=20_000_000, time=T0 + 0.3),
        ev.LayerProgress(digest=C, downloaded=0, total=30_000_000, time=T0 + 0.3),
        ev.LayerProgress(digest=B, downloaded=10_000_000, total=20_000_000, time=T0 + 5.3),
        ev.LayerProgress(digest=C, downloaded=10_000_000, total=30_000_000, time=T0 + 5.3),
        ev.LayerProgress(digest=B, downloaded=20_000_000, total=20_000_000, time=T0 + 8.3),
        ev.LayerStateChanged(digest=B, state="downloaded", time=T0 + 8.3),
        ev.LayerStateChanged(digest=B, state="unpacking", time=T0 + 8.3),
        ev.LayerStateChanged(digest=B, state="done", time=T0 + 9.3),
        ev.LayerProgress(digest=C, downloaded=30_000_000, total=30_000_000, time=T0 + 11.3),
        ev.LayerStateChanged(digest=C, state="downloaded", time=T0 + 11.3),
        ev.LayerStateChanged(digest=C, state="unpacking", time=T0 + 11.3),
        ev.LayerStateChanged(digest=C, state="done", time=T0 + 12.0),
        ev.PullFinished(reference="127.0.0.1:5000/demo/sample:latest", manifest_digest="sha256:" + "d" * 64,
                        snapshotter="overlayfs", mode="standard", fetched=50_000_000, total_size=60_000_000,
                        elapsed=12.0, time=T0 + 12.0),
    ]


L1 = "sha256:" + "1" * 64
L2 = "sha256:" + "2" * 64
L3 = "sha256:" + "3" * 64
ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
LAZY_REF = "public.ecr.aws/deep-learning-containers/vllm:0.19.0-gpu-py312-ec2-soci"


SOURCES = ev.ObservationSources(live=(
    "metrics: tcp 127.0.0.1:45673",
    "state files: /var/lib/soci-snapshotter-grpc/snapshotter/snapshots",
    "log: file /var/log/soci-snapshotter-grpc.log",
    "log detail: [fuse] log_fuse_operations is on and the log has debug lines",
))
NO_METRICS = ev.ObservationSources(
    live=("state files: /var/lib/soci-snapshotter-grpc/snapshotter/snapshots",
          "log: file /var/log/soci-snapshotter-grpc.log",
          "log detail: [fuse] log_fuse_operations is on and the log has debug lines"),
    missing=("span fetch counts (on demand, background) are not shown; bytes fetched come from the state files: "
             "metrics_address is empty in /etc/soci-snapshotter-grpc/config.toml (SOCI's metrics are off by "
             "default); to turn it on: set metrics_address = \"127.0.0.1:9400\" (or a socket path with "
             "metrics_network = \"unix\") in SOCI's config.toml, then restart soci-snapshotter-grpc",),
)
MOUNTED = "mounted lazily by SOCI: its bytes arrive on demand and in the background"
CONTAINER = "c0ffee" * 10 + "abcd"


def _stats(digest: str, size: int, at: float, fetched: int, on_demand: int, background: int = 0,
           complete: bool = False) -> ev.LazyLayerStats:
    return ev.LazyLayerStats(digest=digest, fetched=fetched, size=size, source="metrics", on_demand_fetches=on_demand,
                             background_spans=background, background_failures=0, bytes_served=on_demand * 3_000_000,
                             complete=complete, time=round(T0 + at, 3))


def lazy_run(sources: ev.ObservationSources = SOURCES) -> list[ev.Event]:
    """A SOCI lazy pull of three layers (one small layer downloaded whole by socirun), shaped like a real run:
    SOCI mounts the two big layers, the observer reports its sources and SOCI's per-layer figures (metrics),
    socirun reads /etc/passwd and /etc/group through the mount, the container starts and reads a few files
    (one `read` entry per path, then growing request counts), SOCI fetches spans on demand and, after its
    silence period, in the background; the container exits 0 at the end."""
    size2, size3 = 2_970_000_000, 6_000_000_000
    out: list[ev.Event] = [
        ev.Resolving(reference=LAZY_REF, expanded_from="vllm:0.19.0-gpu-py312-ec2-soci", time=T0),
        ev.ImageResolved(reference=LAZY_REF, digest="sha256:" + "e" * 64, manifest_digest="sha256:" + "f" * 64,
                         platform="linux/amd64", layer_count=3, total_size=9_000_000_000, time=T0 + 0.4),
        ev.PlanMade(mode="lazy", snapshotter="soci", reasons=(
            "the soci snapshotter answers at /run/soci-snapshotter-grpc/soci-snapshotter-grpc.sock, and the image "
            "has a SOCI v2 index 1d416d840240 (found via the manifest annotation com.amazon.soci.index-digest)",
            "2 of 3 layers have a zTOC and load lazily; the container starts once every layer is mounted",
        ), time=T0 + 0.5),
        ev.LayerPlanned(index=0, digest=L1, media_type=GZ, size=30_000_000, mode="standard", time=T0 + 0.5),
        ev.LayerPlanned(index=1, digest=L2, media_type=ZSTD, size=size2, mode="lazy", time=T0 + 0.5),
        ev.LayerPlanned(index=2, digest=L3, media_type=GZ, size=size3, mode="lazy", time=T0 + 0.5),
        ev.LayerStateChanged(digest=L1, state="downloading", time=T0 + 0.6),
        ev.LayerStateChanged(digest=L2, state="waiting", time=T0 + 0.6),
        ev.LayerStateChanged(digest=L3, state="waiting", time=T0 + 0.6),
        ev.LayerClassified(digest=L2, mode="lazy", detail=MOUNTED, time=T0 + 0.7),
        ev.LayerStateChanged(digest=L2, state="done", detail=MOUNTED, time=T0 + 0.7),
        ev.LayerClassified(digest=L3, mode="lazy", detail=MOUNTED, time=T0 + 0.75),
        ev.LayerStateChanged(digest=L3, state="done", detail=MOUNTED, time=T0 + 0.75),
        ev.ObservationSources(live=sources.live, missing=sources.missing, time=T0 + 0.8),
    ]
    if sources.missing:  # no metrics: byte figures from the state files, no counts
        out += [ev.LazyLayerStats(digest=d, fetched=10, size=n, source="state file", time=T0 + 0.8)
                for d, n in ((L2, size2), (L3, size3))]
    else:
        out += [_stats(L2, size2, 0.8, 10, 0), _stats(L3, size3, 0.8, 10, 0)]
    for i in range(1, 7):
        out.append(ev.LayerProgress(digest=L1, downloaded=5_000_000 * i, total=30_000_000, time=T0 + 0.6 + i * 0.25))
    out += [
        ev.LayerStateChanged(digest=L1, state="done", time=T0 + 2.3),
        ev.PullFinished(reference=LAZY_REF, manifest_digest="sha256:" + "f" * 64, snapshotter="soci", mode="lazy",
                        fetched=30_000_000, total_size=9_000_000_000, elapsed=2.4, time=T0 + 2.4),
        ev.FetchLogEntry(reason="read", path="/etc/passwd", requests=1, time=T0 + 2.45),
        ev.FetchLogEntry(reason="read", path="/etc/group", requests=1, time=T0 + 2.46),
        ev.ContainerCreated(container_id=CONTAINER, name="vllm", time=T0 + 2.5),
        ev.ContainerStarted(container_id=CONTAINER, pid=4242, since_command_start=2.7, time=T0 + 2.7),
    ]
    paths = ("/usr/bin/python3.12", "/usr/lib/python3.12/encodings/__init__.py", "/usr/lib/libcuda.so.1",
             "/opt/vllm/vllm/__init__.py", "/opt/vllm/model.safetensors")
    requests = dict.fromkeys(paths, 0)
    on_demand = 0
    for step in range(40):
        at = 2.8 + step * 0.1
        path = paths[min(step // 6, len(paths) - 1)] if step % 3 else paths[step % len(paths)]
        first = requests[path] == 0
        requests[path] += 1 if first else 4
        out.append(ev.FetchLogEntry(reason="read", path=path, requests=requests[path], time=round(T0 + at, 3)))
        if first:
            on_demand += 1
        if step % 5 == 4:  # the observer polls SOCI's metrics twice a second
            background = max(0, step - 24) // 5
            out.append(_stats(L2, size2, at, 10 + on_demand * 2_100_000 + background * 4_194_304, on_demand,
                              background))
            out.append(_stats(L3, size3, at, 10 + on_demand * 700_000, on_demand // 2))
    if sources.missing:
        out = [e for e in out if not isinstance(e, ev.LazyLayerStats) or e.source == "state file"]
    out.append(ev.ContainerExited(container_id=CONTAINER, exit_code=0, time=T0 + 7.0))
    return out


def failed_pull() -> list[ev.Event]:
    """The standard pull, failing mid-way on a digest mismatch (exit 125)."""
    head = [e for e in standard_pull() if e.time <= T0 + 5.3]
    return [
        *head,
        ev.LayerStateChanged(digest=C, state="failed", detail="digest mismatch", time=T0 + 6.0),
        ev.Error(message="layer sha256:cccccccccccc… does not match its digest: the registry sent different bytes; "
                         "nothing was kept, rerun to retry", exit_code=125, time=T0 + 6.0),
    ]


def recorded(name: str) -> list[ev.Event]:
    """A real run's `--progress json` stream from recordings/NAME.jsonl, its first event moved to T0.

    real_lazy_run: `socirun run --rm --net none --progress json IMAGE sh -c 'wc -c /data/layer-3/big.bin; cat
    /data/layer-2/site-packages/pkg000/mod00*.py | wc -l; sleep 2; wc -c /data/layer-3/lib/libsample-000.so'`
    against the sandbox's real soci-snapshotter v0.16.1 (containerd 2.4.2), an image pushed with `socirun sandbox
    push-sample --name demo/model-server --layers 2,24,160 --soci v2 --min-layer-size 4194304 --seed 9`, the
    registry behind a 25 MB/s cap (socirun.sandbox.throttle)."""
    events = load_events(RECORDINGS / f"{name}.jsonl")
    shift = T0 - events[0].time
    return [dataclasses.replace(e, time=e.time + shift) for e in events]


def until(stream: list[ev.Event], t: float) -> list[ev.Event]:
    """The events of `stream` up to `t` seconds after T0 (a mid-pull cut)."""
    return [e for e in stream if e.time <= T0 + t]


def many_layers(layers: int, seconds: float, per_second: int, *, size: int = 100_000_000) -> list[ev.Event]:
    """A synthetic standard pull of `layers` layers, each getting `per_second` progress events a second."""
    digests = [f"sha256:{i:064x}" for i in range(layers)]
    out: list[ev.Event] = [
        ev.Resolving(reference="bench/many:latest", time=T0),
        ev.ImageResolved(reference="bench/many:latest", digest="sha256:" + "9" * 64,
                         manifest_digest="sha256:" + "9" * 64, platform="linux/amd64", layer_count=layers,
                         total_size=layers * size, time=T0),
        ev.PlanMade(mode="standard", snapshotter="overlayfs", time=T0),
    ]
    out += [ev.LayerPlanned(index=i, digest=d, media_type=GZ, size=size, mode="standard", time=T0)
            for i, d in enumerate(digests)]
    out += [ev.LayerStateChanged(digest=d, state="downloading", time=T0) for d in digests]
    steps = int(seconds * per_second)
    for step in range(1, steps + 1):
        at = T0 + step / per_second
        done = size * step // (steps + 1)
        out += [ev.LayerProgress(digest=d, downloaded=done, total=size, time=at) for d in digests]
    return out
