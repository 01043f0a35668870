"""OCI image layouts on disk (https://github.com/opencontainers/image-spec/blob/v1.1.0/image-layout.md): write one
for a built sample (the input of `soci convert --standalone`), and read one back as the ordered list of what a
registry push needs (the output of `soci convert`).

A layout is a directory with `oci-layout` ({"imageLayoutVersion": "1.0.0"}), `index.json` (an OCI index whose
entries are the layout's top-level images) and `blobs/sha256/<hex>`, one file per blob of any kind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from socirun.errors import SandboxError
from socirun.oci import INDEX_TYPES, MANIFEST_TYPES, OCI_INDEX, Descriptor, host_platform

if TYPE_CHECKING:
    from socirun.sandbox.sample import SampleImage

LAYOUT_FILE = "oci-layout"
LAYOUT_VERSION = "1.0.0"
INDEX_FILE = "index.json"
# The image-spec annotation that names an index.json entry (what `skopeo`/`oras` call the tag).
REF_NAME = "org.opencontainers.image.ref.name"


def blob_path(layout: Path, digest: str) -> Path:
    algorithm, _, hex_digest = digest.partition(":")
    if algorithm != "sha256" or len(hex_digest) != 64 or not all(c in "0123456789abcdef" for c in hex_digest):
        raise SandboxError(f'"{digest}" is not a sha256 digest.')
    return layout / "blobs" / "sha256" / hex_digest


def link_or_copy(source: Path, target: Path) -> None:
    """`target` becomes a hard link to `source` (same file system: no bytes copied), else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def write_sample_layout(image: SampleImage, layout: Path, *, ref_name: str = "") -> Descriptor:
    """Write `image` as an OCI image layout in the (new or empty) directory `layout`; layer blobs are hard links
    to the sample's cache files. index.json lists the manifest with the host platform (the sample's), and with
    `ref_name` as its org.opencontainers.image.ref.name. Returns the manifest's descriptor."""
    layout.mkdir(parents=True, exist_ok=True)
    (layout / LAYOUT_FILE).write_text(json.dumps({"imageLayoutVersion": LAYOUT_VERSION}))
    blob_path(layout, image.config_digest).parent.mkdir(parents=True, exist_ok=True)
    blob_path(layout, image.config_digest).write_bytes(image.config_bytes)
    blob_path(layout, image.manifest_digest).write_bytes(image.manifest_bytes)
    for layer in image.layers:
        link_or_copy(layer.path, blob_path(layout, layer.digest))
    platform = host_platform()
    entry: dict[str, Any] = image.manifest_descriptor().to_json()
    entry["platform"] = {"architecture": platform.architecture, "os": platform.os} | (
        {"variant": platform.variant} if platform.variant else {})
    if ref_name:
        entry["annotations"] = {REF_NAME: ref_name}
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]}
    (layout / INDEX_FILE).write_text(json.dumps(index, separators=(",", ":")))
    return Descriptor.from_json(entry)


@dataclass(frozen=True)
class LayoutManifest:
    """A manifest or index of a layout, with its bytes, as a registry stores it."""

    descriptor: Descriptor
    body: bytes


@dataclass(frozen=True)
class PushPlan:
    """What pushing a layout's top-level image means: every blob (config, layers, zTOCs: no manifests), then
    `manifests` in order, each after every manifest it refers to; the last one is `top`, the one to tag."""

    blobs: tuple[Descriptor, ...]
    manifests: tuple[LayoutManifest, ...]

    @property
    def top(self) -> LayoutManifest:
        return self.manifests[-1]


def top_descriptor(index_json: bytes) -> Descriptor:
    """The one top-level entry of a layout's index.json (`soci convert` writes exactly one)."""
    try:
        entries = json.loads(index_json)["manifests"]
        tops = [Descriptor.from_json(entry) for entry in entries]
    except (ValueError, KeyError, TypeError) as err:
        raise SandboxError(f"the layout's {INDEX_FILE} is not an OCI index ({err}).") from None
    if len(tops) != 1:
        raise SandboxError(f"the layout's {INDEX_FILE} lists {len(tops)} images; one was expected.")
    return tops[0]


def push_plan(top: Descriptor, read: Callable[[Descriptor], bytes]) -> PushPlan:
    """Walk from `top` through indexes and manifests (`read` gives a descriptor's bytes) to the push order:
    a registry refuses a manifest whose blobs are missing, and an index whose manifests are (pure)."""
    blobs: dict[str, Descriptor] = {}
    manifests: dict[str, LayoutManifest] = {}

    def visit(desc: Descriptor, depth: int) -> None:
        if desc.digest in manifests:
            return
        if depth > 8:
            raise SandboxError("the layout nests indexes more than 8 deep.")
        body = read(desc)
        doc = json.loads(body)
        media_type = desc.media_type or str(doc.get("mediaType", ""))
        if media_type in INDEX_TYPES:
            for child in doc.get("manifests", []):
                visit(Descriptor.from_json(child), depth + 1)
        elif media_type in MANIFEST_TYPES:
            for blob in [doc["config"], *doc.get("layers", [])]:
                blob_desc = Descriptor.from_json(blob)
                blobs.setdefault(blob_desc.digest, blob_desc)
        else:
            raise SandboxError(f"{desc.digest} has media type {media_type!r}, neither an index nor a manifest.")
        manifests[desc.digest] = LayoutManifest(Descriptor(media_type, desc.digest, desc.size), body)

    visit(top, 0)
    return PushPlan(tuple(blobs.values()), tuple(manifests.values()))


def read_layout(layout: Path) -> PushPlan:
    """The push plan of the layout in `layout` (its one top-level image)."""
    try:
        top = top_descriptor((layout / INDEX_FILE).read_bytes())
    except OSError as err:
        raise SandboxError(f"{layout} is not an OCI image layout ({err.strerror}).") from None

    def read(desc: Descriptor) -> bytes:
        try:
            return blob_path(layout, desc.digest).read_bytes()
        except OSError as err:
            raise SandboxError(f"the layout {layout} lacks {desc.digest} ({err.strerror}).") from None

    return push_plan(top, read)
