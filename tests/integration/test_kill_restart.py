"""SIGKILL of socirun and a containerd restart in the middle of a command (issue 12's campaign, its quick part; the
whole campaign is bench/kill_restart.py): the next run of the same command succeeds, and nothing of the interrupted
one is left afterwards (tests/support/leaks.py, against an undisturbed run's baseline)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator

import pytest

from socirun.runtime.cni import netns_name
from socirun.sandbox.components import ctr_beside
from socirun.sandbox.processes import free_port
from socirun.sandbox.sample import push_sample
from socirun.sandbox.sandbox import Sandbox, SandboxInfo
from tests.support.kill_campaign import (
    Target,
    clean_exit,
    duration,
    kill_points,
    kill_then_rerun,
    make_target,
    remove_bridge,
    run,
    socirun_argv,
)
from tests.support.leaks import Leaks, netns_entries
from tests.support.sandbox import short_tmp_dir
from tests.support.waiting import wait_until

SEED = 12
KILLS = 5


@pytest.fixture(scope="module")
def target(sandbox: SandboxInfo) -> Iterator[Target]:
    work = short_tmp_dir("srk-")
    made = make_target(sandbox.containerd_address, work)
    yield made
    remove_bridge(made)
    subprocess.run(["rm", "-rf", str(work)], check=False)


def _pull(ref: str) -> list[str]:
    return ["pull", "--progress", "plain", ref]


def _run(ref: str, port: int, *cmd: str) -> list[str]:
    return ["run", "--rm", "-p", f"127.0.0.1:{port}:80", "-v", "killvol:/v", ref, *(cmd or ("true",))]


def _forget(target: Target, ref: str) -> Callable[[], None]:
    def forget() -> None:
        target.ctr_run("images", "rm", "--sync", ref, check=False)

    return forget


def test_sigkill_at_random_points_of_pull(target: Target, push_sample_5: Callable[..., str]) -> None:
    ref = push_sample_5(name="kill/pull")
    took = duration(target, _pull(ref))
    baseline = target.count()
    for delay in kill_points(SEED, KILLS, took):
        outcome = kill_then_rerun(target, "pull", _pull(ref), delay, baseline, _forget(target, ref))
        assert outcome.next_ok, (delay, outcome.next_err)
        assert outcome.leaks.total() == 0, (delay, outcome.leaks.nonzero())


def test_sigkill_at_random_points_of_run_rm_p_v(target: Target, sample_5: str) -> None:
    args = _run(sample_5, free_port(), "sh", "-c", "echo ok > /v/ok")
    took = duration(target, args)
    baseline = target.count()
    for delay in kill_points(SEED + 1, KILLS, took):
        outcome = kill_then_rerun(target, "run", args, delay, baseline)
        assert outcome.next_ok, (delay, outcome.next_err)
        assert outcome.leaks.total() == 0, (delay, outcome.leaks.nonzero())


def test_a_run_killed_after_its_container_started_is_cleaned_by_the_next_run(target: Target, sample_5: str) -> None:
    """Killed with everything in place (task, netns, IP, port rules, snapshot, record, state): the container ends
    on its own, and the next run tears down all of it. Before the sweep, all of it stayed."""
    port = free_port()
    args = _run(sample_5, port, "sh", "-c", "sleep 1; echo ok > /v/ok")
    assert run(target, args).returncode == 0  # the bridge exists, the image is here
    baseline = target.count()
    _kill_once_started(target, args, baseline)
    left = target.count(baseline)
    cid = target.ctr_run("tasks", "ls", "-q").stdout.split()[0]
    # (netns counts every socirun namespace on the host: this one is checked by name.)
    assert left.containers == 1 and left.cni_ips == 1 and left.state_dirs == 1, left
    assert netns_name(cid) in netns_entries()
    assert left.iptables_rules > 0, left  # the portmap DNAT chain and the firewall's CNI-FORWARD rules
    assert wait_until(lambda: _task_stopped(target), 20)
    again = run(target, _run(sample_5, port, "true"))
    assert again.returncode == 0, again.stderr
    assert target.settled(baseline).total() == 0, target.count(baseline).nonzero()
    assert netns_name(cid) not in netns_entries()


def _kill_once_started(target: Target, args: list[str], baseline: Leaks) -> None:
    """Start `socirun run ARGS` and SIGKILL it as soon as its container's task exists."""
    proc = subprocess.Popen(socirun_argv(*args), env=target.env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        assert wait_until(lambda: target.count(baseline).tasks == 1, 60), "the container never started"
    finally:
        proc.kill()
        proc.wait()


def _task_stopped(target: Target) -> bool:
    rows = target.ctr_run("tasks", "ls").stdout.splitlines()[1:]
    return bool(rows) and all(row.split()[-1] == "STOPPED" for row in rows)


def test_a_running_container_of_a_killed_run_is_left_alone(target: Target, sample_5: str) -> None:
    """The sweep never touches what still runs: a killed run's container that is still running keeps its task
    and network while other runs come and go (docker's client dies, its container does not)."""
    args = _run(sample_5, free_port(), "sleep", "30")
    baseline = target.count()
    _kill_once_started(target, args, baseline)
    cid = target.ctr_run("tasks", "ls", "-q").stdout.split()[0]
    other = run(target, ["run", "--rm", "--network", "none", sample_5, "true"])
    assert other.returncode == 0, other.stderr
    assert netns_name(cid) in netns_entries()
    assert target.ctr_run("tasks", "ls").stdout.count("RUNNING") == 1
    target.ctr_run("tasks", "kill", "--signal", "SIGKILL", cid)
    assert wait_until(lambda: _task_stopped(target), 20)
    assert run(target, ["run", "--rm", "--network", "none", sample_5, "true"]).returncode == 0
    assert target.settled(baseline).total() == 0, target.count(baseline).nonzero()


def test_containerd_restarted_in_the_middle_of_a_pull(sandbox: SandboxInfo, containerd_binary: str,
                                                      throttle: Callable[..., str]) -> None:  # fmt: skip
    """containerd goes away while the layers stream in (a 4 MB/s registry): the pull completes, or exits 125 with
    one sentence; no traceback; the next pull succeeds and leaves nothing. On a containerd of its own: restarting
    the session's would leave what the other modules' fixtures recorded of it (its PID) stale."""
    box = Sandbox(short_tmp_dir("srr-"))
    own = box.up(containerd=containerd_binary)
    work = short_tmp_dir("srk-")
    target = make_target(own.containerd_address, work, ctr=ctr_beside(own.containerd_binary),
                         slot=(os.getpid() + 1) % 200)
    try:
        pushed = push_sample(sandbox.registry_host, "kill/restart", "v1", [12], seed=1212)
        ref = pushed.replace(sandbox.registry_host, throttle("4MB", total="4MB"), 1)  # about 3 s of download
        assert run(target, _pull(ref)).returncode == 0
        baseline = target.count()
        _forget(target, ref)()
        proc = subprocess.Popen(socirun_argv(*_pull(ref)), env=target.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            active = lambda: len(target.ctr_run("content", "active").stdout.splitlines()) > 1  # noqa: E731
            assert wait_until(active, 60), "no download started"
            box.restart_containerd()
            out, err = proc.communicate(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        first = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        assert clean_exit(first), (first.returncode, err[-2000:])
        again = run(target, _pull(ref))
        assert again.returncode == 0, again.stderr
        assert target.settled(baseline).total() == 0, target.count(baseline).nonzero()
    finally:
        remove_bridge(target)
        box.down()
        subprocess.run(["rm", "-rf", str(work)], check=False)

