"""Count what a pull or a run can leave behind, for the fault campaign (issue 12): containerd's leases, active
ingests, snapshots, containers and tasks (through `ctr`), socirun's network namespaces, host-local IP allocations,
iptables rules for socirun's bridge, mounts under the data root or the sandbox, and socirun's container state dirs.

`count_leaks(..., baseline=before)` is what exists now minus what existed before (never below zero per field), so
a test takes a baseline, does its thing, and expects `total() == 0`. Counts, not identities: something another
test removes at the same time can hide one of ours, never invent one.

Resume leases are socirun's on purpose (socirun/pull/leases.py: a failed pull keeps its partial downloads for 24 h
under a lease labelled `io.socirun/purpose=resume` with a `containerd.io/gc.expire`); `resume_leases` lists them
and `drop_resume_leases` removes them with a synchronous GC, so a test can check them and then count the rest.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from socirun.pull.leases import EXPIRE_AFTER, GC_EXPIRE, LABEL_PURPOSE
from socirun.runtime.cni import NETNS_DIR, netns_name
from socirun.runtime.lifecycle import cni_ipam_dir

NETNS_PREFIX = netns_name("")  # "socirun-": every socirun container's namespace starts with it


@dataclass(frozen=True)
class Leaks:
    leases: int = 0
    ingests: int = 0
    snapshots: int = 0
    containers: int = 0
    tasks: int = 0
    netns: int = 0
    cni_ips: int = 0
    iptables_rules: int = 0
    mounts: int = 0
    state_dirs: int = 0

    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    def minus(self, other: Leaks) -> Leaks:
        """Field by field, never below zero."""
        return Leaks(**{f.name: max(0, getattr(self, f.name) - getattr(other, f.name)) for f in fields(self)})

    def nonzero(self) -> dict[str, int]:
        """The fields that are not zero, for assertion messages."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}


def _ctr(ctr: str, address: str, namespace: str, *args: str) -> str:
    done = subprocess.run([ctr, "-a", address, "-n", namespace, *args], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"`ctr {' '.join(args)}` exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def _rows(text: str, *, header: bool) -> list[str]:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[1:] if header else lines


def netns_entries(netns_dir: str = NETNS_DIR) -> list[str]:
    return sorted(n for n in os.listdir(netns_dir) if n.startswith(NETNS_PREFIX)) if os.path.isdir(netns_dir) else []


def cni_allocations(data_root: Path) -> list[str]:
    """host-local's allocation files (one per IP, named by the IP) in every network under socirun's IPAM dir; its
    `last_reserved_ip.*` and `lock` files are bookkeeping, not allocations."""
    root = Path(cni_ipam_dir(str(data_root)))
    out: list[str] = []
    for net in sorted(root.iterdir()) if root.is_dir() else []:
        for entry in sorted(net.iterdir()) if net.is_dir() else []:
            try:
                ipaddress.ip_address(entry.name)
            except ValueError:
                continue
            out.append(f"{net.name}/{entry.name}")
    return out


def bridge_subnet(bridge: str) -> ipaddress.IPv4Network | None:
    """The IPv4 network of `bridge` (the bridge plugin gives it the gateway address), or None when it is gone."""
    done = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", bridge], capture_output=True, text=True,
                          timeout=30, check=False)  # fmt: skip
    match = re.search(r"\binet (\S+)", done.stdout) if done.returncode == 0 else None
    return ipaddress.ip_interface(match.group(1)).network if match else None  # type: ignore[return-value]


def matching_iptables_rules(save_output: str, bridge: str, subnet: ipaddress.IPv4Network | None) -> list[str]:
    """The `-A` rules of an `iptables-save` dump that belong to `bridge`: those naming it as an interface or an
    address inside its subnet, plus every rule of a chain such a rule jumps to (the bridge plugin's per-container
    CNI-xxxx masquerade chains and portmap's CNI-DN-xxxx chains hold rules that name neither), plus the rules that
    jump into those chains. Pure, so it is unit-testable on a saved dump."""
    rules = [line for line in save_output.splitlines() if line.startswith("-A ")]

    def mentions(rule: str) -> bool:
        tokens = rule.split()
        for flag, value in itertools.pairwise(tokens):
            if flag in ("-i", "-o", "--in-interface", "--out-interface") and value == bridge:
                return True
            if subnet is not None and flag in ("-s", "-d", "--source", "--destination", "--to-destination"):
                host = value.split("/")[0].split(":")[0]
                try:
                    if ipaddress.ip_address(host) in subnet:
                        return True
                except ValueError:
                    continue
        return False

    def chain(rule: str) -> str:
        return rule.split()[1]

    def target(rule: str) -> str:
        tokens = rule.split()
        return tokens[tokens.index("-j") + 1] if "-j" in tokens[:-1] else ""

    direct = [r for r in rules if mentions(r)]
    # Chains private to one container: CNI-<hash> and CNI-DN-<hash> (the shared CNI-HOSTPORT-*, CNI-FORWARD and
    # CNI-ADMIN chains hold everyone's rules and are counted only where a rule names our bridge or subnet).
    shared = re.compile(r"^CNI-(HOSTPORT-|FORWARD$|ADMIN$)")
    private = {target(r) for r in direct if target(r).startswith("CNI-") and not shared.match(target(r))}
    private |= {chain(r) for r in direct if chain(r).startswith("CNI-") and not shared.match(chain(r))}
    return [r for r in rules if r in direct or chain(r) in private or target(r) in private]


