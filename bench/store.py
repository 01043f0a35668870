"""What the benchmarks share: `ctr` against a sandbox namespace, an empty store between runs, and the CPU
seconds of the helper processes during a run."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence

import psutil


class CpuWatch:
    """CPU seconds the helper processes (containerd, the registry, the proxy, SOCI) use while one run goes."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}

    def snapshot(self) -> dict[str, float]:
        return {name: sum(proc.cpu_times()[:2]) for name, proc in self.procs.items()}


def ctr(address: str, namespace: str, *args: str, binary: str = "ctr") -> subprocess.CompletedProcess[str]:
    """`binary` (a ctr; the one built with the daemon for 2.x) against `address`, in `namespace`."""
    done = subprocess.run([binary, "-a", address, "-n", namespace, *args], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise SystemExit(f"`ctr {' '.join(args)}` failed: {done.stderr.strip()}")
    return done


def empty_store(address: str, namespace: str, refs: Sequence[str], *, timeout: float = 120,
                binary: str = "ctr") -> None:
    """Remove the images and every lease, then wait until GC has left no content and no snapshot, so the
    next run starts cold. `binary` is the ctr to use (the one built with the daemon)."""
    for ref in refs:
        subprocess.run([binary, "-a", address, "-n", namespace, "images", "rm", "--sync", ref],
                       capture_output=True, check=False)
    for lease in ctr(address, namespace, "leases", "ls", "-q", binary=binary).stdout.split():
        ctr(address, namespace, "leases", "rm", "--sync", lease, binary=binary)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = ctr(address, namespace, "content", "ls", "-q", binary=binary).stdout.split()
        snapshots = ctr(address, namespace, "snapshots", "ls", binary=binary).stdout.splitlines()[1:]
        if not content and not snapshots:
            return
        time.sleep(0.5)
    raise SystemExit(f"the store did not empty within {timeout:.0f} s; is something else using namespace "
                     f"{namespace}?")


class Proxy:
    """socirun.sandbox.throttle in front of a registry: `rate` per connection ("0": none), `total` for all."""

    def __init__(self, upstream: str, rate: str | None, total: str | None = None) -> None:
        argv = [sys.executable, "-m", "socirun.sandbox.throttle", "--upstream", upstream, "--rate", rate or "0"]
        if total:
            argv += ["--total", total]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.host = self.proc.stdout.readline().strip()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def machine() -> str:
    """CPUs, memory and kernel, for the first line of a benchmark's output."""
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} CPUs ({model}), {mem:.0f} GiB RAM, {platform.release()}"
