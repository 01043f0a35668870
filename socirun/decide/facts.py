"""Every fact type the decisions read, and the names they share: what containerd, SOCI, the registry and the
host said, gathered by thin probes (`socirun.soci.probe`, `socirun.host`) and handed to the pure decisions in
`socirun.decide.plan` and `socirun.decide.transfer`. Plain frozen dataclasses: no I/O, no adapter imports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # the transfer decision is made before the plan and handed to it as a fact
    from socirun.decide.transfer import TransferPlan

# socirun's --pull-mode (how an image reaches the host); docker's --pull policy is PULL_POLICIES in
# socirun.runtime.options.
PullMode = Literal["auto", "lazy", "parallel", "parallel-stream", "standard"]
PULL_MODES: tuple[str, ...] = ("auto", "lazy", "parallel", "parallel-stream", "standard")
IndexKind = Literal["v2", "v1", "explicit"]

SOCI = "soci"
DEFAULT_SNAPSHOTTER = "overlayfs"
# Snapshotters that unpack on the host: their bytes come through socirun's own downloader, and they get no
# remote-snapshotter labels. Any other (soci, stargz, ...) is asked first and may fetch layers itself.
LOCAL_SNAPSHOTTERS = frozenset({"overlayfs", "native", "btrfs", "zfs", "devmapper", "aufs"})
SOCI_DEFAULT_ROOT = "/var/lib/soci-snapshotter-grpc/"


@dataclass(frozen=True)
class HostProfile:
    cpus: int
    memory_bytes: int
    nic_speed_mbps: int | None  # fastest physical link; None when no NIC reports a speed (VMs often don't)
    nic_name: str
    free_disk_bytes: int | None  # on the filesystem that holds containerd's root
    disk_path: str

    def to_json(self) -> dict[str, Any]:
        return {
            "cpus": self.cpus,
            "memory_bytes": self.memory_bytes,
            "nic_speed_mbps": self.nic_speed_mbps,
            "nic": self.nic_name,
            "free_disk_bytes": self.free_disk_bytes,
            "disk_path": self.disk_path,
        }


@dataclass(frozen=True)
class SociConfig:
    """The keys that change what a pull does or what can be observed. Defaults are soci-snapshotter v0.16.1's
    (what `soci-snapshotter-grpc config default` prints). `root` is not a config key: it is the daemon's --root
    flag (SOCI_SNAPSHOTTER_ROOT), which socirun reads from the environment (SocirunConfig.soci_root)."""

    source: str = "built-in defaults"  # where the values came from, for the plan and doctor
    v1_enable: bool = False
    v2_enable: bool = True
    parallel_enable: bool = False
    parallel_as_fallback: bool = False
    max_concurrent_downloads_per_image: int = 3
    concurrent_download_chunk_size: str = ""
    discard_unpacked_layers: bool = False
    content_store_type: str = "soci"
    min_layer_size: int = 0
    metrics_address: str = ""
    metrics_network: str = "tcp"
    no_prometheus: bool = False
    log_fuse_operations: bool = False
    background_fetch_disable: bool = False
    fetch_period_msec: int = 500
    root: str = SOCI_DEFAULT_ROOT
    problem: str = ""  # why the file could not be used (then the defaults apply)

    @property
    def metrics_enabled(self) -> bool:
        return bool(self.metrics_address) and not self.no_prometheus

    @property
    def parallel_store_problem(self) -> str:
        """Why soci-snapshotter-grpc refuses to start with this parallel-mode config, or "" (v0.16.1
        fs/fs.go NewFilesystem: parallel mode and its fallback need [content_store] type = "containerd" unless
        discard_unpacked_layers = true)."""
        if not (self.parallel_enable or self.parallel_as_fallback):
            return ""
        if self.content_store_type == "containerd" or self.discard_unpacked_layers:
            return ""
        key = "enable" if self.parallel_enable else "experimental_parallel_pull_as_fallback"
        return (f"[pull_modes.parallel_pull_unpack] {key} = true needs [content_store] type = \"containerd\" "
                f"or discard_unpacked_layers = true, and {self.source} has type = \"{self.content_store_type}\": "
                "soci-snapshotter-grpc refuses to start with it")

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "pull_modes.soci_v1.enable": self.v1_enable,
            "pull_modes.soci_v2.enable": self.v2_enable,
            "pull_modes.parallel_pull_unpack.enable": self.parallel_enable,
            "pull_modes.parallel_pull_unpack.experimental_parallel_pull_as_fallback": self.parallel_as_fallback,
            "content_store.type": self.content_store_type,
            "snapshotter.min_layer_size": self.min_layer_size,
            "metrics_address": self.metrics_address,
            "metrics_network": self.metrics_network,
            "fuse.log_fuse_operations": self.log_fuse_operations,
            "background_fetch.disable": self.background_fetch_disable,
            "root": self.root,  # the daemon's --root (SOCI_SNAPSHOTTER_ROOT), not a key of the file
            "problem": self.problem,
        }


@dataclass(frozen=True)
class SnapshotterFacts:
    """What containerd says about its snapshotters, and whether the soci proxy really answers."""

    available: tuple[str, ...] = (DEFAULT_SNAPSHOTTER,)  # plugins with no init error
    soci_registered: bool = False
    soci_alive: bool = False  # a deadline-bound Snapshots.List answered
    soci_problem: str = ""  # the probe's error, or the plugin's init error
    soci_address: str = ""  # the proxy plugin's `address` export
    # Per loaded snapshotter, the capabilities it advertises (containerd 2.x overlayfs: "rebase"; 1.6: none).
    capabilities: dict[str, tuple[str, ...]] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class SociIndex:
    """An index the image names (explicitly, by its v2 annotation or as a v1 referrer). `problem` set: it is
    named but cannot be fetched (the index manifest, or one of its zTOC blobs, is missing or unreadable), which
    is not the same as having no index: SOCI then defers the whole image instead of trying the next kind."""

    kind: IndexKind
    digest: str
    ztoc_layers: frozenset[str]  # image layer digests that have a zTOC
    found_via: str  # a sentence fragment: "the manifest annotation com.amazon.soci.index-digest"
    problem: str = ""  # why it cannot be fetched; "" when it was fetched whole

    @property
    def fetchable(self) -> bool:
        return not self.problem


@dataclass(frozen=True)
class FailedIndexLookup:
    """A failed SOCI index lookup for this manifest that the running soci-snapshotter-grpc remembers: it looks
    an index up once per manifest digest and keeps a failure until it restarts (v0.16.1 fs/fs.go sociContext),
    so it defers this image whatever the registry holds now. Read from its log since its last start."""

    at: str  # the log line's time
    error: str  # the error SOCI logged ("... no valid SOCI index found: ...")
    daemon_started: str  # the time of the daemon's last start line


@dataclass(frozen=True)
class LayerFact:
    digest: str
    size: int
    media_type: str


@dataclass(frozen=True)
class ImageFacts:
    reference: str
    manifest_digest: str
    layers: tuple[LayerFact, ...]
    v2_index: SociIndex | None = None
    v1_index: SociIndex | None = None
    explicit_index: SociIndex | None = None
    discovery_notes: tuple[str, ...] = ()  # e.g. "the registry has no referrers API; the tag fallback was used"
    # snapshotter → digests of the layers whose snapshot (chainID) it already has
    cached: dict[str, frozenset[str]] = field(default_factory=dict)
    # SOCI's remembered failed lookup for this manifest (None: none seen, or SOCI's log is not readable)
    failed_lookup: FailedIndexLookup | None = None

    def cached_in(self, snapshotter: str) -> frozenset[str]:
        return self.cached.get(snapshotter, frozenset())


@dataclass(frozen=True)
class UserChoice:
    snapshotter: str | None = None  # --snapshotter / CONTAINERD_SNAPSHOTTER / config; None = let the plan pick
    pull_mode: PullMode = "auto"


@dataclass(frozen=True)
class PlanFacts:
    snapshotters: SnapshotterFacts
    soci_config: SociConfig
    image: ImageFacts
    host: HostProfile
    user: UserChoice = field(default_factory=UserChoice)
    # How socirun downloads the layers it downloads itself: decided once (socirun.decide.transfer) before the
    # image is resolved; the plan reports it for the layers that are socirun's, completed by TransferPlan.settle
    # for the snapshotter it picks (the only part that needs the snapshotter's capabilities).
    transfer: TransferPlan | None = None


