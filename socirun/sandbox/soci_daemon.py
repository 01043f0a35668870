"""The real soci-snapshotter-grpc as a sandbox daemon: its own root, socket, config file and log file under the
sandbox directory, metrics on a loopback port, started and stopped by PID (recognised by its config path), and
the containerd config lines that register it as the proxy snapshotter `soci`.

The binary is the one `scripts/build-go-components.sh` builds from soci-snapshotter's published Go modules into
/opt/socirun/bin (or one on PATH). Keys and flags: https://github.com/awslabs/soci-snapshotter/blob/v0.16.1/docs/config.md
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from socirun.errors import SandboxError
from socirun.sandbox.components import require
from socirun.sandbox.processes import (
    find_ours,
    free_port,
    spawn,
    stop_process,
    unix_socket_answers,
    unmount_under,
    wait_until,
)

BINARY = "soci-snapshotter-grpc"
CLI = "soci"
SOCKET_NAME = "soci.sock"
CONFIG_NAME = "soci-config.toml"
LOG_NAME = "soci.log"
ROOT_NAME = "soci"
STARTUP_TIMEOUT_S = 30.0
# SIGINT makes the daemon unmount its FUSE layers and close its database; that can take a while with
# many layers mounted, and a SIGKILL after it would leave mounts behind.
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class SociPaths:
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
    def root(self) -> Path:
        return self.dir / ROOT_NAME


@dataclass(frozen=True)
class SociSettings:
    """What a sandbox test or benchmark varies in SOCI's config.toml."""

    v1: bool = False
    v2: bool = True
    min_layer_size: int = 0
    background_fetch: bool = True
    # [pull_modes.parallel_pull_unpack], with the seed's figures when on.
    parallel: bool = False
    parallel_as_fallback: bool = False
    parallel_downloads_per_image: int = 20
    parallel_chunk_size: str = "16mb"
    parallel_unpacks_per_image: int = 10
    parallel_discard_unpacked_layers: bool = True


def proxy_plugin_lines(socket: Path, *, version: int = 2) -> list[str]:
    """`[proxy_plugins.soci]`, as soci-snapshotter's docs/getting-started.md shows it; containerd 2.x (config
    `version = 3`) also wants the exports that tell its own unpacker to pass SOCI's remote-snapshot labels."""
    lines = ["[proxy_plugins]", "  [proxy_plugins.soci]", '    type = "snapshot"',
             f"    address = {json.dumps(str(socket))}"]
    if version >= 3:
        lines += ["    [proxy_plugins.soci.exports]", '      enable_remote_snapshot_annotations = "true"',
                  f"      address = {json.dumps(str(socket))}"]
    return [*lines, ""]


def daemon_config(containerd_address: str, metrics_port: int, settings: SociSettings) -> str:
    """SOCI's config.toml for the sandbox. There is no `root` key: the root is the daemon's --root flag."""

    def b(value: bool) -> str:
        return "true" if value else "false"

    return "\n".join([
        "# soci-snapshotter-grpc config for the socirun sandbox (the root is the --root flag)",
        f'metrics_address = "127.0.0.1:{metrics_port}"',
        "",
        "[content_store]",
        # The manifests and configs are in the sandbox's containerd (socirun and ctr pull them there first);
        # parallel mode needs this store type.
        '  type = "containerd"',
        f"  containerd_address = {json.dumps(containerd_address)}",
        "",
        "[fuse]",
        "  log_fuse_operations = true",
        "",
        "[background_fetch]",
        f"  disable = {b(not settings.background_fetch)}",
        "",
        "[snapshotter]",
        f"  min_layer_size = {settings.min_layer_size}",
        # On start SOCI remounts every lazily loaded layer from its registry; without this a registry that is
        # gone (a test's throttling proxy, a stopped sandbox registry) makes the daemon refuse to start.
        "  allow_invalid_mounts_on_restart = true",
        "",
        "[pull_modes.soci_v1]",
        f"  enable = {b(settings.v1)}",
        "[pull_modes.soci_v2]",
        f"  enable = {b(settings.v2)}",
        "[pull_modes.parallel_pull_unpack]",
        f"  enable = {b(settings.parallel)}",
        f"  experimental_parallel_pull_as_fallback = {b(settings.parallel_as_fallback)}",
        f"  max_concurrent_downloads_per_image = {settings.parallel_downloads_per_image}",
        f"  concurrent_download_chunk_size = {json.dumps(settings.parallel_chunk_size)}",
        f"  max_concurrent_unpacks_per_image = {settings.parallel_unpacks_per_image}",
        f"  discard_unpacked_layers = {b(settings.parallel_discard_unpacked_layers)}",
        "",
    ])


def metrics_port_of(config_text: str) -> int | None:
    for line in config_text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "metrics_address":
            _, _, port = value.strip().strip('"').rpartition(":")
            return int(port) if port.isdigit() else None
    return None


def write_config(paths: SociPaths, containerd_address: str, settings: SociSettings, *,
                 metrics_port: int | None = None) -> None:
    """Write config.toml, keeping the metrics port of an earlier config so the address socirun follows stays."""
    if metrics_port is None and paths.config.exists():
        metrics_port = metrics_port_of(paths.config.read_text())
    paths.config.write_text(daemon_config(containerd_address, metrics_port or free_port(), settings))


def start_daemon(paths: SociPaths) -> int:
    """Start soci-snapshotter-grpc (config written beforehand) with debug logs into its log file; wait until its
    socket answers; returns its PID."""
    binary = require(BINARY)
    paths.root.mkdir(parents=True, exist_ok=True)
    argv = [binary, "--address", str(paths.socket), "--config", str(paths.config), "--root", str(paths.root),
            "--log-level", "debug"]
    pid = spawn(argv, paths.log, cwd=paths.dir)
    try:
        wait_until(lambda: unix_socket_answers(paths.socket), pid=pid, marker=str(paths.config),
                   timeout=STARTUP_TIMEOUT_S, what=BINARY, log_path=paths.log)
    except SandboxError as err:
        stop_process(pid, str(paths.config), 0.0)  # if it still runs, it is hung: no clean-up to wait for
        raise SandboxError(f"{err}{_last_lines(paths.log)}") from None
    return pid


def _last_lines(log: Path, n: int = 3) -> str:
    try:
        tail = log.read_text(errors="replace").strip().splitlines()[-n:]
    except OSError:
        return ""
    return (" Last lines: " + " | ".join(line[:300] for line in tail)) if tail else ""


def stop_daemon(paths: SociPaths, pid: int) -> None:
    """SIGINT (SOCI unmounts its layers and closes its database on it; SIGTERM would not), wait, SIGKILL only
    if it hangs; then unmount whatever is still mounted under its root."""
    stop_process(pid, str(paths.config), STOP_TIMEOUT_S, sig=signal.SIGINT)
    if paths.root.exists():
        unmount_under(paths.root)


def daemon_running(paths: SociPaths, pid: int) -> bool:
    return pid > 0 and find_ours(pid, str(paths.config)) is not None and unix_socket_answers(paths.socket)


def wait_reachable_through(containerd_address: str, timeout: float = 30.0) -> None:
    """Wait until containerd reaches the (re)started snapshotter: its proxy connection backs off after the old
    socket went away, so the first calls after a restart can still fail with UNAVAILABLE."""
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

    # Its own loop in a worker thread, so callers inside a running event loop can use it too.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        reached = pool.submit(asyncio.run, probe()).result()
    if not reached:
        raise SandboxError(f"containerd at {containerd_address} cannot reach {BINARY} after {timeout:.0f} s.")
