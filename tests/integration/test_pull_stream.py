"""`socirun pull --pull-mode parallel-stream` against the real sandbox: the layers socirun's applier unpacked as their
bytes arrived must be what containerd's Diff.Apply makes of the same image (a `--pull-mode standard` pull into
another namespace), with the same chain, labels and blobs, and the image must run.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from socirun.containerd.client import ContainerdClient
from socirun.oci import DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_MANIFEST, OCI_MANIFEST, chain_ids, sha256_digest
from socirun.sandbox.oci_layout import INDEX_FILE, LAYOUT_FILE, LAYOUT_VERSION, blob_path
from socirun.sandbox.push import push_layout
from socirun.sandbox.sample import push_sample
from socirun.sandbox.sandbox import SandboxInfo
from tests.integration.test_parallel_pull import SAMPLE_TEXT, Ctr, image_chain, registry_json
from tests.integration.test_unpack_differential import SNAPSHOTTER, assert_same_tree
from tests.support.cli_result import CliResult
from tests.support.sandbox import registry_blob_path

STREAM = ("--pull-mode", "parallel-stream", "--max-concurrent-downloads", "4", "--chunk-size", "1MiB")
DISCARD = (*STREAM, "--discard-unpacked-layers")


def _content(ctr: Ctr, namespace: str) -> set[str]:
    return set(ctr("content", "ls", "-q", namespace=namespace).stdout.split())


def _ingests(ctr: Ctr, namespace: str) -> list[str]:
    return ctr("content", "active", namespace=namespace).stdout.splitlines()[1:]


def _socirun(sandbox: SandboxInfo, namespace: str, *args: str, data_root: Path | None = None,
             config_home: Path | None = None, timeout: float = 300) -> CliResult:
    env = dict(os.environ, CONTAINERD_ADDRESS=sandbox.containerd_address, CONTAINERD_NAMESPACE=namespace)
    if data_root is not None:
        env["SOCIRUN_DATA_ROOT"] = str(data_root)
    if config_home is not None:
        env["XDG_CONFIG_HOME"] = str(config_home)  # holds socirun/config.toml
    proc = subprocess.run([sys.executable, "-m", "socirun", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)
    return CliResult.of_process(proc)


async def _layer_dirs(address: str, namespace: str, chain: list[str]) -> tuple[list[Path], list[str | None],
                                                                                  dict[str, dict[str, str]]]:
    """Per chainID: the committed snapshot's own directory (a view's topmost lower dir), its parent, and the
    labels of every blob in the namespace."""
    dirs: list[Path] = []
    parents: list[str | None] = []
    async with await ContainerdClient.connect(address, namespace) as ctd:
        for chain_id in chain:
            info = await ctd.snapshot_stat(SNAPSHOTTER, chain_id)
            assert info is not None, f"{chain_id} is not committed in {namespace}"
            parents.append(info.parent or None)
            key = f"view-{uuid.uuid4().hex[:8]}"
            mounts = await ctd.snapshot_view(SNAPSHOTTER, key, chain_id, {})
            try:
                (mount,) = mounts
                if mount.type == "bind":
                    dirs.append(Path(mount.source))
                else:
                    lower = next(o for o in mount.options if o.startswith("lowerdir="))
                    dirs.append(Path(lower.removeprefix("lowerdir=").split(":")[0]))
            finally:
                await ctd.snapshot_remove(SNAPSHOTTER, key)
        labels = {blob.digest: dict(blob.labels) for blob in await ctd.list_content()}
    return dirs, parents, labels


def five_layer_sample(sandbox: SandboxInfo, repo: str, *, seed: int
                      ) -> tuple[str, dict[str, Any], list[str], list[str]]:  # fmt: skip
    """A sample of five layers pushed as `repo`:v1: its reference, manifest, chain IDs and diffIDs."""
    ref = push_sample(sandbox.registry_host, repo, "v1", [3, 6, 1, 4, 0.2], seed=seed)
    manifest, chain = image_chain(sandbox.registry_host, repo, "v1")
    config = registry_json(sandbox.registry_host, f"{repo}/blobs/{manifest['config']['digest']}", accept="*/*")
    diff_ids = list(config["rootfs"]["diff_ids"])
    assert chain == chain_ids(diff_ids) and len(chain) >= 5
    return ref, manifest, chain, diff_ids


async def _can_rebase(address: str) -> bool:
    async with await ContainerdClient.connect(address, "default") as ctd:
        return "rebase" in await ctd.snapshotter_capabilities(SNAPSHOTTER)


def sequential_unpack_config(tmp_path: Path) -> Path:
    """An XDG_CONFIG_HOME whose socirun config turns parallel unpack off ([pull] max_concurrent_unpacks = 0)."""
    home = tmp_path / "sequential-config"
    (home / "socirun").mkdir(parents=True)
    (home / "socirun" / "config.toml").write_text("[pull]\nmax_concurrent_unpacks = 0\n")
    return home


def test_parallel_stream_pull_matches_a_standard_pull_and_runs(
    sandbox: SandboxInfo, ctr: Ctr, tmp_path: Path
) -> None:
    """On containerd 2.x (overlayfs can rebase) the streamed layers are unpacked in parallel, each prepared
    without its parent; the standard pull it is compared with unpacks one layer after another on its parent."""
    ref, manifest, chain, diff_ids = five_layer_sample(sandbox, "stream/valid", seed=1501)
    streamed, standard = f"stream-{uuid.uuid4().hex[:6]}", f"standard-{uuid.uuid4().hex[:6]}"
    rebase = asyncio.run(_can_rebase(sandbox.containerd_address))

    # The parallel-stream pull first, so its blobs are fetched (not found in the store another namespace made).
    result = _socirun(sandbox, streamed, "pull", "--progress", "json", *STREAM, ref)
    assert result.code == 0, result.stderr
    plan = result.of("plan_made")[0]
    assert any("--pull-mode parallel-stream" in r for r in plan["reasons"])
    assert any("socirun's own applier" in r for r in plan["reasons"])
    assert any("can rebase" in r for r in plan["reasons"]) == rebase, plan["reasons"]
    finished = result.finished()
    assert finished["fetched"] == finished["total_size"]
    live = {e["digest"] for e in result.of("layer_state") if e["detail"] == "as its bytes arrive"}
    # The head of the apply order always streams; with the in-order schedule the layers behind it wait their
    # turn instead of being only stored, so most of the image is unpacked while it downloads.
    assert manifest["layers"][0]["digest"] in live
    assert len(live) >= len(chain) - 1, (live, result.of("layer_state"))
    assert not result.of("warning")

    sequential = _socirun(sandbox, standard, "pull", "--progress", "json", "--pull-mode", "standard", ref,
                          config_home=sequential_unpack_config(tmp_path))
    assert sequential.code == 0, sequential.stderr
    assert not any("can rebase" in r for r in sequential.of("plan_made")[0]["reasons"])

    got, got_parents, got_labels = asyncio.run(_layer_dirs(sandbox.containerd_address, streamed, chain))
    want, want_parents, _ = asyncio.run(_layer_dirs(sandbox.containerd_address, standard, chain))
    assert got_parents == want_parents == [None, *chain[:-1]]
    for i, (mine, theirs) in enumerate(zip(got, want, strict=True)):
        assert_same_tree(theirs, mine, None, f"layer {i}")
    for layer, diff_id in zip(manifest["layers"], diff_ids, strict=True):
        # The blob is in the store (ctr export and a re-unpack work), labelled with its diffID as containerd's
        # unpacker labels it.
        assert got_labels[layer["digest"]].get("containerd.io/uncompressed") == diff_id
    assert ctr("leases", "ls", namespace=streamed).stdout.splitlines()[1:] == []

    ran = _socirun(sandbox, streamed, "run", "--rm", "--network", "none", "--pull", "never", ref,
                   data_root=tmp_path / "data")
    assert ran.code == 0, ran.stderr
    assert SAMPLE_TEXT in ran.stdout


@pytest.mark.parametrize("flags", [STREAM, DISCARD], ids=["stored", "discarded"])
def test_parallel_stream_corrupt_layer_commits_nothing(sandbox: SandboxInfo, ctr: Ctr, flags: tuple[str, ...]) -> None:
    """The head layer is fed live, so socirun's applier checks it (under discard, only the applier does)."""
    seed = 1502 if flags == STREAM else 1512
    repo = "stream/corrupt" if flags == STREAM else "discard/corrupt"
    ref = push_sample(sandbox.registry_host, repo, "v1", [4, 2], seed=seed)
    manifest, _chain = image_chain(sandbox.registry_host, repo, "v1")
    bad = manifest["layers"][0]["digest"]
    blob = registry_blob_path(sandbox.dir, bad)
    data = bytearray(blob.read_bytes())
    data[len(data) - 20] ^= 0xFF  # in gzip's trailer region: the archive may still parse, the digest cannot match
    blob.write_bytes(bytes(data))
    namespace = f"stream-bad-{uuid.uuid4().hex[:6]}"

    result = _socirun(sandbox, namespace, "pull", "--progress", "plain", *flags, ref)
    assert result.code == 125, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("socirun: ") and bad in last, last
    assert "Traceback" not in result.stderr
    keys = [line.split()[0] for line in ctr("snapshots", "ls", namespace=namespace).stdout.splitlines()[1:]]
    assert keys == [], keys  # nothing committed, no active snapshot left behind
    assert bad not in _content(ctr, namespace)
    assert not any(bad.split(":")[1] in row for row in _ingests(ctr, namespace))
    assert ctr("images", "ls", "-q", namespace=namespace).stdout.split() == []
    for row in ctr("leases", "ls", namespace=namespace).stdout.splitlines()[1:]:
        assert "io.socirun/purpose=resume" in row, row
        ctr("leases", "delete", "--sync", row.split()[0], namespace=namespace)


