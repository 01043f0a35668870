"""Attach a SOCI index to a pushed sample image, as `soci create` + `soci push` (v1) or `soci convert` (v2)
would leave it in a registry (https://github.com/awslabs/soci-snapshotter/blob/v0.15.0/docs/soci-index-manifest-v2.md):

- the index is an OCI image manifest whose config is the empty JSON `{}` with `config.mediaType` = the artifact
  type, and whose `layers` are one zTOC descriptor per layer of at least `min_layer_size` bytes (media type
  `application/octet-stream`, annotations `com.amazon.soci.image-layer-digest`, `…-mediaType`, `…span-size`);
- v1: the index has a `subject` (the image manifest) and is found through the referrers API, or — distribution
  2.8 has none — the referrers tag `sha256-<hex>`, an OCI index listing it with its `artifactType`;
- v2: the image manifest gets the annotation `com.amazon.soci.index-digest` (a new manifest digest), and the
  tag becomes an OCI index holding that manifest and the SOCI index entry (`artifactType` v2, the platform,
  annotation `com.amazon.soci.image-manifest-digest`).

**The zTOC bytes are placeholders** (a line naming the layer): the SOCI emulator never reads them, and they are
not a valid zTOC flatbuffer, so the real soci-snapshotter could not use these images for lazy loading.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import aiohttp

from socirun.oci import OCI_INDEX, OCI_MANIFEST, host_platform, sha256_digest
from socirun.sandbox.push import PushStats as _PushStats
from socirun.sandbox.push import _Pusher
from socirun.sandbox.sample import SampleImage
from socirun.soci import constants as c

SociVersion = Literal["v1", "v2", "none"]


def _dumps(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def build_index(image: SampleImage, version: Literal["v1", "v2"], min_layer_size: int = c.DEFAULT_MIN_LAYER_SIZE,
                ) -> tuple[bytes, list[tuple[str, bytes]]]:
    """(index manifest bytes, [(zTOC digest, placeholder bytes)])."""
    ztocs: list[tuple[str, bytes]] = []
    blobs: list[dict[str, Any]] = []
    for layer in image.layers:
        if layer.size < min_layer_size:
            continue  # `soci create/convert`: "ztoc skipped - layer … size N is less than min-layer-size M"
        data = f"socirun sample placeholder zTOC for layer {layer.digest} (not a real zTOC)\n".encode()
        digest = sha256_digest(data)
        ztocs.append((digest, data))
        blobs.append({
            "mediaType": c.ZTOC_MEDIA_TYPE, "digest": digest, "size": len(data),
            "annotations": {c.ANN_LAYER_DIGEST: layer.digest, c.ANN_LAYER_MEDIA_TYPE: layer.media_type,
                            c.ANN_SPAN_SIZE: str(c.DEFAULT_SPAN_SIZE)},
        })
    artifact = c.INDEX_V1 if version == "v1" else c.INDEX_V2
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": artifact, "digest": c.EMPTY_CONFIG_DIGEST, "size": 2},
        "layers": blobs,
    }
    if version == "v1":
        doc["subject"] = image.manifest_descriptor().to_json()
    doc["annotations"] = {c.ANN_BUILD_TOOL: "socirun sample (placeholder zTOCs)"}
    return _dumps(doc), ztocs


async def _put_manifest(pusher: _Pusher, ref: str, body: bytes, media_type: str) -> None:
    url = pusher.base / "v2" / pusher.name / "manifests" / ref
    await pusher._call("PUT", url, 201, data=body, headers={"Content-Type": media_type})


async def attach_soci_index(registry_host: str, name: str, tag: str, image: SampleImage,
                            version: Literal["v1", "v2"], min_layer_size: int = c.DEFAULT_MIN_LAYER_SIZE) -> str:
    """Push the index (and for v2 the annotated manifest and the OCI index under `tag`); returns the SOCI
    index digest. The image itself must have been pushed already."""
    index_bytes, ztocs = build_index(image, version, min_layer_size)
    index_digest = sha256_digest(index_bytes)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        pusher = _Pusher(session, registry_host, name, _PushStats())
        await pusher.push_blob(c.EMPTY_CONFIG_DIGEST, 2, b"{}")
        for digest, data in ztocs:
            await pusher.push_blob(digest, len(data), data)
        await _put_manifest(pusher, index_digest, index_bytes, OCI_MANIFEST)
        if version == "v1":
            referrers = _dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": index_digest, "size": len(index_bytes),
                 "artifactType": c.INDEX_V1}]})
            await _put_manifest(pusher, image.manifest_digest.replace(":", "-", 1), referrers, OCI_INDEX)
            return index_digest
        manifest = json.loads(image.manifest_bytes)
        manifest["annotations"] = {**manifest.get("annotations", {}), c.ANN_INDEX_DIGEST: index_digest}
        annotated = _dumps(manifest)
        annotated_digest = sha256_digest(annotated)
        await _put_manifest(pusher, annotated_digest, annotated, OCI_MANIFEST)
        platform = host_platform()
        plat: dict[str, str] = {"architecture": platform.architecture, "os": platform.os}
        if platform.variant:
            plat["variant"] = platform.variant
        oci_index = _dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": annotated_digest, "size": len(annotated), "platform": plat},
            {"mediaType": OCI_MANIFEST, "digest": index_digest, "size": len(index_bytes), "platform": plat,
             "artifactType": c.INDEX_V2, "annotations": {c.ANN_IMAGE_MANIFEST_DIGEST: annotated_digest}},
        ]})
        await _put_manifest(pusher, tag, oci_index, OCI_INDEX)
    return index_digest
