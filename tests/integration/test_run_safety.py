"""Host-side safety of `socirun run` against the sandbox's real containerd and runc (issue 12): the `-d` reaper
never imports code from the caller's directory, the data root and volumes are private and volumes mounted
nosuid/nodev, --cidfile is opened exclusively before anything exists, of two runs with one --name exactly one
wins, and an interrupted --rm run removes nothing under a running task.

Every run uses `--network none` and a private data root, so no bridge or CNI allocation is shared with other tests.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from socirun.sandbox.sandbox import SandboxInfo
from tests.support.socirun_env import socirun_vars
from tests.support.waiting import wait_until

CtrRunner = Callable[..., "subprocess.CompletedProcess[str]"]
# The installed entry point, as users start it: its sys.path starts with its own directory, not the cwd.
SOCIRUN = Path(sys.executable).parent / "socirun"


@dataclass
class Env:
    vars: dict[str, str]
    data_root: Path

    def argv(self, *args: str) -> list[str]:
        return [str(SOCIRUN) if SOCIRUN.exists() else sys.executable, *([] if SOCIRUN.exists() else ["-m", "socirun"]),
                "--progress", "quiet", *args]  # fmt: skip

    def run(self, *args: str, cwd: Path | None = None, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), capture_output=True, text=True, env=self.vars, cwd=cwd,
                              timeout=timeout, check=False)  # fmt: skip

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self.vars)  # fmt: skip


@pytest.fixture(scope="module")
def env(sandbox: SandboxInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    home = tmp_path_factory.mktemp("safetycfg")
    # Not created beforehand: socirun makes it, with its own modes.
    data_root = tmp_path_factory.mktemp("safetydata") / "root"
    yield Env(socirun_vars(sandbox.containerd_address, data_root, home), data_root)


@pytest.fixture(scope="module")
def image(env: Env, sample_5: str) -> str:
    first = env.run("--rm", "--network", "none", sample_5, "true")
    assert first.returncode == 0, first.stderr
    return sample_5


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _containers(ctr: CtrRunner) -> set[str]:
    return set(ctr("containers", "ls", "-q").stdout.split())


def test_the_data_root_is_private_and_volumes_are_nosuid_nodev(env: Env, image: str) -> None:
    old = os.umask(0o022)
    try:
        done = env.run("--rm", "--network", "none", "-v", "safetyvol:/v", image, "sh", "-c", "grep ' /v ' /proc/mounts")
    finally:
        os.umask(old)
    assert done.returncode == 0, done.stderr
    options = done.stdout.split()[3].split(",")
    assert "nosuid" in options and "nodev" in options, done.stdout
    assert _mode(env.data_root) == 0o711
    assert _mode(env.data_root / "volumes") == 0o700 and _mode(env.data_root / "containers") == 0o700


def test_a_loose_data_root_is_repaired_by_the_next_run(env: Env, image: str) -> None:
    os.chmod(env.data_root, 0o755)
    os.chmod(env.data_root / "volumes", 0o755)
    done = env.run("--rm", "--network", "none", image, "true")
    assert done.returncode == 0, done.stderr
    assert _mode(env.data_root) == 0o711 and _mode(env.data_root / "volumes") == 0o700


def test_the_detached_reaper_does_not_import_code_from_the_callers_directory(env: Env, image: str, ctr: CtrRunner,
                                                                             tmp_path: Path) -> None:  # fmt: skip
    if not SOCIRUN.exists():
        pytest.skip("needs the installed socirun entry point (scripts/install-deps.sh)")
    marker = tmp_path / "marker"
    code = f"open({str(marker)!r}, 'w').write('planted code ran as root')\n"
    for module in ("socirun/__init__.py", "socirun/runtime/__init__.py", "socirun/runtime/reaper.py"):
        (tmp_path / module).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / module).write_text(code)
    done = env.run("-d", "--rm", "--network", "none", image, "true", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    cid = done.stdout.strip()
    # socirun's own reaper does the --rm teardown: the container goes away; a planted one would leave it.
    assert wait_until(lambda: cid not in _containers(ctr), 30), "the reaper did not tear the container down"
    assert not marker.exists(), marker.read_text()


def test_an_existing_cidfile_refuses_before_anything_is_created(env: Env, image: str, ctr: CtrRunner,
                                                                tmp_path: Path) -> None:  # fmt: skip
    before = _containers(ctr)
    states = set(os.listdir(env.data_root / "containers" / "default"))
    existing = tmp_path / "cid"
    existing.write_text("x")
    done = env.run("--rm", "--network", "none", "--cidfile", str(existing), image, "true")
    assert done.returncode == 125
    assert done.stderr.strip() == ("socirun: Container ID file found, make sure the other container isn't running "
                                   f"or delete {existing}"), done.stderr  # fmt: skip
    assert existing.read_text() == "x"
    dangling, target = tmp_path / "link", tmp_path / "target"
    dangling.symlink_to(target)
    done = env.run("--rm", "--network", "none", "--cidfile", str(dangling), image, "true")
    assert done.returncode == 125 and "Container ID file found" in done.stderr, done.stderr
    assert not target.exists()
    assert _containers(ctr) == before
    assert set(os.listdir(env.data_root / "containers" / "default")) == states


def test_a_failed_run_removes_the_cidfile_it_created(env: Env, tmp_path: Path) -> None:
    cidfile = tmp_path / "cid"
    done = env.run("--rm", "--network", "none", "--pull", "never", "--cidfile", str(cidfile),
                   "socirun/not-here:1", "true")  # fmt: skip
    assert done.returncode == 125 and "No such image" in done.stderr, done.stderr
    assert not cidfile.exists()


def test_two_concurrent_runs_with_one_name_exactly_one_wins(env: Env, image: str, ctr: CtrRunner) -> None:
    before = _containers(ctr)
    # Four at once, each with a new anonymous volume: an unlocked check-then-create lets several through.
    procs = [env.start("--rm", "--network", "none", "-v", "/anon", "--name", "safety-race", image, "sleep", "3")
             for _ in range(4)]  # fmt: skip
    results = [(p.wait(timeout=90), p.stderr.read() if p.stderr else "") for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 125, 125, 125], results
    loser = next(err for code, err in results if code == 125)
    assert 'Conflict. The container name "/safety-race" is already in use by container "' in loser, loser
    assert "You have to remove (or rename) that container to be able to reuse that name." in loser
    assert _containers(ctr) == before
    # The winner's --rm gave the name back: it can be used again at once.
    again = env.run("--rm", "--network", "none", "--name", "safety-race", image, "true")
    assert again.returncode == 0, again.stderr


def _running_tasks(ctr: CtrRunner) -> set[str]:
    lines = ctr("tasks", "ls").stdout.splitlines()[1:]
    return {line.split()[0] for line in lines if line.split() and line.split()[-1] == "RUNNING"}


def test_an_interrupted_rm_run_leaves_the_running_container_whole_and_its_reaper_removes_it(
    env: Env, image: str, ctr: CtrRunner
) -> None:
    # docker's client leaves on Ctrl-C with --sig-proxy=false and the daemon keeps the container until it exits;
    # socirun hands it to its reaper. Before: the teardown removed network, snapshot and state under the task.
    from socirun.runtime.cni import NETNS_DIR, netns_name

    before = _running_tasks(ctr)
    proc = env.start("--rm", "--sig-proxy=false", "--network", "none", image, "sleep", "30")
    try:
        assert wait_until(lambda: bool(_running_tasks(ctr) - before), 60), "the container never started"
        (cid,) = _running_tasks(ctr) - before
        state_dir = env.data_root / "containers" / "default" / cid
        netns = Path(NETNS_DIR) / netns_name(cid)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
        stderr = proc.stderr.read() if proc.stderr else ""
        assert code == 130, stderr
        assert "keeps running in the background; it is removed when it exits" in stderr, stderr
        # Everything is still there while the task runs.
        assert cid in _running_tasks(ctr)
        assert cid in _containers(ctr)
        assert cid in ctr("snapshots", "ls").stdout
        assert netns.exists() and state_dir.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ctr("tasks", "kill", "--signal", "SIGKILL", cid)
    # The reaper does the --rm teardown once the task has exited.
    assert wait_until(lambda: cid not in _containers(ctr), 30), "the reaper did not remove the container"
    assert wait_until(lambda: not netns.exists() and not state_dir.exists(), 10)
    assert cid not in ctr("snapshots", "ls").stdout
