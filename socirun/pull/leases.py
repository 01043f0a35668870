"""The lease a pull works under, and what happens to it when the pull ends.

Success: the image record now references everything, so the lease goes. Failure or Ctrl-C: snapshots were
already removed by the engine, but partially downloaded blobs are worth keeping so the next run resumes them;
they move to a small "resume" lease that expires like containerd's own lease-less ingests (24 h), and the pull
lease goes. A later successful pull of the same image drops the resume leases and the leases of socirun
processes that died (SIGKILL leaves no chance to clean up), so nothing lingers.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
from types import TracebackType

import psutil

from socirun.containerd.client import ContainerdClient

EXPIRE_AFTER = dt.timedelta(hours=24)
LABEL_IMAGE = "io.socirun/image"
LABEL_PID = "io.socirun/pid"
LABEL_PURPOSE = "io.socirun/purpose"
GC_EXPIRE = "containerd.io/gc.expire"


def _expiry() -> str:
    return (dt.datetime.now(dt.UTC) + EXPIRE_AFTER).strftime("%Y-%m-%dT%H:%M:%SZ")


class PullLease:
    def __init__(self, ctd: ContainerdClient, image: str) -> None:
        self.ctd = ctd
        self.image = image
        self.lease_id = ""
        self._ok = False
        self._ingests: set[str] = set()
        self._token: contextlib.AbstractContextManager[None] | None = None

    def track_ingest(self, ref: str) -> None:
        self._ingests.add(ref)

    def succeeded(self) -> None:
        self._ok = True

    async def __aenter__(self) -> PullLease:
        self.lease_id = await self.ctd.create_lease(
            {GC_EXPIRE: _expiry(), LABEL_IMAGE: self.image, LABEL_PID: str(os.getpid()), LABEL_PURPOSE: "pull"}
        )
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
            await self._keep_partial_ingests()
        # After a failure, collect what the pull wrote before returning, so no partial record outlives it.
        await self.ctd.delete_lease(self.lease_id, sync=not self._ok)
        if self._ok:
            await self._drop_stale_leases()

    async def _keep_partial_ingests(self) -> None:
        partial = [s.ref for s in await self.ctd.list_ingests() if s.ref in self._ingests and s.offset > 0]
        if not partial:
            return
        resume = await self.ctd.create_lease(
            {GC_EXPIRE: _expiry(), LABEL_IMAGE: self.image, LABEL_PURPOSE: "resume"}
        )
        for ref in partial:
            await self.ctd.add_lease_resource(resume, ref, "ingests")

    async def _drop_stale_leases(self) -> None:
        for lease in await self.ctd.list_leases_info():
            if lease.labels.get(LABEL_IMAGE) != self.image or lease.id == self.lease_id:
                continue
            purpose = lease.labels.get(LABEL_PURPOSE)
            pid = lease.labels.get(LABEL_PID, "")
            dead = purpose == "pull" and pid.isdigit() and not _alive(int(pid))
            if purpose == "resume" or dead:
                await self.ctd.delete_lease(lease.id)


def _alive(pid: int) -> bool:
    try:
        return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
