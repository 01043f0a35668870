"""--pull-mode parallel-stream: the in-order bytes the content writer gets, teed into socirun's own applier.

The parallel download already reassembles each blob in order for containerd's Content.Write. In this mode the
same bytes also go, through a `LayerTap` (a bounded queue: a slow applier holds the download back instead of
piling chunks up in memory), to `socirun.unpack.snapshot.apply_and_commit`, which unpacks the layer into its
prepared snapshot while it downloads. A layer can only be unpacked once its parent is committed, so whether a
layer is fed live is decided when its first byte is about to be written (`stream_live`); a layer that is not fed
live is only stored, and containerd's Diff.Apply unpacks it from the committed blob when its turn comes, as in
parallel mode.

With discard_unpacked_layers (containerd's CRI option of that name, SOCI's parallel mode's too) a layer fed live
goes to its applier only: no Content.Write at all, since the applier checks the blob's digest and the diffID
itself before it commits the snapshot. `discardable_blobs` says which blobs may be left out; whatever Diff.Apply
will read (a layer only stored, a blob two layers share, a layer whose applier gave up) is stored as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Literal

# The apply state of each layer index, as the live decision reads it.
#   waiting: not decided yet; live: fed to the applier as it downloads; stored: Diff.Apply from the blob later;
#   committed: its snapshot exists (committed in this pull, or present before it).
ApplyState = Literal["waiting", "live", "stored", "committed"]

# Chunks queued between the writer and the applier. The download's window already bounds the chunks in flight;
# these are the only bytes held beyond it, and only for the layer being applied: a live layer waiting for its
# turn queues nothing (its writer waits, holding its chunks in the window), so this is TAP_DEPTH chunks in all.
TAP_DEPTH = 2


def stream_live(index: int, states: Sequence[ApplyState], *, in_order: bool, resumed: bool,
                supported: bool, rebase: bool = False) -> bool:
    """Whether the blob first needed by layer `index` is unpacked from its bytes as they arrive.

    Live when every earlier layer is committed (the layer is at the head of the apply order), or, with the
    in-order chunk schedule, when no earlier layer is only stored (each is committed, live, or not yet started
    writing): its applier then waits for its turn and holds the download back meanwhile (back-pressure). That
    cannot deadlock because the in-order schedule gives this layer a window slot only once every earlier layer
    has launched all its chunks, so nothing earlier waits for this layer. Small layers finish their first chunk
    in any order, which is why an earlier layer that has not written yet does not count against this one. Any
    other schedule could give this layer the whole window while an earlier layer still needs slots, so there a
    layer whose parent is not committed yet is only stored; so is a layer behind a stored one (its Diff.Apply
    waits for a whole blob, and the download should not). A resumed ingest (the first bytes are in containerd
    already, out of reach of the applier) and a layer type the applier does not read are only stored.

    With `rebase` (parallel unpack: a layer is unpacked into a snapshot prepared without its parent, so its
    applier waits only for an unpack slot, never for an earlier layer's Diff.Apply) the in-order schedule makes a
    layer behind a stored one live as well: the slots go to live layers in layer order, a stored layer takes one
    only once its whole blob is in, and every earlier live layer has all its chunks launched, so each slot comes
    back without waiting for this layer.
    """
    if resumed or not supported:
        return False
    earlier = states[:index]
    if all(state == "committed" for state in earlier):
        return True
    return in_order and (rebase or all(state != "stored" for state in earlier))


def streaming_window(window: int, connections: int, appliers: int = 1) -> int:
    """The download's window (chunks it may hold) in a streaming pull with `appliers` layers unpacked at once. Each
    applier holds up to TAP_DEPTH queued chunks and the one it reads, whose window slots were given back when the
    writer handed them over: they come out of the window, so chunk memory stays within the configured window ×
    chunk_size as in parallel mode (measured before: peak RSS 305-313 MB streaming against 264-271 MB parallel,
    1.06 GB image, 16 × 8 MiB; with two appliers and one applier's share taken out, 321-331 MB). Never below one
    chunk per connection."""
    return max(connections, window - appliers * (TAP_DEPTH + 1))


def discardable_blobs(digests: Sequence[str]) -> frozenset[str]:
    """The layer blobs (the image's layer digests, in order) a discarding pull may leave out of the content store
    when they are fed live: those the image uses once. A blob two layers share is read live by the first only;
    the second is unpacked by Diff.Apply from the stored blob, so it is always stored."""
    return frozenset(d for d in digests if digests.count(d) == 1)


class TapFailedError(Exception):
    """The download feeding a tap failed or was cancelled; its own error says why (await the download)."""


class LayerTap:
    """One blob's in-order bytes, from its download (put, end, fail) to its applier (chunks, or detach)."""

    def __init__(self, depth: int = TAP_DEPTH) -> None:
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=max(1, depth))
        self._failed = False
        self._detached = False
        self._reading = asyncio.Event()  # set once the applier reads (or detaches)
        self.taken = False  # an applier is reading it (a second layer with the same blob applies from the store)

    @property
    def detached(self) -> bool:
        return self._detached

    async def put(self, data: bytes) -> None:
        """The next bytes; waits until the applier reads, and while the queue is full (the applier is behind)."""
        await self._reading.wait()
        if not self._detached and data:
            await self._queue.put(data)

    async def end(self) -> None:
        """Every byte was put."""
        await self._reading.wait()
        if not self._detached:
            await self._queue.put(None)

    def fail(self) -> None:
        """The download failed or was cancelled: the applier stops with TapFailedError (never waits)."""
        self._failed = True
        self._drain()
        self._queue.put_nowait(None)

    def detach(self) -> None:
        """The applier will not read (it fell back to Diff.Apply): drop what is queued and free the writer."""
        self._detached = True
        self._reading.set()
        self._drain()

    def _drain(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The bytes in order, until the end; TapFailedError when the download fails first."""
        self.taken = True
        self._reading.set()
        while True:
            item = await self._queue.get()
            if item is None:
                if self._failed:
                    raise TapFailedError("the layer's download stopped before its last byte")
                return
            yield item
