"""The pure OCI spec builder: containerd defaults, image config, flags, users from /etc/passwd and /etc/group."""

from __future__ import annotations

import os
import stat
from typing import Any

import pytest

from socirun.commands.run_flags import parse_run_args
from socirun.errors import SocirunError
from socirun.runtime.spec import (
    DEFAULT_CAPS,
    DEFAULT_PATH_ENV,
    ImageConfig,
    SpecDevice,
    SpecInputs,
    SpecMount,
    bounding_caps,
    build_spec,
    device_from_stat,
    image_volume_on_kernel_fs,
    merge_env,
    resolv_conf,
    resolve_user,
)

PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nprobe:x:1234:4321::/:/bin/sh\n"
GROUP = "root:x:0:\napp:x:1000:\nprobeg:x:4321:\nextra:x:777:probe,app\nprobe:x:999:probe\n"
IMAGE = ImageConfig(env=("PATH=/img/bin", "LANG=C"), entrypoint=("/entry",), cmd=("serve", "--port", "80"),
                    working_dir="/app", user="", labels={"org.x": "y"})  # fmt: skip


def spec_for(*flags: str, image: ImageConfig = IMAGE, command: tuple[str, ...] = (), **inputs: Any) -> Any:
    opts = parse_run_args([*flags, "img", *command], environ={})
    base = SpecInputs(container_id="c" * 64, namespace="default", hostname="cccccccccccc", passwd=PASSWD,
                      group=GROUP, netns_path="/run/netns/x")  # fmt: skip
    for key, value in inputs.items():
        setattr(base, key, value)
    return build_spec(opts, image, base)


def mount(spec: Any, dest: str) -> dict[str, Any]:
    found = [m for m in spec["mounts"] if m["destination"] == dest]
    assert len(found) == 1, f"{dest}: {found}"
    return dict(found[0])


def test_defaults_follow_containerd_and_nerdctl() -> None:
    spec = spec_for()
    proc = spec["process"]
    assert proc["args"] == ["/entry", "serve", "--port", "80"]
    assert proc["cwd"] == "/app"
    assert proc["env"] == ["PATH=/img/bin", "LANG=C", "HOSTNAME=cccccccccccc"]
    assert proc["user"] == {"uid": 0, "gid": 0, "additionalGids": [0]}
    assert proc["capabilities"]["bounding"] == list(DEFAULT_CAPS)
    assert proc["noNewPrivileges"] is False
    assert proc["rlimits"] == [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1024}]  # containerd's default
    assert [m["destination"] for m in spec["mounts"]] == [
        "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup",
    ]  # fmt: skip
    assert "size=65536k" in mount(spec, "/dev/shm")["options"]
    linux = spec["linux"]
    assert linux["cgroupsPath"] == "/default/" + "c" * 64
    assert {"type": "network", "path": "/run/netns/x"} in linux["namespaces"]
    assert {n["type"] for n in linux["namespaces"]} == {"mount", "pid", "ipc", "uts", "network"}
    assert linux["resources"]["devices"][0] == {"allow": False, "access": "rwm"}
    assert "/proc/kcore" in linux["maskedPaths"] and "/proc/sys" in linux["readonlyPaths"]
    assert spec["hostname"] == "cccccccccccc" and spec["root"] == {"path": "rootfs", "readonly": False}


def test_image_without_path_gets_the_default_path() -> None:
    spec = spec_for(image=ImageConfig(cmd=("sh",)))
    assert spec["process"]["env"][0] == DEFAULT_PATH_ENV


def test_command_replaces_cmd_and_entrypoint_flag_drops_cmd() -> None:
    assert spec_for(command=("x", "y"))["process"]["args"] == ["/entry", "x", "y"]
    assert spec_for("--entrypoint", "/bin/sh")["process"]["args"] == ["/bin/sh"]
    assert spec_for("--entrypoint", "", command=("ls",))["process"]["args"] == ["ls"]
    with pytest.raises(SocirunError, match="no command specified"):
        spec_for("--entrypoint", "", image=ImageConfig())


