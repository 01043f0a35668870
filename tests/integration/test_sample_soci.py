"""`push_sample` with real SOCI indexes, made by the real `soci` CLI (v0.16) and used by the real
soci-snapshotter-grpc on the built containerd 2.x: what the registry holds afterwards (v2: the converted OCI
index; v1: the index found through its referrers tag), that the zTOCs are real (the snapshotter mounts exactly
those layers lazily and the container reads the right bytes through FUSE), the conversion cache, and the one
sentence when no layer is big enough for a zTOC."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from socirun.errors import SandboxError
from socirun.oci import OCI_INDEX, OCI_MANIFEST
from socirun.sandbox import soci_index
from socirun.sandbox.push import PushStats
from socirun.sandbox.sample import SampleFile, SampleImage, build_sample, default_cache_dir, push_sample
from socirun.sandbox.soci_daemon import SociSettings
from socirun.soci import constants as c
from tests.support.sandbox import registry_get, registry_json, remote_layers, short_tmp_dir, snapshot_layers
from tests.support.soci import SociBox, missing_soci_requirement, soci_sandbox

MIB = 1 << 20
# The busybox base (~1 MB compressed), a 1 MiB layer (~0.5 MB), then ~12 MB and ~31 MB: two layers below
# soci's default --min-layer-size (10 MiB) and two above.
LAYERS_MB = (1.0, 24.0, 64.0)
MIN_LAYER_SIZE = 10 * MIB


@pytest.fixture(scope="module")
def soci_box() -> Iterator[SociBox]:
    """A sandbox of its own with the real soci-snapshotter (v1 discovery on, so both index versions load
    lazily; no background fetch, so what SOCI fetched is what the container read); socirun with a private data
    root, no user config, and its default progress."""
    reason = missing_soci_requirement()
    if reason is not None:
        pytest.fail(reason)  # scripts/install-deps.sh builds everything: a missing piece is a real failure
    settings = SociSettings(v1=True, v2=True, background_fetch=False)
    with soci_sandbox(short_tmp_dir("srx-"), settings) as box:
        data_root = box.box.dir / "socirun-data"
        (data_root / "config").mkdir(parents=True)
        box.extra_env = {"CONTAINERD_NAMESPACE": "default", "SOCIRUN_DATA_ROOT": str(data_root),
                         "SOCIRUN_SANDBOX_DIR": str(box.box.dir), "XDG_CONFIG_HOME": str(data_root / "config"),
                         "SOCIRUN_PROGRESS": "auto"}
        yield box


def digest_of(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def the_file(image: SampleImage, layer: int) -> SampleFile:
    """The sample's big file in data layer `layer` (its size known from the listing)."""
    return next(f for f in image.files if f.kind == "big" and f.layer == layer)


@dataclass
class Pushed:
    ref: str
    name: str
    image: SampleImage


@pytest.fixture(scope="module")
def v2_sample(soci_box: SociBox) -> Pushed:
    image = build_sample(default_cache_dir(), LAYERS_MB, seed=71)
    small = [layer for layer in image.layers if layer.size < MIN_LAYER_SIZE]
    # The sample straddles the threshold, so "exactly those layers" below can fail either way.
    assert len(small) == 2 and len(image.layers) - len(small) == 2, [layer.size for layer in image.layers]
    ref = push_sample(soci_box.info.registry_host, "sample-soci/v2", "latest", LAYERS_MB, seed=71, soci="v2",
                      min_layer_size=MIN_LAYER_SIZE)
    return Pushed(ref, "sample-soci/v2", image)


def test_v2_tag_is_the_converted_index_with_exactly_the_big_layers(soci_box: SociBox, v2_sample: Pushed) -> None:
    host, image = soci_box.info.registry_host, v2_sample.image
    top = registry_json(host, v2_sample.name, "latest")
    assert top["mediaType"] == OCI_INDEX
    [annotated_entry] = [m for m in top["manifests"] if "artifactType" not in m]
    [index_entry] = [m for m in top["manifests"] if m.get("artifactType") == c.INDEX_V2]
    assert index_entry["annotations"][c.ANN_IMAGE_MANIFEST_DIGEST] == annotated_entry["digest"]
    assert annotated_entry["annotations"][c.ANN_INDEX_DIGEST] == index_entry["digest"]

    annotated = registry_json(host, v2_sample.name, annotated_entry["digest"])
    assert annotated["mediaType"] == OCI_MANIFEST
    assert [layer["digest"] for layer in annotated["layers"]] == [layer.digest for layer in image.layers]
    assert annotated["annotations"][c.ANN_INDEX_DIGEST] == index_entry["digest"]

    index = registry_json(host, v2_sample.name, index_entry["digest"])
    assert index["config"]["mediaType"] == c.INDEX_V2
    indexed = [ztoc["annotations"][c.ANN_LAYER_DIGEST] for ztoc in index["layers"]]
    assert sorted(indexed) == sorted(layer.digest for layer in image.layers if layer.size >= MIN_LAYER_SIZE)
    for ztoc in index["layers"]:  # every zTOC is in the registry, with the bytes its digest names
        status, body = registry_get(host, f"{v2_sample.name}/blobs/{ztoc['digest']}")
        assert status == 200 and digest_of(body) == ztoc["digest"] and len(body) == ztoc["size"]


