"""socirun's configuration: one TOML file format, layered.

Order, later wins key by key (tables are merged, other values replaced):

1. built-in defaults (including the `vllm` short-name alias);
2. `/etc/socirun/config.toml`;
3. `$XDG_CONFIG_HOME/socirun/config.toml` (default `~/.config/socirun/config.toml`);
4. environment variables: `CONTAINERD_ADDRESS`, `CONTAINERD_NAMESPACE`, `CONTAINERD_SNAPSHOTTER` (as nerdctl
   reads them), `SOCIRUN_DATA_ROOT`, `SOCIRUN_PROGRESS`, and the SOCI snapshotter's `SOCI_SNAPSHOTTER_CONFIG`,
   `SOCI_SNAPSHOTTER_ROOT` (as soci-snapshotter-grpc reads them: its config file, and its root directory, which
   is a flag and no config key) and `SOCIRUN_SOCI_LOG` (its log file, for the fetch log);
5. command-line flags (applied by the CLI, not here).

Example file:

    progress = "plain"                     # auto | tty | plain | json | quiet
    data_root = "/var/lib/socirun"

    [containerd]
    address = "/run/containerd/containerd.sock"
    namespace = "default"
    snapshotter = "overlayfs"

    [registry]
    hosts_dir = "/etc/containerd/certs.d"  # default: /etc/containerd/certs.d, then /etc/docker/certs.d
    insecure = ["registry.lan:5000"]       # TLS not verified, plain HTTP allowed

    [aliases]
    myapp = "registry.example.com/team/myapp"

This is the one place socirun reads its configuration and environment; the result is passed down, and nothing
writes `os.environ`. Tables this module does not know (`[pull]`, `[network]`, …) are kept in `SocirunConfig.raw`
for the parts of socirun that own them.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from socirun.errors import ConfigError

SYSTEM_CONFIG_PATH = "/etc/socirun/config.toml"
SOCI_CONFIG_PATH = "/etc/soci-snapshotter-grpc/config.toml"  # soci-snapshotter-grpc's own default
SOCI_ROOT_PATH = "/var/lib/soci-snapshotter-grpc/"  # its --root default (there is no `root` key in its config)
DEFAULT_DATA_ROOT = "/var/lib/socirun"
PROGRESS_MODES = ("auto", "tty", "plain", "json", "quiet")

# Short names users type all day. A user's [aliases] table adds to these or overrides them.
BUILTIN_ALIASES: dict[str, str] = {
    "vllm": "public.ecr.aws/deep-learning-containers/vllm",
}


@dataclass
class SocirunConfig:
    aliases: dict[str, str] = field(default_factory=lambda: dict(BUILTIN_ALIASES))
    hosts_dir: str | None = None  # None: /etc/containerd/certs.d, then /etc/docker/certs.d
    insecure_registries: list[str] = field(default_factory=list)
    progress: str = "auto"
    address: str | None = None  # None: the containerd client's default socket
    namespace: str | None = None  # None: the containerd client's default namespace
    snapshotter: str | None = None  # None: decided by the plan
    data_root: str = DEFAULT_DATA_ROOT
    soci_config_path: str = SOCI_CONFIG_PATH  # SOCI_SNAPSHOTTER_CONFIG, as soci-snapshotter-grpc reads it
    soci_root: str = SOCI_ROOT_PATH  # SOCI_SNAPSHOTTER_ROOT, its --root as soci-snapshotter-grpc reads it
    soci_log: str | None = None  # SOCI's JSON log file (SOCIRUN_SOCI_LOG); None: journald
    files_read: list[str] = field(default_factory=list)  # for `socirun doctor`
    raw: dict[str, Any] = field(default_factory=dict)  # the merged TOML, for tables owned elsewhere


def user_config_path(env: Mapping[str, str]) -> str:
    base = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".config")
    return os.path.join(base, "socirun", "config.toml")


def _read_toml(path: str) -> dict[str, Any] | None:
    """The parsed file, or None when it does not exist. Syntax errors name the file and line."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return None
    except tomllib.TOMLDecodeError as err:
        # tomllib's message ends with "(at line N, column M)".
        raise ConfigError(f"cannot parse {path}: {err}") from None
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror or err}") from None


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Key-by-key override: tables merge recursively, everything else (arrays included) is replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _expect(value: Any, kind: type, where: str, origin: str) -> Any:
    if not isinstance(value, kind):
        raise ConfigError(f"{where} in {origin} must be a {kind.__name__}, not {type(value).__name__}")
    return value


def load_config(
    env: Mapping[str, str] = os.environ,
    system_path: str = SYSTEM_CONFIG_PATH,
    user_path: str | None = None,
) -> SocirunConfig:
    """Read the system file, the user file and the environment into one SocirunConfig."""
    cfg = SocirunConfig()
    merged: dict[str, Any] = {}
    for path in (system_path, user_path or user_config_path(env)):
        data = _read_toml(path)
        if data is None:
            continue
        cfg.files_read.append(path)
        merged = _merge(merged, data)
    origin = " and ".join(cfg.files_read) or "the configuration"
    cfg.raw = merged

    if "progress" in merged:
        cfg.progress = _progress(_expect(merged["progress"], str, "progress", origin), origin)
    if "data_root" in merged:
        cfg.data_root = os.path.expanduser(_expect(merged["data_root"], str, "data_root", origin))

    containerd = _expect(merged.get("containerd", {}), dict, "[containerd]", origin)
    for key in ("address", "namespace", "snapshotter"):
        if key in containerd:
            setattr(cfg, key, _expect(containerd[key], str, f"containerd.{key}", origin))

    registry = _expect(merged.get("registry", {}), dict, "[registry]", origin)
    if "hosts_dir" in registry:
        cfg.hosts_dir = os.path.expanduser(_expect(registry["hosts_dir"], str, "registry.hosts_dir", origin))
    if "insecure" in registry:
        insecure = _expect(registry["insecure"], list, "registry.insecure", origin)
        cfg.insecure_registries = [_expect(v, str, "registry.insecure entries", origin) for v in insecure]

    aliases = _expect(merged.get("aliases", {}), dict, "[aliases]", origin)
    for key, value in aliases.items():
        cfg.aliases[key] = _expect(value, str, f"aliases.{key}", origin)

    # The environment beats the files (DESIGN: files, then environment, then flags).
    for var, attr in (
        ("CONTAINERD_ADDRESS", "address"),
        ("CONTAINERD_NAMESPACE", "namespace"),
        ("CONTAINERD_SNAPSHOTTER", "snapshotter"),
        ("SOCIRUN_DATA_ROOT", "data_root"),
    ):
        if env.get(var):
            setattr(cfg, attr, env[var])
    if env.get("SOCIRUN_PROGRESS"):
        cfg.progress = _progress(env["SOCIRUN_PROGRESS"], "SOCIRUN_PROGRESS")
    cfg.soci_config_path = env.get("SOCI_SNAPSHOTTER_CONFIG") or SOCI_CONFIG_PATH
    cfg.soci_root = env.get("SOCI_SNAPSHOTTER_ROOT") or SOCI_ROOT_PATH
    cfg.soci_log = env.get("SOCIRUN_SOCI_LOG") or None
    return cfg


def _progress(value: str, origin: str) -> str:
    if value not in PROGRESS_MODES:
        raise ConfigError(f'progress = "{value}" in {origin} is not one of {", ".join(PROGRESS_MODES)}')
    return value
