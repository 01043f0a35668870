"""The remote (SOCI) side of the engine: Prepare keys and labels, classification from snapshot labels, the
warning for an unexpected deferral, plan events; and the probe's pure parts: index discovery parsers, whether
a named index can be fetched, and SOCI's remembered failed index lookups read from its log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from socirun import events as ev
from socirun.decide.plan import LayerPlan, Plan
from socirun.decide.transfer import TransferPlan, default_transfer_settings
from socirun.oci import OCI_LAYER_GZIP, Descriptor
from socirun.pull import labels as lb
from socirun.pull.remote import (
    DEFERRED_DESPITE_INDEX,
    classify,
    plan_events,
    planned_mode,
    soci_prepare_labels,
    soci_unpack_key,
    unexpected_deferral,
)
from socirun.soci import constants as c
from socirun.soci import probe
from socirun.soci.probe import (
    discover_indexes,
    failed_lookup_in_log,
    key_tag,
    log_since_last_start,
    referrers_tag,
    v1_referrer,
    v2_index_digest,
)

LAYERS = [Descriptor(OCI_LAYER_GZIP, "sha256:" + ch * 64, size) for ch, size in (("a", 10), ("b", 2000), ("c", 30))]


def test_prepare_labels_carry_cri_and_soci_hints() -> None:
    labels = soci_prepare_labels("r.example/app:1", "sha256:" + "f" * 64, LAYERS, 1, "sha256:" + "9" * 64)
    assert labels[lb.CRI_LAYER_DIGEST] == LAYERS[1].digest
    assert labels[lb.CRI_IMAGE_LAYERS] == f"{LAYERS[1].digest},{LAYERS[2].digest}"
    assert labels[c.SOCI_SIZE] == "2000"
    assert labels[c.SOCI_IMAGE_LAYERS_SIZE] == "2000,30"  # aligned with cri.image-layers
    assert labels[c.SOCI_INDEX_DIGEST] == "sha256:" + "9" * 64
    assert soci_prepare_labels("r/a:1", "sha256:" + "f" * 64, LAYERS, 0)[c.SOCI_INDEX_DIGEST] == ""


NS = {c.REMOTE_NAMESPACE: "default"}  # SOCI adds it to every snapshot it commits itself (v0.16.1)
CLIENT = {lb.SNAPSHOT_REF: "sha256:" + "1" * 64, lb.CRI_IMAGE_REF: "r/a:1", c.SOCI_SIZE: "10"}  # socirun's own


@pytest.mark.parametrize(("labels", "mode"), [
    ({c.REMOTE: c.REMOTE_VALUE, c.HAS_SOCI_INDEX: "true", **NS}, "lazy"),
    ({c.HAS_SOCI_INDEX: "true", **NS}, "snapshotter"),  # no zTOC, below min_layer_size, or a failed mount
    (NS, "parallel"),  # parallel pull: the namespace without has.soci.index.digest
    ({}, "cached"),  # committed by a client: not SOCI's parallel pull
    (CLIENT, "cached"),
])
def test_classify_from_snapshot_labels(labels: dict[str, str], mode: str) -> None:
    got, detail = classify(labels)
    assert got == mode
    assert ("parallel" in detail) == (mode == "parallel")


def test_prepare_key_names_the_manifest() -> None:
    manifest, chain = "sha256:" + "f" * 64, "sha256:" + "c" * 64
    key = soci_unpack_key(chain, manifest)
    head, _, tail = key.partition(" ")
    assert head.startswith("extract-") and tail == chain  # containerd's `extract-<unique> <chainID>` shape
    assert key_tag(manifest) + " " in key
    assert soci_unpack_key(chain, manifest) != key  # unique per call


def _plan(modes: tuple[str, ...], with_index: bool) -> Plan:
    from socirun.decide.facts import SociIndex

    index = SociIndex("v2", "sha256:" + "2" * 64, frozenset(), "x") if with_index else None
    layers = tuple(LayerPlan(i, f"sha256:{i}", 1, m, "") for i, m in enumerate(modes))  # type: ignore[arg-type]
    return Plan("soci", "lazy" if with_index else "standard", layers, ("r",), index=index)


@pytest.mark.parametrize(("plan", "index", "says"), [
    (None, 0, ""),
    (_plan(("standard",), False), 0, ""),  # expected: SOCI defers without an index
    (_plan(("lazy", "snapshotter"), True), 0, DEFERRED_DESPITE_INDEX),
    (_plan(("lazy", "snapshotter"), True), 1, DEFERRED_DESPITE_INDEX),
    (_plan(("snapshotter", "standard"), False), 0, "SOCI deferred layer 0 although the plan expected"),
])
def test_unexpected_deferral(plan: Plan | None, index: int, says: str) -> None:
    warning = unexpected_deferral(plan, index)
    assert (says in warning) if says else warning == ""
    if says == DEFERRED_DESPITE_INDEX:
        assert "restart soci-snapshotter-grpc" in warning


def test_plan_events_and_rows() -> None:
    transfer = TransferPlan("parallel", ("ranged chunks",), default_transfer_settings(2))
    plan = Plan("overlayfs", "parallel", (LayerPlan(0, "sha256:x", 1, "standard", "r"),), ("because", "ranged chunks"),
                ("careful",), ("do this",), None, transfer)
    events = plan_events(plan)
    made = events[0]
    assert isinstance(made, ev.PlanMade) and made.mode == "parallel"
    assert made.reasons == ("because", "ranged chunks", "fix: do this")
    assert isinstance(events[1], ev.WarningMessage) and events[1].message == "careful"
    assert planned_mode(plan, 0, False, "parallel") == "parallel"
    assert planned_mode(plan, 0, True, "parallel") == "cached"
    assert planned_mode(None, 0, False, "standard") == "standard"


def test_discovery_parsers() -> None:
    d0, d1 = "sha256:" + "0" * 64, "sha256:" + "1" * 64
    assert v2_index_digest(json.dumps({"annotations": {c.ANN_INDEX_DIGEST: d1}}).encode()) == d1
    assert v2_index_digest(b"{}") is None and v2_index_digest(b"nope") is None
    referrers = {"manifests": [{"digest": d0, "size": 1, "artifactType": "other"},
                               {"digest": d1, "size": 1, "artifactType": c.INDEX_V1}]}
    assert v1_referrer(json.dumps(referrers).encode()) == d1
    assert referrers_tag("sha256:abc") == "sha256-abc"


# -- SOCI's log: the remembered failed lookup -------------------------------------------------------------------

M = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64


def _line(msg: str, time: str, **fields: str) -> str:
    return json.dumps({"level": "info", "msg": msg, "time": time, **fields})


def _start(time: str) -> str:
    return _line(probe.LOG_STARTING, time, version="v0.16.1")


def _failed(time: str, key: str, ref: str = "r/a:1") -> str:
    error = f'unable to fetch SOCI artifacts for image "{ref}": no valid SOCI index found: not found'
    return _line(probe.LOG_REMOTE_FAILED, time, key=f"default/3/{key}", error=error, parent="")


OURS = f"extract-1-Ab{key_tag(M)} sha256:{'c' * 64}"


@pytest.mark.parametrize(("lines", "found_at"), [
    ([_start("t0"), _failed("t1", OURS)], "t1"),
    ([_start("t0"), _failed("t1", OURS), _failed("t2", OURS)], "t1"),  # the first failure since the start
    ([_start("t0"), _failed("t1", OURS), _start("t2")], None),  # a restart forgets it
    ([_failed("t1", OURS)], "t1"),  # no start line seen: still the running daemon's
    ([_start("t0"), _failed("t1", f"extract-1-Ab{key_tag(OTHER)} sha256:{'c' * 64}")], None),  # another manifest
    ([_start("t0"), _failed("t1", f"extract-1-Ab sha256:{'c' * 64}")], None),  # a client's key names no manifest
    ([_start("t0"), _failed("t1", "extract-1-Ab sha256:c", ref=f"r/a@{M}")], "t1"),  # a digest-pinned reference
    ([_start("t0"), _line(probe.LOG_REMOTE_FAILED, "t1", key=f"default/3/{OURS}", error="failed to resolve layer")],
     None),  # a mount failure is no failed lookup
    ([_start("t0"), "not json " + probe.LOG_REMOTE_FAILED + probe.NO_INDEX_ERROR + key_tag(M) + " "], None),
])
def test_failed_lookup_in_log(lines: list[str], found_at: str | None) -> None:
    found = failed_lookup_in_log(lines, M)
    assert (found.at if found is not None else None) == found_at
    if found is not None:
        assert probe.NO_INDEX_ERROR in found.error
        assert found.daemon_started == ("t0" if lines[0].startswith('{"level": "info", "msg": "starting') else "")


def test_log_since_last_start_reads_backwards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "soci.log"
    old = [_start("t0"), _failed("t1", OURS)]
    new = [_start("t2"), _line("FUSE operation", "t3", path="x" * 50), _line("another", "t4")]
    log.write_text("\n".join(old + new) + "\n")
    for chunk in (7, 64, 1 << 20):  # start lines straddle chunk borders at the small sizes
        monkeypatch.setattr(probe, "_LOG_CHUNK", chunk)
        assert log_since_last_start(str(log)) == new
    # No start line within the limit: only the tail, without its cut-off first line.
    tail = log_since_last_start(str(log), limit=len(new[-1]) + 10)
    assert tail == [new[-1]]
    assert log_since_last_start(str(tmp_path / "missing.log")) == []


# -- named but unfetchable indexes ------------------------------------------------------------------------------


class FakeRegistry:
    """Manifests by digest and blobs by digest, as a registry serves them; records nothing else."""

    def __init__(self, manifests: dict[str, bytes], blobs: set[str]) -> None:
        self.manifests = manifests
        self.blobs = blobs

    async def fetch_manifest(self, ref: object, digest: str, accept: str = "") -> tuple[str, bytes]:
        from socirun.errors import RegistryError

        if digest not in self.manifests:
            raise RegistryError(f"manifest {digest} not found")
        return "application/vnd.oci.image.manifest.v1+json", self.manifests[digest]

    async def fetch_range(self, ref: object, desc: Descriptor, start: int, end: int) -> bytes:
        from socirun.errors import RegistryError

        if desc.digest not in self.blobs:
            raise RegistryError(f"blob {desc.digest} not found")
        return b"x"

    async def fetch_referrers(self, ref: object, digest: str) -> bytes | None:
        return None


def _index_doc(ztocs: dict[str, str]) -> bytes:
    return json.dumps({"layers": [
        {"mediaType": c.ZTOC_MEDIA_TYPE, "digest": z, "size": 10, "annotations": {c.ANN_LAYER_DIGEST: layer}}
        for z, layer in ztocs.items()]}).encode()


def test_discover_reports_named_but_unfetchable_apart_from_absent() -> None:
    import asyncio
    from types import SimpleNamespace
    from typing import Any

    idx_ok, idx_gone, idx_holey = "sha256:" + "1" * 64, "sha256:" + "2" * 64, "sha256:" + "3" * 64
    z1, z2 = "sha256:" + "4" * 64, "sha256:" + "5" * 64
    registry: Any = FakeRegistry({idx_ok: _index_doc({z1: "sha256:L1"}), idx_holey: _index_doc({z1: "L1", z2: "L2"})},
                                 {z1})

    def img(annotation: str | None) -> Any:
        manifest = {"annotations": {c.ANN_INDEX_DIGEST: annotation}} if annotation else {}
        return SimpleNamespace(reference="r/a:1", manifest_bytes=json.dumps(manifest).encode(),
                               manifest=SimpleNamespace(digest=M))

    async def run() -> None:
        v2, _, explicit, _ = await discover_indexes(registry, img(idx_ok), None, look_for_v1=False)
        assert v2 is not None and v2.fetchable and v2.ztoc_layers == {"sha256:L1"} and explicit is None
        v2, _, _, _ = await discover_indexes(registry, img(idx_gone), None, look_for_v1=False)
        assert v2 is not None and not v2.fetchable and "does not serve it" in v2.problem
        v2, _, _, _ = await discover_indexes(registry, img(idx_holey), None, look_for_v1=False)
        assert v2 is not None and not v2.fetchable and z2 in v2.problem  # a missing zTOC blob
        v2, _, explicit, _ = await discover_indexes(registry, img(None), idx_gone, look_for_v1=False)
        assert v2 is None  # absent
        assert explicit is not None and explicit.kind == "explicit" and not explicit.fetchable

    asyncio.run(run())