def _tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_600_000_000, 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


class _Layout:
    """An OCI image layout a test writes by hand (socirun.sandbox.oci_layout's file names): blobs by content, then
    index.json listing the one manifest."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, data: bytes) -> dict[str, object]:
        """Store a blob; its descriptor's digest and size."""
        digest = sha256_digest(data)
        path = blob_path(self.root, digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return {"digest": digest, "size": len(data)}

    def finish(self, manifest: bytes, media_type: str) -> Path:
        """Store the manifest and list it in index.json; the layout's directory."""
        (self.root / LAYOUT_FILE).write_text(json.dumps({"imageLayoutVersion": LAYOUT_VERSION}))
        (self.root / INDEX_FILE).write_text(json.dumps({"schemaVersion": 2, "manifests": [
            {"mediaType": media_type, **self.put(manifest)}]}))
        return self.root


def _zstd_image_layout(root: Path, zstd_text: bytes = b"from the zstd layer\n" * 1000) -> tuple[Path, list[str]]:
    """A two-layer Docker image whose second layer is zstd-compressed under the plain Docker tar type, which
    containerd sniffs and unpacks but socirun's applier (no zstd library) can only discover once bytes arrive.
    The second layer holds b.txt with `zstd_text`. Returns the layout and the layers' diffIDs.

    Each call's layers are new blobs (an id.txt of their own in each): a blob another test already stored, in any
    namespace, is not downloaded again, so it would never reach the applier and the test would not see it."""
    layout = _Layout(root)
    put = layout.put
    token = uuid.uuid4().hex.encode()
    tars = [_tar({"a.txt": b"from the gzip layer\n", "id.txt": token}), _tar({"b.txt": zstd_text, "id.txt": token})]
    compressed = [gzip.compress(tars[0], mtime=0),
                  subprocess.run(["zstd", "-q", "-c"], input=tars[1], capture_output=True, check=True).stdout]
    diff_ids = [f"sha256:{hashlib.sha256(t).hexdigest()}" for t in tars]
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/true"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, **put(config)},
        "layers": [{"mediaType": DOCKER_LAYER_GZIP, **put(compressed[0])},
                   {"mediaType": "application/vnd.docker.image.rootfs.diff.tar", **put(compressed[1])}],
    }).encode()
    return layout.finish(manifest, DOCKER_MANIFEST), diff_ids


