"""What `socirun plan` says against what the real soci-snapshotter v0.16.1 does, in a sandbox (containerd 2.x,
docker-registry, soci-snapshotter-grpc): no index (SOCI defers, socirun downloads), a sparse index (small layers
fetched whole by SOCI, nothing downloaded twice), the runtime [snapshotter] min_layer_size without an index,
an index that is named but cannot be fetched (SOCI defers the whole image, no fallback), a failed lookup SOCI
remembers until it restarts, and the labels that tell SOCI's snapshots from a client's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from socirun.pull.remote import DEFERRED_DESPITE_INDEX, classify
from socirun.sandbox.sample import push_sample
from socirun.sandbox.soci_daemon import SociSettings
from tests.support.cli_result import CliResult
from tests.support.sandbox import registry_delete_manifest, registry_manifest, registry_put_manifest, short_tmp_dir
from tests.support.soci import SociBox, missing_soci_requirement, soci_sandbox

MIB = 1 << 20
# The busybox base (~1 MB compressed), a ~0.5 MB layer and a ~6 MB one: with zTOCs from 4 MiB up, only the last
# is lazy; a runtime min_layer_size of 3 MiB sits between them as well.
LAYERS_MB = (1.0, 12.0)
ZTOC_MIN = 4 * MIB
RUNTIME_MIN = 3 * MIB
NO_SUCH_INDEX = "sha256:" + "0" * 64


class Box(SociBox):
    """The shared SOCI sandbox, with this module's shortcuts: the plan as JSON, a pull that must succeed, and
    its small sample pushed."""

    def plan(self, *args: str, with_log: bool = True) -> dict[str, Any]:
        done = self.socirun("plan", "--json", *args, with_log=with_log)
        assert done.code == 0, done.stderr
        doc: dict[str, Any] = json.loads(done.stdout)
        return doc

    def pull(self, *args: str, with_log: bool = True) -> CliResult:
        done = self.socirun("pull", *args, with_log=with_log)
        assert done.code == 0, done.stderr
        return done

    def push_small(self, name: str, seed: int, soci: str) -> str:
        return push_sample(self.info.registry_host, name, "latest", LAYERS_MB, seed=seed, soci=soci,
                           min_layer_size=ZTOC_MIN)


@pytest.fixture(scope="module")
def soci() -> Iterator[Box]:
    reason = missing_soci_requirement()
    if reason is not None:
        pytest.fail(reason)  # scripts/install-deps.sh builds everything: a missing piece is a real failure
    with soci_sandbox(short_tmp_dir("srp-")) as shared:
        yield Box(shared.box, shared.info)


def modes(plan: dict[str, Any]) -> list[str]:
    return [layer["mode"] for layer in plan["layers"]]


def sizes(plan: dict[str, Any]) -> list[int]:
    return [layer["size"] for layer in plan["layers"]]


def classified(pulled: CliResult, plan: dict[str, Any]) -> list[str]:
    """What the engine saw SOCI do with each layer, in layer order."""
    seen = {e["digest"]: e["mode"] for e in pulled.of("layer_classified")}
    return [seen.get(layer["digest"], "?") for layer in plan["layers"]]


def test_no_index_soci_defers_and_socirun_downloads_everything(soci: Box) -> None:
    ref = soci.push_small("plan/none", 301, "none")
    plan = soci.plan("--snapshotter", "soci", ref)
    assert plan["snapshotter"] == "soci" and plan["mode"] in ("standard", "parallel") and plan["index"] is None
    assert modes(plan) == ["standard"] * 3
    assert plan["soci"]["config"]["root"] == str(soci.box.soci.root)  # SOCI_SNAPSHOTTER_ROOT, not a config key
    before = soci.soci_log_size()
    pulled = soci.pull("--snapshotter", "soci", ref)
    assert classified(pulled, plan) == ["standard"] * 3  # SOCI returned mounts for every layer
    assert pulled.finished()["fetched"] == sum(sizes(plan))
    assert not pulled.of("warning")  # the plan expected exactly this
    assert "no valid SOCI index found; deferring to container runtime" in soci.soci_log_since(before)


def test_sparse_index_small_layers_fetched_whole_by_soci_nothing_twice(soci: Box) -> None:
    ref = soci.push_small("plan/sparse", 302, "v2")
    plan = soci.plan(ref)
    assert plan["snapshotter"] == "soci" and plan["mode"] == "lazy" and plan["index"]["kind"] == "v2"
    assert modes(plan) == ["snapshotter", "snapshotter", "lazy"]
    pulled = soci.pull(ref)
    assert classified(pulled, plan) == modes(plan)
    assert pulled.finished()["fetched"] == 0  # SOCI fetched the small layers; socirun downloaded none of them


def test_runtime_min_layer_size_without_an_index(soci: Box) -> None:
    """SOCI compares the size label with min_layer_size before it looks for an index: in an image with no index
    it fetches the small layers whole itself and defers the rest; socirun downloads only those."""
    soci.box.restart_soci(SociSettings(min_layer_size=RUNTIME_MIN))
    try:
        ref = soci.push_small("plan/minsize", 303, "none")
        plan = soci.plan("--snapshotter", "soci", ref)
        assert plan["snapshotter"] == "soci"
        small = [size < RUNTIME_MIN for size in sizes(plan)]
        assert small == [True, True, False], sizes(plan)  # the sample's sizes still straddle the threshold
        assert modes(plan) == ["snapshotter", "snapshotter", "standard"]
        assert any("SOCI fetches those whole itself" in r for r in plan["reasons"])
        before = soci.soci_log_size()
        pulled = soci.pull("--snapshotter", "soci", ref)
        assert classified(pulled, plan) == ["snapshotter", "snapshotter", "standard"]
        assert pulled.finished()["fetched"] == sizes(plan)[2]  # no double download of the small ones
        assert "layer size less than runtime min_layer_size" in soci.soci_log_since(before)
        # Without --snapshotter soci the plan bypasses SOCI altogether (it would only defer).
        assert soci.plan(ref)["snapshotter"] == "overlayfs"
    finally:
        soci.box.restart_soci(SociSettings())


def test_explicit_index_that_cannot_be_fetched_defers_the_whole_image(soci: Box) -> None:
    ref = soci.push_small("plan/explicit", 304, "v2")
    assert soci.plan(ref)["mode"] == "lazy"  # its own v2 index is fine
    plan = soci.plan("--snapshotter", "soci", "--soci-index-digest", NO_SUCH_INDEX, ref)
    assert plan["index"] is None and modes(plan) == ["standard"] * 3
    text = " ".join(plan["reasons"])
    assert "cannot be fetched" in text and "does not fall back to the manifest's v2 annotation" in text
    pulled = soci.pull("--snapshotter", "soci", "--soci-index-digest", NO_SUCH_INDEX, ref)
    assert classified(pulled, plan) == ["standard"] * 3  # SOCI did not fall back to the image's v2 index
    assert pulled.finished()["fetched"] == sum(sizes(plan))


def test_v2_index_that_cannot_be_fetched_then_a_failure_soci_remembers(soci: Box) -> None:
    """The v2 index is deleted from the registry: the plan says SOCI defers (named but unfetchable, not absent),
    and SOCI does. With the index back, SOCI still defers this manifest until it restarts: the plan reads that
    from SOCI's log; without the log, the engine says so when SOCI defers. After a restart it loads lazily."""
    name = "plan/cached"
    ref = soci.push_small(name, 305, "v2")
    lazy = soci.plan(ref)
    assert lazy["mode"] == "lazy"
    index_digest = lazy["index"]["digest"]
    media_type, index_bytes = registry_manifest(soci.info.registry_host, name, index_digest)
    registry_delete_manifest(soci.info.registry_host, name, index_digest)

    gone = soci.plan("--snapshotter", "soci", ref)
    assert gone["index"] is None and modes(gone) == ["standard"] * 3
    assert any("cannot be fetched" in r and index_digest.split(":")[1][:12] in r for r in gone["reasons"])
    assert not any("has no SOCI index" in r for r in gone["reasons"])
    pulled = soci.pull("--snapshotter", "soci", ref)
    assert classified(pulled, gone) == ["standard"] * 3
    soci.forget(ref)

    registry_put_manifest(soci.info.registry_host, name, index_digest, media_type, index_bytes)
    remembered = soci.plan("--snapshotter", "soci", ref)
    assert remembered["mode"] != "lazy" and modes(remembered) == ["standard"] * 3
    assert any("remembers a failed index lookup" in w for w in remembered["warnings"]), remembered
    assert any("restart soci-snapshotter-grpc" in f for f in remembered["fixes"])

    blind = soci.plan(ref, with_log=False)  # SOCI's log unknown: the index looks usable
    assert blind["mode"] == "lazy"
    pulled = soci.pull(ref, with_log=False)
    assert DEFERRED_DESPITE_INDEX in [w["message"] for w in pulled.of("warning")]
    assert classified(pulled, blind) == ["standard"] * 3  # SOCI deferred every layer; socirun downloaded them
    assert pulled.finished()["fetched"] == sum(sizes(blind))
    soci.forget(ref)

    soci.box.restart_soci()
    again = soci.plan(ref)
    assert again["mode"] == "lazy" and not again["warnings"]
    pulled = soci.pull(ref)
    assert classified(pulled, again) == ["snapshotter", "snapshotter", "lazy"]
    assert pulled.finished()["fetched"] == 0


