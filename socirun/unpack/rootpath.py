"""Paths inside a layer root, resolved the way containerd resolves them (continuity's fs.RootPath).

A layer may hold symlinks that later entries' paths go through. containerd follows them, but inside the root only:
an absolute target counts from the root, `..` stops at the root, and the last component is resolved too. The
lexical rules are Go's (path.Clean, filepath.Join), kept here so that both appliers land each entry on the same
file; the walk itself is written afresh.
"""

from __future__ import annotations

import os
import posixpath
import stat

MAX_LINKS = 255  # continuity gives up after this many links (a cycle)


class TooManyLinksError(OSError):
    pass


def go_clean(path: str) -> str:
    """Go's path.Clean: lexical, "." for empty, a rooted path never climbs above "/", one leading slash."""
    cleaned = posixpath.normpath(path) if path else "."
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    return cleaned


def go_join(*parts: str) -> str:
    """Go's filepath.Join: the non-empty parts joined by "/" and cleaned; "" when all are empty."""
    kept = [p for p in parts if p]
    return go_clean("/".join(kept)) if kept else ""


def go_split(path: str) -> tuple[str, str]:
    """Go's filepath.Split: (everything up to and including the last "/", the rest)."""
    cut = path.rfind("/") + 1
    return path[:cut], path[cut:]


class _Walk:
    def __init__(self, root: str) -> None:
        self.root = root
        self.links = 0

    def link(self, path: str) -> tuple[str, bool]:
        """(root-relative absolute path, False) for a non-link or a missing path; (raw target, True) for a link."""
        if self.links > MAX_LINKS:
            raise TooManyLinksError(f"too many links resolving {path!r} in {self.root}")
        path = go_join("/", path)
        if path == "/":
            return path, False
        real = go_join(self.root, path)
        try:
            info = os.lstat(real)
        except FileNotFoundError:
            return path, False  # not there yet: it is created as named
        if not stat.S_ISLNK(info.st_mode):
            return path, False
        self.links += 1
        return os.readlink(real), True

    def links_in(self, path: str) -> str:
        """One pass: the directory part resolved recursively, then the last component once."""
        directory, name = go_split(path)
        if not directory:
            return self.link(name)[0]
        if not name:
            return "/" if directory == "/" else self.links_in(directory[:-1])
        resolved_dir = self.links_in(directory)
        target, is_link = self.link(go_join(resolved_dir, name))
        if not is_link or target.startswith("/"):
            return target
        return go_join(resolved_dir, target)


def root_path(root: str, path: str) -> str:
    """`path` inside `root` with every symlink on the way resolved and bounded to `root` (fs.RootPath)."""
    if not path:
        return root
    walk = _Walk(root)
    while True:
        before = walk.links
        path = walk.links_in(path)
        if walk.links == before:
            rooted = go_join("/", path)
            if rooted == path:
                return go_join(root, rooted)
            path = rooted
