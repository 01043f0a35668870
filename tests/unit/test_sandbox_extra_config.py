"""The sandbox's extra containerd config (`Sandbox.up(extra_config=...)`): benchmarks tune a plugin of the
sandbox's containerd, such as 2.x's transfer service, without a config of their own."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest

from socirun.errors import SandboxError
from socirun.sandbox.sandbox import Sandbox, containerd_config

TRANSFER = """[plugins.'io.containerd.transfer.v1.local']
  max_concurrent_downloads = 32
  concurrent_layer_fetch_buffer = 16777216
"""


def test_extra_tables_come_last_and_parse() -> None:
    config = tomllib.loads(containerd_config(Path("/sb"), Path("/sb/soci.sock"), version=3, extra=TRANSFER))
    transfer = config["plugins"]["io.containerd.transfer.v1.local"]
    assert transfer == {"max_concurrent_downloads": 32, "concurrent_layer_fetch_buffer": 16777216}
    # The sandbox's own settings are intact: the extra table did not take over the keys before it.
    assert config["plugins"]["io.containerd.internal.v1.opt"] == {"path": "/sb/opt"}
    assert config["proxy_plugins"]["soci"]["address"] == "/sb/soci.sock"


def test_no_extra_config_by_default() -> None:
    config = tomllib.loads(containerd_config(Path("/sb"), version=3))
    assert "io.containerd.transfer.v1.local" not in config["plugins"]
    assert containerd_config(Path("/sb"), version=3) == containerd_config(Path("/sb"), version=3, extra="\n")


@pytest.mark.skipif(shutil.which("runc") is None or shutil.which("docker-registry") is None,
                    reason="the sandbox checks runc and docker-registry are installed")
def test_up_writes_the_extra_config(tmp_path: Path) -> None:
    binary = tmp_path / "bin" / "containerd"
    binary.parent.mkdir()
    # Prints a 2.x version, then exits at once: `up` stops right after it wrote the config.
    binary.write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo 'containerd x/v2 v2.4.2'\nexit 1\n")
    binary.chmod(0o755)
    box = Sandbox(tmp_path / "box")
    with pytest.raises(SandboxError, match="containerd exited during startup"):
        box.up(containerd=str(binary), extra_config=TRANSFER)
    config = tomllib.loads(box.containerd_config_path.read_text())
    assert config["version"] == 3
    assert config["plugins"]["io.containerd.transfer.v1.local"]["max_concurrent_downloads"] == 32
