"""How bytes reach an overlayfs (or other local-snapshotter) pull: pure decisions, no I/O.

- `plan_transfer` is the one place the transfer is decided (flag, then `[pull]`, then the host); the request
  builder calls it once, the plan reports it, the engine follows it.

- `choose_overlay_transfer` picks "parallel-stream" (ranged chunks over several connections, each layer unpacked
  by socirun's own applier as its bytes arrive) or "standard" (one stream per layer) and says why in plain
  sentences; the plan (and `socirun plan`) shows those sentences. `auto` picks parallel-stream over plain
  "parallel" (the same download, each layer unpacked by containerd's Diff.Apply from the committed blob) where
  containerd unpacks one layer at a time (containerd 1.6: measured much faster, README Performance: 13.0 s against
  19.9 s and 15.3 s against 23.9 s for 1058 MB in 8 layers). The snapshotter's capabilities are not known yet when
  the transfer is decided, so `TransferPlan.settle` completes auto's choice once they are (the plan does it, or the
  engine without a plan): where the snapshotter advertises "rebase" (containerd 2.x's overlayfs), containerd
  unpacks several layers at once itself and auto's pull is plain parallel (measured on 2.4.2: 10.0 s against
  11.3 s as the median of 9 rounds each, and 15.6 against 16.9 CPU-s in all). A mode the user names never changes.
- `default_transfer_settings` sizes the parallel mode for a host the way SOCI's parallel pull is tuned: SOCI
  defaults to 3 connections per image and whole-layer requests, and its tuning guide raises both connections
  and chunk size on large hosts. socirun uses fewer connections and smaller chunks on small hosts, because
  each connection costs CPU in Python and each chunk in flight costs memory.
- `parse_size` reads sizes such as `16MiB`, `8MB`, `8mb` (SOCI's `concurrent_download_chunk_size` grammar
  plus binary units).
- `transfer_settings_from_config` reads the `[pull]` table of the socirun config.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, NamedTuple, Protocol, get_args

from socirun.decide.facts import LOCAL_SNAPSHOTTERS, PULL_MODES, HostProfile, PullMode
from socirun.errors import ConfigError, UsageError

OverlayTransfer = Literal["parallel", "parallel-stream", "standard"]
# The transfers that download ranged chunks over several connections (parallel-stream also unpacks as it goes).
CHUNKED_TRANSFERS: tuple[str, ...] = ("parallel", "parallel-stream")
# The snapshotter capability containerd 2.x's overlayfs advertises (Introspection.Plugins): a snapshot prepared
# without a parent may be given one at Commit (CommitSnapshotRequest.parent).
REBASE_CAPABILITY = "rebase"
# The order in which a parallel pull's chunks are asked for (socirun.pull.chunked follows it).
Schedule = Literal["in-order", "largest-first", "interleave"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)
# Standard mode: layers downloaded at once, one stream each (--max-concurrent-downloads overrides it).
DEFAULT_STANDARD_DOWNLOADS = 4

MIB = 1 << 20
GIB = 1 << 30
MIN_CHUNK = 256 * 1024
MAX_CHUNK = 1 * GIB


@dataclass(frozen=True)
class TransferSettings:
    max_concurrent_downloads: int  # connections in flight for one image (all layers together)
    chunk_size: int  # bytes per ranged request
    window: int  # chunks held in memory at once; memory bound = window × chunk_size
    schedule: Schedule = "in-order"
    # Layers unpacked at once where the snapshotter can rebase (containerd 2.x overlayfs: a layer is prepared
    # without its parent and given it at Commit); elsewhere, or with 0 (containerd's own meaning of its
    # max_concurrent_unpacks = 0), a layer waits for its parent, one at a time.
    max_concurrent_unpacks: int = 1

    @property
    def memory_bound(self) -> int:
        return self.window * self.chunk_size


def default_transfer_settings(cpus: int, memory_bytes: int | None = None) -> TransferSettings:
    """Connections, chunk size and window for a host with `cpus` CPUs and `memory_bytes` of RAM."""
    cpus = max(1, cpus)
    if cpus == 1:
        connections = 3  # SOCI's max_concurrent_downloads_per_image default
    elif cpus <= 3:
        connections = 8
    elif cpus <= 7:
        connections = 12
    else:
        connections = 20  # what SOCI's tuning guide suggests for large instances
    small = cpus <= 2 or (memory_bytes is not None and memory_bytes < 8 * GIB)
    chunk = 8 * MIB if small else 16 * MIB
    # Twice the connections keeps every connection busy while the next chunk in order is still arriving.
    # Unpacking is CPU work (decompression, hashing, file creation): one layer per CPU, up to four.
    return TransferSettings(max_concurrent_downloads=connections, chunk_size=chunk, window=2 * connections,
                            max_concurrent_unpacks=min(cpus, 4))


class LayerLike(Protocol):
    @property
    def size(self) -> int: ...


class OverlayTransferChoice(NamedTuple):
    """Unpacks as (mode, reasons)."""

    mode: OverlayTransfer
    reasons: tuple[str, ...]


# Below this link speed one stream already fills the link (a single S3/CDN stream runs at ~25 MB/s).
SLOW_LINK_MBPS = 200


def choose_overlay_transfer(
    host: HostProfile,
    layers: Sequence[LayerLike] = (),
    *,
    requested: str = "auto",
    snapshotter: str = "overlayfs",
    chunk_size: int = 8 * MIB,
) -> OverlayTransferChoice:
    """The transfer for the layers socirun downloads itself, and why, in plain sentences: what `requested` asks
    for, else "parallel-stream" or "standard".

    `requested` is the --pull-mode value. "lazy" is the SOCI planner's business: it asks this only for layers
    that cannot be loaded lazily, so here it is treated like "auto".
    """
    if requested not in PULL_MODES:
        raise UsageError(f'invalid --pull-mode "{requested}": use one of {", ".join(PULL_MODES)}')
    if requested == "parallel":
        return OverlayTransferChoice(
            "parallel", ("--pull-mode parallel asks for ranged chunks over several connections",)
        )
    if requested == "parallel-stream":
        return OverlayTransferChoice("parallel-stream", (
            "--pull-mode parallel-stream asks for ranged chunks over several connections, each layer unpacked by "
            "socirun as its bytes arrive",
        ))
    if requested == "standard":
        return OverlayTransferChoice("standard", ("--pull-mode standard asks for one stream per layer",))
    reasons: list[str] = []
    if requested == "lazy":
        reasons.append("lazy loading needs the soci snapshotter, so socirun downloads these layers itself")

    def standard(reason: str) -> OverlayTransferChoice:
        return OverlayTransferChoice("standard", (*reasons, reason))

    if snapshotter not in LOCAL_SNAPSHOTTERS:
        return standard(f"the {snapshotter} snapshotter fetches layers itself, so one stream per layer is enough")
    cpus = host.cpus
    if cpus < 2:
        return standard("this host has 1 CPU, which unpacking needs; parallel downloads would compete for it")
    nic = host.nic_speed_mbps
    if nic is not None and 0 < nic < SLOW_LINK_MBPS:
        return standard(f"the network link runs at {nic} Mb/s, which one stream per layer already fills")
    biggest = max((layer.size for layer in layers), default=None)
    if biggest is not None and biggest <= 2 * chunk_size:
        return standard(f"the largest layer is only {iec_size(biggest)}, so splitting it into chunks gains nothing")
    reasons.append(f"this host has {cpus} CPUs, enough to download ranged chunks over several connections")
    # The last reason is the one TransferPlan.settle replaces when containerd unpacks several layers at once.
    reasons.append(f"socirun unpacks each layer into {snapshotter} as its bytes arrive (--pull-mode parallel leaves "
                   "the unpacking to containerd, after each blob is stored)")
    return OverlayTransferChoice("parallel-stream", tuple(reasons))


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "ki": 1 << 10, "kib": 1 << 10, "mi": 1 << 20, "mib": 1 << 20, "gi": 1 << 30, "gib": 1 << 30,
}  # fmt: skip


def iec_size(n: int) -> str:
    """A byte count as people read it, in the binary units chunk sizes are given in: 8388608 → "8 MiB",
    1572864 → "1.5 MiB", 300 → "300 B"."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f}".removesuffix(".0") + f" {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - unreachable, kept for the type checker


