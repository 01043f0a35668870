"""The streaming applier's fast paths keep containerd's (Go's) behaviour: gzip inflated by ISA-L, multi-member,
headers in any pieces, every broken stream an error; the writer's path memos forgotten whenever a symlink comes or
goes or anything is removed."""

from __future__ import annotations

import gzip
import io
import os
import struct
import tarfile
import zlib
from pathlib import Path

import pytest

from socirun.oci import OCI_LAYER_GZIP, Descriptor, sha256_digest
from socirun.unpack.apply import LayerApplier, LayerUnpackError
from socirun.unpack.decompress import Decompressor, GzipFormatError, gzip_header_size
from socirun.unpack.target import ApplyTarget
from tests.unit.test_unpack import apply, layer

BODY = os.urandom(3000) + b"a" * 200_000  # incompressible and compressible parts: several deflate blocks
FHCRC, FEXTRA, FNAME, FCOMMENT = 0x02, 0x04, 0x08, 0x10


def member(body: bytes, flags: int = 0, name: bytes = b"layer.tar", crc: int | None = None) -> bytes:
    """One gzip member with the optional header fields that `flags` asks for (RFC 1952)."""
    header = b"\x1f\x8b\x08" + bytes([flags]) + b"\0\0\0\0\0\xff"
    if flags & FEXTRA:
        header += struct.pack("<H", 6) + b"sr\x02\x00hi"
    if flags & FNAME:
        header += name + b"\0"
    if flags & FCOMMENT:
        header += b"a comment\0"
    if flags & FHCRC:
        header += struct.pack("<H", zlib.crc32(header) & 0xFFFF)
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    data = deflate.compress(body) + deflate.flush()
    trailer = struct.pack("<II", zlib.crc32(body) if crc is None else crc, len(body) & 0xFFFFFFFF)
    return header + data + trailer


def inflate(blob: bytes, step: int) -> bytes:
    decompressor = Decompressor(OCI_LAYER_GZIP)
    out = [piece for start in range(0, len(blob), step) for piece in decompressor.feed(blob[start:start + step])]
    return b"".join(out) + b"".join(decompressor.finish())


@pytest.mark.parametrize("step", [1, 7, 4096, 1 << 30])
def test_multi_member_gzip_is_read_whole_in_any_pieces(step: int) -> None:
    blob = gzip.compress(BODY, mtime=0) + gzip.compress(b"", mtime=0) + gzip.compress(b"second", mtime=0)
    assert inflate(blob, step) == BODY + b"second"


@pytest.mark.parametrize("step", [1, 3, 11])
def test_headers_with_every_optional_field_are_read_when_they_arrive_in_pieces(step: int) -> None:
    # ISA-L alone fails on these when the header is split (a header CRC, or an extra field and a name).
    blob = member(BODY, FHCRC | FEXTRA | FNAME | FCOMMENT) + member(b"two", FHCRC | FEXTRA) + member(b"3", FHCRC)
    assert inflate(blob, step) == BODY + b"two3"


BROKEN = {  # name: (stream, what the error says)
    "trailer cut off": (gzip.compress(BODY, mtime=0)[:-5], "ends before its last member"),
    "cut inside the data": (gzip.compress(BODY, mtime=0)[:2000], "ends before its last member"),
    "cut inside the header": (member(BODY, FNAME)[:12], "ends inside a member's header"),
    "a second member just begun": (gzip.compress(BODY, mtime=0) + b"\x1f\x8b", "ends inside a member's header"),
    "trailing zeros": (gzip.compress(BODY, mtime=0) + bytes(16), "invalid gzip header"),  # Go's ErrHeader
    "trailing garbage": (gzip.compress(BODY, mtime=0) + b"garbage after it", "invalid gzip header"),
    "wrong data CRC": (member(BODY, crc=zlib.crc32(BODY) ^ 1), "invalid gzip data"),
    "wrong header CRC": (member(BODY, FHCRC)[:10] + b"\x00\x00" + member(BODY, FHCRC)[12:], "invalid gzip data"),
    "a name of 512 bytes": (member(BODY, FNAME, name=b"n" * 512), "longer than 511 bytes"),  # Go refuses it too
}


@pytest.mark.parametrize("step", [1, 100, 1 << 30])
@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_gzip_streams_are_errors(case: str, step: int) -> None:
    blob, message = BROKEN[case]
    with pytest.raises(GzipFormatError, match=message):
        inflate(blob, step)


def test_a_name_of_511_bytes_is_read_like_go() -> None:
    assert inflate(member(BODY, FNAME, name=b"n" * 511), 100) == BODY


ALL_FIELDS = FHCRC | FEXTRA | FNAME | FCOMMENT
HEADERS = [  # (the start of a stream, the header's size or None while it is incomplete)
    (b"", None), (b"\x1f\x8b", None), (member(b"x")[:9], None), (member(b"x"), 10),
    (member(b"x", FEXTRA)[:11], None), (member(b"x", FEXTRA), 18),
    (member(b"x", FNAME, name=b"abc")[:13], None), (member(b"x", FNAME, name=b"abc"), 14),
    (member(b"x", FNAME | FCOMMENT, name=b"abc")[:20], None), (member(b"x", FNAME | FCOMMENT, name=b"abc"), 24),
    (member(b"x", ALL_FIELDS, name=b"abc")[:33], None), (member(b"x", ALL_FIELDS, name=b"abc"), 34),
]


