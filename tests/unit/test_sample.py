"""The sample image builder: deterministic, self-consistent digests, data layers that are trees of files of
mixed sizes (listed by a pure function) compressing ~2:1, a usable busybox base; its OCI layout (the input of
`soci convert`), the push order of a layout, and the SOCI choices made before any tool runs."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import tarfile
from pathlib import Path

import pytest

from socirun.errors import SandboxError
from socirun.oci import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    host_platform,
    sha256_digest,
)
from socirun.sandbox.oci_layout import blob_path, push_plan, read_layout, top_descriptor, write_sample_layout
from socirun.sandbox.sample import (
    BIG_FILE_SIZE,
    BUSYBOX,
    DEFAULT_CMD,
    LAYOUT,
    MIB,
    SampleFile,
    SampleImage,
    SampleLayer,
    build_sample,
    layer_files,
    push_sample,
    sample_files,
)
from socirun.sandbox.sample_layout import SMALL_CAP
from socirun.sandbox.soci_index import v2_cache_name, ztoc_layers

pytestmark = pytest.mark.skipif(not BUSYBOX.exists(), reason="needs busybox-static (/bin/busybox)")

SIZES_MB = (0.5, 3.0)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleImage:
    return build_sample(tmp_path_factory.mktemp("samples"), SIZES_MB, seed=7)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(layer: SampleLayer) -> tarfile.TarFile:
    return tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer.path.read_bytes())), mode="r")


def test_same_arguments_give_the_same_digests(sample: SampleImage, tmp_path: Path) -> None:
    again = build_sample(tmp_path, SIZES_MB, seed=7)
    assert again.manifest_digest == sample.manifest_digest
    assert again.manifest_bytes == sample.manifest_bytes
    assert [layer.digest for layer in again.layers] == [layer.digest for layer in sample.layers]
    assert again.layers[0].path.parent != sample.layers[0].path.parent


def test_another_seed_shares_no_layer(sample: SampleImage, tmp_path: Path) -> None:
    other = build_sample(tmp_path, SIZES_MB, seed=8)
    assert not {layer.digest for layer in other.layers} & {layer.digest for layer in sample.layers}


def test_cache_returns_the_built_sample(tmp_path: Path) -> None:
    first = build_sample(tmp_path, [0.25])
    assert build_sample(tmp_path, [0.25]) == first
    assert [p.name for p in tmp_path.iterdir()] == [first.layers[0].path.parent.name]
    # A damaged cache entry is rebuilt, not trusted.
    first.layers[1].path.write_bytes(b"truncated")
    rebuilt = build_sample(tmp_path, [0.25])
    assert rebuilt == first and rebuilt.layers[1].path.stat().st_size == first.layers[1].size


def test_blob_digests_sizes_and_diff_ids(sample: SampleImage) -> None:
    for layer in sample.layers:
        blob = layer.path.read_bytes()
        assert layer.media_type == OCI_LAYER_GZIP
        assert (sha(blob), len(blob)) == (layer.digest, layer.size)
        raw = gzip.decompress(blob)
        assert (sha(raw), len(raw)) == (layer.diff_id, layer.uncompressed_size)


def test_manifest_and_config(sample: SampleImage) -> None:
    manifest = json.loads(sample.manifest_bytes)
    assert sample.manifest_digest == sha256_digest(sample.manifest_bytes)
    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == OCI_MANIFEST
    assert manifest["config"] == {
        "mediaType": OCI_CONFIG,
        "digest": sample.config_digest,
        "size": len(sample.config_bytes),
    }
    assert manifest["layers"] == [layer.descriptor().to_json() for layer in sample.layers]
    assert sample.config_digest == sha256_digest(sample.config_bytes)

    config = json.loads(sample.config_bytes)
    assert config["architecture"] == host_platform().architecture and config["os"] == "linux"
    assert config["config"]["Cmd"] == list(DEFAULT_CMD)
    assert any(env.startswith("PATH=") and "/bin" in env for env in config["config"]["Env"])
    assert config["rootfs"] == {"type": "layers", "diff_ids": [layer.diff_id for layer in sample.layers]}
    assert len(config["history"]) == len(sample.layers)


def test_data_layers_hold_the_listed_files(sample: SampleImage) -> None:
    assert len(sample.layers) == 1 + len(SIZES_MB)
    listed = sample_files(SIZES_MB, seed=7)
    assert sample.files == listed  # the cache entry records the same listing
    for index, (layer, mb) in enumerate(zip(sample.layers[1:], SIZES_MB, strict=True), start=1):
        with layer_tar(layer) as tar:
            members = tar.getmembers()
        files = [(f"/{m.name}", m.size) for m in members if m.isfile()]
        assert files == [(f.path, f.size) for f in listed if f.layer == index]
        # The files' sizes add up to the asked size: it is content, not tar overhead.
        assert sum(size for _, size in files) == round(mb * MIB)
        # Every directory comes before what it holds (so any tar reader and overlayfs get the tree).
        seen: set[str] = set()
        for member in members:
            parent = os.path.dirname(member.name)
            assert parent == "" or parent in seen, member.name
            if member.isdir():
                seen.add(member.name)
        assert {"data", f"data/layer-{index}"} <= seen


def test_small_files_are_text_with_a_header_naming_them(sample: SampleImage) -> None:
    small = [f for f in sample.files if f.kind == "small" and f.layer == 2][:5]
    assert small
    with layer_tar(sample.layers[2]) as tar:
        for file in small:
            data = tar.extractfile(file.path.lstrip("/")).read()  # type: ignore[union-attr]
            assert len(data) == file.size
            text = data.decode("ascii")
            assert text.startswith(f"# socirun sample (seed 7): {file.path}"[:file.size])
            assert "\n" in text or file.size < 100


def test_listing_is_pure_and_keyed_by_seed() -> None:
    sizes = (1.0, 64.0, 300.0)
    first = sample_files(sizes, seed=3)
    assert sample_files(sizes, seed=3) == first
    other = sample_files(sizes, seed=4)
    assert [f.size for f in other] != [f.size for f in first]
    # A layer's listing does not depend on the other layers.
    assert [f for f in first if f.layer == 2] == list(layer_files(2, 64 * MIB, seed=3))
    assert len({f.path for f in first}) == len(first)


def test_listing_shape_like_a_python_environment() -> None:
    files = layer_files(3, 1000 * MIB, seed=0)
    by_kind: dict[str, list[SampleFile]] = {}
    for f in files:
        by_kind.setdefault(f.kind, []).append(f)
    assert sum(f.size for f in files) == 1000 * MIB
    assert [(f.path, f.size) for f in by_kind["big"]] == [("/data/layer-3/big.bin", BIG_FILE_SIZE)]
    assert len(by_kind["small"]) >= 2000  # thousands of small files
    assert all(200 <= f.size <= 24 * 1024 and f.path.endswith(".py") for f in by_kind["small"][:-1])
    assert sum(f.size for f in by_kind["small"]) == SMALL_CAP
    assert all(64 * 1024 <= f.size <= 2 * MIB for f in by_kind["medium"][:-1])
    assert all(4 * MIB <= f.size <= 48 * MIB for f in by_kind["large"][:-1])
    assert all(f.path.startswith("/data/layer-3/") for f in files)
    # Bytes sit in the large files, as in a real environment; the small ones are most of the count.
    assert sum(f.size for f in by_kind["large"]) > 500 * MIB
    assert len(by_kind["small"]) > 0.8 * len(files)


@pytest.mark.parametrize("mb", [0.0, 0.001, 1.0, 39.0, 41.0])
def test_big_file_is_twenty_mib_or_half_a_small_layer(mb: float) -> None:
    files = layer_files(1, round(mb * MIB), seed=0)
    big = [f for f in files if f.kind == "big"]
    assert [f.path for f in big] == ["/data/layer-1/big.bin"]
    assert big[0].size == min(BIG_FILE_SIZE, round(mb * MIB) // 2)
    assert sum(f.size for f in files) == round(mb * MIB)


def test_layout_text_names_the_paths_listed() -> None:
    for file in sample_files((1.0, 64.0)):
        pattern = re.sub(r"layer-\d+", "layer-N", file.path)
        pattern = re.sub(r"(pkg|mod|_native|libsample-)\d+", lambda m: m.group(1) + "X", pattern)
        rows = [re.sub(r"(pkg|mod|_native|libsample-)[A-Z]+", lambda m: m.group(1) + "X", line.split()[0])
                for line in LAYOUT.splitlines() if line.startswith("  /data/")]
        assert pattern in rows, pattern


def test_list_files_command_prints_the_listing(capsys: pytest.CaptureFixture[str]) -> None:
    from socirun.commands.main import main

    assert main(["sandbox", "push-sample", "--layers", "1,8", "--seed", "2", "--list-files"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{f.path}\t{f.size}" for f in sample_files((1.0, 8.0), seed=2)]


def test_data_compresses_about_two_to_one(sample: SampleImage) -> None:
    big = sample.layers[-1]
    ratio = big.uncompressed_size / big.size
    assert 1.7 <= ratio <= 2.5, ratio


def test_base_layer_is_a_busybox_root(sample: SampleImage) -> None:
    with layer_tar(sample.layers[0]) as tar:
        members = {m.name: m for m in tar.getmembers()}
        passwd = tar.extractfile("etc/passwd").read().decode()  # type: ignore[union-attr]
        group = tar.extractfile("etc/group").read().decode()  # type: ignore[union-attr]
    assert members["bin/busybox"].isfile() and members["bin/busybox"].size == os.path.getsize(BUSYBOX)
    assert members["bin/busybox"].mode == 0o755
    for applet in (
        "sh",
        "ls",
        "cat",
        "echo",
        "env",
        "id",
        "sleep",
        "true",
        "false",
        "nc",
        "wget",
        "ps",
        "test",
    ):
        assert members[f"bin/{applet}"].issym() and members[f"bin/{applet}"].linkname == "busybox"
    for directory in ("dev", "etc", "proc", "sys", "root", "tmp", "home/app"):
        assert members[directory].isdir()
    assert members["tmp"].mode == 0o1777 and members["root"].mode == 0o700
    assert members["home/app"].uid == 1000
    assert members["etc/hosts"].isfile() and members["etc/hosts"].size == 0
    assert members["etc/socirun-sample"].isfile()

    users = {line.split(":")[0]: line.split(":") for line in passwd.splitlines()}
    assert users["root"][2:4] == ["0", "0"] and users["root"][6] == "/bin/sh"
    assert users["app"][2:4] == ["1000", "1000"]
    assert "nobody" in users
    groups = {line.split(":")[0]: line.split(":") for line in group.splitlines()}
    assert groups["root"][2] == "0" and groups["app"][2] == "1000"
    # app also belongs to a supplementary group.
    assert any("app" in fields[3].split(",") for name, fields in groups.items() if name != "app")


def test_entries_have_fixed_times_and_owners(sample: SampleImage) -> None:
    with layer_tar(sample.layers[0]) as tar:
        members = tar.getmembers()
    assert {m.mtime for m in members} == {1_700_000_000}
    assert {m.uid for m in members} == {0, 1000}


@pytest.mark.skipif(
    host_platform().architecture != "amd64", reason="the glibc file list is checked for amd64"
)
def test_glibc_layer_copies_the_host_loader_and_libs(tmp_path: Path) -> None:
    image = build_sample(tmp_path, [0.1], with_glibc=True)
    assert len(image.layers) == 3
    with layer_tar(image.layers[-1]) as tar:
        files = {m.name: m for m in tar.getmembers() if m.isfile()}
        loader = tar.extractfile("lib64/ld-linux-x86-64.so.2").read()  # type: ignore[union-attr]
    assert set(files) == {
        "lib64/ld-linux-x86-64.so.2",
        "lib/x86_64-linux-gnu/libc.so.6",
        "lib/x86_64-linux-gnu/libdl.so.2",
        "lib/x86_64-linux-gnu/libpthread.so.0",
        "lib/x86_64-linux-gnu/libm.so.6",
        "lib/x86_64-linux-gnu/librt.so.1",
    }
    # Symlinks on the host are resolved: the layer holds the real loader.
    assert loader == Path("/lib64/ld-linux-x86-64.so.2").resolve().read_bytes()
    # The data layers are the same blobs as without glibc.
    assert image.layers[1].digest == build_sample(tmp_path, [0.1]).layers[1].digest


def test_negative_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SandboxError):
        build_sample(tmp_path, [-1])


# -- the OCI layout of a sample (the input of `soci convert --standalone`) and the push order of a layout --


def test_sample_layout_is_an_oci_image_layout(sample: SampleImage, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    top = write_sample_layout(sample, layout, ref_name="v1")
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    assert index["mediaType"] == OCI_INDEX and len(index["manifests"]) == 1
    entry = index["manifests"][0]
    assert (entry["digest"], entry["size"]) == (sample.manifest_digest, len(sample.manifest_bytes))
    assert entry["platform"]["architecture"] == host_platform().architecture
    assert entry["annotations"] == {"org.opencontainers.image.ref.name": "v1"}
    assert top.digest == sample.manifest_digest
    blobs = sorted((layout / "blobs" / "sha256").iterdir())
    assert len(blobs) == 2 + len(sample.layers)
    for blob in blobs:  # every blob is named by the digest of its bytes
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    for layer in sample.layers:  # hard links to the cache, not copies
        assert blob_path(layout, layer.digest).stat().st_ino == layer.path.stat().st_ino

    plan = read_layout(layout)
    assert [b.digest for b in plan.blobs] == [sample.config_digest, *(layer.digest for layer in sample.layers)]
    assert [m.descriptor.digest for m in plan.manifests] == [sample.manifest_digest]
    assert plan.top.body == sample.manifest_bytes and plan.top.descriptor.media_type == OCI_MANIFEST


def _doc(doc: dict[str, object]) -> tuple[bytes, Descriptor]:
    body = json.dumps(doc).encode()
    return body, Descriptor(str(doc["mediaType"]), sha256_digest(body), len(body))


def test_push_plan_puts_every_manifest_after_what_it_refers_to() -> None:
    config = Descriptor(OCI_CONFIG, "sha256:" + "c" * 64, 10)
    layer = Descriptor(OCI_LAYER_GZIP, "sha256:" + "1" * 64, 100)
    ztoc = Descriptor("application/octet-stream", "sha256:" + "2" * 64, 50)
    image_body, image = _doc({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.to_json(),
                              "layers": [layer.to_json()]})
    soci_body, soci = _doc({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {
        "mediaType": "application/vnd.amazon.soci.index.v2+json", "digest": "sha256:" + "e" * 64, "size": 2},
        "layers": [ztoc.to_json()]})
    inner_body, inner = _doc({"schemaVersion": 2, "mediaType": OCI_INDEX,
                              "manifests": [image.to_json(), soci.to_json()]})
    # The same image twice (directly and through the inner index): pushed once.
    top_body, top = _doc({"schemaVersion": 2, "mediaType": OCI_INDEX,
                          "manifests": [inner.to_json(), image.to_json()]})
    bodies = {image.digest: image_body, soci.digest: soci_body, inner.digest: inner_body, top.digest: top_body}
    plan = push_plan(top, lambda desc: bodies[desc.digest])
    order = [m.descriptor.digest for m in plan.manifests]
    assert order == [image.digest, soci.digest, inner.digest, top.digest]
    assert plan.top.descriptor.digest == top.digest and plan.top.descriptor.media_type == OCI_INDEX
    assert [b.digest for b in plan.blobs] == [config.digest, layer.digest, "sha256:" + "e" * 64, ztoc.digest]


def test_a_layout_with_two_images_or_a_missing_blob_is_one_sentence(sample: SampleImage, tmp_path: Path) -> None:
    entry = sample.manifest_descriptor().to_json()
    with pytest.raises(SandboxError, match="lists 2 images"):
        top_descriptor(json.dumps({"manifests": [entry, entry]}).encode())
    layout = tmp_path / "layout"
    write_sample_layout(sample, layout)
    blob_path(layout, sample.manifest_digest).unlink()
    with pytest.raises(SandboxError, match=f"lacks {sample.manifest_digest}"):
        read_layout(layout)


# -- SOCI index choices that need no soci binary -------------------------------------------------------


def test_ztoc_layers_are_those_of_at_least_min_layer_size(sample: SampleImage) -> None:
    sizes = sorted(layer.size for layer in sample.layers)
    middle = sizes[1]
    assert [layer.size for layer in ztoc_layers(sample, middle)] == [
        layer.size for layer in sample.layers if layer.size >= middle]
    assert len(ztoc_layers(sample, middle)) == len(sizes) - 1  # the threshold itself qualifies (soci: `<` skips)
    assert ztoc_layers(sample, 0) == sample.layers
    assert ztoc_layers(sample, sizes[-1] + 1) == ()


def test_converted_layouts_are_cached_per_min_layer_size_and_soci_version() -> None:
    names = {v2_cache_name(m, v) for m in (0, 10 << 20) for v in ("v0.16.1 61147fe7c929", "v0.16.0 abc")}
    assert len(names) == 4
    assert v2_cache_name(0, "v0.16.1") == v2_cache_name(0, "v0.16.1")


def test_push_sample_refuses_bad_soci_arguments_before_pushing(tmp_path: Path) -> None:
    # Port 9 (discard) on loopback: nothing answers, so reaching the push would fail with another sentence.
    host = "127.0.0.1:9"
    with pytest.raises(SandboxError, match='unknown SOCI index version "v3"'):
        push_sample(host, "x/y", "t", [0.1], soci="v3", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # refused before building anything
    with pytest.raises(SandboxError, match="containerd address"):
        push_sample(host, "x/y", "t", [0.1], soci="v1", cache_dir=tmp_path)
    for soci in ("v2", "v1"):
        with pytest.raises(SandboxError, match="lower --min-layer-size") as caught:
            push_sample(host, "x/y", "t", [0.1], soci=soci, min_layer_size=1 << 40, cache_dir=tmp_path,
                        containerd_address="/nonexistent.sock")
        assert "\n" not in str(caught.value)