def parse_size(text: str, what: str = "size") -> int:
    """`16MiB` → 16777216, `8MB` / `8mb` → 8000000, `65536` → 65536."""
    match = _SIZE.match(str(text))
    unit = (match.group(2) or "").lower() if match else ""
    if match is None or unit not in _UNITS:
        raise UsageError(f'invalid {what} "{text}": give a number of bytes with an optional unit, e.g. 16MiB or 8MB')
    return int(float(match.group(1)) * _UNITS[unit])


def check_chunk_size(size: int, what: str = "--chunk-size") -> int:
    if not MIN_CHUNK <= size <= MAX_CHUNK:
        raise UsageError(f"{what} must be between 256KiB and 1GiB, not {iec_size(size)}")
    return size


def transfer_settings_from_config(raw: Mapping[str, Any], base: TransferSettings) -> TransferSettings:
    """Apply a `[pull]` table:

        [pull]
        mode = "auto"                   # auto | lazy | parallel | parallel-stream | standard
        max_concurrent_downloads = 8    # connections per image
        chunk_size = "16MiB"
        window = 16                     # chunks in memory at once
        schedule = "in-order"           # in-order | largest-first | interleave
        max_concurrent_unpacks = 2      # layers unpacked at once where the snapshotter can rebase; 0: one
                                        # after another, each on its committed parent
        discard_unpacked_layers = false # parallel-stream: keep no blob of a layer unpacked as it arrived

    (`discard_unpacked_layers` is read by `discard_unpacked_layers_for`, with its flag.)
    """
    table = raw.get("pull", {})
    if not isinstance(table, Mapping):
        raise ConfigError("[pull] in the configuration must be a table")
    settings = base
    try:
        if "max_concurrent_downloads" in table:
            settings = replace(settings, max_concurrent_downloads=_positive(table["max_concurrent_downloads"],
                                                                            "pull.max_concurrent_downloads"))
        if "chunk_size" in table:
            settings = replace(settings, chunk_size=check_chunk_size(parse_size(str(table["chunk_size"]),
                                                                                "pull.chunk_size"),
                                                                     "pull.chunk_size"))
        if "window" in table:
            settings = replace(settings, window=_positive(table["window"], "pull.window"))
        if "max_concurrent_unpacks" in table:
            settings = replace(settings, max_concurrent_unpacks=_whole(table["max_concurrent_unpacks"],
                                                                       "pull.max_concurrent_unpacks", minimum=0))
    except UsageError as err:
        raise ConfigError(err.message) from None
    if "schedule" in table:
        if table["schedule"] not in SCHEDULES:
            raise ConfigError(f'pull.schedule = "{table["schedule"]}" is not one of {", ".join(SCHEDULES)}')
        settings = replace(settings, schedule=table["schedule"])
    return settings


