"""The sandbox's wiring of the real soci-snapshotter: containerd's config (1.x and 2.x) and SOCI's own
config.toml, read back with socirun's SOCI config parser (the one the plan and the observer use)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from socirun.sandbox.components import version_of
from socirun.sandbox.sandbox import containerd_config
from socirun.sandbox.soci_daemon import SociSettings, daemon_config, metrics_port_of, proxy_plugin_lines
from socirun.soci.config import parse_soci_config


def test_containerd_config_registers_soci_only_when_asked(tmp_path: Path) -> None:
    assert "proxy_plugins" not in containerd_config(tmp_path)
    v2 = tomllib.loads(containerd_config(tmp_path, tmp_path / "soci.sock"))
    assert v2["version"] == 2
    assert v2["proxy_plugins"]["soci"] == {"type": "snapshot", "address": str(tmp_path / "soci.sock")}
    v3 = tomllib.loads(containerd_config(tmp_path, tmp_path / "soci.sock", version=3))
    assert v3["version"] == 3
    # containerd 2.x's own unpacker passes SOCI's labels only with this export.
    assert v3["proxy_plugins"]["soci"]["exports"]["enable_remote_snapshot_annotations"] == "true"
    assert "io.containerd.cri.v1.images" in v3["disabled_plugins"]
    assert "io.containerd.cri.v1.images" not in v2["disabled_plugins"]


def test_proxy_plugin_lines_quote_odd_paths() -> None:
    odd = Path('/tmp/a "b"/soci.sock')
    doc = tomllib.loads("\n".join(proxy_plugin_lines(odd, version=3)))
    assert doc["proxy_plugins"]["soci"]["address"] == str(odd)


def test_daemon_config_is_read_back_as_written() -> None:
    text = daemon_config("/tmp/x/containerd.sock", 41234, SociSettings(v1=True, min_layer_size=5 << 20,
                                                                        parallel=True))
    assert "root" not in tomllib.loads(text)  # SOCI has no such key: the root is the --root flag
    cfg = parse_soci_config(text, "sandbox")
    assert cfg.v1_enable and cfg.v2_enable and cfg.parallel_enable
    assert cfg.min_layer_size == 5 << 20
    assert cfg.metrics_enabled and cfg.metrics_address == "127.0.0.1:41234" and cfg.metrics_network == "tcp"
    assert cfg.log_fuse_operations
    assert cfg.content_store_type == "containerd"
    assert cfg.max_concurrent_downloads_per_image == 20 and cfg.concurrent_download_chunk_size == "16mb"
    assert cfg.discard_unpacked_layers
    assert metrics_port_of(text) == 41234


def test_defaults_keep_lazy_loading_on() -> None:
    cfg = parse_soci_config(daemon_config("/c.sock", 1, SociSettings()), "sandbox")
    assert not cfg.parallel_enable and not cfg.v1_enable and cfg.v2_enable and cfg.min_layer_size == 0


def test_version_of_reads_what_the_binary_prints(tmp_path: Path) -> None:
    for printed, expected in (("soci version v0.16.1 61147fe7c929", "v0.16.1 61147fe7c929"),
                              ("containerd github.com/containerd/containerd/v2 v2.4.2 ", "v2.4.2")):
        script = tmp_path / "tool"
        script.write_text(f"#!/bin/sh\necho '{printed}'\n")
        script.chmod(0o755)
        assert version_of(str(script)) == expected
    assert version_of(str(tmp_path / "missing")).startswith("unknown")
