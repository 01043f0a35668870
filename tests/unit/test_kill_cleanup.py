"""What a killed socirun leaves and who cleans it (issue 12's SIGKILL campaign): the CNI result cache that DEL
needs, whose leases are dead, and what the next run's sweep does with a state directory."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from socirun.pull.leases import LABEL_PID, LABEL_PURPOSE, LABEL_STARTED, lease_owner_dead, owner_labels
from socirun.runtime import lifecycle
from socirun.runtime.cni import BridgeNetwork, Cni
from socirun.runtime.lifecycle import sweep_action

# -- CNI: DEL gets ADD's result ------------------------------------------------------------------------------


def _fake_plugins(tmp_path: Path) -> Path:
    """bridge/portmap/firewall/loopback stand-ins that log their stdin and answer ADD with an IP result."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    log = tmp_path / "calls"
    log.mkdir()
    result = json.dumps({"cniVersion": "1.0.0", "ips": [{"address": "10.9.0.5/24"}]})
    for name in ("bridge", "portmap", "firewall", "loopback"):
        script = plugins / name
        script.write_text(f"#!/bin/sh\ncat > {log}/{name}-$CNI_COMMAND.json\n"
                          f"[ \"$CNI_COMMAND\" = ADD ] && echo '{result}'\nexit 0\n")  # fmt: skip
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return log


def test_cni_del_hands_every_plugin_the_add_result(tmp_path: Path) -> None:
    """Without prevResult the firewall plugin's DEL finds no IP and leaves its CNI-FORWARD rules for good."""
    log = _fake_plugins(tmp_path)
    ipam = tmp_path / "cni" / "networks"
    cni = Cni(str(tmp_path / "plugins"), BridgeNetwork(), str(ipam))
    assert cni.add("c" * 64, "/run/netns/x", []) == "10.9.0.5"
    # A different Cni object (the next process: the reaper, or the sweep after a SIGKILL) finds the result.
    again = Cni(str(tmp_path / "plugins"), BridgeNetwork(), str(ipam))
    assert again.delete("c" * 64, "/run/netns/x", []) == []
    for name in ("firewall", "portmap", "bridge"):
        sent = json.loads((log / f"{name}-DEL.json").read_text())
        assert sent["prevResult"]["ips"][0]["address"] == "10.9.0.5/24", name
    assert again.cached_result("c" * 64) is None  # a successful DEL drops the cache


def test_cni_result_cache_is_private_and_beside_ipam(tmp_path: Path) -> None:
    _fake_plugins(tmp_path)
    ipam = tmp_path / "cni" / "networks"
    cni = Cni(str(tmp_path / "plugins"), BridgeNetwork(name="n"), str(ipam))
    cni.add("d" * 64, "/run/netns/x", [])
    cached = tmp_path / "cni" / "results" / f"n-{'d' * 64}-eth0"
    assert cached.is_file()
    assert stat.S_IMODE(os.stat(cached.parent).st_mode) == 0o700


# -- leases: whose owner is dead -------------------------------------------------------------------------------


def test_owner_labels_name_this_process() -> None:
    labels = owner_labels("run")
    assert labels[LABEL_PID] == str(os.getpid()) and labels[LABEL_PURPOSE] == "run"
    assert not lease_owner_dead(labels, lambda pid: float(labels[LABEL_STARTED]) + 0.004)


