"""A private docker-registry (distribution v2.8) on a free loopback port: the sandbox's registry, or a
pull-through mirror of another registry (distribution's `proxy: remoteurl:` mode) for tests.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from socirun.errors import SandboxError
from socirun.sandbox.processes import (
    free_port,
    is_ours,
    port_is_free,
    require_binary,
    spawn,
    stop_process,
    wait_until,
)

CONFIG_NAME = "registry.yml"
STORAGE_NAME = "registry"
LOG_NAME = "registry.log"
STARTUP_TIMEOUT_S = 15.0
# A freshly picked free port can be taken by someone else before the registry binds it; try again then.
_PORT_ATTEMPTS = 3


@dataclass(frozen=True)
class RegistryProcess:
    pid: int
    host: str  # "127.0.0.1:PORT"
    config_path: Path
    log_path: Path

    @property
    def port(self) -> int:
        return int(self.host.rsplit(":", 1)[1])

    def alive(self) -> bool:
        return is_ours(self.pid, str(self.config_path))

    def answers(self) -> bool:
        return registry_answers(self.host)

    def stop(self, timeout: float = 10.0) -> None:
        stop_process(self.pid, str(self.config_path), timeout)


def registry_answers(host: str) -> bool:
    """True when GET http://HOST/v2/ answers 200."""
    try:
        with urllib.request.urlopen(f"http://{host}/v2/", timeout=1.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def registry_config(storage: Path, port: int, *, proxy_remote_url: str | None = None) -> str:
    """docker-registry's YAML config. Strings are written as JSON strings, which YAML reads as-is."""
    lines = [
        "version: 0.1",
        "log:",
        "  level: warn",
        "  accesslog:",
        "    disabled: true",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {json.dumps(str(storage))}",
        "  delete:",
        "    enabled: true",
        "  cache:",
        "    blobdescriptor: inmemory",
        "http:",
        f"  addr: {json.dumps(f'127.0.0.1:{port}')}",
        # A fixed secret per instance; without one the registry logs a warning about load balancers.
        f"  secret: {json.dumps(secrets.token_hex(16))}",
    ]
    if proxy_remote_url is not None:
        lines += ["proxy:", f"  remoteurl: {json.dumps(proxy_remote_url)}"]
    return "\n".join(lines) + "\n"


def _registry_env() -> dict[str, str]:
    # REGISTRY_* variables override the config file; a stray one in the caller's environment must not.
    return {key: value for key, value in os.environ.items() if not key.startswith("REGISTRY_")}


def start_registry(
    dir: Path, *, proxy_remote_url: str | None = None, port: int | None = None
) -> RegistryProcess:
    """Start docker-registry with its config, storage and log under `dir`; return once /v2/ answers 200.

    `port` is tried first when given and free (so a restarted sandbox keeps its image references);
    otherwise a free loopback port is picked.
    """
    binary = require_binary("docker-registry")
    dir = Path(dir).absolute()
    storage = dir / STORAGE_NAME
    storage.mkdir(parents=True, exist_ok=True)
    config_path = dir / CONFIG_NAME
    log_path = dir / LOG_NAME
    marker = str(config_path)
    for attempt in range(_PORT_ATTEMPTS):
        chosen = port if port is not None and attempt == 0 and port_is_free(port) else free_port()
        config_path.write_text(registry_config(storage, chosen, proxy_remote_url=proxy_remote_url))
        log_start = log_path.stat().st_size if log_path.exists() else 0
        pid = spawn([binary, "serve", str(config_path)], log_path, cwd=dir, env=_registry_env())
        host = f"127.0.0.1:{chosen}"
        try:
            wait_until(
                functools.partial(registry_answers, host),
                pid=pid,
                marker=marker,
                timeout=STARTUP_TIMEOUT_S,
                what="docker-registry",
                log_path=log_path,
            )
        except SandboxError:
            stop_process(pid, marker)
            if attempt + 1 < _PORT_ATTEMPTS and _port_was_taken(log_path, log_start):
                continue
            raise
        return RegistryProcess(pid=pid, host=host, config_path=config_path, log_path=log_path)
    raise AssertionError("unreachable")  # pragma: no cover


def _port_was_taken(log_path: Path, offset: int) -> bool:
    with open(log_path, "rb") as log:
        log.seek(offset)
        return b"address already in use" in log.read()
