"""The SIGKILL and restart part of issue 12's fault campaign, shared by tests/integration/test_kill_restart.py (a few
seeded points) and bench/kill_restart.py (the whole campaign and its table).

A scenario runs one socirun command and interrupts it: SIGKILL of socirun after a seeded random delay between 0 and
the command's normal duration (measured first), or a restart of containerd / SOCI in the middle. Then the same
command runs again and must succeed, and tests/support/leaks.py counts what is left compared with a baseline taken
after an undisturbed run (nothing of the interrupted run may remain once the next run is done). A run can end
before its kill or restart point (its duration varies from run to run); kill_series and restart_series then draw
another point, so the campaign has the interruptions it asked for, and the runs that ended first stay in its
outcomes and its table.

A run interrupted by a daemon restart can exit while its container still runs, handed to its reaper as docker
leaves a container whose client died; that container keeps its host port until it ends. Before the next run,
interrupt_then_rerun waits (bounded) for it to go and records the wait; the next run happens either way, so a
container that never goes still fails it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import psutil

from socirun.runtime.lifecycle import RUNNING_STATUSES
from tests.support.leaks import Leaks, count_leaks
from tests.support.socirun_env import socirun_vars, write_bridge_config

# containerd's GC runs a moment after a lease is deleted (its scheduler, not the Delete call): counts settle.
SETTLE_S = 10.0
RUN_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Target:
    """Where socirun runs: its environment (containerd address, data root, config with a private bridge), and what
    counting leaks needs."""

    env: dict[str, str]
    address: str
    data_root: Path
    ctr: str
    bridge: str | None = None
    snapshotters: tuple[str, ...] = ("overlayfs",)
    namespace: str = "default"

    def count(self, baseline: Leaks | None = None) -> Leaks:
        return count_leaks(ctr=self.ctr, address=self.address, namespace=self.namespace, data_root=self.data_root,
                           snapshotters=self.snapshotters, bridge=self.bridge, baseline=baseline)  # fmt: skip

    def settled(self, baseline: Leaks, timeout: float = SETTLE_S) -> Leaks:
        """The leaks against `baseline` once containerd's GC had its chance (the first zero count, or the last)."""
        deadline = time.monotonic() + timeout
        while True:
            left = self.count(baseline)
            if left.total() == 0 or time.monotonic() > deadline:
                return left
            time.sleep(0.5)

    def ctr_run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [self.ctr, "-a", self.address, "-n", self.namespace, *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"`{' '.join(argv)}` exited {done.returncode}: {done.stderr.strip()}")
        return done

    def running_tasks(self) -> set[str] | None:
        """The IDs of the tasks that run (or are paused), or None when `ctr` cannot tell (containerd not back)."""
        done = self.ctr_run("tasks", "ls", check=False)
        if done.returncode != 0:
            return None
        rows = [row.split() for row in done.stdout.splitlines()[1:]]  # TASK  PID  STATUS
        return {row[0] for row in rows if len(row) >= 3 and row[-1] in RUNNING_STATUSES}

    def reapers(self) -> list[int]:
        """The live reapers of this data root: a reaper's argv names its container's state directory
        (socirun/runtime/reaper.py), which lies under <data_root>/containers/."""
        prefixes = {str(self.data_root / "containers") + "/", str(self.data_root.resolve() / "containers") + "/"}
        found: list[int] = []
        for proc in psutil.process_iter(["cmdline"]):
            if any(arg.startswith(tuple(prefixes)) for arg in proc.info.get("cmdline") or ()):
                found.append(proc.pid)
        return found


