"""The SOCI emulator's Snapshots gRPC service: SOCI's Prepare outcomes
(https://github.com/awslabs/soci-snapshotter/blob/v0.15.0/snapshot/snapshot.go) over a real
overlay/bind snapshot store.

Prepare with the target label `containerd.io/snapshot.ref` and the `cri.*` labels:
- `[pull_modes.parallel_pull_unpack] enable = true` → the emulator downloads and unpacks the layer itself
  (starting this and every later layer of the image, a few at a time), commits under the target, answers
  ALREADY_EXISTS;
- else it looks for a SOCI index once per image: the explicit `…/soci.index.digest` label, the v2 manifest
  annotation (manifest fetched from the registry), the v1 referrers API, then the referrers tag;
  - layer with a zTOC (and ≥ `[snapshotter] min_layer_size`) → "lazy": the snapshot is committed at once
    with `containerd.io/snapshot/remote`, and a background worker fills its directory from 4 MiB ranged
    registry reads, span by span;
  - layer without a zTOC → "local": fetched whole and unpacked before answering;
  - no index → parallel when `experimental_parallel_pull_as_fallback = true`, else defer: an ordinary active
    snapshot whose mounts are returned.
Every other Prepare is an ordinary snapshot. The parallel and local paths read the manifest from containerd's
content store, like SOCI, so a client that did not store it first fails here as it would there.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from google.protobuf import empty_pb2, timestamp_pb2  # type: ignore[import-untyped]

from socirun.containerd.api.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
from socirun.containerd.api.types import mount_pb2
from socirun.containerd.client import ContainerdClient
from socirun.decide.facts import SociConfig
from socirun.errors import SocirunError
from socirun.oci import OCI_MANIFEST, Descriptor, layer_compression
from socirun.pull import labels as lb
from socirun.reference import parse_reference
from socirun.registry.client import RegistryClient
from socirun.sandbox.soci_emulator.observe import Metrics, log, write_state_file
from socirun.sandbox.soci_emulator.store import NotFound, Snap, Store, StoreError
from socirun.sandbox.soci_emulator.unpack import apply_tar
from socirun.soci import constants as c
from socirun.soci.probe import referrers_tag, v1_referrer, v2_index_digest, ztoc_layers

NAMESPACE_HEADER = "containerd-namespace"
_KINDS = {"active": snapshots_pb2.ACTIVE, "committed": snapshots_pb2.COMMITTED, "view": snapshots_pb2.VIEW}
_CODES = {"not_found": grpc.StatusCode.NOT_FOUND, "already_exists": grpc.StatusCode.ALREADY_EXISTS,
          "failed_precondition": grpc.StatusCode.FAILED_PRECONDITION}


@dataclass(frozen=True)
class EmulatorSettings:
    root: Path
    containerd_address: str
    config: SociConfig
    span_size: int = c.DEFAULT_SPAN_SIZE
    span_pace_s: float = 0.0  # pause after each background span (demo: make the fill watchable)
    silence_s: float = 0.0  # pause before a new image's background fill starts


@dataclass
class ImageContext:
    """What SOCI learns once per image (manifest digest): its index and the layers' descriptors."""

    index_digest: str = ""
    index_kind: str = ""
    ztocs: frozenset[str] = frozenset()
    layers: dict[str, Descriptor] = field(default_factory=dict)
    error: str = ""


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class SpanReader(io.RawIOBase):
    """A blocking file over a registry blob that fetches span after span with ranged reads (on the service's
    event loop) and reports each one: the background fetcher's byte source.

    The last span is reported only by `report_last_span`, once the caller has written what it read: with real
    SOCI a layer whose spans are all fetched is readable at once, so the emulator must not say so before its
    files are complete on disk."""

    def __init__(self, emu: SociEmulator, ref: str, desc: Descriptor, on_span: Any, stop: threading.Event) -> None:
        super().__init__()
        self.emu, self.ref, self.desc, self.on_span, self.stop = emu, ref, desc, on_span, stop
        self.pos = 0
        self.span_id = 0
        self.buf = b""
        self.last_span: tuple[int, int] | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if not self.buf:
            if self.pos >= self.desc.size or self.emu.stopping.is_set() or self.stop.is_set():
                return 0
            end = min(self.desc.size, self.pos + self.emu.settings.span_size) - 1
            log("debug", c.LOG_FETCHING_SPAN, layer=self.desc.digest, spanId=self.span_id)
            future = asyncio.run_coroutine_threadsafe(
                self.emu.registry.fetch_range(parse_reference(self.ref), self.desc, self.pos, end), self.emu.loop)
            self.buf = future.result()
            self.pos = end + 1
            if self.pos >= self.desc.size:
                self.last_span = (self.span_id, len(self.buf))
            else:
                self.on_span(self.span_id, len(self.buf))
            self.span_id += 1
            if self.emu.settings.span_pace_s:
                self.stop.wait(self.emu.settings.span_pace_s)
        n = min(len(b), len(self.buf))
        b[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        return n

    def report_last_span(self) -> None:
        if self.last_span is not None:
            self.on_span(*self.last_span)
            self.last_span = None


class SociEmulator(snapshots_pb2_grpc.SnapshotsServicer):  # type: ignore[misc]
    def __init__(self, settings: EmulatorSettings, registry: RegistryClient, loop: asyncio.AbstractEventLoop):
        self.settings = settings
        self.config = settings.config
        self.store = Store(settings.root)
        self.registry = registry
        self.loop = loop
        self.metrics = Metrics()
        self.stopping = threading.Event()
        self._contexts: dict[str, asyncio.Future[ImageContext]] = {}
        self._downloads: dict[str, asyncio.Task[Path]] = {}
        self._download_slots = asyncio.Semaphore(max(1, self.config.max_concurrent_downloads_per_image))
        self._clients: dict[str, ContainerdClient] = {}
        self._fill_stops: dict[str, threading.Event] = {}  # snapshot key → stops its background fill

    # -- helpers -------------------------------------------------------------------------------------------

    @staticmethod
    def _namespace(context: Any) -> str:
        for key, value in context.invocation_metadata() or ():
            if key == NAMESPACE_HEADER:
                return str(value)
        return ""

    async def _ctd(self, namespace: str) -> ContainerdClient:
        if namespace not in self._clients:
            self._clients[namespace] = await ContainerdClient.connect(self.settings.containerd_address, namespace)
        return self._clients[namespace]

    @staticmethod
    def _info(snap: Snap) -> Any:
        def ts(t: float) -> Any:
            stamp = timestamp_pb2.Timestamp()
            stamp.FromNanoseconds(int(t * 1e9))
            return stamp

        return snapshots_pb2.Info(name=snap.key, parent=snap.parent, kind=_KINDS[snap.kind],
                                  created_at=ts(snap.created), updated_at=ts(snap.updated), labels=snap.labels)

    def _mounts(self, key: str) -> list[Any]:
        return [mount_pb2.Mount(type=m.type, source=m.source, options=list(m.options)) for m in self.store.mounts(key)]

    async def _run(self, context: Any, fn: Any) -> Any:
        try:
            return await fn()
        except _Abort as err:
            await context.abort(err.code, err.message)
        except StoreError as err:
            await context.abort(_CODES.get(err.code, grpc.StatusCode.UNKNOWN), str(err))
        except SocirunError as err:
            await context.abort(grpc.StatusCode.UNKNOWN, err.message)

    # -- image context: index discovery (SOCI's docs/soci-index-manifest-v2.md)
    # ----------------------------------------------

    async def _image_context(self, ref: str, manifest_digest: str, explicit: str) -> ImageContext:
        if manifest_digest not in self._contexts:
            self._contexts[manifest_digest] = asyncio.ensure_future(self._discover(ref, manifest_digest, explicit))
        return await asyncio.shield(self._contexts[manifest_digest])

    async def _discover(self, ref_text: str, manifest_digest: str, explicit: str) -> ImageContext:
        ctx = ImageContext()
        ref = parse_reference(ref_text)
        try:
            _, manifest = await self.registry.fetch_manifest(ref, manifest_digest)
            doc = json.loads(manifest)
            ctx.layers = {d["digest"]: Descriptor.from_json(d) for d in doc.get("layers") or []}
        except (SocirunError, ValueError, KeyError) as err:
            ctx.error = f"cannot fetch image manifest: {err}"
            return ctx
        digest, kind = "", ""
        if explicit:
            log("debug", "using provided soci index digest")
            digest, kind = explicit, "explicit"
        else:
            log("debug", "index digest not provided")
            if not self.config.v1_enable and not self.config.v2_enable:
                ctx.error = "all lazy pull modes are disabled"
                return ctx
            if self.config.v2_enable:
                log("debug", "checking for soci v2 index annotation")
                found = v2_index_digest(manifest)
                if found:
                    log("debug", "using soci v2 index annotation")
                    digest, kind = found, "v2"
                else:
                    log("debug", "soci v2 index annotation not found")
            else:
                log("debug", "soci v2 is disabled")
            if not digest and self.config.v1_enable:
                log("debug", "checking for soci v1 index via referrers API")
                referrers = await self.registry.fetch_referrers(ref, manifest_digest)
                if referrers is None:
                    with contextlib.suppress(SocirunError):
                        _, referrers = await self.registry.fetch_manifest(ref, referrers_tag(manifest_digest))
                found = v1_referrer(referrers) if referrers else None
                if found:
                    log("debug", "using soci v1 index via referrers API")
                    digest, kind = found, "v1"
                else:
                    log("debug", "soci v1 referrers not found")
            elif not digest:
                log("debug", "soci v1 is disabled")
        if not digest:
            ctx.error = "not found"
            return ctx
        log("info", "fetching SOCI artifacts using index descriptor", digest=digest)
        log("info", "fetching SOCI index from remote registry", digest=digest)
        try:
            _, index = await self.registry.fetch_manifest(ref, digest, accept=f"{OCI_MANIFEST}, */*")
            index_doc = json.loads(index)
        except (SocirunError, ValueError) as err:
            ctx.error = f"cannot fetch SOCI index {digest}: {err}"
            return ctx
        for blob in index_doc.get("layers") or []:
            if blob.get("mediaType") == c.ZTOC_MEDIA_TYPE:
                # The zTOC bytes are not needed: the emulator reads layers as tar streams, not through a TOC.
                log("info", c.LOG_FETCH_ARTIFACT, digest=blob.get("digest", ""))
        ctx.index_digest, ctx.index_kind, ctx.ztocs = digest, kind, ztoc_layers(index_doc)
        return ctx

    # -- fetching whole layers (local and parallel paths) --------------------------------------------------

    async def _layer_from_store(self, namespace: str, manifest_digest: str, digest: str) -> tuple[Descriptor, list[
            Descriptor]]:
        """The layer's descriptor from the image manifest in containerd's content store (as SOCI reads it)."""
        try:
            ctd = await self._ctd(namespace)
            doc = json.loads(await ctd.read_content(manifest_digest))
        except (SocirunError, ValueError) as err:
            raise _Abort(grpc.StatusCode.FAILED_PRECONDITION,
                         f"layer has no image manifest attached: {manifest_digest} is not in containerd's content "
                         f"store ({err})") from err
        layers = [Descriptor.from_json(d) for d in doc.get("layers") or []]
        for layer in layers:
            if layer.digest == digest:
                return layer, layers
        raise _Abort(grpc.StatusCode.NOT_FOUND, f"layer {digest} is not in image manifest {manifest_digest}")

    def _download(self, ref: str, desc: Descriptor) -> asyncio.Task[Path]:
        if desc.digest not in self._downloads:
            self._downloads[desc.digest] = asyncio.ensure_future(self._download_blob(ref, desc))
        return self._downloads[desc.digest]

    async def _download_blob(self, ref: str, desc: Descriptor) -> Path:
        path = self.settings.root / "unpack" / desc.digest.replace(":", "-")
        path.parent.mkdir(parents=True, exist_ok=True)
        async with self._download_slots:
            started = time.monotonic()
            log("info", c.LOG_FETCH_ARTIFACT, digest=desc.digest)
            with open(path, "wb") as out:
                async for chunk in self.registry.fetch_blob(parse_reference(ref), desc):
                    out.write(chunk)
            log("debug", c.LOG_ARTIFACT_FETCHED, digest=desc.digest, size=desc.size,
                latency_ms=int((time.monotonic() - started) * 1000))
        return path

    async def _fetch_whole(self, key: str, parent: str, labels: dict[str, str], desc: Descriptor, ref: str,
                           extra: dict[str, str]) -> None:
        """Download and unpack the layer into a new snapshot, commit it under the target, or clean up."""
        target = labels[lb.SNAPSHOT_REF]
        path = await self._download(ref, desc)
        snap = self.store.create(key, parent, "active", labels)
        try:
            started = time.monotonic()
            with open(path, "rb") as blob:
                await asyncio.to_thread(apply_tar, blob, self.store.fs_of(snap),
                                        compressed=layer_compression(desc.media_type) == "gzip")
            log("debug", c.LOG_LAYER_UNPACKED, digest=desc.digest, size=desc.size,
                mountpoint=str(self.store.fs_of(snap)), latency_ms=int((time.monotonic() - started) * 1000))
            self.store.commit(target, key, labels | extra)
        except BaseException:
            with contextlib.suppress(StoreError):
                self.store.remove(key)
            raise
        finally:
            self._downloads.pop(desc.digest, None)
            path.unlink(missing_ok=True)

    # -- lazy layers ---------------------------------------------------------------------------------------

    def _start_fill(self, snap: Snap, ref: str, desc: Descriptor) -> None:
        mountpoint = str(self.store.fs_of(snap))
        stop = self._fill_stops.setdefault(snap.key, threading.Event())
        stats = self.metrics.add_layer(desc.digest, mountpoint, desc.size)
        write_state_file(stats)

        def on_span(_span_id: int, nbytes: int) -> None:
            self.metrics.span_fetched(desc.digest, nbytes)
            write_state_file(stats)

        def fill() -> None:
            if self.settings.silence_s:
                log("debug", "new image mounted, pausing the background fetcher for silence period",
                    silencePeriod=int(self.settings.silence_s * 1000))
                self.stopping.wait(self.settings.silence_s)
            try:
                spans = SpanReader(self, ref, desc, on_span, stop)
                reader = io.BufferedReader(spans, buffer_size=1 << 20)
                apply_tar(reader, Path(mountpoint), compressed=layer_compression(desc.media_type) == "gzip")
                spans.report_last_span()  # the files are written now
                if not (self.stopping.is_set() or stop.is_set()):
                    self.metrics.complete(desc.digest)
            except Exception as err:  # the layer stays incomplete; the state file says why
                if stop.is_set():
                    return  # the snapshot was removed: nothing left to report on
                self.metrics.fail(desc.digest, str(err))
                log("warning", "error trying to resolve layer, removing it from the queue", error=str(err))
            with contextlib.suppress(OSError):
                write_state_file(stats)

        thread = threading.Thread(target=fill, name=f"fill-{desc.digest[7:19]}", daemon=True)
        thread.start()

    # -- Prepare -------------------------------------------------------------------------------------------

    async def _prepare(self, request: Any, context: Any) -> Any:
        key, parent, labels = str(request.key), str(request.parent), dict(request.labels)
        log("debug", c.LOG_PREPARING, key=key, parent=parent)
        target = labels.get(lb.SNAPSHOT_REF, "")
        ref, layer_digest = labels.get(lb.CRI_IMAGE_REF, ""), labels.get(lb.CRI_LAYER_DIGEST, "")
        manifest_digest = labels.get(lb.CRI_MANIFEST_DIGEST, "")
        if not (target and ref and layer_digest and manifest_digest):
            self.store.create(key, parent, "active", labels)
            return snapshots_pb2.PrepareSnapshotResponse(mounts=self._mounts(key))
        exists = self.store.find(target)
        if exists is not None and exists.kind == "committed":
            raise _Abort(grpc.StatusCode.ALREADY_EXISTS, f'target snapshot "{target}": already exists')
        # containerd 1.6.20 does not forward the containerd-namespace header to proxy plugins; its backend keys
        # are "<namespace>/<n>/<key>", so the namespace is also the key's first component.
        namespace = self._namespace(context) or (key.split("/", 1)[0] if "/" in key else "")
        if not namespace:
            raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, "context has no namespace attached")
        labels[c.REMOTE_NAMESPACE] = namespace
        already = _Abort(grpc.StatusCode.ALREADY_EXISTS, f'target snapshot "{target}": already exists')

        async def parallel() -> None:
            log("info", c.LOG_PARALLEL, layerDigest=layer_digest)
            desc, layers = await self._layer_from_store(namespace, manifest_digest, layer_digest)
            # Like SOCI: the first Prepare starts this layer and every later one; each Prepare waits for its own.
            later = [layer for layer in layers[layers.index(desc):]]
            for layer in later:
                self._download(ref, layer)
            await self._fetch_whole(key, parent, labels, desc, ref, {})

        if self.config.parallel_enable:
            await parallel()
            raise already
        ctx = await self._image_context(ref, manifest_digest, labels.get(c.SOCI_INDEX_DIGEST, ""))
        if not ctx.index_digest:
            if self.config.parallel_as_fallback:
                log("info", c.LOG_PARALLEL_FALLBACK, layerDigest=layer_digest)
                await parallel()
                raise already
            log("warning", c.LOG_DEFER, defer_snapshot_runtime="true",
                error=f"no valid SOCI index found: {ctx.error or 'not found'}")
            self.store.create(key, parent, "active", labels)
            return snapshots_pb2.PrepareSnapshotResponse(mounts=self._mounts(key))
        desc = ctx.layers.get(layer_digest)
        if desc is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"layer {layer_digest} is not in the image manifest")
        size = int(labels.get(c.SOCI_SIZE) or desc.size)
        if layer_digest in ctx.ztocs and size >= self.config.min_layer_size:
            snap = self.store.create(key, parent, "active", labels)
            log("info", f"preparing filesystem mount at mountpoint={self.store.fs_of(snap)}")
            committed = self.store.commit(target, key, labels | {c.REMOTE: c.REMOTE_VALUE, c.HAS_SOCI_INDEX: "true"})
            self._start_fill(committed, ref, desc)
            log("info", c.LOG_REMOTE_PREPARED, remote_snapshot_prepared="true")
            raise already
        if layer_digest not in ctx.ztocs:
            log("info", c.LOG_NO_ZTOC, layerDigest=layer_digest, image=manifest_digest)
        else:
            log("info", "layer size less than runtime min_layer_size, skipping remote snapshot preparation")
        log("info", c.LOG_LOCAL, layerDigest=layer_digest)
        try:
            await self._layer_from_store(namespace, manifest_digest, layer_digest)
            await self._fetch_whole(key, parent, labels, desc, ref, {c.HAS_SOCI_INDEX: "true"})
        except (_Abort, SocirunError, OSError) as err:
            self.metrics.local_mount_failures += 1
            log("warning", "failed to prepare local snapshot; deferring to container runtime",
                defer_snapshot_runtime="true", error=str(err))
            self.store.create(key, parent, "active", labels)
            return snapshots_pb2.PrepareSnapshotResponse(mounts=self._mounts(key))
        log("info", c.LOG_LOCAL_PREPARED, local_snapshot_prepared="true")
        raise already

    # -- the Snapshots service ------------------------------------------------------------------------------

    async def Prepare(self, request: Any, context: Any) -> Any:
        return await self._run(context, lambda: self._prepare(request, context))

    async def View(self, request: Any, context: Any) -> Any:
        async def view() -> Any:
            self.store.create(str(request.key), str(request.parent), "view", dict(request.labels))
            return snapshots_pb2.ViewSnapshotResponse(mounts=self._mounts(str(request.key)))

        return await self._run(context, view)

    async def Mounts(self, request: Any, context: Any) -> Any:
        async def mounts() -> Any:
            return snapshots_pb2.MountsResponse(mounts=self._mounts(str(request.key)))

        return await self._run(context, mounts)

    async def Commit(self, request: Any, context: Any) -> Any:
        async def commit() -> Any:
            self.store.commit(str(request.name), str(request.key), dict(request.labels))
            return empty_pb2.Empty()

        return await self._run(context, commit)

    async def Remove(self, request: Any, context: Any) -> Any:
        async def remove() -> Any:
            self.store.remove(str(request.key))
            stop = self._fill_stops.pop(str(request.key), None)
            if stop is not None:
                stop.set()
            return empty_pb2.Empty()

        return await self._run(context, remove)

    async def Stat(self, request: Any, context: Any) -> Any:
        async def stat() -> Any:
            return snapshots_pb2.StatSnapshotResponse(info=self._info(self.store.get(str(request.key))))

        return await self._run(context, stat)

    async def Update(self, request: Any, context: Any) -> Any:
        async def update() -> Any:
            snap = self.store.update_labels(str(request.info.name), dict(request.info.labels),
                                            list(request.update_mask.paths))
            return snapshots_pb2.UpdateSnapshotResponse(info=self._info(snap))

        return await self._run(context, update)

    async def List(self, request: Any, context: Any) -> AsyncIterator[Any]:
        # Filters are not evaluated: containerd's metadata layer re-checks what it asked for.
        snaps = self.store.all()
        for start in range(0, max(1, len(snaps)), 100):
            yield snapshots_pb2.ListSnapshotsResponse(info=[self._info(s) for s in snaps[start:start + 100]])

    async def Usage(self, request: Any, context: Any) -> Any:
        async def usage() -> Any:
            size, inodes = await asyncio.to_thread(self.store.usage, str(request.key))
            return snapshots_pb2.UsageResponse(size=size, inodes=inodes)

        return await self._run(context, usage)

    async def Cleanup(self, request: Any, context: Any) -> Any:
        return empty_pb2.Empty()

    async def close(self) -> None:
        self.stopping.set()
        for client in self._clients.values():
            await client.close()
        for task in self._downloads.values():
            task.cancel()


__all__ = ["EmulatorSettings", "NotFound", "SociEmulator"]
