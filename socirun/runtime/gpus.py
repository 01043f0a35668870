"""--gpus: turn a GpuRequest into devices, mounts, env and hooks for the spec builder.

Order (the issue's, and docker's preference): CDI specs when the host has them (`/etc/cdi`, `/var/run/cdi`,
kind `nvidia.com/gpu`); otherwise the nvidia-container-toolkit prestart hook when installed; otherwise socirun's
own injection: the `/dev/nvidia*` nodes of the chosen GPUs plus the control nodes, the driver's user-space
libraries (from `ldconfig -p` and `/usr/local/nvidia`) and binaries bind-mounted read-only, and
`NVIDIA_VISIBLE_DEVICES`. Every host path is taken under `root`, so tests run the discovery on a fake tree.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from socirun.errors import SocirunError
from socirun.runtime.options import GpuRequest
from socirun.runtime.spec import Hook, SpecDevice, SpecMount

CDI_DIRS = ("etc/cdi", "var/run/cdi")
CDI_KIND = "nvidia.com/gpu"
HOOK_BINARY = "nvidia-container-runtime-hook"
CONTROL_DEVICES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
DRIVER_BINARIES = ("nvidia-smi", "nvidia-debugdump", "nvidia-persistenced", "nvidia-cuda-mps-control",
                   "nvidia-cuda-mps-server")  # fmt: skip
# The driver's user-space libraries (what nvidia-container-cli calls the utility + compute sets, and a few more).
_DRIVER_LIB_RE = re.compile(
    r"^(libcuda|libcudadebugger|libnvidia-[a-z0-9-]+|libnvcuvid|libnvoptix|libGLX_nvidia|libEGL_nvidia|"
    r"libGLESv1_CM_nvidia|libGLESv2_nvidia|libnvidia)\.so(\.\d+)*$"
)
_LDCONFIG_LINE = re.compile(r"^\s*(\S+)\s+\(([^)]*)\)\s+=>\s+(\S+)\s*$")
_LIB_OPTIONS = ("ro", "nosuid", "nodev", "bind")
DEFAULT_CAPABILITIES = "compute,utility"

DeviceNumbers = Callable[[str], tuple[str, int, int] | None]


class GpuError(SocirunError):
    """--gpus cannot be honoured on this host (exit 125)."""


@dataclass
class GpuInjection:
    method: str  # "cdi" | "nvidia-hook" | "builtin"
    devices: list[SpecDevice] = field(default_factory=list)
    mounts: list[SpecMount] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    hooks: dict[str, list[Hook]] = field(default_factory=dict)
    gpus: list[str] = field(default_factory=list)  # what was chosen, for messages


def host_device_numbers(path: str) -> tuple[str, int, int] | None:
    """("c"|"b", major, minor) of a device node, or None when `path` is not one."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if stat.S_ISCHR(st.st_mode):
        return "c", os.major(st.st_rdev), os.minor(st.st_rdev)
    if stat.S_ISBLK(st.st_mode):
        return "b", os.major(st.st_rdev), os.minor(st.st_rdev)
    return None


def run_ldconfig() -> str:
    for binary in ("ldconfig", "/sbin/ldconfig", "/usr/sbin/ldconfig"):
        path = shutil.which(binary) or (binary if os.path.isabs(binary) and os.path.exists(binary) else None)
        if path:
            try:
                return subprocess.run([path, "-p"], capture_output=True, text=True, timeout=10, check=False).stdout
            except (OSError, subprocess.TimeoutExpired):
                return ""
    return ""


def _under(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def _visible_value(req: GpuRequest, chosen: Sequence[str]) -> str:
    if req.count == -1 and not req.device_ids:
        return "all"
    return ",".join(chosen)


def _caps_value(req: GpuRequest) -> str:
    caps = [c for c in req.capabilities if c != "gpu"]
    return ",".join(caps) if caps else DEFAULT_CAPABILITIES


# ------------------------------------------------------------------------------------------------ CDI


def _load_cdi_specs(root: str) -> list[dict[str, Any]]:
    specs: list[dict[str, Any]] = []
    for d in CDI_DIRS:
        for path in sorted(glob.glob(os.path.join(_under(root, d), "*"))):
            text = ""
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except OSError:
                continue
            data: Any = None
            if path.endswith(".json"):
                try:
                    data = json.loads(text)
                except ValueError:
                    continue
            elif path.endswith((".yaml", ".yml")):
                try:
                    import yaml  # type: ignore[import-untyped]  # optional: nvidia-ctk writes YAML by default
                except ImportError:
                    continue
                try:
                    data = yaml.safe_load(text)
                except Exception:
                    continue
            if isinstance(data, dict) and data.get("kind") == CDI_KIND:
                specs.append(data)
    return specs


def _cdi_pick(req: GpuRequest, names: list[str]) -> list[str]:
    ordered = sorted((n for n in names if n != "all"), key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n))
    if req.device_ids:
        missing = [d for d in req.device_ids if d not in names]
        if missing:
            raise GpuError(f"unresolvable CDI devices {', '.join(f'{CDI_KIND}={m}' for m in missing)}")
        return list(req.device_ids)
    if req.count == -1:
        return ["all"] if "all" in names else ordered
    if req.count > len(ordered):
        raise GpuError(f"--gpus asked for {req.count} GPUs but the CDI specs describe {len(ordered)}")
    return ordered[: req.count]


