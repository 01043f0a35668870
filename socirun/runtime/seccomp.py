"""Seccomp: a profile in docker's / containers-common's JSON format → the runtime spec's `linux.seccomp` object.

The default profile is the one Debian ships in golang-github-containers-common (`/usr/share/containers/seccomp.json`,
podman's default), read at run time. That profile lets every container call `unshare`, `clone` with namespace flags,
`mount` and `setns` and leaves the rest to capabilities, so container root can `unshare -Ur` into a user namespace
where it holds every capability (and reach the kernel code that needs them). Docker's and containerd's default
profiles (nerdctl applies containerd's) allow those syscalls only with CAP_SYS_ADMIN, and `clone` only without
namespace flags; `with_docker_namespace_rules` puts those rules on top of the Debian file, so the default allows
what `docker run` and `nerdctl run` allow there. The rest of the Debian file is applied as it is.

The conversion mirrors containers-common's loader (pkg/seccomp/seccomp_linux.go `setupSeccomp`, itself docker's):
`archMap` gives the native architecture and its sub-architectures, and a rule group is kept only when its
`includes`/`excludes` match the container's bounding capabilities and the host's architecture; `includes.minKernel`
is honoured as moby's loader does. `errno` names become `errnoRet` numbers.
"""

from __future__ import annotations

import copy
import errno as errno_names
import json
import os
import platform
import re
import stat
from collections.abc import Mapping, Sequence
from typing import Any

from socirun.errors import SocirunError

# apparmor_enabled moved to socirun.runtime.apparmor; re-exported for the callers that import it from here.
from socirun.runtime.apparmor import APPARMOR_ENABLED_PATH as APPARMOR_ENABLED_PATH
from socirun.runtime.apparmor import apparmor_enabled as apparmor_enabled

DEFAULT_PROFILE_PATH = "/usr/share/containers/seccomp.json"
DEFAULT_PROFILE_PACKAGE = "golang-github-containers-common"
_MAX_PROFILE_BYTES = 4 << 20

# `uname -m` → the architecture names profiles use in includes/excludes.arches (libseccomp's / Go's names).
_NATIVE_ARCH = {
    "x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm", "armv8l": "arm", "i686": "x86",
    "i386": "x86", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64", "mips64": "mips64",
    "loongarch64": "loong64",
}  # fmt: skip
# The architecture whose archMap entry applies (moby's nativeToSeccomp; containers-common's is a subset).
_SCMP_ARCH = {
    "amd64": "SCMP_ARCH_X86_64", "arm64": "SCMP_ARCH_AARCH64", "mips64": "SCMP_ARCH_MIPS64",
    "mips64n32": "SCMP_ARCH_MIPS64N32", "mipsel64": "SCMP_ARCH_MIPSEL64", "mipsel64n32": "SCMP_ARCH_MIPSEL64N32",
    "s390x": "SCMP_ARCH_S390X", "ppc64le": "SCMP_ARCH_PPC64LE", "riscv64": "SCMP_ARCH_RISCV64",
    "loong64": "SCMP_ARCH_LOONGARCH64",
}  # fmt: skip

