"""The host profile the plan weighs: CPUs, memory, the fastest NIC's link speed, free disk. A thin probe
(psutil, /sys/class/net/*/speed, statvfs) around a plain dataclass."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

SYS_NET = Path("/sys/class/net")


@dataclass(frozen=True)
class HostProfile:
    cpus: int
    memory_bytes: int
    nic_speed_mbps: int | None  # fastest physical link; None when no NIC reports a speed (VMs often don't)
    nic_name: str
    free_disk_bytes: int | None  # on the filesystem that holds containerd's root
    disk_path: str

    def to_json(self) -> dict[str, Any]:
        return {
            "cpus": self.cpus,
            "memory_bytes": self.memory_bytes,
            "nic_speed_mbps": self.nic_speed_mbps,
            "nic": self.nic_name,
            "free_disk_bytes": self.free_disk_bytes,
            "disk_path": self.disk_path,
        }


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


def probe_host(disk_path: str = "/var/lib/containerd", net_root: Path = SYS_NET) -> HostProfile:
    speeds = nic_speeds(net_root)
    nic, speed = max(speeds.items(), key=lambda kv: kv[1]) if speeds else ("", None)
    free, where = _free_disk(disk_path)
    return HostProfile(
        cpus=psutil.cpu_count(logical=True) or os.cpu_count() or 1,
        memory_bytes=int(psutil.virtual_memory().total),
        nic_speed_mbps=speed,
        nic_name=nic,
        free_disk_bytes=free,
        disk_path=where,
    )
