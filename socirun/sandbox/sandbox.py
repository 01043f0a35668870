"""A private containerd and registry, all state under one directory, for tests, benchmarks and `socirun demo`.

Layout of the directory:

    containerd.toml  containerd.log  containerd.sock  containerd.sock.ttrpc  debug.sock
    root/  state/  opt/                       containerd's own directories
    registry.yml  registry.log  registry/     docker-registry's config, log and storage
    sandbox.json                              what `up` started: PIDs, address, registry host
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from socirun.errors import SandboxError
from socirun.sandbox import soci_daemon
from socirun.sandbox.components import (
    config_version_for,
    containerd2_dir,
    containerd_major,
    ctr_beside,
    require,
    resolve_containerd,
    version_of,
)
from socirun.sandbox.processes import (
    is_ours,
    kill_processes,
    require_binary,
    spawn,
    stop_process,
    unix_socket_answers,
    unmount_under,
    wait_until,
)
from socirun.sandbox.registry_server import CONFIG_NAME as REGISTRY_CONFIG_NAME
from socirun.sandbox.registry_server import RegistryProcess, registry_answers, start_registry
from socirun.sandbox.soci_daemon import SociSettings

DEFAULT_DIR = "/var/lib/socirun/sandbox"
DIR_ENV = "SOCIRUN_SANDBOX_DIR"
STATE_NAME = "sandbox.json"
CONTAINERD_CONFIG_NAME = "containerd.toml"
CONTAINERD_LOG_NAME = "containerd.log"
SOCKET_NAME = "containerd.sock"
CONTAINERD_STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
# sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107


def default_dir() -> Path:
    return Path(os.environ.get(DIR_ENV) or DEFAULT_DIR)


@dataclass(frozen=True)
class SandboxInfo:
    dir: str
    containerd_address: str  # the grpc socket path, as CONTAINERD_ADDRESS takes it
    registry_host: str  # "127.0.0.1:PORT"
    containerd_pid: int
    registry_pid: int
    containerd_binary: str = ""  # which containerd runs: the first on PATH (Debian's 1.6), `--containerd`, or 2.x
    containerd_version: str = ""  # what `containerd_binary --version` said: "v2.4.2", "1.6.20~ds1 1.6.20~ds1-1+deb12u3"
    soci_address: str = ""  # soci-snapshotter-grpc's socket when started with soci=True (`up --soci`)
    soci_pid: int = 0
    soci_binary: str = ""


def containerd_config(dir: Path, soci_socket: Path | None = None, *, version: int = 2, extra: str = "") -> str:
    """containerd's config (`version` 2 for containerd 1.x, 3 for 2.x) with every path under `dir`. Strings are
    JSON strings, valid TOML. With `soci_socket`, soci-snapshotter-grpc is registered as the proxy snapshotter
    `soci`. `extra` (TOML tables of the caller's, such as a plugin's settings for a benchmark) goes at the end,
    where a table cannot swallow the keys above it."""

    def q(name: str) -> str:
        return json.dumps(str(dir / name))

    # The CRI plugins would start a kubelet-facing server and take over image handling; the sandbox has no use
    # for them (2.x splits CRI into three plugins).
    cri = ["io.containerd.grpc.v1.cri"]
    if version >= 3:
        cri += ["io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime", "io.containerd.nri.v1.nri"]
    return "\n".join(
        [
            f"version = {version}",
            f"root = {q('root')}",
            f"state = {q('state')}",
            f"disabled_plugins = {json.dumps(cri)}",
            "",
            "[grpc]",
            f"  address = {q(SOCKET_NAME)}",
            "",
            "[ttrpc]",
            f"  address = {q(SOCKET_NAME + '.ttrpc')}",
            "",
            "[debug]",
            f"  address = {q('debug.sock')}",
            '  level = "info"',
            "",
            "[metrics]",
            '  address = ""',
            "",
            '[plugins."io.containerd.internal.v1.opt"]',
            f"  path = {q('opt')}",
            "",
            *(soci_daemon.proxy_plugin_lines(soci_socket, version=version) if soci_socket is not None else []),
            *([extra.strip("\n"), ""] if extra.strip() else []),
        ]
    )


class Sandbox:
    def __init__(self, dir: str | Path) -> None:
        self.dir = Path(dir).absolute()
        self.state_path = self.dir / STATE_NAME
        self.containerd_config_path = self.dir / CONTAINERD_CONFIG_NAME
        self.containerd_log_path = self.dir / CONTAINERD_LOG_NAME
        self.socket_path = self.dir / SOCKET_NAME
        self.registry_config_path = self.dir / REGISTRY_CONFIG_NAME
        self.soci = soci_daemon.SociPaths(self.dir)

    # -- public API ---------------------------------------------------------------------------------------

    def up(self, *, soci: bool = False, soci_settings: SociSettings | None = None,
           containerd: str | None = None, extra_config: str = "") -> SandboxInfo:
        """Start containerd and the registry (and with `soci` the real soci-snapshotter-grpc, registered as the
        proxy snapshotter `soci`), or reuse them when the recorded ones still run and answer.

        `containerd` is the daemon's binary (a path, or a name on PATH); its `--version` picks the config schema
        (`version = 3` for 2.x). By default it is the first `containerd` on PATH (Debian's 1.6), and with `soci`
        the built 2.x: 1.6 does not pass the request's namespace to a proxy snapshotter, and SOCI v0.16 refuses
        every Prepare without one ("context has no namespace attached").

        `extra_config` is TOML appended to containerd's config (for example
        `[plugins.'io.containerd.transfer.v1.local']` settings); a running sandbox is reused only when its
        config already has it."""
        if len(str(self.socket_path) + ".ttrpc") > _MAX_SOCKET_PATH:
            raise SandboxError(
                f"the sandbox directory {self.dir} is too long for a unix socket path; "
                f"choose a shorter one with {DIR_ENV}."
            )
        soci_binary = require(soci_daemon.BINARY) if soci else ""
        if containerd is not None:
            binary = resolve_containerd(containerd)
        elif soci:
            binary = str(containerd2_dir() / "containerd")
        else:
            binary = require_binary("containerd")
        version = version_of(binary)
        major = containerd_major(version)
        if major is None:
            raise SandboxError(f"`{binary} --version` printed no containerd version ({version}): is it containerd?")
        if soci and major < 2:
            raise SandboxError(f"the SOCI sandbox needs containerd 2.x, not {binary} ({version}): containerd 1.x "
                               "does not pass the namespace to a proxy snapshotter, which soci-snapshotter needs.")
        require_binary("runc")
        require_binary("docker-registry")
        self.dir.mkdir(parents=True, exist_ok=True)
        with self._lock():
            running = self._running()
            if running is not None and containerd is not None and \
                    Path(running.containerd_binary).resolve() != Path(binary).resolve():
                raise SandboxError(f"the sandbox in {self.dir} runs {running.containerd_binary}; stop it with "
                                   f"`socirun sandbox down` before starting it on {binary}.")
            if running is not None and extra_config.strip() and \
                    extra_config.strip() not in self.containerd_config_path.read_text():
                raise SandboxError(f"the sandbox in {self.dir} runs without the extra containerd config asked for; "
                                   "stop it with `socirun sandbox down` first.")
            if running is not None:
                if soci and not running.soci_address:
                    raise SandboxError(f"the sandbox in {self.dir} runs without soci-snapshotter-grpc; "
                                       "stop it with `socirun sandbox down`, then `socirun sandbox up --soci`.")
                return running
            previous = self._read_state()
            # Whatever is left of an earlier start (one daemon died, or stopped answering) goes first.
            self._stop_daemons(previous)
            previous_port = _port_of(str(previous.get("registry_host", ""))) if previous else None

            self.containerd_config_path.write_text(containerd_config(
                self.dir, self.soci.socket if soci else None, version=config_version_for(major), extra=extra_config))
            marker = str(self.containerd_config_path)
            pid = spawn([binary, "--config", marker], self.containerd_log_path, cwd=self.dir,
                        env=_shim_path_env(binary))
            try:
                wait_until(
                    lambda: unix_socket_answers(self.socket_path),
                    pid=pid,
                    marker=marker,
                    timeout=CONTAINERD_STARTUP_TIMEOUT_S,
                    what="containerd",
                    log_path=self.containerd_log_path,
                )
                registry = start_registry(self.dir, port=previous_port)
                try:
                    soci_pid = 0
                    if soci:
                        soci_daemon.write_config(self.soci, str(self.socket_path), soci_settings or SociSettings())
                        soci_pid = soci_daemon.start_daemon(self.soci)
                except BaseException:
                    registry.stop(STOP_TIMEOUT_S)
                    raise
            except BaseException:
                stop_process(pid, marker, STOP_TIMEOUT_S)
                raise
            info = SandboxInfo(
                dir=str(self.dir),
                containerd_address=str(self.socket_path),
                registry_host=registry.host,
                containerd_pid=pid,
                registry_pid=registry.pid,
                containerd_binary=binary,
                containerd_version=version,
                soci_address=str(self.soci.socket) if soci else "",
                soci_pid=soci_pid,
                soci_binary=soci_binary,
            )
            self._write_state(info, registry)
            return info

    def down(self) -> None:
        """Stop what `up` started (and the containers its containerd runs), unmount, remove the directory."""
        if not self.dir.exists():
            return
        with self._lock():
            # Refuse before touching anything (mounts included) in a directory that is not a sandbox.
            ours = self.state_path.exists() or self.containerd_config_path.exists()
            if not ours and any(entry.name != ".lock" for entry in self.dir.iterdir()):
                raise SandboxError(f"{self.dir} does not look like a socirun sandbox; not touching it.")
            self._stop_daemons(self._read_state())
            unmount_under(self.dir)
            shutil.rmtree(self.dir)

    def status(self) -> SandboxInfo | None:
        """The running sandbox, or None when it is not (fully) running."""
        return self._running()

    def env_lines(self) -> list[str]:
        info = self.status()
        if info is None:
            raise SandboxError(f"the sandbox in {self.dir} is not running; start it with: socirun sandbox up")
        lines = [
            f"export CONTAINERD_ADDRESS={shlex.quote(info.containerd_address)}",
            f"export SOCIRUN_REGISTRY={shlex.quote(info.registry_host)}",
        ]
        if info.soci_address:
            # The variables socirun reads to follow this SOCI (its config names the metrics address; the root
            # holds the per-layer state files; the log file has the debug and FUSE-operation lines). The
            # daemon reads the first and the third itself too, so the pair cannot disagree.
            lines.append(f"export SOCI_SNAPSHOTTER_CONFIG={shlex.quote(str(self.soci.config))}")
            lines.append(f"export SOCI_SNAPSHOTTER_ROOT={shlex.quote(str(self.soci.root))}")
            lines.append(f"export SOCIRUN_SOCI_LOG={shlex.quote(str(self.soci.log))}")
        return lines

    def restart_soci(self, settings: SociSettings | None = None) -> SandboxInfo:
        """Stop soci-snapshotter-grpc (SIGINT) and start it again (with a config of `settings` when given; the
        metrics port stays); its snapshots stay, and so does its log file."""
        with self._lock():
            state = self._read_state()
            if not state.get("soci_address"):
                raise SandboxError(f"the sandbox in {self.dir} was not started with --soci.")
            soci_daemon.stop_daemon(self.soci, int(state.get("soci_pid") or 0))
            if settings is not None:
                soci_daemon.write_config(self.soci, str(self.socket_path), settings)
            state["soci_pid"] = soci_daemon.start_daemon(self.soci)
            self._write_raw_state(state)
            soci_daemon.wait_reachable_through(str(self.socket_path))
        info = self._running()
        if info is None:
            raise SandboxError(f"the sandbox in {self.dir} stopped running.")
        return info

    def restart_containerd(self, *, sig: int = signal.SIGTERM) -> SandboxInfo:
        """Stop the sandbox's containerd (the recorded PID only, with `sig`, SIGKILL after the stop timeout) and
        start it again as `up` did: same binary, config and PATH. Shims, and so running containers, stay; the
        registry and SOCI are not touched. For fault tests: a client in the middle of a call sees containerd go."""
        with self._lock():
            state = self._read_state()
            binary = str(state.get("containerd_binary") or "")
            if not binary or not self.containerd_config_path.exists():
                raise SandboxError(f"the sandbox in {self.dir} is not running; start it with: socirun sandbox up")
            marker = str(self.containerd_config_path)
            stop_process(int(state.get("containerd_pid") or 0), marker, STOP_TIMEOUT_S, sig=sig)
            pid = spawn([binary, "--config", marker], self.containerd_log_path, cwd=self.dir,
                        env=_shim_path_env(binary))
            wait_until(lambda: unix_socket_answers(self.socket_path), pid=pid, marker=marker,
                       timeout=CONTAINERD_STARTUP_TIMEOUT_S, what="containerd",
                       log_path=self.containerd_log_path)  # fmt: skip
            state["containerd_pid"] = pid
            self._write_raw_state(state)
        info = self._running()
        if info is None:
            raise SandboxError(f"the sandbox in {self.dir} stopped running.")
        return info

    def stop_soci(self) -> None:
        """Stop soci-snapshotter-grpc only: containerd keeps `soci` registered, with a dead socket."""
        with self._lock():
            state = self._read_state()
            soci_daemon.stop_daemon(self.soci, int(state.get("soci_pid") or 0))
            state["soci_pid"] = 0
            self._write_raw_state(state)

    # -- internals ----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialise up/down between processes (a lock file inside the directory)."""
        with open(self.dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_state(self, info: SandboxInfo, registry: RegistryProcess) -> None:
        state = asdict(info) | {
            "containerd_config": str(self.containerd_config_path),
            "registry_config": str(registry.config_path),
            "registry_port": registry.port,
        }
        self._write_raw_state(state)

    def _write_raw_state(self, state: dict[str, Any]) -> None:
        tmp = self.state_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.state_path)

    def _running(self) -> SandboxInfo | None:
        state = self._read_state()
        try:
            info = SandboxInfo(
                dir=str(self.dir),
                containerd_address=str(state["containerd_address"]),
                registry_host=str(state["registry_host"]),
                containerd_pid=int(state["containerd_pid"]),
                registry_pid=int(state["registry_pid"]),
                containerd_binary=str(state.get("containerd_binary") or ""),
                containerd_version=str(state.get("containerd_version") or ""),
                soci_address=str(state.get("soci_address") or ""),
                soci_pid=int(state.get("soci_pid") or 0),
                soci_binary=str(state.get("soci_binary") or ""),
            )
        except (KeyError, TypeError, ValueError):
            return None
        if not (
            is_ours(info.containerd_pid, str(self.containerd_config_path))
            and is_ours(info.registry_pid, str(self.registry_config_path))
            and unix_socket_answers(Path(info.containerd_address))
            and registry_answers(info.registry_host)
        ):
            return None
        return info

    def _stop_daemons(self, state: dict[str, Any]) -> None:
        """Stop the recorded registry and containerd, and the containers (shims) of this containerd."""
        self._stop_containers(str(state.get("containerd_binary") or ""))
        registry_pid = int(state.get("registry_pid") or 0)
        containerd_pid = int(state.get("containerd_pid") or 0)
        stop_process(registry_pid, str(self.registry_config_path), STOP_TIMEOUT_S)
        # containerd first, so nothing asks SOCI for a mount while it unmounts on SIGINT.
        stop_process(containerd_pid, str(self.containerd_config_path), STOP_TIMEOUT_S)
        soci_daemon.stop_daemon(self.soci, int(state.get("soci_pid") or 0))

    def _stop_containers(self, containerd_binary: str) -> None:
        """Kill the tasks of this containerd: through its own ctr while it answers (so containerd unmounts their
        rootfs and runc removes their cgroups), then any shim still serving this socket, with its children."""
        ctr = ctr_beside(containerd_binary)
        if shutil.which(ctr) is not None and unix_socket_answers(self.socket_path):
            for namespace in self._ctr_lines(ctr, "namespaces", "list", "--quiet"):
                for task in self._ctr_lines(ctr, "-n", namespace, "tasks", "list", "--quiet"):
                    self._ctr_lines(ctr, "-n", namespace, "tasks", "delete", "--force", task)
        shims = self._shims()
        victims: list[psutil.Process] = []
        for shim in shims:
            with contextlib.suppress(psutil.NoSuchProcess):
                victims += shim.children(recursive=True)
        kill_processes(victims + shims, timeout=STOP_TIMEOUT_S, hard=True)

    def _ctr_lines(self, ctr: str, *args: str) -> list[str]:
        try:
            done = subprocess.run(
                [ctr, "--address", str(self.socket_path), *args],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return []
        if done.returncode != 0:
            return []
        return [line.strip() for line in done.stdout.splitlines() if line.strip()]

    def _shims(self) -> list[psutil.Process]:
        """containerd-shim processes started for this sandbox (their argv has `-address <our socket>`)."""
        found: list[psutil.Process] = []
        for proc in psutil.process_iter(["name", "cmdline"]):
            name = proc.info.get("name") or ""
            argv = proc.info.get("cmdline") or []
            if not name.startswith("containerd-shim"):
                continue
            for i, arg in enumerate(argv[:-1]):
                if arg in ("-address", "--address") and argv[i + 1] == str(self.socket_path):
                    found.append(proc)
                    break
        return found


def _shim_path_env(containerd: str) -> dict[str, str]:
    """containerd's environment: PATH with the binary's own directory first, because containerd looks its shim
    (containerd-shim-runc-v2) up on PATH, and a 2.x daemon must start the 2.x shim beside it, not Debian's."""
    bin_dir = Path(containerd).resolve().parent
    return dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', os.defpath)}")


def _port_of(host: str) -> int | None:
    _, _, port = host.rpartition(":")
    return int(port) if port.isdigit() else None


__all__ = [
    "DEFAULT_DIR",
    "RegistryProcess",
    "Sandbox",
    "SandboxInfo",
    "containerd_config",
    "default_dir",
    "start_registry",
]
