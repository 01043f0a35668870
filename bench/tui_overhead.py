"""Benchmark: what the TUI costs.

(a) A synthetic stream of 200 layers x 50 progress events per second per layer (10,000 events/s) for 20 s,
    emitted in real time into the headless TUI (160x48): CPU seconds used per wall second, and the largest gap
    between two frames the app rendered. The same producer with a no-op `emit` is measured first, so the
    TUI's own share is visible. Targets: < 0.25 CPU-s/s, no gap over 200 ms.
(b) `socirun pull` of a sandbox sample (by default the one bench/pull_vs_ctr.py uses, ~800 MB uncompressed)
    with `--progress tty` (inside tmux, a real terminal) and with `--progress plain` (same tmux, same wrapper),
    alternating, from an emptied store each time; the ratio of the medians tty/plain is printed last.
    Target: <= 1.05. The TUI's fixed cost (loading and starting Textual, ~0.2 s) is a larger share of
    small pulls; `--layers 16,16,32,64` shows it.

    python bench/tui_overhead.py [--part a|b|both] [--seconds 20] [--pairs 3] [--layers 64,96,128,192,320]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import store

from socirun import events as ev
from socirun.sandbox.sample import build_sample, default_cache_dir, push_sample
from socirun.sandbox.sandbox import Sandbox
from socirun.ui.tui.app import PullApp

NAMESPACE = "socirun-tui-bench"
SEED = 7  # with the default layers: the same sample as bench/pull_vs_ctr.py (and its build cache)
GZ = "application/vnd.oci.image.layer.v1.tar+gzip"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def synthetic(layers: int, per_second: int, seconds: float, measured: dict[str, float]) -> Callable[..., Any]:
    """A work function emitting the stream in real time; fills `measured` with cpu and wall seconds."""
    size = 1_000_000_000
    digests = [f"sha256:{i:064x}" for i in range(layers)]

    async def work(emit: ev.Emit) -> int:
        emit(ev.Resolving(reference="bench/many:latest"))
        emit(ev.ImageResolved(reference="bench/many:latest", digest="sha256:" + "9" * 64,
                              manifest_digest="sha256:" + "9" * 64, platform="linux/amd64", layer_count=layers,
                              total_size=layers * size))
        emit(ev.PlanMade(mode="standard", snapshotter="overlayfs", reasons=("benchmark",)))
        for i, d in enumerate(digests):
            emit(ev.LayerPlanned(index=i, digest=d, media_type=GZ, size=size, mode="standard"))
            emit(ev.LayerStateChanged(digest=d, state="downloading"))
        await asyncio.sleep(0.5)  # let the app settle before measuring
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        period = 1 / per_second
        steps = int(seconds * per_second)
        for step in range(1, steps + 1):
            now = time.time()
            done = size * step // (steps + 1)
            for d in digests:
                emit(ev.LayerProgress(digest=d, downloaded=done, total=size, time=now))
            delay = wall0 + step * period - time.perf_counter()
            await asyncio.sleep(max(delay, 0))
        measured["cpu"] = cpu_seconds() - cpu0
        measured["wall"] = time.perf_counter() - wall0
        measured["start"] = wall0
        return 0

    return work


async def run_producer_only(layers: int, per_second: int, seconds: float) -> dict[str, float]:
    measured: dict[str, float] = {}
    await synthetic(layers, per_second, seconds, measured)(lambda event: None)
    return measured


async def run_headless_tui(layers: int, per_second: int, seconds: float) -> tuple[dict[str, float], list[float], int]:
    measured: dict[str, float] = {}
    app = PullApp(synthetic(layers, per_second, seconds, measured), interactive=False)
    frames: list[float] = []
    display = app._display

    def counting_display(screen: Any, renderable: Any) -> None:
        if renderable is not None:
            frames.append(time.perf_counter())
        display(screen, renderable)

    app._display = counting_display  # type: ignore[method-assign]
    await app.run_async(headless=True, size=(160, 48))
    start, end = measured["start"], measured["start"] + measured["wall"]
    window = [t for t in frames if start <= t <= end]
    gaps = [b - a for a, b in zip([start, *window], [*window, end], strict=True)]
    return measured, gaps, len(window)


def part_a(seconds: float) -> None:
    layers, per_second = 200, 50
    base = asyncio.run(run_producer_only(layers, per_second, seconds))
    print(f"(a) producer alone: {base['cpu']:.2f} CPU-s in {base['wall']:.2f} s = {base['cpu'] / base['wall']:.3f} "
          "CPU-s per s")
    measured, gaps, frames = asyncio.run(run_headless_tui(layers, per_second, seconds))
    ratio = measured["cpu"] / measured["wall"]
    print(f"(a) headless TUI, {layers} layers x {per_second} events/s/layer for {measured['wall']:.1f} s: "
          f"{measured['cpu']:.2f} CPU-s = {ratio:.3f} CPU-s per s (target < 0.25); {frames} frames, "
          f"largest gap {max(gaps) * 1000:.0f} ms (target < 200 ms); gaps over 150 ms: "
          f"{sum(1 for g in gaps if g > 0.15)}")


# -- (b) ----------------------------------------------------------------------------------------------------


def ctr(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return store.ctr(address, NAMESPACE, *args)


def empty_store(address: str, ref: str) -> None:
    store.empty_store(address, NAMESPACE, [ref])


# Runs inside the pane: times the command and adds up the CPU it (and its children) used.
TIMER = """
import resource, subprocess, sys, time
start = time.perf_counter()
rc = subprocess.run(sys.argv[2:]).returncode
wall = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], "w").write(f"{rc} {wall} {usage.ru_utime + usage.ru_stime}")
"""


def in_tmux(argv: list[str], env: dict[str, str], workdir: Path) -> tuple[float, float]:
    """Run argv in a fresh 160x48 tmux pane; returns (wall seconds, CPU seconds), measured inside the pane."""
    socket, marker = str(workdir / "tmux.sock"), workdir / "exited"
    marker.unlink(missing_ok=True)
    env_args = [a for k, v in env.items() for a in ("-e", f"{k}={v}")]
    subprocess.run(["tmux", "-u", "-S", socket, "new-session", "-d", "-s", "bench", "-x", "160", "-y", "48",
                    *env_args, "env", "-u", "COLUMNS", "-u", "LINES", sys.executable, "-c", TIMER, str(marker),
                    *argv], check=True, timeout=30)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            fields = marker.read_text().split() if marker.exists() else []
            if len(fields) == 3:
                if fields[0] != "0":
                    raise SystemExit(f"{argv} exited {fields[0]}")
                return float(fields[1]), float(fields[2])
            time.sleep(0.05)
        raise SystemExit(f"{argv} did not finish in 600 s")
    finally:
        subprocess.run(["tmux", "-S", socket, "kill-server"], capture_output=True, check=False, timeout=30)


def part_b(pairs: int, layers: list[float], sandbox_dir: str | None) -> None:
    if shutil.which("tmux") is None:
        raise SystemExit("(b) needs tmux (scripts/install-deps.sh installs it)")
    workdir = Path(tempfile.mkdtemp(prefix="srt-tui-", dir="/tmp"))
    box = Sandbox(Path(sandbox_dir) if sandbox_dir else workdir / "sandbox")
    try:
        info = box.up()
        ref = push_sample(info.registry_host, "bench/tui", "v1", layers, seed=SEED)
        sample = build_sample(default_cache_dir(), layers, seed=SEED)
        address = info.containerd_address
        env = {"CONTAINERD_ADDRESS": address, "CONTAINERD_NAMESPACE": NAMESPACE, "TERM": "xterm-256color",
               "PATH": os.environ.get("PATH", "")}
        argv = {face: [sys.executable, "-m", "socirun", "pull", "--progress", face, ref] for face in ("tty", "plain")}
        print(f"(b) sample {ref}: {len(sample.layers)} layers, {sample.total_size / 1e6:.0f} MB compressed")
        empty_store(address, ref)
        in_tmux(argv["plain"], env, workdir)  # warm-up: page cache, imports
        times: dict[str, list[float]] = {"tty": [], "plain": []}
        cpu: dict[str, list[float]] = {"tty": [], "plain": []}
        for pair in range(pairs):
            order = ["tty", "plain"] if pair % 2 == 0 else ["plain", "tty"]
            for face in order:
                empty_store(address, ref)
                took, used = in_tmux(argv[face], env, workdir)
                times[face].append(took)
                cpu[face].append(used)
                print(f"(b) pair {pair + 1}: {face:5s} {took:6.2f} s  ({used:5.2f} CPU-s)")
        empty_store(address, ref)
        med = {face: statistics.median(values) for face, values in times.items()}
        med_cpu = {face: statistics.median(values) for face, values in cpu.items()}
        print(f"(b) median tty {med['tty']:.2f} s ({med_cpu['tty']:.2f} CPU-s), "
              f"plain {med['plain']:.2f} s ({med_cpu['plain']:.2f} CPU-s)")
        print(f"(b) tty/plain {med['tty'] / med['plain']:.3f} (target <= 1.05)")
    finally:
        if not sandbox_dir:
            box.down()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--part", choices=("a", "b", "both"), default="both")
    parser.add_argument("--seconds", type=float, default=20.0, help="(a) how long the stream runs")
    parser.add_argument("--pairs", type=int, default=3, help="(b) tty/plain pairs")
    parser.add_argument("--layers", default="64,96,128,192,320", help="(b) data layer sizes, MB uncompressed")
    parser.add_argument("--sandbox-dir", default=None, help="(b) use (and keep) this sandbox directory")
    args = parser.parse_args()
    if args.part in ("a", "both"):
        part_a(args.seconds)
    if args.part in ("b", "both"):
        part_b(args.pairs, [float(s) for s in args.layers.split(",")], args.sandbox_dir)


if __name__ == "__main__":
    main()