@pytest.mark.parametrize(
    ("labels", "running", "dead"),
    [
        ({LABEL_PURPOSE: "run", LABEL_PID: "42", LABEL_STARTED: "1000.00"}, None, True),  # gone
        ({LABEL_PURPOSE: "run", LABEL_PID: "42", LABEL_STARTED: "1000.00"}, 1000.0, False),  # alive
        ({LABEL_PURPOSE: "pull", LABEL_PID: "42", LABEL_STARTED: "1000.00"}, 5000.0, True),  # PID reused
        ({LABEL_PURPOSE: "pull", LABEL_PID: "42"}, 5000.0, False),  # older socirun: a running PID may be it
        ({LABEL_PURPOSE: "pull", LABEL_PID: "42"}, None, True),
        ({LABEL_PURPOSE: "resume", LABEL_PID: "42"}, None, False),  # kept on purpose, expires on its own
        ({}, None, False),  # not socirun's
        ({LABEL_PURPOSE: "run", LABEL_PID: "x"}, None, False),
    ],
)
def test_lease_owner_dead(labels: dict[str, str], running: float | None, dead: bool) -> None:
    assert lease_owner_dead(labels, lambda pid: running) is dead


# -- the sweep's decision -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("owner_alive", "task", "has_state", "rm", "network_left", "action"),
    [
        (True, "STOPPED", True, True, True, "leave"),  # its socirun (or reaper) still runs
        (False, "RUNNING", True, True, True, "leave"),  # the container runs: never pulled from under it
        (False, "PAUSED", True, True, True, "leave"),
        (False, "STOPPED", True, True, True, "remove"),  # a killed --rm run
        (False, None, True, True, False, "remove"),  # killed before its task (record, snapshot left)
        (False, "CREATED", True, True, True, "remove"),  # killed between Create and Start
        (False, None, False, False, True, "remove"),  # killed before its state was saved
        (False, "STOPPED", True, False, True, "teardown"),  # without --rm the container stays, stopped
        (False, None, True, False, True, "teardown"),
        (False, None, True, False, False, "leave"),  # a finished run without --rm: nothing to do
    ],
)
def test_sweep_action(owner_alive: bool, task: str | None, has_state: bool, rm: bool, network_left: bool,
                      action: str) -> None:  # fmt: skip
    assert sweep_action(owner_alive=owner_alive, task_status=task, has_state=has_state, rm=rm,
                        network_left=network_left) == action  # fmt: skip


class _NoTasks:
    """The part of Runtime the sweep reads for directories without a state file: no container has a task."""

    ctd: Any = SimpleNamespace()

    async def get_task(self, container_id: str) -> None:
        return None


def test_a_run_starting_during_the_sweep_keeps_its_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runs at once (CI, containerd 2.x): run B's sweep read the names, then run A reserved its name and made
    its state directory, then B listed the directories, found A's without a state file or a known owner, took it
    for a killed run's and removed it, and A died on its first state save. The sweep must take only what it can
    see to be abandoned."""
    data_root, namespace = str(tmp_path), "default"
    base = tmp_path / "containers" / namespace
    base.mkdir(parents=True)
    killed = base / ("a" * 64)  # a run SIGKILLed before its first state save: no owner, no state file
    killed.mkdir()
    starting = "b" * 64

    async def noop(ctd: object) -> None:
        return None

    def a_run_starts_meanwhile(base_dir: str) -> set[str]:
        # The other run, between the sweep's reads: its name first (as run does), then its directory.
        async def reserve() -> None:
            async def nobody() -> None:
                return None

            async def gone(container_id: str) -> bool:
                return False

            await lifecycle.reserve_name(data_root, namespace, "racer", starting, labelled=nobody,
                                         container_exists=gone)  # fmt: skip

        # The sweep runs in this thread's event loop; the other run has its own, as another process would.
        with concurrent.futures.ThreadPoolExecutor(1) as other_process:
            other_process.submit(asyncio.run, reserve()).result()
        (base / starting).mkdir()
        return set()

    monkeypatch.setattr("socirun.pull.leases.drop_dead_leases", noop)
    monkeypatch.setattr(lifecycle, "_dirs_held_by_processes", a_run_starts_meanwhile)
    swept = asyncio.run(lifecycle.sweep_abandoned(_NoTasks(), data_root, namespace))  # type: ignore[arg-type]
    assert swept == [killed.name]
    assert not killed.exists()
    assert (base / starting).is_dir()
