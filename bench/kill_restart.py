"""Issue 12's fault campaign, SIGKILL and restart part: socirun SIGKILLed at seeded random points of `pull` and of
`run --rm -p HOSTPORT:80 -v vol:/v`, containerd restarted in the middle of a pull and of a run, and SOCI
restarted in the middle of a lazy run. After each: the same command again must succeed, and nothing of the
interrupted run may be left (tests/support/leaks.py counts leases, ingests, snapshots, containers, tasks, netns,
CNI IPs, iptables rules, mounts and state directories against an undisturbed run's baseline).

Prints a markdown table. Needs root and the sandbox's binaries (scripts/install-deps.sh); the SOCI row needs the
built SOCI sandbox (scripts/build-go-components.sh), else it is skipped with a note.

    sudo .venv/bin/python bench/kill_restart.py [--kills 20] [--restarts 3] [--seed 12] [--no-soci]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support, when run as bench/kill_restart.py

from socirun.sandbox.components import containerd2_dir
from socirun.sandbox.processes import free_port
from socirun.sandbox.sample import push_sample
from socirun.sandbox.sandbox import Sandbox
from tests.support.kill_campaign import (
    GONE_WAIT_S,
    Outcome,
    Target,
    duration,
    kill_series,
    make_target,
    remove_bridge,
    restart_series,
    table,
)
from tests.support.sandbox import SAMPLE_5_LAYERS_MB, missing_requirement, short_tmp_dir
from tests.support.soci import missing_soci_requirement

RUN_CMD = ("sh", "-c", "echo ok > /v/ok")
LONG_RUN_CMD = ("sh", "-c", "sleep 2; echo ok > /v/ok")


def run_args(image: str, port: int, cmd: tuple[str, ...] = RUN_CMD) -> list[str]:
    return ["run", "--rm", "-p", f"127.0.0.1:{port}:80", "-v", "killvol:/v", image, *cmd]


def said(what: str) -> Callable[[Outcome], None]:
    """A progress line on stderr for each outcome."""
    return lambda o: print(f"{what} at {o.point:.2f}s: {o}", file=sys.stderr)


def overlay_campaign(kills: int, restarts: int, seed: int) -> list[Outcome]:
    work = short_tmp_dir("srk-")
    box = Sandbox(work / "sb")
    outcomes: list[Outcome] = []
    target: Target | None = None
    try:
        info = box.up()
        image = push_sample(info.registry_host, "kill/sample", "v1", SAMPLE_5_LAYERS_MB)
        target = make_target(info.containerd_address, work)
        pull = ["pull", "--progress", "plain", image]

        def forget() -> None:
            target.ctr_run("images", "rm", "--sync", image, check=False)

        # -- SIGKILL of pull: each from an empty store (the image removed), the baseline an undisturbed pull's.
        took = duration(target, pull)
        baseline = target.count()
        outcomes += kill_series(target, "SIGKILL during `pull`", pull, seed, kills, took, baseline, forget,
                                report=said("pull kill"))  # fmt: skip

        # -- SIGKILL of run --rm -p -v (the image present, as for most runs).
        port = free_port()
        args = run_args(image, port)
        took = duration(target, args)
        baseline = target.count()
        outcomes += kill_series(target, "SIGKILL during `run --rm -p -v`", args, seed + 1, kills, took, baseline,
                                report=said("run kill"))  # fmt: skip

        # -- containerd restarted in the middle of a pull and of a run.
        restart = box.restart_containerd
        took = duration(target, pull)
        baseline = target.count()
        outcomes += restart_series(target, "containerd restarted during `pull`", pull, seed + 2, restarts, took,
                                   baseline, restart, forget, report=said("pull restart"))  # fmt: skip
        long_args = run_args(image, port, LONG_RUN_CMD)
        took = duration(target, long_args, repeat=1)
        baseline = target.count()
        outcomes += restart_series(target, "containerd restarted during `run --rm -p -v`", long_args, seed + 3,
                                   restarts, took, baseline, restart, report=said("run restart"))  # fmt: skip
    finally:
        if target is not None:
            remove_bridge(target)
        box.down()
        shutil.rmtree(work, ignore_errors=True)
    return outcomes


def soci_campaign(restarts: int, seed: int) -> list[Outcome]:
    """SOCI restarted while a container reads a lazily loaded layer through it (a throttled registry keeps it
    reading): the run completes or exits with one sentence; the next run succeeds."""
    from socirun.sandbox.soci_daemon import SociSettings
    from tests.support.soci import soci_sandbox, throttled

    work = short_tmp_dir("srk-")
    outcomes: list[Outcome] = []
    try:
        with soci_sandbox(work / "sb", SociSettings(background_fetch=False)) as box:
            ref = box.push("kill/lazy", (1.0, 24.0), "v2", seed=64, min_layer_size=4 << 20)
            target = make_target(box.address, work, ctr=str(containerd2_dir() / "ctr"),
                                 snapshotters=("overlayfs", "soci"), extra_env={
                                     k: v for k, v in box.env().items() if k.startswith("SOCI")})  # fmt: skip
            with throttled(box.info.registry_host, "4MB", total="4MB") as capped:
                lazy_ref = ref.replace(box.info.registry_host, capped, 1)
                args = ["run", "--rm", "--net", "none", lazy_ref, "sh", "-c", "cat /data/*/* > /dev/null; echo ok"]

                def forget() -> None:
                    target.ctr_run("images", "rm", "--sync", lazy_ref, check=False)

                took = duration(target, args, repeat=1)
                baseline = target.count()
                outcomes += restart_series(target, "SOCI restarted during a lazy `run --rm`", args, seed + 4,
                                           restarts, took, baseline, lambda: box.box.restart_soci(), forget,
                                           report=said("soci restart"))  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kills", type=int, default=20, help="SIGKILL points per command (default 20)")
    parser.add_argument("--restarts", type=int, default=3, help="restarts per scenario (default 3)")
    parser.add_argument("--seed", type=int, default=12, help="seed of the random kill points (default 12)")
    parser.add_argument("--no-soci", action="store_true", help="skip the SOCI restart scenario")
    opts = parser.parse_args()
    reason = missing_requirement()
    if reason is not None:
        print(f"kill_restart: {reason}", file=sys.stderr)
        return 1
    outcomes = overlay_campaign(opts.kills, opts.restarts, opts.seed)
    note = ""
    if opts.no_soci:
        note = "SOCI restart: skipped (--no-soci)."
    elif (soci_reason := missing_soci_requirement()) is not None:
        note = f"SOCI restart: skipped ({soci_reason})."
    else:
        outcomes += soci_campaign(opts.restarts, opts.seed)
    print(table(outcomes))
    if note:
        print(f"\n{note}")
    print(f"\nseed {opts.seed}; kill and restart points uniform in [0, the command's undisturbed duration), drawn "
          "again for a run that ended before its point until the interruptions asked for landed; before the run "
          f"after a kill or a restart, a container the interrupted run left running is waited for (up to "
          f"{GONE_WAIT_S:.0f} s)."
          )  # fmt: skip
    bad = [o for o in outcomes if not o.next_ok or o.leaks.total() or not o.first_clean]
    for outcome in bad:
        print(f"- {outcome.scenario} at {outcome.point:.2f}s: next ok {outcome.next_ok}, clean {outcome.first_clean}, "
              f"leaks {outcome.leaks.nonzero()}: {outcome.next_err[-300:]}")  # fmt: skip
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
