"""Reading SOCI's config.toml: absent keys take v0.16.1's defaults; the file or env path is honoured; the root
is the daemon's --root (SOCI_SNAPSHOTTER_ROOT), never a config key."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from socirun.decide.facts import SociConfig
from socirun.sandbox.components import find_binary
from socirun.soci.config import load_soci_config, parse_soci_config


def test_defaults_match_the_reference() -> None:
    cfg = parse_soci_config("", "x.toml")
    assert (cfg.v1_enable, cfg.v2_enable, cfg.parallel_enable, cfg.parallel_as_fallback) == (False, True, False, False)
    assert cfg.content_store_type == "soci"
    assert cfg.min_layer_size == 0
    assert cfg.metrics_address == "" and not cfg.metrics_enabled
    assert cfg.max_concurrent_downloads_per_image == 3
    assert cfg.root == "/var/lib/soci-snapshotter-grpc/"


def test_defaults_are_what_the_real_daemon_prints() -> None:
    """SociConfig() equals `soci-snapshotter-grpc config default` read back (the v0.16.1 binary, when built)."""
    binary = find_binary("soci-snapshotter-grpc")
    if binary is None:
        pytest.skip("soci-snapshotter-grpc is not built (scripts/build-go-components.sh)")
    done = subprocess.run([str(binary), "config", "default"], capture_output=True, text=True, timeout=30, check=True)
    printed = parse_soci_config(done.stdout, "default")
    assert dataclasses.replace(printed, source=SociConfig().source) == SociConfig()


def test_root_is_the_flag_not_a_key(tmp_path: Path) -> None:
    text = 'root = "/from/the/file"\n[snapshotter]\nmin_layer_size = 5\n'
    assert parse_soci_config(text, "f").root == "/var/lib/soci-snapshotter-grpc/"  # SOCI has no such key
    assert parse_soci_config(text, "f", root="/srv/soci").root == "/srv/soci"
    assert parse_soci_config("[[[", "f", root="/srv/soci").root == "/srv/soci"
    path = tmp_path / "config.toml"
    path.write_text(text)
    cfg = load_soci_config(str(path), root="/srv/soci", use_dump=False)
    assert cfg.root == "/srv/soci" and cfg.min_layer_size == 5
    assert load_soci_config(str(tmp_path / "nope.toml"), root="/srv/x", use_dump=False).root == "/srv/x"


def test_keys_are_read() -> None:
    text = """
metrics_address = "127.0.0.1:8000"
[pull_modes.soci_v1]
enable = true
[pull_modes.soci_v2]
enable = false
[pull_modes.parallel_pull_unpack]
enable = true
experimental_parallel_pull_as_fallback = true
max_concurrent_downloads_per_image = 5
concurrent_download_chunk_size = "16mb"
[content_store]
type = "containerd"
[snapshotter]
min_layer_size = 10000000
[fuse]
log_fuse_operations = true
[background_fetch]
disable = true
"""
    cfg = parse_soci_config(text, "/etc/x.toml")
    assert cfg.source == "/etc/x.toml"
    assert cfg.v1_enable and not cfg.v2_enable and cfg.parallel_enable and cfg.parallel_as_fallback
    assert cfg.max_concurrent_downloads_per_image == 5 and cfg.concurrent_download_chunk_size == "16mb"
    assert cfg.content_store_type == "containerd" and cfg.min_layer_size == 10_000_000
    assert cfg.metrics_enabled and cfg.log_fuse_operations and cfg.background_fetch_disable


def test_wrong_types_keep_defaults_and_bad_toml_is_reported() -> None:
    cfg = parse_soci_config('[pull_modes.soci_v2]\nenable = "yes"\n', "f")
    assert cfg.v2_enable is True
    bad = parse_soci_config("[[[", "f.toml")
    assert bad.problem.startswith("f.toml is not valid TOML")
    assert bad.v2_enable == SociConfig().v2_enable


def test_load_from_env_path_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[pull_modes.parallel_pull_unpack]\nenable = true\n")
    cfg = load_soci_config(str(path), use_dump=False)
    assert cfg.parallel_enable and cfg.source == str(path)
    missing = load_soci_config(str(tmp_path / "nope.toml"), use_dump=False)
    assert "does not exist" in missing.source and missing.v2_enable
