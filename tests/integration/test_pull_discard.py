"""`--discard-unpacked-layers` with `--pull-mode parallel-stream` against the real sandbox: a layer socirun's applier
unpacks as its bytes arrive is committed exactly as without it, but its blob never reaches containerd's content
store (no blob, no ingest, nothing in a lease); the manifest and config are stored, the image runs, and a second
run uses it without pulling. What Diff.Apply must read (a layer the applier gives up on) is still stored.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from pathlib import Path

import pytest

from socirun.oci import chain_ids
from socirun.sandbox.push import push_layout
from socirun.sandbox.sample import push_sample
from socirun.sandbox.sandbox import SandboxInfo
from tests.integration.test_parallel_pull import SAMPLE_TEXT, Ctr, image_chain
from tests.integration.test_pull_stream import (
    DISCARD,
    _content,
    _ingests,
    _layer_dirs,
    _socirun,
    _zstd_image_layout,
    five_layer_sample,
)
from tests.integration.test_unpack_differential import assert_same_tree

# A corrupt blob under discard: test_pull_stream.py's test_parallel_stream_corrupt_layer_commits_nothing[discarded].


def test_discarding_pull_commits_every_layer_stores_no_layer_blob_and_the_image_runs(
    sandbox: SandboxInfo, ctr: Ctr, tmp_path: Path
) -> None:
    ref, manifest, chain, _diff_ids = five_layer_sample(sandbox, "discard/valid", seed=1511)
    discarded, standard = f"discard-{uuid.uuid4().hex[:6]}", f"standard-{uuid.uuid4().hex[:6]}"

    result = _socirun(sandbox, discarded, "pull", "--progress", "json", *DISCARD, ref)
    assert result.code == 0, result.stderr
    plan = result.of("plan_made")[0]
    assert any("discard_unpacked_layers: the blob of a layer unpacked as its bytes arrive is not written" in r
               for r in plan["reasons"]), plan["reasons"]
    assert not result.of("warning")
    live = {e["digest"] for e in result.of("layer_state") if e["detail"] == "as its bytes arrive"}
    left_out = {e["digest"] for e in result.of("layer_state")
                if e["detail"] == "not stored (discard_unpacked_layers)"}
    layers = [layer["digest"] for layer in manifest["layers"]]
    assert manifest["layers"][0]["digest"] in live and len(live) >= len(chain) - 1, result.of("layer_state")
    assert left_out == live  # exactly the layers fed live are left out

    # Every snapshot committed with the right chain, each tree what Diff.Apply makes of the same layer.
    assert _socirun(sandbox, standard, "pull", "--progress", "quiet", "--pull-mode", "standard", ref).code == 0
    got, got_parents, got_labels = asyncio.run(_layer_dirs(sandbox.containerd_address, discarded, chain))
    want, want_parents, _ = asyncio.run(_layer_dirs(sandbox.containerd_address, standard, chain))
    assert got_parents == want_parents == [None, *chain[:-1]]
    for i, (mine, theirs) in enumerate(zip(got, want, strict=True)):
        assert_same_tree(theirs, mine, None, f"layer {i}")

    stored = _content(ctr, discarded)
    manifest_digest = result.finished()["manifest_digest"]
    assert {manifest_digest, manifest["config"]["digest"]} <= stored
    # The manifest still names every layer (containerd's GC skips a reference to content that is not there).
    refs = {v for k, v in got_labels[manifest_digest].items() if k.startswith("containerd.io/gc.ref.content.l.")}
    assert refs == set(layers)
    assert live.isdisjoint(stored), live & stored  # no blob of a live layer
    assert set(layers) - live <= stored  # a layer containerd unpacked is stored as usual
    assert _ingests(ctr, discarded) == []
    assert ctr("leases", "ls", namespace=discarded).stdout.splitlines()[1:] == []
    # containerd's own check sees the layers missing; the snapshots are what the runtime uses.
    check = ctr("images", "check", namespace=discarded).stdout
    assert "incomplete" in check, check
    # GC ignores the manifest's references to the missing blobs and keeps the rest.
    ctr("content", "gc", namespace=discarded, check=False)
    assert {manifest_digest, manifest["config"]["digest"]} <= _content(ctr, discarded)

    data_root = tmp_path / "data"
    ran = _socirun(sandbox, discarded, "run", "--rm", "--network", "none", "--pull", "never", ref, data_root=data_root)
    assert ran.code == 0, ran.stderr
    assert SAMPLE_TEXT in ran.stdout
    # The default --pull missing finds the image (manifest, config and snapshots): no pull at all.
    again = _socirun(sandbox, discarded, "run", "--rm", "--network", "none", "--progress", "json", ref,
                     data_root=data_root)
    assert again.code == 0, again.stderr
    assert SAMPLE_TEXT in again.stdout
    assert "Unable to find image" not in again.stderr
    assert not again.of("resolving") and not again.of("pull_finished"), again.stderr
    listed = _socirun(sandbox, discarded, "images", data_root=data_root)
    assert listed.code == 0 and "discard/valid" in listed.stdout, listed.stdout + listed.stderr


@pytest.mark.parametrize("size", ["small", "large"])
def test_a_layer_the_applier_gives_up_on_is_stored_for_diff_apply_even_when_discarding(
    sandbox: SandboxInfo, ctr: Ctr, tmp_path: Path, size: str
) -> None:
    # small: the whole blob has gone to the applier before it gives up, so it is stored once the download ended;
    # large (incompressible, many chunks): the download is stopped when the applier gives up and the blob fetched
    # again into the store.
    text = b"from the zstd layer\n" * 1000 if size == "small" else random.Random(1514).randbytes(6 << 20)
    layout, diff_ids = _zstd_image_layout(tmp_path / "layout", text)
    ref = asyncio.run(push_layout(sandbox.registry_host, f"discard/zstd-{size}", "v1", layout))
    index = json.loads((layout / "index.json").read_text())
    manifest_blob = layout / "blobs" / "sha256" / index["manifests"][0]["digest"].split(":")[1]
    gzip_layer, zstd_layer = (layer["digest"] for layer in json.loads(manifest_blob.read_text())["layers"])
    namespace = f"discard-zstd-{uuid.uuid4().hex[:6]}"
    result = _socirun(sandbox, namespace, "pull", "--progress", "json", *DISCARD, ref)
    assert result.code == 0, result.stderr
    warnings = [e["message"] for e in result.of("warning")]
    assert len(warnings) == 1 and "zstd" in warnings[0], warnings
    chain = chain_ids(diff_ids)
    dirs, parents, labels = asyncio.run(_layer_dirs(sandbox.containerd_address, namespace, chain))
    assert parents == [None, chain[0]]
    assert (dirs[0] / "a.txt").read_bytes() == b"from the gzip layer\n"
    assert (dirs[1] / "b.txt").read_bytes() == text
    states = [(e["state"], e["detail"]) for e in result.of("layer_state") if e["digest"] == zstd_layer]
    left_out_first = ("downloaded", "not stored (discard_unpacked_layers)") in states
    assert left_out_first == (size == "small"), states
    # Written again, into the store (from the registry, or found whole in another namespace's copy).
    assert [state for state, _detail in states].count("downloading") == 2, states
    stored = _content(ctr, namespace)
    assert gzip_layer not in stored  # unpacked live: left out
    assert zstd_layer in stored  # Diff.Apply read it: stored, labelled as containerd's unpacker labels it
    assert labels[zstd_layer].get("containerd.io/uncompressed") == diff_ids[1]
    assert _ingests(ctr, namespace) == []


def test_discard_with_another_pull_mode_keeps_every_blob_and_says_so_once(sandbox: SandboxInfo, ctr: Ctr) -> None:
    ref = push_sample(sandbox.registry_host, "discard/parallel", "v1", [2, 1], seed=1513)
    manifest, _chain = image_chain(sandbox.registry_host, "discard/parallel", "v1")
    namespace = f"discard-par-{uuid.uuid4().hex[:6]}"
    result = _socirun(sandbox, namespace, "pull", "--progress", "json", "--pull-mode", "parallel",
                      "--chunk-size", "1MiB", "--discard-unpacked-layers", ref)
    assert result.code == 0, result.stderr
    warnings = [e["message"] for e in result.of("warning")]
    assert len(warnings) == 1 and "discard_unpacked_layers has no effect on a parallel pull" in warnings[0]
    assert {layer["digest"] for layer in manifest["layers"]} <= _content(ctr, namespace)
