"""Benchmark: `socirun pull` against `ctr images pull` for the same sample from the same sandbox registry.

Each round starts from an empty store (image removed, GC run synchronously, content and snapshots checked
empty), then runs both pullers, alternating which goes first. Prints each run, the medians, and as its last
line the ratio socirun/ctr (target: <= 1.10).

    python bench/pull_vs_ctr.py [--layers 64,96,128,192,320] [--rounds 3] [--dir /tmp/socirun-bench]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import store

from socirun.sandbox.sample import build_sample, default_cache_dir, push_sample
from socirun.sandbox.sandbox import Sandbox

NAMESPACE = "socirun-bench"
SEED = 7


def ctr(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return store.ctr(address, NAMESPACE, *args)


def empty_store(address: str, ref: str) -> None:
    store.empty_store(address, NAMESPACE, [ref])


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.monotonic()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", default="64,96,128,192,320", help="data layer sizes, MB uncompressed")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default="/tmp/socirun-bench")
    parser.add_argument("--keep", action="store_true", help="leave the sandbox running afterwards")
    args = parser.parse_args()

    box = Sandbox(Path(args.dir))
    try:
        run_rounds(box, args)
    finally:
        if not args.keep:
            box.down()


def run_rounds(box: Sandbox, args: argparse.Namespace) -> None:
    info = box.up()
    sizes = [float(s) for s in args.layers.split(",")]
    ref = push_sample(info.registry_host, "bench/pull", "v1", sizes, seed=SEED)
    address = info.containerd_address
    env = dict(os.environ, CONTAINERD_ADDRESS=address, CONTAINERD_NAMESPACE=NAMESPACE)
    commands = {
        "ctr": ["ctr", "-a", address, "-n", NAMESPACE, "images", "pull", "--plain-http", ref],
        "socirun": [sys.executable, "-m", "socirun", "pull", "--progress", "quiet", ref],
    }
    empty_store(address, ref)
    timed(commands["socirun"], env)  # warm the page cache for the registry's files
    sample = build_sample(default_cache_dir(), sizes, seed=SEED)
    print(f"sample {ref}: {len(sample.layers)} layers, {sample.total_size / 1e6:.0f} MB compressed")

    times: dict[str, list[float]] = {"ctr": [], "socirun": []}
    for round_no in range(args.rounds):
        order = ["ctr", "socirun"] if round_no % 2 == 0 else ["socirun", "ctr"]
        for name in order:
            empty_store(address, ref)
            elapsed = timed(commands[name], env)
            times[name].append(elapsed)
            print(f"round {round_no + 1}: {name:8s} {elapsed:6.2f} s")
    empty_store(address, ref)
    med = {name: statistics.median(values) for name, values in times.items()}
    print(f"median ctr {med['ctr']:.2f} s, socirun {med['socirun']:.2f} s")
    print(f"socirun/ctr {med['socirun'] / med['ctr']:.3f}")


if __name__ == "__main__":
    main()
