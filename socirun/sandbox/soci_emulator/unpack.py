"""Applying a gzip (or plain) tar layer onto a snapshot directory, as containerd's applier does for overlayfs:
OCI whiteouts `.wh.<name>` become overlay whiteouts (0/0 character devices), `.wh..wh..opq` marks the
directory opaque. The byte source is any blocking file object: a whole-blob stream, or the span reader
that fetches 4 MiB ranges one at a time for lazily loaded layers."""

from __future__ import annotations

import contextlib
import os
import stat
import tarfile
from pathlib import Path
from typing import BinaryIO

WHITEOUT_PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"


def apply_tar(source: BinaryIO, dest: Path, *, compressed: bool = True) -> int:
    """Extract the tar stream `source` into `dest`, entry by entry as the bytes arrive; returns the number of
    entries applied."""
    count = 0
    mode = "r|gz" if compressed else "r|"
    with tarfile.open(fileobj=source, mode=mode) as tar:  # type: ignore[call-overload]
        for member in tar:
            count += 1
            name = member.name.lstrip("/")
            base = os.path.basename(name)
            parent = dest / os.path.dirname(name)
            if base == OPAQUE:
                parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(OSError):
                    os.setxattr(parent, "trusted.overlay.opaque", b"y")
                continue
            if base.startswith(WHITEOUT_PREFIX):
                target = parent / base[len(WHITEOUT_PREFIX):]
                parent.mkdir(parents=True, exist_ok=True)
                _remove(target)
                os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0))
                continue
            path = dest / name
            if (path.exists() or path.is_symlink()) and not (member.isdir() and path.is_dir()):
                _remove(path)
            tar.extract(member, dest, numeric_owner=True, filter="tar")
    return count


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        import shutil

        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