def test_labels_tell_socis_snapshots_from_a_clients(soci: Box) -> None:
    """SOCI puts …/remote/namespace on every snapshot it commits; a client's (socirun after a deferral) has none
    of SOCI's labels and is no parallel pull."""
    deferred = soci.push_small("plan/labels-none", 306, "none")
    indexed = soci.push_small("plan/labels-v2", 307, "v2")
    soci.pull("--snapshotter", "soci", deferred)
    soci.pull(indexed)
    by_layer = {labels["containerd.io/snapshot/cri.layer-digest"]: labels for labels in soci.labels().values()
                if "containerd.io/snapshot/cri.layer-digest" in labels}
    for ref, expected in ((deferred, ["cached"] * 3), (indexed, ["snapshotter", "snapshotter", "lazy"])):
        plan = soci.plan(ref)
        got = [classify(by_layer[layer["digest"]])[0] for layer in plan["layers"]]
        assert got == expected, ref
    client = [by_layer[layer["digest"]] for layer in soci.plan(deferred)["layers"]]
    assert all("containerd.io/snapshot/remote/namespace" not in labels for labels in client)


def test_parallel_mode_takes_every_layer_index_or_not(soci: Box) -> None:
    """[pull_modes.parallel_pull_unpack] enable = true: SOCI downloads and unpacks every layer itself, for an
    image with an index too; its snapshots carry the namespace label and no has.soci.index.digest."""
    soci.box.restart_soci(SociSettings(parallel=True))
    try:
        for name, seed, kind in (("plan/par-v2", 308, "v2"), ("plan/par-none", 309, "none")):
            ref = soci.push_small(name, seed, kind)
            plan = soci.plan(ref)
            assert plan["snapshotter"] == "soci" and plan["mode"] == "parallel", plan
            assert modes(plan) == ["parallel"] * 3
            pulled = soci.pull(ref)
            assert classified(pulled, plan) == ["parallel"] * 3
            assert pulled.finished()["fetched"] == 0
    finally:
        soci.box.restart_soci(SociSettings())
