"""Thin probes that gather the plan's facts: containerd's snapshotters (and whether the soci proxy answers),
the image's SOCI index (explicit digest, v2 manifest annotation, v1 referrers API or referrers tag) and whether
it can be fetched whole, which layers already have snapshots, and whether the running SOCI remembers a failed
index lookup for the manifest (from its log). The decision itself is socirun.decide.plan.decide (pure)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, BinaryIO

from socirun.containerd.client import ContainerdClient, proxy_snapshotter_problem
from socirun.decide.facts import (
    SOCI,
    FailedIndexLookup,
    HostProfile,
    ImageFacts,
    IndexKind,
    LayerFact,
    PlanFacts,
    SnapshotterFacts,
    SociConfig,
    SociIndex,
    UserChoice,
)
from socirun.decide.transfer import TransferPlan
from socirun.errors import ContainerdError, MalformedImageError, RegistryError
from socirun.oci import (
    OCI_MANIFEST,
    Descriptor,
    chain_ids,
    check_digest,
    descriptor_list,
    load_json_object,
    parse_index,
)
from socirun.registry.client import RangeNotSupportedError, RegistryClient, ResolvedImage
from socirun.soci import constants as c

PROBE_TIMEOUT_S = 2.0
# zTOC blobs checked at once (one 1-byte range request each: SOCI fetches every blob of the index before it
# mounts anything, and a missing one makes it defer the whole image).
ZTOC_CHECKS = 8

# soci-snapshotter-grpc v0.16.1's log lines that tell of a failed index lookup (cmd/soci-snapshotter-grpc/main.go,
# snapshot/snapshot.go Prepare, fs/fs.go Mount).
LOG_STARTING = "starting soci-snapshotter-grpc"
LOG_REMOTE_FAILED = "failed to prepare remote snapshot"
NO_INDEX_ERROR = "no valid SOCI index found"
# How far back from the end of SOCI's log to look for its last start (a debug log with FUSE operations grows
# fast); failures further back are not seen.
LOG_SCAN_LIMIT = 256 << 20
_LOG_CHUNK = 1 << 20


async def probe_snapshotters(ctd: ContainerdClient, timeout: float = PROBE_TIMEOUT_S) -> SnapshotterFacts:
    """Introspection.Plugins, then deadline-bound Snapshots.List calls on the plugin's own socket (when containerd
    exports its address) and through containerd: a proxy plugin is "ok" even when its socket is dead."""
    plugins = await ctd.snapshotters()
    available = tuple(p.id for p in plugins if p.ok)
    capabilities = {p.id: p.capabilities for p in plugins if p.ok}
    soci = next((p for p in plugins if p.id == SOCI), None)
    if soci is None:
        return SnapshotterFacts(available=available, capabilities=capabilities)
    address = soci.exports.get("address", "")
    if not soci.ok:
        return SnapshotterFacts(available, True, False, soci.error or "its plugin failed to load", address,
                                capabilities)
    if address:
        problem = await proxy_snapshotter_problem(address, ctd.namespace, timeout)
        if problem is not None:
            return SnapshotterFacts(available, True, False, problem, address, capabilities)
    try:
        await ctd.snapshot_list(SOCI, timeout=timeout)
    except ContainerdError as err:
        details = getattr(err, "details", "") or err.message
        return SnapshotterFacts(available, True, False, _first_line(details), address, capabilities)
    return SnapshotterFacts(available, True, True, "", address, capabilities)


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "no answer"
    return line[:200]


def index_layers(index_manifest: Mapping[str, Any], what: str = "the SOCI index") -> list[Descriptor]:
    """The blobs a SOCI index lists (zTOCs and prefetch artifacts) in its `layers`, each type-checked; a wrong shape
    is a MalformedImageError."""
    return descriptor_list(index_manifest, "layers", what, "blob")


def ztoc_layers(blobs: Iterable[Descriptor]) -> frozenset[str]:
    """Image layer digests that have a zTOC among a SOCI index's blobs (zTOC descriptors name their layer)."""
    return frozenset(blob.annotations[c.ANN_LAYER_DIGEST] for blob in blobs
                     if blob.media_type == c.ZTOC_MEDIA_TYPE and c.ANN_LAYER_DIGEST in blob.annotations)  # fmt: skip


def v2_index_digest(manifest_bytes: bytes) -> str | None:
    """The SOCI v2 index the image manifest names in its annotation; None when it names none (or is no JSON object:
    the pull's own parser reports that). An annotation that is not a digest is a MalformedImageError."""
    try:
        doc = json.loads(manifest_bytes)
    except (ValueError, RecursionError):
        return None
    annotations = doc.get("annotations") if isinstance(doc, dict) else None
    value = annotations.get(c.ANN_INDEX_DIGEST) if isinstance(annotations, dict) else None
    if value is None or value == "":
        return None
    return check_digest(value, f"the manifest's annotation {c.ANN_INDEX_DIGEST}")