def _apply_cdi_edits(edits: dict[str, Any], inj: GpuInjection, numbers: DeviceNumbers, root: str) -> None:
    inj.env += [str(e) for e in edits.get("env") or []]
    for node in edits.get("deviceNodes") or []:
        path = str(node["path"])
        host = str(node.get("hostPath") or path)
        kind, major, minor = node.get("type"), node.get("major"), node.get("minor")
        if major is None or minor is None or kind is None:
            found = numbers(_under(root, host))
            if found is None:
                raise GpuError(f"CDI device node {host} does not exist on this host")
            kind = kind or found[0]
            major = found[1] if major is None else major
            minor = found[2] if minor is None else minor
        inj.devices.append(SpecDevice(path, str(kind), int(major), int(minor), int(node.get("fileMode") or 0o666),
                                      permissions=str(node.get("permissions") or "rwm")))  # fmt: skip
    for m in edits.get("mounts") or []:
        opts = tuple(m.get("options") or ("ro", "nosuid", "nodev", "bind"))
        inj.mounts.append(SpecMount(str(m["containerPath"]), str(m.get("type") or "bind"), str(m["hostPath"]), opts))
    for h in edits.get("hooks") or []:
        stage = str(h.get("hookName") or "createContainer")
        inj.hooks.setdefault(stage, []).append(
            Hook(str(h["path"]), tuple(str(a) for a in h.get("args") or ()), tuple(str(e) for e in h.get("env") or ()))
        )


def _from_cdi(req: GpuRequest, specs: list[dict[str, Any]], numbers: DeviceNumbers, root: str) -> GpuInjection:
    devices: dict[str, dict[str, Any]] = {}
    for spec in specs:
        for dev in spec.get("devices") or []:
            devices.setdefault(str(dev.get("name")), dev)
    chosen = _cdi_pick(req, list(devices))
    inj = GpuInjection("cdi", gpus=[f"{CDI_KIND}={c}" for c in chosen])
    for spec in specs:
        _apply_cdi_edits(spec.get("containerEdits") or {}, inj, numbers, root)
    for name in chosen:
        _apply_cdi_edits(devices[name].get("containerEdits") or {}, inj, numbers, root)
    return inj


# ------------------------------------------------------------------------------------------------ built-in


def gpu_minors(root: str) -> list[int]:
    found = []
    for path in glob.glob(_under(root, "dev/nvidia*")):
        suffix = os.path.basename(path).removeprefix("nvidia")
        if suffix.isdigit():
            found.append(int(suffix))
    return sorted(found)


def gpu_uuids(root: str) -> dict[str, int]:
    """UUID → device minor, from /proc/driver/nvidia/gpus/*/information."""
    out: dict[str, int] = {}
    for info in glob.glob(_under(root, "proc/driver/nvidia/gpus/*/information")):
        try:
            with open(info, encoding="utf-8") as f:
                text = f.read()
        except OSError:
            continue
        uuid = re.search(r"^GPU UUID:\s*(\S+)", text, re.M)
        minor = re.search(r"^Device Minor:\s*(\d+)", text, re.M)
        if uuid and minor:
            out[uuid.group(1)] = int(minor.group(1))
    return out


def _builtin_pick(req: GpuRequest, minors: list[int], uuids: dict[str, int]) -> list[int]:
    if req.device_ids:
        chosen = []
        for d in req.device_ids:
            if d.isdigit() and int(d) in minors:
                chosen.append(int(d))
            elif d in uuids and uuids[d] in minors:
                chosen.append(uuids[d])
            else:
                have = ", ".join(str(m) for m in minors)
                raise GpuError(f"--gpus device={d}: no such GPU on this host (GPUs: {have})")
        return chosen
    if req.count == -1:
        return list(minors)
    if req.count > len(minors):
        raise GpuError(f"--gpus asked for {req.count} GPUs but this host has {len(minors)}")
    return minors[: req.count]


