"""What the two SOCI benchmarks share: a sandbox on the real soci-snapshotter (built containerd 2.x, soci-
snapshotter-grpc, docker-registry), a throttling proxy in front of its registry, a cold store between runs
(images gone, containerd's GC done in both snapshotters, SOCI restarted so no cache or mount of an earlier run
helps), and the machine and component versions printed with every result."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import store

from socirun.sandbox.components import containerd2_dir, require, version_of
from socirun.sandbox.processes import mounts_under
from socirun.sandbox.sandbox import Sandbox, SandboxInfo
from socirun.sandbox.soci_daemon import BINARY, SociSettings

MB = 1_000_000


def ctr2(address: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """containerd 2.x's ctr in the namespace `default`."""
    done = subprocess.run([str(containerd2_dir() / "ctr"), "-a", address, "-n", "default", *args],
                          capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise SystemExit(f"`ctr {' '.join(args)}` failed: {done.stderr.strip()[-1000:]}")
    return done


def cold(box: Sandbox, info: SandboxInfo, refs: Sequence[str], settings: SociSettings,
         timeout: float = 180) -> None:
    """A cold start for the next run: the images and leases removed, containerd's GC done (no snapshot in
    either snapshotter, no image blob), then SOCI stopped, its own artifacts dropped (the SOCI indexes and zTOCs
    it keeps in containerd's content store as GC roots, and its root directory), and started again with
    `settings`, so no cache or mount of an earlier run helps."""
    address = info.containerd_address
    for ref in refs:
        ctr2(address, "images", "rm", "--sync", ref, check=False)
    for lease in ctr2(address, "leases", "ls", "-q").stdout.split():
        ctr2(address, "leases", "rm", "--sync", lease, check=False)
    deadline = time.monotonic() + timeout
    while True:
        snapshots = [line for name in ("overlayfs", "soci") for line in ctr2(
            address, "snapshots", "--snapshotter", name, "ls").stdout.splitlines()[1:] if line.strip()]
        if not snapshots:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"{len(snapshots)} snapshots were still there after {timeout:.0f} s")
        time.sleep(0.5)
    box.stop_soci()
    for digest in ctr2(address, "content", "ls", "-q").stdout.split():
        ctr2(address, "content", "rm", digest, check=False)
    if mounts_under(box.soci.root):
        raise SystemExit(f"SOCI left mounts under {box.soci.root}")
    shutil.rmtree(box.soci.root, ignore_errors=True)
    box.restart_soci(settings)
    # A run must not start while the last one's writes are still being flushed.
    os.sync()


def versions(info: SandboxInfo) -> str:
    containerd = info.containerd_binary or str(containerd2_dir() / "containerd")
    return (f"containerd {version_of(containerd)}, soci-snapshotter-grpc {version_of(require(BINARY))}, "
            f"runc {version_of('runc')}")


def machine() -> str:
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return f"{store.machine()}, load {load}"
