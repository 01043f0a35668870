"""A tar stream parsed as it arrives: pushed bytes in, entries and their data out (no I/O).

Each 512-byte header is read by the standard library (tarfile.TarInfo.frombuf); a chain of extended headers (PAX
`x`, GNU long names) is buffered whole and handed to tarfile, which merges it into the entry that follows. Regular
file data is passed on in the pieces it arrives in, never buffered. Go's reader, which containerd uses, differs from
tarfile in two places that matter here, and this parser follows Go: a PAX global header (`g`) applies to no other
entry, and an extended header larger than 1 MiB is an error.
"""

from __future__ import annotations

import io
import tarfile
from typing import Protocol

BLOCK = tarfile.BLOCKSIZE
MAX_SPECIAL_SIZE = 1 << 20  # Go's archive/tar limit on PAX and GNU long-name data
_EXTENDED = (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
_ZERO_BLOCK = bytes(BLOCK)


class TarFormatError(ValueError):
    """The stream is not a tar archive this parser reads (a bad header, a cut-off entry, sparse files)."""


class TarSink(Protocol):
    def begin(self, info: tarfile.TarInfo) -> None: ...
    def data(self, piece: memoryview) -> None: ...
    def end(self) -> None: ...


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _carries_data(info: tarfile.TarInfo) -> bool:
    """Whether data blocks follow the header: as both Go's and Python's readers decide it."""
    return info.isreg() or info.type not in tarfile.SUPPORTED_TYPES


class TarStream:
    def __init__(self, sink: TarSink) -> None:
        self._sink = sink
        self._rest = b""  # bytes not yet consumed (less than a header, or part of an extended header's data)
        self._chain = bytearray()  # extended headers (and their data) waiting for the entry they describe
        self._need_extended = 0  # bytes of the current extended header's data still to collect into the chain
        self._data_left = 0  # the current entry's data bytes still to pass on
        self._skip = 0  # bytes to drop (padding, or data nobody reads)
        self._in_entry = False
        self.ended = False  # the end-of-archive block was read

    def feed(self, data: bytes) -> None:
        if self.ended:
            return  # what follows the end block is hashed by the caller, and otherwise ignored, as containerd does
        buf = self._rest + data if self._rest else data
        self._rest = b""
        view = memoryview(buf)
        pos, end = 0, len(buf)
        while pos < end and not self.ended:
            if self._data_left:
                n = min(self._data_left, end - pos)
                self._sink.data(view[pos:pos + n])
                self._data_left -= n
                pos += n
                if not self._data_left:
                    self._end_entry()
                continue
            if self._skip:
                n = min(self._skip, end - pos)
                self._skip -= n
                pos += n
                continue
            if self._need_extended:
                n = min(self._need_extended, end - pos)
                self._chain += view[pos:pos + n]
                self._need_extended -= n
                pos += n
                continue
            if end - pos < BLOCK:
                break
            self._header(bytes(view[pos:pos + BLOCK]))
            pos += BLOCK
        if pos < end and not self.ended:
            self._rest = bytes(view[pos:end])

    def _end_entry(self) -> None:
        self._in_entry = False
        self._sink.end()

    def _header(self, block: bytes) -> None:
        if block == _ZERO_BLOCK:
            if self._chain:
                raise TarFormatError("the archive ends between an extended header and its entry")
            self.ended = True
            return
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as err:
            raise TarFormatError(f"bad tar header: {err}") from None
        if info.type in _EXTENDED:
            if info.size > MAX_SPECIAL_SIZE:
                raise TarFormatError(f"an extended tar header of {info.size} bytes (over 1 MiB)")
            self._chain += block
            self._need_extended = _padded(info.size)
            return
        if info.type == tarfile.GNUTYPE_SPARSE:
            raise TarFormatError(f"{info.name}: GNU sparse files are not supported by the streaming applier")
        if info.type == tarfile.XGLTYPE:
            if self._chain:
                raise TarFormatError("a PAX global header inside another entry's extended headers")
            if info.size > MAX_SPECIAL_SIZE:
                raise TarFormatError(f"a PAX global header of {info.size} bytes (over 1 MiB)")
            self._skip = _padded(info.size)
            self._sink.begin(info)  # named like an entry, so it is handled like one (containerd removes its path)
            self._sink.end()
            return
        if self._chain:
            info = self._merge_chain(block)
        size = info.size if _carries_data(info) else 0
        self._in_entry = True
        self._sink.begin(info)
        self._data_left = size
        self._skip = _padded(size) - size
        if not size:
            self._end_entry()

    def _merge_chain(self, block: bytes) -> tarfile.TarInfo:
        chain = bytes(self._chain) + block
        self._chain.clear()
        try:
            with tarfile.open(fileobj=io.BytesIO(chain), mode="r:", encoding="utf-8",
                              errors="surrogateescape") as archive:
                info = archive.next()
        except tarfile.TarError as err:
            raise TarFormatError(f"bad extended tar header: {err}") from None
        if info is None:
            raise TarFormatError("an extended tar header without its entry")
        if info.sparse is not None or any(key.startswith("GNU.sparse.") for key in info.pax_headers):
            raise TarFormatError(f"{info.name}: sparse files are not supported by the streaming applier")
        return info

    def finish(self) -> None:
        """TarFormatError when the stream stops inside an entry (Go's reader: unexpected EOF)."""
        if self.ended:
            return
        if self._rest or self._chain or self._need_extended or self._data_left or self._skip or self._in_entry:
            raise TarFormatError("the tar stream is cut off inside an entry")
