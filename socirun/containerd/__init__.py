"""containerd over gRPC: generated v1 API stubs (api/, never hand-edited) and a small typed asyncio client."""

from socirun.containerd.client import (
    DEFAULT_ADDRESS,
    DEFAULT_NAMESPACE,
    AlreadyExistsError,
    CommitMismatchError,
    ContainerdClient,
    ContentInfo,
    ContentWriter,
    ImageRecord,
    IngestStatus,
    Mount,
    NotFoundError,
    PluginInfo,
    RpcError,
    SnapshotInfo,
    resolve_address,
    resolve_namespace,
)

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_NAMESPACE",
    "AlreadyExistsError",
    "CommitMismatchError",
    "ContainerdClient",
    "ContentInfo",
    "ContentWriter",
    "ImageRecord",
    "IngestStatus",
    "Mount",
    "NotFoundError",
    "PluginInfo",
    "RpcError",
    "SnapshotInfo",
    "resolve_address",
    "resolve_namespace",
]
