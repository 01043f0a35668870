"""What confines a `socirun run` container, seen from inside it with the sandbox's real containerd and runc: the
default seccomp profile (and its off switches), device nodes with the host's mode and owner, masked paths, the
default NOFILE limit, and -v onto a kernel filesystem refused. Uses test_run's environment (private data root,
bridge and subnet) and its busybox sample image."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from socirun.runtime.seccomp import DEFAULT_PROFILE_PATH
from tests.integration import test_run
from tests.integration.test_run import Env

# test_run's module fixtures, registered here too: the same private data root, bridge and pulled image setup.
env = test_run.env
image = test_run.image

needs_profile = pytest.mark.skipif(not os.path.isfile(DEFAULT_PROFILE_PATH),
                                   reason="golang-github-containers-common not installed")  # fmt: skip


def _seccomp_mode(text: str) -> str:
    return next(line.split()[1] for line in text.splitlines() if line.startswith("Seccomp:"))


@needs_profile
def test_default_seccomp_blocks_unshare_and_unconfined_or_privileged_lifts_it(env: Env, image: str) -> None:
    script = "grep '^Seccomp:' /proc/self/status; unshare -Ur true && echo unshared; true"
    default = env.run("--rm", image, "sh", "-c", script)
    assert default.code == 0, default.err
    assert _seccomp_mode(default.out) == "2" and "unshared" not in default.out
    assert "Operation not permitted" in default.err  # docker's answer to unshare without CAP_SYS_ADMIN
    for flags in (["--security-opt", "seccomp=unconfined"], ["--privileged"]):
        free = env.run("--rm", *flags, image, "sh", "-c", script)
        assert free.code == 0, free.err
        assert _seccomp_mode(free.out) == "0" and "unshared" in free.out, (flags, free.err)


def test_a_profile_file_is_applied_as_given(env: Env, image: str, tmp_path: Path) -> None:
    profile = tmp_path / "deny-mkdir.json"
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}))  # fmt: skip
    result = env.run("--rm", "--security-opt", f"seccomp={profile}", image, "sh", "-c",
                     "mkdir /tmp/x || echo refused; unshare -Ur true && echo unshared; true")  # fmt: skip
    assert result.code == 0, result.err
    assert "refused" in result.out and "Permission denied" in result.err  # errno 13 from the profile
    assert "unshared" in result.out  # only the file's rules: no default profile underneath
    missing = env.run("--rm", "--security-opt", f"seccomp={tmp_path / 'nope.json'}", image, "true")
    assert missing.code == 125 and "opening seccomp profile" in missing.err and "Traceback" not in missing.err


def _restricted_host_device() -> str:
    """A host device node that is not 0666 (a loop device, kmsg, a tty): 0666 inside would be the old bug."""
    for name in ("loop0", "kmsg", "tty1", "loop-control", "fuse"):
        path = f"/dev/{name}"
        if os.path.exists(path) and stat.S_IMODE(os.stat(path).st_mode) != 0o666:
            return path
    pytest.skip("no device node with a mode other than 0666 on this host")


def test_devices_keep_the_host_nodes_mode_and_owner(env: Env, image: str) -> None:
    host = _restricted_host_device()
    st = os.stat(host)
    want = f"{stat.S_IMODE(st.st_mode):o}:{st.st_uid}:{st.st_gid}"
    added = env.run("--rm", "--device", f"{host}:/dev/added", image, "stat", "-c", "%a:%u:%g", "/dev/added")
    assert added.code == 0, added.err
    assert added.out.strip() == want
    privileged = env.run("--rm", "--privileged", image, "stat", "-c", "%a:%u:%g", host)
    assert privileged.code == 0, privileged.err
    assert privileged.out.strip() == want


def test_masked_paths_and_default_nofile(env: Env, image: str) -> None:
    result = env.run("--rm", image, "sh", "-c", "wc -c < /proc/interrupts; ulimit -n")
    assert result.code == 0, result.err
    assert result.out.split() == ["0", "1024"]  # /proc/interrupts masked (empty); containerd's NOFILE 1024


def test_a_volume_onto_a_kernel_filesystem_is_refused_before_anything_runs(env: Env, image: str) -> None:
    result = env.run("--rm", "-v", "data:/dev", image, "true")
    assert result.code == 125 and "/dev is the kernel's dev filesystem" in result.err
    assert not (env.data_root / "volumes" / "default" / "data").exists()
    own = env.run("--rm", "-v", "/sys:/sys:ro", image, "sh", "-c", "test -d /sys/class && echo sysfs")
    assert own.code == 0 and own.out.strip() == "sysfs", own.err
