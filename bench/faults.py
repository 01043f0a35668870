"""The registry fault campaign and the run soak (issue 12), on a private sandbox.

1. Every fault of tests/support/fault_campaign.py (reset, 503/429 with Retry-After, stall, flipped byte, short
   body, TLS hello to a plain-HTTP port), `--rounds` times for `socirun pull --pull-mode standard` and
   `--pull-mode parallel`, through tests/support/faultproxy.py: each pull must complete with the right image or
   exit 125 with one sentence, leave nothing but socirun's documented resume lease, and a normal pull afterwards
   must work. The stall runs `--stall-rounds` times per mode (a parallel-mode stall costs about 5 s, a standard
   one about 15 s).
2. Concurrency: 4 `socirun pull` of the same image at once, from a cold store.
3. Soak: `--soak` cycles of `socirun run --rm -p 127.0.0.1::80 -v vol:/v -v /anon IMAGE true` on a private
   bridge, leaks counted (tests/support/leaks.py) after every cycle.

Prints each outcome, then a markdown table (the README's "Security and reliability" section).

    sudo .venv/bin/python bench/faults.py [--rounds 3] [--stall-rounds 1] [--soak 50] [--dir /tmp/socirun-faults]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support, when run as a script

from socirun.sandbox.sample import push_sample
from socirun.sandbox.sandbox import Sandbox, SandboxInfo
from tests.support.fault_campaign import FAULTS, PULL_MODES, Campaign, Outcome
from tests.support.leaks import Leaks, count_leaks, iptables_rules

NAME, TAG, SEED = "faults/sample", "v1", 1212
LAYERS_MB = (1.0, 3.0)
NAMESPACE = "socirun-faults"


@dataclass
class Row:
    runs: int = 0
    completed: int = 0
    refused: int = 0
    other: int = 0
    leaks: int = 0
    notes: list[str] = field(default_factory=list)

    def add(self, completed: bool, refused: bool, leaks: int, note: str = "") -> None:
        self.runs += 1
        self.completed += completed
        self.refused += refused
        self.other += not (completed or refused)
        self.leaks += leaks
        if note:
            self.notes.append(note)


def fault_matrix(campaign: Campaign, rounds: int, stall_rounds: int, only: str | None,
                 rows: dict[str, Row]) -> None:  # fmt: skip
    for name in FAULTS:
        if only and not re.search(only, name):
            continue
        for round_no in range(stall_rounds if name.startswith("stall") else rounds):
            for mode in PULL_MODES:
                out = campaign.run_case(name, mode)
                _show(out, round_no)
                note = "; ".join(out.leak_notes)
                if out.fired == 0:
                    note = f"{mode}: the fault did not fire; " + note
                if out.other:
                    note = f"{mode}: exit {out.code}: {out.stderr.strip()[-200:]}; " + note
                rows.setdefault(name, Row()).add(out.completed, out.refused, out.leaks.total() + len(out.leak_notes),
                                                 note.strip("; "))  # fmt: skip


def _show(out: Outcome, round_no: int) -> None:
    verdict = "completed" if out.completed else "refused" if out.refused else "OTHER"
    err = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ""
    print(f"[{round_no + 1}] {out.fault:48s} {out.mode:8s} {verdict:9s} exit {out.code:3d} {out.seconds:6.1f} s "
          f"fired {out.fired} resume-leases {out.resume_leases} leaks {out.leaks.total()} "
          f"{'; '.join(out.leak_notes)} {err[:160]}", flush=True)  # fmt: skip


def concurrent_pulls(campaign: Campaign, rounds: int, rows: dict[str, Row]) -> None:
    row = rows.setdefault("4 concurrent pulls of one image", Row())
    for _ in range(rounds):
        for mode in PULL_MODES:
            campaign.forget()
            baseline = campaign.leaks()
            procs = [subprocess.Popen(campaign.pull_argv(mode), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True, env=campaign.env()) for _ in range(4)]  # fmt: skip
            results = [(p.wait(timeout=300), p.stderr.read() if p.stderr else "") for p in procs]
            problem = campaign.image_complete()
            after = campaign.leaks(baseline)
            for code, err in results:
                ok = code == 0 and not problem
                note = "" if ok else f"{mode}: exit {code}: {err.strip()[-200:]} {problem}"
                row.add(ok, False, 0, note)
            leaked = after.leases + after.ingests
            campaign.forget()
            final = campaign.leaks(baseline)
            row.leaks += leaked + final.total()
            print(f"4 concurrent pulls ({mode}): exits {[c for c, _ in results]} {problem or 'image complete'} "
                  f"leases+ingests {leaked}, after removal {final.nonzero()}", flush=True)  # fmt: skip


def random_port_probe(env: dict[str, str], image: str, bridge: str,
                      leaks: Callable[[Leaks | None], Leaks]) -> bool:  # fmt: skip
    """Does `-p 127.0.0.1::80` get a real host port? Looked up in portmap's DNAT rule while a container runs;
    the leak counter is shown what a running container holds, so a counter that sees nothing is noticed."""
    before = leaks(None)
    proc = subprocess.Popen([sys.executable, "-m", "socirun", "run", "--rm", "-p", "127.0.0.1::80", "-v", "/anon",
                             image, "sleep", "4"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    found: list[str] = []
    held = Leaks()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and proc.poll() is None:
        held = leaks(before)
        found = [r for r in iptables_rules(bridge) if "DNAT" in r and "--dport" in r]
        if found and held.tasks:
            break
        time.sleep(0.2)
    code = proc.wait(timeout=60)
    err = proc.stderr.read().strip() if proc.stderr else ""
    ports = [int(m.group(1)) for r in found if (m := re.search(r"--dport (\d+)", r))]
    print(f"probe -p 127.0.0.1::80: exit {code} {err[-200:]}; DNAT ports {ports}; while it ran: {held.nonzero()}; "
          f"left afterwards: {leaks(before).nonzero()}", flush=True)  # fmt: skip
    return code == 0 and bool(ports) and all(p > 0 for p in ports)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def soak(info: SandboxInfo, workdir: Path, cycles: int, rows: dict[str, Row]) -> str:
    slot = os.getpid() % 200
    bridge, subnet = f"srfault{slot}", f"10.214.{slot + 20}.0/24"
    home = workdir / "soak-config"
    (home / "socirun").mkdir(parents=True, exist_ok=True)
    (home / "socirun" / "config.toml").write_text(
        f'[network]\nname = "socirun-faults"\nbridge = "{bridge}"\nsubnet = "{subnet}"\n'
    )
    data_root = workdir / "soak-data"
    env = dict(os.environ, CONTAINERD_ADDRESS=info.containerd_address, CONTAINERD_NAMESPACE=NAMESPACE,
               SOCIRUN_DATA_ROOT=str(data_root), XDG_CONFIG_HOME=str(home), SOCIRUN_PROGRESS="quiet")  # fmt: skip
    image = f"{info.registry_host}/{NAME}:{TAG}"
    run = [sys.executable, "-m", "socirun", "run", "--rm"]
    pulled = subprocess.run([*run, "--network", "none", image, "true"], env=env, capture_output=True, text=True,
                            check=False)  # fmt: skip
    if pulled.returncode != 0:
        raise SystemExit(f"the soak image does not run: {pulled.stderr.strip()}")

    def leaks(baseline: Leaks | None) -> Leaks:
        return count_leaks(ctr="ctr", address=info.containerd_address, namespace=NAMESPACE, data_root=data_root,
                           bridge=bridge, baseline=baseline)  # fmt: skip

    try:
        random_port = random_port_probe(env, image, bridge, leaks)
        publish_note = "127.0.0.1::80" if random_port else "127.0.0.1:<a free port picked each cycle>:80"
        print(f"soak: -p {publish_note}", flush=True)
        baseline = leaks(None)
        row = rows.setdefault(f"soak: run --rm -p {publish_note} -v vol:/v -v /anon", Row())
        for cycle in range(cycles):
            publish = "127.0.0.1::80" if random_port else f"127.0.0.1:{free_port()}:80"
            done = subprocess.run([*run, "-p", publish, "-v", "faultsvol:/v", "-v", "/anon", image, "true"], env=env,
                                  capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
            now = leaks(baseline)
            note = "" if done.returncode == 0 else f"cycle {cycle + 1}: exit {done.returncode}: {done.stderr.strip()}"
            if now.total():
                note += f" cycle {cycle + 1} leaks {now.nonzero()}"
            row.add(done.returncode == 0, False, now.total(), note.strip())
            print(f"soak {cycle + 1}/{cycles}: exit {done.returncode} leaks {now.nonzero() or 0}", flush=True)
    finally:
        subprocess.run(["ip", "link", "delete", bridge], capture_output=True, check=False)
    return publish_note


def table(rows: dict[str, Row]) -> str:
    lines = ["| fault | runs | completed | refused cleanly (125, one sentence) | other outcome | leaks counted |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, row in rows.items():
        lines.append(f"| {name} | {row.runs} | {row.completed} | {row.refused} | {row.other} | {row.leaks} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each fault, per pull mode")
    parser.add_argument("--stall-rounds", type=int, default=1, help="rounds of the stall, per mode")
    parser.add_argument("--soak", type=int, default=50, help="run --rm cycles (0: none)")
    parser.add_argument("--only", default=None, help="regular expression: only the faults it matches")
    parser.add_argument("--dir", default="/tmp/socirun-faults")
    parser.add_argument("--keep", action="store_true", help="leave the sandbox running afterwards")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the campaign needs root (containerd, runc, CNI)")

    box = Sandbox(Path(args.dir))
    start = time.monotonic()
    rows: dict[str, Row] = {}
    try:
        info = box.up()
        push_sample(info.registry_host, NAME, TAG, LAYERS_MB, seed=SEED)
        workdir = Path(args.dir) / "campaign"
        with Campaign(address=info.containerd_address, registry_host=info.registry_host, name=NAME, tag=TAG,
                      namespace=NAMESPACE, workdir=workdir) as campaign:  # fmt: skip
            fault_matrix(campaign, args.rounds, args.stall_rounds, args.only, rows)
            if not args.only and args.rounds:
                concurrent_pulls(campaign, args.rounds, rows)
        if args.soak and not args.only:
            soak(info, workdir, args.soak, rows)
    finally:
        if not args.keep:
            box.down()
    print()
    print(table(rows))
    notes = [f"- {name}: {note}" for name, row in rows.items() for note in row.notes]
    if notes:
        print("\n" + "\n".join(notes))
    print(f"\n{time.monotonic() - start:.0f} s in all")


if __name__ == "__main__":
    main()
