"""The sample image builder: deterministic, self-consistent digests, ~2:1 data, a usable busybox base."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from socirun.errors import SandboxError
from socirun.oci import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, host_platform, sha256_digest
from socirun.sandbox.sample import BUSYBOX, DEFAULT_CMD, MIB, SampleImage, SampleLayer, build_sample

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


def test_data_layers_hold_one_file_of_the_asked_size(sample: SampleImage) -> None:
    assert len(sample.layers) == 1 + len(SIZES_MB)
    for index, (layer, mb) in enumerate(zip(sample.layers[1:], SIZES_MB, strict=True), start=1):
        with layer_tar(layer) as tar:
            members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {"data", f"data/layer-{index}.bin"}
        assert members["data"].isdir()
        assert members[f"data/layer-{index}.bin"].size == round(mb * MIB)


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
