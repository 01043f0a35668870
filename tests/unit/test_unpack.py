"""socirun/unpack without containerd: path safety, digest checks, mount shapes, formats it refuses."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest

from socirun.containerd.types import Mount
from socirun.errors import DigestMismatchError
from socirun.oci import OCI_LAYER_GZIP, OCI_LAYER_ZSTD, Descriptor, sha256_digest
from socirun.unpack.apply import Applied, LayerApplier, LayerUnpackError
from socirun.unpack.decompress import UnsupportedLayerError
from socirun.unpack.fs import LayerFormatError, pax_time_ns, whiteout_target
from socirun.unpack.rootpath import root_path
from socirun.unpack.target import ApplyTarget, UnsupportedMountsError, apply_target, bind_to_overlay

ME = (os.getuid(), os.getgid())


def layer(*entries: tuple[str, bytes, bytes | str]) -> tuple[bytes, bytes]:
    """(gzip blob, tar) of entries (name, type, data for files | link target)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, body in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.uid, info.gid = ME
            info.mtime = 1_600_000_000
            if isinstance(body, str):
                info.linkname = body
                tar.addfile(info)
            else:
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
    return gzip.compress(raw.getvalue(), mtime=0), raw.getvalue()


def apply(root: Path, blob: bytes, diff_id: str = "", chunk: int = 100) -> Applied:
    applier = LayerApplier(ApplyTarget(root, overlay=False), Descriptor(OCI_LAYER_GZIP, sha256_digest(blob), len(blob)))
    for start in range(0, len(blob), chunk):
        applier.feed(blob[start:start + chunk])
    return applier.finish(diff_id)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "outside").mkdir()
    (tmp_path / "a" / "b" / "root").mkdir(parents=True)
    return tmp_path / "a" / "b" / "root"


def test_dotdot_names_stay_inside_the_root(root: Path, tmp_path: Path) -> None:
    blob, _ = layer(("../../../x", tarfile.REGTYPE, b"x"), ("../y/../../z", tarfile.REGTYPE, b"z"))
    apply(root, blob)
    assert (root / "x").read_bytes() == b"x" and (root / "z").read_bytes() == b"z"
    assert not (tmp_path / "x").exists() and not (tmp_path / "a" / "x").exists() and not (tmp_path / "z").exists()


