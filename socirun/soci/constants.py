"""The names SOCI defines (https://github.com/awslabs/soci-snapshotter/blob/v0.15.0/: snapshot/snapshot.go,
docs/soci-index-manifest-v2.md, docs/config.md, fs/metrics/common/metrics.go), in one place for the plan, the
engine, the observer and the sandbox. v0.16.1's names are the same
(https://github.com/awslabs/soci-snapshotter/blob/v0.16.1/fs/metrics/common/metrics.go)."""

from __future__ import annotations

# -- Prepare labels and the labels SOCI puts on its snapshots (snapshot/snapshot.go)
SOCI_SIZE = "containerd.io/snapshot/remote/soci.size"
SOCI_IMAGE_LAYERS_SIZE = "containerd.io/snapshot/remote/image.layers.size"
SOCI_INDEX_DIGEST = "containerd.io/snapshot/remote/soci.index.digest"
REMOTE = "containerd.io/snapshot/remote"
REMOTE_VALUE = "remote snapshot"
HAS_SOCI_INDEX = "containerd.io/snapshot/remote/has.soci.index.digest"
REMOTE_NAMESPACE = "containerd.io/snapshot/remote/namespace"

# -- index media types and annotations (docs/soci-index-manifest-v2.md)
INDEX_V1 = "application/vnd.amazon.soci.index.v1+json"
INDEX_V2 = "application/vnd.amazon.soci.index.v2+json"
ZTOC_MEDIA_TYPE = "application/octet-stream"
PREFETCH_MEDIA_TYPE = "application/vnd.amazon.soci.prefetch.v1+json"
ANN_INDEX_DIGEST = "com.amazon.soci.index-digest"  # on a v2 image manifest
ANN_IMAGE_MANIFEST_DIGEST = "com.amazon.soci.image-manifest-digest"  # on the OCI index entry of a v2 index
ANN_LAYER_DIGEST = "com.amazon.soci.image-layer-digest"
ANN_LAYER_MEDIA_TYPE = "com.amazon.soci.image-layer-mediaType"
ANN_SPAN_SIZE = "com.amazon.soci.span-size"
ANN_BUILD_TOOL = "com.amazon.soci.build-tool-identifier"
EMPTY_CONFIG_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
DEFAULT_SPAN_SIZE = 1 << 22
DEFAULT_MIN_LAYER_SIZE = 10 << 20  # `soci create/convert` skip smaller layers (no zTOC)

# -- daemon defaults (docs/config.md)
DEFAULT_SOCKET = "/run/soci-snapshotter-grpc/soci-snapshotter-grpc.sock"
SYSTEMD_UNIT = "soci-snapshotter"

# -- metrics (fs/metrics/common/metrics.go)
M_LAYER_FETCHED = "soci_fs_layer_fetched_size_bytes"
M_LAYER_SIZE = "soci_fs_layer_size_bytes"
M_OPERATION_COUNT = "soci_fs_operation_count"
M_DURATION_MS = "soci_fs_operation_duration_milliseconds"
M_BYTES_SERVED = "soci_fs_bytes_served"
OP_ONDEMAND_FETCH = "synchronous_read_remote_registry_fetch_count"
OP_SYNC_READ = "synchronous_read_count"
OP_BG_SPAN = "background_span_fetch_count"
OP_BG_SPAN_FAILURE = "background_span_fetch_failure_count"
OP_BG_FETCH = "background_fetch"
OP_FUSE_MOUNT_FAILURE = "fuse_mount_failure_count"
OP_BYTES_SERVED = "synchronous_bytes_served"

# -- per-layer state file directory
STATE_DIR_NAME = ".soci-snapshotter"

# -- log messages
LOG_REMOTE_PREPARED = "remote snapshot successfully prepared."
LOG_DEFER = "no valid SOCI index found; deferring to container runtime"
LOG_PARALLEL = "preparing snapshot with parallel pull/unpack"
LOG_PARALLEL_FALLBACK = "no SOCI index found; falling back to parallel pull/unpack"
LOG_LOCAL = "preparing snapshot as local snapshot"
LOG_LOCAL_PREPARED = "local snapshot successfully prepared"
LOG_FETCHING_SPAN = "fetching span"
LOG_FUSE_OPERATION = "FUSE operation"
FUSE_FILE_READ = "file.Read"  # the `operation` of a FUSE read request (fs/layer/node.go); others are not reads
LOG_PREPARING = "preparing snapshot"
LOG_NO_ZTOC = "skipping mounting layer as FUSE mount: no ztoc for layer"
LOG_FETCH_ARTIFACT = "fetching artifact from remote"
LOG_ARTIFACT_FETCHED = "Artifact successfully fetched from remote"
LOG_LAYER_UNPACKED = "Layer successfully unpacked"
