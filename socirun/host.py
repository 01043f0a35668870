"""The host profile the decisions weigh: CPUs, memory, the fastest NIC's link speed, free disk. The one probe
(sched_getaffinity, psutil, /sys/class/net/*/speed, statvfs) around the fact type in socirun.decide.facts."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import psutil

from socirun.decide.facts import HostProfile

SYS_NET = Path("/sys/class/net")


def nic_speeds(root: Path = SYS_NET) -> dict[str, int]:
    """Link speed in Mb/s of every interface that reports one (the kernel gives -1 or EINVAL otherwise)."""
    speeds: dict[str, int] = {}
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return speeds
    for entry in entries:
        if entry.name == "lo":
            continue
        try:
            value = int((entry / "speed").read_text().strip())
        except (OSError, ValueError):
            continue
        if value > 0:
            speeds[entry.name] = value
    return speeds


def _free_disk(path: str) -> tuple[int | None, str]:
    """Free bytes on the filesystem holding `path`, or its nearest existing parent."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free, str(probe)
    except OSError:
        return None, str(probe)


def usable_cpus() -> int:
    """The CPUs this process may run on: a pinned (taskset, cgroup cpuset) socirun sees only those."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return psutil.cpu_count(logical=True) or os.cpu_count() or 1


def probe_host(disk_path: str = "/var/lib/containerd", net_root: Path = SYS_NET) -> HostProfile:
    speeds = nic_speeds(net_root)
    nic, speed = max(speeds.items(), key=lambda kv: kv[1]) if speeds else ("", None)
    free, where = _free_disk(disk_path)
    return HostProfile(
        cpus=usable_cpus(),
        memory_bytes=int(psutil.virtual_memory().total),
        nic_speed_mbps=speed,
        nic_name=nic,
        free_disk_bytes=free,
        disk_path=where,
    )
