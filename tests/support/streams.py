"""Synthetic event streams with fixed timestamps, shared by the renderer tests."""

from __future__ import annotations

from socirun import events as ev

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


def lazy_run() -> list[ev.Event]:
    """A SOCI lazy pull of three layers (one small layer downloaded whole), then the container starts and the
    snapshotter keeps fetching on demand and in the background; the container exits 0 at the end."""
    out: list[ev.Event] = [
        ev.Resolving(reference=LAZY_REF, expanded_from="vllm:0.19.0-gpu-py312-ec2-soci", time=T0),
        ev.ImageResolved(reference=LAZY_REF, digest="sha256:" + "e" * 64, manifest_digest="sha256:" + "f" * 64,
                         platform="linux/amd64", layer_count=3, total_size=9_000_000_000, time=T0 + 0.4),
        ev.PlanMade(mode="lazy", snapshotter="soci", reasons=(
            "the image has a SOCI index (v2) for linux/amd64",
            "the soci snapshotter is running and registered with containerd",
        ), time=T0 + 0.5),
        ev.LayerPlanned(index=0, digest=L1, media_type=GZ, size=30_000_000, mode="standard", time=T0 + 0.5),
        ev.LayerPlanned(index=1, digest=L2, media_type=ZSTD, size=2_970_000_000, mode="lazy", time=T0 + 0.5),
        ev.LayerPlanned(index=2, digest=L3, media_type=GZ, size=6_000_000_000, mode="lazy", time=T0 + 0.5),
        ev.LayerStateChanged(digest=L1, state="downloading", time=T0 + 0.6),
        ev.LayerStateChanged(digest=L2, state="downloading", detail="lazy", time=T0 + 0.6),
        ev.LayerStateChanged(digest=L3, state="downloading", detail="lazy", time=T0 + 0.6),
    ]
    for i in range(1, 7):
        out.append(ev.LayerProgress(digest=L1, downloaded=5_000_000 * i, total=30_000_000, time=T0 + 0.6 + i * 0.25))
        # The snapshotter prefetches what the SOCI index marks as needed at start while the pull goes on.
        out.append(ev.FetchLogEntry(layer_digest=L2 if i % 2 else L3, offset=i * 1_048_576, length=1_048_576,
                                    reason="prefetch", path=f"/usr/lib/python3.12/site-packages/mod{i}.so",
                                    time=round(T0 + 0.7 + i * 0.25, 3)))
    out += [
        ev.LayerStateChanged(digest=L1, state="done", time=T0 + 2.3),
        ev.LayerStateChanged(digest=L2, state="done", time=T0 + 2.4),
        ev.LayerStateChanged(digest=L3, state="done", time=T0 + 2.4),
        ev.PullFinished(reference=LAZY_REF, manifest_digest="sha256:" + "f" * 64, snapshotter="soci", mode="lazy",
                        fetched=30_000_000, total_size=9_000_000_000, elapsed=2.4, time=T0 + 2.4),
        ev.ContainerCreated(container_id="c0ffee" * 10 + "abcd", name="vllm", time=T0 + 2.5),
        ev.ContainerStarted(container_id="c0ffee" * 10 + "abcd", pid=4242, since_command_start=2.7, time=T0 + 2.7),
    ]
    paths = ("/usr/bin/python3.12", "/usr/lib/libcuda.so.1", "/opt/vllm/model.safetensors", "/etc/ld.so.cache")
    for i in range(40):
        digest = L2 if i % 3 else L3
        out.append(ev.FetchLogEntry(layer_digest=digest, offset=i * 4_194_304, length=4_194_304 if i % 2 else 65_536,
                                    reason="on-demand" if i % 4 else "background", path=paths[i % len(paths)],
                                    time=round(T0 + 2.8 + i * 0.1, 3)))
    out.append(ev.ContainerExited(container_id="c0ffee" * 10 + "abcd", exit_code=0, time=T0 + 7.0))
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
