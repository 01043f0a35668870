"""OCI / Docker image data shared by the registry client, the containerd client and the pull engine (pure)."""

from __future__ import annotations

import hashlib
import json
import platform as _platform
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from socirun.errors import MalformedImageError, UsageError

# Media types (image-spec and Docker's distribution formats).
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})


def is_layer_type(media_type: str) -> bool:
    """containerd's `images.IsLayerType`."""
    return media_type.startswith("application/vnd.oci.image.layer.") or media_type.startswith(
        "application/vnd.docker.image.rootfs."
    )


def layer_compression(media_type: str) -> str:
    """'gzip', 'zstd' or 'uncompressed', for display."""
    if media_type.endswith("gzip"):
        return "gzip"
    if media_type.endswith("zstd"):
        return "zstd"
    return "uncompressed"


# go-digest's registered algorithms (what containerd accepts, and socirun.reference for a user's @digest), each
# with its exact lowercase hex length: md5 or sha1 (or a truncated sha256) would let a registry substitute bytes.
DIGEST_ALGORITHMS = frozenset({"sha256", "sha384", "sha512"})
_DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}|sha384:[a-f0-9]{96}|sha512:[a-f0-9]{128}")


def _show(value: object) -> str:
    """A registry-supplied value for an error sentence: repr escapes control characters, and it is cut short."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_digest(value: object, what: str) -> str:
    if not isinstance(value, str) or not _DIGEST_RE.fullmatch(value):
        raise MalformedImageError(f"{what} has the digest {_show(value)}, not a sha256, sha384 or sha512 digest")
    return value


def _optional_str(obj: Mapping[str, Any], key: str, what: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MalformedImageError(f"{what} has a {key} that is not a string ({_show(value)})")
    return value


def _string_map(value: object, key: str, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise MalformedImageError(f"{what} has {key} that are not a JSON object of strings")
    return dict(value)


def load_json_object(data: bytes, what: str) -> dict[str, Any]:
    """`data` parsed as a JSON object; anything else (bad JSON, nesting too deep for the parser, an array)
    is a MalformedImageError naming `what`."""
    try:
        doc = json.loads(data)
    except RecursionError:
        raise MalformedImageError(f"{what} nests JSON too deeply to be read") from None
    except ValueError:  # UnicodeDecodeError and JSONDecodeError included
        raise MalformedImageError(f"{what} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise MalformedImageError(f"{what} is not a JSON object")
    return doc


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    platform: Platform | None = field(default=None, compare=False)
    # Set on index entries that are artifacts (a SOCI index, a signature), not runnable images.
    artifact_type: str = field(default="", compare=False)

    @classmethod
    def from_json(cls, obj: object, what: str = "a descriptor") -> Descriptor:
        """A descriptor from a manifest or index, its types checked (MalformedImageError names `what`)."""
        if not isinstance(obj, dict):
            raise MalformedImageError(f"{what} is not a JSON object")
        if "digest" not in obj:
            raise MalformedImageError(f"{what} has no digest")
        digest = check_digest(obj["digest"], what)
        size = obj.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise MalformedImageError(f"{what} has the size {_show(size)}, not a byte count")
        plat = obj.get("platform")
        if plat is not None and not isinstance(plat, dict):
            raise MalformedImageError(f"{what} has a platform that is not a JSON object")
        return cls(
            media_type=_optional_str(obj, "mediaType", what),
            digest=digest,
            size=size,
            annotations=_string_map(obj.get("annotations"), "annotations", what),
            platform=Platform.from_json(plat, what) if plat is not None else None,
            artifact_type=_optional_str(obj, "artifactType", what),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], what: str = "a platform") -> Platform:
        return cls(
            _optional_str(obj, "os", what),
            _optional_str(obj, "architecture", what),
            _optional_str(obj, "variant", what),
        )

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def matches(self, other: Platform) -> bool:
        """True when `other` (an index entry's platform) can run where `self` is wanted."""
        if self.os != other.os or self.architecture != other.architecture:
            return False
        return not self.variant or not other.variant or self.variant == other.variant


def descriptor_list(doc: Mapping[str, Any], key: str, what: str, item: str) -> list[Descriptor]:
    """The descriptors a document lists under `key` (an index's `manifests`, a manifest's `layers`), each
    type-checked and named "<item> <i> of <what>" in an error; none when the key is absent."""
    entries = doc.get(key)
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise MalformedImageError(f"{what} has {key} that are not a JSON array")
    return [Descriptor.from_json(entry, f"{item} {i} of {what}") for i, entry in enumerate(entries)]


def parse_index(data: bytes, what: str) -> list[Descriptor]:
    """The `manifests` of an image index (or Docker manifest list), every entry type-checked."""
    return descriptor_list(load_json_object(data, what), "manifests", what, "entry")


def parse_manifest(data: bytes, what: str) -> tuple[Descriptor, tuple[Descriptor, ...]]:
    """(config, layers) of an image manifest, type-checked."""
    doc = load_json_object(data, what)
    if "config" not in doc:
        raise MalformedImageError(f"{what} has no config")
    config = Descriptor.from_json(doc["config"], f"the config descriptor of {what}")
    return config, tuple(descriptor_list(doc, "layers", what, "layer"))


def _string_list(value: object, key: str, what: str) -> None:
    if value is None:
        return
    if isinstance(value, str):
        # docker's StrSlice would take it as one word; the image spec (and containerd's types, so nerdctl)
        # require an array, and treating it as a sequence would split it into characters.
        raise MalformedImageError(
            f"{what} gives {key} as the string {_show(value)}; the image spec requires an array of strings"
        )
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MalformedImageError(f"{what} has a {key} that is not an array of strings")


def check_image_config(doc: Mapping[str, Any], what: str) -> None:
    """Check the types of the image config fields socirun reads (image-spec config.md), so that nothing later
    meets a list where an object belongs or splits a string into characters."""
    for key in ("os", "architecture", "variant"):
        _optional_str(doc, key, what)
    rootfs = doc.get("rootfs")
    if rootfs is not None:
        if not isinstance(rootfs, dict):
            raise MalformedImageError(f"{what} has a rootfs that is not a JSON object")
        diff_ids = rootfs.get("diff_ids")
        if diff_ids is not None:
            if not isinstance(diff_ids, list):
                raise MalformedImageError(f"{what} has diff_ids that are not a JSON array")
            for i, diff_id in enumerate(diff_ids):
                check_digest(diff_id, f"diff ID {i} of {what}")
    cfg = doc.get("config")
    if cfg is None:
        return
    if not isinstance(cfg, dict):
        raise MalformedImageError(f"{what} has a config that is not a JSON object")
    for key in ("Env", "Entrypoint", "Cmd"):
        _string_list(cfg.get(key), key, what)
    for key in ("WorkingDir", "User", "StopSignal"):
        _optional_str(cfg, key, what)
    _string_map(cfg.get("Labels"), "Labels", what)
    for key in ("Volumes", "ExposedPorts"):
        value = cfg.get(key)
        if value is not None and not isinstance(value, dict):
            raise MalformedImageError(f"{what} has {key} that are not a JSON object")


def parse_image_config(data: bytes, what: str) -> dict[str, Any]:
    """An image config blob, its fields type-checked (check_image_config)."""
    doc = load_json_object(data, what)
    check_image_config(doc, what)
    return doc


_ARCH_ALIASES = {
    "x86_64": "amd64",
    "x86-64": "amd64",
    "aarch64": "arm64",
    "armhf": "arm",
    "armel": "arm",
    "i386": "386",
    "i686": "386",
}


def normalize_arch(arch: str) -> str:
    return _ARCH_ALIASES.get(arch.lower(), arch.lower())


def host_platform() -> Platform:
    arch = normalize_arch(_platform.machine())
    variant = "v8" if arch == "arm64" else ""
    return Platform("linux", arch, variant)


def parse_platform(text: str) -> Platform:
    """`linux/amd64`, `linux/arm64/v8`, `amd64` (os defaults to linux), as containerd's platforms.Parse."""
    parts = [p.strip() for p in text.strip().split("/")]
    if not text.strip() or any(not p for p in parts) or len(parts) > 3:
        raise UsageError(f'invalid platform "{text}": expected os[/arch[/variant]], e.g. linux/amd64')
    if len(parts) == 1:
        # A lone word is an architecture when it looks like one, else an OS (containerd does the same).
        word = parts[0].lower()
        if word in ("linux", "windows", "darwin", "freebsd"):
            return Platform(word, host_platform().architecture)
        return Platform("linux", normalize_arch(word))
    variant = parts[2] if len(parts) == 3 else ""
    arch = normalize_arch(parts[1])
    if arch == "arm64" and not variant:
        variant = "v8"
    return Platform(parts[0].lower(), arch, variant)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chain_ids(diff_ids: list[str]) -> list[str]:
    """image-spec identity.ChainIDs: chain[0] = diff[0]; chain[i] = sha256(chain[i-1] + " " + diff[i])."""
    chain: list[str] = []
    for diff_id in diff_ids:
        if not chain:
            chain.append(diff_id)
        else:
            chain.append(sha256_digest(f"{chain[-1]} {diff_id}".encode()))
    return chain
