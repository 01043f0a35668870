"""The SOCI emulator's snapshot store: containerd's overlayfs snapshotter in miniature (directories
`<root>/snapshotter/snapshots/<id>/{fs,work}`, bind mounts for parentless snapshots, overlay mounts above
parents), with its metadata in one JSON file rewritten atomically on every change."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Kind = Literal["active", "committed", "view"]


class StoreError(Exception):
    code = "unknown"


class NotFound(StoreError):
    code = "not_found"


class Exists(StoreError):
    code = "already_exists"


class Precondition(StoreError):
    code = "failed_precondition"


@dataclass
class Snap:
    key: str
    id: int
    kind: Kind
    parent: str
    labels: dict[str, str] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)


@dataclass(frozen=True)
class MountSpec:
    type: str
    source: str
    options: tuple[str, ...]


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.snapshots_dir = root / "snapshotter" / "snapshots"
        self.snapshots_dir.mkdir(parents=True, exist_ok=True)
        self._meta_path = root / "metadata.json"
        self._lock = threading.RLock()
        self._snaps: dict[str, Snap] = {}
        self._next_id = 1
        self._load()

    # -- persistence ---------------------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            doc = json.loads(self._meta_path.read_text())
        except (OSError, ValueError):
            return
        self._next_id = int(doc.get("next_id", 1))
        for raw in doc.get("snapshots", []):
            snap = Snap(**raw)
            self._snaps[snap.key] = snap

    def _save(self) -> None:
        doc = {"next_id": self._next_id, "snapshots": [asdict(s) for s in self._snaps.values()]}
        tmp = self._meta_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self._meta_path)

    # -- paths ---------------------------------------------------------------------------------------------

    def dir_of(self, snap: Snap) -> Path:
        return self.snapshots_dir / str(snap.id)

    def fs_of(self, snap: Snap) -> Path:
        return self.dir_of(snap) / "fs"

    # -- operations ----------------------------------------------------------------------------------------

    def get(self, key: str) -> Snap:
        with self._lock:
            snap = self._snaps.get(key)
            if snap is None:
                raise NotFound(f"snapshot {key} does not exist: not found")
            return snap

    def find(self, key: str) -> Snap | None:
        with self._lock:
            return self._snaps.get(key)

    def all(self) -> list[Snap]:
        with self._lock:
            return list(self._snaps.values())

    def create(self, key: str, parent: str, kind: Kind, labels: dict[str, str]) -> Snap:
        with self._lock:
            if key in self._snaps:
                raise Exists(f"snapshot {key}: already exists")
            if parent:
                p = self.get(parent)
                if p.kind != "committed":
                    raise Precondition(f"parent {parent} is not committed: failed precondition")
            snap = Snap(key=key, id=self._next_id, kind=kind, parent=parent, labels=dict(labels))
            self._next_id += 1
            (self.dir_of(snap) / "fs").mkdir(parents=True, exist_ok=True)
            if kind == "active":
                (self.dir_of(snap) / "work").mkdir(exist_ok=True)
            self._snaps[key] = snap
            self._save()
            return snap

    def commit(self, name: str, key: str, labels: dict[str, str]) -> Snap:
        with self._lock:
            if name in self._snaps:
                raise Exists(f"snapshot {name}: already exists")
            snap = self.get(key)
            if snap.kind != "active":
                raise Precondition(f"snapshot {key} is not active: failed precondition")
            del self._snaps[key]
            snap.key = name
            snap.kind = "committed"
            snap.labels = dict(labels) if labels else snap.labels
            snap.updated = time.time()
            self._snaps[name] = snap
            shutil.rmtree(self.dir_of(snap) / "work", ignore_errors=True)
            self._save()
            return snap

    def remove(self, key: str) -> Snap:
        with self._lock:
            snap = self.get(key)
            if any(other.parent == key for other in self._snaps.values()):
                raise Precondition(f"cannot remove snapshot {key} with children: failed precondition")
            del self._snaps[key]
            self._save()
        shutil.rmtree(self.dir_of(snap), ignore_errors=True)
        return snap

    def update_labels(self, key: str, labels: dict[str, str], paths: list[str]) -> Snap:
        with self._lock:
            snap = self.get(key)
            if not paths:
                snap.labels = dict(labels)
            for path in paths:
                if path == "labels":
                    snap.labels = dict(labels)
                elif path.startswith("labels."):
                    name = path[len("labels."):]
                    if name in labels:
                        snap.labels[name] = labels[name]
                    else:
                        snap.labels.pop(name, None)
            snap.updated = time.time()
            self._save()
            return snap

    def chain(self, key: str) -> list[Snap]:
        """`key`'s committed ancestors, nearest first."""
        out: list[Snap] = []
        parent = self.get(key).parent
        while parent:
            p = self.get(parent)
            out.append(p)
            parent = p.parent
        return out

    def mounts(self, key: str) -> list[MountSpec]:
        snap = self.get(key)
        lowers = [str(self.fs_of(p)) for p in self.chain(key)]
        if snap.kind == "view":
            if not lowers:
                return [MountSpec("bind", str(self.fs_of(snap)), ("ro", "rbind"))]
            if len(lowers) == 1:
                return [MountSpec("bind", lowers[0], ("ro", "rbind"))]
            return [MountSpec("overlay", "overlay", ("index=off", "lowerdir=" + ":".join(lowers)))]
        if not lowers:
            return [MountSpec("bind", str(self.fs_of(snap)), ("rw", "rbind"))]
        return [MountSpec("overlay", "overlay", (
            "index=off",
            f"workdir={self.dir_of(snap) / 'work'}",
            f"upperdir={self.fs_of(snap)}",
            "lowerdir=" + ":".join(lowers),
        ))]

    def usage(self, key: str) -> tuple[int, int]:
        snap = self.get(key)
        size = inodes = 0
        for dirpath, dirnames, filenames in os.walk(self.fs_of(snap)):
            inodes += len(dirnames) + len(filenames)
            for name in filenames:
                with contextlib.suppress(OSError):
                    size += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
        return size, inodes


def info_json(snap: Snap) -> dict[str, Any]:
    return asdict(snap)
