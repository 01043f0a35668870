"""The value types of `socirun run`: what docker run's flags mean once parsed (socirun.commands.run_flags
builds them, once), read by the runtime (spec, CNI, GPUs, volumes) without knowing the flag grammar."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DEFAULT_SHM_SIZE = 64 << 20
DEFAULT_RUNTIME = "io.containerd.runc.v2"
# The json-file log of a detached container (--log-opt max-size / max-file): capped by default, unlike docker's,
# so a chatty container cannot fill the disk (socirun/runtime/logs.py).
DEFAULT_LOG_MAX_SIZE = 20 << 20
DEFAULT_LOG_MAX_FILE = 5
# docker's --pull policy (socirun's --pull-mode is PULL_MODES in socirun.decide.facts)
PULL_POLICIES = ("always", "missing", "never")

# Linux capabilities (capability.h order); `--cap-add NAME` takes them with or without CAP_, any case, or ALL.
CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)  # fmt: skip
SIGNALS = {
    "HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "TRAP": 5, "ABRT": 6, "IOT": 6, "BUS": 7, "FPE": 8, "KILL": 9,
    "USR1": 10, "SEGV": 11, "USR2": 12, "PIPE": 13, "ALRM": 14, "TERM": 15, "STKFLT": 16, "CHLD": 17,
    "CONT": 18, "STOP": 19, "TSTP": 20, "TTIN": 21, "TTOU": 22, "URG": 23, "XCPU": 24, "XFSZ": 25,
    "VTALRM": 26, "PROF": 27, "WINCH": 28, "IO": 29, "POLL": 29, "PWR": 30, "SYS": 31,
}  # fmt: skip
# The real-time signals by moby/sys/signal's names (what docker's --stop-signal takes): glibc reserves 32 and 33,
# so RTMIN is 34; RTMIN+1..+15 and RTMAX-14..-1 name the rest up to RTMAX, 64.
SIGNALS.update({"RTMIN": 34, **{f"RTMIN+{n}": 34 + n for n in range(1, 16)},
                **{f"RTMAX-{n}": 64 - n for n in range(14, 0, -1)}, "RTMAX": 64})


def lookup_signal(text: str) -> tuple[str, int] | None:
    """moby/sys/signal's ParseSignal, as `--stop-signal` and `kill -s` take a signal: a decimal number (Go's Atoi:
    an optional sign, ASCII digits), or a name with or without SIG in any case, RTMIN+N and RTMAX-N included.
    Returns (SIG name, number), or None where it names no Linux signal (docker takes any non-zero number; socirun
    only Linux's 1-64)."""
    digits = text[1:] if text[:1] in "+-" else text
    if digits.isascii() and digits.isdigit():  # isascii: str.isdigit() alone takes "²"
        number = int(text) if len(digits) < 20 else 0
        name = next((n for n, num in SIGNALS.items() if num == number), None)
        return None if name is None else (f"SIG{name}", number)
    name = text.upper().removeprefix("SIG")
    return (f"SIG{name}", SIGNALS[name]) if name in SIGNALS else None


@dataclass(frozen=True)
class PortMapping:
    host_ip: str  # "" = every address (0.0.0.0)
    host_port: int  # 0 = pick a free one
    container_port: int
    protocol: str = "tcp"


@dataclass(frozen=True)
class VolumeSpec:
    """-v / --mount: kind "bind" (source is a host path), "volume" (named; source "" = anonymous) or "tmpfs"."""

    kind: Literal["bind", "volume", "tmpfs"]
    source: str
    target: str
    readonly: bool = False
    options: tuple[str, ...] = ()  # propagation, tmpfs size/mode options
    # A missing bind source is created (-v, --mount bind-create-src); --mount type=bind refuses it, as docker.
    create_missing: bool = False


@dataclass(frozen=True)
class DeviceSpec:
    host_path: str
    container_path: str
    permissions: str = "rwm"
    cdi_name: str = ""  # set instead of the paths for `vendor/class=name`


@dataclass(frozen=True)
class Ulimit:
    name: str
    soft: int
    hard: int


@dataclass(frozen=True)
class GpuRequest:
    """One --gpus value. count -1 = all; device_ids set instead of count for `device=`."""

    count: int = 0
    device_ids: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    driver: str = ""
    options: tuple[tuple[str, str], ...] = ()


NetworkMode = Literal["bridge", "host", "none", "container"]


@dataclass(frozen=True)
class RunOptions:
    """docker run's flags, parsed once by socirun.commands.run_flags.parse_run_args and then only read."""

    image: str = ""
    command: list[str] = field(default_factory=list)
    detach: bool = False
    interactive: bool = False
    tty: bool = False
    rm: bool = False
    name: str = ""
    env: list[str] = field(default_factory=list)  # KEY=VALUE, in order: --env-file entries first, then -e
    volumes: list[VolumeSpec] = field(default_factory=list)
    publish: list[PortMapping] = field(default_factory=list)
    network: NetworkMode = "bridge"
    network_container: str = ""
    ipc: str = "private"  # private | host | shareable | container
    ipc_container: str = ""
    gpus: GpuRequest | None = None
    shm_size: int = DEFAULT_SHM_SIZE
    entrypoint: list[str] | None = None  # None: the image's; [] for --entrypoint ""
    workdir: str = ""
    user: str = ""
    privileged: bool = False
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    ulimits: list[Ulimit] = field(default_factory=list)
    pull: str = "missing"
    platform: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    hostname: str = ""
    domainname: str = ""  # --domainname: the UTS namespace's NIS domain name
    devices: list[DeviceSpec] = field(default_factory=list)
    init: bool = False
    read_only: bool = False
    add_hosts: list[tuple[str, str]] = field(default_factory=list)
    dns: list[str] = field(default_factory=list)
    dns_search: list[str] = field(default_factory=list)
    dns_options: list[str] = field(default_factory=list)
    group_add: list[str] = field(default_factory=list)
    cpus: float = 0.0
    memory: int = 0
    stop_signal: str = "SIGTERM"
    stop_timeout: int | None = None
    log_max_size: int = DEFAULT_LOG_MAX_SIZE  # --log-opt max-size (0: unlimited)
    log_max_file: int = DEFAULT_LOG_MAX_FILE  # --log-opt max-file
    sig_proxy: bool = True
    cidfile: str = ""
    runtime: str = DEFAULT_RUNTIME
    runtime_binary: str = ""  # e.g. "crun" for --runtime crun
    quiet: bool = False
    pid_host: bool = False
    uts_host: bool = False
    sysctls: dict[str, str] = field(default_factory=dict)
    pids_limit: int = 0
    no_new_privileges: bool = False
    seccomp: str = ""  # --security-opt seccomp=: "" the default profile, "unconfined", or a profile file's path
    apparmor: str = ""  # --security-opt apparmor=: a profile name (applied only where the host has AppArmor)
    help: bool = False
    snapshotter: str = ""
    progress: str = ""
    record_events: str = ""  # socirun's own: the event stream also written to this file (JSON lines)
    pull_mode: str = ""
    discard_unpacked_layers: bool | None = None  # None: not given ([pull] discard_unpacked_layers decides)
    address: str = ""
    namespace: str = ""
    data_root: str = ""
    debug: bool = False
    # socirun's own readiness and watch flags (socirun.runtime.readiness, socirun.commands.watch)
    ready_url: str = ""
    ready_port: int = 0
    ready_timeout: float | None = None  # seconds; with -d: wait for readiness this long, else fail
    watch: bool = False  # -d: then the watch view of the container
