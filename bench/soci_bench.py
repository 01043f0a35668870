"""What the two SOCI benchmarks share: a sandbox on the real soci-snapshotter (built containerd 2.x, soci-
snapshotter-grpc, docker-registry), a throttling proxy in front of its registry, a cold store between runs
(images gone, containerd's GC done in both snapshotters, SOCI restarted so no cache or mount of an earlier run
helps), and the machine and component versions printed with every result."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import store

from socirun.sandbox.components import containerd2_dir, require, version_of
from socirun.sandbox.processes import mounts_under
from socirun.sandbox.sample import SampleImage, build_sample, default_cache_dir, push_sample
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


def sample(layers: Sequence[float], seed: int) -> SampleImage:
    """The benchmark's sample, built or taken from the cache, with the machine and the sample said first."""
    started = time.monotonic()
    image = build_sample(default_cache_dir(), layers, seed=seed)
    print(f"machine: {machine()}")
    print(f"sample: {len(image.layers)} layers, {image.total_size / MB:.0f} MB compressed, "
          f"{sum(layers):.0f} MiB of files (built or cached in {time.monotonic() - started:.0f} s)")
    return image


@dataclass(frozen=True)
class SociBench:
    """A SOCI sandbox with the sample pushed twice, with a SOCI v2 index (`soci convert`) and without, both
    referred to through the throttling proxy."""

    box: Sandbox
    info: SandboxInfo
    settings: SociSettings
    lazy_ref: str
    plain_ref: str


@contextlib.contextmanager
def soci_sandbox(dir: str, name: str, layers: Sequence[float], seed: int, rate: str, *,
                 keep: bool = False) -> Iterator[SociBench]:
    """The sandbox up, the proxy in front of its registry, the sample pushed; the proxy stopped and (unless
    `keep`) the sandbox taken down afterwards."""
    box = Sandbox(Path(dir))
    settings = SociSettings()
    info = box.up(soci=True, soci_settings=settings)
    print(f"components: {versions(info)}")
    proxy = store.Proxy(info.registry_host, rate)
    try:
        started = time.monotonic()
        indexed = push_sample(info.registry_host, name, "soci", layers, seed=seed, soci="v2")
        plain = push_sample(info.registry_host, name, "plain", layers, seed=seed)
        print(f"pushed with a SOCI v2 index (soci convert) and without, in {time.monotonic() - started:.0f} s")
        yield SociBench(box, info, settings, indexed.replace(info.registry_host, proxy.host, 1),
                        plain.replace(info.registry_host, proxy.host, 1))
    finally:
        proxy.stop()
        if not keep:
            box.down()
