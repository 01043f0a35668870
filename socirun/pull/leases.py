"""The lease a pull works under, and what happens to it when the pull ends.

Success: the image record now references everything, so the lease goes. Failure or Ctrl-C: snapshots were
already removed by the engine, but the downloaded bytes are worth keeping so the next run fetches only what is
missing: the layer blobs already committed (content resources) and the partial ingests (ingest resources, by
their ref) move to a small "resume" lease that expires like containerd's own lease-less ingests (24 h), and the
pull lease goes; containerd's GC keeps only what a lease or a label references, so without this move every
finished layer would be collected with the pull lease. A later successful pull of the same image drops the
resume leases, and every pull and run drops the leases of socirun processes that died (SIGKILL leaves no chance
to clean up), so nothing lingers; a resume lease names no owner, so that sweep leaves it.

Every lease socirun takes names its owner: the PID and that process's start time (so a PID the kernel has since
given to another process does not keep a dead owner's lease alive).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
from collections.abc import Callable
from types import TracebackType

import psutil

from socirun.containerd.client import ContainerdClient
from socirun.containerd.types import LeaseInfo

EXPIRE_AFTER = dt.timedelta(hours=24)
LABEL_IMAGE = "io.socirun/image"
LABEL_PID = "io.socirun/pid"
LABEL_STARTED = "io.socirun/started"  # the owner's start time (seconds since the epoch, as psutil reports it)
LABEL_PURPOSE = "io.socirun/purpose"
# The purposes whose lease lives only as long as the process that took it (a resume lease outlives it on purpose).
OWNED_PURPOSES = ("pull", "run")
GC_EXPIRE = "containerd.io/gc.expire"


def _expiry() -> str:
    return (dt.datetime.now(dt.UTC) + EXPIRE_AFTER).strftime("%Y-%m-%dT%H:%M:%SZ")


def resume_labels(image: str) -> dict[str, str]:
    """A resume lease names no owner on purpose: it outlives the process (`drop_dead_leases` leaves it) and goes
    with its expiry, or when a later pull of `image` succeeds."""
    return {GC_EXPIRE: _expiry(), LABEL_IMAGE: image, LABEL_PURPOSE: "resume"}


def owner_labels(purpose: str) -> dict[str, str]:
    """The labels that tie a lease to this process, for `lease_owner_dead` to judge later."""
    return {LABEL_PID: str(os.getpid()), LABEL_STARTED: f"{psutil.Process().create_time():.2f}",
            LABEL_PURPOSE: purpose}  # fmt: skip


def lease_owner_dead(labels: dict[str, str], started_of: Callable[[int], float | None]) -> bool:
    """Whether the process that took a lease with `labels` has ended: a pull or run lease whose PID runs no
    more, or runs a process started at another time (the PID was reused). `started_of(pid)` is the start time of
    the running process `pid`, None when none runs. Leases that name no owner are never judged dead."""
    pid = labels.get(LABEL_PID, "")
    if labels.get(LABEL_PURPOSE) not in OWNED_PURPOSES or not pid.isdigit():
        return False
    started = started_of(int(pid))
    if started is None:
        return True
    try:
        recorded = float(labels[LABEL_STARTED])
    except (KeyError, ValueError):
        return False  # an older socirun's lease without a start time: the PID runs, so it may be its owner
    return abs(started - recorded) >= 1.0


def process_started(pid: int) -> float | None:
    """The start time of the running process `pid` (None when there is none, or only a zombie)."""
    try:
        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else float(proc.create_time())
    except psutil.Error:
        return None


def downloads_to_keep(labels: dict[str, str], resources: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """What of a dead owner's lease is worth a resume lease: a pull's blobs and ingests (its downloads), never
    its snapshots (half-unpacked layers are not kept) and nothing of a run's lease."""
    if labels.get(LABEL_PURPOSE) != "pull" or not labels.get(LABEL_IMAGE):
        return []
    return [(kind, rid) for kind, rid in resources if kind in ("content", "ingests")]