def test_a_layer_the_applier_cannot_read_falls_back_to_diff_apply_with_one_warning(
    sandbox: SandboxInfo, tmp_path: Path
) -> None:
    layout, diff_ids = _zstd_image_layout(tmp_path / "layout")
    ref = asyncio.run(push_layout(sandbox.registry_host, "stream/zstd", "v1", layout))
    namespace = f"stream-zstd-{uuid.uuid4().hex[:6]}"
    result = _socirun(sandbox, namespace, "pull", "--progress", "json", *STREAM, ref)
    assert result.code == 0, result.stderr
    warnings = [e["message"] for e in result.of("warning")]
    assert len(warnings) == 1 and "zstd" in warnings[0] and "Diff.Apply" in warnings[0], warnings
    chain = chain_ids(diff_ids)
    dirs, parents, _labels = asyncio.run(_layer_dirs(sandbox.containerd_address, namespace, chain))
    assert parents == [None, chain[0]]
    assert (dirs[0] / "a.txt").read_bytes() == b"from the gzip layer\n"  # streamed by socirun's applier
    assert (dirs[1] / "b.txt").read_bytes() == b"from the zstd layer\n" * 1000  # containerd's Diff.Apply


def _twin_layout(sandbox: SandboxInfo, repo: str, root: Path) -> Path:
    """An OCI layout of the image `repo`:v1 with every layer gzipped again at another level: other blobs (other
    digests, other ingest refs) with the same diffIDs, hence the same chain of snapshots."""
    manifest, _chain = image_chain(sandbox.registry_host, repo, "v1")
    layout = _Layout(root)
    put = layout.put
    config = registry_blob_path(sandbox.dir, manifest["config"]["digest"]).read_bytes()
    layers = []
    for layer in manifest["layers"]:
        tar = gzip.decompress(registry_blob_path(sandbox.dir, layer["digest"]).read_bytes())
        layers.append({**layer, **put(gzip.compress(tar, compresslevel=1, mtime=0))})
        assert layers[-1]["digest"] != layer["digest"]
    twin = json.dumps({**manifest, "config": {**manifest["config"], **put(config)}, "layers": layers}).encode()
    return layout.finish(twin, manifest.get("mediaType", OCI_MANIFEST))


