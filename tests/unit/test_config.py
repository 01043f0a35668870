"""Config layering: built-ins, system file, user file, environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from socirun.config import BUILTIN_ALIASES, load_config, user_config_path
from socirun.errors import ConfigError


def test_defaults_when_no_file(tmp_path: Path) -> None:
    cfg = load_config(env={"HOME": str(tmp_path)}, system_path=str(tmp_path / "none.toml"))
    assert cfg.aliases == BUILTIN_ALIASES
    assert cfg.aliases["vllm"] == "public.ecr.aws/deep-learning-containers/vllm"
    assert cfg.hosts_dir is None and cfg.insecure_registries == []
    assert cfg.progress == "auto"
    assert cfg.address is None and cfg.namespace is None and cfg.snapshotter is None
    assert cfg.data_root == "/var/lib/socirun"
    assert cfg.files_read == []
    assert cfg.soci_config_path == "/etc/soci-snapshotter-grpc/config.toml"
    assert cfg.soci_root == "/var/lib/soci-snapshotter-grpc/"  # soci-snapshotter-grpc's --root default


def test_soci_paths_from_the_environment(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "SOCI_SNAPSHOTTER_CONFIG": "/srv/soci/config.toml",
           "SOCI_SNAPSHOTTER_ROOT": "/srv/soci/root", "SOCIRUN_SOCI_LOG": "/srv/soci/soci.log"}
    cfg = load_config(env=env, system_path=str(tmp_path / "none.toml"))
    assert (cfg.soci_config_path, cfg.soci_root, cfg.soci_log) == (
        "/srv/soci/config.toml", "/srv/soci/root", "/srv/soci/soci.log")


def test_user_path_follows_xdg(tmp_path: Path) -> None:
    assert user_config_path({"XDG_CONFIG_HOME": "/x"}) == "/x/socirun/config.toml"
    assert user_config_path({"HOME": "/home/u"}) == "/home/u/.config/socirun/config.toml"


def test_layering_key_by_key(tmp_path: Path) -> None:
    system = tmp_path / "system.toml"
    system.write_text(
        """
progress = "plain"
data_root = "/srv/socirun"
[containerd]
address = "/run/containerd/containerd.sock"
namespace = "sys"
[registry]
hosts_dir = "/etc/containerd/certs.d"
insecure = ["a.lan"]
[aliases]
tool = "registry.example.com/tools/tool"
[pull]
max_parallel = 8
"""
    )
    user_dir = tmp_path / "xdg" / "socirun"
    user_dir.mkdir(parents=True)
    (user_dir / "config.toml").write_text(
        """
progress = "json"
[containerd]
namespace = "user"
[registry]
insecure = ["b.lan:5000"]
[aliases]
vllm = "my.registry/vllm"
"""
    )
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "CONTAINERD_SNAPSHOTTER": "soci"}
    cfg = load_config(env=env, system_path=str(system))
    assert cfg.files_read == [str(system), str(user_dir / "config.toml")]
    assert cfg.progress == "json"  # user beats system
    assert cfg.data_root == "/srv/socirun"  # system value survives where the user says nothing
    assert cfg.address == "/run/containerd/containerd.sock"
    assert cfg.namespace == "user"
    assert cfg.snapshotter == "soci"  # environment beats both files
    assert cfg.hosts_dir == "/etc/containerd/certs.d"
    assert cfg.insecure_registries == ["b.lan:5000"]  # arrays are replaced, not appended
    assert cfg.aliases == {"vllm": "my.registry/vllm", "tool": "registry.example.com/tools/tool"}
    assert cfg.raw["pull"] == {"max_parallel": 8}  # tables owned elsewhere are kept


def test_environment_overrides(tmp_path: Path) -> None:
    user = tmp_path / "u.toml"
    user.write_text('data_root = "/from/file"\n[containerd]\naddress = "/file.sock"\n')
    env = {
        "SOCIRUN_DATA_ROOT": "/from/env",
        "CONTAINERD_ADDRESS": "/env.sock",
        "CONTAINERD_NAMESPACE": "envns",
        "CONTAINERD_SNAPSHOTTER": "",  # empty means unset
    }
    cfg = load_config(env=env, system_path=str(tmp_path / "none"), user_path=str(user))
    assert cfg.data_root == "/from/env"
    assert cfg.address == "/env.sock"
    assert cfg.namespace == "envns"
    assert cfg.snapshotter is None


def test_bad_toml_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('progress = "plain"\n[aliases\n')
    with pytest.raises(ConfigError) as info:
        load_config(env={}, system_path=str(bad), user_path=str(tmp_path / "none"))
    assert str(bad) in str(info.value)
    assert "line 2" in str(info.value)
    assert info.value.exit_code == 125


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('progress = "fancy"\n', "progress"),
        ("progress = 3\n", "progress"),
        ('[registry]\ninsecure = "a.lan"\n', "registry.insecure"),
        ("[aliases]\nvllm = 1\n", "aliases.vllm"),
    ],
)
def test_bad_values_are_config_errors(tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=needle) as info:
        load_config(env={}, system_path=str(f), user_path=str(tmp_path / "none"))
    assert str(f) in str(info.value)