def test_env_flags_override_the_image_by_key() -> None:
    env = spec_for("-e", "LANG=de", "-e", "NEW=1", "-t")["process"]["env"]
    assert env == ["PATH=/img/bin", "LANG=de", "TERM=xterm", "NEW=1", "HOSTNAME=cccccccccccc"]
    assert merge_env(["A=1", "B=2"], ["A"]) == ["B=2"]


def test_workdir_user_and_groups() -> None:
    spec = spec_for("-w", "/srv", "-u", "probe", "--group-add", "app")
    assert spec["process"]["cwd"] == "/srv"
    assert spec["process"]["user"] == {"uid": 1234, "gid": 4321, "additionalGids": [4321, 777, 1000]}


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("app", (1000, 1000, (1000, 777))),
        ("1000", (1000, 1000, (1000, 777))),
        ("4242", (4242, 0, (0,))),
        ("app:probeg", (1000, 4321, (4321, 777))),
        ("5:6", (5, 6, (6,))),
    ],
)
def test_resolve_user(user: str, expected: tuple[int, int, tuple[int, ...]]) -> None:
    got = resolve_user(user, PASSWD, GROUP)
    assert (got.uid, got.gid, got.additional_gids) == expected


def test_unknown_user_name_is_an_error() -> None:
    with pytest.raises(SocirunError, match="unable to find user nobody"):
        resolve_user("nobody", PASSWD, GROUP)
    with pytest.raises(SocirunError, match="unable to find group nogroup"):
        resolve_user("app:nogroup", PASSWD, GROUP)


def test_ipc_host_and_shm_size() -> None:
    spec = spec_for("--shm-size", "256m")
    assert "size=262144k" in mount(spec, "/dev/shm")["options"]
    spec = spec_for("--ipc", "host")
    assert "ipc" not in {n["type"] for n in spec["linux"]["namespaces"]}
    assert mount(spec, "/dev/shm")["source"] == "/dev/shm" and mount(spec, "/dev/shm")["type"] == "bind"
    spec = spec_for("--ipc", "container:x", ipc_ns_path="/proc/9/ns/ipc")
    assert {"type": "ipc", "path": "/proc/9/ns/ipc"} in spec["linux"]["namespaces"]


def test_host_network_pid_uts() -> None:
    spec = spec_for("--network", "host", "--pid", "host", "--uts", "host", netns_path=None)
    assert {n["type"] for n in spec["linux"]["namespaces"]} == {"mount", "ipc"}
    assert "hostname" not in spec and "sysctl" not in spec["linux"]


