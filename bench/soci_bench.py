"""What the two SOCI benchmarks share: a sandbox on the real soci-snapshotter (built containerd 2.x, soci-
snapshotter-grpc, docker-registry), a throttling proxy in front of its registry, a cold store between runs
(images gone, containerd's GC done in both snapshotters, SOCI restarted so no cache or mount of an earlier run
helps), and the machine and component versions printed with every result."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import store

from socirun.sandbox.components import containerd2_dir, require, version_of
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
    """Remove the images and leases, wait until neither snapshotter nor the content store holds anything,
    then restart SOCI with `settings` (its span cache and mounts of the last run go with it)."""
    for ref in refs:
        ctr2(info.containerd_address, "images", "rm", "--sync", ref, check=False)
    for lease in ctr2(info.containerd_address, "leases", "ls", "-q").stdout.split():
        ctr2(info.containerd_address, "leases", "rm", "--sync", lease, check=False)
    deadline = time.monotonic() + timeout
    while True:
        content = ctr2(info.containerd_address, "content", "ls", "-q").stdout.split()
        snapshots = [line for name in ("overlayfs", "soci") for line in ctr2(
            info.containerd_address, "snapshots", "--snapshotter", name, "ls").stdout.splitlines()[1:] if line.strip()]
        if not content and not snapshots:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"the store did not empty within {timeout:.0f} s: {len(content)} blobs, "
                             f"{len(snapshots)} snapshots left")
        time.sleep(0.5)
    box.restart_soci(settings)
    # Let the page cache settle: a run must not start while the last one's writes are still being flushed.
    os.sync()


def versions(info: SandboxInfo) -> str:
    containerd = info.containerd_binary or str(containerd2_dir() / "containerd")
    return (f"containerd {version_of(containerd)}, soci-snapshotter-grpc {version_of(require(BINARY))}, "
            f"runc {version_of('runc')}")


def machine() -> str:
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return f"{store.machine()}, load {load}"
