"""The standard pull path: registry → Content.Write → Snapshots.Prepare → Diff.Apply → Commit → image record.

Everything a pull creates lives under one lease until the image record references it
(https://github.com/containerd/containerd/blob/v1.6.20/docs/garbage-collection.md). Layers download concurrently
(bounded) and each is applied as soon as it and its parent are ready, so unpacking overlaps the transfers of later
layers. In parallel-stream mode a layer is unpacked by socirun's own applier from its bytes as they are written to
the content store, instead of by Diff.Apply once its blob is committed (socirun.pull.stream says which layers).
With discard_unpacked_layers such a layer's bytes go to socirun's applier only, and its blob is never stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from socirun import events as ev
from socirun.containerd.client import ContainerdClient
from socirun.containerd.errors import AlreadyExistsError, CommitMismatchError
from socirun.containerd.types import Mount
from socirun.containerd.writer import ContentWriter
from socirun.decide.facts import DEFAULT_SNAPSHOTTER, LOCAL_SNAPSHOTTERS
from socirun.decide.plan import Plan, downloads_before_prepare
from socirun.decide.transfer import TransferPlan, iec_size
from socirun.errors import DigestMismatchError, PullError
from socirun.oci import Descriptor, Platform, chain_ids
from socirun.pull import labels as lb
from socirun.pull.chunked import ChunkWriter, TransferBudget, download_chunked
from socirun.pull.leases import PullLease
from socirun.pull.remote import (
    Planner,
    classify,
    plan_events,
    planned_mode,
    soci_prepare_labels,
    soci_unpack_key,
    unexpected_deferral,
)
from socirun.pull.stream import (
    ApplyState,
    LayerTap,
    TapFailedError,
    discardable_blobs,
    stream_live,
    streaming_window,
)
from socirun.reference import ImageReference
from socirun.registry.client import RangeNotSupportedError, RegistryClient, ResolvedImage
from socirun.unpack.decompress import UnsupportedLayerError, check_media_type
from socirun.unpack.snapshot import apply_and_commit
from socirun.unpack.target import UnsupportedMountsError, bind_to_overlay

PROGRESS_INTERVAL_S = 0.1


@dataclass(frozen=True)
class PullRequest:
    reference: ImageReference
    platform: Platform
    # "standard": one stream per layer, `transfer.connections` at a time; "parallel": ranged chunks over
    # `transfer.connections` connections shared by all layers, at most `transfer.settings.window` in memory;
    # "parallel-stream": as parallel, each layer unpacked by socirun as its bytes arrive (local snapshotters).
    transfer: TransferPlan
    snapshotter: str = DEFAULT_SNAPSHOTTER
    expanded_from: str | None = None
    # Decides snapshotter and per-layer modes once the image is resolved (socirun.pull.remote.make_planner);
    # None: `snapshotter` as given, every layer downloaded by socirun.
    planner: Planner | None = None
    soci_index_digest: str = ""  # --soci-index-digest, passed to SOCI as a Prepare label


@dataclass(frozen=True)
class PullResult:
    image: ResolvedImage
    top_chain_id: str
    fetched: int
    elapsed: float
    snapshotter: str = ""  # where the image was unpacked (the plan may choose it: use this for the container)


class _Throttle:
    """At most one progress event per layer per PROGRESS_INTERVAL_S; the last one always goes out."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def due(self, key: str, now: float) -> bool:
        if now - self._last.get(key, 0.0) >= PROGRESS_INTERVAL_S:
            self._last[key] = now
            return True
        return False


