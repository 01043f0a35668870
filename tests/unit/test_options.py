"""The docker-run argument parser: every supported flag, docker's parsing rules, refusals and bad values."""

from __future__ import annotations

from typing import Any

import pytest

from socirun.commands.run_flags import FLAGS, REFUSED, help_text, parse_run_args
from socirun.errors import UsageError
from socirun.runtime.options import DEFAULT_RUNTIME, DeviceSpec, GpuRequest, PortMapping, Ulimit, VolumeSpec


def parse(*argv: str, env: dict[str, str] | None = None, files: dict[str, str] | None = None) -> Any:
    def read(path: str) -> str:
        if files is None or path not in files:
            raise FileNotFoundError(2, "no such file or directory")
        return files[path]

    return parse_run_args(list(argv), environ=env or {}, read_file=read)


# (argv before IMAGE, attribute, expected value): one row per supported flag and spelling.
SUPPORTED: list[tuple[list[str], str, Any]] = [
    (["-d"], "detach", True),
    (["--detach"], "detach", True),
    (["-i"], "interactive", True),
    (["--interactive"], "interactive", True),
    (["-t"], "tty", True),
    (["--tty"], "tty", True),
    (["--rm"], "rm", True),
    (["--rm=false"], "rm", False),
    (["--name", "web-1"], "name", "web-1"),
    (["--name=web_1.x"], "name", "web_1.x"),
    (["-e", "A=1", "--env", "B=2", "-eC=3"], "env", ["A=1", "B=2", "C=3"]),
    (["-e", "A=1,B=2"], "env", ["A=1,B=2"]),  # StringArray: never comma-split
    (["-v", "/h:/c:ro"], "volumes", [VolumeSpec("bind", "/h", "/c", True, (), create_missing=True)]),
    (["--volume", "data:/d"], "volumes", [VolumeSpec("volume", "data", "/d", False, ())]),
    (["-v", "/anon"], "volumes", [VolumeSpec("volume", "", "/anon", False, ())]),
    (["--mount", "type=bind,src=/a,dst=/b,readonly"], "volumes", [VolumeSpec("bind", "/a", "/b", True, ())]),
    (["--mount", "type=tmpfs,target=/t,tmpfs-size=1m"], "volumes", [VolumeSpec("tmpfs", "", "/t", False,
                                                                               ("size=1048576",))]),
    (["--tmpfs", "/run:size=1m"], "volumes", [VolumeSpec("tmpfs", "", "/run", False, ("size=1m",))]),
    (["-p", "8080:80"], "publish", [PortMapping("", 8080, 80, "tcp")]),
    (["--publish", "127.0.0.1:8080:80/udp"], "publish", [PortMapping("127.0.0.1", 8080, 80, "udp")]),
    (["-p", "[::1]:8080:80"], "publish", [PortMapping("::1", 8080, 80, "tcp")]),
    (["-p", "80"], "publish", [PortMapping("", 0, 80, "tcp")]),
    (["-p", "3000-3001:8080-8081"], "publish", [PortMapping("", 3000, 8080), PortMapping("", 3001, 8081)]),
    (["-p", "3000-3010:8080"], "publish", [PortMapping("", 3000, 8080)]),
    (["-p", "80:80,443:443"], "publish", [PortMapping("", 80, 80), PortMapping("", 443, 443)]),
    (["--network", "host"], "network", "host"),
    (["--net=none"], "network", "none"),
    (["--network", "bridge"], "network", "bridge"),
    (["--network", "container:db"], "network_container", "db"),
    (["--ipc=host"], "ipc", "host"),
    (["--ipc", "shareable"], "ipc", "shareable"),
    (["--ipc", "container:db"], "ipc_container", "db"),
    (["--gpus", "all"], "gpus", GpuRequest(count=-1)),
    (["--shm-size", "256m"], "shm_size", 256 << 20),
    (["--shm-size=1g"], "shm_size", 1 << 30),
    (["--entrypoint", "/bin/sh"], "entrypoint", ["/bin/sh"]),
    (["--entrypoint="], "entrypoint", []),
    (["-w", "/srv"], "workdir", "/srv"),
    (["--workdir=/srv"], "workdir", "/srv"),
    (["-u", "app"], "user", "app"),
    (["--user", "1000:100"], "user", "1000:100"),
    (["--privileged"], "privileged", True),
    (["--cap-add", "net_admin,SYS_TIME"], "cap_add", ["CAP_NET_ADMIN", "CAP_SYS_TIME"]),
    (["--cap-drop", "ALL"], "cap_drop", ["ALL"]),
    (["--ulimit", "nofile=1024:2048"], "ulimits", [Ulimit("nofile", 1024, 2048)]),
    (["--ulimit", "nproc=10"], "ulimits", [Ulimit("nproc", 10, 10)]),
    (["--pull", "never"], "pull", "never"),
    (["--pull=always"], "pull", "always"),
    (["--platform", "linux/arm64"], "platform", "linux/arm64"),
    (["-l", "a=b", "--label", "c"], "labels", {"a": "b", "c": ""}),
    (["-h", "box"], "hostname", "box"),
    (["--hostname=box"], "hostname", "box"),
    (["--device", "/dev/fuse"], "devices", [DeviceSpec("/dev/fuse", "/dev/fuse", "rwm")]),
    (["--device", "/dev/a:/dev/b:r"], "devices", [DeviceSpec("/dev/a", "/dev/b", "r")]),
    (["--device", "nvidia.com/gpu=0"], "devices", [DeviceSpec("", "", "rwm", cdi_name="nvidia.com/gpu=0")]),
    (["--init"], "init", True),
    (["--read-only"], "read_only", True),
    (["--add-host", "db:10.0.0.2"], "add_hosts", [("db", "10.0.0.2")]),
    (["--add-host=gw=host-gateway"], "add_hosts", [("gw", "host-gateway")]),
    (["--dns", "1.1.1.1,9.9.9.9"], "dns", ["1.1.1.1", "9.9.9.9"]),
    (["--dns-search", "example.com"], "dns_search", ["example.com"]),
    (["--dns-opt", "ndots:2"], "dns_options", ["ndots:2"]),
    (["--dns-option", "ndots:2"], "dns_options", ["ndots:2"]),
    (["--group-add", "audio,video"], "group_add", ["audio", "video"]),
    (["--cpus", "1.5"], "cpus", 1.5),
    (["-m", "512m"], "memory", 512 << 20),
    (["--memory=2g"], "memory", 2 << 30),
    (["--stop-signal", "INT"], "stop_signal", "SIGINT"),
    (["--stop-signal", "9"], "stop_signal", "SIGKILL"),
    (["--stop-timeout", "30"], "stop_timeout", 30),
    (["--sig-proxy=false"], "sig_proxy", False),
    (["--cidfile", "/tmp/cid"], "cidfile", "/tmp/cid"),
    (["--restart", "no"], "runtime", DEFAULT_RUNTIME),
    (["--runtime", "runc"], "runtime", DEFAULT_RUNTIME),
    (["--runtime", "crun"], "runtime_binary", "crun"),
    (["--runtime", "io.containerd.kata.v2"], "runtime", "io.containerd.kata.v2"),
    (["-q"], "quiet", True),
    (["--quiet"], "quiet", True),
    (["--pid", "host"], "pid_host", True),
    (["--uts=host"], "uts_host", True),
    (["--sysctl", "net.ipv4.ip_forward=1"], "sysctls", {"net.ipv4.ip_forward": "1"}),
    (["--pids-limit", "100"], "pids_limit", 100),
    (["--security-opt", "no-new-privileges"], "no_new_privileges", True),
    (["--security-opt", "seccomp=unconfined"], "no_new_privileges", False),
    (["--security-opt", "seccomp=unconfined"], "seccomp", "unconfined"),
    (["--security-opt", "seccomp:/p.json"], "seccomp", "/p.json"),
    (["--security-opt", "seccomp=builtin"], "seccomp", ""),
    (["--security-opt", "apparmor=my-profile"], "apparmor", "my-profile"),
    (["--security-opt", "no-new-privileges=false"], "no_new_privileges", False),
    (["--security-opt", "label=disable"], "seccomp", ""),
    (["-v", "/sys:/sys:ro"], "volumes", [VolumeSpec("bind", "/sys", "/sys", True, create_missing=True)]),
    (["-v", "/dev/:/dev"], "volumes", [VolumeSpec("bind", "/dev/", "/dev", create_missing=True)]),
    (["--domainname", "example.org"], "domainname", "example.org"),
    (["--snapshotter", "soci"], "snapshotter", "soci"),
    (["--storage-driver", "soci"], "snapshotter", "soci"),
    (["--progress", "json"], "progress", "json"),
    (["--record-events", "/tmp/run.jsonl"], "record_events", "/tmp/run.jsonl"),
    (["--pull-mode", "lazy"], "pull_mode", "lazy"),
    (["--discard-unpacked-layers"], "discard_unpacked_layers", True),
    (["--discard-unpacked-layers=false"], "discard_unpacked_layers", False),
    (["--address", "/run/c.sock"], "address", "/run/c.sock"),
    (["--namespace", "k8s.io"], "namespace", "k8s.io"),
    (["--data-root", "/tmp/x"], "data_root", "/tmp/x"),
    (["--ready-url", "http://localhost:8000/health"], "ready_url", "http://localhost:8000/health"),
    (["--ready-port", "8000"], "ready_port", 8000),
    (["--ready-timeout", "1m30s"], "ready_timeout", 90.0),
    (["--watch"], "watch", True),
    (["--debug"], "debug", True),
    (["--log-driver", "json-file", "--log-opt", "max-size=10k"], "log_max_size", 10 * 1024),
]


