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
import posixpath
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

from socirun.config import PROGRESS_MODES
from socirun.containerd.labels import NERDCTL_PREFIX
from socirun.decide.facts import PULL_MODES
from socirun.errors import UsageError
from socirun.runtime.options import (
    CAPABILITIES,
    DEFAULT_RUNTIME,
    DEFAULT_SHM_SIZE,
    PULL_POLICIES,
    DeviceSpec,
    GpuRequest,
    PortMapping,
    RunOptions,
    Ulimit,
    VolumeSpec,
    lookup_signal,
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
    Flag("domainname", "string", help="Container NIS domain name"),
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
    Flag("log-driver", "string", help="Logging driver for the container (only json-file)"),
    Flag("log-opt", "array", help="Log driver options: max-size=SIZE, max-file=N (default 20m, 5)"),
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
    Flag("record-events", "string", help="Also write the event stream to FILE (JSON lines) for socirun replay"),
    Flag("pull-mode", "string", help="How a missing image is pulled: auto|lazy|parallel|parallel-stream|standard"),
    Flag("discard-unpacked-layers", "bool",
         help="In a parallel-stream pull (asked for, or auto): keep no blob of a layer unpacked as it arrives"),
    Flag("address", "string", help="containerd address (env CONTAINERD_ADDRESS)"),
    Flag("namespace", "string", help="containerd namespace (env CONTAINERD_NAMESPACE)"),
    Flag("data-root", "string", help="socirun's state: volumes, containers, CNI (env SOCIRUN_DATA_ROOT)"),
    Flag("debug", "bool", help="Print tracebacks on errors"),
    Flag("ready-url", "string", help="Readiness: an HTTP GET that must answer 2xx (localhost = the container)"),
    Flag("ready-port", "string", help="Readiness: a TCP port of the container that accepts a connection"),
    Flag("ready-timeout", "string", help="With -d: wait this long (e.g. 90s) for readiness, else exit 1"),
    Flag("watch", "bool", help="With -d: then watch the container (logs, lazy fetches, CPU/memory, readiness)"),
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

INT64_MAX = (1 << 63) - 1  # docker keeps sizes, counts and nano-CPUs in int64s
ID_MAX = (1 << 32) - 1  # uid_t / gid_t
_SIZE_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
# Go's ParseFloat grammar (strconv/atof.go readFloat): a decimal mantissa with an optional e exponent, or a 0x
# mantissa with a required p exponent; underscores between digits (checked by _underscore_ok); inf/infinity/nan.
_GO_FLOAT_DEC = re.compile(r"[+-]?([0-9_]*(?:\.[0-9_]*)?)(?:[eE][+-]?[0-9][0-9_]*)?", re.ASCII)
_GO_FLOAT_HEX = re.compile(r"[+-]?0[xX]([0-9a-fA-F_]*(?:\.[0-9a-fA-F_]*)?)[pP][+-]?[0-9][0-9_]*", re.ASCII)
_GO_FLOAT_SPECIAL = re.compile(r"[+-]?(?:inf|infinity)|nan", re.IGNORECASE | re.ASCII)
_GO_ESCAPES = {"\a": r"\a", "\b": r"\b", "\f": r"\f", "\n": r"\n", "\r": r"\r", "\t": r"\t", "\v": r"\v",
               "\\": r"\\", '"': r"\""}  # fmt: skip


def go_quote(text: str) -> str:
    """Go's strconv.Quote, as Go's parse errors print the text they refuse: `parsing " 5": invalid syntax`."""
    out = []
    for ch in text:
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch.isprintable() or ch == " ":
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


def _underscore_ok(text: str) -> bool:
    """Go's strconv.underscoreOK: an underscore only between digits, or between a base prefix and a digit."""
    s = text[1:] if text.startswith(("+", "-")) else text
    saw, hexa = "^", False
    if len(s) >= 2 and s[0] == "0" and s[1].lower() in "box":
        saw, hexa, s = "0", s[1].lower() == "x", s[2:]
    for ch in s:
        if "0" <= ch <= "9" or (hexa and "a" <= ch.lower() <= "f"):
            saw = "0"
        elif ch == "_":
            if saw != "0":
                return False
            saw = "_"
        elif saw == "_":
            return False
        else:
            saw = "!"
    return saw != "_"


def go_parse_float(text: str) -> float:
    """Go's strconv.ParseFloat(text, 64): `1e3`, `1_000`, `+5`, `5.`, `.5`, `0x1p4`, `inf`; not ` 5`, `0x10`, `1__0`."""
    if _GO_FLOAT_SPECIAL.fullmatch(text):
        return float(text)
    hexa = _GO_FLOAT_HEX.fullmatch(text)
    m = hexa or _GO_FLOAT_DEC.fullmatch(text)
    digits = "0123456789abcdefABCDEF" if hexa else "0123456789"
    if m is None or not any(c in digits for c in m.group(1)) or not _underscore_ok(text):
        raise _ValueError(f"strconv.ParseFloat: parsing {go_quote(text)}: invalid syntax")
    clean = text.replace("_", "")
    try:
        value = float.fromhex(clean) if hexa else float(clean)
    except OverflowError:
        value = math.inf
    if math.isinf(value):
        raise _ValueError(f"strconv.ParseFloat: parsing {go_quote(text)}: value out of range")
    return value


def apply_log_opt(opts: Any, text: str) -> None:
    """One --log-opt KEY=VALUE of docker's json-file driver: max-size (units.RAMInBytes, as its driver) and
    max-file; anything else is refused as docker refuses it."""
    key, _, value = text.partition("=")
    if key == "max-size":
        opts.log_max_size = parse_ram_size(value) if value != "-1" else 0
    elif key == "max-file":
        count = _parse_int(value)
        if count < 1:
            raise _ValueError("max-file cannot be less than 1")
        opts.log_max_file = count
    else:
        raise _ValueError(f"unknown log opt '{key}' for json-file log driver")


def parse_ram_size(text: str) -> int:
    r"""docker's units.RAMInBytes (go-units v0.5.0, the version docker/cli vendors: a hand-written parser, not the
    older `^(\d+(\.\d+)*) ?([kKmMgGtTpP])?[iI]?[bB]?$` regexp): the number is everything up to the last digit, dot
    or space (one space may separate it from the suffix), read by Go's ParseFloat, so `1e3`, `1_000`, `+5m` and
    `0x1p4` are sizes and ` 5m` or `64mB ` are not; the suffix is b, or k/m/g/t/p with an optional b or ib, any case.
    Binary units: `64m` is 64 MiB."""
    sep = max(text.rfind(c) for c in "0123456789. ")
    if sep == -1:
        raise _ValueError(f"invalid size: '{text}'")
    num, sfx = (text[:sep], text[sep + 1 :]) if text[sep] == " " else (text[: sep + 1], text[sep + 1 :])
    size = go_parse_float(num)
    if size < 0:
        raise _ValueError(f"invalid size: '{text}'")
    if sfx:
        if len(sfx.encode()) > 3:  # Go counts bytes, and names the suffix before lowering it
            raise _ValueError(f"invalid suffix: '{sfx}'")
        low = sfx.lower()
        if (low[0] == "b" and len(low) > 1) or (low[0] != "b" and low[0] not in _SIZE_UNITS):
            raise _ValueError(f"invalid suffix: '{low}'")
        if low[0] != "b":
            if (len(low) == 2 and low[1] != "b") or (len(low) == 3 and low[1:] != "ib"):
                raise _ValueError(f"invalid suffix: '{low}'")
            size *= _SIZE_UNITS[low[0]]
    if not size < INT64_MAX:  # also inf and nan: Go's int64() of those is undefined (MinInt64 on amd64)
        raise _ValueError(f"invalid size: '{text}': value out of range")
    return int(size)


_RAT_BASES = {"b": 2, "o": 8, "x": 16}
# Python's int() reads at most 4300 decimal digits; a --cpus value that long is refused as unparseable (Go would
# read it, then find it out of the int64 range or too precise).
_MAX_DIGITS = 4000
_RAT_DIGITS = {2: "01", 8: "01234567", 10: "0123456789", 16: "0123456789abcdefABCDEF"}


def _go_int(text: str, *, signed: bool) -> int | None:
    """big.Int's SetString(text, 0): an optional sign, a 0b/0o/0x or (octal) 0 prefix, underscores between digits."""
    body = text[1:] if signed and text.startswith(("+", "-")) else text
    base, digits = 10, body
    if len(body) >= 2 and body[0] == "0" and body[1].lower() in _RAT_BASES:
        base, digits = _RAT_BASES[body[1].lower()], body[2:]
    elif len(body) >= 2 and body[0] == "0":
        base, digits = 8, body[1:]
    clean = digits.replace("_", "")
    if not clean or any(c not in _RAT_DIGITS[base] for c in clean) or not _underscore_ok(body):
        return None
    if len(clean.lstrip("0")) > _MAX_DIGITS:
        return None
    return -int(clean, base) if text.startswith("-") and signed else int(clean, base)


_RAT_FLOAT = re.compile(
    r"([+-]?)(?:(0[xX])([0-9a-fA-F_]*)(?:\.([0-9a-fA-F_]*))?(?:([pP])([+-]?)([0-9_]+))?"
    r"|(0[bBoO])?([0-9_]*)(?:\.([0-9_]*))?(?:([eEpP])([+-]?)([0-9_]+))?)",
    re.ASCII,
)


def go_parse_rat(text: str) -> Fraction | None:
    """big.Rat's SetString: `a/b` (integers, b unsigned and not 0) or a number with an optional radix point and
    a decimal (e) or binary (p) exponent, in decimal or with a 0b/0o/0x prefix. None where Go says !ok."""
    if "/" in text:
        num, _, den = text.partition("/")
        a, b = _go_int(num, signed=True), _go_int(den, signed=False)
        return None if a is None or not b else Fraction(a, b)
    m = _RAT_FLOAT.fullmatch(text)
    if m is None:
        return None
    sign, groups = m.group(1), m.groups()[1:]
    prefix, whole, frac, echar, esign, exp_digits = groups[:6] if groups[0] else groups[6:]
    whole = whole or ""
    base = _RAT_BASES[prefix[1].lower()] if prefix else 10
    digits = whole + (frac or "")
    clean = digits.replace("_", "")
    mantissa_text = (prefix or "") + whole + ("." + frac if frac is not None else "")
    if (not clean or any(c not in _RAT_DIGITS[base] for c in clean) or not _underscore_ok(mantissa_text)
            or (echar and not _underscore_ok(exp_digits))):  # fmt: skip
        return None
    if len(clean.lstrip("0")) > _MAX_DIGITS:
        return None
    value = Fraction(int(clean, base), base ** len((frac or "").replace("_", "")))
    if sign == "-":
        value = -value
    if echar and value:
        exp = int(exp_digits.replace("_", "")) * (-1 if esign == "-" else 1)
        if abs(exp) > 1_000_000:  # Go's limit ("avoid excessively large exponents")
            return None
        # Past 10^4 any value is out of the int64 nano-CPU range or too precise: no need to build a huge number.
        exp = max(-10_000, min(10_000, exp))
        value *= Fraction(10 if echar in "eE" else 2) ** exp
    return value


def parse_cpus(text: str) -> int:
    """docker's opts.ParseCPUs: a big.Rat (`1.5`, `1/2`, `15e-1`) times 10^9, which must be a whole number of
    nano-CPUs (`value is too precise` otherwise)."""
    cpus = go_parse_rat(text)
    if cpus is None:
        raise _ValueError(f"failed to parse {text} as a rational number")
    nano = cpus * 1_000_000_000
    if nano.denominator != 1:
        raise _ValueError("value is too precise")
    return int(nano)


def cpus_range_problem(nano_cpus: int, cpu_count: int) -> str | None:
    """The daemon's NanoCPUs check (moby daemon_unix.go verifyPlatformContainerResources): from 0 to the CPUs
    available. docker lets 0.001-0.009 through to the kernel (a CFS quota under 1 ms), which refuses it with runc's
    raw `cpu.cfs_quota_us: invalid argument`; socirun gives the same range sentence for those too."""
    if nano_cpus != 0 and not 10_000_000 <= nano_cpus <= cpu_count * 1_000_000_000:
        return f"range of CPUs is from 0.01 to {cpu_count}.00, as there are only {cpu_count} CPUs available"
    return None


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
        raise _ValueError(f"strconv.ParseInt: parsing {go_quote(text)}: invalid syntax")
    if len(text) > 20 or not -INT64_MAX - 1 <= int(text) <= INT64_MAX:  # (20: int() refuses 4300+ digits)
        raise _ValueError(f"strconv.ParseInt: parsing {go_quote(text)}: value out of range")
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
    hard = _parse_int(parts[1]) if len(parts) == 2 else None  # go-units reads the hard limit first
    soft = _parse_int(parts[0])
    hard = soft if hard is None else hard
    if hard != -1:
        if soft == -1:
            raise _ValueError("ulimit soft limit must be less than or equal to hard limit: soft: -1 (unlimited), "
                              f"hard: {hard}")  # fmt: skip
        if soft > hard:
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


PROPAGATIONS = ("private", "rprivate", "shared", "rshared", "slave", "rslave")
# -v modes by class (moby's linuxValidMountMode): at most one of each. bind/rbind and rro are nerdctl's additions.
_MODE_CLASSES = {
    **{m: "rw" for m in ("rw", "ro", "rro")}, "z": "label", "Z": "label", **{m: "propagation" for m in PROPAGATIONS},
    "nocopy": "copy", **{m: "consistency" for m in ("consistent", "cached", "delegated")}, "bind": "bind",
    "rbind": "bind",
}  # fmt: skip
_VOLUME_NAME_HINT = ('includes invalid characters for a local volume name, only "[a-zA-Z0-9][a-zA-Z0-9_.-]" are '
                     "allowed. If you intended to pass a host directory, use absolute path")  # fmt: skip


def _valid_mode(mode: str) -> bool:
    if not mode:
        return True
    classes = [_MODE_CLASSES.get(o) for o in mode.split(",")]
    return None not in classes and len(set(classes)) == len(classes)


def _target_problem(target: str) -> str | None:
    """The daemon's checks of a mount's target (moby daemon/volume/mounts/linux_parser.go)."""
    if not target:
        return "field Target must not be empty"
    if posixpath.normpath(target.replace("\\", "/")) == "/":
        return "invalid specification: destination can't be '/'"
    if not target.replace("\\", "/").startswith("/"):
        return f"invalid mount path: '{target}' mount path must be absolute"
    return None


def parse_volume(text: str) -> VolumeSpec:
    """-v `[src:]dst[:mode]` as moby's ParseMountRaw: an absolute src (or one starting with ".", which docker's CLI
    makes absolute) is a bind mount, any other a named volume (""  anonymous); propagation only on binds, nocopy
    only on volumes; a missing bind source is created."""
    arr = text.split(":", 3)
    if arr[0] == "" or len(arr) == 4 or (len(arr) == 2 and _valid_mode(arr[1])):  # `/foo:ro` has no target
        raise _ValueError(f"invalid volume specification: '{text}'")
    src, dst, mode = ("", arr[0], "") if len(arr) == 1 else (arr[0], arr[1], arr[2] if len(arr) == 3 else "")
    if not _valid_mode(mode):
        raise _ValueError(f"invalid mode: {mode}")
    modes = mode.split(",") if mode else []
    kind: Literal["bind", "volume"] = "bind" if src.startswith(("/", ".")) else "volume"

    def bad(why: str) -> _ValueError:
        return _ValueError(f"invalid volume specification: '{text}': invalid mount config for type \"{kind}\": {why}")

    propagation = [m for m in modes if m in PROPAGATIONS]
    if kind == "volume" and propagation:
        raise bad("field BindOptions must not be specified")
    if kind == "bind" and "nocopy" in modes:
        raise bad("field VolumeOptions must not be specified")
    problem = _target_problem(dst)
    if problem:
        raise bad(problem)
    if kind == "volume" and src and not VOLUME_NAME_RE.fullmatch(src):
        # Not bound from the cwd: "dir/sub", "~/x", "vol\n" are refused as volume names, as docker does.
        raise _ValueError(f'"{src}" {_VOLUME_NAME_HINT}')
    readonly = "ro" in modes or "rro" in modes
    extra = tuple(m for m in modes if m in (*PROPAGATIONS, "bind", "rro"))
    return VolumeSpec(kind, src, dst, readonly, extra, create_missing=kind == "bind")


def _mount_bool(key: str, value: str, has_value: bool) -> bool:
    """docker's parseBoolValue for --mount: only 1, true, 0, false (ParseBool's t, T, TRUE... are refused)."""
    if not has_value:
        return True
    if value in ("1", "true", "0", "false"):
        return value in ("1", "true")
    raise _ValueError(f"invalid value for '{key}': invalid boolean value ({go_quote(value)}): must be one of "
                      '"true", "1", "false", or "0" (default "true")')  # fmt: skip


_MOUNT_FLAGS = ("readonly", "ro", "volume-nocopy", "bind-nonrecursive", "bind-create-src")
_BIND_RECURSIVE = ("enabled", "disabled", "writable", "readonly")


def parse_mount(text: str) -> VolumeSpec:
    """--mount `type=bind|volume|tmpfs,source=,target=,readonly,bind-propagation=,bind-recursive=,bind-create-src,
    volume-nocopy,tmpfs-size=,tmpfs-mode=` as docker's MountOpt.Set and validateMountOptions, then the daemon's
    checks (moby's validateMountConfigImpl). A bind source must exist (checked when the container is made)
    unless bind-create-src."""
    value = text.strip()
    if not value:
        raise _ValueError("value is empty")
    kind = "volume"
    source = target = ""
    readonly = False
    bind: dict[str, Any] = {}
    volume: dict[str, Any] = {}
    image: dict[str, Any] = {}
    tmpfs: list[str] = []
    for fld in _csv_fields(value):
        key, has_value, val = fld.partition("=")
        if key.strip() != key:
            raise _ValueError(f"invalid option '{key.strip()}' in '{fld}': option should not have whitespace")
        if has_value and not val.strip():
            raise _ValueError(f"invalid value for '{key}': value is empty")
        if has_value and val.strip() != val:
            raise _ValueError(f"invalid value for '{key}' in '{fld}': value should not have whitespace")
        key = key.lower()
        if not has_value and key not in _MOUNT_FLAGS:
            raise _ValueError(f"invalid field '{fld}' must be a key=value pair")
        match key:
            case "type":
                kind = val.lower()
            case "source" | "src":
                source = val
            case "target" | "destination" | "dst":
                target = val
            case "readonly" | "ro":
                readonly = _mount_bool(key, val, bool(has_value))
            case "consistency":
                pass  # macOS file sharing only
            case "bind-propagation":
                bind["propagation"] = val.lower()
            case "bind-nonrecursive":
                raise _ValueError("bind-nonrecursive is deprecated, use bind-recursive=disabled instead")
            case "bind-recursive":
                if val not in _BIND_RECURSIVE:
                    raise _ValueError(f'invalid value for {key}: {val} (must be "enabled", "disabled", "writable", '
                                      'or "readonly")')  # fmt: skip
                bind["recursive"] = val
            case "bind-create-src":
                bind["create"] = _mount_bool(key, val, bool(has_value))
            case "volume-nocopy":
                volume["nocopy"] = _mount_bool(key, val, bool(has_value))
            case "volume-subpath" | "volume-label" | "volume-driver" | "volume-opt":
                volume[key] = val
            case "image-subpath":
                image[key] = val
            case "tmpfs-size":
                try:
                    tmpfs.append(f"size={parse_ram_size(val)}")
                except _ValueError:
                    raise _ValueError(f"invalid value for {key}: {val}") from None
            case "tmpfs-mode":
                if not val or any(c not in "01234567" for c in val) or int(val, 8) > 0xFFFFFFFF:  # ParseUint(v, 8, 32)
                    raise _ValueError(f"invalid value for {key}: {val}")
                tmpfs.append(f"mode={int(val, 8):o}")
            case _:
                raise _ValueError(f"unknown option '{key}' in '{fld}'")
    for prefix, given, owner in (("bind", bind, "bind"), ("volume", volume, "volume"), ("image", image, "image"),
                                 ("tmpfs", tmpfs, "tmpfs")):  # fmt: skip
        if given and kind != owner:
            raise _ValueError(f"cannot mix '{prefix}-*' options with mount type '{kind}'")
    recursive = bind.get("recursive", "enabled")
    if recursive == "writable" and not readonly:
        raise _ValueError("option 'bind-recursive=writable' requires 'readonly' to be specified in conjunction")
    if recursive == "readonly":
        if not readonly:
            raise _ValueError("option 'bind-recursive=readonly' requires 'readonly' to be specified in conjunction")
        if bind.get("propagation") != "rprivate":
            raise _ValueError("option 'bind-recursive=readonly' requires 'bind-propagation=rprivate' to be "
                              "specified in conjunction")  # fmt: skip
    if kind in ("image", "npipe", "cluster"):
        raise _ValueError(f"mount type {kind!r} is not supported by socirun: only bind, volume and tmpfs")
    if kind not in ("bind", "volume", "tmpfs"):
        raise _ValueError(f'invalid mount config for type "{kind}": mount type unknown')
    unsupported = sorted(k for k in volume if k != "nocopy")
    if unsupported:
        raise _ValueError(f"{unsupported[0]} is not supported by socirun: volumes are local, without subpaths")

    def bad(why: str) -> _ValueError:
        return _ValueError(f'invalid mount config for type "{kind}": {why}')

    problem = _target_problem(target)
    if problem:
        raise bad(problem)
    options: list[str] = []
    if kind == "bind":
        if not source:
            raise bad("field Source must not be empty")
        propagation = bind.get("propagation", "")
        if propagation and propagation not in PROPAGATIONS:
            raise bad(f"invalid propagation mode: {propagation}")
        if not source.startswith(("/", ".")):  # docker's CLI makes a "."-path absolute; "~/x", "dir/x" are not
            raise bad(f"invalid mount path: '{source}' mount path must be absolute")
        options += [propagation] if propagation else []
        options += ["bind"] if recursive == "disabled" else ["rro"] if recursive == "readonly" else []
    elif kind == "tmpfs":
        if source:
            raise bad("field Source must not be specified")
        options += tmpfs
    elif source and not VOLUME_NAME_RE.fullmatch(source):
        raise _ValueError(f'"{source}" {_VOLUME_NAME_HINT}')
    return VolumeSpec(kind, source, target, readonly, tuple(options),  # type: ignore[arg-type]
                      create_missing=bool(bind.get("create")))  # fmt: skip


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


def validate_ip_address(text: str) -> str:
    """docker's opts.ValidateIPAddress: Go's net.ParseIP of the value without surrounding whitespace, returned in
    its normal form; no brackets, no IPv6 zone."""
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        ip = None
    if ip is None or "%" in text:
        raise _ValueError(f"IP address is not correctly formatted: {text}")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)  # Go prints a v4-in-v6 address as IPv4
    return str(ip)


