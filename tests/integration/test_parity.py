"""docker parity where only the real runtime can tell (issue 13): a --mount bind of a missing path, what
--shm-size, --label and --domainname put in containerd's record of the spec, and --ulimit nofile above the
kernel's fs.nr_open. Narrow runs: `pytest tests/integration/test_parity.py`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.integration.test_run import CtrRunner, Env, env, image  # noqa: F401 (the module's fixtures)
from tests.support.waiting import wait_until


def test_mount_bind_of_a_missing_path_is_125_and_creates_nothing(env: Env, image: str, tmp_path: Path) -> None:  # noqa: F811
    missing = tmp_path / "not-there"
    result = env.run("--rm", "--mount", f"type=bind,src={missing},dst=/x", image, "true")
    assert result.code == 125, result.err
    assert f'invalid mount config for type "bind": bind source path does not exist: {missing}' in result.err
    assert not missing.exists()
    # -v still creates a missing host directory, as docker does.
    made = tmp_path / "made"
    assert env.run("--rm", "-v", f"{made}:/x", image, "true").code == 0 and made.is_dir()


def _spec(ctr: CtrRunner, cid: str) -> Any:
    return json.loads(ctr("containers", "info", cid).stdout)["Spec"]


def test_shm_size_labels_and_domainname_in_containerds_spec(env: Env, image: str, ctr: CtrRunner) -> None:  # noqa: F811
    result = env.run("-d", "--rm", "--shm-size", "32", "--label", "bare", "--label", "empty=", "--domainname",
                     "example.org", image, "sleep", "60")  # fmt: skip
    assert result.code == 0, result.err
    cid = result.out.strip()
    try:
        spec = _spec(ctr, cid)
        shm = next(m for m in spec["mounts"] if m["destination"] == "/dev/shm")
        assert "size=32" in shm["options"]  # bytes, as docker; not size=0k (unlimited)
        assert spec["annotations"]["bare"] == "" and spec["annotations"]["empty"] == ""
        assert spec["domainname"] == "example.org"
    finally:
        ctr("tasks", "kill", "--signal", "SIGKILL", cid, check=False)
        assert wait_until(lambda: cid not in ctr("containers", "ls", "-q").stdout, 20)
    # Inside: a one-page /dev/shm (tmpfs rounds 32 bytes up), not an unlimited one.
    inside = env.run("--rm", "--shm-size", "32", image, "grep", " /dev/shm ", "/proc/mounts")
    assert inside.code == 0 and "size=4k" in inside.out, inside.err


def test_ulimit_nofile_above_nr_open_is_one_sentence(env: Env, image: str) -> None:  # noqa: F811
    nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
    for value in (str(nr_open + 1), "-1"):
        result = env.run("--rm", "--ulimit", f"nofile={value}", image, "true")
        assert result.code == 125, result.err
        assert f"the kernel allows at most {nr_open} open files per process (fs.nr_open)" in result.err
        assert "error setting rlimit" not in result.err and len(result.err.strip().splitlines()) == 1
    # At nr_open itself the kernel may still refuse (raising the hard limit past the runtime's own needs
    # CAP_SYS_RESOURCE, which some hosts' runtimes lack): then runc's error comes back as one sentence.
    edge = env.run("--rm", "--ulimit", f"nofile={nr_open}", image, "sh", "-c", "ulimit -n")
    if edge.code == 0:
        assert edge.out.strip() == str(nr_open)
    else:
        assert edge.code == 125 and edge.err == ("socirun: the kernel refused --ulimit nofile (operation not "
                                                 "permitted): the value is above what this host allows\n")  # fmt: skip
    ok = env.run("--rm", "--ulimit", "nofile=2048:4096", image, "sh", "-c", "ulimit -n")
    assert ok.code == 0 and ok.out.strip() == "2048", ok.err