@pytest.mark.parametrize(("flags", "attr", "expected"), SUPPORTED, ids=[" ".join(r[0]) for r in SUPPORTED])
def test_supported_flag(flags: list[str], attr: str, expected: Any) -> None:
    opts = parse(*flags, "img", "cmd")
    assert getattr(opts, attr) == expected
    assert opts.image == "img" and opts.command == ["cmd"]


def test_every_supported_flag_has_a_row() -> None:
    covered = {arg.split("=")[0].lstrip("-") for row in SUPPORTED for arg in row[0] if arg.startswith("--")}
    covered.add("env-file")  # needs a file: test_env_without_value_comes_from_our_environment_and_env_file_is_read
    names = {f.name for f in FLAGS} - {"help"}
    assert names - covered == set()


def test_flags_stop_at_image_and_a_double_dash_after_it_is_dropped() -> None:
    opts = parse("--rm", "img", "--", "ls", "-l", "--rm")
    assert opts.rm and opts.image == "img" and opts.command == ["ls", "-l", "--rm"]
    opts = parse("img", "-it", "x")
    assert not opts.tty and opts.command == ["-it", "x"]
    opts = parse("--", "img", "a")
    assert opts.image == "img" and opts.command == ["a"]


def test_bundled_short_flags() -> None:
    opts = parse("-itd", "img")
    assert opts.interactive and opts.tty and opts.detach
    opts = parse("-dp", "8080:80", "img")
    assert opts.detach and opts.publish == [PortMapping("", 8080, 80)]
    opts = parse("-itePATH=/x", "img")
    assert opts.tty and opts.env == ["PATH=/x"]