# docker's opts domainRegexp, `(:?` (an optional colon, not a non-capturing group) included; Go's \s is ASCII.
_DOMAIN_RE = re.compile(
    r"(:?(:?[a-zA-Z0-9]|(:?[a-zA-Z0-9][a-zA-Z0-9\-]*[a-zA-Z0-9]))(:?\.(:?[a-zA-Z0-9]|(:?[a-zA-Z0-9][a-zA-Z0-9\-]*"
    r"[a-zA-Z0-9])))*)\.?[\t\n\f\r ]*"
)


def validate_dns_search(text: str) -> str:
    """docker's opts.ValidateDNSSearch: spaces trimmed; `.` (no search domain) or a domain with a letter in it,
    returned without its trailing dot."""
    val = text.strip(" ")
    if val == ".":
        return val
    m = _DOMAIN_RE.fullmatch(val) if re.search("[a-zA-Z]", val) else None
    if m is None or len(m.group(1)) >= 255:
        raise _ValueError(f"{val} is not a valid domain")
    return m.group(1)


def parse_label(text: str) -> tuple[str, str]:
    """docker's opts.ValidateLabel then ConvertKVStringsToMap: `key[=value]`, a key without blanks (leading ones
    are allowed, and kept), `key` alone is the label "" ."""
    key, _, value = text.partition("=")
    trimmed = key.lstrip(" \t")
    if not trimmed:
        raise _ValueError(f"invalid label '{text}': empty name")
    if " " in trimmed or "\t" in trimmed:
        raise _ValueError(f"label '{trimmed}' contains whitespaces")
    return key, value


