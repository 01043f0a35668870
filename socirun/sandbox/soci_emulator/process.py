"""Starting and stopping the SOCI emulator as a sandbox daemon (by PID, recognised by its config path), and
the containerd config lines that register it as the proxy snapshotter `soci`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from socirun.errors import SandboxError
from socirun.sandbox.processes import is_ours, spawn, stop_process, unix_socket_answers

SOCKET_NAME = "soci.sock"
CONFIG_NAME = "soci-config.toml"
LOG_NAME = "soci.log"
METRICS_NAME = "soci-metrics.sock"
ROOT_NAME = "soci"
STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class EmulatorPaths:
    dir: Path

    @property
    def socket(self) -> Path:
        return self.dir / SOCKET_NAME

    @property
    def config(self) -> Path:
        return self.dir / CONFIG_NAME

    @property
    def log(self) -> Path:
        return self.dir / LOG_NAME

    @property
    def metrics(self) -> Path:
        return self.dir / METRICS_NAME

    @property
    def root(self) -> Path:
        return self.dir / ROOT_NAME


def proxy_plugin_lines(socket: Path) -> list[str]:
    """`[proxy_plugins.soci]`, as https://github.com/awslabs/soci-snapshotter/blob/v0.15.0/docs/getting-started.md
    documents it, pointing at the emulator's socket."""
    return ["[proxy_plugins]", "  [proxy_plugins.soci]", '    type = "snapshot"',
            f"    address = {json.dumps(str(socket))}", ""]


def emulator_config(paths: EmulatorPaths, *, parallel: bool = False, v1: bool = False, v2: bool = True,
                    parallel_as_fallback: bool = False, min_layer_size: int = 0) -> str:
    """The emulator's own config.toml (SOCI's keys); socirun reads the same file via SOCI_SNAPSHOTTER_CONFIG."""
    def b(value: bool) -> str:
        return "true" if value else "false"

    return "\n".join([
        "# SOCI emulator config (SOCI's config.toml keys; `root` stands for the daemon's --root flag)",
        f"root = {json.dumps(str(paths.root))}",
        f"metrics_address = {json.dumps(str(paths.metrics))}",
        'metrics_network = "unix"',
        "",
        "[pull_modes.soci_v1]",
        f"enable = {b(v1)}",
        "[pull_modes.soci_v2]",
        f"enable = {b(v2)}",
        "[pull_modes.parallel_pull_unpack]",
        f"enable = {b(parallel)}",
        f"experimental_parallel_pull_as_fallback = {b(parallel_as_fallback)}",
        "[snapshotter]",
        f"min_layer_size = {min_layer_size}",
        "",
    ])


def start_emulator(paths: EmulatorPaths, containerd_address: str, *, span_pace_ms: float = 0.0) -> int:
    """Start the emulator (config written beforehand) and wait until its socket answers; returns its PID."""
    paths.root.mkdir(parents=True, exist_ok=True)
    if not paths.config.exists():
        paths.config.write_text(emulator_config(paths))
    argv = [sys.executable, "-m", "socirun.sandbox.soci_emulator", "--root", str(paths.root),
            "--address", str(paths.socket), "--containerd-address", containerd_address,
            "--config", str(paths.config), "--span-pace-ms", f"{span_pace_ms:g}"]
    pid = spawn(argv, paths.log, cwd=paths.dir)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    # Our own child: waitpid tells for sure whether it exited (no command-line matching races at start-up).
    while not unix_socket_answers(paths.socket):
        exited = False
        try:
            exited = os.waitpid(pid, os.WNOHANG)[0] == pid
        except ChildProcessError:
            exited = not psutil.pid_exists(pid)
        if exited or time.monotonic() > deadline:
            if not exited:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
            tail = paths.log.read_text(errors="replace").strip().splitlines()[-5:] if paths.log.exists() else []
            what = "exited during startup" if exited else f"did not answer within {STARTUP_TIMEOUT_S:.0f} s"
            raise SandboxError(f"the SOCI emulator {what}; read {paths.log}." +
                               (" Last lines: " + " | ".join(tail) if tail else ""))
        time.sleep(0.05)
    return pid


def stop_emulator(paths: EmulatorPaths, pid: int) -> None:
    stop_process(pid, str(paths.config), STOP_TIMEOUT_S)


def emulator_running(paths: EmulatorPaths, pid: int) -> bool:
    return pid > 0 and is_ours(pid, str(paths.config)) and unix_socket_answers(paths.socket)


def wait_reachable_through(containerd_address: str, timeout: float = 30.0) -> None:
    """Wait until containerd reaches the (re)started emulator: its proxy connection backs off after the old
    socket went away, so the first calls after a restart can still fail with UNAVAILABLE."""
    import asyncio
    import time

    from socirun.containerd.client import ContainerdClient
    from socirun.errors import ContainerdError

    async def probe() -> bool:
        async with await ContainerdClient.connect(containerd_address, "default") as ctd:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    await ctd.snapshot_list("soci", timeout=1.0)
                    return True
                except ContainerdError:
                    await asyncio.sleep(0.2)
        return False

    import concurrent.futures

    # Its own loop in a worker thread, so callers inside a running event loop can use it too.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        reached = pool.submit(asyncio.run, probe()).result()
    if not reached:
        raise SandboxError(f"containerd at {containerd_address} cannot reach the SOCI emulator after {timeout:.0f} s.")
