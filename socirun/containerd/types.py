"""The plain data the containerd client hands out instead of protobuf messages, and the conversions between them.

Each type reads its message with `from_proto`; the few that go back to containerd (Mount, Descriptor) also have
a `to_proto`. Message maps become dicts and timestamps seconds since the epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from socirun.containerd.api.services.snapshots.v1 import snapshots_pb2
from socirun.containerd.api.types import descriptor_pb2, mount_pb2
from socirun.oci import Descriptor

# Snapshot kinds, as containerd's Go `snapshots.Kind.String()` names them, lower-cased.
_SNAPSHOT_KINDS: dict[int, str] = {
    int(snapshots_pb2.UNKNOWN): "unknown",
    int(snapshots_pb2.VIEW): "view",
    int(snapshots_pb2.ACTIVE): "active",
    int(snapshots_pb2.COMMITTED): "committed",
}


def labels_from_proto(msg_map: Any) -> dict[str, str]:
    """A protobuf map<string, string> (labels, exports) as a plain dict."""
    return {str(k): str(v) for k, v in msg_map.items()}


def seconds_from_proto(ts: Any) -> float:
    """A google.protobuf.Timestamp as seconds since the epoch."""
    return float(ts.seconds) + float(ts.nanos) / 1e9


@dataclass(frozen=True)
class Mount:
    type: str
    source: str
    target: str = ""
    options: tuple[str, ...] = ()

    def to_proto(self) -> Any:
        return mount_pb2.Mount(type=self.type, source=self.source, target=self.target, options=self.options)

    @classmethod
    def from_proto(cls, msg: Any) -> Mount:
        return cls(str(msg.type), str(msg.source), str(msg.target), tuple(str(o) for o in msg.options))


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    parent: str
    kind: str  # "committed", "active", "view" or "unknown"
    labels: dict[str, str] = field(hash=False)

    @classmethod
    def from_proto(cls, info: Any) -> SnapshotInfo:
        return cls(
            name=str(info.name),
            parent=str(info.parent),
            kind=_SNAPSHOT_KINDS.get(int(info.kind), "unknown"),
            labels=labels_from_proto(info.labels),
        )


@dataclass(frozen=True)
class ContentInfo:
    digest: str
    size: int
    labels: dict[str, str] = field(hash=False)
    created_at: float = 0.0  # seconds since the epoch

    @classmethod
    def from_proto(cls, info: Any) -> ContentInfo:
        return cls(
            digest=str(info.digest),
            size=int(info.size),
            labels=labels_from_proto(info.labels),
            created_at=seconds_from_proto(info.created_at),
        )


@dataclass(frozen=True)
class IngestStatus:
    ref: str
    offset: int
    total: int

    @classmethod
    def from_proto(cls, status: Any) -> IngestStatus:
        return cls(ref=str(status.ref), offset=int(status.offset), total=int(status.total))


@dataclass(frozen=True)
class PluginInfo:
    type: str
    id: str
    ok: bool
    error: str  # init_err.message when not ok (contains "skip plugin" for plugins skipped on purpose)
    exports: dict[str, str] = field(hash=False)
    # What the plugin says it can do, e.g. overlayfs' "rebase" in containerd 2.x (a snapshot prepared without a
    # parent may be given one at Commit); containerd 1.6's snapshotters advertise none.
    capabilities: tuple[str, ...] = ()

    @classmethod
    def from_proto(cls, plugin: Any) -> PluginInfo:
        failed = plugin.HasField("init_err")
        return cls(
            type=str(plugin.type),
            id=str(plugin.id),
            ok=not failed,
            error=str(plugin.init_err.message) if failed else "",
            exports=labels_from_proto(plugin.exports),
            capabilities=tuple(str(c) for c in plugin.capabilities),
        )


@dataclass(frozen=True)
class LeaseInfo:
    id: str
    labels: dict[str, str] = field(hash=False)
    created_at: float = 0.0  # seconds since the epoch

    @classmethod
    def from_proto(cls, lease: Any) -> LeaseInfo:
        return cls(
            id=str(lease.id), labels=labels_from_proto(lease.labels), created_at=seconds_from_proto(lease.created_at)
        )


@dataclass(frozen=True)
class ImageRecord:
    name: str
    target: Descriptor
    labels: dict[str, str] = field(hash=False)

    @classmethod
    def from_proto(cls, image: Any) -> ImageRecord:
        return cls(
            name=str(image.name), target=descriptor_from_proto(image.target), labels=labels_from_proto(image.labels)
        )


def descriptor_to_proto(desc: Descriptor) -> Any:
    return descriptor_pb2.Descriptor(
        media_type=desc.media_type, digest=desc.digest, size=desc.size, annotations=dict(desc.annotations)
    )


def descriptor_from_proto(msg: Any) -> Descriptor:
    return Descriptor(
        media_type=str(msg.media_type),
        digest=str(msg.digest),
        size=int(msg.size),
        annotations={str(k): str(v) for k, v in msg.annotations.items()},
    )