def test_v2_ztocs_are_real_the_snapshotter_mounts_those_layers_lazily(
        soci_box: SociBox, v2_sample: Pushed) -> None:
    image = v2_sample.image
    target = the_file(image, layer=3)
    assert target.size == 20 * MIB
    log_start = soci_box.box.soci.log.stat().st_size
    ran = soci_box.socirun("run", "--rm", "--net", "none", "--progress", "plain", v2_sample.ref,
                           "sh", "-c", f"cat {target.path} | wc -c")
    assert ran.code == 0, ran.stderr
    assert ran.stdout.split() == [str(target.size)]
    labels = soci_box.labels()
    mine = {layer.digest for layer in image.layers}
    assert snapshot_layers(labels) >= mine  # every layer went through SOCI
    assert remote_layers(labels) & mine == {layer.digest for layer in image.layers if layer.size >= MIN_LAYER_SIZE}
    with open(soci_box.box.soci.log, encoding="utf-8", errors="replace") as log:
        log.seek(log_start)
        reads = [json.loads(line) for line in log if '"FUSE operation"' in line and "file.Read" in line]
    assert any(entry.get("path") == target.path.lstrip("/") for entry in reads), reads[:5]


def test_second_v2_push_reuses_the_conversion_and_uploads_nothing(soci_box: SociBox, v2_sample: Pushed) -> None:
    converted = soci_index.convert_v2(v2_sample.image, min_layer_size=MIN_LAYER_SIZE)
    inode = converted.stat().st_ino
    stats = PushStats()
    ref = push_sample(soci_box.info.registry_host, v2_sample.name, "again", LAYERS_MB, seed=71, soci="v2",
                      min_layer_size=MIN_LAYER_SIZE, stats=stats)
    assert ref.endswith(f"/{v2_sample.name}:again")
    assert stats.uploaded_blobs == 0 and stats.skipped_blobs > len(v2_sample.image.layers)
    assert soci_index.convert_v2(v2_sample.image, min_layer_size=MIN_LAYER_SIZE) == converted
    assert converted.stat().st_ino == inode  # not converted again
    # The converted layout shares the sample's layer files (hard links), it does not copy them.
    for layer in v2_sample.image.layers:
        assert (converted / "blobs" / "sha256" / layer.digest.removeprefix("sha256:")).stat().st_ino == \
            layer.path.stat().st_ino
    again = registry_json(soci_box.info.registry_host, v2_sample.name, "again")
    assert again == registry_json(soci_box.info.registry_host, v2_sample.name, "latest")


def test_v1_index_is_found_by_its_referrers_tag_and_loads_lazily(soci_box: SociBox) -> None:
    layers = (1.0, 24.0)
    host, name = soci_box.info.registry_host, "sample-soci/v1"
    ref = push_sample(host, name, "latest", layers, seed=72, soci="v1", min_layer_size=MIN_LAYER_SIZE,
                      containerd_address=soci_box.info.containerd_address)
    image = build_sample(default_cache_dir(), layers, seed=72)
    # The tag is the plain image; `soci push` wrote the referrers tag (the registry has no referrers API).
    assert registry_json(host, name, "latest")["layers"] == [layer.descriptor().to_json() for layer in image.layers]
    referrers = registry_json(host, name, image.manifest_digest.replace(":", "-"))
    [entry] = [m for m in referrers["manifests"] if m.get("artifactType") == c.INDEX_V1]
    index = registry_json(host, name, entry["digest"])
    assert index["subject"]["digest"] == image.manifest_digest
    big = {layer.digest for layer in image.layers if layer.size >= MIN_LAYER_SIZE}
    assert big and {z["annotations"][c.ANN_LAYER_DIGEST] for z in index["layers"]} == big
    # The build left nothing in containerd: no image, and its namespace is gone.
    assert soci_index.BUILD_NAMESPACE not in soci_box.ctr("namespaces", "ls", "-q").stdout.split()

    target = the_file(image, layer=2)
    ran = soci_box.socirun("run", "--rm", "--net", "none", "--progress", "plain", ref,
                           "sh", "-c", f"cat {target.path} | wc -c")
    assert ran.code == 0, ran.stderr
    assert ran.stdout.split() == [str(target.size)]
    assert remote_layers(soci_box.labels()) & {layer.digest for layer in image.layers} == big


@pytest.mark.parametrize("soci", ["v2", "v1"])
def test_min_layer_size_above_every_layer_is_one_clear_sentence(soci_box: SociBox, soci: str) -> None:
    host, name = soci_box.info.registry_host, f"sample-soci/none-{soci}"
    with pytest.raises(SandboxError) as caught:
        push_sample(host, name, "latest", (1.0,), seed=73, soci=soci, min_layer_size=1 << 30,
                    containerd_address=soci_box.info.containerd_address)
    message = str(caught.value)
    assert "lower --min-layer-size" in message and "\n" not in message
    assert registry_get(host, f"{name}/manifests/latest")[0] == 404  # nothing was pushed


def test_cli_pushes_a_v2_sample_and_says_the_error_in_one_line(soci_box: SociBox, v2_sample: Pushed) -> None:
    ok = soci_box.socirun("sandbox", "push-sample", "--name", v2_sample.name, "--tag", "cli",
                          "--layers", ",".join(str(mb) for mb in LAYERS_MB), "--seed", "71", "--soci", "v2")
    assert ok.code == 0, ok.stderr
    assert ok.stdout.strip() == f"{soci_box.info.registry_host}/{v2_sample.name}:cli"
    assert registry_json(soci_box.info.registry_host, v2_sample.name, "cli")["mediaType"] == OCI_INDEX
    bad = soci_box.socirun("sandbox", "push-sample", "--name", "sample-soci/cli-bad", "--layers", "1",
                           "--soci", "v2", "--min-layer-size", str(1 << 30))
    assert bad.code == 125 and bad.stdout == ""
    assert len(bad.stderr.strip().splitlines()) == 1 and "lower --min-layer-size" in bad.stderr