class _Pull:
    def __init__(
        self, ctd: ContainerdClient, registry: RegistryClient, request: PullRequest, emit: ev.Emit
    ) -> None:
        self.ctd = ctd
        self.registry = registry
        self.request = request
        self.emit = emit
        self.snapshotter = request.snapshotter
        self.fetched = 0
        self._throttle = _Throttle()
        # The transfer this pull follows: the request's, completed for the snapshotter by the plan (or in run()
        # without one; TransferPlan.settle). Connections and chunking are the same before and after.
        self.transfer: TransferPlan = request.transfer
        transfer = self.transfer
        connections = max(1, transfer.connections)
        # Parallel modes' connections and memory (made by _set_budget once the snapshotter and the unpack count are
        # known: a streaming pull gives its appliers' chunks out of the window).
        self._budget: TransferBudget | None = None
        self._ranges_served = True  # False once the registry ignored a Range: standard streams from then on
        # In parallel mode the budget bounds connections and memory; a layer limit as well could hold back the
        # very layer the schedule waits for, so every layer may open its ingest at once.
        self._downloads = asyncio.Semaphore(1 << 16 if transfer.chunked else connections)
        self.lease: PullLease  # set once the image name is known
        self.plan: Plan | None = None  # set once the image is resolved (when the request has a planner)
        self._warned: set[str] = set()  # warnings already given in this pull
        # parallel-stream: each layer index's apply state, and per blob its tap (None: only stored), decided when
        # its first byte is about to be written.
        self._states: list[ApplyState] = []
        self._taps: dict[str, asyncio.Future[LayerTap | None]] = {}
        # discard_unpacked_layers: the blobs that may stay out of the store when fed live (set once resolved),
        # those whose applier gave up (Diff.Apply needs them stored), and those this pull left out.
        self._discardable: frozenset[str] = frozenset()
        self._must_store: set[str] = set()
        self._discarded: set[str] = set()
        # Layers unpacked at once where the snapshotter can rebase (decided once the snapshotter is known, by
        # TransferPlan.unpacks_at_once); 0: each layer is prepared on its committed parent, one after another.
        self._unpacks = 0

    @property
    def _streaming(self) -> bool:
        return self.transfer.mode == "parallel-stream" and self.snapshotter in LOCAL_SNAPSHOTTERS

    def _set_budget(self) -> None:
        transfer = self.transfer
        if not transfer.chunked:
            return
        connections = max(1, transfer.connections)
        window = transfer.settings.window
        if self._streaming:
            window = streaming_window(window, connections, appliers=max(1, self._unpacks))
        self._budget = TransferBudget(connections=connections, window=window, chunk_size=transfer.settings.chunk_size,
                                      schedule=transfer.settings.schedule)

    @property
    def _discarding(self) -> bool:
        return self.transfer.discards(self.snapshotter)

    # -- content -------------------------------------------------------------------------------------------

    async def _source_label(self, img: ResolvedImage, digest: str) -> dict[str, str]:
        info = await self.ctd.content_info(digest)
        existing = None
        if info is not None:
            existing = info.labels.get(f"{lb.DISTRIBUTION_SOURCE}.{img.source_host}")
        return lb.distribution_source_label(img.source_host, img.source_repository, existing)

    async def _store_small(self, img: ResolvedImage, desc: Descriptor, data: bytes, labels: dict[str, str]) -> None:
        labels = labels | await self._source_label(img, desc.digest)
        await self.ctd.write_blob(lb.ingest_ref(desc), desc.digest, data, labels)

    async def _store_metadata(self, img: ResolvedImage) -> None:
        """Index, manifest and config first: remote snapshotters read them from the store during Prepare."""
        await self._store_small(img, img.config, img.config_bytes, {})
        await self._store_small(img, img.manifest, img.manifest_bytes, lb.manifest_labels(img.config, img.layers))
        if img.index_bytes is not None:
            children = _index_children(img.index_bytes)
            await self._store_small(img, img.target, img.index_bytes, lb.index_labels(children))

    async def _download(self, img: ResolvedImage, layer: Descriptor) -> None:
        """Write one layer blob into the content store, resuming whatever an earlier run left behind."""
        try:
            async with self._downloads:
                written = await self._write_blob(img, layer)
        finally:
            if self._budget is not None:
                self._budget.settle(_schedule_index(img, layer))
        if written:
            self.emit(ev.LayerStateChanged(digest=layer.digest, state="downloaded"))

    async def _write_blob(self, img: ResolvedImage, layer: Descriptor) -> bool:
        """False when containerd already held the whole blob (or the blob was not stored: it says so itself)."""
        if layer.digest in self._discardable and await self._nothing_stored(layer):
            return await self._write_unless_discarded(img, layer)
        return await self._write_stored(img, layer)

    async def _write_stored(self, img: ResolvedImage, layer: Descriptor) -> bool:
        """Write the blob into the content store (the layer may be fed live as well); False when containerd
        already held it."""
        ref = lb.ingest_ref(layer)
        labels = await self._source_label(img, layer.digest)
        self.lease.track_ingest(ref)
        writer = await self.ctd.open_writer(ref, layer.digest, layer.size)
        try:
            offset = await writer.start()
            if writer.already_exists:
                await self.ctd.content_update_labels(layer.digest, labels)
                self.lease.track_blob(layer.digest)  # perhaps held only by an earlier run's resume lease
                self._progress(layer, layer.size, force=True)
                return False
            self.emit(ev.LayerStateChanged(digest=layer.digest, state="downloading",
                                           detail=_resume_detail(offset, layer.size)))
            self._progress(layer, offset, force=True)
            if offset < layer.size:
                try:
                    await self._copy(img, layer, writer, offset)
                    tap = self._decided_tap(layer.digest)
                    if tap is not None:
                        await tap.end()
                except BaseException:
                    tap = self._decided_tap(layer.digest)
                    if tap is not None:
                        tap.fail()
                    raise
            await self._commit(img, layer, writer, labels)
        finally:
            if self._streaming:
                self._decide_tap(layer.digest, None)  # no byte written here (or undecided): applied from the store
            await writer.close()
        return True

    async def _commit(self, img: ResolvedImage, layer: Descriptor, writer: ContentWriter,
                      labels: dict[str, str]) -> None:
        try:
            await writer.commit(labels)
        except CommitMismatchError:
            await self.ctd.abort_ingest(writer.ref)
            raise DigestMismatchError(
                f"layer {layer.digest} from {img.reference.domain}: the bytes received do not match "
                "that digest, so the registry's copy is corrupt; nothing was stored for it."
            ) from None
        self.lease.track_blob(layer.digest)  # a failure or Ctrl-C from here on keeps it for the rerun
        self._progress(layer, layer.size, force=True)

    async def _nothing_stored(self, layer: Descriptor) -> bool:
        """Neither the blob nor any byte of it is in the store (an ingest with bytes is resumed, and stored)."""
        if await self.ctd.content_info(layer.digest) is not None:
            return False
        status = await self.ctd.ingest_status(lb.ingest_ref(layer))
        return status is None or status.offset == 0

    async def _write_unless_discarded(self, img: ResolvedImage, layer: Descriptor) -> bool:
        """discard_unpacked_layers: the blob's bytes go to its applier only when it is fed live, and to
        containerd's ingest (opened at its first byte) only when they must be stored. True when it stored the
        blob; False when it left it out (it says so itself)."""
        writer = _DiscardingWriter(self, img, layer)
        self.emit(ev.LayerStateChanged(digest=layer.digest, state="downloading"))
        self._progress(layer, 0, force=True)
        try:
            try:
                await self._copy(img, layer, writer, 0, sink=writer.write)
                if writer.tap is not None:
                    await writer.tap.end()
            except _StoreAgain:
                pass  # handled below, once this attempt's writer is closed
            except BaseException:
                if writer.tap is not None:
                    writer.tap.fail()
                raise
            if writer.lost or (writer.ingest is None and writer.tap is None):
                # The applier gave up after reading bytes that were not stored (or no byte came at all, for an
                # empty blob): store the blob from its first byte, for Diff.Apply.
                return await self._write_stored(img, layer)
            if writer.ingest is not None:
                labels = await self._source_label(img, layer.digest)
                if writer.ingest.already_exists:  # another client stored it meanwhile
                    await self.ctd.content_update_labels(layer.digest, labels)
                    self.lease.track_blob(layer.digest)
                else:
                    await self._commit(img, layer, writer.ingest, labels)
                return True
        finally:
            self._decide_tap(layer.digest, None)  # no byte came: applied from the store (none is left out then)
            await writer.close()
        self._discarded.add(layer.digest)  # it stays so if the applier gives up later: _unpack stores it then
        self._progress(layer, layer.size, force=True)
        self.emit(ev.LayerStateChanged(digest=layer.digest, state="downloaded",
                                       detail="not stored (discard_unpacked_layers)"))
        return False

    async def _open_ingest(self, layer: Descriptor) -> ContentWriter:
        """discard_unpacked_layers: the blob's ingest, opened at its first byte to be stored (from offset 0)."""
        ref = lb.ingest_ref(layer)
        self.lease.track_ingest(ref)
        writer = await self.ctd.open_writer(ref, layer.digest, layer.size)
        if await writer.start() > 0 and not writer.already_exists:
            await writer.truncate()  # another client began it after our check; our bytes start at 0
        return writer

    async def _copy(self, img: ResolvedImage, layer: Descriptor, writer: ContentWriter | _DiscardingWriter,
                    offset: int, *, sink: ChunkWriter | None = None) -> None:
        """Stream the blob from `offset` into the open ingest (or `sink`); containerd checks the digest at commit
        (with discard_unpacked_layers, socirun's applier does for the bytes that are not stored)."""
        if sink is None:
            assert isinstance(writer, ContentWriter)
            sink = self._sink(img, layer, writer, offset)
        if self._budget is not None and self._ranges_served:
            try:
                await self._copy_chunked(img, layer, sink, offset)
                return
            except RangeNotSupportedError as err:
                await writer.flush()
                offset = writer.offset
                self._range_fallback(layer, str(err))
        if self._budget is not None:
            self._budget.settle(_schedule_index(img, layer))  # one stream: it needs no slot, so hold no place
        received = offset
        async with contextlib.aclosing(self.registry.fetch_blob(img.reference, layer, offset)) as stream:
            async for chunk in stream:
                received += len(chunk)
                if received > layer.size:
                    await self.ctd.abort_ingest(writer.ref)
                    raise DigestMismatchError(
                        f"layer {layer.digest} from {img.reference.domain} is larger than the "
                        f"{layer.size} bytes its manifest declares; the registry's copy is corrupt."
                    )
                await sink(chunk)
                self.fetched += len(chunk)
                self._progress(layer, received)

    def _sink(self, img: ResolvedImage, layer: Descriptor, writer: ContentWriter, offset: int) -> ChunkWriter:
        """Where the in-order bytes go: the content writer, and in parallel-stream mode the layer's tap too."""
        if not self._streaming:
            return writer.write
        tap: LayerTap | None = None
        decided = False

        async def write(data: bytes) -> None:
            nonlocal tap, decided
            if not decided:
                decided = True
                tap = self._decide_tap(layer.digest, self._live_tap(img, layer, resumed=offset > 0))
            await writer.write(data)
            if tap is not None:
                await tap.put(data)  # waits while the applier is behind or not yet at this layer

        return write

    def _live_tap(self, img: ResolvedImage, layer: Descriptor, *, resumed: bool) -> LayerTap | None:
        index = _schedule_index(img, layer)
        try:
            check_media_type(layer.media_type)
            supported = True
        except UnsupportedLayerError:
            supported = False
        in_order = self._budget is None or self._budget.schedule == "in-order"
        if not stream_live(index, self._states, in_order=in_order, resumed=resumed, supported=supported,
                           rebase=self._unpacks > 0):
            self._states[index] = "stored"
            return None
        self._states[index] = "live"
        return LayerTap()

    def _tap_future(self, digest: str) -> asyncio.Future[LayerTap | None]:
        if digest not in self._taps:
            self._taps[digest] = asyncio.get_running_loop().create_future()
        return self._taps[digest]

    def _decide_tap(self, digest: str, tap: LayerTap | None) -> LayerTap | None:
        """Record the blob's tap (the first decision stands) and return the one recorded."""
        future = self._tap_future(digest)
        if not future.done():
            future.set_result(tap)
        return future.result()

    def _decided_tap(self, digest: str) -> LayerTap | None:
        future = self._taps.get(digest)
        return future.result() if future is not None and future.done() else None

    async def _copy_chunked(self, img: ResolvedImage, layer: Descriptor, sink: ChunkWriter, offset: int) -> None:
        """Parallel mode: bounded ranged chunks over the pull's shared connections, written in order."""
        assert self._budget is not None

        async def fetch(start: int, end_inclusive: int) -> bytes:
            return await self.registry.fetch_range(img.reference, layer, start, end_inclusive)

        written = 0

        def on_written(position: int, total_written: int) -> None:
            nonlocal written
            self.fetched += total_written - written
            written = total_written
            self._progress(layer, position)

        await download_chunked(fetch, sink, size=layer.size, offset=offset, budget=self._budget,
                               layer_index=_schedule_index(img, layer), on_written=on_written,
                               what=f"layer {layer.digest}")

    def _range_fallback(self, layer: Descriptor, why: str) -> None:
        """The registry ignores Range: this and every later layer of the pull use one stream each."""
        if self._ranges_served:  # say it once, not once per layer
            self._ranges_served = False
            self.emit(ev.WarningMessage(message=f"{why}; falling back to one stream per layer (standard mode)"))
        self.emit(ev.LayerStateChanged(digest=layer.digest, state="downloading",
                                       detail="registry does not serve byte ranges: one stream"))

    def _progress(self, layer: Descriptor, downloaded: int, *, force: bool = False, applied: int = 0) -> None:
        if force or self._throttle.due(layer.digest, time.monotonic()):
            self.emit(ev.LayerProgress(digest=layer.digest, downloaded=downloaded, total=layer.size,
                                       applied=applied))

    # -- snapshots -----------------------------------------------------------------------------------------

    def _unpack_key(self, img: ResolvedImage, chain_id: str) -> str:
        if self.snapshotter in LOCAL_SNAPSHOTTERS:
            return lb.unpack_key(chain_id)
        return soci_unpack_key(chain_id, img.manifest.digest)  # SOCI's log then names the manifest

    async def _prepare(self, img: ResolvedImage, parent: str, labels: dict[str, str],
                       chain_id: str) -> tuple[str, list[Mount] | None]:
        """Prepare the extraction snapshot: its key and mounts; mounts None when the target exists (another
        pull, or a remote snapshotter committed it itself)."""
        for _attempt in range(3):
            key = self._unpack_key(img, chain_id)
            try:
                return key, await self.ctd.snapshot_prepare(self.snapshotter, key, parent, labels)
            except AlreadyExistsError:
                if await self.ctd.snapshot_stat(self.snapshotter, chain_id) is not None:
                    return key, None
        raise PullError(f"could not prepare a snapshot for layer {chain_id}: its key kept colliding")

    def _warn_once(self, message: str) -> None:
        if message and message not in self._warned:
            self._warned.add(message)
            self.emit(ev.WarningMessage(message=message))

    async def _unpack(self, img: ResolvedImage, index: int, chain: list[str],
                      downloads: dict[str, asyncio.Task[None]]) -> None:
        """Prepare, then (only when the snapshotter returned mounts) download, apply and commit this layer.

        A local snapshotter's layer is downloaded before its Prepare, as before, unless parallel-stream feeds it
        live: then it is prepared at once and unpacked as its bytes arrive. A remote snapshotter (SOCI)
        is asked first: ALREADY_EXISTS means it committed the layer itself (lazily, whole, or in parallel —
        the snapshot's labels say which); mounts mean it deferred, and socirun downloads this layer only."""
        layer, chain_id = img.layers[index], chain[index]
        parent = chain[index - 1] if index else ""
        labels = {lb.SNAPSHOT_REF: chain_id}
        remote = self.snapshotter not in LOCAL_SNAPSHOTTERS
        tap: LayerTap | None = None
        if remote:
            labels |= soci_prepare_labels(str(img.reference), img.manifest.digest, img.layers, index,
                                          self.request.soci_index_digest)
        elif self._streaming:
            tap = await self._live_or_downloaded(img, layer, downloads)
        else:
            await self._ensure_download(img, layer, downloads)
        key, mounts = await self._prepare(img, parent, labels, chain_id)
        if mounts is not None and tap is not None:
            if await self._apply_live(img, index, key, mounts, labels, chain_id, tap, downloads):
                await self._layer_done(img, index)
                return
            # Fell back to Diff.Apply; an applier that had started removed its snapshot, so prepare again.
            if await self.ctd.snapshot_stat(self.snapshotter, key) is None:
                key, mounts = await self._prepare(img, parent, labels, chain_id)
        if mounts is None:
            if tap is not None:
                tap.detach()  # another pull committed this layer: the download only stores the blob
            info = await self.ctd.snapshot_stat(self.snapshotter, chain_id) if remote else None
            if info is None:
                self._committed(index)
                self.emit(ev.LayerStateChanged(digest=layer.digest, state="exists", detail="snapshot present"))
                return
            mode, detail = classify(info.labels)
            self.emit(ev.LayerClassified(digest=layer.digest, mode=mode, detail=detail))
            # A snapshot a client committed (a concurrent pull) was there already: nothing was done for it here.
            self.emit(ev.LayerStateChanged(digest=layer.digest, state="exists" if mode == "cached" else "done",
                                           detail=detail))
            return
        if remote:
            self._warn_once(unexpected_deferral(self.plan, index))
            self.emit(ev.LayerClassified(digest=layer.digest, mode="standard",
                                         detail=f"{self.snapshotter} deferred it: socirun downloads it"))
        await self._apply_stored(img, index, key, mounts, labels, chain_id, downloads)

    async def _layer_done(self, img: ResolvedImage, index: int) -> None:
        layer = img.layers[index]
        if layer.digest not in self._discarded:  # a blob left out of the store has no labels to set
            await self.ctd.content_update_labels(layer.digest, {lb.UNCOMPRESSED: img.diff_ids[index]})
        self._committed(index)
        self._progress(layer, layer.size, force=True, applied=layer.size)
        self.emit(ev.LayerStateChanged(digest=layer.digest, state="done"))

    def _committed(self, index: int) -> None:
        if self._states:
            self._states[index] = "committed"

    async def _live_or_downloaded(self, img: ResolvedImage, layer: Descriptor,
                                  downloads: dict[str, asyncio.Task[None]]) -> LayerTap | None:
        """parallel-stream: the layer's tap when its bytes are fed live (its download may still be running);
        otherwise None once its blob is committed, for Diff.Apply."""
        tap = await self._tap_decided(img, layer, downloads)
        if tap is None:
            # Only stored (or an earlier layer with the same blob read the tap): applied from the store.
            await downloads[layer.digest]
        return tap

    async def _apply_live(self, img: ResolvedImage, index: int, key: str, mounts: list[Mount],
                          labels: dict[str, str], chain_id: str, tap: LayerTap,
                          downloads: dict[str, asyncio.Task[None]], parent: str = "",
                          before_commit: Callable[[], Awaitable[None]] | None = None) -> bool:
        """Unpack the layer from its tap and commit it (True); False when socirun's applier cannot write into
        these mounts or this layer, so Diff.Apply must (said once in a warning). Any other failure removes the
        snapshot (apply_and_commit) and raises; the blob stays in the store under the pull's lease."""
        layer = img.layers[index]
        task = downloads[layer.digest]
        self.emit(ev.LayerStateChanged(digest=layer.digest, state="unpacking", detail="as its bytes arrive"))
        try:
            await apply_and_commit(self.ctd, self.snapshotter, key=key, name=chain_id, labels=labels,
                                   mounts=mounts, layer=layer, diff_id=img.diff_ids[index], chunks=tap.chunks(),
                                   parent=parent, before_commit=before_commit)
        except (UnsupportedMountsError, UnsupportedLayerError) as err:
            self._must_store.add(layer.digest)  # Diff.Apply reads the blob: it is stored even when discarding
            tap.detach()
            self._warn_once(f"socirun's streaming applier: {err}; containerd's Diff.Apply unpacks such layers "
                            "from the stored blob instead")
            return False
        except TapFailedError:
            await task  # the download's own error is the one to report
            raise
        await task  # the blob is committed to the store (its label is set next)
        return True

    async def _ensure_download(self, img: ResolvedImage, layer: Descriptor,
                               downloads: dict[str, asyncio.Task[None]]) -> None:
        if layer.digest not in downloads:
            downloads[layer.digest] = asyncio.create_task(self._download(img, layer))
        await downloads[layer.digest]

    # -- parallel unpack (snapshotters that can rebase) -----------------------------------------------------

    async def _unpack_layers(self, img: ResolvedImage, chain: list[str], present: list[bool],
                             downloads: dict[str, asyncio.Task[None]]) -> None:
        """Every layer not present, unpacked and committed in chain order: one after another on its committed
        parent, or, where the snapshotter can rebase, up to `_unpacks` at once (containerd 2.x's unpacker does
        the same, core/unpack/unpacker.go): each prepared without a parent, unpacked as soon as its bytes are
        there, and committed, with its parent, once the layer below is committed.

        In a streaming pull the unpack slots go to the layers in layer order (this loop), each before its first
        byte decides whether it is fed live, and a layer holding one is attached to the download's budget, which
        then feeds the attached layers side by side (TransferBudget.attach): that keeps the in-order schedule's
        progress argument (socirun.pull.stream.stream_live). A layer that is only stored gives its slot back and
        takes one again inside its task, once its blob is in."""
        if self._unpacks <= 0:
            for i in range(len(img.layers)):
                if not present[i]:
                    await self._unpack(img, i, chain, downloads)
            return
        slots = asyncio.Semaphore(self._unpacks)
        handed: set[str] = set()  # blobs whose tap went to a layer (a second layer with it reads the store)
        try:
            async with asyncio.TaskGroup() as group:
                below: asyncio.Task[None] | None = None
                for i, layer in enumerate(img.layers):
                    if present[i]:
                        continue
                    tap = None
                    if self._streaming:
                        await slots.acquire()
                        self._attach(img, layer)
                        tap = await self._tap_decided(img, layer, downloads)
                        if tap is not None and layer.digest in handed:
                            tap = None
                        if tap is None:
                            self._give_back(img, layer, slots)
                        else:
                            handed.add(layer.digest)  # its slot is released by the layer's task
                    below = group.create_task(self._unpack_rebased(img, i, chain, downloads, tap, slots, below))
        except BaseExceptionGroup as errors:
            # The first failure; the layers above it failed with it (they wait for it) or were cancelled.
            raise errors.exceptions[0] from None

    def _attach(self, img: ResolvedImage, layer: Descriptor) -> None:
        if self._budget is not None:
            self._budget.attach(_schedule_index(img, layer))

    def _give_back(self, img: ResolvedImage, layer: Descriptor, slots: asyncio.Semaphore) -> None:
        """The layer's unpack slot is free again: it leaves the attached layers and another layer may take it."""
        if self._budget is not None:
            self._budget.detach(_schedule_index(img, layer))
        slots.release()

    async def _tap_decided(self, img: ResolvedImage, layer: Descriptor,
                           downloads: dict[str, asyncio.Task[None]]) -> LayerTap | None:
        """The layer's tap as soon as its download decides, without waiting for the blob; None when it is only
        stored or an earlier layer with the same blob took the tap. A tap is returned even when its download
        already ended: a small blob's bytes all fit in the tap's queue."""
        if layer.digest not in downloads:
            downloads[layer.digest] = asyncio.create_task(self._download(img, layer))
        decision = self._tap_future(layer.digest)
        waiters: set[asyncio.Future[Any]] = {downloads[layer.digest], decision}
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        tap = decision.result() if decision.done() else None
        return None if tap is None or tap.taken else tap

    async def _unpack_rebased(self, img: ResolvedImage, index: int, chain: list[str],
                              downloads: dict[str, asyncio.Task[None]], tap: LayerTap | None,
                              slots: asyncio.Semaphore, below: asyncio.Task[None] | None) -> None:
        """One layer of a parallel unpack. `tap`: fed live, and its unpack slot is already held; None: unpacked
        by Diff.Apply once its blob is stored. `below`: the task of the layer under it (None: the layer under it
        was committed before the pull, or this is the first layer)."""
        layer, chain_id = img.layers[index], chain[index]
        parent = chain[index - 1] if index else ""
        labels = {lb.SNAPSHOT_REF: chain_id}
        holding = tap is not None

        async def turn_to_commit() -> None:
            nonlocal holding
            if holding:
                holding = False
                self._give_back(img, layer, slots)
            if below is not None:
                await below  # its failure is this layer's too: nothing above a missing layer is committed

        try:
            if tap is None:
                await self._ensure_download(img, layer, downloads)
                await slots.acquire()
                holding = True
            key, mounts = await self._prepare(img, "", labels, chain_id)
            if mounts is not None and tap is not None:
                target = bind_to_overlay(mounts) if parent else mounts
                if await self._apply_live(img, index, key, target, labels, chain_id, tap, downloads,
                                          parent=parent, before_commit=turn_to_commit):
                    await self._layer_done(img, index)
                    return
                if await self.ctd.snapshot_stat(self.snapshotter, key) is None:
                    key, mounts = await self._prepare(img, "", labels, chain_id)
            if mounts is None:  # another pull committed this layer
                if tap is not None:
                    tap.detach()
                await turn_to_commit()
                self._committed(index)
                self.emit(ev.LayerStateChanged(digest=layer.digest, state="exists", detail="snapshot present"))
                return
            await self._apply_stored(img, index, key, mounts, labels, chain_id, downloads,
                                     parent=parent, before_commit=turn_to_commit)
        finally:
            if holding:
                self._give_back(img, layer, slots)

    async def _apply_stored(self, img: ResolvedImage, index: int, key: str, mounts: list[Mount],
                            labels: dict[str, str], chain_id: str, downloads: dict[str, asyncio.Task[None]],
                            *, parent: str = "", before_commit: Callable[[], Awaitable[None]] | None = None) -> None:
        """Diff.Apply of the stored blob into the prepared snapshot `key`, then Commit as `chain_id`. `parent`: the
        snapshot was prepared without it (parallel unpack), so its mounts get overlay's whiteouts (bind_to_overlay)
        and the Commit names it, after `before_commit` (which waits for the layer below)."""
        layer = img.layers[index]
        committed = False
        try:
            await self._ensure_download(img, layer, downloads)
            if layer.digest in self._discarded:
                # Its applier gave up once every byte had gone to it: Diff.Apply reads the blob, so store it now.
                self._discarded.discard(layer.digest)
                await self._write_stored(img, layer)
            self.emit(ev.LayerStateChanged(digest=layer.digest, state="unpacking"))
            applied = await self.ctd.diff_apply(layer, bind_to_overlay(mounts) if parent else mounts)
            if applied.digest != img.diff_ids[index]:
                raise DigestMismatchError(
                    f"layer {layer.digest} unpacked to {applied.digest}, but the image config says "
                    f"{img.diff_ids[index]}; the image is inconsistent."
                )
            if before_commit is not None:
                await before_commit()
            try:
                await self.ctd.snapshot_commit(self.snapshotter, chain_id, key, labels, parent)
                committed = True
            except AlreadyExistsError:
                pass  # a concurrent pull committed the same chainID: the layer is there all the same
        finally:
            if not committed:
                # No half-written snapshot survives a failure or a Ctrl-C.
                await _shielded(self.ctd.snapshot_remove(self.snapshotter, key))
        await self._layer_done(img, index)

    # -- the whole pull ------------------------------------------------------------------------------------

    async def run(self) -> PullResult:
        started = time.monotonic()
        req = self.request
        self.emit(ev.Resolving(reference=str(req.reference), expanded_from=req.expanded_from))
        img = await self.registry.resolve(req.reference, req.platform)
        total = sum(layer.size for layer in img.layers)
        self.emit(ev.ImageResolved(reference=str(img.reference), digest=img.target.digest,
                                   manifest_digest=img.manifest.digest, platform=str(img.platform),
                                   layer_count=len(img.layers), total_size=total))
        plan = await req.planner(self.ctd, self.registry, img) if req.planner is not None else None
        self.plan = plan
        if plan is None:
            if self.snapshotter in LOCAL_SNAPSHOTTERS:
                capabilities = await self.ctd.snapshotter_capabilities(self.snapshotter)
                self.transfer = req.transfer.settle(self.snapshotter, capabilities)
                self._unpacks = self.transfer.unpacks_at_once(self.snapshotter, capabilities)
            self.emit(ev.PlanMade(mode=self.transfer.mode, snapshotter=self.snapshotter,
                                  reasons=(*self.transfer.reasons, self.transfer.how(self.snapshotter, self._unpacks))))
        else:
            self.snapshotter = plan.snapshotter
            if plan.transfer is not None:
                self.transfer = plan.transfer
            self._unpacks = plan.unpacks
            for event in plan_events(plan):
                self.emit(event)
            if plan.blocker:
                raise PullError(f"{plan.blocker}; " + "; ".join(plan.fixes or ("see `socirun doctor`",)))
        self._set_budget()
        chain = chain_ids(list(img.diff_ids))
        present = [await self.ctd.snapshot_stat(self.snapshotter, cid) is not None for cid in chain]
        self._states = ["committed" if here else "waiting" for here in present]
        if self.transfer.asked == "parallel-stream" and not self._streaming:
            self._warn_once(f"--pull-mode parallel-stream streams layers into local snapshotters only; with "
                            f"{self.snapshotter} the layers socirun downloads are unpacked by Diff.Apply")
        if self.transfer.discard_unpacked_layers and not self._discarding:
            self._warn_once(self.transfer.discard_note(self.snapshotter))  # every blob is stored: say so, once
        if self._discarding:
            self._discardable = discardable_blobs([layer.digest for layer in img.layers])
        for i, layer in enumerate(img.layers):
            self.emit(ev.LayerPlanned(index=i, digest=layer.digest, media_type=layer.media_type,
                                      size=layer.size, mode=planned_mode(plan, i, present[i], self.transfer.mode)))

        async with PullLease(self.ctd, str(img.reference)) as lease:
            self.lease = lease
            await self._store_metadata(img)
            for i, layer in enumerate(img.layers):
                if present[i]:
                    self.emit(ev.LayerStateChanged(digest=layer.digest, state="exists",
                                                   detail="snapshot present"))
                else:
                    self.emit(ev.LayerStateChanged(digest=layer.digest, state="waiting"))
            downloads: dict[str, asyncio.Task[None]] = {}
            try:
                # Up front only what socirun will surely download: with a remote snapshotter, layers the plan
                # expects it to take (lazily, whole or in parallel) stay untouched unless it defers them.
                upfront = [i for i in range(len(img.layers))
                           if not present[i] and downloads_before_prepare(plan, i, self.snapshotter)]
                if self._budget is not None:
                    for i in upfront:  # all announced before any asks, so the schedule holds from the start
                        self._budget.expect(_schedule_index(img, img.layers[i]), img.layers[i].size)
                for i in upfront:
                    layer = img.layers[i]
                    if layer.digest not in downloads:
                        downloads[layer.digest] = asyncio.create_task(self._download(img, layer))
                await self._unpack_layers(img, chain, present, downloads)
                # A layer another pull committed meanwhile returns before its own download ends (its tap is
                # detached, the download only stores the blob): the image is recorded only once every blob this
                # pull fetches is in the store, so no ingest is cut off when the process exits.
                await asyncio.gather(*downloads.values())
            except BaseException:
                for task in downloads.values():
                    task.cancel()
                await asyncio.gather(*downloads.values(), return_exceptions=True)
                raise
            await self.ctd.content_update_labels(img.config.digest,
                                                 lb.snapshot_gc_label(self.snapshotter, chain[-1]))
            await self.ctd.image_create_or_update(str(img.reference), img.target)
            lease.succeeded()
        elapsed = time.monotonic() - started
        self.emit(ev.PullFinished(reference=str(img.reference), manifest_digest=img.manifest.digest,
                                  snapshotter=self.snapshotter,
                                  mode=plan.mode if plan is not None else self.transfer.mode,
                                  fetched=self.fetched,
                                  total_size=total, elapsed=elapsed))
        return PullResult(image=img, top_chain_id=chain[-1], fetched=self.fetched, elapsed=elapsed,
                          snapshotter=self.snapshotter)