def test_a_layer_symlink_is_followed_only_inside_the_root(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    blob, _ = layer(
        ("abs", tarfile.SYMTYPE, str(outside)),  # an absolute link to a real directory outside
        ("abs/pwn", tarfile.REGTYPE, b"1"),
        ("up", tarfile.SYMTYPE, "../../../../.."),  # a relative link climbing out
        ("up/pwn2", tarfile.REGTYPE, b"2"),
        ("abs", tarfile.REGTYPE, b"replaced"),  # an entry on the link itself replaces the link, never its target
    )
    apply(root, blob)
    assert list(outside.iterdir()) == []
    assert (root / str(outside).lstrip("/") / "pwn").read_bytes() == b"1"
    assert (root / "pwn2").read_bytes() == b"2"
    assert (root / "abs").read_bytes() == b"replaced" and not (root / "abs").is_symlink()


def test_a_hardlink_cannot_reach_outside(root: Path, tmp_path: Path) -> None:
    secret = tmp_path / "outside" / "secret"
    secret.write_bytes(b"secret")
    blob, _ = layer(("steal", tarfile.LNKTYPE, "../../../outside/secret"))
    with pytest.raises(LayerUnpackError, match="could not be unpacked"):
        apply(root, blob)
    assert secret.stat().st_nlink == 1 and not (root / "steal").exists()


def test_root_path_resolves_links_inside_the_root(root: Path) -> None:
    (root / "etc").mkdir()
    os.symlink("/etc", root / "abs")
    os.symlink("../../..", root / "etc" / "up")
    assert root_path(str(root), "abs/passwd") == f"{root}/etc/passwd"
    assert root_path(str(root), "etc/up/etc/up/x") == f"{root}/x"
    assert root_path(str(root), "../../..") == str(root)


def test_wrong_diff_id_is_detected_and_names_the_blob(root: Path) -> None:
    blob, tar = layer(("f", tarfile.REGTYPE, b"data"))
    assert apply(root.parent, blob, sha256_digest(tar)).diff_id == sha256_digest(tar)
    wrong = sha256_digest(b"other")
    with pytest.raises(DigestMismatchError) as caught:
        apply(root, blob, wrong)
    assert sha256_digest(blob) in str(caught.value) and wrong in str(caught.value)


def test_a_corrupt_blob_is_detected(root: Path) -> None:
    blob, tar = layer(("f", tarfile.REGTYPE, b"data"))
    applier = LayerApplier(ApplyTarget(root, overlay=False),
                           Descriptor(OCI_LAYER_GZIP, sha256_digest(blob + b"!"), len(blob)))
    applier.feed(blob)
    with pytest.raises(DigestMismatchError, match="corrupt"):
        applier.finish(sha256_digest(tar))


def test_a_cut_off_stream_fails(root: Path) -> None:
    blob, _ = layer(("f", tarfile.REGTYPE, os.urandom(5000)))
    applier = LayerApplier(ApplyTarget(root, overlay=False), Descriptor(OCI_LAYER_GZIP, sha256_digest(blob), len(blob)))
    applier.feed(blob[: len(blob) // 2])
    with pytest.raises(LayerUnpackError):
        applier.finish()


def test_trailing_bytes_after_the_archive_count_in_the_diff_id(root: Path) -> None:
    _, tar = layer(("f", tarfile.REGTYPE, b"data"))
    tar += b"\0" * 4096 + b"trailer"
    blob = gzip.compress(tar, mtime=0)
    assert apply(root, blob).diff_id == sha256_digest(tar)


def test_zstd_layers_are_refused_with_a_sentence(root: Path) -> None:
    with pytest.raises(UnsupportedLayerError, match="zstd"):
        LayerApplier(ApplyTarget(root, overlay=False), Descriptor(OCI_LAYER_ZSTD, sha256_digest(b""), 1))
    with pytest.raises(UnsupportedLayerError, match="media type"):
        LayerApplier(ApplyTarget(root, overlay=False), Descriptor("application/x-foo", sha256_digest(b""), 1))


def test_apply_target_takes_an_upperdir_or_a_bind_directory_only() -> None:
    overlay = Mount("overlay", "overlay", options=("index=off", "workdir=/s/2/work", "upperdir=/s/2/fs",
                                                   "lowerdir=/s/1/fs:/s/0/fs"))
    assert apply_target([overlay]) == ApplyTarget(Path("/s/2/fs"), True, (Path("/s/1/fs"), Path("/s/0/fs")))
    assert apply_target([Mount("bind", "/s/0/fs", options=("rw", "rbind"))]) == ApplyTarget(Path("/s/0/fs"), False)
    for refused in ([Mount("overlay", "overlay", options=("lowerdir=/a:/b",))],
                    [Mount("bind", "/s/0/fs", options=("ro", "rbind"))],
                    [Mount("fuse.soci", "x")], [], [overlay, overlay]):
        with pytest.raises(UnsupportedMountsError):
            apply_target(refused)


def test_whiteout_names_may_not_leave_their_directory() -> None:
    assert whiteout_target("/r/d/.wh.f") == "/r/d/f"
    assert whiteout_target("/r/d/.wh..wh..opq") is None and whiteout_target("/r/d/f") is None
    for bad in ("/r/d/.wh..", "/r/d/.wh."):
        with pytest.raises(LayerFormatError, match="invalid whiteout"):
            whiteout_target(bad)


def test_pax_times_keep_nanoseconds_like_go() -> None:
    assert pax_time_ns("1700000000.123456789") == 1_700_000_000_123_456_789
    assert pax_time_ns("1.5") == 1_500_000_000
    assert pax_time_ns("-1.5") == -1_500_000_000
    assert pax_time_ns("2.1234567899") == 2_123_456_789  # truncated, not rounded
    with pytest.raises(LayerFormatError):
        pax_time_ns("1.5e3")


def test_a_parentless_snapshot_above_others_is_unpacked_as_an_upperdir() -> None:
    # overlayfs hands a snapshot prepared without a parent one bind mount of its directory; above other layers
    # its whiteouts must become overlay's own, as in containerd 2.x's unpacker (bindToOverlay).
    bind = Mount("bind", "/snap/7/fs", options=("rw", "rbind"))
    (overlay,) = bind_to_overlay([bind])
    assert (overlay.type, overlay.source, overlay.options) == ("overlay", "overlay", ("rw", "upperdir=/snap/7/fs"))
    assert apply_target([overlay]) == ApplyTarget(Path("/snap/7/fs"), overlay=True, parents=())
    upper = Mount("overlay", "overlay", options=("upperdir=/u", "lowerdir=/l"))
    assert bind_to_overlay([upper]) == [upper]
    assert bind_to_overlay([bind, bind]) == [bind, bind]
