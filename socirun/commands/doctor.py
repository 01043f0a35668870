"""`socirun doctor`: check the host and say what is missing, with the fix for each.

Each check is a small probe returning `Check(name, ok, detail, fix)`; `render` turns them into lines. The
probes are thin; nothing here decides a pull (that is socirun.decide.plan)."""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import shutil
import sys
from dataclasses import dataclass
from typing import Any

from socirun.commands.context import GlobalOptions
from socirun.config import SocirunConfig
from socirun.containerd.client import ContainerdClient, parse_version, resolve_target
from socirun.decide.facts import SnapshotterFacts, SociConfig
from socirun.errors import ContainerdError
from socirun.runtime.apparmor import HostAppArmor, describe, host_apparmor
from socirun.runtime.seccomp import DEFAULT_PROFILE_PACKAGE, DEFAULT_PROFILE_PATH
from socirun.soci.config import load_soci_config
from socirun.soci.observer import observation_sources
from socirun.soci.probe import probe_snapshotters
from socirun.text import terminal_safe

CNI_DIRS = ("/opt/cni/bin", "/usr/lib/cni", "/usr/libexec/cni")
CNI_PLUGINS = ("bridge", "portmap", "host-local", "loopback")
CDI_DIRS = ("/etc/cdi", "/var/run/cdi")
# Present only where /sys/fs/cgroup is the unified (v2) hierarchy.
CGROUP2_MARKER = "/sys/fs/cgroup/cgroup.controllers"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    optional: bool = False  # a missing optional feature is not a failure of `doctor`

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "fix": self.fix, "optional": self.optional}


async def check_containerd(address: str, namespace: str) -> tuple[list[Check], SnapshotterFacts | None]:
    try:
        ctd = await ContainerdClient.connect(address, namespace)
    except ContainerdError as err:
        return [Check("containerd", False, err.message,
                      "start containerd (systemctl start containerd) or point --address / CONTAINERD_ADDRESS at "
                      "its socket")], None
    async with ctd:
        version = await ctd.version()
        checks = [Check("containerd", True, f"containerd {version} at {address}"),
                  *version_notes(version, cgroup_v2=os.path.exists(CGROUP2_MARKER))]
        facts = await probe_snapshotters(ctd)
        plugins = await ctd.snapshotters()
    for plugin in plugins:
        if plugin.id == "soci":
            continue
        if plugin.ok:
            checks.append(Check(f"snapshotter {plugin.id}", True, "ok", optional=True))
    checks.append(soci_check(facts))
    return checks, facts


def version_notes(version: str, *, cgroup_v2: bool) -> list[Check]:
    """What differs for socirun with this containerd version (from the Version API): its config schema, what
    its own ctr does differently, and a deprecation it reports. socirun's gRPC services are the same (2.x keeps
    their v1 names)."""
    parsed = parse_version(version)
    if parsed is None:
        return []
    if parsed >= (2, 0):
        notes = [Check("containerd 2.x", True, "config `version = 3` or newer (it migrates older ones at each start); "
                       "its ctr pulls through the transfer service, several connections per layer from 2.1 "
                       "([plugins.\"io.containerd.transfer.v1.local\"] max_concurrent_downloads)", optional=True)]
        if not cgroup_v2 and parsed >= (2, 2):
            notes.append(Check("cgroup v1", False, "containerd 2.2+ deprecates cgroup v1 (removal by May 2029; "
                               "`ctr deprecations list` shows it)", "boot the host with cgroup v2", optional=True))
        return notes
    if parsed < (1, 7):
        return [Check(f"containerd {parsed[0]}.{parsed[1]}", True, "config `version = 2`; no namespace reaches "
                      "proxy snapshotters, so soci-snapshotter v0.16 refuses every snapshot: lazy loading needs "
                      "containerd 2.x", optional=True)]
    return []


def soci_check(facts: SnapshotterFacts) -> Check:
    if not facts.soci_registered:
        return Check("snapshotter soci", False, "containerd has no snapshotter called soci: no lazy loading",
                     "install soci-snapshotter-grpc and add to containerd's config [proxy_plugins.soci] "
                     'type = "snapshot", address = "/run/soci-snapshotter-grpc/soci-snapshotter-grpc.sock", '
                     "then restart containerd", optional=True)
    if not facts.soci_alive:
        where = f" at {facts.soci_address}" if facts.soci_address else ""
        return Check("snapshotter soci", False,
                     f"registered, but it does not answer{where}: {facts.soci_problem or 'no answer'}",
                     "start it: systemctl start soci-snapshotter (journalctl -u soci-snapshotter says why it "
                     "stopped); until then socirun pulls into overlayfs")
    return Check("snapshotter soci", True, f"answers at {facts.soci_address or 'its socket'}")


