"""`socirun doctor` and `socirun plan` against the plain sandbox (no soci registered)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from socirun.sandbox.sandbox import SandboxInfo


def _socirun(sandbox: SandboxInfo, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, CONTAINERD_ADDRESS=sandbox.containerd_address) | (env or {})
    return subprocess.run([sys.executable, "-m", "socirun", *args], capture_output=True, text=True, env=full,
                          timeout=120, check=False)


def test_doctor_reports_containerd_and_missing_soci(sandbox: SandboxInfo, sample_5: str, tmp_path: Path) -> None:
    done = _socirun(sandbox, "doctor", sample_5, env={"SOCI_SNAPSHOTTER_CONFIG": str(tmp_path / "none.toml"),
                                                     "DOCKER_CONFIG": str(tmp_path)})
    assert done.returncode == 0, done.stderr  # nothing required is missing
    assert done.stdout == ""
    # The Version API's version (the one `containerd --version` printed first), and what differs for socirun.
    version = sandbox.containerd_version.split()[0]
    assert f"[ok  ] containerd: containerd {version} at {sandbox.containerd_address}" in done.stderr
    if version.startswith("v2."):
        assert "[ok  ] containerd 2.x: config `version = 3`" in done.stderr
        if not os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
            assert "[note] cgroup v1: containerd 2.2+ deprecates cgroup v1" in done.stderr
    else:
        assert "[ok  ] containerd 1.6: config `version = 2`" in done.stderr
    assert "[note] snapshotter soci: containerd has no snapshotter called soci" in done.stderr
    assert "[proxy_plugins.soci]" in done.stderr  # the fix
    assert "SOCI metrics: metrics_address is not set" in done.stderr
    assert "credentials for 127.0.0.1" in done.stderr and "docker login" in done.stderr
    assert "CNI plugins" in done.stderr and "GPUs" in done.stderr


def test_doctor_without_containerd_fails_with_fix(tmp_path: Path, sandbox: SandboxInfo) -> None:
    done = _socirun(sandbox, "--address", str(tmp_path / "nope.sock"), "doctor")
    assert done.returncode == 1
    assert "[FAIL] containerd:" in done.stderr and "fix: start containerd" in done.stderr


def test_plan_json_without_soci(sandbox: SandboxInfo, sample_5: str, tmp_path: Path) -> None:
    done = _socirun(sandbox, "plan", "--json", "--pull-mode", "lazy", sample_5,
                    env={"SOCI_SNAPSHOTTER_CONFIG": str(tmp_path / "none.toml")})
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["snapshotter"] == "overlayfs"
    assert any("no snapshotter called soci" in r for r in plan["reasons"])
    assert plan["warnings"] and any("proxy_plugins.soci" in f for f in plan["fixes"])
    assert len(plan["layers"]) == 5
    text = _socirun(sandbox, "plan", sample_5)
    assert text.returncode == 0 and text.stdout.startswith("snapshotter: overlayfs")
