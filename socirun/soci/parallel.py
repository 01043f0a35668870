"""Following SOCI's parallel pull mode ([pull_modes.parallel_pull_unpack]), where SOCI itself downloads and
unpacks every layer during the Prepare calls, so socirun's own downloader sees no byte.

What is observable, as soci-snapshotter v0.16.1 runs it (checked on this project's sandbox):
- the download files: SOCI writes each layer's blob to `<root>/unpack/<random>/<digest>` (ranged chunks written
  in place, over several connections) and, with `discard_unpacked_layers`, removes it once unpacked. The
  file's *allocated* bytes (st_blocks × 512) are what has arrived; its apparent size can run ahead of that
  while chunks land out of order;
- its log lines: "fetching artifact from remote" (digest) when a download starts, "Artifact successfully fetched
  from remote" (digest, size) when it is complete, "Layer successfully unpacked" (digest) after the unpack.
Containerd sees no ingest (`ctr content active` stays empty), and SOCI's metrics have no per-layer byte count
for this mode. `read_download_files` reads a directory; `parallel_event` is pure; `ParallelWatcher` turns
both into events.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from socirun import events as ev
from socirun.soci import constants as c

UNPACK_DIR = "unpack"
SOURCE = "download files: the blobs SOCI is writing under {root}/unpack (allocated bytes, per layer)"


def read_download_files(root: str, digests: Mapping[str, int]) -> dict[str, int]:
    """digest → bytes of its blob that SOCI has written so far, for the wanted `digests` (digest → size) whose
    download file exists under `<root>/unpack`; capped at the layer's size."""
    found: dict[str, int] = {}
    base = Path(root) / UNPACK_DIR
    try:
        dirs = list(os.scandir(base))
    except OSError:
        return found
    for entry in dirs:
        if not entry.is_dir(follow_symlinks=False):
            continue
        try:
            files = list(os.scandir(entry.path))
        except OSError:
            continue
        for file in files:
            size = digests.get(file.name)
            if size is None or not file.is_file(follow_symlinks=False):
                continue
            try:
                allocated = file.stat(follow_symlinks=False).st_blocks * 512
            except OSError:
                continue
            found[file.name] = max(found.get(file.name, 0), min(allocated, size))
    return found


@dataclass(frozen=True)
class ParallelLogEvent:
    kind: str  # "fetching" | "fetched" | "unpacked"
    digest: str


_PARALLEL_MESSAGES = {
    c.LOG_FETCH_ARTIFACT: "fetching",
    c.LOG_ARTIFACT_FETCHED: "fetched",
    c.LOG_LAYER_UNPACKED: "unpacked",
}


def parallel_event(msg: str, fields: Mapping[str, Any]) -> ParallelLogEvent | None:
    """What one of SOCI's log lines (its `msg` and fields, as socirun.soci.observer.parse_log_line reads them
    from a file or journald) says about a parallel download, or None."""
    kind = _PARALLEL_MESSAGES.get(msg)
    digest = fields.get("digest")
    if kind is None or not isinstance(digest, str) or not digest:
        return None
    return ParallelLogEvent(kind, digest)


@dataclass
class ParallelWatcher:
    """Turns polls of the download files and SOCI's log lines into events for the layers of one pull
    (digest → compressed size). Each layer's byte count only moves forward, and ends at its size once SOCI
    logs it fetched."""

    emit: ev.Emit
    root: str
    sizes: dict[str, int] = field(default_factory=dict)
    downloaded: dict[str, int] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)

    def poll(self) -> None:
        if not self.sizes:
            return
        for digest, have in read_download_files(self.root, self.sizes).items():
            self._bytes(digest, have)

    def on_log(self, msg: str, fields: Mapping[str, Any]) -> None:
        event = parallel_event(msg, fields)
        if event is None or event.digest not in self.sizes:
            return
        if event.kind == "fetching":
            self._state(event.digest, "downloading", "SOCI downloads it (parallel pull)")
        elif event.kind == "fetched":
            self._bytes(event.digest, self.sizes[event.digest])
            self._state(event.digest, "downloaded", "SOCI downloaded it")
        else:
            self._bytes(event.digest, self.sizes[event.digest])
            self._state(event.digest, "unpacking", "SOCI unpacked it; committing")

    def _bytes(self, digest: str, have: int) -> None:
        if have > self.downloaded.get(digest, 0):
            self.downloaded[digest] = have
            self.emit(ev.LayerProgress(digest=digest, downloaded=have, total=self.sizes[digest]))

    def _state(self, digest: str, state: ev.LayerStateName, detail: str) -> None:
        order = ("downloading", "downloaded", "unpacking")
        before = self.states.get(digest)
        if before is not None and order.index(before) >= order.index(state):
            return
        self.states[digest] = state
        self.emit(ev.LayerStateChanged(digest=digest, state=state, detail=detail))