class _StoreAgain(Exception):  # a signal, not an error: the blob is fetched again into the store
    """discard_unpacked_layers: the applier gave up after reading bytes that were not stored."""


class _DiscardingWriter:
    """discard_unpacked_layers: where one blob's in-order bytes go. Fed live, to its tap only; only stored (the
    live decision said so at the first byte), to containerd's ingest, opened then. When the applier gives up
    (Diff.Apply will read the blob) before it read a byte, the bytes go to the ingest from then on; after, the
    bytes it read are stored nowhere, so the download stops (`_StoreAgain`) and the blob is fetched again.
    `offset` counts the bytes handed over, as a ContentWriter's does, for a resumed one-stream fallback."""

    def __init__(self, pull: _Pull, img: ResolvedImage, layer: Descriptor) -> None:
        self._pull = pull
        self._img = img
        self._layer = layer
        self.ref = lb.ingest_ref(layer)
        self.offset = 0
        self.ingest: ContentWriter | None = None
        self.tap: LayerTap | None = None
        self.lost = False  # bytes the applier read are stored nowhere, and Diff.Apply needs the blob
        self._decided = False
        self._fed = 0  # bytes the tap took while the applier was still reading

    async def write(self, data: bytes) -> None:
        pull, digest = self._pull, self._layer.digest
        if not self._decided:
            self._decided = True
            self.tap = pull._decide_tap(digest, pull._live_tap(self._img, self._layer, resumed=False))
        self.offset += len(data)
        if self.tap is not None and self.ingest is None:
            await self.tap.put(data)  # waits while the applier is behind or not yet at this layer
            if not self.tap.detached:
                self._fed += len(data)
                return
            if digest not in pull._must_store:
                return  # another pull committed the layer: nothing needs these bytes
            if self._fed:
                self.lost = True
                raise _StoreAgain
        if self.ingest is None:
            self.ingest = await pull._open_ingest(self._layer)
        if not self.ingest.already_exists:
            await self.ingest.write(data)

    async def flush(self) -> None:
        if self.ingest is not None and not self.ingest.already_exists:
            await self.ingest.flush()

    async def close(self) -> None:
        if self.ingest is not None:
            await self.ingest.close()


def _schedule_index(img: ResolvedImage, layer: Descriptor) -> int:
    """The layer's place in the chunk schedule. A blob that appears twice in an image is downloaded once, so
    both places use the first index, the one its download is announced, fetched and settled under."""
    return img.layers.index(layer)


def _resume_detail(offset: int, size: int) -> str:
    if offset == 0:
        return ""
    if offset >= size:
        return "all bytes already in containerd's store"
    return f"resuming at {iec_size(offset)} of {iec_size(size)}"  # humane: the faces show it as it is


def _index_children(index_bytes: bytes) -> list[Descriptor]:
    doc = json.loads(index_bytes)
    return [Descriptor.from_json(m) for m in doc.get("manifests", [])]


async def _shielded(aw: Awaitable[None]) -> None:
    """Run cleanup to completion even when the surrounding task is being cancelled."""
    task = asyncio.ensure_future(aw)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise
    except Exception:
        pass  # cleanup is best effort; the original error is what the user needs to see


async def pull_image(
    ctd: ContainerdClient, registry: RegistryClient, request: PullRequest, emit: ev.Emit
) -> PullResult:
    """Pull `request.reference` into containerd and unpack it for `request.snapshotter`."""
    return await _Pull(ctd, registry, request, emit).run()