# Docker's default profile (moby profiles/seccomp/default.json) and containerd's allow the syscalls that make or
# enter namespaces and mount filesystems only with CAP_SYS_ADMIN (and answer EPERM without it) ...
NAMESPACE_SYSCALLS = (
    "clone", "clone3", "unshare", "setns", "mount", "umount", "umount2", "mount_setattr", "move_mount", "open_tree",
    "fsconfig", "fsmount", "fsopen", "fspick",
)  # fmt: skip
# ... clone without it only when none of CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET is set (other
# flags are fine: threads, fork), and clone3, whose flags seccomp cannot read, answers ENOSYS so that libc falls back
# to clone. (A clone with namespace flags then gets the profile's default errno, ENOSYS in Debian's file.)
CLONE_NAMESPACE_FLAGS = 0x7E020000
_ENOSYS = 38
_EPERM = 1
_WITHOUT_ADMIN: dict[str, Any] = {"caps": ["CAP_SYS_ADMIN"]}
DOCKER_NAMESPACE_RULES: tuple[dict[str, Any], ...] = (
    {"names": list(NAMESPACE_SYSCALLS), "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
    {"names": [n for n in NAMESPACE_SYSCALLS if n not in ("clone", "clone3")], "action": "SCMP_ACT_ERRNO",
     "errnoRet": _EPERM, "excludes": _WITHOUT_ADMIN},
    {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
     "args": [{"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
     "excludes": {"caps": ["CAP_SYS_ADMIN"], "arches": ["s390", "s390x"]}},
    {"names": ["clone"], "action": "SCMP_ACT_ALLOW", "comment": "s390 parameter ordering for clone is different",
     "args": [{"index": 1, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
     "includes": {"arches": ["s390", "s390x"]}, "excludes": _WITHOUT_ADMIN},
    {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": _ENOSYS, "excludes": _WITHOUT_ADMIN},
)  # fmt: skip


class SeccompProfileError(SocirunError):
    """A seccomp profile that cannot be read or does not have the expected shape."""


def native_arch(machine: str | None = None) -> str:
    """The host's architecture as profiles name it (`amd64`, `arm64`, ...)."""
    machine = machine or platform.machine()
    return _NATIVE_ARCH.get(machine, machine)


def kernel_version(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of a kernel release string such as `6.1.0-18-amd64`; (0, 0) if it cannot be read."""
    return _version(release if release is not None else platform.release())


def _version(text: str) -> tuple[int, int]:
    found = re.match(r"\s*(\d+)\.(\d+)", text)
    return (int(found[1]), int(found[2])) if found else (0, 0)


def _unconditional_allow(group: Mapping[str, Any]) -> bool:
    return (group.get("action") == "SCMP_ACT_ALLOW" and not group.get("args")
            and not any((group.get("includes") or {}).values()) and not any((group.get("excludes") or {}).values()))


def with_docker_namespace_rules(profile: Mapping[str, Any]) -> dict[str, Any]:
    """The profile with docker's namespace rules: NAMESPACE_SYSCALLS leave the groups that allow them
    unconditionally and come back through DOCKER_NAMESPACE_RULES (see the module docstring for why)."""
    moved = set(NAMESPACE_SYSCALLS)
    groups: list[Any] = []
    for group in profile.get("syscalls") or []:
        if isinstance(group, Mapping) and _unconditional_allow(group) and moved & set(group.get("names") or ()):
            names = [n for n in group.get("names") or () if n not in moved]
            if not names:
                continue
            group = {**group, "names": names}
        groups.append(group)
    return {**profile, "syscalls": [*groups, *copy.deepcopy(DOCKER_NAMESPACE_RULES)]}


def _errno(value: Any, name: Any, where: str) -> int | None:
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SeccompProfileError(f"invalid seccomp profile: {where} has errnoRet {value!r}, not an errno number")
        return value
    if name:
        number = getattr(errno_names, str(name), None)
        if not isinstance(number, int):
            raise SeccompProfileError(f"invalid seccomp profile: {where} names an unknown errno {name!r}")
        return number
    return None


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SeccompProfileError(f"invalid seccomp profile: {where} must be a list of strings")
    return value


def _filter(group: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = group.get(key) or {}
    if not isinstance(value, Mapping):
        raise SeccompProfileError(f"invalid seccomp profile: {where}.{key} must be an object")
    return value


def _group_applies(group: Mapping[str, Any], caps: set[str], arch: str, kernel: tuple[int, int] | None,
                   where: str) -> bool:  # fmt: skip
    inc, exc = _filter(group, "includes", where), _filter(group, "excludes", where)
    if arch in _strings(exc.get("arches"), f"{where}.excludes.arches"):
        return False
    if caps & set(_strings(exc.get("caps"), f"{where}.excludes.caps")):
        return False
    arches = _strings(inc.get("arches"), f"{where}.includes.arches")
    if arches and arch not in arches:
        return False
    if not set(_strings(inc.get("caps"), f"{where}.includes.caps")) <= caps:
        return False
    min_kernel = inc.get("minKernel")
    # Without a known kernel version (kernel None) the group is kept, as moby keeps it when uname fails.
    return not (min_kernel and kernel is not None and kernel < _version(str(min_kernel)))


def _args(group: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    raw = group.get("args") or []
    if not isinstance(raw, list):
        raise SeccompProfileError(f"invalid seccomp profile: {where}.args must be a list")
    out: list[dict[str, Any]] = []
    for arg in raw:
        if not isinstance(arg, Mapping) or not isinstance(arg.get("op"), str):
            raise SeccompProfileError(f"invalid seccomp profile: {where}.args needs objects with an op")
        numbers = [arg.get("index", 0), arg.get("value", 0), arg.get("valueTwo", 0)]
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in numbers):
            raise SeccompProfileError(f"invalid seccomp profile: {where}.args has a non-numeric index or value")
        out.append({"index": numbers[0], "value": numbers[1], "valueTwo": numbers[2], "op": arg["op"]})
    return out


def to_oci_seccomp(profile: Mapping[str, Any], caps: Sequence[str], arch: str,
                   kernel: tuple[int, int] | None = None) -> dict[str, Any] | None:  # fmt: skip
    """The spec's `linux.seccomp` for a container with bounding capabilities `caps` on a host of architecture
    `arch` (profile names: amd64, arm64, ...) running kernel `kernel` (major, minor). None for a profile with
    neither a default action nor syscalls (containers-common: seccomp disabled)."""
    if not isinstance(profile, Mapping):
        raise SeccompProfileError("invalid seccomp profile: not a JSON object")
    default_action = profile.get("defaultAction") or ""
    groups = profile.get("syscalls") or []
    if not isinstance(default_action, str) or not isinstance(groups, list):
        raise SeccompProfileError("invalid seccomp profile: defaultAction must be a string and syscalls a list")
    if not default_action and not groups:
        return None
    if not default_action:
        raise SeccompProfileError("invalid seccomp profile: defaultAction is missing")
    out: dict[str, Any] = {"defaultAction": default_action}
    default_errno = _errno(profile.get("defaultErrnoRet"), profile.get("defaultErrno"), "defaultErrnoRet")
    if default_errno is not None:
        out["defaultErrnoRet"] = default_errno
    architectures = _strings(profile.get("architectures"), "architectures")
    arch_map = profile.get("archMap") or []
    if architectures and arch_map:
        raise SeccompProfileError("invalid seccomp profile: 'architectures' and 'archMap' were both specified, "
                                  "use either 'architectures' or 'archMap'")  # fmt: skip
    if not isinstance(arch_map, list):
        raise SeccompProfileError("invalid seccomp profile: archMap must be a list")
    native = _SCMP_ARCH.get(arch)
    for entry in arch_map:
        if isinstance(entry, Mapping) and native is not None and entry.get("architecture") == native:
            architectures = [native, *_strings(entry.get("subArchitectures"), "archMap.subArchitectures")]
            break
    if architectures:
        out["architectures"] = architectures
    flags = _strings(profile.get("flags"), "flags")
    if flags:
        out["flags"] = flags
    cap_set = set(caps)
    syscalls: list[dict[str, Any]] = []
    for i, group in enumerate(groups):
        where = f"syscalls[{i}]"
        if not isinstance(group, Mapping):
            raise SeccompProfileError(f"invalid seccomp profile: {where} is not an object")
        if not _group_applies(group, cap_set, arch, kernel, where):
            continue
        name, names = group.get("name"), _strings(group.get("names"), f"{where}.names")
        if name and names:
            raise SeccompProfileError(f"invalid seccomp profile: {where} has both 'name' and 'names', use one")
        if name:
            names = [str(name)]
        action = group.get("action")
        if not isinstance(action, str) or not action:
            raise SeccompProfileError(f"invalid seccomp profile: {where} has no action")
        if not names:
            continue
        rule: dict[str, Any] = {"names": names, "action": action}
        args = _args(group, where)
        if args:
            rule["args"] = args
        errno_ret = _errno(group.get("errnoRet"), group.get("errno"), f"{where}.errnoRet")
        if errno_ret is not None:
            rule["errnoRet"] = errno_ret
        syscalls.append(rule)
    out["syscalls"] = syscalls
    return out


# ------------------------------------------------------------------------------------------------ I/O


def load_profile(setting: str, *, privileged: bool,
                 default_path: str = DEFAULT_PROFILE_PATH) -> Mapping[str, Any] | None:  # fmt: skip
    """The profile a run applies, as parsed JSON: None when unconfined (`seccomp=unconfined`, or --privileged as
    docker does); the default (`""`/`builtin`) is the Debian file with docker's CAP_SYS_ADMIN rules; anything
    else is a profile file. A missing default profile is an error rather than a silently unconfined container."""
    if privileged or setting == "unconfined":
        return None
    default = setting in ("", "builtin")
    path = default_path if default else setting
    try:
        text = _read(path)
    except FileNotFoundError:
        if default:
            raise SeccompProfileError(
                f"the default seccomp profile {path} is missing: install the Debian package "
                f"{DEFAULT_PROFILE_PACKAGE} (scripts/install-deps.sh does), or run with --security-opt "
                "seccomp=unconfined"
            ) from None
        raise SeccompProfileError(f"opening seccomp profile ({path}) failed: no such file or directory") from None
    except OSError as err:
        raise SeccompProfileError(f"opening seccomp profile ({path}) failed: {err.strerror or err}") from None
    profile = _parse(text, path)
    return with_docker_namespace_rules(profile) if default else profile


def _read(path: str) -> str:
    # A profile is small: regular files only, read capped, so a FIFO or /dev/zero named by mistake neither hangs
    # nor fills memory.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno_names.EINVAL, "not a regular file")
        data = f.read(_MAX_PROFILE_BYTES + 1)
    if len(data) > _MAX_PROFILE_BYTES:
        raise OSError(errno_names.EFBIG, f"larger than {_MAX_PROFILE_BYTES >> 20} MiB")
    return data.decode("utf-8", errors="replace")


def _parse(text: str, path: str) -> Mapping[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise SeccompProfileError(f"decoding seccomp profile ({path}) failed: {err}") from None
    if not isinstance(value, dict):
        raise SeccompProfileError(f"decoding seccomp profile ({path}) failed: not a JSON object")
    return value