@pytest.mark.parametrize(("head", "size"), HEADERS, ids=[f"{len(head)}B-{size}" for head, size in HEADERS])
def test_gzip_header_size_waits_for_the_whole_header(head: bytes, size: int | None) -> None:
    assert gzip_header_size(head) == size


@pytest.mark.parametrize("head", [b"\x00", b"\x1f\x00", b"PK\x03\x04", b"\x1f\x8b\x09" + bytes(7)])
def test_gzip_header_size_refuses_what_is_no_gzip_member(head: bytes) -> None:
    with pytest.raises(GzipFormatError):
        gzip_header_size(head)


def test_a_corrupt_gzip_layer_fails_the_applier_cleanly(tmp_path: Path) -> None:
    raw = tmp_path / "tar"
    (tmp_path / "f").write_bytes(BODY)
    with tarfile.open(raw, "w") as tar:
        tar.add(tmp_path / "f", "f")
    blob = member(raw.read_bytes(), crc=0)
    root = tmp_path / "root"
    root.mkdir()
    applier = LayerApplier(ApplyTarget(root, overlay=False), Descriptor(OCI_LAYER_GZIP, sha256_digest(blob), len(blob)))
    with pytest.raises(LayerUnpackError, match="invalid gzip data"):
        applier.feed(blob)
        applier.finish()


def test_a_directory_replaced_by_a_symlink_is_followed_by_later_entries(tmp_path: Path) -> None:
    # "a/" resolves to root/a for the first file; once "a" is a symlink, "a/y" must go where the link points
    # inside the root, never through the link to the host's directory.
    outside, root = tmp_path / "outside", tmp_path / "root"
    outside.mkdir()
    root.mkdir()
    blob, _ = layer(("a/x", tarfile.REGTYPE, b"x"), ("a", tarfile.SYMTYPE, str(outside)),
                    ("a/y", tarfile.REGTYPE, b"y"))
    apply(root, blob)
    assert list(outside.iterdir()) == []
    assert (root / str(outside).lstrip("/") / "y").read_bytes() == b"y"
    assert (root / "a").is_symlink() and not (root / "a" / "x").exists()


def test_a_symlink_replaced_by_a_directory_is_no_longer_followed(tmp_path: Path) -> None:
    outside, root = tmp_path / "outside", tmp_path / "root"
    outside.mkdir()
    root.mkdir()
    blob, _ = layer(("a", tarfile.SYMTYPE, str(outside)), ("a/x", tarfile.REGTYPE, b"x"), ("a", tarfile.DIRTYPE, b""),
                    ("a/y", tarfile.REGTYPE, b"y"))
    apply(root, blob)
    assert (root / "a").is_dir() and not (root / "a").is_symlink()
    assert sorted(p.name for p in (root / "a").iterdir()) == ["y"]
    assert sorted(p.name for p in (root / str(outside).lstrip("/")).iterdir()) == ["x"]


def test_a_hardlink_to_a_symlink_is_followed_by_later_entries(tmp_path: Path) -> None:
    outside, root = tmp_path / "outside", tmp_path / "root"
    outside.mkdir()
    root.mkdir()
    blob, _ = layer(("l", tarfile.SYMTYPE, str(outside)), ("b/x", tarfile.REGTYPE, b"x"), ("b", tarfile.REGTYPE, b""),
                    ("b", tarfile.LNKTYPE, "l"), ("b/y", tarfile.REGTYPE, b"y"))
    apply(root, blob)
    assert list(outside.iterdir()) == []
    assert (root / "b").is_symlink() and (root / str(outside).lstrip("/") / "y").read_bytes() == b"y"


def test_a_directory_removed_by_a_whiteout_is_created_again_for_later_entries(tmp_path: Path) -> None:
    blob, _ = layer(("d/x", tarfile.REGTYPE, b"x"), (".wh.d", tarfile.REGTYPE, b""), ("d/y", tarfile.REGTYPE, b"y"))
    apply(tmp_path, blob)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["y"]


def test_a_directory_removed_by_an_opaque_marker_is_created_again_for_later_entries(tmp_path: Path) -> None:
    blob, _ = layer(("d/e/x", tarfile.REGTYPE, b"x"), ("d/.wh..wh..opq", tarfile.REGTYPE, b""),
                    ("d/e/y", tarfile.REGTYPE, b"y"))
    apply(tmp_path, blob)
    assert sorted(p.name for p in (tmp_path / "d" / "e").iterdir()) == ["y"]


def test_modes_are_the_archives_whatever_the_umask_and_never_set_through_a_link(tmp_path: Path) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, mode, target in [("f", tarfile.REGTYPE, 0o640, ""), ("l", tarfile.SYMTYPE, 0o777, "f"),
                                         ("h", tarfile.LNKTYPE, 0o755, "l")]:  # h: a hardlink to the symlink
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.linkname = kind, mode, target
            info.uid, info.gid = os.getuid(), os.getgid()
            info.size = 4 if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(b"data") if kind == tarfile.REGTYPE else None)
    blob = gzip.compress(raw.getvalue(), mtime=0)
    old = os.umask(0o077)
    try:
        apply(tmp_path, blob)
    finally:
        os.umask(old)
    assert (tmp_path / "f").lstat().st_mode & 0o7777 == 0o640  # not narrowed by the umask, not widened by a link
    assert (tmp_path / "f").read_bytes() == b"data" and os.readlink(tmp_path / "l") == "f"
    assert (tmp_path / "h").lstat().st_ino == (tmp_path / "l").lstat().st_ino
