"""The kill/restart campaign's own logic (tests/support/kill_campaign.py), without daemons: drawing another point
for a run that ended before its interruption, and waiting for a container an interrupted run left running before
the next run."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from tests.support import kill_campaign
from tests.support.kill_campaign import (
    LeftRunning,
    Outcome,
    Target,
    clean_exit,
    interrupt_then_rerun,
    kill_points,
    restart_series,
    series,
    table,
    wait_gone,
    wait_left_running,
)
from tests.support.leaks import Leaks


class FakeClock:
    """time.monotonic and time.sleep for the waits: sleeping advances the clock."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def outcome(point: float, interrupted: bool, scenario: str = "s", code: int | None = None,
            left: LeftRunning | None = None) -> Outcome:  # fmt: skip
    return Outcome(scenario, point, interrupted, code, True, True, "", Leaks(), left)


def sequence(values: Sequence[bool]) -> Callable[[], bool]:
    """A present() that answers `values` in turn, then its last one for ever."""
    answers = list(values)
    return lambda: answers.pop(0) if len(answers) > 1 else answers[0]


# -- drawing again ------------------------------------------------------------------------------------------------


def test_series_draws_again_for_runs_that_ended_before_their_point() -> None:
    """A stubbed command that ends at 1.0 s: points after it are kept (not interrupted) and more are drawn until
    the asked-for interruptions landed."""
    points: list[float] = []

    def attempt(point: float) -> Outcome:
        points.append(point)
        return outcome(point, interrupted=point < 1.0)

    got = series(attempt, seed=3, count=4, longest=2.0)
    assert sum(o.interrupted for o in got) == 4
    assert any(not o.interrupted for o in got)  # with this seed some points fall after 1.0 s and stay counted
    assert [o.point for o in got] == points
    assert points[:4] == kill_points(3, 4, 2.0)  # the first points are the plain campaign's


def test_series_is_bounded_when_the_command_always_ends_first() -> None:
    got = series(lambda p: outcome(p, interrupted=False), seed=1, count=2, longest=1.0)
    assert len(got) == kill_campaign.MAX_DRAWS_PER_KILL * 2


def test_series_reports_each_outcome() -> None:
    seen: list[Outcome] = []
    got = series(lambda p: outcome(p, interrupted=True), seed=1, count=3, longest=1.0, report=seen.append)
    assert seen == got and len(got) == 3


