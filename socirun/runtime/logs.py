"""Container logs in docker's json-file format: one JSON object per line, `{"log": "...\\n", "stream": "stdout",
"time": "<RFC3339Nano UTC>"}`, in `<state_dir>/<id>-json.log` (docker's and nerdctl's name), rotated by size.

The writer is the -d reaper's (socirun/runtime/reaper.py): it splits what the container writes into lines, as
docker's log copier does (a line longer than PARTIAL_LINE_BYTES is cut into pieces without the newline), and
rotates `<id>-json.log` to `.1`, `.2`, … once it would pass `max_size`, keeping `max_file` files in all, so a
chatty container cannot fill the disk. The readers (`socirun logs`) read the rotated files oldest first.
Everything that decides (formatting, splitting, which files, tail and since) is a pure function; the file I/O is
the two small classes below.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from socirun.runtime.options import DEFAULT_LOG_MAX_FILE, DEFAULT_LOG_MAX_SIZE

# docker's copier (daemon/logger/copier.go) hands a line on in pieces once its buffer holds 16 KiB without a newline.
PARTIAL_LINE_BYTES = 16 * 1024


def log_path(state_dir: str, container_id: str) -> str:
    return os.path.join(state_dir, f"{container_id}-json.log")


def rfc3339nano(ns: int) -> str:
    """Go's time.RFC3339Nano in UTC: the fraction without trailing zeros (and without the dot when it is zero)."""
    seconds, frac = divmod(ns, 1_000_000_000)
    stamp = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{frac:09d}".rstrip("0")
    return f"{stamp}.{fraction}Z" if fraction else f"{stamp}Z"


def parse_rfc3339(text: str) -> float:
    """Epoch seconds of an RFC 3339 time (nanoseconds beyond microseconds are dropped)."""
    head, dot, rest = text.partition(".")
    if dot:
        digits = "".join(c for c in rest if c.isdigit())
        zone = rest[len(digits):]
        text = f"{head}.{digits[:6]}{zone}"
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def entry(line: bytes, stream: str, ns: int) -> bytes:
    """One json-file line (with its newline). Invalid UTF-8 becomes U+FFFD, as Go's encoding/json does."""
    return json.dumps({"log": line.decode("utf-8", "replace"), "stream": stream, "time": rfc3339nano(ns)},
                      ensure_ascii=False, separators=(",", ":")).encode() + b"\n"  # fmt: skip


def split_lines(pending: bytes, chunk: bytes) -> tuple[list[bytes], bytes]:
    """(the complete lines of pending + chunk, each with its newline, or cut at PARTIAL_LINE_BYTES; what remains)."""
    data = pending + chunk
    lines: list[bytes] = []
    start = 0
    while True:
        end = data.find(b"\n", start)
        if end < 0 or end - start >= PARTIAL_LINE_BYTES:
            if len(data) - start >= PARTIAL_LINE_BYTES:
                lines.append(data[start:start + PARTIAL_LINE_BYTES])
                start += PARTIAL_LINE_BYTES
                continue
            break
        lines.append(data[start:end + 1])
        start = end + 1
    return lines, data[start:]


def rotated_paths(path: str, max_file: int) -> list[str]:
    """Every file of one log, oldest first: `path.(max_file-1)` … `path.1`, then `path`."""
    return [f"{path}.{n}" for n in range(max_file - 1, 0, -1)] + [path]


def should_rotate(size: int, incoming: int, max_size: int) -> bool:
    """Whether the next entry goes to a fresh file (docker rotates before a write that would pass max-size)."""
    return max_size > 0 and size > 0 and size + incoming > max_size