def make_target(
    address: str,
    work: Path,
    *,
    ctr: str = "ctr",
    slot: int | None = None,
    snapshotters: tuple[str, ...] = ("overlayfs",),
    extra_env: dict[str, str] | None = None,
) -> Target:
    """A private data root and bridge (slot from the PID unless given, so parallel sessions do not share them)."""
    slot = os.getpid() % 200 if slot is None else slot
    bridge, subnet = f"srkill{slot}", f"10.214.{slot + 20}.0/24"
    home = work / "config"
    write_bridge_config(home, network="socirun-kill", bridge=bridge, subnet=subnet)
    data_root = work / "data"
    data_root.mkdir(parents=True, exist_ok=True)
    env = socirun_vars(address, data_root, home, extra=extra_env)
    return Target(env, address, data_root, ctr, bridge, snapshotters)


def remove_bridge(target: Target) -> None:
    if target.bridge:
        subprocess.run(["ip", "link", "delete", target.bridge], capture_output=True, check=False)


def socirun_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "socirun", *args]


def run(target: Target, args: Sequence[str], timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(socirun_argv(*args), capture_output=True, text=True, env=target.env, timeout=timeout,
                          check=False)  # fmt: skip


def duration(target: Target, args: Sequence[str], repeat: int = 2) -> float:
    """The command's normal duration: the shortest of `repeat` undisturbed runs (each must succeed)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.monotonic()
        done = run(target, args)
        if done.returncode != 0:
            raise AssertionError(f"socirun {' '.join(args)} exited {done.returncode}: {done.stderr.strip()[-500:]}")
        best = min(best, time.monotonic() - start)
    return best


def kill_points(seed: int, count: int, longest: float) -> list[float]:
    """`count` delays in [0, longest), reproducible from `seed`."""
    rng = random.Random(seed)
    return [round(rng.uniform(0.0, longest), 3) for _ in range(count)]


# series' bound on draws, per interruption asked for: a command that keeps ending early cannot loop for ever.
MAX_DRAWS_PER_KILL = 3

# How long the next run waits for a container the interrupted run left running (its `sleep 2` ends on its own,
# then its reaper tears it down), polling every GONE_POLL_S.
GONE_WAIT_S = 30.0
GONE_POLL_S = 0.5


def kill_after(target: Target, args: Sequence[str], delay: float) -> bool:
    """Start socirun, SIGKILL it after `delay` seconds; True when it was still running then (killed), False when it
    had already finished."""
    proc = subprocess.Popen(socirun_argv(*args), env=target.env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def clean_exit(done: subprocess.CompletedProcess[str]) -> bool:
    """Completed (0), or socirun's own failure as docker reports it: 125 and one `socirun: ` sentence, no
    traceback. With SOCIRUN_PROGRESS=json (the SOCI scenario's environment, tests/support/soci.py) that sentence
    is the JSON face's last event, `{"type": "error", "message": …, "exit_code": 125}`."""
    if done.returncode == 0:
        return True
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    if done.returncode != 125 or "Traceback" in done.stderr or not lines:
        return False
    if lines[-1].startswith("socirun: "):
        return True
    try:
        event = json.loads(lines[-1])
    except ValueError:
        return False
    return (isinstance(event, dict) and event.get("type") == "error" and event.get("exit_code") == 125
            and isinstance(event.get("message"), str) and bool(event["message"]))  # fmt: skip


@dataclass(frozen=True)
class LeftRunning:
    """A container the interrupted run left behind, still running or still being torn down when it exited."""

    owner: str  # "handed to its reaper" (a live reaper of the data root was seen) or "no reaper"
    waited: float  # seconds waited for it before the next run
    gone: bool  # it went within GONE_WAIT_S (False: the next run met it)


@dataclass
class Outcome:
    scenario: str
    point: float  # the kill delay or restart moment, seconds after the start
    interrupted: bool  # the command was still running when killed / restarted under
    first_code: int | None  # a restart scenario's interrupted command: its exit code (None for a kill)
    first_clean: bool  # ... completed or exited 125 with one sentence (True for a kill)
    next_ok: bool
    next_err: str
    leaks: Leaks = field(default_factory=Leaks)
    left: LeftRunning | None = None  # what the next run waited for after the interruption (None: nothing)


def kill_then_rerun(target: Target, scenario: str, args: Sequence[str], delay: float, baseline: Leaks,
                    prepare: Callable[[], None] = lambda: None) -> Outcome:  # fmt: skip
    """`prepare()`, SIGKILL `args` after `delay`, wait (bounded) for a container the killed run left running to
    go (as after a restart: its reaper still holds its port), run `args` again, count the leaks against
    `baseline`."""
    prepare()
    before = target.running_tasks() or set()
    killed = kill_after(target, args, delay)
    left_running = wait_left_running(before, target.running_tasks, target.reapers)
    again = run(target, args)
    left = target.settled(baseline)
    return Outcome(
        scenario, delay, killed, None, True, again.returncode == 0, again.stderr.strip()[-500:], left, left_running
    )


def series(attempt: Callable[[float], Outcome], seed: int, count: int, longest: float,
           report: Callable[[Outcome], None] = lambda _: None) -> list[Outcome]:  # fmt: skip
    """`attempt(point)` at seeded points in [0, longest) until `count` of them landed while the command still ran.

    The undisturbed duration is measured on earlier runs and the next run can be quicker, so a point near its end
    may come after the command finished: that run is kept in the outcomes (interrupted False, so the table says
    how many) and another point is drawn, up to MAX_DRAWS_PER_KILL × `count` draws. The first `count` points are
    kill_points(seed, count, longest)."""
    rng = random.Random(seed)
    outcomes: list[Outcome] = []
    for _ in range(MAX_DRAWS_PER_KILL * count):
        if sum(o.interrupted for o in outcomes) >= count:
            break
        outcomes.append(attempt(round(rng.uniform(0.0, longest), 3)))
        report(outcomes[-1])
    return outcomes


def kill_series(target: Target, scenario: str, args: Sequence[str], seed: int, kills: int, longest: float,
                baseline: Leaks, prepare: Callable[[], None] = lambda: None,
                report: Callable[[Outcome], None] = lambda _: None) -> list[Outcome]:  # fmt: skip
    """kill_then_rerun through `series`: `kills` SIGKILLs that land while the command runs."""
    return series(lambda delay: kill_then_rerun(target, scenario, args, delay, baseline, prepare), seed, kills,
                  longest, report)  # fmt: skip


def wait_gone(present: Callable[[], bool], timeout: float = GONE_WAIT_S, poll: float = GONE_POLL_S,
              clock: Callable[[], float] = time.monotonic,
              sleep: Callable[[float], None] = time.sleep) -> tuple[float, bool] | None:  # fmt: skip
    """None when nothing is `present()` now; else poll until it is not or `timeout` seconds passed, and return
    (seconds waited, whether it went)."""
    start = clock()
    if not present():
        return None
    while clock() - start < timeout:
        sleep(poll)
        if not present():
            return round(clock() - start, 1), True
    return round(clock() - start, 1), False


def wait_left_running(before: set[str], running: Callable[[], set[str] | None], reapers: Callable[[], list[int]],
                      timeout: float = GONE_WAIT_S, poll: float = GONE_POLL_S,
                      clock: Callable[[], float] = time.monotonic,
                      sleep: Callable[[float], None] = time.sleep) -> LeftRunning | None:  # fmt: skip
    """Wait for what an interrupted run left running to go: a task that was not running `before` it, or a live
    reaper (it holds the container's port until its teardown after the task's exit). `running()` None (containerd
    not answering) counts as present. None when nothing was there."""
    seen_reaper = False

    def present() -> bool:
        nonlocal seen_reaper
        if reapers():
            seen_reaper = True
            return True
        now = running()
        return now is None or bool(now - before)

    waited = wait_gone(present, timeout, poll, clock, sleep)
    if waited is None:
        return None
    return LeftRunning("handed to its reaper" if seen_reaper else "no reaper", waited[0], waited[1])


def interrupt_then_rerun(target: Target, scenario: str, args: Sequence[str], delay: float, baseline: Leaks,
                         interrupt: Callable[[], object],
                         prepare: Callable[[], None] = lambda: None) -> Outcome:  # fmt: skip
    """`prepare()`, start `args`, call `interrupt()` (a daemon restart) after `delay`, let the command end, wait
    (bounded) for a container it left running to go, run it again, count the leaks against `baseline`."""
    prepare()
    before = target.running_tasks() or set()
    proc = subprocess.Popen(socirun_argv(*args), env=target.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        proc.wait(timeout=delay)
        running = False
    except subprocess.TimeoutExpired:
        running = True
    if running:
        interrupt()
    out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    first = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    # A container still running holds its host port, so an immediate rerun is refused ("port is already
    # allocated"), as docker refuses it while a dead client's container runs: that is not the interruption's harm.
    left_running = wait_left_running(before, target.running_tasks, target.reapers)
    again = run(target, args)
    left = target.settled(baseline)
    return Outcome(scenario, delay, running, first.returncode, clean_exit(first), again.returncode == 0,
                   (err.strip()[-300:] + " || " + again.stderr.strip()[-300:]), left, left_running)  # fmt: skip


def restart_series(target: Target, scenario: str, args: Sequence[str], seed: int, restarts: int, longest: float,
                   baseline: Leaks, interrupt: Callable[[], object], prepare: Callable[[], None] = lambda: None,
                   report: Callable[[Outcome], None] = lambda _: None) -> list[Outcome]:  # fmt: skip
    """interrupt_then_rerun through `series`: `restarts` restarts that land while the command runs."""
    return series(lambda delay: interrupt_then_rerun(target, scenario, args, delay, baseline, interrupt, prepare),
                  seed, restarts, longest, report)  # fmt: skip


def leak_text(leaks: Leaks) -> str:
    found = leaks.nonzero()
    return "0" if not found else ", ".join(f"{kind} {n}" for kind, n in found.items())


def left_text(group: Sequence[Outcome]) -> str:
    """What the next runs of `group` waited for, for the table: "" when none waited."""
    lefts = [o.left for o in group if o.left is not None]
    if not lefts:
        return ""
    owners = Counter(left.owner for left in lefts)
    owner = ", ".join(f"{name} ×{n}" if len(owners) > 1 else name for name, n in owners.items())
    low, high = min(left.waited for left in lefts), max(left.waited for left in lefts)
    waited = f"{low:.1f} s" if low == high else f"{low:.1f}–{high:.1f} s"
    never = sum(not left.gone for left in lefts)
    return (f"; {len(lefts)} left its container running ({owner}), the next run waited {waited} for it to go"
            + (f", {never} never went" if never else ""))  # fmt: skip


def table(outcomes: Sequence[Outcome]) -> str:
    """The campaign's markdown table, one row per scenario."""
    rows = [
        "| scenario | runs | interrupted | interrupted command | next run ok | leaks left after next run |",
        "|---|---|---|---|---|---|",
    ]
    by_scenario: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        by_scenario.setdefault(outcome.scenario, []).append(outcome)
    for scenario, group in by_scenario.items():
        total = Leaks(**{f.name: sum(getattr(o.leaks, f.name) for o in group) for f in fields(Leaks)})
        codes = Counter(o.first_code for o in group if o.first_code is not None)
        early = sum(not o.interrupted for o in group)
        runs = "1 run ended before its" if early == 1 else f"{early} runs ended before their"
        first = (("SIGKILL" + (f" ({runs} kill point)" if early else "")) if not codes else
                 ", ".join(f"exit {code} ×{n}" for code, n in sorted(codes.items(), key=lambda kv: kv[0] or 0))
                 + (f" ({runs} restart point)" if early else "")
                 + ("; all clean" if all(o.first_clean for o in group) else "; NOT all clean")
                 + left_text(group))  # fmt: skip
        rows.append(f"| {scenario} | {len(group)} | {sum(o.interrupted for o in group)} | {first} | "
                    f"{sum(o.next_ok for o in group)}/{len(group)} | {leak_text(total)} |")  # fmt: skip
    return "\n".join(rows)
