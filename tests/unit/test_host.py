"""Host profile: NIC speeds from a fake /sys/class/net, and the live probe's shape."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from socirun.host import nic_speeds, probe_host


def test_nic_speeds_skip_lo_unknown_and_unreadable(tmp_path: Path) -> None:
    for name, speed in (("lo", "-1"), ("eth0", "10000"), ("eth1", "-1"), ("wlan0", "garbage"), ("ens5", "25000")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "speed").write_text(speed + "\n")
    (tmp_path / "ifb0").mkdir()  # no speed file at all
    assert nic_speeds(tmp_path) == {"eth0": 10000, "ens5": 25000}


def test_probe_host_picks_fastest_nic(tmp_path: Path) -> None:
    for name, speed in (("eth0", "1000"), ("eth1", "25000")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "speed").write_text(speed)
    host = probe_host(str(tmp_path / "does" / "not" / "exist"), tmp_path)
    assert host.nic_name == "eth1" and host.nic_speed_mbps == 25000
    assert host.cpus >= 1 and host.memory_bytes > 0
    assert host.free_disk_bytes is not None and host.disk_path == str(tmp_path)
    assert host.to_json()["nic"] == "eth1"


def test_probe_host_without_nic(tmp_path: Path) -> None:
    host = probe_host("/", tmp_path)
    assert host.nic_speed_mbps is None and host.nic_name == ""


def test_cpus_are_the_ones_this_process_may_use() -> None:
    """One CPU probe: a process pinned to one CPU (taskset, a cgroup cpuset) counts one, as the transfer decision
    and `socirun plan` both read it (they used to disagree: psutil's machine count vs the affinity mask)."""
    code = ("import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]});"
            "from socirun.host import probe_host; print(probe_host('/').cpus)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "1"
    assert probe_host("/").cpus == len(os.sched_getaffinity(0))
