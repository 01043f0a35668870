"""Thin probes that gather the plan's facts: containerd's snapshotters (and whether the soci proxy answers),
the image's SOCI index (explicit digest, v2 manifest annotation, v1 referrers API or referrers tag), which
layers already have snapshots. The decision itself is socirun.decide.plan.decide (pure)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from socirun.containerd.client import ContainerdClient
from socirun.decide.facts import (
    SOCI,
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
from socirun.errors import ContainerdError, RegistryError
from socirun.oci import OCI_MANIFEST, chain_ids
from socirun.registry.client import RegistryClient, ResolvedImage
from socirun.soci import constants as c

PROBE_TIMEOUT_S = 2.0


async def probe_snapshotters(ctd: ContainerdClient, timeout: float = PROBE_TIMEOUT_S) -> SnapshotterFacts:
    """Introspection.Plugins, then a deadline-bound Snapshots.List on soci: a proxy plugin is "ok" even when
    its socket is dead."""
    plugins = await ctd.snapshotters()
    available = tuple(p.id for p in plugins if p.ok)
    soci = next((p for p in plugins if p.id == SOCI), None)
    if soci is None:
        return SnapshotterFacts(available=available)
    address = soci.exports.get("address", "")
    if not soci.ok:
        return SnapshotterFacts(available, True, False, soci.error or "its plugin failed to load", address)
    try:
        await ctd.snapshot_list(SOCI, timeout=timeout)
    except ContainerdError as err:
        details = getattr(err, "details", "") or err.message
        return SnapshotterFacts(available, True, False, _first_line(details), address)
    return SnapshotterFacts(available, True, True, "", address)


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "no answer"
    return line[:200]


def ztoc_layers(index_manifest: dict[str, Any]) -> frozenset[str]:
    """Image layer digests that have a zTOC in a SOCI index manifest (zTOC descriptors in its `layers`)."""
    out: set[str] = set()
    for blob in index_manifest.get("layers") or []:
        if not isinstance(blob, dict):
            continue
        annotations = blob.get("annotations") or {}
        if blob.get("mediaType") == c.ZTOC_MEDIA_TYPE and c.ANN_LAYER_DIGEST in annotations:
            out.add(str(annotations[c.ANN_LAYER_DIGEST]))
    return frozenset(out)


def v2_index_digest(manifest_bytes: bytes) -> str | None:
    try:
        doc = json.loads(manifest_bytes)
    except ValueError:
        return None
    annotations = doc.get("annotations") if isinstance(doc, dict) else None
    value = annotations.get(c.ANN_INDEX_DIGEST) if isinstance(annotations, dict) else None
    return str(value) if value else None


def v1_referrer(index_bytes: bytes) -> str | None:
    """The first SOCI v1 index among referrers (SOCI's SelectFirstPolicy), filtering on artifactType."""
    try:
        doc = json.loads(index_bytes)
    except ValueError:
        return None
    for entry in (doc.get("manifests") or []) if isinstance(doc, dict) else []:
        if isinstance(entry, dict) and entry.get("artifactType") == c.INDEX_V1 and entry.get("digest"):
            return str(entry["digest"])
    return None


def referrers_tag(manifest_digest: str) -> str:
    """The OCI referrers tag schema: `<alg>-<hex>`."""
    return manifest_digest.replace(":", "-", 1)


async def _load_index(registry: RegistryClient, img: ResolvedImage, digest: str, kind: IndexKind,
                      found_via: str) -> tuple[SociIndex | None, str]:
    try:
        _, body = await registry.fetch_manifest(img.reference, digest, accept=f"{OCI_MANIFEST}, */*")
    except RegistryError as err:
        return None, f"the SOCI {kind} index {digest} named by {found_via} cannot be fetched: {err.message}"
    try:
        doc = json.loads(body)
    except ValueError:
        return None, f"the SOCI {kind} index {digest} is not JSON"
    if not isinstance(doc, dict):
        return None, f"the SOCI {kind} index {digest} is not a JSON object"
    return SociIndex(kind, digest, ztoc_layers(doc), found_via), ""


async def discover_indexes(
    registry: RegistryClient, img: ResolvedImage, explicit_digest: str | None, *, look_for_v1: bool = True
) -> tuple[SociIndex | None, SociIndex | None, SociIndex | None, tuple[str, ...]]:
    """(v2, v1, explicit, notes): every index the image has, whatever SOCI's config enables (the plan weighs
    the config). v1: the referrers API filtered on artifactType, then the referrers tag `sha256-<hex>`."""
    notes: list[str] = []
    explicit = None
    if explicit_digest:
        explicit, note = await _load_index(registry, img, explicit_digest, "explicit", "--soci-index-digest")
        if note:
            notes.append(note)
    v2 = None
    digest = v2_index_digest(img.manifest_bytes)
    if digest:
        v2, note = await _load_index(registry, img, digest, "v2",
                                     f"the manifest annotation {c.ANN_INDEX_DIGEST}")
        if note:
            notes.append(note)
    v1 = None
    if look_for_v1:
        referrers = await registry.fetch_referrers(img.reference, img.manifest.digest)
        via = "the referrers API"
        if referrers is None:
            via = f"the referrers tag {referrers_tag(img.manifest.digest)}"
            try:
                _, referrers = await registry.fetch_manifest(img.reference, referrers_tag(img.manifest.digest))
            except RegistryError:
                referrers = None
                notes.append("the registry has no referrers API and no referrers tag")
        found = v1_referrer(referrers) if referrers is not None else None
        if found:
            v1, note = await _load_index(registry, img, found, "v1", via)
            if note:
                notes.append(note)
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
) -> PlanFacts:
    sn = await probe_snapshotters(ctd)
    up = sn.soci_registered and sn.soci_alive
    v2 = v1 = explicit = None
    notes: tuple[str, ...] = ()
    if up:
        v2, v1, explicit, notes = await discover_indexes(registry, img, explicit_index)
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
    )
    return PlanFacts(sn, cfg, image, host, user, transfer)