_NAMESPACED_SYSCTLS = ("kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
                       "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced")  # fmt: skip


def validate_sysctl(text: str) -> tuple[str, str]:
    """docker's opts.ValidateSysctl: only the sysctls a container's own namespaces hold (the IPC ones, fs.mqueue.*,
    net.*); the others would change the host."""
    key, sep, value = text.partition("=")
    if not sep or not key or not (key in _NAMESPACED_SYSCTLS or key.startswith(("net.", "fs.mqueue."))):
        raise _ValueError(f"sysctl '{text}' is not allowed")
    return key, value


RESTART_POLICIES = ("no", "always", "on-failure", "unless-stopped")


def parse_restart(text: str) -> str:
    """docker's opts.ParseRestartPolicy and the daemon's ValidateRestartPolicy: `name[:max-retries]`, a count only
    with on-failure. Returns the policy's name ("" when empty, docker's unset)."""
    name, sep, count = text.partition(":")
    if sep and not name:
        raise UsageError("invalid restart policy format: no policy provided before colon")
    retries = 0
    if count:
        if not _INT_RE.fullmatch(count) or len(count) > 20 or abs(int(count)) > INT64_MAX:
            raise UsageError("invalid restart policy format: maximum retry count must be an integer")
        retries = int(count)
    if name in ("always", "unless-stopped", "no") and retries:
        why = " and cannot be negative" if retries < 0 else ""
        raise UsageError(f"invalid restart policy: maximum retry count can only be used with 'on-failure'{why}")
    if name == "on-failure" and retries < 0:
        raise UsageError("invalid restart policy: maximum retry count cannot be negative")
    if name and name not in RESTART_POLICIES:
        raise UsageError(f"invalid restart policy: unknown policy '{name}'; use one of 'no', 'always', "
                         "'on-failure', or 'unless-stopped'")  # fmt: skip
    return name


