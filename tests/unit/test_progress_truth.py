"""Issue 13, "progress that is true": an interrupted pull keeps what it downloaded (the resume lease), and the ETA
counts the unpacking still ahead instead of saying `100% … eta 0.0s` while the last layer unpacks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from socirun import events as ev
from socirun.containerd.types import LeaseInfo
from socirun.pull.leases import (
    GC_EXPIRE,
    LABEL_IMAGE,
    LABEL_PID,
    LABEL_PURPOSE,
    LABEL_STARTED,
    PullLease,
    drop_dead_leases,
)
from socirun.ui.model import PullModel, human_bytes
from socirun.ui.plain import heartbeat_line
from socirun.ui.tui.format import summary_text

SMALL, BIG = "sha256:" + "a" * 64, "sha256:" + "b" * 64
GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def _model(*events: ev.Event) -> PullModel:
    m = PullModel()
    for event in events:
        m.apply(event)
    return m


def _planned(mode: ev.LayerMode = "standard") -> list[ev.Event]:
    """A pull of two layers: 100 bytes, then 300 bytes, both downloading from t=0."""
    return [
        ev.Resolving(reference="r/x:1", time=0.0),
        ev.ImageResolved(reference="r/x:1", digest="sha256:" + "c" * 64, manifest_digest="sha256:" + "c" * 64,
                         platform="linux/amd64", layer_count=2, total_size=400, time=0.0),
        ev.PlanMade(mode=mode, snapshotter="overlayfs", time=0.0),
        ev.LayerPlanned(index=0, digest=SMALL, media_type=GZIP, size=100, mode=mode, time=0.0),
        ev.LayerPlanned(index=1, digest=BIG, media_type=GZIP, size=300, mode=mode, time=0.0),
        ev.LayerStateChanged(digest=SMALL, state="downloading", time=0.0),
        ev.LayerStateChanged(digest=BIG, state="downloading", time=0.0),
        ev.LayerProgress(digest=SMALL, downloaded=0, total=100, time=0.0),
        ev.LayerProgress(digest=BIG, downloaded=0, total=300, time=0.0),
    ]


def _small_applied_in_one_second() -> list[ev.Event]:
    """The small layer downloads by t=1 and unpacks from t=1 to t=2 (100 B/s: this pull's unpack rate)."""
    return [
        ev.LayerProgress(digest=SMALL, downloaded=100, total=100, time=1.0),
        ev.LayerStateChanged(digest=SMALL, state="downloaded", time=1.0),
        ev.LayerStateChanged(digest=SMALL, state="unpacking", time=1.0),
        ev.LayerProgress(digest=SMALL, downloaded=100, total=100, applied=100, time=2.0),
        ev.LayerStateChanged(digest=SMALL, state="done", time=2.0),
    ]


def _big_downloaded_and_unpacking(at: float = 3.0) -> list[ev.Event]:
    return [
        ev.LayerProgress(digest=BIG, downloaded=300, total=300, time=at),
        ev.LayerStateChanged(digest=BIG, state="downloaded", time=at),
        ev.LayerStateChanged(digest=BIG, state="unpacking", time=at),
    ]


# -- the model's ETA ------------------------------------------------------------------------------------------


def test_downloads_at_100_percent_with_a_layer_unpacking_is_not_eta_zero() -> None:
    m = _model(*_planned(), *_small_applied_in_one_second(), *_big_downloaded_and_unpacking(at=3.0))
    assert m.fraction() == 1.0 and m.download_eta() == 0.0  # every byte is downloaded...
    # ...but 300 bytes at this pull's 100 B/s take 3 s to unpack, 1 s of which has passed at t=4.
    assert m.eta(now=4.0) == pytest.approx(2.0)
    assert [r.digest for r in m.unpacking()] == [BIG]
    assert m.unpack_bytes() == (100, 400)
    assert m.eta_text(4.0) == "eta 2.0s"
    assert m.unpack_text(4.0) == f"unpacked {human_bytes(100)}/{human_bytes(400)}, unpacking bbbbbbbbbbbb for 1.0s"


def test_an_unpacking_layer_past_its_estimate_counts_zero_never_negative() -> None:
    m = _model(*_planned(), *_small_applied_in_one_second(), *_big_downloaded_and_unpacking(at=3.0))
    assert m.eta(now=30.0) == 0.0
    assert "unpacking bbbbbbbbbbbb for 27.0s" in m.unpack_text(30.0)


def test_no_layer_applied_yet_says_unpacking_without_an_eta() -> None:
    m = _model(*_planned(), ev.LayerProgress(digest=SMALL, downloaded=100, total=100, time=1.0),
               ev.LayerStateChanged(digest=SMALL, state="unpacking", time=1.0),
               ev.LayerProgress(digest=BIG, downloaded=300, total=300, time=1.5))
    assert m.unpack_rate() is None
    assert m.eta(now=2.0) is None  # not invented
    assert m.eta_text(2.0) == ""  # the face says "unpacking" instead
    assert m.unpack_text(2.0).endswith("unpacking aaaaaaaaaaaa for 1.0s")


def test_while_downloading_without_an_unpack_rate_the_eta_is_a_lower_bound() -> None:
    m = _model(*_planned(), ev.LayerProgress(digest=SMALL, downloaded=50, total=100, time=1.0),
               ev.LayerProgress(digest=BIG, downloaded=50, total=300, time=1.0))
    assert m.download_eta() == pytest.approx(3.0)  # 300 bytes left at 100 B/s
    assert m.eta() is None and m.eta_text() == "eta >3.0s"


def test_a_layer_still_downloading_adds_its_unpacking_after_the_download() -> None:
    m = _model(*_planned(), *_small_applied_in_one_second(),
               ev.LayerProgress(digest=BIG, downloaded=200, total=300, time=2.0))
    # 100 bytes still to download at 150 B/s (300 bytes in 2 s), then the big layer's 3 s of unpacking.
    assert m.download_eta() == pytest.approx(100 / 150)
    assert m.eta(now=2.0) == pytest.approx(100 / 150 + 3.0)


def test_lazy_layers_are_not_unpacked_by_socirun_so_add_nothing() -> None:
    m = _model(*_planned(mode="lazy"), ev.LayerProgress(digest=SMALL, downloaded=100, total=100, time=1.0),
               ev.LayerProgress(digest=BIG, downloaded=300, total=300, time=1.0))
    assert m.unpack_ahead() == 0.0 and m.eta() == 0.0


# -- the faces ---------------------------------------------------------------------------------------------------


def test_plain_heartbeat_while_the_last_layer_unpacks() -> None:
    m = _model(*_planned(), *_small_applied_in_one_second(), *_big_downloaded_and_unpacking(at=3.0))
    line = heartbeat_line(m, 4.5)
    assert "100%" in line and "eta 1.5s" in line and "eta 0.0s" not in line
    assert line.endswith(f"; unpacked {human_bytes(100)}/{human_bytes(400)}, unpacking bbbbbbbbbbbb for 1.5s")


def test_plain_heartbeat_without_an_unpack_rate_has_no_eta() -> None:
    m = _model(*_planned(), ev.LayerProgress(digest=SMALL, downloaded=100, total=100, time=1.0),
               ev.LayerStateChanged(digest=SMALL, state="unpacking", time=1.0),
               ev.LayerProgress(digest=BIG, downloaded=300, total=300, time=1.5))
    line = heartbeat_line(m, 6.0)
    assert "eta" not in line and "unpacking aaaaaaaaaaaa for 5.0s" in line


def test_tui_summary_while_the_last_layer_unpacks() -> None:
    m = _model(*_planned(), *_small_applied_in_one_second(), *_big_downloaded_and_unpacking(at=3.0))
    text = summary_text(m, 200, now=4.0).plain
    assert "eta 2.0s" in text and "eta 0.0s" not in text and "unpacking bbbbbbbbbbbb for 1.0s" in text


# -- the resume lease ------------------------------------------------------------------------------------------


@dataclass
class _Ingest:
    ref: str
    offset: int


@dataclass
class FakeLeases:
    """The containerd calls PullLease and drop_dead_leases make, on dictionaries."""

    leases: dict[str, dict[str, str]] = field(default_factory=dict)
    resources: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    ingests: list[_Ingest] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    images: set[str] = field(default_factory=set)  # image records that exist

    async def create_lease(self, labels: dict[str, str], lease_id: str | None = None) -> str:
        lease_id = lease_id or f"lease-{len(self.leases)}"
        self.leases[lease_id] = dict(labels)
        self.resources[lease_id] = set()
        return lease_id

    @contextlib.contextmanager
    def using_lease(self, lease_id: str) -> Iterator[None]:
        yield

    async def delete_lease(self, lease_id: str, *, sync: bool = False) -> None:
        self.leases.pop(lease_id, None)
        self.deleted.append(lease_id)

    async def add_lease_resource(self, lease_id: str, resource_id: str, resource_type: str) -> None:
        self.resources[lease_id].add((resource_type, resource_id))

    async def list_ingests(self, filters: Sequence[str] = ()) -> list[_Ingest]:
        return list(self.ingests)

    async def list_leases_info(self, filters: Sequence[str] = ()) -> list[LeaseInfo]:
        return [LeaseInfo(lease_id, labels) for lease_id, labels in self.leases.items()]

    async def lease_resources(self, lease_id: str) -> list[tuple[str, str]]:
        return sorted(self.resources.get(lease_id, set()))

    async def image_get(self, name: str) -> object | None:
        return object() if name in self.images else None


def test_an_interrupted_pull_keeps_its_whole_blobs_and_partial_ingests_under_a_resume_lease() -> None:
    ctd = FakeLeases(ingests=[_Ingest("layer-big", 4096), _Ingest("layer-empty", 0), _Ingest("other-pull", 99)])

    async def interrupted() -> None:
        async with PullLease(ctd, "r/x:1") as lease:  # type: ignore[arg-type]
            lease.track_blob(SMALL)
            lease.track_ingest("layer-big")
            lease.track_ingest("layer-empty")
            raise asyncio.CancelledError  # Ctrl-C

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(interrupted())
    assert len(ctd.leases) == 1  # the pull lease went, the resume lease stayed
    (resume, labels), = ctd.leases.items()
    assert labels[LABEL_PURPOSE] == "resume" and labels[LABEL_IMAGE] == "r/x:1" and GC_EXPIRE in labels
    assert LABEL_PID not in labels  # no owner: the dead-owner sweep must leave it
    assert ctd.resources[resume] == {("content", SMALL), ("ingests", "layer-big")}


def test_a_successful_pull_keeps_nothing_and_drops_the_images_resume_leases() -> None:
    ctd = FakeLeases()
    ctd.leases["old-resume"] = {LABEL_PURPOSE: "resume", LABEL_IMAGE: "r/x:1", GC_EXPIRE: "2099-01-01T00:00:00Z"}

    async def pulled() -> None:
        async with PullLease(ctd, "r/x:1") as lease:  # type: ignore[arg-type]
            lease.track_blob(SMALL)
            lease.succeeded()

    asyncio.run(pulled())
    assert ctd.leases == {}


# PID 2**22 + 1 is above Linux's largest pid_max, so no process runs under it: its lease's owner is dead.
DEAD = {LABEL_PID: str(2**22 + 1), LABEL_STARTED: "1.00"}
KEPT_RESUME = {LABEL_PURPOSE: "resume", LABEL_IMAGE: "r/x:1", GC_EXPIRE: "2099-01-01T00:00:00Z"}


def test_the_dead_owner_sweep_leaves_resume_leases() -> None:
    """A run's start drops the leases of dead socirun processes; the resume lease an interrupted pull left (by a
    process that has since ended) holds the bytes a rerun resumes from, so it must stay."""
    ctd = FakeLeases()
    ctd.leases["resume"] = dict(KEPT_RESUME)
    ctd.leases["killed-run"] = {LABEL_PURPOSE: "run", **DEAD}
    assert asyncio.run(drop_dead_leases(ctd)) == 1  # type: ignore[arg-type]
    assert list(ctd.leases) == ["resume"]


def test_a_killed_pulls_downloads_move_to_a_resume_lease_when_its_lease_is_swept() -> None:
    """SIGKILL leaves the pull lease; dropping it outright would let GC collect every finished layer."""
    ctd = FakeLeases()
    ctd.leases["killed"] = {LABEL_PURPOSE: "pull", LABEL_IMAGE: "r/y:2", **DEAD}
    ctd.resources["killed"] = {("content", SMALL), ("ingests", "layer-big"), ("snapshots/overlayfs", "extract-1")}
    assert asyncio.run(drop_dead_leases(ctd)) == 1  # type: ignore[arg-type]
    (resume, labels), = ctd.leases.items()
    assert labels[LABEL_PURPOSE] == "resume" and labels[LABEL_IMAGE] == "r/y:2" and LABEL_PID not in labels
    assert ctd.resources[resume] == {("content", SMALL), ("ingests", "layer-big")}  # no half-unpacked snapshot


def test_a_killed_pull_whose_image_was_recorded_needs_no_resume_lease() -> None:
    ctd = FakeLeases(images={"r/y:2"})
    ctd.leases["killed"] = {LABEL_PURPOSE: "pull", LABEL_IMAGE: "r/y:2", **DEAD}
    ctd.resources["killed"] = {("content", SMALL)}
    assert asyncio.run(drop_dead_leases(ctd)) == 1  # type: ignore[arg-type]
    assert ctd.leases == {}


def test_a_resumed_download_says_where_in_humane_units() -> None:
    from socirun.pull.engine import _resume_detail

    assert _resume_detail(8 << 20, 20 << 20) == "resuming at 8 MiB of 20 MiB"
    assert _resume_detail(0, 20 << 20) == ""
    assert _resume_detail(20 << 20, 20 << 20) == "all bytes already in containerd's store"
