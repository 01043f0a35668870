"""OCI / Docker image data shared by the registry client, the containerd client and the pull engine (pure)."""

from __future__ import annotations

import hashlib
import platform as _platform
from dataclasses import dataclass, field
from typing import Any

from socirun.errors import UsageError

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
    def from_json(cls, obj: dict[str, Any]) -> Descriptor:
        plat = obj.get("platform")
        return cls(
            media_type=str(obj.get("mediaType", "")),
            digest=str(obj["digest"]),
            size=int(obj["size"]),
            annotations=dict(obj.get("annotations") or {}),
            platform=Platform.from_json(plat) if isinstance(plat, dict) else None,
            artifact_type=str(obj.get("artifactType", "")),
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
    def from_json(cls, obj: dict[str, Any]) -> Platform:
        return cls(str(obj.get("os", "")), str(obj.get("architecture", "")), str(obj.get("variant", "")))

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def matches(self, other: Platform) -> bool:
        """True when `other` (an index entry's platform) can run where `self` is wanted."""
        if self.os != other.os or self.architecture != other.architecture:
            return False
        return not self.variant or not other.variant or self.variant == other.variant


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