def test_restart_series_draws_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The restart scenarios land their restarts as the SIGKILL ones do (they used plain kill_points: a restart
    point after the run's end was just lost)."""
    calls: list[float] = []

    def fake(target: Target, scenario: str, args: Sequence[str], delay: float, baseline: Leaks,
             interrupt: Callable[[], object], prepare: Callable[[], None]) -> Outcome:  # fmt: skip
        calls.append(delay)
        return outcome(delay, interrupted=delay < 2.0, scenario=scenario, code=0 if delay >= 2.0 else 125)

    monkeypatch.setattr(kill_campaign, "interrupt_then_rerun", fake)
    target = Target({}, "/nowhere.sock", Path("/nowhere"), "ctr")
    got = restart_series(target, "restart", ["run"], seed=15, restarts=3, longest=4.0, baseline=Leaks(),
                         interrupt=lambda: None)  # fmt: skip
    assert sum(o.interrupted for o in got) == 3
    assert len(got) == len(calls) > 3
    early = len(got) - 3
    said = "1 run ended before its" if early == 1 else f"{early} runs ended before their"
    assert f"({said} restart point)" in table(got)
    one_early = [*(o for o in got if o.interrupted), next(o for o in got if not o.interrupted)]
    assert "(1 run ended before its restart point)" in table(one_early)  # singular for one


# -- waiting for what the interrupted run left running ------------------------------------------------------------


def test_wait_gone_is_none_when_nothing_is_there() -> None:
    fake = FakeClock()
    assert wait_gone(lambda: False, clock=fake.clock, sleep=fake.sleep) is None
    assert fake.slept == []


def test_wait_gone_polls_until_it_goes() -> None:
    fake = FakeClock()
    assert wait_gone(sequence([True, True, True, False]), timeout=30, poll=0.5, clock=fake.clock,
                     sleep=fake.sleep) == (1.5, True)  # fmt: skip


def test_wait_gone_is_bounded() -> None:
    fake = FakeClock()
    assert wait_gone(lambda: True, timeout=3, poll=0.5, clock=fake.clock, sleep=fake.sleep) == (3.0, False)


def test_a_reaper_is_waited_for_until_it_ends() -> None:
    fake = FakeClock()
    reapers = [[4242], [4242], [4242], []]
    left = wait_left_running({"other"}, lambda: {"other"}, lambda: reapers.pop(0) if len(reapers) > 1 else [],
                             clock=fake.clock, sleep=fake.sleep)  # fmt: skip
    assert left == LeftRunning("handed to its reaper", 1.5, True)  # present at 0, 0.5 and 1.0 s


def test_a_new_running_task_is_waited_for_and_old_ones_are_not() -> None:
    fake = FakeClock()
    tasks: list[set[str] | None] = [{"old", "new"}, None, {"old", "new"}, {"old"}]
    left = wait_left_running({"old"}, lambda: tasks.pop(0) if len(tasks) > 1 else tasks[0], lambda: [],
                             clock=fake.clock, sleep=fake.sleep)  # fmt: skip
    assert left == LeftRunning("no reaper", 1.5, True)  # (ctr answering nothing counts as still there)
    assert wait_left_running({"old"}, lambda: {"old"}, lambda: [], clock=fake.clock, sleep=fake.sleep) is None


def test_a_container_that_never_goes_is_recorded() -> None:
    fake = FakeClock()
    left = wait_left_running(set(), lambda: {"stuck"}, lambda: [], timeout=30, clock=fake.clock, sleep=fake.sleep)
    assert left == LeftRunning("no reaper", 30.0, False)


class StubTarget(Target):
    """A Target whose containerd and processes are scripted: one reaper that lives for `reaper_polls` looks."""

    def __init__(self, reaper_polls: int, events: list[str]) -> None:
        super().__init__({}, "/nowhere.sock", Path("/nowhere"), "ctr")
        object.__setattr__(self, "polls", [reaper_polls])
        object.__setattr__(self, "events", events)

    def running_tasks(self) -> set[str] | None:
        return set()

    def reapers(self) -> list[int]:
        polls: list[int] = self.polls  # type: ignore[attr-defined]
        polls[0] -= 1
        self.events.append("reaper" if polls[0] >= 0 else "no reaper")  # type: ignore[attr-defined]
        return [4242] if polls[0] >= 0 else []

    def settled(self, baseline: Leaks, timeout: float = 0) -> Leaks:
        return Leaks()


def test_the_rerun_comes_after_the_left_container_went(monkeypatch: pytest.MonkeyPatch) -> None:
    """The failure of the last campaign: socirun exits 125 while its container runs on under its reaper, and the
    rerun came at once ("port is already allocated"). Now the rerun waits for the reaper to end, and says so."""
    events: list[str] = []
    target = StubTarget(reaper_polls=2, events=events)
    said = "echo 'socirun: cannot reach containerd' >&2; exit 125"
    monkeypatch.setattr(kill_campaign, "socirun_argv", lambda *args: ["sh", "-c", said])

    def rerun(target: Target, args: Sequence[str], timeout: float = 0) -> subprocess.CompletedProcess[str]:
        events.append("rerun")
        return subprocess.CompletedProcess(list(args), 0, "", "")

    monkeypatch.setattr(kill_campaign, "run", rerun)
    got = interrupt_then_rerun(target, "restart", ["run"], 30.0, Leaks(), interrupt=lambda: None)
    assert events == ["reaper", "reaper", "no reaper", "rerun"]
    assert got.first_code == 125 and got.first_clean and got.next_ok
    assert got.left is not None and got.left.owner == "handed to its reaper" and got.left.gone
    assert got.left.waited >= 0.5  # slept at least one poll for it
    row = table([got]).splitlines()[-1]
    assert "1 left its container running (handed to its reaper), the next run waited" in row, row


def test_a_sigkill_rerun_also_waits_for_the_container_the_killed_run_left(monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGKILLed `run --rm -p` leaves its container to its reaper as a restart does; the rerun used to follow
    at once and could meet the port still held."""
    events: list[str] = []
    target = StubTarget(reaper_polls=2, events=events)
    def kill_after(*_: object) -> bool:
        events.append("kill")
        return True  # it was still running: the kill landed

    monkeypatch.setattr(kill_campaign, "kill_after", kill_after)

    def rerun(target: Target, args: Sequence[str], timeout: float = 0) -> subprocess.CompletedProcess[str]:
        events.append("rerun")
        return subprocess.CompletedProcess(list(args), 0, "", "")

    monkeypatch.setattr(kill_campaign, "run", rerun)
    got = kill_campaign.kill_then_rerun(target, "kill", ["run"], 1.0, Leaks())
    assert events == ["kill", "reaper", "reaper", "no reaper", "rerun"]
    assert got.interrupted and got.next_ok and got.left is not None and got.left.gone


def test_the_table_says_when_a_container_never_went() -> None:
    group = [outcome(1.0, True, code=125, left=LeftRunning("no reaper", 30.0, False)),
             outcome(2.0, True, code=0, left=LeftRunning("handed to its reaper", 2.5, True)),
             outcome(3.0, True, code=0)]  # fmt: skip
    row = table(group).splitlines()[-1]
    assert "2 left its container running (no reaper ×1, handed to its reaper ×1)" in row, row
    assert "waited 2.5–30.0 s for it to go, 1 never went" in row, row


# -- what counts as a clean exit -------------------------------------------------------------------------------


def done(code: int, stderr: str) -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess(["socirun"], code, "", stderr)


def test_the_json_faces_error_event_is_a_clean_exit() -> None:
    """The SOCI scenario runs with SOCIRUN_PROGRESS=json: its one sentence is the last event (the campaign's run
    marked such an exit NOT clean before)."""
    last = '{"schema":1,"type":"error","message":"containerd Snapshots.Prepare failed (UNAVAILABLE)","exit_code":125}'
    assert clean_exit(done(125, '{"schema":1,"type":"layer","state":"done"}\n' + last + "\n"))


@pytest.mark.parametrize("code, stderr", [
    (125, '{"type":"layer","state":"done"}\n'),  # no error event
    (125, '{"type":"error","message":"x","exit_code":1}\n'),  # another code in the event
    (1, '{"type":"error","message":"x","exit_code":125}\n'),  # exited otherwise
    (125, 'Traceback (most recent call last):\n{"type":"error","message":"x","exit_code":125}\n'),
    (125, "not json {\n"),
])  # fmt: skip
def test_other_failures_are_not_clean(code: int, stderr: str) -> None:
    assert not clean_exit(done(code, stderr))


def test_the_plain_sentence_stays_a_clean_exit() -> None:
    assert clean_exit(done(125, "socirun: containerd is not answering\n")) and clean_exit(done(0, ""))
