"""AppArmor: the default profile a container runs under where the host has AppArmor, as docker and containerd do.

Docker confines every container that names no profile with `docker-default`, and nerdctl (through containerd's
contrib/apparmor) with `nerdctl-default`: a profile generated from one template (moby profiles/apparmor/template.go,
containerd contrib/apparmor/template.go) and loaded with `apparmor_parser -Kr` the first time a container needs it.
socirun does the same under the name `socirun-default`, with the same rules: network, capabilities and files as the
other layers (capabilities, seccomp, masked paths) allow, but no `mount`, no writes to /proc outside the
container's own processes and /proc/sys/kernel/shm*, nothing under /sys but the cgroup tree, and signals and ptrace
only among the container's processes and from the runtime. `--security-opt apparmor=NAME` names another loaded
profile (`unconfined`: none), `--privileged` runs unconfined, as docker.

Where AppArmor is on but `apparmor_parser` is missing, a run that needs the default profile fails (exit 125) with
the fix, as docker 20.10 did ("AppArmor enabled on system but the docker-default profile could not be loaded"):
never a silently unconfined container (containerd's and current docker's hostSupports instead treat a missing
/sbin/apparmor_parser as "no AppArmor" and confine nothing).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from socirun.errors import SocirunError

DEFAULT_PROFILE = "socirun-default"
UNCONFINED = "unconfined"
APPARMOR_ENABLED_PATH = "/sys/module/apparmor/parameters/enabled"
LOADED_PROFILES_PATH = "/sys/kernel/security/apparmor/profiles"
PROFILE_DIR = "/etc/apparmor.d"  # where the parser finds abi/, tunables/ and abstractions/
# Where Debian's and Ubuntu's `apparmor` package installs the parser (containerd looks at /sbin/apparmor_parser).
# Fixed directories rather than $PATH: the engine reads no environment of its own.
PARSER_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")
PARSER_NAME = "apparmor_parser"
PARSER_PACKAGE = "apparmor"
_PARSER_TIMEOUT_S = 60.0


class AppArmorError(SocirunError):
    """The default AppArmor profile is needed but cannot be loaded (exit 125, as socirun's own errors)."""


def apparmor_enabled(path: str = APPARMOR_ENABLED_PATH) -> bool:
    """Whether the host kernel has AppArmor on (what runc's apparmor.IsEnabled and docker's HostSupports read);
    only then does a container get an AppArmor profile (runc fails to apply one otherwise)."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read(8).strip() == "Y"
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------ decision


def container_profile(requested: str, *, enabled: bool, privileged: bool) -> str | None:
    """The spec's `process.apparmorProfile` (moby's WithApparmor): None where the host has no AppArmor; a profile
    the user named (`unconfined` included) wins, also over --privileged; --privileged alone runs unconfined;
    otherwise the default profile."""
    if not enabled:
        return None
    if requested:
        return requested
    return UNCONFINED if privileged else DEFAULT_PROFILE


# ------------------------------------------------------------------------------------------------ profile text


@dataclass(frozen=True)
class TemplateMacros:
    """What /etc/apparmor.d offers the profile (containerd's loadData): the 3.0 ABI, the global tunables (which
    define @{PROC}) and the base abstraction. A parser without them still loads the profile."""

    abi_3_0: bool = False
    tunables_global: bool = False
    abstractions_base: bool = False


def host_macros(profile_dir: str = PROFILE_DIR) -> TemplateMacros:
    def exists(name: str) -> bool:
        return os.path.exists(os.path.join(profile_dir, name))

    return TemplateMacros(abi_3_0=exists("abi/3.0"), tunables_global=exists("tunables/global"),
                          abstractions_base=exists("abstractions/base"))  # fmt: skip


def profile_text(name: str = DEFAULT_PROFILE, macros: TemplateMacros = TemplateMacros()) -> str:
    """The default profile's source, the rules of docker's and containerd's default template."""
    head: list[str] = []
    if macros.abi_3_0:
        # Pins the policy semantics to the 3.0 feature ABI, so a newer kernel does not start mediating more.
        head.append("abi <abi/3.0>,")
    # Without the tunables, @{PROC} (used below) must be defined here.
    head.append("#include <tunables/global>" if macros.tunables_global else "@{PROC}=/proc/")
    body: list[str] = []
    if macros.abstractions_base:
        body.append("#include <abstractions/base>")
    body += [
        "network,",
        "capability,",
        "file,",
        "umount,",
        "# Signals from the host's unconfined processes and from the runtime (runc, crun) reach the container:",
        "# the shim's kill and `socirun stop` go through them.",
        "signal (receive) peer=unconfined,",
        "signal (receive) peer=runc,",
        "signal (receive) peer=crun,",
        f"signal (send,receive) peer={name},",
        "",
        "# /proc: no writes to its top-level files, nor below anything but /proc/<pid>/ and /proc/sys/;",
        "# in /proc/sys only kernel/shm* (the IPC limits a container may tune in its own IPC namespace).",
        "deny @{PROC}/* w,",
        "deny @{PROC}/{[^1-9/],[^1-9/][^0-9/],[^1-9s/][^0-9y/][^0-9s/],[^1-9/][^0-9/][^0-9/][^0-9/]*}/** w,",
        "deny @{PROC}/sys/[^k]** w,",
        "deny @{PROC}/sys/kernel/{?,??,[^s][^h][^m]**} w,",
        "deny @{PROC}/sysrq-trigger rwklx,",
        "deny @{PROC}/kcore rwklx,",
        "",
        "deny mount,",
        "",
        "# /sys: nothing but the cgroup tree may be written; firmware, powercap and securityfs not even read.",
        "deny /sys/[^f]*/** wklx,",
        "deny /sys/f[^s]*/** wklx,",
        "deny /sys/fs/[^c]*/** wklx,",
        "deny /sys/fs/c[^g]*/** wklx,",
        "deny /sys/fs/cg[^r]*/** wklx,",
        "deny /sys/firmware/** rwklx,",
        "deny /sys/devices/virtual/powercap/** rwklx,",
        "deny /sys/kernel/security/** rwklx,",
        "",
        "# ps and debuggers inside the container, where yama and the other LSMs let them.",
        f"ptrace (trace,tracedby,read,readby) peer={name},",
    ]
    lines = [*head, "", f"profile {name} flags=(attach_disconnected,mediate_deleted) {{"]
    lines += [f"  {line}" if line else "" for line in body]
    lines.append("}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ loading


def is_loaded(name: str, profiles_path: str = LOADED_PROFILES_PATH) -> bool:
    """Whether the kernel has the profile (moby's IsLoaded): its lines read `NAME (enforce)`."""
    try:
        with open(profiles_path, encoding="utf-8", errors="replace") as f:
            return any(line.startswith(name + " ") for line in f)
    except OSError as err:
        raise AppArmorError(f"could not check whether the {name} AppArmor profile is loaded: reading "
                            f"{profiles_path} failed: {err.strerror or err}") from None  # fmt: skip


def find_parser(dirs: Sequence[str] = PARSER_DIRS) -> str | None:
    for d in dirs:
        path = os.path.join(d, PARSER_NAME)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


Runner = Callable[..., "subprocess.CompletedProcess[bytes]"]


def load_profile(text: str, parser: str, name: str = DEFAULT_PROFILE, run: Runner = subprocess.run) -> None:
    """Loads (or replaces) a profile: `apparmor_parser -Kr` reading the source from stdin (-K: no cache written
    to /etc/apparmor.d/cache; -r: replace a profile of that name), as moby's custom-profile loader."""
    try:
        done = run([parser, "-Kr"], input=text.encode("utf-8"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                   timeout=_PARSER_TIMEOUT_S, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as err:
        raise AppArmorError(f"AppArmor is enabled on this host but the {name} profile could not be loaded: "
                            f"running {parser} failed: {err}") from None  # fmt: skip
    if done.returncode != 0:
        said = (done.stderr or done.stdout or b"").decode("utf-8", "replace").strip().splitlines()
        raise AppArmorError(f"AppArmor is enabled on this host but the {name} profile could not be loaded: "
                            f"{parser} -Kr exited with {done.returncode}"
                            + (f": {said[-1]}" if said else ""))  # fmt: skip


def ensure_default_profile(*, parser: str | None, profiles_path: str = LOADED_PROFILES_PATH,
                           macros: TemplateMacros | None = None, run: Runner = subprocess.run) -> bool:
    """Loads socirun-default unless the kernel has it; True when it was loaded now. `parser`: the apparmor_parser
    to run (find_parser()); None fails with the fix, since a container cannot run under a profile never loaded."""
    if is_loaded(DEFAULT_PROFILE, profiles_path):
        return False
    if parser is None:
        raise AppArmorError(f"AppArmor is enabled on this host but the {DEFAULT_PROFILE} profile could not be "
                            f"loaded: {PARSER_NAME} is not installed (apt-get install {PARSER_PACKAGE}; or run "
                            "with --security-opt apparmor=unconfined)")  # fmt: skip
    load_profile(profile_text(DEFAULT_PROFILE, host_macros() if macros is None else macros), parser, run=run)
    return True


@dataclass(frozen=True)
class HostAppArmor:
    """What doctor reports: whether AppArmor is on, whether the default profile is loaded, where the parser is."""

    enabled: bool
    default_loaded: bool | None  # None: the loaded profiles could not be read
    parser: str | None


def host_apparmor(enabled_path: str = APPARMOR_ENABLED_PATH, profiles_path: str = LOADED_PROFILES_PATH,
                  parser_dirs: Sequence[str] = PARSER_DIRS) -> HostAppArmor:
    enabled = apparmor_enabled(enabled_path)
    loaded: bool | None = None
    if enabled:
        try:
            loaded = is_loaded(DEFAULT_PROFILE, profiles_path)
        except AppArmorError:
            loaded = None
    return HostAppArmor(enabled, loaded, find_parser(parser_dirs))


def describe(host: HostAppArmor) -> tuple[bool, str, str]:
    """doctor's AppArmor line: (ok, what is active, the fix)."""
    if not host.enabled:
        return True, "not enabled on this host: containers run without a profile (--security-opt apparmor= is " \
                     "ignored, as docker does)", ""
    how = "--security-opt apparmor=PROFILE names another, apparmor=unconfined and --privileged run unconfined"
    if host.default_loaded:
        return True, f"enabled; containers run under {DEFAULT_PROFILE} (loaded); {how}", ""
    if host.parser is not None:
        return True, f"enabled; containers run under {DEFAULT_PROFILE} (loaded by {host.parser} on the first " \
                     f"run); {how}", ""
    return False, f"enabled, but {PARSER_NAME} is missing: {DEFAULT_PROFILE} cannot be loaded and every run " \
                  "without --security-opt apparmor=unconfined|PROFILE or --privileged fails", \
                  f"apt-get install {PARSER_PACKAGE}"