def test_privileged_caps_and_limits() -> None:
    spec = spec_for("--privileged")
    assert "CAP_SYS_ADMIN" in spec["process"]["capabilities"]["bounding"]
    assert spec["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert "maskedPaths" not in spec["linux"]
    caps = spec_for("--cap-add", "NET_ADMIN", "--cap-drop", "chown")["process"]["capabilities"]["effective"]
    assert "CAP_NET_ADMIN" in caps and "CAP_CHOWN" not in caps
    assert spec_for("--cap-drop", "ALL", "--cap-add", "KILL")["process"]["capabilities"]["bounding"] == ["CAP_KILL"]
    spec = spec_for("--ulimit", "nofile=10:20", "--ulimit", "core=-1", "-m", "64m", "--cpus", "0.5",
                    "--pids-limit", "9", "--read-only", "--sysctl", "net.core.somaxconn=5")  # fmt: skip
    assert spec["process"]["rlimits"] == [
        {"type": "RLIMIT_NOFILE", "soft": 10, "hard": 20},
        {"type": "RLIMIT_CORE", "soft": 2**64 - 1, "hard": 2**64 - 1},
    ]
    res = spec["linux"]["resources"]
    assert res["memory"] == {"limit": 64 << 20} and res["cpu"] == {"quota": 50000, "period": 100000}
    assert res["pids"] == {"limit": 9} and spec["root"]["readonly"] is True
    assert spec["linux"]["sysctl"]["net.core.somaxconn"] == "5"


def test_privileged_gets_only_the_capabilities_we_hold() -> None:
    assert bounding_caps("0000000000000003") == ("CAP_CHOWN", "CAP_DAC_OVERRIDE")
    spec = spec_for("--privileged", host_caps=("CAP_CHOWN", "CAP_SYS_ADMIN"))
    assert spec["process"]["capabilities"]["bounding"] == ["CAP_CHOWN", "CAP_SYS_ADMIN"]


def test_devices_mounts_hooks_and_init() -> None:
    dev = SpecDevice("/dev/nvidia0", "c", 195, 0)
    spec = spec_for("--init", "--security-opt", "no-new-privileges", devices=[dev],
                    mounts=[SpecMount("/data", "bind", "/host", ("rbind", "ro")),
                            SpecMount("/dev/shm", "tmpfs", "tmpfs", ())],
                    env=["NVIDIA_VISIBLE_DEVICES=0"], init_binary="/usr/bin/tini")  # fmt: skip
    assert spec["process"]["args"][:2] == ["/sbin/docker-init", "--"]
    assert mount(spec, "/sbin/docker-init")["source"] == "/usr/bin/tini"
    assert mount(spec, "/data")["options"] == ["rbind", "ro"]
    assert mount(spec, "/dev/shm")["type"] == "tmpfs"  # a later mount replaces the default one
    assert spec["linux"]["devices"][0]["path"] == "/dev/nvidia0"
    assert {"allow": True, "type": "c", "major": 195, "minor": 0, "access": "rwm"} in spec["linux"]["resources"][
        "devices"
    ]
    assert "NVIDIA_VISIBLE_DEVICES=0" in spec["process"]["env"] and spec["process"]["noNewPrivileges"] is True


def test_resolv_conf_drops_loopback_resolvers_off_the_host_network() -> None:
    host = "nameserver 127.0.0.53\nsearch lan\noptions edns0\n"
    assert resolv_conf(host, [], [], [], host_network=False) == (
        "nameserver 8.8.8.8\nnameserver 8.8.4.4\nsearch lan\noptions edns0\n"
    )
    assert resolv_conf(host, [], [], [], host_network=True).startswith("nameserver 127.0.0.53\n")
    assert resolv_conf(host, ["1.1.1.1"], ["x"], ["ndots:1"], host_network=False) == (
        "nameserver 1.1.1.1\nsearch x\noptions ndots:1\n"
    )


def test_tty_starts_at_the_users_terminal_size() -> None:
    from socirun.commands.run_flags import parse_run_args
    from socirun.runtime.spec import ImageConfig, SpecInputs, build_spec

    image = ImageConfig.from_blob({"config": {"Cmd": ["sh"]}})
    tty = parse_run_args(["-t", "img"], read_file=lambda p: "")
    spec = build_spec(tty, image, SpecInputs(container_id="c" * 64, namespace="default", hostname="h",
                                             console_size=(100, 33)))
    assert spec["process"]["terminal"] is True
    assert spec["process"]["consoleSize"] == {"width": 100, "height": 33}
    plain = parse_run_args(["img"], read_file=lambda p: "")
    spec = build_spec(plain, image, SpecInputs(container_id="c" * 64, namespace="default", hostname="h",
                                               console_size=(100, 33)))
    assert "consoleSize" not in spec["process"]


# ---------------------------------------------------------------------------------------------- security


PROFILE = {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
           "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]}],
           "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                        {"names": ["unshare"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}}]}


def test_seccomp_profile_is_converted_for_the_containers_capabilities() -> None:
    spec = spec_for(seccomp_profile=PROFILE, arch="amd64", kernel=(6, 1))
    assert spec["linux"]["seccomp"] == {
        "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1, "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
        "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}],
    }  # fmt: skip
    admin = spec_for("--cap-add", "SYS_ADMIN", seccomp_profile=PROFILE, arch="amd64")["linux"]["seccomp"]
    assert {"names": ["unshare"], "action": "SCMP_ACT_ALLOW"} in admin["syscalls"]
    assert "seccomp" not in spec_for("--privileged", seccomp_profile=PROFILE)["linux"]  # docker: unconfined
    assert "seccomp" not in spec_for()["linux"]  # no profile loaded: unconfined


def test_apparmor_profile_only_where_the_host_has_apparmor() -> None:
    assert spec_for("--security-opt", "apparmor=mine", apparmor_enabled=True)["process"]["apparmorProfile"] == "mine"
    assert "apparmorProfile" not in spec_for("--security-opt", "apparmor=mine", apparmor_enabled=False)["process"]
    # As docker: the default profile where the host has AppArmor; --privileged unconfined unless a profile is named.
    assert spec_for(apparmor_enabled=True)["process"]["apparmorProfile"] == "socirun-default"
    assert spec_for("--privileged", apparmor_enabled=True)["process"]["apparmorProfile"] == "unconfined"
    assert spec_for("--privileged", "--security-opt", "apparmor=mine", apparmor_enabled=True)["process"][
        "apparmorProfile"] == "mine"
    assert "apparmorProfile" not in spec_for(apparmor_enabled=False)["process"]


def test_cgroup_namespace_on_cgroup_v2_only() -> None:
    assert {"type": "cgroup"} in spec_for(cgroup_v2=True)["linux"]["namespaces"]
    assert "cgroup" not in {n["type"] for n in spec_for(cgroup_v2=False)["linux"]["namespaces"]}


def test_masked_paths_match_dockers_list() -> None:
    masked = spec_for()["linux"]["maskedPaths"]
    assert {"/sys/devices/virtual/powercap", "/proc/interrupts", "/proc/kcore", "/sys/firmware"} <= set(masked)


def test_ulimit_replaces_the_default_nofile_and_adds_others() -> None:
    assert spec_for("--ulimit", "core=0")["process"]["rlimits"] == [
        {"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1024}, {"type": "RLIMIT_CORE", "soft": 0, "hard": 0}]
    assert spec_for("--ulimit", "nofile=65536")["process"]["rlimits"] == [
        {"type": "RLIMIT_NOFILE", "soft": 65536, "hard": 65536}]


def _stat(mode: int, uid: int, gid: int, rdev: int) -> os.stat_result:
    return os.stat_result((mode, 1, 2, 1, uid, gid, 0, 0, 0, 0), {"st_rdev": rdev})


def test_device_copies_the_host_nodes_mode_and_owner() -> None:
    loop = device_from_stat("/dev/loop0", _stat(stat.S_IFBLK | 0o660, 0, 6, os.makedev(7, 0)), "rw")
    assert loop == SpecDevice("/dev/loop0", "b", 7, 0, file_mode=0o660, uid=0, gid=6, permissions="rw")
    tty = device_from_stat("/dev/ttyS0", _stat(stat.S_IFCHR | 0o620, 1000, 5, os.makedev(4, 64)))
    assert tty is not None and (tty.type, tty.file_mode, tty.uid, tty.gid) == ("c", 0o620, 1000, 5)
    assert device_from_stat("/etc/passwd", _stat(stat.S_IFREG | 0o644, 0, 0, 0)) is None
    spec = spec_for(devices=[loop])
    assert spec["linux"]["devices"] == [{"path": "/dev/loop0", "type": "b", "major": 7, "minor": 0,
                                         "fileMode": 0o660, "uid": 0, "gid": 6}]  # fmt: skip


def test_image_volumes_on_kernel_filesystems_are_recognised() -> None:
    for path in ("/dev", "/dev/", "/sys", "/sys/fs/cgroup", "/proc", "/proc/sys/net", "sys"):
        assert image_volume_on_kernel_fs(path), path
    for path in ("/data", "/dev/shm", "/devices", "/system", "/var/lib/proc"):
        assert not image_volume_on_kernel_fs(path), path
