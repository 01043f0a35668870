"""Writing tar entries into a layer root with the semantics of containerd's archive.Apply (v1.6.20, same in 2.4).

`LayerWriter` receives entries from `tarstream.TarStream` and does for each what containerd's applyNaive and
createTarFile do: the path resolved inside the root, missing parents created (copying a lower layer's directory
attributes in an overlay upperdir), whiteouts converted, an existing path replaced unless both are directories,
then the entry created, chowned (numeric ids), its SCHILY.xattr records set, chmodded (setuid/setgid/sticky kept),
its times set; directory times once more at the end, after their children. Deliberate equalities with containerd:
`trusted.*` xattrs from the archive are ignored, `user.*` xattrs that a symlink or device cannot carry are ignored,
PAX times keep their nanoseconds, a time before 1970 becomes 1970.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import shutil
import stat
import tarfile
from dataclasses import dataclass, field

from socirun.unpack.rootpath import go_clean, go_join, go_split, root_path
from socirun.unpack.target import ApplyTarget

WHITEOUT_PREFIX = ".wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
XATTR_PREFIX = "SCHILY.xattr."
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
MAX_TIME_NS = (1 << 63) - 1
_CREATED_TYPES = {tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                  tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE}
_NODE_KIND = {tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK, tarfile.FIFOTYPE: stat.S_IFIFO}


class LayerFormatError(ValueError):
    """An entry containerd's applier would refuse as well (an unknown type, a bad whiteout name or time)."""


def pax_time_ns(text: str) -> int:
    """A PAX time ("1700000000.123456789", "-1.5") in nanoseconds, as Go's parsePAXTime reads it."""
    seconds, _, fraction = text.partition(".")
    try:
        whole = int(seconds, 10)
    except ValueError:
        raise LayerFormatError(f"bad PAX time {text!r}") from None
    if fraction.strip("0123456789"):
        raise LayerFormatError(f"bad PAX time {text!r}")
    nanos = int((fraction + "000000000")[:9]) if fraction else 0
    return whole * 1_000_000_000 + (-nanos if seconds.startswith("-") else nanos)


def bound_time(ns: int) -> int:
    """containerd's boundTime: times before the epoch or past what a timespec holds become the epoch."""
    return ns if 0 <= ns <= MAX_TIME_NS else 0


def entry_times(info: tarfile.TarInfo) -> tuple[int, int]:
    """(atime, mtime) in nanoseconds as containerd sets them: atime is the later of the two, both bounded."""
    pax = info.pax_headers
    mtime = pax_time_ns(pax["mtime"]) if "mtime" in pax else int(info.mtime) * 1_000_000_000
    atime = pax_time_ns(pax["atime"]) if "atime" in pax else None
    later = mtime if atime is None else max(atime, mtime)
    return bound_time(later), bound_time(mtime)


def whiteout_target(path: str) -> str | None:
    """For a whiteout's resolved path, the path it deletes; None when it is no whiteout (or the opaque marker);
    LayerFormatError when the name would leave its directory (`.wh..`, `.wh.`), as validateWhiteout says."""
    directory, base = posixpath.split(path)
    if base == WHITEOUT_OPAQUE or not base.startswith(WHITEOUT_PREFIX):
        return None
    original = go_join(directory, base[len(WHITEOUT_PREFIX):])
    prefix = directory if directory.endswith("/") else directory + "/"
    if not original.startswith(prefix):
        raise LayerFormatError(f"invalid whiteout name: {base}")
    return original