def config_pull_mode(raw: Mapping[str, Any]) -> str | None:
    table = raw.get("pull", {})
    mode = table.get("mode") if isinstance(table, Mapping) else None
    if mode is None:
        return None
    if mode not in PULL_MODES:
        raise ConfigError(f'pull.mode = "{mode}" is not one of {", ".join(PULL_MODES)}')
    return str(mode)


def discard_unpacked_layers_for(flag: bool | None, raw_config: Mapping[str, Any]) -> bool:
    """--discard-unpacked-layers (True, or False as `--discard-unpacked-layers=false`), else `[pull]
    discard_unpacked_layers`, else off: the one reading of the choice, named after containerd's CRI option."""
    if flag is not None:
        return flag
    table = raw_config.get("pull", {})
    value = table.get("discard_unpacked_layers", False) if isinstance(table, Mapping) else False
    if not isinstance(value, bool):
        raise ConfigError(f"pull.discard_unpacked_layers must be true or false, not {value!r}")
    return value


def _positive(value: Any, what: str) -> int:
    return _whole(value, what, minimum=1)


def _whole(value: Any, what: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{what} must be a whole number of at least {minimum}, not {value!r}")
    return value


def resolve_transfer_settings(
    *,
    cpus: int,
    memory_bytes: int | None,
    raw_config: Mapping[str, Any],
    max_concurrent_downloads: int | None = None,
    chunk_size: str | None = None,
) -> TransferSettings:
    """Host defaults, then the `[pull]` table, then the flags. Unless `pull.window` is set, the window follows
    the connection count (twice as many chunks as connections)."""
    settings = transfer_settings_from_config(raw_config, default_transfer_settings(cpus, memory_bytes))
    if max_concurrent_downloads is not None:
        if max_concurrent_downloads < 1:
            raise UsageError(f"--max-concurrent-downloads must be at least 1, not {max_concurrent_downloads}")
        settings = replace(settings, max_concurrent_downloads=max_concurrent_downloads)
    if chunk_size is not None:
        settings = replace(settings, chunk_size=check_chunk_size(parse_size(chunk_size, "--chunk-size")))
    table = raw_config.get("pull", {})
    if not (isinstance(table, Mapping) and "window" in table):
        settings = replace(settings, window=2 * settings.max_concurrent_downloads)
    return settings


@dataclass(frozen=True)
class TransferPlan:
    """How socirun downloads the layers it downloads itself, decided once per pull."""

    mode: OverlayTransfer
    reasons: tuple[str, ...]
    settings: TransferSettings  # parallel mode: connections, chunk size, window, schedule
    standard_downloads: int = DEFAULT_STANDARD_DOWNLOADS  # standard mode: layers at once, one stream each
    # Asked for: the blob of a layer socirun's applier unpacks as its bytes arrive is not written to containerd's
    # content store (only parallel-stream into a local snapshotter has such layers; see `discards`).
    discard_unpacked_layers: bool = False
    asked: str = "auto"  # the --pull-mode (or [pull] mode) this was decided from: what `settle` may complete

    def settle(self, snapshotter: str, capabilities: Collection[str]) -> TransferPlan:
        """This transfer for the snapshotter the pull uses, once containerd said what that snapshotter can do.
        auto's parallel-stream becomes plain parallel where the local snapshotter can rebase: containerd then
        unpacks several layers at once itself (as containerd 2.x's own pull does), which measured a little faster
        than socirun's applier, with less CPU. Anything else, any mode the user named, and a pull asked to discard
        unpacked layers (only socirun's applier can; it is the fastest pull there too) stays as it is."""
        if (self.asked not in ("auto", "lazy") or self.mode != "parallel-stream" or self.discard_unpacked_layers
                or snapshotter not in LOCAL_SNAPSHOTTERS or REBASE_CAPABILITY not in capabilities):
            return self
        why = (f"{snapshotter} can rebase, so containerd unpacks several layers at once itself (as containerd 2.x's "
               "own pull does) and socirun leaves the unpacking to it; where a snapshotter cannot, socirun unpacks "
               "each layer as its bytes arrive (--pull-mode parallel-stream asks for that here too)")
        return replace(self, mode="parallel", reasons=(*self.reasons[:-1], why))

    @property
    def connections(self) -> int:
        return self.settings.max_concurrent_downloads if self.chunked else self.standard_downloads

    def discards(self, snapshotter: str) -> bool:
        """Whether blobs are left out of the content store in this pull: asked for, and some layer can be
        unpacked from its bytes (parallel-stream into a local snapshotter); otherwise every blob is stored."""
        return self.discard_unpacked_layers and self.mode == "parallel-stream" and snapshotter in LOCAL_SNAPSHOTTERS

    def discard_note(self, snapshotter: str) -> str:
        """What discard_unpacked_layers does in this pull, in a sentence ("" when it was not asked for)."""
        if not self.discard_unpacked_layers:
            return ""
        if self.discards(snapshotter):
            return ("discard_unpacked_layers: the blob of a layer unpacked as its bytes arrive is not written to "
                    "containerd's content store, so the image cannot be exported, pushed or unpacked again from "
                    "this store (a layer containerd unpacks is stored as usual)")
        # The pull's mode may be auto's choice rather than a flag, so the sentence names the mode, not a flag.
        where = f"on a {self.mode} pull" if self.mode != "parallel-stream" else f"with the {snapshotter} snapshotter"
        return (f"discard_unpacked_layers has no effect {where}: only a parallel-stream pull into a local "
                "snapshotter unpacks layers from their bytes, so every blob is stored")

    def unpacks_at_once(self, snapshotter: str, capabilities: Collection[str]) -> int:
        """Layers unpacked at once in this pull: `max_concurrent_unpacks` where the local snapshotter advertises
        the "rebase" capability (containerd 2.x overlayfs: each layer is prepared without its parent and given
        it at Commit, in chain order, as containerd 2.x's own unpacker does); 0 where a layer must be prepared
        on its committed parent (containerd 1.6, every other snapshotter, remote snapshotters)."""
        if snapshotter not in LOCAL_SNAPSHOTTERS or REBASE_CAPABILITY not in capabilities:
            return 0  # max_concurrent_unpacks = 0 gives 0 as well
        return self.settings.max_concurrent_unpacks

    @property
    def chunked(self) -> bool:
        """Ranged chunks over shared connections (parallel and parallel-stream)."""
        return self.mode in CHUNKED_TRANSFERS

    def how(self, snapshotter: str, unpacks: int = 0) -> str:
        """The sentence that says what the engine does with these settings; `unpacks` as `unpacks_at_once`."""
        if self.chunked:
            s = self.settings
            how = (f"socirun downloads ranged chunks of {iec_size(s.chunk_size)} over {s.max_concurrent_downloads} "
                   f"connections shared by all layers, written in order ({s.schedule})")
        else:
            how = f"socirun downloads each layer in one stream ({self.standard_downloads} at a time)"
        note = self.discard_note(snapshotter)
        note = f"; {note}" if note else ""
        at_once = (f"up to {unpacks} layer{'s' if unpacks > 1 else ''} at once, each prepared without its parent "
                   f"and committed in chain order with it ({snapshotter} can rebase, as containerd 2.x unpacks)")
        if self.mode == "parallel-stream" and snapshotter in LOCAL_SNAPSHOTTERS:
            into = "only" if self.discards(snapshotter) else "into containerd's content store and at the same time"
            if unpacks > 0:
                return (f"{how}, {into} into socirun's own applier, which unpacks the layers into {snapshotter} as "
                        f"their bytes arrive, {at_once}{note}")
            return (f"{how}, {into} into socirun's own applier, "
                    f"which unpacks each layer into {snapshotter} as its bytes arrive once its parent is "
                    "committed (a layer whose bytes come earlier is unpacked by containerd from the stored blob)"
                    f"{note}")
        if unpacks > 0:
            return (f"{how}, and containerd unpacks the layers into {snapshotter} as their blobs come in, "
                    f"{at_once}{note}")
        return f"{how}, and containerd unpacks each layer into {snapshotter} as soon as its parent is ready{note}"


def pull_mode_for(flag: str | None, raw_config: Mapping[str, Any]) -> PullMode:
    """--pull-mode, else `[pull] mode` in socirun's config, else auto: the one reading of the pull mode."""
    if flag is not None and flag not in PULL_MODES:
        raise UsageError(f'invalid --pull-mode "{flag}": use one of {", ".join(PULL_MODES)}')
    return (flag or config_pull_mode(raw_config) or "auto")  # type: ignore[return-value]  # checked above


def plan_transfer(
    *,
    mode: PullMode,
    raw_config: Mapping[str, Any],
    snapshotter: str,
    host: HostProfile,
    max_concurrent_downloads: int | None = None,
    chunk_size: str | None = None,
    discard_unpacked_layers: bool = False,
) -> TransferPlan:
    """The transfer for a pull asked for with `mode` (already resolved by `pull_mode_for`), the `[pull]` table
    and the flags, on `host`; `discard_unpacked_layers` as resolved by `discard_unpacked_layers_for`."""
    settings = resolve_transfer_settings(cpus=host.cpus, memory_bytes=host.memory_bytes, raw_config=raw_config,
                                         max_concurrent_downloads=max_concurrent_downloads, chunk_size=chunk_size)
    chosen, reasons = choose_overlay_transfer(host, requested=mode, snapshotter=snapshotter,
                                              chunk_size=settings.chunk_size)
    return TransferPlan(chosen, reasons, settings, max_concurrent_downloads or DEFAULT_STANDARD_DOWNLOADS,
                        discard_unpacked_layers, asked=mode)
