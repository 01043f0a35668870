"""SOCI's effective configuration, as far as the mode decision and the observer need it.

Sources, best first: `soci-snapshotter-grpc [--config X] config dump` when that binary is on PATH (the
daemon's own view, defaults filled in), else the TOML file (SocirunConfig.soci_config_path:
`SOCI_SNAPSHOTTER_CONFIG`, else `/etc/soci-snapshotter-grpc/config.toml`) read with tomllib and completed with
SOCI's defaults, else the defaults alone. The daemon's root directory is no config key (v0.16.1 has none): it is
its --root flag / SOCI_SNAPSHOTTER_ROOT, handed in as `root` (SocirunConfig.soci_root). `parse_soci_config` is
pure; `load_soci_config` is the thin I/O shell.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tomllib
from collections.abc import Mapping
from typing import Any

from socirun.config import SOCI_CONFIG_PATH, SOCI_ROOT_PATH
from socirun.decide.facts import SociConfig

_DUMP_TIMEOUT_S = 5.0


def _table(doc: Mapping[str, Any], *path: str) -> Mapping[str, Any]:
    node: Any = doc
    for key in path:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) else {}


def _bool(table: Mapping[str, Any], key: str, default: bool) -> bool:
    value = table.get(key, default)
    return value if isinstance(value, bool) else default


def _int(table: Mapping[str, Any], key: str, default: int) -> int:
    value = table.get(key, default)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _str(table: Mapping[str, Any], key: str, default: str) -> str:
    value = table.get(key, default)
    return value if isinstance(value, str) else default


def parse_soci_config(text: str, source: str, root: str = SOCI_ROOT_PATH) -> SociConfig:
    """SociConfig from TOML text, for the daemon running with --root `root`; absent keys take SOCI's defaults;
    unreadable TOML gives the defaults with `problem` set (SOCI itself would refuse to start, which `doctor`
    reports). A `root` key in the text is ignored, as SOCI ignores it."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        return SociConfig(source=f"built-in defaults ({source} is not valid TOML)",
                          problem=f"{source} is not valid TOML: {err}", root=root)
    d = SociConfig()
    v1 = _table(doc, "pull_modes", "soci_v1")
    v2 = _table(doc, "pull_modes", "soci_v2")
    par = _table(doc, "pull_modes", "parallel_pull_unpack")
    store = _table(doc, "content_store")
    snap = _table(doc, "snapshotter")
    fuse = _table(doc, "fuse")
    bg = _table(doc, "background_fetch")
    return SociConfig(
        source=source,
        v1_enable=_bool(v1, "enable", d.v1_enable),
        v2_enable=_bool(v2, "enable", d.v2_enable),
        parallel_enable=_bool(par, "enable", d.parallel_enable),
        parallel_as_fallback=_bool(par, "experimental_parallel_pull_as_fallback", d.parallel_as_fallback),
        max_concurrent_downloads_per_image=_int(par, "max_concurrent_downloads_per_image",
                                                d.max_concurrent_downloads_per_image),
        concurrent_download_chunk_size=_str(par, "concurrent_download_chunk_size",
                                            d.concurrent_download_chunk_size),
        discard_unpacked_layers=_bool(par, "discard_unpacked_layers", d.discard_unpacked_layers),
        content_store_type=_str(store, "type", d.content_store_type) or d.content_store_type,
        min_layer_size=_int(snap, "min_layer_size", d.min_layer_size),
        metrics_address=_str(doc, "metrics_address", d.metrics_address),
        metrics_network=_str(doc, "metrics_network", d.metrics_network) or d.metrics_network,
        no_prometheus=_bool(doc, "no_prometheus", d.no_prometheus),
        log_fuse_operations=_bool(fuse, "log_fuse_operations", d.log_fuse_operations),
        background_fetch_disable=_bool(bg, "disable", d.background_fetch_disable),
        fetch_period_msec=_int(bg, "fetch_period_msec", d.fetch_period_msec),
        root=root,
    )


def load_soci_config(path: str = SOCI_CONFIG_PATH, *, root: str = SOCI_ROOT_PATH, use_dump: bool = True) -> SociConfig:
    """The effective SOCI config on this host, for the daemon's config file `path` and root directory `root`
    (SocirunConfig's soci_config_path and soci_root); see the module docstring for the order of sources."""
    return dataclasses.replace(_load(path, use_dump), root=root)


def _load(path: str, use_dump: bool) -> SociConfig:
    binary = shutil.which("soci-snapshotter-grpc") if use_dump else None
    if binary is not None:
        argv = [binary, "--config", path, "config", "dump"] if os.path.exists(path) else [binary, "config", "dump"]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=_DUMP_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired):
            done = None
        if done is not None and done.returncode == 0 and done.stdout.strip():
            return parse_soci_config(done.stdout, "`soci-snapshotter-grpc config dump`")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return SociConfig(source=f"built-in defaults ({path} does not exist)")
    except OSError as err:
        return SociConfig(source="built-in defaults", problem=f"cannot read {path}: {err.strerror}")
    return parse_soci_config(text, path)
