"""Layer blob decompression on a stream, chosen the way containerd's Diff.Apply chooses it.

containerd (images.DiffCompression, diff/stream.go) reads an OCI `…tar` layer as it is, refuses media types it does
not know, and for the gzip, zstd and Docker types sniffs the first bytes (compression.DecompressStream): gzip and
zstd by their magic numbers, anything else as plain tar. gzip is multi-member like Go's reader, and inflated by
ISA-L (python-isal), which takes about half the CPU of zlib's inflate: on a small host the pull is CPU-bound. zstd
needs a library that is not installed here, so zstd layers are refused with a sentence (the caller falls back to
Diff.Apply).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

from isal import isal_zlib

from socirun.oci import DOCKER_LAYER_FOREIGN, DOCKER_LAYER_GZIP, OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_ZSTD

GZIP_MAGIC = b"\x1f\x8b\x08"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
OUTPUT_PIECE = 4 << 20  # decompressed bytes handed on at a time: a highly compressible chunk stays bounded in memory
# Compressed bytes inflated at a time. The inflater copies the input it has not consumed yet (unconsumed_tail) on
# every call that fills OUTPUT_PIECE: fed a whole 8 MiB chunk it copied ~1.5 times the chunk and held the copies,
# per layer being unpacked; fed 1 MiB at a time, each copy is at most that.
INPUT_PIECE = 1 << 20
# Header flags (RFC 1952, 2.3.1) and Go's limit on a header's name and comment (its reader's 512-byte buffer).
_FHCRC, _FEXTRA, _FNAME, _FCOMMENT = 0x02, 0x04, 0x08, 0x10
MAX_HEADER_STRING = 512
# isal's stubs declare its error as an instance; it is the exception class isal raises for bad data.
_IsalError = cast("type[Exception]", isal_zlib.error)

_OCI_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"
_DOCKER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
_DOCKER_FOREIGN_TAR = "application/vnd.docker.image.rootfs.foreign.diff.tar"
# Media types read as they are (no sniffing), and those whose compression is sniffed.
_RAW = {OCI_LAYER_TAR, _OCI_NONDIST}
_SNIFFED = {OCI_LAYER_GZIP, OCI_LAYER_ZSTD, _OCI_NONDIST + "+gzip", _OCI_NONDIST + "+zstd", DOCKER_LAYER_GZIP,
            DOCKER_LAYER_FOREIGN, _DOCKER_TAR, _DOCKER_FOREIGN_TAR}


class UnsupportedLayerError(Exception):
    """A layer the streaming applier does not unpack (its media type or compression); Diff.Apply may."""


def check_media_type(media_type: str) -> None:
    """UnsupportedLayerError unless this media type is one containerd's applier reads and this one can too."""
    if media_type.endswith("+zstd"):
        raise UnsupportedLayerError(
            f"layers of type {media_type} are zstd-compressed and no zstd library is installed for socirun; "
            "containerd's Diff.Apply unpacks them"
        )
    if media_type not in _RAW and media_type not in _SNIFFED:
        raise UnsupportedLayerError(f"the streaming applier does not know the layer media type {media_type!r}")


class GzipFormatError(ValueError):
    """The bytes are not a (complete, intact) gzip stream."""


def gzip_header_size(head: bytes) -> int | None:
    """The length of the gzip member header that `head` starts with, None while `head` holds only part of it;
    GzipFormatError when `head` cannot start a member (Go's ErrHeader: no gzip magic, or a name or comment longer
    than 511 bytes). The header's checksum and the rest are checked by the inflater."""
    magic = min(len(head), len(GZIP_MAGIC))
    if head[:magic] != GZIP_MAGIC[:magic]:
        raise GzipFormatError("invalid gzip header: another member or the end of the stream was expected")
    if len(head) < 10:
        return None
    flags, pos = head[3], 10
    if flags & _FEXTRA:
        if len(head) < pos + 2:
            return None
        pos += 2 + int.from_bytes(head[pos:pos + 2], "little")
    for flag, what in ((_FNAME, "name"), (_FCOMMENT, "comment")):
        if flags & flag:
            if len(head) < pos:
                return None
            end = head.find(b"\0", pos, pos + MAX_HEADER_STRING)
            if end < 0:
                if len(head) >= pos + MAX_HEADER_STRING:
                    raise GzipFormatError(
                        f"invalid gzip header: its {what} is longer than {MAX_HEADER_STRING - 1} bytes")
                return None
            pos = end + 1
    if flags & _FHCRC:
        pos += 2
    return pos if len(head) >= pos else None