def iptables_rules(bridge: str | None) -> list[str]:
    save = shutil.which("iptables-save")
    if bridge is None or save is None:
        return []
    done = subprocess.run([save], capture_output=True, text=True, timeout=30, check=False)
    return matching_iptables_rules(done.stdout, bridge, bridge_subnet(bridge)) if done.returncode == 0 else []


def mounts_under(roots: Sequence[Path], mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """Mount points (field 5 of mountinfo, octal escapes undone) at or below any of `roots`."""
    prefixes = [str(r.resolve()).rstrip("/") for r in roots]
    out: list[str] = []
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
            if any(point == p or point.startswith(p + "/") for p in prefixes):
                out.append(point)
    return out


def state_dirs(data_root: Path, namespace: str) -> list[str]:
    base = data_root / "containers" / namespace
    return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def count_leaks(
    *,
    ctr: str,
    address: str,
    namespace: str,
    data_root: Path,
    snapshotters: Sequence[str] = ("overlayfs",),
    bridge: str | None = None,
    baseline: Leaks | None = None,
) -> Leaks:
    """What exists now in `namespace` of the containerd at `address` (and on the host, for socirun's network,
    mounts and state under `data_root`), minus `baseline`. Mounts are counted under `data_root` and the directory
    of containerd's socket (the sandbox's, which holds its root and state). /run/netns is the host's: its
    socirun-* entries are counted only with `bridge` (only bridge networking makes them), so a pull-only check is
    not disturbed by containers other tests run at the same time."""
    now = Leaks(
        leases=len(_rows(_ctr(ctr, address, namespace, "leases", "ls", "-q"), header=False)),
        ingests=len(_rows(_ctr(ctr, address, namespace, "content", "active"), header=True)),
        snapshots=sum(len(_rows(_ctr(ctr, address, namespace, "snapshots", "--snapshotter", s, "ls"), header=True))
                      for s in snapshotters),
        containers=len(_rows(_ctr(ctr, address, namespace, "containers", "ls", "-q"), header=False)),
        tasks=len(_rows(_ctr(ctr, address, namespace, "tasks", "ls", "-q"), header=False)),
        netns=len(netns_entries()) if bridge is not None else 0,
        cni_ips=len(cni_allocations(data_root)),
        iptables_rules=len(iptables_rules(bridge)),
        mounts=len(mounts_under([data_root, Path(address).parent])),
        state_dirs=len(state_dirs(data_root, namespace)),
    )
    return now.minus(baseline) if baseline is not None else now


# -- socirun's intended leftovers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaseInfo:
    id: str
    labels: dict[str, str]


def parse_lease_row(row: str) -> LeaseInfo:
    """One row of `ctr leases ls`: ID, CREATED AT, then comma-separated key=value labels (ctr pads that last
    column with spaces: "…,io.socirun/purpose=resume   ")."""
    parts = row.split(None, 2)
    items = parts[2].strip().split(",") if len(parts) > 2 else []
    return LeaseInfo(parts[0], dict(item.strip().split("=", 1) for item in items if "=" in item))


def leases(ctr: str, address: str, namespace: str) -> list[LeaseInfo]:
    return [parse_lease_row(row) for row in _rows(_ctr(ctr, address, namespace, "leases", "ls"), header=True)]


def is_resume_lease(lease: LeaseInfo, now: dt.datetime | None = None) -> bool:
    """socirun's documented leftover of a failed pull: purpose=resume, expiring within its 24 h (plus slack)."""
    if lease.labels.get(LABEL_PURPOSE) != "resume" or GC_EXPIRE not in lease.labels:
        return False
    try:
        expires = dt.datetime.strptime(lease.labels[GC_EXPIRE], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return False
    now = now or dt.datetime.now(dt.UTC)
    return now < expires <= now + EXPIRE_AFTER + dt.timedelta(minutes=5)


def resume_leases(ctr: str, address: str, namespace: str) -> list[LeaseInfo]:
    return [lease for lease in leases(ctr, address, namespace) if is_resume_lease(lease)]


def drop_resume_leases(ctr: str, address: str, namespace: str) -> int:
    """Delete socirun's resume leases, collecting what they held at once (`--sync`); returns how many."""
    found = resume_leases(ctr, address, namespace)
    for lease in found:
        _ctr(ctr, address, namespace, "leases", "rm", "--sync", lease.id)
    return len(found)
