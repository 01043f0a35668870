"""Pure pieces of `socirun run`: CNI config, exit-code mapping, rootfs reads without mounting, volumes, /etc files."""

from __future__ import annotations

from pathlib import Path

import pytest

from socirun.containerd.runtime import exit_code_for
from socirun.containerd.types import Mount
from socirun.runtime.cni import BridgeNetwork, NetworkError, conflist, port_mappings
from socirun.runtime.container import read_rootfs_file
from socirun.runtime.lifecycle import ContainerState
from socirun.runtime.options import PortMapping, VolumeSpec
from socirun.runtime.spec import hosts_file
from socirun.runtime.volumes import remove_volumes, resolve_volumes, volume_path


def test_conflist_uses_our_bridge_subnet_and_ipam_dir() -> None:
    conf = conflist(BridgeNetwork(name="n", bridge="br9", subnet="10.9.8.0/24"), "/data/cni")
    assert [p["type"] for p in conf["plugins"]] == ["bridge", "portmap", "firewall"]
    bridge = conf["plugins"][0]
    assert bridge["bridge"] == "br9" and bridge["isGateway"] and bridge["ipMasq"]
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.9.8.0/24", "gateway": "10.9.8.1"}]]
    assert bridge["ipam"]["dataDir"] == "/data/cni"
    assert conf["plugins"][1]["capabilities"] == {"portMappings": True}
    assert port_mappings([PortMapping("127.0.0.1", 8080, 80, "udp")]) == [
        {"hostPort": 8080, "containerPort": 80, "protocol": "udp", "hostIP": "127.0.0.1"}
    ]


def test_network_config_table() -> None:
    assert BridgeNetwork.from_config({}) == BridgeNetwork()
    assert BridgeNetwork.from_config({"network": {"bridge": "x0", "subnet": "10.1.0.0/16"}}).subnet == "10.1.0.0/16"
    with pytest.raises(NetworkError, match="not a network"):
        BridgeNetwork.from_config({"network": {"subnet": "nope"}})
    with pytest.raises(NetworkError, match="1 to 15 characters"):
        BridgeNetwork.from_config({"network": {"bridge": "a-very-long-bridge-name"}})


@pytest.mark.parametrize(
    ("details", "code"),
    [
        ('exec: "x": executable file not found in $PATH: unknown', 127),
        ("stat /nope: no such file or directory", 127),
        ('exec: "/etc/passwd": permission denied: unknown', 126),
        ('exec: "/etc": is a directory', 126),
        ("cgroup mountpoint does not exist", 125),
    ],
)
def test_exit_code_mapping_follows_docker(details: str, code: int) -> None:
    assert exit_code_for(details) == code


def test_rootfs_files_are_read_from_upper_then_lower_dirs(tmp_path: Path) -> None:
    lower1, lower2, upper = tmp_path / "l1", tmp_path / "l2", tmp_path / "up"
    for d in (lower1, lower2, upper):
        (d / "etc").mkdir(parents=True)
    (lower2 / "etc/passwd").write_text("bottom\n")
    (lower1 / "etc/passwd").write_text("top\n")
    (lower2 / "etc/group").write_text("g\n")
    overlay = Mount(type="overlay", source="overlay",
                    options=(f"lowerdir={lower1}:{lower2}", f"upperdir={upper}", "workdir=/w"))  # fmt: skip
    assert read_rootfs_file([overlay], "/etc/passwd") == "top\n"
    assert read_rootfs_file([overlay], "/etc/group") == "g\n"
    assert read_rootfs_file([overlay], "/etc/shadow") is None
    bind = Mount(type="bind", source=str(lower2), options=("rbind", "ro"))
    assert read_rootfs_file([bind], "/etc/passwd") == "bottom\n"


def test_volumes_resolve_to_binds_named_anonymous_and_tmpfs(tmp_path: Path) -> None:
    specs = [
        VolumeSpec("bind", "rel/dir", "/a", True, create_missing=True),  # -v: a missing source is created
        VolumeSpec("volume", "named", "/b"),
        VolumeSpec("volume", "", "/c"),
        VolumeSpec("tmpfs", "", "/t", False, ("size=1m",)),
    ]
    got = resolve_volumes(specs, ["/img-vol", "/b"], str(tmp_path / "root"), "ns", str(tmp_path))
    by_dest = {m.destination: m for m in got.mounts}
    assert by_dest["/a"].source == str(tmp_path / "rel/dir") and (tmp_path / "rel/dir").is_dir()
    assert by_dest["/a"].options == ("rbind", "rprivate", "ro")
    assert by_dest["/b"].source == volume_path(str(tmp_path / "root"), "ns", "named")
    assert Path(by_dest["/b"].source).is_dir()
    assert by_dest["/t"].type == "tmpfs" and by_dest["/t"].options == ("nosuid", "noexec", "nodev", "size=1m")
    assert len(got.anonymous) == 2 and "/img-vol" in by_dest  # -v /c and the image's VOLUME /img-vol
    assert all(len(name) == 64 for name in got.anonymous)
    remove_volumes(str(tmp_path / "root"), "ns", got.anonymous)
    assert sorted(p.name for p in (tmp_path / "root/volumes/ns").iterdir()) == ["named"]


def test_hosts_file_and_state_round_trip(tmp_path: Path) -> None:
    text = hosts_file("box", "10.0.0.5", [("db", "10.0.0.9")])
    assert "10.0.0.5\tbox\n" in text and text.endswith("10.0.0.9\tdb\n") and text.startswith("127.0.0.1\tlocalhost")
    assert "127.0.1.1\tbox" in hosts_file("box", None, [])
    state = ContainerState(id="a" * 64, name="n", namespace="default", address="/s", snapshotter="overlayfs",
                           data_root=str(tmp_path), state_dir=str(tmp_path), rm=True, netns="socirun-x",
                           ports=[{"host_ip": "", "host_port": 1, "container_port": 2, "protocol": "tcp"}])  # fmt: skip
    state.save()
    assert ContainerState.load(str(tmp_path)) == state