def test_env_without_value_comes_from_our_environment_and_env_file_is_read() -> None:
    opts = parse("-e", "HOME", "-e", "MISSING", "--env-file", "f", "img",
                 env={"HOME": "/root", "FROMHOST": "h"},
                 files={"f": "# comment\nA=1\n\nFROMHOST\nB=x=y\n"})  # fmt: skip
    assert opts.env == ["A=1", "FROMHOST=h", "B=x=y", "HOME=/root"]


def test_help_needs_no_image_and_lists_the_flags() -> None:
    assert parse("--help").help
    text = help_text()
    assert "--gpus" in text and "-h, --hostname" in text and "--health-cmd" in text


def _err(*argv: str, files: dict[str, str] | None = None) -> UsageError:
    with pytest.raises(UsageError) as info:
        parse(*argv, files=files)
    assert info.value.exit_code == 125
    return info.value


BAD: list[tuple[list[str], str]] = [
    (["--bogus", "img"], "unknown flag: --bogus"),
    (["-z", "img"], "unknown shorthand flag: 'z' in -z"),
    (["--name"], "flag needs an argument: --name"),
    (["-e"], "flag needs an argument: 'e' in -e"),
    ([], '"socirun run" requires at least 1 argument'),
    (["--rm=maybe", "img"], 'invalid argument "maybe" for "--rm" flag: strconv.ParseBool'),
    (["-p", "80:abc", "img"], 'invalid argument "80:abc" for "-p, --publish" flag: invalid containerPort: abc'),
    (["-p", "x:80", "img"], "invalid hostPort: x"),
    (["-p", "80/xyz", "img"], "invalid proto: xyz"),
    (["-p", "1.2.3:80:80", "img"], "invalid ip address: 1.2.3"),
    (["-p", "3000-3002:80-81", "img"], "invalid ranges specified for container and host Ports"),
    (["-p", "70000", "img"], "invalid containerPort: 70000"),
    (["--ulimit", "nofile", "img"], "invalid ulimit argument: nofile"),
    (["--ulimit", "bogus=1", "img"], "invalid ulimit type: bogus"),
    (["--ulimit", "nofile=2:1", "img"], "ulimit soft limit must be less than or equal to hard limit: 2 > 1"),
    (["--ulimit", "nofile=1:2:3", "img"], "too many limit value arguments"),
    (["--ulimit", "nofile=abc", "img"], 'strconv.ParseInt: parsing "abc": invalid syntax'),
    (["-m", "lots", "img"], 'invalid argument "lots" for "-m, --memory" flag: invalid size: \'lots\''),
    (["-m", "1k", "img"], "Minimum memory limit allowed is 6MB"),
    (["--shm-size", "12q", "img"], "invalid suffix: 'q'"),
    (["--cpus", "two", "img"], "failed to parse two as a rational number"),
    (["--gpus", "bogus=1", "img"], "unexpected key 'bogus' in 'bogus=1'"),
    (["--gpus", "two", "img"], 'invalid count (two): value must be either "all" or an integer'),
    (["--gpus", "driver=amd", "img"], 'invalid driver "amd": "nvidia" is only supported'),
    (["--gpus", "count=1,count=2", "img"], "gpu request key 'count' can be specified only once"),
    (["--gpus", 'count=1,"device=0,1"', "img"], "cannot set both Count and DeviceIDs on device request"),
    (["--gpus", "all", "--gpus", "1", "img"], "--gpus can be given only once"),
    (["--pull", "sometimes", "img"],
     "invalid pull option: 'sometimes': must be one of \"always\", \"missing\" or \"never\""),
    (["--name", "-bad", "img"], "Invalid container name (-bad)"),
    (["-v", "/h:rel", "img"], "invalid mount path: 'rel' mount path must be absolute"),
    (["-v", "/h:/", "img"], "destination can't be '/'"),
    (["-v", "/h:/c:rx", "img"], "invalid mode: rx"),
    (["-v", "a::b", "img"], "invalid mode: b"),
    (["-v", ":/x", "img"], "invalid volume specification: ':/x'"),
    (["--mount", "type=bind,dst=/x", "img"], 'invalid mount config for type "bind": field Source must not be empty'),
    (["--mount", "src=v", "img"], 'invalid mount config for type "volume": field Target must not be empty'),
    (["--mount", "type=image,dst=/x", "img"], "mount type 'image' is not supported by socirun"),
    (["--mount", "bogus=1,dst=/x", "img"], "unknown option 'bogus' in 'bogus=1'"),
    (["--tmpfs", "rel", "img"], "invalid tmpfs destination"),
    (["--device", "rel", "img"], "invalid device specification: rel"),
    (["--device", "/dev/a:/dev/b:rx", "img"], "invalid device specification"),
    (["--add-host", "nohost", "img"], 'bad format for add-host: "nohost"'),
    (["--add-host", "h:notip", "img"], 'invalid IP address in add-host: "notip"'),
    (["--dns", "x.y", "img"], "IP address is not correctly formatted: x.y"),
    (["--cap-add", "FLY", "img"], 'unknown capability: "CAP_FLY"'),
    (["--ipc", "weird", "img"], "invalid IPC mode"),
    (["--network", "mynet", "img"], 'network "mynet" is not supported'),
    (["--network", "host", "--network", "none", "img"], "only one --network is supported"),
    (["--network", "host", "-p", "80:80", "img"], "-p/--publish needs the bridge network"),
    (["--restart", "always", "img"], "--restart=always is not supported"),
    (["--restart", "sometimes", "img"], "invalid restart policy: unknown policy 'sometimes'"),
    (["--stop-signal", "SIGFOO", "img"], "invalid signal: SIGFOO"),
    (["--stop-timeout", "soon", "img"], 'invalid argument "soon" for "--stop-timeout" flag'),
    (["-w", "rel", "img"], "the working directory must be an absolute path"),
    (["-l", "nerdctl/name=x", "img"], 'internal label "nerdctl/name" must not be specified manually'),
    (["--pid", "container:x", "img"], "only --pid=host is supported"),
    (["--security-opt", "systempaths=unconfined", "img"], "--security-opt systempaths=unconfined is not supported"),
    (["--security-opt", "seccomp", "img"], 'Invalid --security-opt: "seccomp"'),
    (["--security-opt", "apparmor=", "img"], 'Invalid --security-opt: "apparmor="'),
    (["-v", "data:/dev", "img"], "/dev is the kernel's dev filesystem in every container"),
    (["-v", "/srv/fake:/sys/", "img"], "only the host's own /sys can be mounted there (-v /sys:/sys)"),
    (["--mount", "type=volume,target=/proc", "img"], "/proc is the kernel's proc filesystem"),
    (["--tmpfs", "/dev", "img"], "/dev is the kernel's dev filesystem"),
    (["--progress", "fancy", "img"], "must be one of auto, tty, plain, json, quiet"),
    (["--pull-mode", "fast", "img"], "must be one of auto, lazy, parallel, parallel-stream, standard"),
    (["--env-file", "missing", "img"], "open missing: no such file or directory"),
    (["--sysctl", "novalue", "img"], "sysctl 'novalue' is not allowed"),
]


@pytest.mark.parametrize(("argv", "message"), BAD, ids=[" ".join(r[0]) or "empty" for r in BAD])
def test_bad_input_is_refused_with_a_docker_style_sentence(argv: list[str], message: str) -> None:
    assert message in _err(*argv).message


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_flags_name_the_flag_and_say_why(name: str) -> None:
    err = _err(f"--{name}", "x", "img")
    assert f"--{name} is not supported by socirun" in err.message and REFUSED[name] in err.message


@pytest.mark.parametrize(("short", "long"), [("-a", "attach"), ("-P", "publish-all"), ("-c", "cpu-shares")])
def test_refused_short_flags_name_the_long_flag(short: str, long: str) -> None:
    assert f"--{long} is not supported" in _err(short, "x", "img").message


def test_env_file_with_whitespace_in_a_key_is_refused() -> None:
    assert "contains whitespaces" in _err("--env-file", "f", "img", files={"f": "BAD KEY=1\n"}).message
