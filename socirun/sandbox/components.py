"""Where the Go-built components are (scripts/build-go-components.sh puts them in versioned directories under
/opt/socirun/bin, with stable symlinks), and what version each reports."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from socirun.errors import SandboxError

BUILT_DIR = Path("/opt/socirun/bin")
BUILD_HINT = "build it with `bash scripts/build-go-components.sh --containerd2` (needs Go and the Go module proxy)"


def find_binary(name: str) -> str | None:
    """`name` from /opt/socirun/bin (where the install script builds it), else from PATH."""
    built = BUILT_DIR / name
    if os.access(built, os.X_OK):
        return str(built)
    return shutil.which(name)


def require(name: str) -> str:
    path = find_binary(name)
    if path is None:
        raise SandboxError(f"{name} was not found in {BUILT_DIR} or on PATH: {BUILD_HINT}.")
    return path


def containerd2_dir() -> Path:
    """The directory of the built containerd 2.x (containerd, ctr, containerd-shim-runc-v2), found through the
    stable symlink so the pinned version lives in the build script alone."""
    link = BUILT_DIR / "containerd"
    target = link.resolve()
    if not (target.parent != BUILT_DIR and os.access(target, os.X_OK)
            and os.access(target.parent / "containerd-shim-runc-v2", os.X_OK)):
        raise SandboxError(f"containerd 2.x was not found in {BUILT_DIR}: {BUILD_HINT}.")
    return target.parent


def resolve_containerd(choice: str) -> str:
    """The containerd binary `choice` names: a path (made absolute), or a bare name looked up on PATH."""
    if os.sep not in choice:
        found = shutil.which(choice)
        if found is None:
            raise SandboxError(f"{choice} was not found on PATH: give the path of a containerd binary.")
        return found
    path = Path(choice).absolute()
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise SandboxError(f"{path} is not an executable file: give the path of a containerd binary.")
    return str(path)


def containerd_major(version: str) -> int | None:
    """The major version in what `version_of` reports for containerd: "v2.4.2" -> 2, "1.6.20~ds1 ..." -> 1;
    None when it is not a version."""
    first = version.split()[0].removeprefix("v") if version.split() else ""
    major = first.split(".")[0]
    return int(major) if major.isdigit() and "." in first else None


def config_version_for(major: int) -> int:
    """containerd's config schema: `version = 2` for 1.x, 3 for 2.x (2.x migrates older files at every start
    and 1.x refuses version 3)."""
    return 3 if major >= 2 else 2


def ctr_beside(containerd: str) -> str:
    """The `ctr` built with `containerd` (in the same directory, as the Debian package and the build script put
    them), else the first on PATH: a 1.6 ctr cannot list 2.x's deprecations or use its transfer service."""
    if containerd:
        beside = Path(containerd).parent / "ctr"
        if os.access(beside, os.X_OK):
            return str(beside)
    return shutil.which("ctr") or "ctr"


def version_of(binary: str) -> str:
    """What `binary --version` reports, without the program's name: "v0.16.1 61147fe7c929", "v2.4.2"."""
    try:
        done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unknown ({err.__class__.__name__})"
    words = done.stdout.split()
    if "version" in words:  # "soci version v0.16.1 61147fe7c929", "runc version 1.1.5+ds1 ..."
        words = words[words.index("version") + 1:]
    elif len(words) >= 3:  # "containerd github.com/containerd/containerd/v2 v2.4.2 <revision>"
        words = words[2:]
    return " ".join(words[:2]) if words else "unknown"
