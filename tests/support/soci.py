"""A sandbox on the real soci-snapshotter for the integration tests: containerd 2.x, soci-snapshotter-grpc,
docker-registry, and helpers to run socirun and ctr against them, read SOCI's metrics, and put a bandwidth cap
in front of the registry."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from socirun.sandbox.components import containerd2_dir, find_binary
from socirun.sandbox.processes import mounts_under
from socirun.sandbox.sample import push_sample
from socirun.sandbox.sandbox import Sandbox, SandboxInfo
from socirun.sandbox.soci_daemon import BINARY, CLI, SociSettings, metrics_port_of
from tests.support.cli_result import CliResult
from tests.support.sandbox import missing_requirement, snapshot_labels

SAMPLE_TEXT = "hello from the socirun sample"


def missing_soci_requirement() -> str | None:
    """Why the real SOCI sandbox cannot run here, or None. Everything but root is installed by
    scripts/install-deps.sh, so a missing piece is a failed install, not a reason to skip."""
    reason = missing_requirement()
    if reason is not None:
        return reason
    for name in (BINARY, CLI):
        if find_binary(name) is None:
            return f"{name} is not built: run scripts/build-go-components.sh"
    try:
        containerd2_dir()
    except Exception as err:  # SandboxError with the build hint
        return str(err)
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing: SOCI mounts lazy layers with FUSE"
    return None


@dataclass
class SociBox:
    box: Sandbox
    info: SandboxInfo
    settings: SociSettings = field(default_factory=SociSettings)
    extra_env: dict[str, str] = field(default_factory=dict)  # a test module's own additions to env()

    @property
    def address(self) -> str:
        return self.info.containerd_address

    @property
    def metrics_address(self) -> str:
        port = metrics_port_of(self.box.soci.config.read_text())
        return f"127.0.0.1:{port}"

    def env(self, *, with_log: bool = True, **extra: str) -> dict[str, str]:
        """What `eval "$(socirun sandbox env)"` sets, plus JSON progress for the tests to read, on the caller's
        environment without its own CONTAINERD_*, SOCI_SNAPSHOTTER_* and SOCIRUN_* variables; `with_log=False`
        leaves SOCI's log file out (socirun then cannot read it)."""
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("SOCI_SNAPSHOTTER_", "SOCIRUN_", "CONTAINERD_"))}
        env |= {"CONTAINERD_ADDRESS": self.address, "SOCI_SNAPSHOTTER_CONFIG": str(self.box.soci.config),
                "SOCI_SNAPSHOTTER_ROOT": str(self.box.soci.root), "SOCIRUN_PROGRESS": "json"}
        if with_log:
            env["SOCIRUN_SOCI_LOG"] = str(self.box.soci.log)
        return env | self.extra_env | extra

    def socirun(self, *args: str, timeout: float = 300, with_log: bool = True, **env: str) -> CliResult:
        done = subprocess.run([sys.executable, "-m", "socirun", *args], capture_output=True, text=True,
                              env=self.env(with_log=with_log, **env), timeout=timeout, check=False)
        return CliResult.of_process(done)

    def ctr(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """containerd 2.x's own ctr against this sandbox (namespace default)."""
        argv = [str(containerd2_dir() / "ctr"), "-a", self.address, "-n", "default", *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
        return done

    def configure(self, **settings: Any) -> None:
        """Restart soci-snapshotter-grpc with SociSettings(**settings) (its snapshots and log stay)."""
        self.settings = SociSettings(**settings)
        self.box.restart_soci(self.settings)

    def push(self, name: str, layers: Sequence[float], soci: str, seed: int, *, min_layer_size: int = 0,
             tag: str = "latest") -> str:
        return push_sample(self.info.registry_host, name, tag, layers, seed=seed, soci=soci,
                           min_layer_size=min_layer_size, containerd_address=self.address)

    def forget(self, ref: str) -> None:
        """Remove the image and, synchronously, what only it kept (content, snapshots in both snapshotters): the
        next pull asks the snapshotter again."""
        self.ctr("images", "rm", "--sync", ref)

    def labels(self) -> dict[str, dict[str, str]]:
        """Every soci snapshot's labels, by key."""
        return snapshot_labels(str(containerd2_dir() / "ctr"), self.address)

    def metrics_text(self) -> str:
        from socirun.soci.observer import fetch_metrics

        return asyncio.run(fetch_metrics(self.metrics_address, "tcp"))

    def fuse_mounts(self) -> list[str]:
        """FUSE mounts under SOCI's root (its lazily mounted layers)."""
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            fuse = {line.split(" ")[4] for line in f if " - fuse" in line}
        return [point for point in mounts_under(self.box.soci.root) if point in fuse]

    def leases(self) -> list[str]:
        return self.ctr("leases", "ls", "-q").stdout.split()

    def snapshots(self, snapshotter: str = "soci") -> list[list[str]]:
        """Rows of `ctr snapshots ls`: KEY PARENT KIND."""
        lines = self.ctr("snapshots", "--snapshotter", snapshotter, "ls").stdout.splitlines()[1:]
        return [line.split() for line in lines if line.strip()]

    def soci_log_since(self, offset: int) -> str:
        with open(self.box.soci.log, encoding="utf-8", errors="replace") as f:
            f.seek(offset)
            return f.read()

    def soci_log_size(self) -> int:
        return self.box.soci.log.stat().st_size


@contextmanager
def soci_sandbox(dir: Path | str, settings: SociSettings | None = None) -> Iterator[SociBox]:
    box = Sandbox(dir)
    try:
        info = box.up(soci=True, soci_settings=settings)
        yield SociBox(box, info, settings or SociSettings())
    finally:
        box.down()


@contextmanager
def throttled(upstream: str, rate: str, total: str | None = None) -> Iterator[str]:
    """socirun.sandbox.throttle in front of `upstream`: a cap per connection (and optionally for all together);
    yields the proxy's 127.0.0.1:PORT, stopped (by its PID) afterwards."""
    argv = [sys.executable, "-m", "socirun.sandbox.throttle", "--upstream", upstream, "--rate", rate]
    if total is not None:
        argv += ["--total", total]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)
