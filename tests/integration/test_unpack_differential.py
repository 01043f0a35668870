"""The streaming applier (socirun/unpack) against containerd's own Diff.Apply, on the sandbox's containerd.

A corpus of layer chains built here covers every tar feature the applier handles. Each chain is applied twice on the
overlayfs snapshotter: chain A with Diff.Apply from the blob in containerd's content store, chain B with
socirun's applier fed the same blob in random-sized chunks. The two upperdirs of every layer, and the two merged
views of the top, must be identical entry by entry: type, content, mode, owner, xattrs (trusted.overlay.* included),
device numbers, link targets, hardlink groups, mtimes to the nanosecond where containerd sets them. The applier's
digest and diffID must be the blob's and containerd's.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import random
import stat
import struct
import subprocess
import tarfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from socirun.containerd.client import ContainerdClient
from socirun.containerd.types import Mount
from socirun.errors import DigestMismatchError
from socirun.oci import OCI_LAYER_GZIP, OCI_LAYER_TAR, Descriptor, sha256_digest
from socirun.sandbox.sandbox import SandboxInfo
from socirun.unpack.snapshot import apply_and_commit
from socirun.unpack.target import apply_target, bind_to_overlay

SNAPSHOTTER = "overlayfs"
T0 = 1_600_000_000
CAP_NET_BIND_SERVICE = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)  # vfs_cap_data v2, +ep


# -- the corpus -------------------------------------------------------------------------------------------------------


@dataclass
class Layer:
    tar: bytes
    media_type: str = OCI_LAYER_GZIP
    blob: bytes = b""
    dirs: set[str] = field(default_factory=set)  # directory entries: their times are the archive's

    def __post_init__(self) -> None:
        if not self.blob:
            self.blob = gzip.compress(self.tar, mtime=0) if self.media_type == OCI_LAYER_GZIP else self.tar

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor(self.media_type, sha256_digest(self.blob), len(self.blob))

    @property
    def diff_id(self) -> str:
        return sha256_digest(self.tar)


class LayerBuilder:
    def __init__(self, fmt: int = tarfile.PAX_FORMAT) -> None:
        self.raw = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.raw, mode="w", format=fmt)  # noqa: SIM115 - closed in build()
        self.dirs: set[str] = set()

    def _add(self, name: str, kind: bytes, *, mode: int = 0o644, owner: tuple[int, int] = (0, 0),
             mtime: int | str = T0, data: bytes = b"", linkname: str = "", dev: tuple[int, int] = (0, 0),
             xattrs: dict[str, bytes] | None = None) -> LayerBuilder:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.uid, info.gid = owner
        info.linkname = linkname
        info.devmajor, info.devminor = dev
        pax: dict[str, str] = {}
        if isinstance(mtime, str):  # a PAX time with nanoseconds, kept exactly (a float would round it)
            pax["mtime"] = mtime
            info.mtime = int(mtime.split(".")[0])
        else:
            info.mtime = mtime
        for key, value in (xattrs or {}).items():
            pax["SCHILY.xattr." + key] = value.decode("utf-8", "surrogateescape")
        info.pax_headers = pax
        info.size = len(data)
        self.tar.addfile(info, io.BytesIO(data) if data else None)
        if kind == tarfile.DIRTYPE:
            self.dirs.add(name.rstrip("/"))
        return self

    def dir(self, name: str, **kw: Any) -> LayerBuilder:
        kw.setdefault("mode", 0o755)
        return self._add(name, tarfile.DIRTYPE, **kw)

    def file(self, name: str, data: bytes = b"", **kw: Any) -> LayerBuilder:
        return self._add(name, tarfile.REGTYPE, data=data, **kw)

    def symlink(self, name: str, target: str, **kw: Any) -> LayerBuilder:
        return self._add(name, tarfile.SYMTYPE, linkname=target, mode=0o777, **kw)

    def hardlink(self, name: str, target: str, **kw: Any) -> LayerBuilder:
        return self._add(name, tarfile.LNKTYPE, linkname=target, **kw)

    def node(self, name: str, kind: bytes, dev: tuple[int, int] = (0, 0), **kw: Any) -> LayerBuilder:
        return self._add(name, kind, dev=dev, **kw)

    def whiteout(self, name: str) -> LayerBuilder:
        directory, _, base = name.rpartition("/")
        return self.file(f"{directory}/.wh.{base}" if directory else f".wh.{base}")

    def opaque(self, directory: str) -> LayerBuilder:
        return self.file(f"{directory}/.wh..wh..opq")

    def build(self, media_type: str = OCI_LAYER_GZIP, blob: bytes = b"") -> Layer:
        self.tar.close()
        return Layer(self.raw.getvalue(), media_type, blob, set(self.dirs))


def _random(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def main_chain() -> list[Layer]:
    base = (
        LayerBuilder()
        .dir("etc/", mtime="1600000001.123456789")
        .file("etc/hello", b"hello\n", mtime="1600000002.000000001")
        .hardlink("etc/hello-link", "etc/hello")
        .file("etc/xattr", b"x", xattrs={"user.foo": b"bar", "user.bin": b"\x00\xff\x01"})
        .file("empty")
        .file("big.bin", _random(1_500_000, 1), mode=0o600)
        .dir("usr/bin/", mode=0o755)  # its parent usr/ only implied
        .file("usr/bin/su", _random(3000, 2), mode=0o4755)
        .file("usr/bin/sg", b"sg", mode=0o2755)
        .file("usr/bin/ping", _random(500, 3), mode=0o755, xattrs={"security.capability": CAP_NET_BIND_SERVICE})
        .symlink("usr/bin/abs", "/etc/hello")
        .symlink("rel", "etc/hello")
        .symlink("dangling", "nope/never")
        .dir("tmp/", mode=0o1777)
        .dir("data/", mode=0o750, owner=(1234, 5678), xattrs={"user.dirattr": b"1"})
        .file("data/medium", _random(65_536, 4), owner=(1234, 5678), mode=0o640)
        .node("run/fifo", tarfile.FIFOTYPE, mode=0o600)
        .node("dev/null", tarfile.CHRTYPE, (1, 3), mode=0o666)
        .node("dev/loop0", tarfile.BLKTYPE, (7, 0), mode=0o660, owner=(0, 6))
        .dir("opq/")
        .file("opq/a", b"a")
        .file("opq/sub/b", b"b")
        .file("rep_f2d", b"a file that becomes a directory")
        .dir("rep_d2f/")
        .file("rep_d2f/child", b"goes with its directory")
        .file("wh/gone", b"whited out above")
        .file("wh/keep", b"kept")
        .dir("gonedir/")
        .file("gonedir/inner", b"inner")
        .file("opq0/x", b"before the marker")
        .opaque("opq0")  # in a bind-mounted first layer: deletes what the layer did not write
        .whiteout("never-existed")
        .build()
    )
    upper = (
        LayerBuilder()
        .whiteout("wh/gone")
        .opaque("opq")
        .file("opq/new", b"new in an opaque directory")
        .dir("rep_f2d/", mode=0o700)
        .file("rep_f2d/inner", b"inside")
        .file("rep_d2f", b"now a file", mode=0o444)
        .file("data/sub/new", b"parent copied up from below")  # data/ and data/sub/ implied: attributes from below
        .file("etc/hello", b"changed\n", mtime="1650000000.5")
        .file("etc/pair-a", b"pair", owner=(1234, 5678))
        .hardlink("etc/pair-b", "etc/pair-a", owner=(1234, 5678))
        .file("../escape", b"clamped to the root")
        .symlink("lnk", "/etc")
        .file("lnk/through", b"written through the layer's own symlink, inside the root")
        .whiteout("gonedir")
        .build()
    )
    top = (
        LayerBuilder()
        .whiteout("usr/bin")
        .file("rep_f2d", b"a file again")
        .dir("rep_d2f/", mode=0o711)
        .file("old", b"before 1970", mtime=-5)
        .file("ns", b"ns", mtime="1700000000.999999999", owner=(65534, 65534))
        .dir("data/sub/", mode=0o700, owner=(42, 42))
        .build()
    )
    return [base, upper, top]


def format_chain() -> list[Layer]:
    """Other encodings: GNU long names and a two-member gzip; an uncompressed OCI tar layer on top."""
    long_dir = "d" * 120
    gnu = (
        LayerBuilder(tarfile.GNU_FORMAT)
        .dir(f"{long_dir}/")
        .file(f"{long_dir}/{'f' * 110}", b"long")
        .symlink("longlink", f"{long_dir}/{'f' * 110}")
        .build()
    )
    cut = len(gnu.tar) // 2
    gnu.blob = gzip.compress(gnu.tar[:cut], mtime=0) + gzip.compress(gnu.tar[cut:], mtime=0)
    plain = LayerBuilder().file("plain", b"uncompressed layer").whiteout("longlink").build(OCI_LAYER_TAR)
    return [gnu, plain]


CHAINS = {"features": main_chain, "formats": format_chain}


# -- reading a tree back ----------------------------------------------------------------------------------------------


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {name: os.getxattr(path, name, follow_symlinks=False) for name in sorted(names)}


def tree(root: Path, exact_dirs: set[str] | None) -> tuple[dict[str, tuple[Any, ...]], list[list[str]]]:
    """Every entry under root: (type, mode, uid, gid, content sha256 | link target | device, xattrs, nlink,
    mtime_ns or None where containerd does not set it), and the hardlink groups.

    exact_dirs: directories whose times the archive sets (None: no directory time is compared, as in a merged view)."""
    entries: dict[str, tuple[Any, ...]] = {}
    inodes: dict[int, list[str]] = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames] if directory == str(root) else [*dirnames, *filenames]:
            path = os.path.normpath(os.path.join(directory, name))
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            kind = stat.S_IFMT(st.st_mode)
            detail: Any = None
            mtime: int | None = st.st_mtime_ns
            if stat.S_ISREG(kind):
                detail = hashlib.sha256(Path(path).read_bytes()).hexdigest()
                if st.st_nlink > 1:
                    inodes.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(kind):
                detail = os.readlink(path)
            elif stat.S_ISCHR(kind) or stat.S_ISBLK(kind):
                detail = (os.major(st.st_rdev), os.minor(st.st_rdev))
                if stat.S_ISCHR(kind) and st.st_rdev == 0:
                    mtime = None  # an overlay whiteout: created "now" by both
            elif stat.S_ISDIR(kind) and (rel == "." or exact_dirs is None or rel not in exact_dirs):
                mtime = None  # created or touched by the unpack itself
            entries[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, detail, _xattrs(path),
                            st.st_nlink if not stat.S_ISDIR(kind) else None, mtime)
    return entries, sorted(sorted(group) for group in inodes.values())


def assert_same_tree(a: Path, b: Path, exact_dirs: set[str] | None, what: str) -> dict[str, tuple[Any, ...]]:
    entries_a, links_a = tree(a, exact_dirs)
    entries_b, links_b = tree(b, exact_dirs)
    assert sorted(entries_a) == sorted(entries_b), f"{what}: different paths"
    for rel in sorted(entries_a):
        assert entries_a[rel] == entries_b[rel], (
            f"{what}: {rel} differs:\n containerd {entries_a[rel]}\n socirun    {entries_b[rel]}"
        )
    assert links_a == links_b, f"{what}: different hardlink groups"
    return entries_a


@contextlib.contextmanager
def mounted(mounts: list[Mount], where: Path) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    (mount,) = mounts
    if mount.type == "bind":
        argv = ["mount", "--bind", mount.source, str(where)]
    else:
        argv = ["mount", "-t", mount.type, "-o", ",".join(mount.options), mount.source, str(where)]
    subprocess.run(argv, check=True, capture_output=True, timeout=30)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True, capture_output=True, timeout=30)


# -- the two appliers -------------------------------------------------------------------------------------------------


async def random_chunks(data: bytes, seed: int) -> AsyncIterator[bytes]:
    rng = random.Random(seed)
    pos = 0
    while pos < len(data):
        size = rng.choice([1, 7, 511, 512, 513, 4096, 65_536, 300_000])
        yield data[pos:pos + size]
        pos += size


@pytest.fixture
async def ctd(sandbox: SandboxInfo) -> AsyncIterator[ContainerdClient]:
    namespace = f"unpack-{uuid.uuid4().hex[:8]}"
    async with await ContainerdClient.connect(sandbox.containerd_address, namespace) as client:
        try:
            async with client.lease():
                yield client
        finally:
            for info in reversed(await client.snapshot_list(SNAPSHOTTER)):
                await client.snapshot_remove(SNAPSHOTTER, info.name)
            for blob in await client.list_content():
                await client.delete_content(blob.digest)


@pytest.mark.parametrize("chain_name", sorted(CHAINS))
async def test_streaming_applier_matches_diff_apply(ctd: ContainerdClient, chain_name: str, tmp_path: Path) -> None:
    layers = CHAINS[chain_name]()
    run = uuid.uuid4().hex[:8]
    parents = {"A": "", "B": ""}
    for index, layer in enumerate(layers):
        desc = layer.descriptor
        await ctd.write_blob(f"layer-{desc.digest}", desc.digest, layer.blob, {})
        dirs: dict[str, Path] = {}
        for chain in ("A", "B"):
            key, name = f"extract-{run}-{chain}{index}", f"{run}-{chain}{index}"
            mounts = await ctd.snapshot_prepare(SNAPSHOTTER, key, parents[chain], {})
            assert [m.type for m in mounts] == (["bind"] if index == 0 else ["overlay"])
            dirs[chain] = apply_target(mounts).path
            if chain == "A":
                applied = await ctd.diff_apply(desc, mounts)
                assert applied.digest == layer.diff_id
                await ctd.snapshot_commit(SNAPSHOTTER, name, key, {})
            else:
                ours = await apply_and_commit(ctd, SNAPSHOTTER, key=key, name=name, labels={}, mounts=mounts,
                                              layer=desc, diff_id=layer.diff_id,
                                              chunks=random_chunks(layer.blob, seed=index))
                assert (ours.digest, ours.compressed_size) == (desc.digest, desc.size)
                assert (ours.diff_id, ours.size) == (applied.digest, applied.size)
            parents[chain] = name
        entries = assert_same_tree(dirs["A"], dirs["B"], layer.dirs, f"{chain_name} layer {index} upperdir")
        assert len(entries) > 1
    views = {}
    for chain in ("A", "B"):
        views[chain] = await ctd.snapshot_view(SNAPSHOTTER, f"view-{run}-{chain}", parents[chain])
    with mounted(views["A"], tmp_path / "a") as merged_a, mounted(views["B"], tmp_path / "b") as merged_b:
        merged = assert_same_tree(merged_a, merged_b, None, f"{chain_name} merged view")
    if chain_name == "features":
        _check_features(merged, dirs["B"])


def _check_features(merged: dict[str, tuple[Any, ...]], top_upper: Path) -> None:
    """The corpus did what it says (so that 'identical' is not 'identically empty')."""
    assert "wh/gone" not in merged and "wh/keep" in merged and "gonedir" not in merged
    assert sorted(p for p in merged if p.startswith("opq/")) == ["opq/new"]
    assert stat.S_ISREG(merged["rep_f2d"][0]) and stat.S_ISDIR(merged["rep_d2f"][0])
    assert merged["data/medium"][2:4] == (1234, 5678) and merged["data"][1] == 0o750
    assert merged["etc/xattr"][5] == {"user.bin": b"\x00\xff\x01", "user.foo": b"bar"}
    assert "usr/bin" not in merged and merged["tmp"][1] == 0o1777
    assert merged["escape"][4] == hashlib.sha256(b"clamped to the root").hexdigest()
    assert "etc/through" in merged and stat.S_ISLNK(merged["lnk"][0])
    assert merged["dev/null"][4] == (1, 3) and stat.S_ISFIFO(merged["run/fifo"][0])
    assert merged["old"][7] == 0 and merged["ns"][7] == 1_700_000_000_999_999_999
    whiteout = os.lstat(top_upper / "usr" / "bin")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0


async def test_wrong_diff_id_commits_nothing(ctd: ContainerdClient) -> None:
    layer = LayerBuilder().file("f", b"data").build()
    desc = layer.descriptor
    run = uuid.uuid4().hex[:8]
    key, name = f"extract-{run}", f"{run}-bad"
    mounts = await ctd.snapshot_prepare(SNAPSHOTTER, key, "", {})
    wrong = sha256_digest(b"not this layer")

    async def chunks() -> AsyncIterator[bytes]:
        yield layer.blob

    with pytest.raises(DigestMismatchError) as caught:
        await apply_and_commit(ctd, SNAPSHOTTER, key=key, name=name, labels={}, mounts=mounts, layer=desc,
                               diff_id=wrong, chunks=chunks())
    assert desc.digest in str(caught.value) and wrong in str(caught.value)
    assert await ctd.snapshot_stat(SNAPSHOTTER, key) is None  # the partial layer is gone
    assert await ctd.snapshot_stat(SNAPSHOTTER, name) is None  # and nothing was committed


@pytest.mark.parametrize("chain_name", sorted(CHAINS))
async def test_rebased_applier_matches_rebased_diff_apply(ctd: ContainerdClient, chain_name: str,
                                                          tmp_path: Path) -> None:
    """Parallel unpack (a snapshotter with the "rebase" capability: containerd 2.x's overlayfs): every layer is
    prepared without a parent, unpacked into the snapshot's own directory with overlay's whiteouts
    (bind_to_overlay), and committed with its parent. Chain C is containerd's Diff.Apply so, chain D socirun's
    applier so; they must be identical layer by layer and merged, and the whiteouts must hide the lower files.
    (They are not compared with a sequential unpack: a parent directory an archive leaves out is created 0755
    in a parentless snapshot, where an upperdir copies the lower layer's, in containerd's unpacker as here.)"""
    if "rebase" not in await ctd.snapshotter_capabilities(SNAPSHOTTER):
        pytest.skip("this containerd's overlayfs cannot rebase (containerd 1.6): layers wait for their parents")
    layers = CHAINS[chain_name]()
    run = uuid.uuid4().hex[:8]
    names: dict[str, list[str]] = {"C": [], "D": []}
    uppers: dict[str, list[Path]] = {"C": [], "D": []}
    for index, layer in enumerate(layers):
        desc = layer.descriptor
        await ctd.write_blob(f"layer-{desc.digest}", desc.digest, layer.blob, {})
        for chain in ("C", "D"):
            key, name = f"extract-{run}-{chain}{index}", f"{run}-{chain}{index}"
            parent = names[chain][-1] if names[chain] else ""
            mounts = await ctd.snapshot_prepare(SNAPSHOTTER, key, "", {})
            assert [m.type for m in mounts] == ["bind"]  # no parent: the snapshot's own directory
            target = mounts if index == 0 else bind_to_overlay(mounts)
            uppers[chain].append(apply_target(target).path)
            if chain == "C":
                applied = await ctd.diff_apply(desc, target)
                assert applied.digest == layer.diff_id
                await ctd.snapshot_commit(SNAPSHOTTER, name, key, {}, parent)
            else:
                ours = await apply_and_commit(ctd, SNAPSHOTTER, key=key, name=name, labels={}, mounts=target,
                                              layer=desc, diff_id=layer.diff_id, parent=parent,
                                              chunks=random_chunks(layer.blob, seed=index))
                assert (ours.diff_id, ours.size) == (applied.digest, applied.size)
            info = await ctd.snapshot_stat(SNAPSHOTTER, name)
            assert info is not None and info.parent == parent  # the parent given at Commit
            names[chain].append(name)
        entries = assert_same_tree(uppers["C"][index], uppers["D"][index], layer.dirs,
                                   f"{chain_name} layer {index} rebased")
        assert len(entries) > 1
    views = {chain: await ctd.snapshot_view(SNAPSHOTTER, f"view-{run}-{chain}", names[chain][-1])
             for chain in ("C", "D")}
    with mounted(views["C"], tmp_path / "c") as merged_c, mounted(views["D"], tmp_path / "d") as merged_d:
        merged = assert_same_tree(merged_c, merged_d, None, f"{chain_name} merged view, rebased")
    if chain_name == "features":
        assert "wh/gone" not in merged and "wh/keep" in merged and "gonedir" not in merged
        assert sorted(p for p in merged if p.startswith("opq/")) == ["opq/new"]
        whiteout = os.lstat(uppers["D"][-1] / "usr" / "bin")
        assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
