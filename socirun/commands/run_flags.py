"""The docker-run flag model and parser (pure: no I/O except reading --env-file / --label-file contents,
which the caller passes in through `read_file`).

docker's rules (https://github.com/docker/cli/blob/master/cli/command/container/run.go): flags stop at IMAGE,
everything after it belongs to the
container, and a `--` right after IMAGE is dropped; flags repeat; short flags bundle (`-itd`, `-it`, `-dp 80:80`);
`--flag=value` and `--flag value`; bools take `--rm=false`; the comma splitting of nerdctl's StringSlice flags;
`--help` only (`-h` is `--hostname`). A docker flag socirun does not support is refused with a sentence naming
it (exit 125), never ignored. Bad values get docker's `invalid argument "V" for "F" flag: why` sentence.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from socirun.config import PROGRESS_MODES
from socirun.decide.facts import PULL_MODES
from socirun.errors import UsageError
from socirun.runtime.options import (
    CAPABILITIES,
    DEFAULT_RUNTIME,
    PULL_POLICIES,
    SIGNALS,
    DeviceSpec,
    GpuRequest,
    PortMapping,
    RunOptions,
    Ulimit,
    VolumeSpec,
)
from socirun.runtime.spec import kernel_fs_mount_problem

HELP_HINT = "See 'socirun run --help'."
# Matched with fullmatch: `^…$` would also accept a trailing newline ("web\n").
NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
VOLUME_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
CDI_DEVICE_RE = re.compile(r"[a-zA-Z0-9.-]+/[a-zA-Z0-9_.-]+=[a-zA-Z0-9_.:-]+")

ULIMITS = (
    "as", "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile", "nproc", "rss",
    "rtprio", "rttime", "sigpending", "stack",
)  # fmt: skip
Kind = Literal["bool", "string", "array", "slice"]


@dataclass(frozen=True)
class Flag:
    name: str
    kind: Kind
    short: str = ""
    aliases: tuple[str, ...] = ()
    help: str = ""

    @property
    def dest(self) -> str:
        """The RunOptions field a bool flag sets (as argparse's dest: dashes become underscores)."""
        return self.name.replace("-", "_")

    @property
    def label(self) -> str:
        """How docker names the flag in messages: `-p, --publish` or `--rm`."""
        return f"-{self.short}, --{self.name}" if self.short else f"--{self.name}"


FLAGS: tuple[Flag, ...] = (
    Flag("detach", "bool", "d", help="Run container in background and print container ID"),
    Flag("interactive", "bool", "i", help="Keep STDIN open even if not attached"),
    Flag("tty", "bool", "t", help="Allocate a pseudo-TTY"),
    Flag("rm", "bool", help="Automatically remove the container and its anonymous volumes when it exits"),
    Flag("name", "string", help="Assign a name to the container"),
    Flag("env", "array", "e", help="Set environment variables"),
    Flag("env-file", "slice", help="Read in a file of environment variables"),
    Flag("volume", "array", "v", help="Bind mount a volume"),
    Flag("mount", "array", help="Attach a filesystem mount to the container"),
    Flag("publish", "slice", "p", help="Publish a container's port(s) to the host"),
    Flag("network", "slice", aliases=("net",), help="Network: bridge, host, none or container:<c>"),
    Flag("ipc", "string", help="IPC mode to use (host|private|shareable|container:<c>)"),
    Flag("gpus", "array", help="GPU devices to add to the container ('all' to pass all GPUs)"),
    Flag("shm-size", "string", help="Size of /dev/shm (default 64MB)"),
    Flag("entrypoint", "string", help="Overwrite the default ENTRYPOINT of the image"),
    Flag("workdir", "string", "w", help="Working directory inside the container"),
    Flag("user", "string", "u", help="Username or UID (format: <name|uid>[:<group|gid>])"),
    Flag("privileged", "bool", help="Give extended privileges to this container"),
    Flag("cap-add", "slice", help="Add Linux capabilities"),
    Flag("cap-drop", "slice", help="Drop Linux capabilities"),
    Flag("ulimit", "slice", help="Ulimit options"),
    Flag("pull", "string", help='Pull image before running ("always", "missing", "never")'),
    Flag("platform", "string", help="Set platform if server is multi-platform capable"),
    Flag("label", "array", "l", help="Set meta data on a container"),
    Flag("hostname", "string", "h", help="Container host name"),
    Flag("device", "slice", help="Add a host device to the container"),
    Flag("init", "bool", help="Run an init inside the container that forwards signals and reaps processes"),
    Flag("read-only", "bool", help="Mount the container's root filesystem as read only"),
    Flag("tmpfs", "array", help="Mount a tmpfs directory"),
    Flag("add-host", "slice", help="Add a custom host-to-IP mapping (host:ip)"),
    Flag("dns", "slice", help="Set custom DNS servers"),
    Flag("dns-search", "slice", help="Set custom DNS search domains"),
    Flag("dns-option", "slice", aliases=("dns-opt",), help="Set DNS options"),
    Flag("group-add", "slice", help="Add additional groups to join"),
    Flag("cpus", "string", help="Number of CPUs"),
    Flag("memory", "string", "m", help="Memory limit"),
    Flag("stop-signal", "string", help="Signal to stop the container"),
    Flag("stop-timeout", "string", help="Timeout (in seconds) to stop a container"),
    Flag("sig-proxy", "bool", help="Proxy received signals to the process (default true)"),
    Flag("cidfile", "string", help="Write the container ID to the file"),
    Flag("restart", "string", help='Restart policy to apply when a container exits (only "no")'),
    Flag("runtime", "string", help="Runtime to use for this container"),
    Flag("quiet", "bool", "q", help="Suppress the pull output"),
    Flag("pid", "string", help="PID namespace to use (host)"),
    Flag("uts", "string", help="UTS namespace to use (host)"),
    Flag("sysctl", "array", help="Sysctl options"),
    Flag("pids-limit", "string", help="Tune container pids limit (-1 for unlimited)"),
    Flag("security-opt", "array", help="seccomp=unconfined|PATH, apparmor=PROFILE, no-new-privileges"),
    Flag("help", "bool", help="Print usage"),
    # socirun's own (nerdctl's global flags, accepted after `run` too).
    Flag("snapshotter", "string", aliases=("storage-driver",), help="containerd snapshotter (default overlayfs)"),
    Flag("progress", "string", help="Pull progress: auto|tty|plain|json|quiet"),
    Flag("pull-mode", "string", help="How a missing image is pulled: auto|lazy|parallel|standard"),
    Flag("address", "string", help="containerd address (env CONTAINERD_ADDRESS)"),
    Flag("namespace", "string", help="containerd namespace (env CONTAINERD_NAMESPACE)"),
    Flag("data-root", "string", help="socirun's state: volumes, containers, CNI (env SOCIRUN_DATA_ROOT)"),
    Flag("debug", "bool", help="Print tracebacks on errors"),
)

# docker / nerdctl run flags socirun refuses, with the reason given to the user.
REFUSED: dict[str, str] = {
    "attach": "all streams are always attached in the foreground; use -d to detach",
    "publish-all": "publish the ports you need with -p",
    "expose": "publish the ports you need with -p",
    "detach-keys": "detaching from a running foreground container is not supported",
    "restart-policy": "",
    "blkio-weight": "block-I/O limits are not supported",
    "blkio-weight-device": "block-I/O limits are not supported",
    "device-read-bps": "block-I/O limits are not supported",
    "device-read-iops": "block-I/O limits are not supported",
    "device-write-bps": "block-I/O limits are not supported",
    "device-write-iops": "block-I/O limits are not supported",
    "cgroup-parent": "containers always use the /<namespace>/<id> cgroup",
    "cgroupns": "the cgroup namespace is left to runc's default",
    "cgroup-conf": "cgroup v2 key=value settings are not supported",
    "cpu-period": "use --cpus",
    "cpu-quota": "use --cpus",
    "cpu-rt-period": "real-time CPU scheduling is not supported",
    "cpu-rt-runtime": "real-time CPU scheduling is not supported",
    "cpu-shares": "use --cpus",
    "cpuset-cpus": "CPU pinning is not supported yet",
    "cpuset-mems": "memory-node pinning is not supported",
    "device-cgroup-rule": "use --device for each device",
    "disable-content-trust": "content trust is not part of socirun",
    "domainname": "only --hostname is supported",
    "health-cmd": "health checks need a daemon, which socirun does not have",
    "health-interval": "health checks need a daemon, which socirun does not have",
    "health-retries": "health checks need a daemon, which socirun does not have",
    "health-timeout": "health checks need a daemon, which socirun does not have",
    "health-start-period": "health checks need a daemon, which socirun does not have",
    "health-start-interval": "health checks need a daemon, which socirun does not have",
    "no-healthcheck": "health checks need a daemon, which socirun does not have",
    "ip": "static addresses are not supported; the bridge network assigns one",
    "ip6": "IPv6 container addresses are not supported",
    "isolation": "only the default isolation exists on Linux",
    "kernel-memory": "deprecated by docker and not supported",
    "link": "legacy links are not supported; use --add-host",
    "link-local-ip": "link-local addresses are not supported",
    "log-driver": "foreground output goes to your terminal; -d output goes to the state directory's log file",
    "log-opt": "logging drivers are not supported",
    "mac-address": "MAC addresses are assigned by the bridge plugin",
    "memory-reservation": "use -m/--memory",
    "memory-swap": "use -m/--memory",
    "memory-swappiness": "use -m/--memory",
    "network-alias": "network aliases need user-defined networks, which are not supported",
    "net-alias": "network aliases need user-defined networks, which are not supported",
    "oom-kill-disable": "not supported",
    "oom-score-adj": "not supported",
    "storage-opt": "snapshot size options are not supported",
    "userns": "user namespaces are not supported",
    "volume-driver": "only local volumes exist",
    "volumes-from": "not supported; name the volumes with -v",
    "use-api-socket": "there is no docker API socket",
    "label-file": "use -l/--label",
    "annotation": "OCI annotations are not supported",
    "systemd": "systemd mode is not supported",
    "umask": "not supported",
    "rootfs": "run an image instead of an exploded rootfs",
    "pidfile": "not supported",
    "rdt-class": "not supported",
    "verify": "image signature verification is not supported",
    "cosign-key": "image signature verification is not supported",
    "ipfs-address": "IPFS is not supported",
    "init-binary": "--init uses the host's tini or docker-init",
    "log-driver-opt": "",
    "health": "",
}
REFUSED = {k: v for k, v in REFUSED.items() if v}
REFUSED_SHORT = {"a": "attach", "P": "publish-all", "c": "cpu-shares"}

_BY_NAME: dict[str, Flag] = {}
for _f in FLAGS:
    _BY_NAME[_f.name] = _f
    for _alias in _f.aliases:
        _BY_NAME[_alias] = _f
_BY_SHORT: dict[str, Flag] = {f.short: f for f in FLAGS if f.short}


# ------------------------------------------------------------------------------------------------ errors


def _bad(value: str, flag: Flag, why: str) -> UsageError:
    return UsageError(f'invalid argument "{value}" for "{flag.label}" flag: {why}. {HELP_HINT}')


class _ValueError(Exception):
    """A value that does not parse; the parser wraps it in docker's `invalid argument` sentence."""


# ------------------------------------------------------------------------------------------------ value parsers

# ASCII digits only: Python's \d also takes other scripts' digits (int() reads them, Go's ParseFloat does not).
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([kKmMgGtTpP]?)[iI]?[bB]?", re.ASCII)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
INT64_MAX = (1 << 63) - 1  # docker keeps sizes, counts and nano-CPUs in int64s
ID_MAX = (1 << 32) - 1  # uid_t / gid_t


def parse_ram_size(text: str) -> int:
    """docker's units.RAMInBytes: `64m`, `1g`, `512`, `1.5GiB` (binary units); error `invalid size: 'x'`."""
    m = _SIZE_RE.fullmatch(text.strip())
    if not m:
        raise _ValueError(f"invalid size: '{text}'")
    size = float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    if not size < INT64_MAX:  # also inf: 400 digits parse to a float infinity
        raise _ValueError(f"invalid size: '{text}': value out of range")
    return int(size)


def _parse_bool(text: str) -> bool:
    if text in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if text in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise _ValueError(f'strconv.ParseBool: parsing "{text}": invalid syntax')


_INT_RE = re.compile(r"[+-]?[0-9]+")


def _parse_int(text: str) -> int:
    """Go's strconv.ParseInt(text, 10, 64): ASCII digits, an optional sign, within int64."""
    if not _INT_RE.fullmatch(text):
        raise _ValueError(f'strconv.ParseInt: parsing "{text}": invalid syntax')
    if len(text) > 20 or not -INT64_MAX - 1 <= int(text) <= INT64_MAX:  # (20: int() refuses 4300+ digits)
        raise _ValueError(f'strconv.ParseInt: parsing "{text}": value out of range')
    return int(text)


def _port_range(text: str, what: str) -> tuple[int, int]:
    start, sep, end = text.partition("-")
    try:
        lo = int(start)
        hi = int(end) if sep else lo
    except ValueError:
        raise _ValueError(f"invalid {what}: {text}") from None
    if not (0 <= lo <= 65535 and 0 <= hi <= 65535) or hi < lo or (what == "containerPort" and lo == 0):
        raise _ValueError(f"invalid {what}: {text}")
    return lo, hi


def parse_publish(text: str) -> list[PortMapping]:
    """`[ip:][hostPort:]containerPort[/proto]` with ranges and bracketed IPv6 literals (nerdctl's ParseFlagP)."""
    spec, _, proto = text.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp", "sctp"):
        raise _ValueError(f"invalid proto: {proto}")
    host_ip = ""
    rest = spec
    if spec.startswith("["):
        close = spec.find("]")
        if close < 0 or spec[close + 1 : close + 2] != ":":
            raise _ValueError(f"invalid ip address: {spec}")
        host_ip, rest = spec[1:close], spec[close + 2 :]
    else:
        parts = spec.split(":")
        if len(parts) > 3:
            raise _ValueError(f"invalid port format: {text}")
        if len(parts) == 3:
            host_ip, rest = parts[0], ":".join(parts[1:])
    if host_ip:
        try:
            ipaddress.ip_address(host_ip)
        except ValueError:
            raise _ValueError(f"invalid ip address: {host_ip}") from None
    host_part, sep, container_part = rest.rpartition(":")
    if not sep:
        host_part, container_part = "", rest
    c_lo, c_hi = _port_range(container_part, "containerPort")
    if host_part == "":
        return [PortMapping(host_ip, 0, port, proto) for port in range(c_lo, c_hi + 1)]
    h_lo, h_hi = _port_range(host_part, "hostPort")
    if c_lo == c_hi and h_lo != h_hi:
        # docker: one container port with a host range takes the first host port of the range.
        return [PortMapping(host_ip, h_lo, c_lo, proto)]
    if (h_hi - h_lo) != (c_hi - c_lo):
        raise _ValueError("invalid ranges specified for container and host Ports")
    return [PortMapping(host_ip, h_lo + i, c_lo + i, proto) for i in range(c_hi - c_lo + 1)]


def parse_ulimit(text: str) -> Ulimit:
    """docker's units.ParseUlimit: `name=soft[:hard]`."""
    name, sep, values = text.partition("=")
    if not sep:
        raise _ValueError(f"invalid ulimit argument: {text}")
    if name not in ULIMITS:
        raise _ValueError(f"invalid ulimit type: {name}")
    parts = values.split(":")
    if len(parts) > 2:
        raise _ValueError(f"too many limit value arguments - {values}, can only have up to two, `soft[:hard]`")
    soft = _parse_int(parts[0])
    hard = _parse_int(parts[1]) if len(parts) == 2 else soft
    if soft > hard and hard != -1:
        raise _ValueError(f"ulimit soft limit must be less than or equal to hard limit: {soft} > {hard}")
    return Ulimit(name, soft, hard)


def _csv_fields(text: str) -> list[str]:
    """One CSV record (Go encoding/csv): commas split fields, double quotes protect commas inside a field."""
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    i = 0
    while i < len(text):
        ch = text[i]
        if quoted:
            if ch == '"' and text[i + 1 : i + 2] == '"':
                cur.append('"')
                i += 1
            elif ch == '"':
                quoted = False
            else:
                cur.append(ch)
        elif ch == '"':
            quoted = True
        elif ch == ",":
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    if quoted:
        raise _ValueError(f'extraneous or missing " in quoted-field: {text}')
    out.append("".join(cur))
    return out


def parse_gpus(text: str) -> GpuRequest:
    """docker's `--gpus` grammar (opts/gpus.go) with nerdctl's driver rule."""
    seen: set[str] = set()
    count: int | None = None
    devices: tuple[str, ...] = ()
    caps: tuple[str, ...] = ()
    driver = ""
    options: list[tuple[str, str]] = []
    for fld in _csv_fields(text):
        key, sep, value = fld.partition("=")
        if not sep:
            key, value = "count", fld
        if key in seen:
            raise _ValueError(f"gpu request key '{key}' can be specified only once")
        seen.add(key)
        match key:
            case "count":
                if value == "all":
                    count = -1
                else:
                    try:
                        count = int(value)
                    except ValueError:
                        raise _ValueError(
                            f'invalid count ({value}): value must be either "all" or an integer'
                        ) from None
                    if count < 0:
                        raise _ValueError(f'invalid count ({value}): value must be either "all" or an integer')
            case "device":
                devices = tuple(d for d in value.split(",") if d)
                if not devices:
                    raise _ValueError(f"empty device list in '{text}'")
            case "capabilities":
                caps = tuple(c for c in value.split(",") if c)
            case "driver":
                if value != "nvidia":
                    raise _ValueError(f'invalid driver "{value}": "nvidia" is only supported')
                driver = value
            case "options":
                for opt in value.split(","):
                    k, _, v = opt.partition("=")
                    options.append((k, v))
            case _:
                raise _ValueError(f"unexpected key '{key}' in '{text}'")
    if count is not None and devices:
        raise _ValueError("cannot set both Count and DeviceIDs on device request")
    if count is None and not devices:
        count = 1
    return GpuRequest(count=count or 0, device_ids=devices, capabilities=caps, driver=driver, options=tuple(options))


_VOLUME_MODES = {"ro", "rw", "rro", "z", "Z", "bind", "rbind", "private", "rprivate", "shared", "rshared",
                 "slave", "rslave", "nocopy"}  # fmt: skip


def parse_volume(text: str) -> VolumeSpec:
    """-v `src:dst[:mode]` or `dst` (anonymous); a src matching the volume-name rule is a named volume."""
    parts = text.lstrip(":").split(":")
    if any(p == "" for p in parts) or len(parts) > 3:
        raise _ValueError(f"invalid volume specification: '{text}'")
    if len(parts) == 1:
        src, dst, mode = "", parts[0], ""
    elif len(parts) == 2:
        src, dst, mode = parts[0], parts[1], ""
    else:
        src, dst, mode = parts
    if not dst.startswith("/"):
        raise _ValueError(f"invalid volume specification: '{text}': destination must be an absolute path")
    if dst == "/":
        raise _ValueError("invalid specification: destination can't be '/'")
    opts = [m for m in mode.split(",") if m] if mode else []
    for opt in opts:
        if opt not in _VOLUME_MODES:
            raise _ValueError(f"invalid mode: {opt}")
    if len(set(opts)) != len(opts):
        raise _ValueError(f"duplicate mode in '{mode}'")
    readonly = "ro" in opts or "rro" in opts
    extra = tuple(o for o in opts if o in ("private", "rprivate", "shared", "rshared", "slave", "rslave", "bind"))
    if src and not VOLUME_NAME_RE.fullmatch(src):
        # docker's rule: a bind source is absolute or starts with "." (made absolute); anything else is a volume
        # name, and one that does not fit the pattern ("vol\n", "dir/sub") is refused, not bound from the cwd.
        if not src.startswith(("/", ".")):
            raise _ValueError(f'"{src}" includes invalid characters for a local volume name, only '
                              '"[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you intended to pass a host directory, '
                              "use absolute path")  # fmt: skip
        return VolumeSpec("bind", src, dst, readonly, extra)
    return VolumeSpec("volume", src, dst, readonly, ())


def parse_mount(text: str) -> VolumeSpec:
    """--mount type=bind|volume|tmpfs,source=,target=,readonly,bind-propagation=,tmpfs-size=,tmpfs-mode="""
    kind = "volume"
    source = target = ""
    readonly = False
    options: list[str] = []
    for fld in _csv_fields(text):
        key, sep, value = fld.partition("=")
        key = key.strip().lower()
        if not sep and key not in ("readonly", "ro"):
            raise _ValueError(f"invalid field '{fld}' must be a key=value pair")
        match key:
            case "type":
                if value not in ("bind", "volume", "tmpfs"):
                    raise _ValueError(f"invalid mount type {value!r}: only bind, volume and tmpfs are supported")
                kind = value
            case "source" | "src":
                source = value
            case "target" | "destination" | "dst":
                target = value
            case "readonly" | "ro":
                readonly = _parse_bool(value) if sep else True
            case "bind-propagation":
                if value not in ("private", "rprivate", "shared", "rshared", "slave", "rslave"):
                    raise _ValueError(f"invalid bind-propagation: {value}")
                options.append(value)
            case "tmpfs-size":
                options.append(f"size={parse_ram_size(value)}")
            case "tmpfs-mode":
                try:
                    options.append(f"mode={int(value, 8):o}")
                except ValueError:
                    raise _ValueError(f"invalid tmpfs-mode: {value}") from None
            case "volume-nocopy" | "consistency" | "bind-recursive" | "bind-nonrecursive":
                pass  # no effect on Linux with a local driver
            case _:
                raise _ValueError(f"unexpected key '{key}' in '{fld}'")
    if not target:
        raise _ValueError("target is required")
    if not target.startswith("/") or target == "/":
        raise _ValueError(f"invalid mount target {target!r}: must be an absolute path other than /")
    if kind == "bind" and not source:
        raise _ValueError("source is required when specifying bind mount")
    if kind == "tmpfs" and source:
        raise _ValueError("source is not supported for tmpfs mounts")
    if kind == "volume" and source and not VOLUME_NAME_RE.fullmatch(source):
        raise _ValueError(f"invalid volume name {source!r}")
    return VolumeSpec(kind, source, target, readonly, tuple(options))  # type: ignore[arg-type]


def parse_tmpfs(text: str) -> VolumeSpec:
    dst, _, opts = text.partition(":")
    if not dst.startswith("/") or dst == "/":
        raise _ValueError(f"invalid tmpfs destination {dst!r}: must be an absolute path other than /")
    return VolumeSpec("tmpfs", "", dst, False, tuple(o for o in opts.split(",") if o))


def parse_device(text: str) -> DeviceSpec:
    if CDI_DEVICE_RE.fullmatch(text):
        return DeviceSpec("", "", "rwm", cdi_name=text)
    parts = text.split(":")
    if len(parts) > 3 or not parts[0].startswith("/"):
        raise _ValueError(f"invalid device specification: {text}")
    host = parts[0]
    dst = host
    perms = "rwm"
    if len(parts) == 2:
        if parts[1] and set(parts[1]) <= set("rwm"):
            perms = parts[1]
        else:
            dst = parts[1]
    elif len(parts) == 3:
        dst, perms = parts[1], parts[2]
    if not dst.startswith("/") or not perms or not set(perms) <= set("rwm"):
        raise _ValueError(f"invalid device specification: {text}")
    return DeviceSpec(host, dst, perms)


def parse_add_host(text: str) -> tuple[str, str]:
    # docker 25+ accepts host=ip as well as host:ip (the IPv6 forms need the = or brackets).
    if "=" in text:
        host, _, ip = text.partition("=")
    else:
        host, _, ip = text.partition(":")
    ip = ip.strip("[]")
    if not host or not ip:
        raise _ValueError(f'bad format for add-host: "{text}"')
    if ip != "host-gateway":
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise _ValueError(f'invalid IP address in add-host: "{ip}"') from None
    return host, ip


def normalize_capability(name: str) -> str:
    upper = name.strip().upper()
    if upper == "ALL":
        return "ALL"
    cap = upper if upper.startswith("CAP_") else f"CAP_{upper}"
    if cap not in CAPABILITIES:
        raise _ValueError(f'unknown capability: "{cap}"')
    return cap


def parse_signal(text: str) -> str:
    """`SIGTERM`, `TERM` or `15` → the SIG name."""
    if text.isdigit():  # also "²", which int() refuses: isdecimal and isascii together are 0-9
        number = int(text) if text.isascii() and len(text) < 20 else None
        for name, num in SIGNALS.items():
            if num == number:
                return f"SIG{name}"
        raise _ValueError(f"invalid signal: {text}")
    name = text.upper().removeprefix("SIG")
    if name not in SIGNALS:
        raise _ValueError(f"invalid signal: {text}")
    return f"SIG{name}"


def parse_user(text: str) -> str:
    """`-u name|uid[:group|gid]`, kept as given (names are looked up in the image's passwd and group files when
    the container is made), but a part that reads as a number must be a uid_t / gid_t in the digits 0-9: the
    lookup takes any str.isdigit() part ("²" too) for a number."""
    for part in text.split(":", 1):
        check_id(part)
    return text


def check_id(part: str) -> None:
    """A user or group part of -u or --group-add: a name, or a number that fits a uid_t / gid_t."""
    if not part.isdigit():
        return
    if not part.isascii():
        raise _ValueError(f"'{part}' is neither a name nor a number in the digits 0-9")
    if len(part) > 10 or int(part) > ID_MAX:
        raise _ValueError(f"id {part} is out of range (at most {ID_MAX})")


def parse_env_file(text: str, path: str, environ: Mapping[str, str]) -> list[str]:
    """docker's env file: KEY=VALUE lines, `#` comments, a bare KEY takes the value from our environment."""
    out: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.lstrip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not key or any(c.isspace() for c in key):
            raise UsageError(f"invalid env file {path} line {number}: variable '{key}' contains whitespaces")
        if sep:
            out.append(f"{key}={value}")
        elif key in environ:
            out.append(f"{key}={environ[key]}")
    return out


def _expand_env(item: str, environ: Mapping[str, str]) -> list[str]:
    key, sep, _ = item.partition("=")
    if sep:
        return [item]
    return [f"{key}={environ[key]}"] if key in environ else []


# ------------------------------------------------------------------------------------------------ argv walking


def _refuse(name: str) -> UsageError:
    return UsageError(f"the flag --{name} is not supported by socirun: {REFUSED[name]}. {HELP_HINT}")


def split_argv(argv: Sequence[str]) -> tuple[list[tuple[Flag, str | None]], list[str]]:
    """Walk argv like pflag with interspersed=false: (flag, raw value) pairs, then [IMAGE, ARG...]."""
    pairs: list[tuple[Flag, str | None]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest = list(argv[i + 1 :])
            return pairs, rest
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            if name in REFUSED:
                raise _refuse(name)
            flag = _BY_NAME.get(name)
            if flag is None:
                raise UsageError(f"unknown flag: --{name}. {HELP_HINT}")
            if flag.kind == "bool":
                pairs.append((flag, value if eq else None))
            elif eq:
                pairs.append((flag, value))
            else:
                if i + 1 >= len(argv):
                    raise UsageError(f"flag needs an argument: --{name}. {HELP_HINT}")
                i += 1
                pairs.append((flag, argv[i]))
        elif arg.startswith("-") and len(arg) > 1:
            j = 1
            while j < len(arg):
                ch = arg[j]
                if ch in REFUSED_SHORT:
                    raise _refuse(REFUSED_SHORT[ch])
                flag = _BY_SHORT.get(ch)
                if flag is None:
                    raise UsageError(f"unknown shorthand flag: '{ch}' in {arg}. {HELP_HINT}")
                if flag.kind == "bool":
                    if arg[j + 1 : j + 2] == "=":
                        pairs.append((flag, arg[j + 2 :]))
                        break
                    pairs.append((flag, None))
                    j += 1
                    continue
                attached = arg[j + 1 :]
                if attached:
                    pairs.append((flag, attached.removeprefix("=")))
                else:
                    if i + 1 >= len(argv):
                        raise UsageError(f"flag needs an argument: '{ch}' in {arg}. {HELP_HINT}")
                    i += 1
                    pairs.append((flag, argv[i]))
                break
        else:
            rest = list(argv[i:])
            if len(rest) > 1 and rest[1] == "--":
                del rest[1]
            return pairs, rest
        i += 1
    return pairs, []


def _values(flag: Flag, raw: str) -> list[str]:
    if flag.kind == "slice":
        return [v for v in _csv_fields(raw)] if raw else [""]
    return [raw]


def parse_run_args(
    argv: Sequence[str],
    *,
    environ: Mapping[str, str] = os.environ,
    read_file: Callable[[str], str] | None = None,
) -> RunOptions:
    """argv after `run` (or after the global flags of a bare `socirun IMAGE`) → validated RunOptions."""
    pairs, rest = split_argv(argv)
    opts = _Draft()
    env_files: list[str] = []
    env_flags: list[str] = []
    networks: list[str] = []
    gpus: list[str] = []
    for flag, raw in pairs:
        if flag.kind == "bool":
            try:
                value = True if raw is None else _parse_bool(raw)
            except _ValueError as err:
                raise _bad(raw or "", flag, str(err)) from None
            setattr(opts, flag.dest, value)
            continue
        assert raw is not None
        try:
            items = _values(flag, raw)  # a slice flag's CSV can be malformed too: docker's same sentence
        except _ValueError as err:
            raise _bad(raw, flag, str(err)) from None
        for item in items:
            try:
                _apply(opts, flag, item, env_files, env_flags, networks, gpus)
            except _ValueError as err:
                raise _bad(item, flag, str(err)) from None
    if opts.help:
        return _freeze(opts)
    if not rest:
        raise UsageError(f'"socirun run" requires at least 1 argument. {HELP_HINT}')
    opts.image, opts.command = rest[0], rest[1:]
    for path in env_files:
        if read_file is None:
            raise UsageError("--env-file needs a file reader")
        try:
            text = read_file(path)
        except OSError as err:
            raise UsageError(f"open {path}: {err.strerror or err}") from None
        except UnicodeDecodeError as err:  # docker's sentence (opts/file.go)
            line = err.object[: err.start].count(b"\n") + 1
            raise UsageError(f"env file {path} contains invalid utf8 bytes at line {line}") from None
        opts.env += parse_env_file(text, path, environ)
    for item in env_flags:
        opts.env += _expand_env(item, environ)
    _set_network(opts, networks)
    if len(gpus) > 1:
        raise UsageError(f"--gpus can be given only once (got {', '.join(gpus)}). {HELP_HINT}")
    return _freeze(opts)


# The options while argv is walked: RunOptions' fields and defaults, but mutable. Only parse_run_args sees one;
# everything after it gets the frozen RunOptions.
_Draft = dataclasses.make_dataclass(
    "_Draft",
    [(f.name, f.type, dataclasses.field(default=f.default, default_factory=f.default_factory))
     for f in dataclasses.fields(RunOptions)],
)


def _freeze(draft: Any) -> RunOptions:
    return RunOptions(**{f.name: getattr(draft, f.name) for f in dataclasses.fields(RunOptions)})


def _set_network(opts: Any, networks: list[str]) -> None:
    unique = list(dict.fromkeys(n for n in networks if n))
    if len(unique) > 1:
        raise UsageError(f"only one --network is supported (got {', '.join(unique)}). {HELP_HINT}")
    net = unique[0] if unique else "bridge"
    if net in ("bridge", "default"):
        opts.network = "bridge"
    elif net in ("host", "none"):
        opts.network = net
    elif net.startswith("container:") and len(net) > len("container:"):
        opts.network = "container"
        opts.network_container = net.removeprefix("container:")
    else:
        raise UsageError(
            f'network "{net}" is not supported: socirun has bridge, host, none and container:<name|id>. {HELP_HINT}'
        )
    if opts.publish and opts.network != "bridge":
        # docker ignores -p on the host network with a warning; refusing keeps it from looking like it works.
        raise UsageError(f"-p/--publish needs the bridge network, not --network {net}. {HELP_HINT}")


def _off_kernel_fs(spec: VolumeSpec) -> VolumeSpec:
    problem = kernel_fs_mount_problem(spec)
    if problem:
        raise _ValueError(problem)
    return spec


def _apply(
    opts: Any,  # a _Draft
    flag: Flag,
    v: str,
    env_files: list[str],
    env_flags: list[str],
    networks: list[str],
    gpus: list[str],
) -> None:
    match flag.name:
        case "name":
            if not NAME_RE.fullmatch(v):
                raise _ValueError(f"Invalid container name ({v}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
            opts.name = v
        case "env":
            env_flags.append(v)
        case "env-file":
            env_files.append(v)
        case "volume":
            opts.volumes.append(_off_kernel_fs(parse_volume(v)))
        case "mount":
            opts.volumes.append(_off_kernel_fs(parse_mount(v)))
        case "tmpfs":
            opts.volumes.append(_off_kernel_fs(parse_tmpfs(v)))
        case "publish":
            opts.publish += parse_publish(v)
        case "network":
            networks.append(v)
        case "ipc":
            if v in ("", "private"):
                opts.ipc = "private"
            elif v in ("host", "shareable"):
                opts.ipc = v
            elif v.startswith("container:") and len(v) > len("container:"):
                opts.ipc, opts.ipc_container = "container", v.removeprefix("container:")
            else:
                raise _ValueError("invalid IPC mode: must be host, private, shareable or container:<name|id>")
        case "gpus":
            gpus.append(v)
            opts.gpus = parse_gpus(v)
        case "shm-size":
            opts.shm_size = parse_ram_size(v)
            if opts.shm_size <= 0:
                raise _ValueError("invalid size: must be positive")
        case "entrypoint":
            opts.entrypoint = [v] if v else []
        case "workdir":
            if v and not v.startswith("/"):
                raise _ValueError("the working directory must be an absolute path")
            opts.workdir = v
        case "user":
            opts.user = parse_user(v)
        case "cap-add":
            opts.cap_add.append(normalize_capability(v))
        case "cap-drop":
            opts.cap_drop.append(normalize_capability(v))
        case "ulimit":
            opts.ulimits.append(parse_ulimit(v))
        case "pull":
            if v not in PULL_POLICIES:
                raise UsageError(f"invalid pull option: '{v}': must be one of \"always\", \"missing\" or \"never\"")
            opts.pull = v
        case "platform":
            opts.platform = v
        case "label":
            key, _, value = v.partition("=")
            if not key:
                raise _ValueError("label key cannot be empty")
            if key.startswith("nerdctl/"):
                raise UsageError(f'internal label "{key}" must not be specified manually')
            opts.labels[key] = value
        case "hostname":
            opts.hostname = v
        case "device":
            opts.devices.append(parse_device(v))
        case "add-host":
            opts.add_hosts.append(parse_add_host(v))
        case "dns":
            try:
                ipaddress.ip_address(v)
            except ValueError:
                raise _ValueError(f"{v} is not an ip address") from None
            opts.dns.append(v)
        case "dns-search":
            opts.dns_search.append(v)
        case "dns-option":
            opts.dns_options.append(v)
        case "group-add":
            check_id(v)
            opts.group_add.append(v)
        case "cpus":
            try:
                opts.cpus = float(v)
            except ValueError:
                raise _ValueError(f"failed to parse {v} as a rational number") from None
            if not math.isfinite(opts.cpus):  # docker reads a big.Rat, which has no nan or inf
                raise _ValueError(f"failed to parse {v} as a rational number")
            if not 0 <= opts.cpus * 1e9 <= INT64_MAX:  # docker's NanoCPUs is an int64
                raise _ValueError("range of CPUs is from 0.01 to the number of CPUs available")
        case "memory":
            opts.memory = parse_ram_size(v)
            if 0 < opts.memory < 6 << 20:
                raise _ValueError("Minimum memory limit allowed is 6MB")
        case "stop-signal":
            opts.stop_signal = parse_signal(v)
        case "stop-timeout":
            opts.stop_timeout = _parse_int(v)
        case "cidfile":
            opts.cidfile = v
        case "restart":
            policy = v.split(":")[0]
            if policy not in ("no", "always", "on-failure", "unless-stopped"):
                raise _ValueError(f"invalid restart policy format: {v}")
            if policy != "no":
                raise UsageError(
                    f"--restart={v} is not supported: socirun has no daemon to restart containers; use --restart=no"
                )
        case "runtime":
            if v in ("runc", "io.containerd.runc.v2", "io.containerd.runtime.v1.linux"):
                opts.runtime, opts.runtime_binary = DEFAULT_RUNTIME, ""
            elif "." in v:
                opts.runtime, opts.runtime_binary = v, ""
            else:
                opts.runtime, opts.runtime_binary = DEFAULT_RUNTIME, v
        case "pid":
            if v not in ("host", ""):
                raise _ValueError("only --pid=host is supported")
            opts.pid_host = v == "host"
        case "uts":
            if v not in ("host", ""):
                raise _ValueError("only --uts=host is supported")
            opts.uts_host = v == "host"
        case "sysctl":
            key, sep, value = v.partition("=")
            if not sep or not key:
                raise _ValueError("sysctl must be key=value")
            opts.sysctls[key] = value
        case "pids-limit":
            opts.pids_limit = _parse_int(v)
        case "security-opt":
            # docker's parseSecurityOpts: KEY=VALUE, or the older KEY:VALUE; only no-new-privileges stands alone.
            key, sep, value = v.partition("=")
            if not sep and key != "no-new-privileges":
                key, sep, value = v.partition(":")
            if (not sep or not value) and key != "no-new-privileges":
                raise UsageError(f'Invalid --security-opt: "{v}"')
            if key == "no-new-privileges":
                opts.no_new_privileges = _parse_bool(value) if sep else True
            elif key == "seccomp":
                # "builtin" names the default profile; "unconfined" none; anything else a profile file (read
                # when the container is made, by socirun.runtime.seccomp).
                opts.seccomp = "" if value == "builtin" else value
            elif key == "apparmor":
                opts.apparmor = value
            elif v not in ("label=disable", "label:disable"):  # socirun applies no SELinux label anyway
                raise UsageError(
                    f"--security-opt {v} is not supported: socirun takes seccomp=, apparmor=, no-new-privileges "
                    "and label=disable (it applies no SELinux label)"
                )
        case "snapshotter":
            opts.snapshotter = v
        case "progress":
            if v not in PROGRESS_MODES:
                raise _ValueError(f"must be one of {', '.join(PROGRESS_MODES)}")
            opts.progress = v
        case "pull-mode":
            if v not in PULL_MODES:
                raise _ValueError(f"must be one of {', '.join(PULL_MODES)}")
            opts.pull_mode = v
        case "address":
            opts.address = v
        case "namespace":
            opts.namespace = v
        case "data-root":
            opts.data_root = v
        case _:  # pragma: no cover - every Flag in FLAGS is handled above
            raise AssertionError(flag.name)


def help_text() -> str:
    lines = [
        "Usage:  socirun [run] [OPTIONS] IMAGE [COMMAND] [ARG...]",
        "",
        "Create and run a new container from an image (docker run's flags and exit codes)",
        "",
        "Options:",
    ]
    for f in FLAGS:
        left = f"  -{f.short}, --{f.name}" if f.short else f"      --{f.name}"
        if f.aliases:
            left += " (" + ", ".join(f"--{a}" for a in f.aliases) + ")"
        lines.append(f"{left:<34} {f.help}")
    lines += ["", "Refused docker flags (exit 125): " + ", ".join(f"--{n}" for n in sorted(REFUSED))]
    return "\n".join(lines) + "\n"