def parse_add_host(text: str) -> tuple[str, str]:
    """docker's opts.ValidateExtraHost: `host=ip` or `host:ip` (split at the first colon, so IPv6 works), the
    address optionally in brackets (`host:[::1]`, `host=[::1]`), or host-gateway; no colon in the host."""
    host, sep, ip = text.partition("=")
    if not sep:
        host, sep, ip = text.partition(":")
    if not sep or not host or ":" in host:
        raise _ValueError(f"bad format for add-host: {go_quote(text)}")
    if ip != "host-gateway":
        if len(ip) > 2 and ip[0] == "[" and ip[-1] == "]":
            ip = ip[1:-1]
        try:
            ip = validate_ip_address(ip)
        except _ValueError:
            raise _ValueError(f"invalid IP address in add-host: {go_quote(ip)}") from None
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
    """--stop-signal: socirun.runtime.options.lookup_signal, returned as the SIG name."""
    found = lookup_signal(text)
    if found is None:
        raise _ValueError(f"invalid signal: {text}")
    return found[0]


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
    cpu_count: int | None = None,
) -> RunOptions:
    """argv after `run` (or after the global flags of a bare `socirun IMAGE`) → validated RunOptions. `cpu_count`
    (default: the CPUs this process may run on, Go's runtime.NumCPU) bounds --cpus as docker's daemon does."""
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
    if opts.cpus:
        problem = cpus_range_problem(round(opts.cpus * 1e9), cpu_count or len(os.sched_getaffinity(0)))
        if problem:
            raise UsageError(problem)
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
            # 0 is docker's "unset": the daemon's default, 64 MiB.
            opts.shm_size = parse_ram_size(v) or DEFAULT_SHM_SIZE
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
            key, value = parse_label(v)
            if key.startswith(NERDCTL_PREFIX):
                raise UsageError(f'internal label "{key}" must not be specified manually')
            opts.labels[key] = value
        case "hostname":
            opts.hostname = v
        case "domainname":
            opts.domainname = v
        case "device":
            opts.devices.append(parse_device(v))
        case "add-host":
            opts.add_hosts.append(parse_add_host(v))
        case "dns":
            opts.dns.append(validate_ip_address(v))
        case "dns-search":
            opts.dns_search.append(validate_dns_search(v))
        case "dns-option":
            opts.dns_options.append(v)
        case "group-add":
            check_id(v)
            opts.group_add.append(v)
        case "cpus":
            nano = parse_cpus(v)
            if not -INT64_MAX - 1 <= nano <= INT64_MAX:  # docker's NanoCPUs is an int64
                raise _ValueError("range of CPUs is from 0.01 to the number of CPUs available")
            opts.cpus = nano / 1e9
        case "memory":
            opts.memory = parse_ram_size(v)
            if 0 < opts.memory < 6 << 20:
                raise _ValueError("Minimum memory limit allowed is 6MB")
        case "stop-signal":
            opts.stop_signal = parse_signal(v)
        case "stop-timeout":
            opts.stop_timeout = _parse_int(v)
        case "log-driver":
            if v not in ("", "json-file"):
                raise UsageError(f'--log-driver={v} is not supported: socirun writes docker\'s json-file log '
                                 f"(read it with `socirun logs`). {HELP_HINT}")
        case "log-opt":
            apply_log_opt(opts, v)
        case "cidfile":
            opts.cidfile = v
        case "restart":
            policy = parse_restart(v)
            if policy not in ("", "no"):
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
            key, value = validate_sysctl(v)
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
        case "record-events":
            if not v:
                raise _ValueError("needs a file")
            opts.record_events = v
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
        case "ready-url" | "ready-port" | "ready-timeout":
            from socirun.runtime import readiness

            if flag.name == "ready-url":
                opts.ready_url = readiness.parse_ready_url(v).url
            elif flag.name == "ready-port":
                opts.ready_port = readiness.parse_ready_port(v).port
            else:
                opts.ready_timeout = readiness.parse_ready_timeout(v)
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
