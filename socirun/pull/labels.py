"""Labels a containerd client must set so that GC, `ctr` and remote snapshotters see a pull as containerd's own
client would leave it (https://github.com/containerd/containerd/blob/v1.6.20/docs/garbage-collection.md). Pure
functions."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

from socirun.oci import CONFIG_TYPES, INDEX_TYPES, MANIFEST_TYPES, Descriptor, is_layer_type

GC_REF_CONTENT = "containerd.io/gc.ref.content"
GC_REF_SNAPSHOT = "containerd.io/gc.ref.snapshot"
GC_EXPIRE = "containerd.io/gc.expire"
DISTRIBUTION_SOURCE = "containerd.io/distribution.source"
UNCOMPRESSED = "containerd.io/uncompressed"
SNAPSHOT_REF = "containerd.io/snapshot.ref"
CRI_IMAGE_REF = "containerd.io/snapshot/cri.image-ref"
CRI_LAYER_DIGEST = "containerd.io/snapshot/cri.layer-digest"
CRI_IMAGE_LAYERS = "containerd.io/snapshot/cri.image-layers"
CRI_MANIFEST_DIGEST = "containerd.io/snapshot/cri.manifest-digest"

# containerd refuses a label whose key plus value exceed this many bytes.
MAX_LABEL_BYTES = 4096


def index_labels(children: Sequence[Descriptor]) -> dict[str, str]:
    """An index references every child manifest, not only the platform pulled."""
    return {f"{GC_REF_CONTENT}.m.{i}": child.digest for i, child in enumerate(children)}


def manifest_labels(config: Descriptor, layers: Sequence[Descriptor]) -> dict[str, str]:
    labels = {f"{GC_REF_CONTENT}.config": config.digest}
    labels.update({f"{GC_REF_CONTENT}.l.{i}": layer.digest for i, layer in enumerate(layers)})
    return labels


def snapshot_gc_label(snapshotter: str, top_chain_id: str) -> dict[str, str]:
    """Set on the config: keeps the unpacked snapshot chain alive as long as the image is."""
    return {f"{GC_REF_SNAPSHOT}.{snapshotter}": top_chain_id}


def distribution_source_label(host: str, repository: str, existing: str | None = None) -> dict[str, str]:
    """`containerd.io/distribution.source.<host>`: sorted, de-duplicated repositories; the port is dropped.

    Returns no label when it would exceed containerd's size limit (the Go client skips it too).
    """
    hostname = urlsplit("//" + host).hostname or host
    key = f"{DISTRIBUTION_SOURCE}.{hostname}"
    repos = {r for r in (existing or "").split(",") if r}
    repos.add(repository)
    value = ",".join(sorted(repos))
    if len(key) + len(value) > MAX_LABEL_BYTES:
        return {}
    return {key: value}


def remote_snapshot_labels(
    image_ref: str, manifest_digest: str, layers: Sequence[Descriptor], index: int
) -> dict[str, str]:
    """The `cri.*` Prepare labels remote snapshotters (SOCI, stargz) need; image-layers lists this and every
    later layer, cut so key plus value stay within containerd's limit."""
    digests: list[str] = []
    budget = MAX_LABEL_BYTES - len(CRI_IMAGE_LAYERS)
    for layer in layers[index:]:
        extra = len(layer.digest) + (1 if digests else 0)
        if extra > budget:
            break
        digests.append(layer.digest)
        budget -= extra
    return {
        CRI_IMAGE_REF: image_ref,
        CRI_LAYER_DIGEST: layers[index].digest,
        CRI_IMAGE_LAYERS: ",".join(digests),
        CRI_MANIFEST_DIGEST: manifest_digest,
    }


def unpack_key(chain_id: str) -> str:
    """`extract-<unique> <chainID>`, the active-snapshot key shape containerd's unpacker uses."""
    unique = f"{time.time_ns() % 1_000_000_000}-{base64.urlsafe_b64encode(os.urandom(3)).decode()}"
    return f"extract-{unique} {chain_id}"


def ingest_ref(desc: Descriptor) -> str:
    """containerd's `remotes.MakeRefKey`: the content-store ingest ref for a descriptor."""
    key = desc.digest
    name = desc.annotations.get("org.opencontainers.image.ref.name")
    if name:
        key = f"{name}@{desc.digest}"
    if desc.media_type in MANIFEST_TYPES:
        return f"manifest-{key}"
    if desc.media_type in INDEX_TYPES:
        return f"index-{key}"
    if is_layer_type(desc.media_type):
        return f"layer-{key}"
    if desc.media_type in CONFIG_TYPES:
        return f"config-{key}"
    return f"unknown-{key}"
