"""The image's `/etc/passwd` and `/etc/group`, read on the host from the snapshot's layer directories without
mounting, and the user they resolve `-u` / the image's User to.

The layers are the image's, so every name in them is hostile until proven otherwise (socirun runs as root): a path
is resolved component by component inside the merged view of the layers, never through the host's filesystem.
Symlinks are followed by hand relative to that root (an absolute target starts again at the layers' root, `..`
stops there), overlayfs whiteouts and opaque directories hide what lower layers hold, only a regular file is
opened (non-blocking, without following a last symlink, checked again after the open), and at most
MAX_FILE_BYTES are read. `etc/passwd -> /dev/zero`, a FIFO or `-> /proc/self/fd/0` are simply not a passwd file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from socirun.containerd.types import Mount
from socirun.errors import SocirunError

MAX_FILE_BYTES = 1 << 20  # far beyond any real passwd/group; a bound on what an image can make socirun hold
MAX_SYMLINKS = 40  # Linux's MAXSYMLINKS
_UID_LIMIT = 1 << 32  # uid_t / gid_t; runc refuses larger values with a less helpful message
# Whiteouts and opaque directories as the layers hold them: overlayfs's own format (a 0/0 character device, an
# opaque xattr: trusted.* as containerd's overlayfs snapshotter writes it, user.* for userxattr mounts) and the OCI
# layer format (`.wh.NAME`, `.wh..wh..opq`) that other snapshotters may keep on disk.
_WHITEOUT_PREFIX = ".wh."
_OPAQUE_MARKER = ".wh..wh..opq"
_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_ROOT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


# ---------------------------------------------------------------------------------------------- layers


def layer_dirs(mounts: Sequence[Mount]) -> list[str]:
    """The snapshot's directories, topmost first: a bind source, or an overlay's upper then lower dirs."""
    dirs: list[str] = []
    for m in mounts:
        if m.type == "bind" or "bind" in m.options or "rbind" in m.options:
            dirs.append(m.source)
        elif m.type == "overlay":
            opts = dict(o.split("=", 1) for o in m.options if "=" in o)
            if "upperdir" in opts:
                dirs.append(opts["upperdir"])
            dirs += [d for d in opts.get("lowerdir", "").split(":") if d]
    return dirs


@dataclass(frozen=True)
class _Entry:
    st: os.stat_result  # lstat of the entry in the topmost layer that has it
    parent_fd: int  # that layer's directory holding it
    name: str
    dirs: tuple[int, ...] = ()  # for a directory: its fds in the layers that contribute to it, topmost first


class _Layers:
    """The merged view of a stack of layer directories, walked with directory fds (no path ever leaves a layer)."""

    def __init__(self, roots: Sequence[str]) -> None:
        self._fds: list[int] = []
        # The layer directories themselves are containerd's paths, trusted; everything below them is the image's.
        opened = (self._open(r, None, _ROOT_FLAGS) for r in roots)
        self.root: tuple[int, ...] = tuple(fd for fd in opened if fd is not None)

    def close(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _open(self, name: str, dir_fd: int | None, flags: int = _DIR_FLAGS) -> int | None:
        try:
            fd = os.open(name, flags, dir_fd=dir_fd)
        except OSError:
            return None
        self._fds.append(fd)
        return fd

    @staticmethod
    def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return None

    def _whiteout(self, dir_fd: int, name: str, st: os.stat_result | None) -> bool:
        if st is not None and stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            return True
        return self._lstat(dir_fd, _WHITEOUT_PREFIX + name) is not None

    def _opaque(self, dir_fd: int) -> bool:
        for attr in _OPAQUE_XATTRS:
            with contextlib.suppress(OSError):  # ENODATA, or no xattr support, or trusted.* not readable
                if os.getxattr(dir_fd, attr) == b"y":
                    return True
        return self._lstat(dir_fd, _OPAQUE_MARKER) is not None

    def lookup(self, dirs: tuple[int, ...], name: str) -> _Entry | None:
        """`name` in the merged directory `dirs`, as overlayfs shows it; None when absent or whited out."""
        for i, fd in enumerate(dirs):
            st = self._lstat(fd, name)
            if self._whiteout(fd, name, st):
                return None
            if st is None:
                continue
            if not stat.S_ISDIR(st.st_mode):
                return _Entry(st, fd, name)
            merged: list[int] = []
            for lower in dirs[i:]:
                lst = st if lower == fd else self._lstat(lower, name)
                if lower != fd and self._whiteout(lower, name, lst):
                    break
                if lst is None:
                    continue
                if not stat.S_ISDIR(lst.st_mode):
                    break  # a file over a directory hides it and everything below
                sub = self._open(name, lower)
                if sub is None:
                    break
                merged.append(sub)
                if self._opaque(sub):
                    break
            return _Entry(st, fd, name, tuple(merged))
        return None

    def resolve(self, path: str) -> _Entry | None:
        """The entry `path` names inside the layers, symlinks followed within them; None when there is none."""
        stack: list[tuple[int, ...]] = [self.root]
        todo = deque(path.split("/"))
        links = 0
        while todo:
            part = todo.popleft()
            if part in ("", "."):
                continue
            if part == "..":
                if len(stack) > 1:  # `..` at the root stays at the root, as in a chroot
                    stack.pop()
                continue
            entry = self.lookup(stack[-1], part)
            if entry is None:
                return None
            if stat.S_ISLNK(entry.st.st_mode):
                links += 1
                if links > MAX_SYMLINKS:
                    return None
                try:
                    target = os.readlink(entry.name, dir_fd=entry.parent_fd)
                except OSError:
                    return None
                if target.startswith("/"):
                    del stack[1:]
                todo.extendleft(reversed(target.split("/")))
                continue
            if stat.S_ISDIR(entry.st.st_mode):
                stack.append(entry.dirs)
                continue
            if any(p not in ("", ".") for p in todo):
                return None  # a non-directory in the middle of the path
            return entry
        return None  # the path names a directory


def read_layer_file(roots: Sequence[str], path: str, *, limit: int = MAX_FILE_BYTES) -> bytes | None:
    """The bytes of regular file `path` in the merged layers `roots` (topmost first), None when it is absent or
    is anything but a regular file; SocirunError when it is larger than `limit`."""
    layers = _Layers(roots)
    try:
        entry = layers.resolve(path)
        if entry is None or not stat.S_ISREG(entry.st.st_mode):
            return None
        try:
            fd = os.open(entry.name, _FILE_FLAGS, dir_fd=entry.parent_fd)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            # Replaced between the lstat and the open (a FIFO or device now): not the file that was checked.
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (entry.st.st_dev, entry.st.st_ino):
                return None
            chunks: list[bytes] = []
            size = 0
            while size <= limit:
                chunk = os.read(fd, min(65536, limit + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except OSError as err:
            if err.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                return None
            raise SocirunError(f"cannot read {path} in the image: {err.strerror or err}") from None
        finally:
            os.close(fd)
        if size > limit:
            raise SocirunError(f"the image's {path} is larger than {limit // 1024} KiB; socirun does not read "
                               "users and groups from a file that large")  # fmt: skip
        return b"".join(chunks)
    finally:
        layers.close()


def read_rootfs_file(mounts: Sequence[Mount], path: str) -> str | None:
    """Text of `path` in a snapshot (its mounts, not mounted), or None when it is not a regular file there."""
    data = read_layer_file(layer_dirs(mounts), path)
    return None if data is None else data.decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------------------------- users


@dataclass(frozen=True)
class ResolvedUser:
    uid: int
    gid: int
    additional_gids: tuple[int, ...]
    name: str = ""


def _entries(text: str | None) -> list[list[str]]:
    if not text:
        return []
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def _number(text: str) -> int | None:
    """A uid/gid: ASCII digits only (str.isdigit() also takes "²", which int() then refuses), within uid_t."""
    if not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if value < _UID_LIMIT else None


def _id_field(entry: list[str], index: int, what: str, file: str) -> int:
    value = _number(entry[index])
    if value is None:
        raise SocirunError(f"invalid {what} {entry[index]!r} for {entry[0]!r} in the image's {file}")
    return value


def resolve_user(spec: str, passwd: str | None, group: str | None, extra_groups: Sequence[str] = ()) -> ResolvedUser:
    """containerd's WithUser + WithAdditionalGIDs (oci/spec_opts.go): `name`, `uid`, `user:group`, numeric or looked
    up."""
    users = [e for e in _entries(passwd) if len(e) >= 4]
    groups = [e for e in _entries(group) if len(e) >= 3]
    user_part, sep, group_part = (spec or "0").partition(":")
    name = ""
    number = _number(user_part)
    if number is not None:
        uid = number
        match = next((u for u in users if u[2] == user_part), None)
        gid = (_number(match[3]) or 0) if match else 0
        name = match[0] if match else ""
    else:
        # ASCII digits that do not fit a uid_t. Other digits ("²": str.isdigit() is true, Go's Atoi and int() refuse
        # them) are a name, looked up in passwd as containerd's WithUser does.
        if user_part.isascii() and user_part.isdigit():
            raise SocirunError(f"invalid user {user_part!r}: a uid is a number from 0 to {_UID_LIMIT - 1}")
        match = next((u for u in users if u[0] == user_part), None)
        if match is None:
            raise SocirunError(f'unable to find user {user_part}: no matching entries in passwd file')
        uid, gid, name = _id_field(match, 2, "uid", "/etc/passwd"), _id_field(match, 3, "gid", "/etc/passwd"), match[0]
    if sep:
        gid = _group_id(group_part, groups)
    additional: list[int] = [gid]
    if name:
        for g in groups:
            members = g[3].split(",") if len(g) > 3 else []
            gid_number = _number(g[2])
            if name in members and g[0] != name and gid_number is not None:
                additional.append(gid_number)
    for extra in extra_groups:
        additional.append(_group_id(extra, groups))
    return ResolvedUser(uid, gid, tuple(dict.fromkeys(additional)), name)


def _group_id(text: str, groups: list[list[str]]) -> int:
    number = _number(text)
    if number is not None:
        return number
    match = next((g for g in groups if g[0] == text), None)
    if match is None:
        raise SocirunError(f"unable to find group {text}: no matching entries in group file")
    return _id_field(match, 2, "gid", "/etc/group")