class JsonFileWriter:
    """Appends entries to `path`, rotating by size; thread-safe (stdout and stderr are drained by two threads)."""

    def __init__(self, path: str, *, max_size: int = DEFAULT_LOG_MAX_SIZE,
                 max_file: int = DEFAULT_LOG_MAX_FILE) -> None:  # fmt: skip
        self.path = path
        self.max_size = max_size
        self.max_file = max(1, max_file)
        self._lock = threading.Lock()
        self._file: BinaryIO = open(path, "ab")  # noqa: SIM115 (closed by close())
        self._size = self._file.tell()

    def write(self, line: bytes, stream: str, ns: int | None = None) -> None:
        data = entry(line, stream, time_ns() if ns is None else ns)
        with self._lock:
            if should_rotate(self._size, len(data), self.max_size):
                self._rotate()
            self._file.write(data)
            self._file.flush()
            self._size += len(data)

    def _rotate(self) -> None:
        self._file.close()
        if self.max_file == 1:
            self._file = open(self.path, "wb")  # noqa: SIM115 (one file: start it again, as docker does)
        else:
            paths = rotated_paths(self.path, self.max_file)  # oldest first; the oldest is dropped
            for older, newer in itertools.pairwise(paths):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(newer, older)
            self._file = open(self.path, "ab")  # noqa: SIM115
        self._size = 0

    def close(self) -> None:
        with self._lock:
            self._file.close()


def time_ns() -> int:
    import time

    return time.time_ns()


class StreamLines:
    """What one stream brought so far that is not a whole line yet; `feed` and `flush` write whole entries."""

    def __init__(self, writer: JsonFileWriter, stream: str) -> None:
        self.writer = writer
        self.stream = stream
        self._pending = b""

    def feed(self, chunk: bytes) -> None:
        lines, self._pending = split_lines(self._pending, chunk)
        for line in lines:
            self.writer.write(line, self.stream)

    def flush(self) -> None:
        if self._pending:
            self.writer.write(self._pending, self.stream)
            self._pending = b""


# ---------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class LogEntry:
    log: str
    stream: str
    time: str

    @classmethod
    def parse(cls, line: bytes) -> LogEntry | None:
        try:
            data = json.loads(line)
            return cls(str(data["log"]), str(data.get("stream", "stdout")), str(data.get("time", "")))
        except (ValueError, KeyError, TypeError):
            return None  # a torn last line while the writer is mid-write, or not json-file at all

    def render(self, *, timestamps: bool) -> str:
        return f"{self.time} {self.log}" if timestamps else self.log


def select(entries: Iterable[LogEntry], *, tail: int | None, since: float | None,
           until: float | None = None) -> list[LogEntry]:  # fmt: skip
    """docker logs' filters: entries from `since` (epoch seconds) up to `until`, then the last `tail` of them."""
    chosen = [e for e in entries
              if (since is None or _when(e) >= since) and (until is None or _when(e) <= until)]  # fmt: skip
    if tail is not None:
        chosen = chosen[-tail:] if tail > 0 else []
    return chosen


def _when(e: LogEntry) -> float:
    try:
        return parse_rfc3339(e.time)
    except ValueError:
        return 0.0


def read_entries(path: str, max_file: int) -> Iterator[LogEntry]:
    """Every entry of the log at `path` and its rotated files, oldest first."""
    for p in rotated_paths(path, max(1, max_file)):
        try:
            with open(p, "rb") as f:
                for line in f:
                    found = LogEntry.parse(line)
                    if found is not None:
                        yield found
        except FileNotFoundError:
            continue


class Follower:
    """Reads what is appended to `path` after a point, across rotations (a rotated file is read to its end
    before the new one is opened)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: BinaryIO | None = None
        self._inode = 0
        self._partial = b""

    def start_at_end(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._open()
            assert self._file is not None
            self._file.seek(0, os.SEEK_END)

    def _open(self) -> None:
        self._file = open(self.path, "rb")  # noqa: SIM115 (closed by close() or on rotation)
        self._inode = os.fstat(self._file.fileno()).st_ino

    def read(self) -> list[LogEntry]:
        out: list[LogEntry] = []
        if self._file is None:
            try:
                self._open()
            except FileNotFoundError:
                return out
        assert self._file is not None
        out += self._drain()
        try:
            rotated = os.stat(self.path).st_ino != self._inode
        except FileNotFoundError:
            rotated = False
        if rotated:
            self._file.close()
            self._partial = b""
            self._open()
            out += self._drain()
        return out

    def _drain(self) -> list[LogEntry]:
        assert self._file is not None
        data = self._partial + self._file.read()
        *lines, self._partial = data.split(b"\n")
        return [e for e in (LogEntry.parse(line) for line in lines) if e is not None]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