def soci_config_checks(cfg: SociConfig, soci_log: str | None) -> list[Check]:
    checks = [Check("SOCI config", not cfg.problem, cfg.problem or (
        f"{cfg.source}: v2 {'on' if cfg.v2_enable else 'off'}, v1 {'on' if cfg.v1_enable else 'off'}, "
        f"parallel pull {'on' if cfg.parallel_enable else 'off'}"),
        "fix the TOML syntax of SOCI's config.toml" if cfg.problem else "", optional=True)]
    for source in observation_sources(cfg, soci_log):
        # Off: what the fetch log then lacks, and (as the fix) how to turn the source on.
        lost = f": {source.lost}" if source.lost and not source.live else ""
        checks.append(Check(f"SOCI {source.name}", source.live, source.detail + lost, source.enable, optional=True))
    return checks


def cni_check() -> Check:
    for directory in CNI_DIRS:
        missing = [p for p in CNI_PLUGINS if not os.access(os.path.join(directory, p), os.X_OK)]
        if not missing:
            return Check("CNI plugins", True, f"{', '.join(CNI_PLUGINS)} in {directory}")
    return Check("CNI plugins", False, f"{', '.join(CNI_PLUGINS)} not all found in {', '.join(CNI_DIRS)}",
                 "install the Debian package containernetworking-plugins (needed for -p and bridge networking)",
                 optional=True)


def gpu_check() -> Check:
    devices = sorted(glob.glob("/dev/nvidia[0-9]*"))
    if not devices:
        return Check("GPUs", True, "no NVIDIA GPU device here (--gpus would fail)", optional=True)
    cdi = [p for d in CDI_DIRS for p in glob.glob(os.path.join(d, "*")) if "nvidia" in os.path.basename(p)]
    if cdi:
        how = f"CDI specs ({', '.join(cdi)})"
    elif shutil.which("nvidia-ctk") or shutil.which("nvidia-container-runtime-hook"):
        how = "the NVIDIA container toolkit hook"
    else:
        how = "socirun's own device injection (/dev/nvidia*, driver libraries)"
    fix = "" if cdi else "for CDI: nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml"
    return Check("GPUs", True, f"{len(devices)} NVIDIA device(s); --gpus would use {how}", fix, optional=True)


def security_checks(profile_path: str = DEFAULT_PROFILE_PATH, apparmor: HostAppArmor | None = None) -> list[Check]:
    """What confines a container by default: the seccomp profile (its file must exist, or every run fails) and
    the AppArmor profile where the host has AppArmor (socirun-default: apparmor_parser must be there to load it)."""
    if os.path.isfile(profile_path):
        seccomp = Check("seccomp", True, f"default profile {profile_path} (containers-common's, with docker's "
                        "namespace rules); --security-opt seccomp=unconfined|PATH, --privileged: none")
    else:
        seccomp = Check("seccomp", False, f"the default profile {profile_path} is missing: every run without "
                        "--security-opt seccomp=unconfined fails",
                        f"apt-get install {DEFAULT_PROFILE_PACKAGE} (scripts/install-deps.sh installs it)")
    ok, detail, fix = describe(host_apparmor() if apparmor is None else apparmor)
    return [seccomp, Check("AppArmor", ok, detail, fix)]


def credentials_check(image: str, config_dir: str | None = None) -> Check:
    from socirun.reference import parse_reference
    from socirun.registry.auth import load_credentials

    ref = parse_reference(image)
    creds = load_credentials(ref.domain, config_dir)
    if creds is None:
        return Check(f"credentials for {ref.domain}", False,
                     "none found in the docker config (anonymous pulls only; SOCI also needs root's "
                     "$HOME/.docker/config.json for private images, or it silently downloads in full)",
                     f"docker login {ref.domain} (or add a credential helper)", optional=True)
    return Check(f"credentials for {ref.domain}", True, "present (not shown)")


def render(checks: list[Check]) -> list[str]:
    lines = []
    for check in checks:
        mark = "ok  " if check.ok else ("note" if check.optional else "FAIL")
        lines.append(f"[{mark}] {check.name}: {check.detail}")
        if not check.ok and check.fix:
            lines.append(f"       fix: {check.fix}")
    return lines


async def _doctor(args: argparse.Namespace, config: SocirunConfig, glob_opts: GlobalOptions) -> list[Check]:
    address, namespace = resolve_target(glob_opts.address, glob_opts.namespace, config)
    checks, _facts = await check_containerd(address, namespace)
    checks += soci_config_checks(load_soci_config(config.soci_config_path, root=config.soci_root),
                                 args.soci_log or config.soci_log)
    checks.append(cni_check())
    checks.append(gpu_check())
    checks += security_checks()
    if args.image:
        checks.append(credentials_check(args.image))
    return checks


def doctor_command(args: argparse.Namespace, config: SocirunConfig, glob_opts: GlobalOptions) -> int:
    checks = asyncio.run(_doctor(args, config, glob_opts))
    print("\n".join(terminal_safe(line) for line in render(checks)), file=sys.stderr)
    failed = [c for c in checks if not c.ok and not c.optional]
    return 1 if failed else 0
