"""The per-container state file, and the teardown shared by a foreground run and the background reaper of `-d`.

Order of a run: Snapshots.Prepare (under a lease) → Containers.Create → FIFO readers → Tasks.Create →
Tasks.Wait (before Start, so the exit cannot be missed) → Tasks.Start → … → Tasks.Delete → CNI DEL, netns
removal → with --rm: Containers.Delete, Snapshots.Remove, anonymous volumes, the state directory.
The containerd calls themselves are socirun/containerd/runtime.py's.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from typing import Any

from socirun.containerd.runtime import Runtime
from socirun.errors import ContainerdError, SocirunError

STATE_FILE = "socirun-state.json"


# ---------------------------------------------------------------------------------------------- state


@dataclass
class ContainerState:
    """What teardown needs, written to `<state_dir>/socirun-state.json` (read again by the -d reaper)."""

    id: str
    name: str
    namespace: str
    address: str
    snapshotter: str
    data_root: str
    state_dir: str
    rm: bool = False
    network: str = "bridge"
    netns: str = ""  # the name under /run/netns, "" when none was created
    bridge: dict[str, str] = field(default_factory=dict)  # BridgeNetwork fields
    ports: list[dict[str, Any]] = field(default_factory=list)  # PortMapping fields
    anonymous_volumes: list[str] = field(default_factory=list)

    def save(self) -> None:
        path = os.path.join(self.state_dir, STATE_FILE)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(asdict(self), f, indent=2)
        os.replace(tmp, path)

    @classmethod
    def load(cls, state_dir: str) -> ContainerState:
        with open(os.path.join(state_dir, STATE_FILE), encoding="utf-8") as f:
            return cls(**json.load(f))


def teardown_network(state: ContainerState) -> list[str]:
    """CNI DEL and netns removal (idempotent). Returns what failed, as sentences."""
    from socirun.runtime import cni
    from socirun.runtime.options import PortMapping

    errors: list[str] = []
    if not state.netns:
        return errors
    netns_path = os.path.join(cni.NETNS_DIR, state.netns)
    if state.network == "bridge" and os.path.exists(netns_path):
        try:
            net = cni.BridgeNetwork(**state.bridge)
            plugins = cni.Cni(cni.find_plugin_dir(), net, cni_ipam_dir(state.data_root))
            ports = [PortMapping(**p) for p in state.ports]
            errors += plugins.delete(state.id, netns_path, ports)
        except SocirunError as err:
            errors.append(err.message)
    try:
        cni.delete_netns(state.netns)
    except SocirunError as err:
        errors.append(err.message)
    return errors


def cni_ipam_dir(data_root: str) -> str:
    return os.path.join(data_root, "cni", "networks")


async def teardown(rt: Runtime, state: ContainerState, *, remove: bool) -> list[str]:
    """Delete the task, the network; with `remove` the container, its snapshot, anonymous volumes and state."""
    from socirun.runtime.volumes import remove_volumes

    errors: list[str] = []
    try:
        await rt.delete_task(state.id)
    except ContainerdError as err:
        errors.append(err.message)
    errors += teardown_network(state)
    if remove:
        try:
            await rt.delete_container(state.id)
            await rt.ctd.snapshot_remove(state.snapshotter, state.id)
        except ContainerdError as err:
            errors.append(err.message)
        remove_volumes(state.data_root, state.namespace, state.anonymous_volumes)
        shutil.rmtree(state.state_dir, ignore_errors=True)
    return errors