class Decompressor:
    """Compressed bytes in, in order; the uncompressed stream out, in bounded pieces."""

    def __init__(self, media_type: str) -> None:
        check_media_type(media_type)
        self._sniff = media_type in _SNIFFED
        self._head = b""  # the first bytes while there are too few to sniff
        self._gzip: bool | None = None if self._sniff else False
        self._inflate: isal_zlib.Decompress | None = None
        self._member_done = False  # the last gzip member ended; what follows must be another member
        self._member_head = b""  # the start of the next member while its header is incomplete

    def _decide(self, head: bytes) -> None:
        if head.startswith(GZIP_MAGIC):
            self._gzip = True
        elif head.startswith(ZSTD_MAGIC):
            raise UnsupportedLayerError(
                "the layer is zstd-compressed and no zstd library is installed for socirun; "
                "containerd's Diff.Apply unpacks it"
            )
        else:
            self._gzip = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self._gzip is None:
            self._head += data
            if len(self._head) < len(ZSTD_MAGIC):
                return
            data, self._head = self._head, b""
            self._decide(data)
        if not self._gzip:
            if data:
                yield data
            return
        yield from self._inflate_all(data)

    def _inflate_all(self, data: bytes) -> Iterator[bytes]:
        view = memoryview(data)
        for start in range(0, len(view), INPUT_PIECE):
            yield from self._inflate_piece(view[start:start + INPUT_PIECE])

    def _inflate_piece(self, data: bytes | memoryview) -> Iterator[bytes]:
        try:
            while data:
                if self._inflate is None or self._member_done:
                    # isal mis-parses a header that arrives in pieces when it has a header CRC or several optional
                    # fields (python-isal 1.7.2): a new member is handed over only once its header is whole.
                    head = self._member_head + data
                    if gzip_header_size(head) is None:
                        self._member_head = head
                        return
                    data, self._member_head = head, b""
                    self._inflate = isal_zlib.decompressobj(wbits=31)
                    self._member_done = False
                out = self._inflate.decompress(data, OUTPUT_PIECE)
                if out:
                    yield out
                while self._inflate.unconsumed_tail:
                    out = self._inflate.decompress(self._inflate.unconsumed_tail, OUTPUT_PIECE)
                    if out:
                        yield out
                if self._inflate.eof:
                    self._member_done = True
                    data = self._inflate.unused_data  # another gzip member follows (Go's reader is multistream)
                else:
                    data = b""
        except _IsalError as err:
            raise GzipFormatError(f"invalid gzip data: {err}") from None

    def finish(self) -> Iterator[bytes]:
        """The rest; ValueError (GzipFormatError for gzip) when the compressed stream is cut short."""
        if self._gzip is None:
            head, self._head = self._head, b""
            self._decide(head)
            yield from self.feed(head)
        if self._gzip:
            if self._inflate is None and not self._member_head:
                raise GzipFormatError("the gzip stream is empty")
            if self._inflate is None or self._member_head:
                raise GzipFormatError("the gzip stream ends inside a member's header")
            try:
                rest = self._inflate.flush()
            except _IsalError as err:
                raise GzipFormatError(f"invalid gzip data: {err}") from None
            if rest:
                yield rest
            if not self._inflate.eof:
                raise GzipFormatError("the gzip stream ends before its last member does")
