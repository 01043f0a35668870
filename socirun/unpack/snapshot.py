"""One layer streamed into a prepared snapshot and committed only when both digests match (the containerd side).

The caller prepares the snapshot (it owns keys, labels and retries, as the pull engine does) and hands over the
mounts; this applies the chunks as they come and commits, or removes the snapshot on any failure or cancellation,
so no partial layer is ever committed. Mounts it cannot write into raise UnsupportedMountsError before anything is
written, with the snapshot left in place for the caller's Diff.Apply.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping, Sequence

from socirun.containerd.client import ContainerdClient
from socirun.containerd.errors import AlreadyExistsError
from socirun.containerd.types import Mount
from socirun.oci import Descriptor
from socirun.unpack.apply import Applied, LayerApplier
from socirun.unpack.target import apply_target


async def apply_and_commit(ctd: ContainerdClient, snapshotter: str, *, key: str, name: str,
                           labels: Mapping[str, str], mounts: Sequence[Mount], layer: Descriptor, diff_id: str,
                           chunks: AsyncIterable[bytes], parent: str = "",
                           before_commit: Callable[[], Awaitable[None]] | None = None) -> Applied:
    """Unpack `chunks` (the blob's compressed bytes, in order) into the active snapshot `key`, then commit it as
    `name`. The file work runs in a worker thread, chunk by chunk, so the event loop keeps serving downloads.

    For a snapshot prepared without its parent (parallel unpack, snapshotters with the "rebase" capability),
    `before_commit` runs once the layer is unpacked and checked (it waits until the parent is committed) and
    `parent` is given to the Commit."""
    applier = LayerApplier(apply_target(mounts), layer)
    committed = False
    try:
        async for chunk in chunks:
            await asyncio.to_thread(applier.feed, chunk)
        applied = await asyncio.to_thread(applier.finish, diff_id)
        if before_commit is not None:
            await before_commit()
        # ALREADY_EXISTS: a concurrent pull committed the same chain; the layer is there all the same, and this
        # active snapshot goes (below), as in the pull engine.
        with contextlib.suppress(AlreadyExistsError):
            await ctd.snapshot_commit(snapshotter, name, key, labels, parent)
            committed = True
        return applied
    finally:
        applier.close()
        if not committed:
            # Shielded: a Ctrl-C during the unpack must still not leave a half-written snapshot behind.
            with contextlib.suppress(Exception):
                await asyncio.shield(ctd.snapshot_remove(snapshotter, key))