def driver_libraries(ldconfig_text: str, root: str, arch_tag: str = "x86-64") -> list[str]:
    """Host paths of the NVIDIA driver libraries: `ldconfig -p` entries plus /usr/local/nvidia/lib{64,}."""
    libs: dict[str, str] = {}
    for line in ldconfig_text.splitlines():
        m = _LDCONFIG_LINE.match(line)
        if not m:
            continue
        name, flags, path = m.groups()
        if not _DRIVER_LIB_RE.match(name):
            continue
        if arch_tag == "x86-64" and "x86-64" not in flags:
            continue
        libs.setdefault(name, path)
    for d in ("usr/local/nvidia/lib64", "usr/local/nvidia/lib"):
        for path in sorted(glob.glob(os.path.join(_under(root, d), "*.so*"))):
            name = os.path.basename(path)
            if _DRIVER_LIB_RE.match(name):
                libs.setdefault(name, path)
    return [libs[k] for k in sorted(libs)]


def driver_binaries(root: str, which: Callable[[str], str | None]) -> list[str]:
    out = []
    for name in DRIVER_BINARIES:
        for candidate in (_under(root, f"usr/local/nvidia/bin/{name}"), _under(root, f"usr/bin/{name}")):
            if os.path.isfile(candidate):
                out.append(candidate)
                break
        else:
            found = which(name) if root in ("", "/") else None
            if found:
                out.append(found)
    return out


def _multiarch(arch_tag: str) -> str:
    return "aarch64-linux-gnu" if arch_tag == "aarch64" else "x86_64-linux-gnu"


def _builtin(req: GpuRequest, root: str, numbers: DeviceNumbers, ldconfig_text: str,
             which: Callable[[str], str | None], arch_tag: str) -> GpuInjection:  # fmt: skip
    minors = gpu_minors(root)
    if not minors:
        raise GpuError(
            "--gpus was given but this host has no NVIDIA GPU: no CDI spec for nvidia.com/gpu in /etc/cdi or "
            f"/var/run/cdi, no {HOOK_BINARY}, and no /dev/nvidia0 (is the NVIDIA driver loaded?)"
        )
    chosen = _builtin_pick(req, minors, gpu_uuids(root))
    inj = GpuInjection("builtin", gpus=[str(m) for m in chosen])
    nodes = [f"nvidia{m}" for m in chosen] + [c for c in CONTROL_DEVICES if os.path.exists(_under(root, f"dev/{c}"))]
    for node in nodes:
        found = numbers(_under(root, f"dev/{node}"))
        if found is None:
            raise GpuError(f"/dev/{node} is not a device node; is the NVIDIA driver loaded?")
        inj.devices.append(SpecDevice(f"/dev/{node}", found[0], found[1], found[2]))
    lib_dir = f"/usr/lib/{_multiarch(arch_tag)}"
    for lib in driver_libraries(ldconfig_text, root, arch_tag):
        inj.mounts.append(SpecMount(f"{lib_dir}/{os.path.basename(lib)}", "bind", lib, _LIB_OPTIONS))
    for binary in driver_binaries(root, which):
        inj.mounts.append(SpecMount(f"/usr/bin/{os.path.basename(binary)}", "bind", binary, _LIB_OPTIONS))
    inj.env += [f"NVIDIA_VISIBLE_DEVICES={_visible_value(req, inj.gpus)}",
                f"NVIDIA_DRIVER_CAPABILITIES={_caps_value(req)}"]  # fmt: skip
    return inj


# ------------------------------------------------------------------------------------------------ entry point


def plan_gpus(
    req: GpuRequest,
    *,
    root: str = "/",
    numbers: DeviceNumbers = host_device_numbers,
    ldconfig: Callable[[], str] = run_ldconfig,
    which: Callable[[str], str | None] = shutil.which,
    arch_tag: str = "x86-64",
) -> GpuInjection:
    """Decide how the requested GPUs reach the container. Raises GpuError (exit 125) with one sentence."""
    specs = _load_cdi_specs(root)
    if specs:
        return _from_cdi(req, specs, numbers, root)
    hook = which(HOOK_BINARY) if root in ("", "/") else None
    if hook is None and root not in ("", "/"):
        candidate = _under(root, f"usr/bin/{HOOK_BINARY}")
        hook = candidate if os.path.isfile(candidate) else None
    if hook is not None:
        if req.device_ids:
            visible = ",".join(req.device_ids)
        elif req.count == -1:
            visible = "all"
        else:
            visible = ",".join(str(i) for i in range(req.count))
        return GpuInjection(
            "nvidia-hook",
            env=[f"NVIDIA_VISIBLE_DEVICES={visible}", f"NVIDIA_DRIVER_CAPABILITIES={_caps_value(req)}"],
            hooks={"prestart": [Hook(hook, (HOOK_BINARY, "prestart"))]},
            gpus=visible.split(","),
        )
    return _builtin(req, root, numbers, ldconfig(), which, arch_tag)
