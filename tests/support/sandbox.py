"""Sandbox helpers for the integration tests: what the host must have, short socket-safe directories, the
sample the session fixtures push, and the type of the `ctr` fixture."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

# The base layer plus four small data layers: five layers, ~4 MB compressed, quick to push and pull.
SAMPLE_5_LAYERS_MB = (1.0, 1.0, 2.0, 4.0)
SAMPLE_5_NAME = "socirun/sample5"
SAMPLE_5_TAG = "latest"

CtrRunner = Callable[..., "subprocess.CompletedProcess[str]"]


def missing_requirement() -> str | None:
    """Why the sandbox cannot run here, or None."""
    if os.geteuid() != 0:
        return "the integration tests need root (containerd mounts snapshots and runs runc)"
    for binary in ("containerd", "ctr", "runc", "docker-registry"):
        if shutil.which(binary) is None:
            return f"{binary} is not installed"
    return None


def short_tmp_dir(prefix: str = "srt-") -> Path:
    """A fresh directory directly under /tmp: unix socket paths inside it stay far below 108 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
