"""The engine's SOCI helpers: Prepare labels, classification from snapshot labels, the plan's events; and the
SOCI emulator's pure parts (sample index, containerd registration, snapshot store mounts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from socirun import events as ev
from socirun.decide.plan import LayerPlan, Plan
from socirun.decide.transfer import TransferPlan, default_transfer_settings
from socirun.oci import OCI_LAYER_GZIP, Descriptor
from socirun.pull import labels as lb
from socirun.pull.remote import classify, plan_events, planned_mode, soci_prepare_labels
from socirun.sandbox.sandbox import containerd_config
from socirun.sandbox.soci_emulator.process import EmulatorPaths, emulator_config
from socirun.sandbox.soci_emulator.store import Exists, Precondition, Store
from socirun.soci import constants as c
from socirun.soci.config import parse_soci_config
from socirun.soci.probe import referrers_tag, v1_referrer, v2_index_digest, ztoc_layers

LAYERS = [Descriptor(OCI_LAYER_GZIP, "sha256:" + ch * 64, size) for ch, size in (("a", 10), ("b", 2000), ("c", 30))]


def test_prepare_labels_carry_cri_and_soci_hints() -> None:
    labels = soci_prepare_labels("r.example/app:1", "sha256:" + "f" * 64, LAYERS, 1, "sha256:" + "9" * 64)
    assert labels[lb.CRI_LAYER_DIGEST] == LAYERS[1].digest
    assert labels[lb.CRI_IMAGE_LAYERS] == f"{LAYERS[1].digest},{LAYERS[2].digest}"
    assert labels[c.SOCI_SIZE] == "2000"
    assert labels[c.SOCI_IMAGE_LAYERS_SIZE] == "2000,30"  # aligned with cri.image-layers
    assert labels[c.SOCI_INDEX_DIGEST] == "sha256:" + "9" * 64
    assert soci_prepare_labels("r/a:1", "sha256:" + "f" * 64, LAYERS, 0)[c.SOCI_INDEX_DIGEST] == ""


@pytest.mark.parametrize(("labels", "mode"), [
    ({c.REMOTE: c.REMOTE_VALUE, c.HAS_SOCI_INDEX: "true"}, "lazy"),
    ({c.HAS_SOCI_INDEX: "true"}, "snapshotter"),
    ({}, "parallel"),
])
def test_classify_from_snapshot_labels(labels: dict[str, str], mode: str) -> None:
    assert classify(labels)[0] == mode


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


def test_containerd_config_registers_the_emulator_only_when_asked(tmp_path: Path) -> None:
    assert "proxy_plugins" not in containerd_config(tmp_path)
    text = containerd_config(tmp_path, tmp_path / "soci.sock")
    assert '[proxy_plugins.soci]' in text and 'type = "snapshot"' in text and str(tmp_path / "soci.sock") in text


def test_emulator_config_is_soci_config(tmp_path: Path) -> None:
    paths = EmulatorPaths(tmp_path)
    cfg = parse_soci_config(emulator_config(paths, parallel=True, v1=True), "x")
    assert cfg.parallel_enable and cfg.v1_enable and cfg.v2_enable
    assert cfg.metrics_enabled and cfg.metrics_network == "unix" and cfg.root == str(paths.root)


def test_sample_index_shapes() -> None:
    from socirun.sandbox.sample import build_sample, default_cache_dir
    from socirun.sandbox.soci_emulator.sample_index import build_index

    image = build_sample(default_cache_dir(), (1.0, 12.0))
    v1, ztocs = build_index(image, "v1", min_layer_size=4 << 20)
    doc = json.loads(v1)
    assert doc["config"] == {"mediaType": c.INDEX_V1, "digest": c.EMPTY_CONFIG_DIGEST, "size": 2}
    assert doc["subject"]["digest"] == image.manifest_digest
    assert ztoc_layers(doc) == {image.layers[-1].digest} and len(ztocs) == 1
    v2 = json.loads(build_index(image, "v2", min_layer_size=4 << 20)[0])
    assert "subject" not in v2 and v2["config"]["mediaType"] == c.INDEX_V2
    assert v2["layers"][0]["annotations"][c.ANN_SPAN_SIZE] == str(4 << 20)


def test_discovery_parsers() -> None:
    assert v2_index_digest(json.dumps({"annotations": {c.ANN_INDEX_DIGEST: "sha256:1"}}).encode()) == "sha256:1"
    assert v2_index_digest(b"{}") is None and v2_index_digest(b"nope") is None
    referrers = {"manifests": [{"digest": "sha256:0", "artifactType": "other"},
                               {"digest": "sha256:1", "artifactType": c.INDEX_V1}]}
    assert v1_referrer(json.dumps(referrers).encode()) == "sha256:1"
    assert referrers_tag("sha256:abc") == "sha256-abc"


def test_store_mounts_and_rules(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.create("a-key", "", "active", {})
    assert store.mounts("a-key")[0].type == "bind"
    store.commit("a", "a-key", {"x": "1"})
    store.create("b-key", "a", "active", {})
    mount = store.mounts("b-key")[0]
    assert mount.type == "overlay" and any(o.startswith("lowerdir=") and o.endswith("/fs") for o in mount.options)
    with pytest.raises(Exists):
        store.commit("a", "b-key", {})
    with pytest.raises(Precondition):
        store.remove("a")  # has a child
    store.commit("b", "b-key", {})
    store.update_labels("b", {"y": "2"}, ["labels.y"])
    assert Store(tmp_path).get("b").labels == {"y": "2"}  # persisted