def v1_referrer(index_bytes: bytes) -> str | None:
    """The first SOCI v1 index among referrers (SOCI's SelectFirstPolicy), filtering on artifactType; None when
    there is none. A referrers answer of the wrong shape (not an index, entries without a digest, nesting too
    deep) is a MalformedImageError."""
    for entry in parse_index(index_bytes, "the referrers index"):
        if entry.artifact_type == c.INDEX_V1:
            return entry.digest
    return None


def referrers_tag(manifest_digest: str) -> str:
    """The OCI referrers tag schema: `<alg>-<hex>`."""
    return manifest_digest.replace(":", "-", 1)


async def _load_index(registry: RegistryClient, img: ResolvedImage, digest: str, kind: IndexKind,
                      found_via: str) -> SociIndex:
    """The index named `digest`, fetched as SOCI would fetch it: its manifest, then every blob it lists. An
    index that is named but cannot be fetched whole comes back with `problem` set (SOCI defers the image then),
    a fact distinct from having no index."""

    def unfetchable(problem: str) -> SociIndex:
        return SociIndex(kind, digest, frozenset(), found_via, problem)

    try:
        _, body = await registry.fetch_manifest(img.reference, digest, accept=f"{OCI_MANIFEST}, */*")
    except RegistryError as err:
        return unfetchable(f"the registry does not serve it ({err.message})")
    try:
        blobs = index_layers(load_json_object(body, "the SOCI index"))
    except MalformedImageError as err:
        return unfetchable(f"it is malformed ({err.message})")
    missing = await _missing_blobs(registry, img, blobs)
    if missing:
        return unfetchable(f"its blob {missing[0]} is missing from the registry"
                           + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return SociIndex(kind, digest, ztoc_layers(blobs), found_via)


async def _missing_blobs(registry: RegistryClient, img: ResolvedImage, blobs: Sequence[Descriptor]) -> list[str]:
    """Digests of the index's blobs the registry does not serve (a 1-byte range read each, a few at a time), as
    SOCI fetches them all."""
    limit = asyncio.Semaphore(ZTOC_CHECKS)

    async def missing(blob: Descriptor) -> str | None:
        if blob.size <= 0:
            return None
        async with limit:
            try:
                await registry.fetch_range(img.reference, blob, 0, 0)
            except RangeNotSupportedError:
                return None  # it is there; the registry just sends it whole
            except RegistryError:
                return blob.digest
        return None

    found = await asyncio.gather(*(missing(blob) for blob in blobs))
    return [digest for digest in found if digest is not None]


async def discover_indexes(
    registry: RegistryClient, img: ResolvedImage, explicit_digest: str | None, *, look_for_v1: bool = True
) -> tuple[SociIndex | None, SociIndex | None, SociIndex | None, tuple[str, ...]]:
    """(v2, v1, explicit, notes): every index the image names, whatever SOCI's config enables (the plan weighs
    the config), each fetched or marked unfetchable. v1: the referrers API filtered on artifactType, then the
    referrers tag `sha256-<hex>`."""
    notes: list[str] = []
    explicit = None
    if explicit_digest:
        explicit = await _load_index(registry, img, explicit_digest, "explicit", "--soci-index-digest")
    v2 = None
    try:
        digest = v2_index_digest(img.manifest_bytes)
    except MalformedImageError as err:
        digest = None
        notes.append(f"the manifest names no usable SOCI index: {err.message}")
    if digest:
        v2 = await _load_index(registry, img, digest, "v2", f"the manifest annotation {c.ANN_INDEX_DIGEST}")
    v1 = None
    if look_for_v1:
        try:
            referrers = await registry.fetch_referrers(img.reference, img.manifest.digest)
        except RegistryError as err:
            notes.append(f"the registry's referrers API failed: {err.message}")
            return v2, v1, explicit, tuple(notes)
        via = "the referrers API"
        if referrers is None:
            via = f"the referrers tag {referrers_tag(img.manifest.digest)}"
            try:
                _, referrers = await registry.fetch_manifest(img.reference, referrers_tag(img.manifest.digest))
            except RegistryError:
                referrers = None
                notes.append("the registry has no referrers API and no referrers tag")
        try:
            found = v1_referrer(referrers) if referrers is not None else None
        except MalformedImageError as err:
            found = None
            notes.append(f"{via} gave no usable answer: {err.message}")
        if found:
            v1 = await _load_index(registry, img, found, "v1", via)
    return v2, v1, explicit, tuple(notes)


async def cached_layers(ctd: ContainerdClient, img: ResolvedImage, snapshotters: Sequence[str]) -> dict[
        str, frozenset[str]]:
    """snapshotter → digests of layers whose chainID snapshot it already has."""
    chain = chain_ids(list(img.diff_ids))
    out: dict[str, frozenset[str]] = {}
    for name in snapshotters:
        have: set[str] = set()
        for layer, chain_id in zip(img.layers, chain, strict=True):
            try:
                present = await ctd.snapshot_stat(name, chain_id) is not None
            except ContainerdError:
                present = False
            if present:
                have.add(layer.digest)
        out[name] = frozenset(have)
    return out


def key_tag(manifest_digest: str) -> str:
    """What socirun puts into the keys of its Prepare requests to a remote snapshotter (after the unique part of
    containerd's `extract-<unique> <chainID>` shape). SOCI logs each failed index lookup with the request's key,
    and no field of those lines names the manifest (v0.16.1), so this is how its log tells which manifest a
    failure was for."""
    return f"@{manifest_digest}"


def _names_manifest(doc: dict[str, Any], manifest_digest: str) -> bool:
    """The failure was for this manifest: socirun's own key says so, or the image reference in SOCI's error was
    pinned by this digest (`name@sha256:...`, as a client pulling by digest sends it)."""
    key = doc.get("key")
    error = doc.get("error")
    return (isinstance(key, str) and key_tag(manifest_digest) + " " in key) or (
        isinstance(error, str) and f'@{manifest_digest}"' in error)


def failed_lookup_in_log(lines: Iterable[str], manifest_digest: str) -> FailedIndexLookup | None:
    """The first failed index lookup for `manifest_digest` since SOCI's last start, from its JSON log lines in
    file order; None when there is none. SOCI looks an index up once per manifest digest and keeps the result,
    a failure included, until it restarts (v0.16.1 fs/fs.go getSociContext), logging it again as "failed to
    prepare remote snapshot" with "no valid SOCI index found" in the error for each layer it defers."""
    started = ""
    found: FailedIndexLookup | None = None
    for line in lines:
        # Cheap substring tests first: a debug log holds a line per FUSE operation.
        if LOG_STARTING in line:
            doc = _json_line(line)
            if doc is not None and doc.get("msg") == LOG_STARTING:
                started, found = str(doc.get("time") or ""), None
            continue
        if found is not None or NO_INDEX_ERROR not in line or LOG_REMOTE_FAILED not in line:
            continue
        doc = _json_line(line)
        if doc is None or doc.get("msg") != LOG_REMOTE_FAILED or NO_INDEX_ERROR not in str(doc.get("error")):
            continue
        if _names_manifest(doc, manifest_digest):
            found = FailedIndexLookup(str(doc.get("time") or ""), str(doc.get("error"))[:400], started)
    return found


def _json_line(line: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def log_since_last_start(path: str, limit: int = LOG_SCAN_LIMIT) -> list[str]:
    """The lines of SOCI's log file from its last start line on (searched backwards, so a long log costs only its
    tail); the lines of the last `limit` bytes when no start line is that close to the end. [] when unreadable."""
    marker = LOG_STARTING.encode()
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            pos = size
            carry = b""  # the first bytes after this chunk: a marker may straddle chunks
            begin = -1
            while pos > 0 and size - pos < limit:
                step = min(_LOG_CHUNK, pos, limit - (size - pos))
                pos -= step
                f.seek(pos)
                window = f.read(step) + carry
                at = window.rfind(marker)
                if at >= 0:
                    begin = _line_start(f, pos + at)
                    break
                carry = window[:len(marker)]
            f.seek(begin if begin >= 0 else pos)
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []
    return lines[1:] if begin < 0 < pos else lines  # a cut-off first line is not a line


def _line_start(f: BinaryIO, offset: int) -> int:
    """The offset of the start of the line that holds byte `offset` of the open file `f`."""
    pos = offset
    while pos > 0:
        step = min(_LOG_CHUNK, pos)
        pos -= step
        f.seek(pos)
        newline = f.read(step).rfind(b"\n")
        if newline >= 0:
            return pos + newline + 1
    return 0


async def remembered_failed_lookup(soci_log: str | None, manifest_digest: str) -> FailedIndexLookup | None:
    """SOCI's remembered failed index lookup for `manifest_digest`, when its log file is known (SOCIRUN_SOCI_LOG);
    None otherwise (journald: the engine still warns when SOCI defers an image the plan expected it to load)."""
    if not soci_log:
        return None
    lines = await asyncio.to_thread(log_since_last_start, soci_log)
    return failed_lookup_in_log(lines, manifest_digest)


async def gather_facts(
    ctd: ContainerdClient,
    registry: RegistryClient,
    img: ResolvedImage,
    user: UserChoice,
    transfer: TransferPlan,
    host: HostProfile,
    cfg: SociConfig,
    *,
    explicit_index: str | None = None,
    soci_log: str | None = None,
) -> PlanFacts:
    sn = await probe_snapshotters(ctd)
    up = sn.soci_registered and sn.soci_alive
    v2 = v1 = explicit = None
    notes: tuple[str, ...] = ()
    failed = None
    if up:
        v2, v1, explicit, notes = await discover_indexes(registry, img, explicit_index)
        failed = await remembered_failed_lookup(soci_log, img.manifest.digest)
    candidates = {user.snapshotter or "overlayfs", "overlayfs"} | ({SOCI} if up else set())
    cached = await cached_layers(ctd, img, sorted(candidates))
    image = ImageFacts(
        reference=str(img.reference),
        manifest_digest=img.manifest.digest,
        layers=tuple(LayerFact(layer.digest, layer.size, layer.media_type) for layer in img.layers),
        v2_index=v2,
        v1_index=v1,
        explicit_index=explicit,
        discovery_notes=notes,
        cached=cached,
        failed_lookup=failed,
    )
    return PlanFacts(sn, cfg, image, host, user, transfer)