def test_a_layer_another_pull_commits_meanwhile_still_has_its_blob_stored_before_the_image_is_recorded(
    sandbox: SandboxInfo, ctr: Ctr, throttle: Callable[..., str], tmp_path: Path
) -> None:
    """A slow streaming pull finds its later layers already committed by a fast pull of a twin image (the same
    layers compressed otherwise: the same snapshots, other blobs) in the same namespace. Prepare says so and those
    layers need no unpacking, but the slow pull's downloads of their blobs are still under way. It used to record
    the image and exit at once, cutting those downloads off (a partial ingest left behind, under a resume lease);
    it now lets them finish first, so the image it records has every blob."""
    namespace = f"stream-race-{uuid.uuid4().hex[:6]}"
    ref = push_sample(sandbox.registry_host, "stream/race", "v1", [4, 4], seed=1521)
    twin = asyncio.run(push_layout(sandbox.registry_host, "stream/race-twin", "v1",
                                   _twin_layout(sandbox, "stream/race", tmp_path / "twin")))
    slow = ref.replace(sandbox.registry_host, throttle("500kB", total="500kB"), 1)  # about 10 s in all
    env = dict(os.environ, CONTAINERD_ADDRESS=sandbox.containerd_address, CONTAINERD_NAMESPACE=namespace)
    proc = subprocess.Popen([sys.executable, "-m", "socirun", "pull", "--progress", "plain", *STREAM, slow],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not _ingests(ctr, namespace) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _ingests(ctr, namespace), "the slow pull never started downloading"
        fast = _socirun(sandbox, namespace, "pull", "--progress", "quiet", "--pull-mode", "standard", twin)
        assert fast.code == 0, fast.stderr
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "snapshot present" in err, err  # the race happened: a layer was found committed by the twin's pull
    assert _ingests(ctr, namespace) == []  # no download was cut off
    leases = ctr("leases", "ls", namespace=namespace).stdout.splitlines()[1:]
    assert leases == [], leases  # nothing kept for a resume either
    manifest, _chain = image_chain(sandbox.registry_host, "stream/race", "v1")
    assert {layer["digest"] for layer in manifest["layers"]} <= _content(ctr, namespace)


def test_auto_streams_where_containerd_unpacks_one_layer_at_a_time_and_leaves_it_to_containerd_elsewhere(
    sandbox: SandboxInfo,
) -> None:
    """No --pull-mode: on containerd 1.6 (overlayfs cannot rebase) socirun's applier unpacks each layer as its bytes
    arrive; on 2.x (it can) containerd unpacks several layers at once itself, and the plan says which and why."""
    ref = push_sample(sandbox.registry_host, "stream/auto", "v1", [24], seed=1531)  # bigger than two 8 MiB chunks
    namespace = f"stream-auto-{uuid.uuid4().hex[:6]}"
    rebase = asyncio.run(_can_rebase(sandbox.containerd_address))
    planned = _socirun(sandbox, namespace, "plan", "--json", ref)
    assert planned.code == 0, planned.stderr
    transfer = json.loads(planned.stdout)["transfer"]
    assert transfer["strategy"] == ("parallel" if rebase else "parallel-stream"), transfer
    assert ("overlayfs can rebase, so containerd unpacks" in transfer["reason"]) == rebase, transfer
    pulled = _socirun(sandbox, namespace, "pull", "--progress", "json", ref)
    assert pulled.code == 0, pulled.stderr
    live = [e for e in pulled.of("layer_state") if e["detail"] == "as its bytes arrive"]
    assert bool(live) != rebase, live
    assert pulled.of("warning") == []  # auto's choice is not the user's --pull-mode: nothing to warn about
