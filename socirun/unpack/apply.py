"""LayerApplier: one layer blob, fed as its compressed bytes arrive, unpacked into a snapshot's directory.

    applier = LayerApplier(apply_target(mounts), layer)        # layer: the manifest's Descriptor
    for chunk in chunks: applier.feed(chunk)                   # any sizes, in order
    applied = applier.finish(diff_id)                          # raises when a digest does not match

The compressed bytes are hashed as they come (the blob's digest) and so is everything they decompress to (the
diffID: like containerd, the whole uncompressed stream, trailing bytes after the tar's end included). `finish`
raises DigestMismatchError when either differs from what the manifest and the config say; the directory then holds
a partial or wrong layer and the caller must remove the snapshot instead of committing it. `feed` and `finish` do
blocking file I/O: call them from a worker thread when an event loop must stay responsive.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from socirun.errors import DigestMismatchError, PullError
from socirun.oci import Descriptor
from socirun.unpack.decompress import Decompressor
from socirun.unpack.fs import LayerFormatError, LayerWriter
from socirun.unpack.rootpath import TooManyLinksError
from socirun.unpack.target import ApplyTarget
from socirun.unpack.tarstream import TarFormatError, TarStream


class LayerUnpackError(PullError):
    """The layer could not be unpacked (a malformed archive, a filesystem error); nothing may be committed."""


@dataclass(frozen=True)
class Applied:
    digest: str  # sha256 of the compressed bytes fed: the blob's digest
    diff_id: str  # sha256 of the uncompressed stream: the layer's diffID
    compressed_size: int
    size: int  # uncompressed bytes (containerd's Diff.Apply reports the same as `applied.size`)
    entries: int  # tar entries written (whiteouts and skipped entries not counted)


class LayerApplier:
    def __init__(self, target: ApplyTarget, layer: Descriptor) -> None:
        self.target = target
        self.layer = layer
        self._decompress = Decompressor(layer.media_type)
        self._compressed = hashlib.sha256()
        self._uncompressed = hashlib.sha256()
        self._compressed_size = 0
        self._size = 0
        self._writer = LayerWriter(target)
        self._tar = TarStream(self._writer)
        self._failed = False

    def _fail(self, err: Exception) -> LayerUnpackError:
        self._failed = True
        self._writer.close()
        return LayerUnpackError(f"layer {self.layer.digest} could not be unpacked into {self.target.path}: {err}")

    def _push(self, plain: bytes) -> None:
        self._uncompressed.update(plain)
        self._size += len(plain)
        self._tar.feed(plain)

    def feed(self, data: bytes) -> None:
        """The next compressed bytes of the blob."""
        if self._failed:
            raise LayerUnpackError(f"layer {self.layer.digest}: the applier already failed")
        self._compressed.update(data)
        self._compressed_size += len(data)
        try:
            for plain in self._decompress.feed(data):
                self._push(plain)
        except (OSError, ValueError, TooManyLinksError, LayerFormatError, TarFormatError) as err:
            raise self._fail(err) from err

    def finish(self, diff_id: str = "") -> Applied:
        """End of the blob: finish the archive, set directory times, check both digests (when `diff_id` is
        given, against it; the blob's digest always against the descriptor's)."""
        if self._failed:
            raise LayerUnpackError(f"layer {self.layer.digest}: the applier already failed")
        try:
            for plain in self._decompress.finish():
                self._push(plain)
            self._tar.finish()
            self._writer.finish()
        except (OSError, ValueError) as err:  # the decompressor's GzipFormatError is a ValueError
            raise self._fail(err) from err
        finally:
            self._writer.close()
        applied = Applied(digest="sha256:" + self._compressed.hexdigest(),
                          diff_id="sha256:" + self._uncompressed.hexdigest(),
                          compressed_size=self._compressed_size, size=self._size, entries=self._writer.entries)
        if applied.digest != self.layer.digest or applied.compressed_size != self.layer.size:
            self._failed = True
            raise DigestMismatchError(
                f"layer {self.layer.digest}: the {applied.compressed_size} bytes received hash to {applied.digest} "
                f"(the manifest says {self.layer.size} bytes); the blob is corrupt and its layer is not committed"
            )
        if diff_id and applied.diff_id != diff_id:
            self._failed = True
            raise DigestMismatchError(
                f"layer {self.layer.digest} unpacked to {applied.diff_id}, but the image config says {diff_id}; "
                "the image is inconsistent and the layer is not committed"
            )
        return applied

    def close(self) -> None:
        """Release an open file after an error or a cancellation (finish does this itself)."""
        self._writer.close()