def remove_all(path: str) -> None:
    """Go's os.RemoveAll: the path itself (a symlink is not followed), a directory with everything in it."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        shutil.rmtree(path)


def _ignored_errno(err: OSError, *codes: int) -> bool:
    return err.errno in codes


@dataclass
class _Dir:
    name: str
    atime: int
    mtime: int


@dataclass
class LayerWriter:
    """The tar sink that writes into `target` (see the module docstring)."""

    target: ApplyTarget
    root: str = ""
    entries: int = 0
    _unpacked: set[str] = field(default_factory=set)
    _dirs: list[_Dir] = field(default_factory=list)
    _info: tarfile.TarInfo | None = None
    _path: str = ""
    _fd: int = -1  # the regular file being written, or -1
    # Memos that spare each entry a walk of its parent path (an lstat per component) and the lstat of its parent:
    # a directory part of an entry name -> its resolved parent, and the paths known to be directories. Only a
    # symlink appearing or going away changes how a path resolves, and only a removal makes a directory go away,
    # so both are dropped (`_forget`) whenever this writer creates a symlink or a hardlink (which may be one to a
    # symlink) or removes anything; between such entries, which most layers hardly have, they stay valid.
    _resolved: dict[str, str] = field(default_factory=dict)
    _known_dirs: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.root = go_clean(str(self.target.path))

    # -- the sink ------------------------------------------------------------------------------------------

    def begin(self, info: tarfile.TarInfo) -> None:
        self._info, self._path = None, ""
        name = go_clean(info.name)
        directory, base = go_split(name)
        parent = self._root_path(directory)
        path = go_join(parent, go_join("/", base))
        if path == self.root:
            return  # an entry for the root itself: containerd ignores it
        if parent != self.root:
            self._mkparent(parent if base else posixpath.dirname(path))
        deleted = whiteout_target(path)
        base = posixpath.basename(path)
        if base == WHITEOUT_OPAQUE:
            self._opaque(posixpath.dirname(path))
            return
        if deleted is not None:
            self._whiteout(info, deleted)
            return
        with contextlib.suppress(FileNotFoundError):
            existing = os.lstat(path)
            if not (stat.S_ISDIR(existing.st_mode) and info.type == tarfile.DIRTYPE):
                self._forget()
                remove_all(path)
        if info.type == tarfile.XGLTYPE:
            return  # a PAX global header: containerd removes what was at its path and creates nothing
        if info.type not in _CREATED_TYPES:
            raise LayerFormatError(f"{info.name}: unhandled tar entry type {info.type!r}")
        self._info, self._path = info, path
        self._create(info, path)

    def data(self, piece: memoryview) -> None:
        if self._fd < 0:
            return  # data of an entry that is not written (a whiteout with a body, the root)
        while piece:
            written = os.write(self._fd, piece)
            piece = piece[written:]

    def end(self) -> None:
        info, path = self._info, self._path
        self._info, self._path = None, ""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
        if info is None:
            return
        self._metadata(info, path)
        if info.type == tarfile.DIRTYPE:
            atime, mtime = entry_times(info)
            self._dirs.append(_Dir(go_clean(info.name), atime, mtime))
        self._unpacked.add(path)
        self.entries += 1

    def finish(self) -> None:
        """Directory times, last: creating their children changed them."""
        for directory in self._dirs:
            os.utime(root_path(self.root, directory.name), ns=(directory.atime, directory.mtime),
                     follow_symlinks=False)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    # -- path memos ----------------------------------------------------------------------------------------

    def _root_path(self, directory: str) -> str:
        """root_path(self.root, directory), memoized until the next `_forget`."""
        resolved = self._resolved.get(directory)
        if resolved is None:
            resolved = self._resolved[directory] = root_path(self.root, directory)
        return resolved

    def _forget(self) -> None:
        """A symlink may appear or go away, or a directory go away: what the memos say may no longer hold."""
        self._resolved.clear()
        self._known_dirs.clear()

    # -- entries -------------------------------------------------------------------------------------------

    def _create(self, info: tarfile.TarInfo, path: str) -> None:
        mode = info.mode & 0o7777
        kind = info.type
        if kind == tarfile.DIRTYPE:
            try:
                is_dir = stat.S_ISDIR(os.lstat(path).st_mode)
            except FileNotFoundError:
                is_dir = False
            if not is_dir:
                os.mkdir(path, mode)
                os.chmod(path, mode)  # the umask must not narrow the archive's mode
            self._known_dirs.add(path)
        elif kind in (tarfile.REGTYPE, tarfile.AREGTYPE):
            # The path was removed above; O_EXCL|O_NOFOLLOW make sure nothing else is written through. The umask
            # may narrow the mode here: `_metadata` sets the archive's mode once the data is written.
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        elif kind in _NODE_KIND:
            os.mknod(path, mode | _NODE_KIND[kind], os.makedev(info.devmajor, info.devminor))
        elif kind == tarfile.LNKTYPE:
            self._forget()  # the link may be one to a symlink: a new symlink
            os.link(self._hardlink_target(info.linkname), path, follow_symlinks=False)
        elif kind == tarfile.SYMTYPE:
            self._forget()
            os.symlink(info.linkname, path)

    def _hardlink_target(self, linkname: str) -> str:
        """The link's target inside the root (containerd's hardlinkRootPath): never a file outside it."""
        directory, base = go_split(linkname)
        target = go_join(self._root_path(directory), base)
        return target if target.startswith(self.root) else self.root

    def _metadata(self, info: tarfile.TarInfo, path: str) -> None:
        # Order as containerd: owner first (a chown clears setuid/setgid and file capabilities), then xattrs,
        # then the mode, then the times.
        os.lchown(path, info.uid, info.gid)
        for key, value in info.pax_headers.items():
            if key.startswith(XATTR_PREFIX):
                self._setxattr(path, key[len(XATTR_PREFIX):], value.encode("utf-8", "surrogateescape"))
        # containerd's createTarFile: no chmod for a symlink, nor for a hardlink to one (chmod would follow it).
        if info.type != tarfile.SYMTYPE and not (info.type == tarfile.LNKTYPE and stat.S_ISLNK(os.lstat(path).st_mode)):
            os.chmod(path, info.mode & 0o7777)
        atime, mtime = entry_times(info)
        os.utime(path, ns=(atime, mtime), follow_symlinks=False)

    @staticmethod
    def _setxattr(path: str, key: str, value: bytes) -> None:
        if key.startswith("trusted."):
            return  # containerd refuses admin attributes from an archive (ENOTSUP, ignored)
        try:
            os.setxattr(path, key, value, follow_symlinks=False)
        except OSError as err:
            if err.errno == errno.EPERM and key.startswith("user."):
                mode = os.lstat(path).st_mode
                if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                    return  # user.* xattrs exist only on regular files and directories
            if err.errno == errno.ENOTSUP:
                return
            raise

    # -- parents and whiteouts -----------------------------------------------------------------------------

    def _mkparent(self, path: str) -> None:
        """Create `path` and its missing parents (0755), each new one taking owner, mode, times and non-trusted
        xattrs from the topmost lower layer that has it as a directory (containerd's mkparent)."""
        if path in self._known_dirs:
            return
        try:
            if stat.S_ISDIR(os.lstat(path).st_mode):
                self._known_dirs.add(path)
                return
            raise NotADirectoryError(errno.ENOTDIR, "a parent in the layer is not a directory", path)
        except FileNotFoundError:
            pass
        cut = path.rfind("/")
        if cut > len(self.root):
            self._mkparent(path[:cut])
        try:
            os.mkdir(path, 0o755)
            os.chmod(path, 0o755)
        except OSError:
            if stat.S_ISDIR(os.lstat(path).st_mode):
                self._known_dirs.add(path)
                return
            raise
        self._known_dirs.add(path)
        for lower in self.target.parents:
            below = root_path(str(lower), path[len(self.root):])
            try:
                st = os.lstat(below)
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(st.st_mode):
                break  # replaced in that layer: the defaults stay
            _copy_dir_info(st, path)
            _copy_up_xattrs(path, below)
            return

    def _opaque(self, directory: str) -> None:
        if self.target.overlay:
            os.setxattr(directory, OVERLAY_OPAQUE_XATTR, b"y")
            return
        os.lstat(directory)  # a marker in a directory that is not there fails, as in containerd
        self._forget()
        self._remove_not_unpacked(directory)

    def _remove_not_unpacked(self, directory: str) -> None:
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return
        for name in names:
            path = directory + "/" + name
            if path not in self._unpacked:
                remove_all(path)
            elif stat.S_ISDIR(os.lstat(path).st_mode):
                self._remove_not_unpacked(path)

    def _whiteout(self, info: tarfile.TarInfo, deleted: str) -> None:
        if self.target.overlay:
            # overlayfs' own whiteout: a 0/0 character device, owned like the marker (OverlayConvertWhiteout).
            os.mknod(deleted, stat.S_IFCHR, 0)
            os.chown(deleted, info.uid, info.gid)
            return
        self._forget()
        remove_all(deleted)


def _copy_dir_info(st: os.stat_result, path: str) -> None:
    try:
        os.lchown(path, st.st_uid, st.st_gid)
    except PermissionError:
        mine = os.lstat(path)
        if (mine.st_uid, mine.st_gid) != (st.st_uid, st.st_gid):
            raise
    os.chmod(path, stat.S_IMODE(st.st_mode))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _copy_up_xattrs(dst: str, src: str) -> None:
    try:
        keys = os.listxattr(src, follow_symlinks=False)
    except OSError as err:
        if _ignored_errno(err, errno.ENOTSUP, errno.ENODATA):
            return
        raise
    for key in keys:
        if key.startswith("trusted."):
            continue  # overlay's own markers (opaque, redirect) belong to the lower layer only
        try:
            value = os.getxattr(src, key, follow_symlinks=False)
        except OSError as err:
            if _ignored_errno(err, errno.ENOTSUP, errno.ENODATA):
                continue
            raise
        try:
            os.setxattr(dst, key, value, os.XATTR_CREATE, follow_symlinks=False)
        except OSError as err:
            if not _ignored_errno(err, errno.ENOTSUP, errno.ENODATA, errno.EEXIST):
                raise