async def drop_dead_leases(ctd: ContainerdClient) -> int:
    """Delete the pull and run leases of socirun processes that died (a SIGKILL ends a process with its lease
    still there, holding its ingests and snapshots for 24 h); returns how many. containerd's GC then collects
    what only they held. A killed pull's downloads first move to a resume lease, as an interrupted pull's do
    (unless its image record was made: the image holds them then), so a rerun still fetches only what is missing.
    Resume leases name no owner, so they are never dropped here."""
    dropped = 0
    for lease in await ctd.list_leases_info():
        if lease_owner_dead(lease.labels, process_started):
            await _retire_dead_lease(ctd, lease)
            dropped += 1
    return dropped


async def _retire_dead_lease(ctd: ContainerdClient, lease: LeaseInfo) -> None:
    image = lease.labels.get(LABEL_IMAGE, "")
    keep = downloads_to_keep(lease.labels, await ctd.lease_resources(lease.id))
    if keep and await ctd.image_get(image) is None:
        resume = await ctd.create_lease(resume_labels(image))
        for kind, rid in keep:
            await ctd.add_lease_resource(resume, rid, kind)
    await ctd.delete_lease(lease.id)


class PullLease:
    def __init__(self, ctd: ContainerdClient, image: str) -> None:
        self.ctd = ctd
        self.image = image
        self.lease_id = ""
        self._ok = False
        self._ingests: set[str] = set()
        self._blobs: set[str] = set()
        self._token: contextlib.AbstractContextManager[None] | None = None

    def track_ingest(self, ref: str) -> None:
        self._ingests.add(ref)

    def track_blob(self, digest: str) -> None:
        """A layer blob this pull holds whole in the content store (committed now, or found there)."""
        self._blobs.add(digest)

    def succeeded(self) -> None:
        self._ok = True

    async def __aenter__(self) -> PullLease:
        self.lease_id = await self.ctd.create_lease({GC_EXPIRE: _expiry(), LABEL_IMAGE: self.image,
                                                     **owner_labels("pull")})  # fmt: skip
        self._token = self.ctd.using_lease(self.lease_id)
        self._token.__enter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._token is not None
        self._token.__exit__(None, None, None)
        # Finish the bookkeeping even while the task is being cancelled (Ctrl-C).
        await asyncio.shield(self._finish())

    async def _finish(self) -> None:
        if not self._ok:
            await self._keep_downloads()
        # After a failure, collect what the pull wrote before returning, so no partial record outlives it.
        await self.ctd.delete_lease(self.lease_id, sync=not self._ok)
        if self._ok:
            await self._drop_stale_leases()

    async def _keep_downloads(self) -> None:
        """Put the whole blobs and the partial ingests of this pull under a resume lease (before the pull
        lease goes, so GC never sees them unreferenced)."""
        partial = [s.ref for s in await self.ctd.list_ingests() if s.ref in self._ingests and s.offset > 0]
        if not partial and not self._blobs:
            return
        resume = await self.ctd.create_lease(resume_labels(self.image))
        for digest in sorted(self._blobs):
            await self.ctd.add_lease_resource(resume, digest, "content")
        for ref in partial:
            await self.ctd.add_lease_resource(resume, ref, "ingests")

    async def _drop_stale_leases(self) -> None:
        """This image's resume leases (the image is whole now), and any dead process's pull or run lease."""
        for lease in await self.ctd.list_leases_info():
            if lease.id == self.lease_id:
                continue
            resume = lease.labels.get(LABEL_IMAGE) == self.image and lease.labels.get(LABEL_PURPOSE) == "resume"
            if resume:
                await self.ctd.delete_lease(lease.id)
            elif lease_owner_dead(lease.labels, process_started):
                await _retire_dead_lease(self.ctd, lease)
