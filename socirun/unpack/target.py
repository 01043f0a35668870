"""Where a layer is unpacked: the directory behind a prepared snapshot's mounts (pure).

containerd's applier (diff/apply/apply_linux.go, v1.6.20 and v2.4) writes straight into the overlay upperdir when
the mounts are exactly one overlay mount with an `upperdir=` option, converting whiteouts to overlay's own form and
copying a new parent directory's attributes from the lowerdirs. Any other shape it mounts and applies with the
plain whiteout handling (whiteouts delete). The overlayfs snapshotter hands a parentless layer a single bind mount of
the snapshot's `fs` directory: writing into that directory is what the temporary mount would do. Everything else
(several mounts, aufs, a remote snapshotter's own types) is refused, and the caller falls back to Diff.Apply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from socirun.containerd.types import Mount


class UnsupportedMountsError(Exception):
    """The mounts are not one the streaming applier writes into; use containerd's Diff.Apply instead."""


@dataclass(frozen=True)
class ApplyTarget:
    path: Path  # the directory the layer's entries are written into
    overlay: bool  # True: an overlay upperdir (whiteouts become 0/0 char devices, opaque dirs an xattr)
    parents: tuple[Path, ...] = ()  # the lowerdirs, topmost first, where new parent directories copy attributes from


def _option(options: Sequence[str], prefix: str) -> str | None:
    # The last occurrence wins, as getOverlayPath's loop does.
    found = None
    for option in options:
        if option.startswith(prefix):
            found = option[len(prefix):]
    return found


def apply_target(mounts: Sequence[Mount]) -> ApplyTarget:
    """The directory to unpack into for these mounts; UnsupportedMountsError for any other shape."""
    if len(mounts) != 1:
        raise UnsupportedMountsError(
            f"the snapshot has {len(mounts)} mounts; the streaming applier writes only into one overlay upperdir "
            "or one bind-mounted directory"
        )
    mount = mounts[0]
    if mount.type == "overlay":
        upper = _option(mount.options, "upperdir=")
        if not upper:
            raise UnsupportedMountsError("the overlay mount has no upperdir= option (a read-only view?)")
        lower = _option(mount.options, "lowerdir=")
        parents = tuple(Path(p) for p in lower.split(":")) if lower else ()
        return ApplyTarget(Path(upper), overlay=True, parents=parents)
    if mount.type == "bind":
        if "ro" in mount.options or not mount.source.startswith("/"):
            raise UnsupportedMountsError(f"the bind mount of {mount.source!r} is not a writable absolute directory")
        return ApplyTarget(Path(mount.source), overlay=False)
    raise UnsupportedMountsError(f"mounts of type {mount.type!r} are applied by containerd's Diff.Apply only")


def bind_to_overlay(mounts: Sequence[Mount]) -> list[Mount]:
    """The mounts to unpack a layer above others into a snapshot prepared without a parent (parallel unpack on a
    snapshotter with the "rebase" capability): overlayfs hands such a snapshot one bind mount of its directory,
    whose whiteouts must still become overlay's own (0/0 character devices, an opaque xattr), as they would in an
    upperdir. The same shape containerd 2.x's unpacker gives its applier (core/unpack/unpacker.go,
    bindToOverlay): one overlay mount with that directory as upperdir and no lowerdir. Any other shape is
    returned as it is."""
    if len(mounts) != 1 or mounts[0].type != "bind":
        return list(mounts)
    bind = mounts[0]
    options = tuple(option for option in bind.options if option != "rbind")
    return [Mount(type="overlay", source="overlay", options=(*options, f"upperdir={bind.source}"))]
