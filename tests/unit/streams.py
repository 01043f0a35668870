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
