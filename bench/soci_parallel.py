"""Benchmark: SOCI's own parallel pull mode against socirun's parallel pull and containerd 2.x's `ctr images
pull`, the same >= 1 GB image, the same cap, from an empty store, on the real soci-snapshotter.

- soci-parallel:    `socirun pull IMAGE` with [pull_modes.parallel_pull_unpack] on, with the seed's settings
                    (20 downloads per image, 16mb chunks, 10 unpacks, discard unpacked layers): socirun only
                    calls Prepare; SOCI downloads and unpacks every layer itself;
- socirun-parallel: `socirun pull --snapshotter overlayfs --pull-mode parallel-stream --discard-unpacked-layers
                    IMAGE` (SOCI not involved): socirun's parallel download with its own applier, blobs of the
                    streamed layers not stored -- the like of SOCI's mode, which discards unpacked layers too;
- socirun-parallel-mode: `socirun pull --snapshotter overlayfs --pull-mode parallel IMAGE` (the blobs stored,
                    containerd's Diff.Apply unpacks them);
- ctr:              `ctr images pull IMAGE` (containerd 2.x's transfer service, its defaults).

The registry is behind a cap of --rate per connection (default 25 MB/s) and no total cap. Every run starts
cold (images removed, content and snapshots gone, SOCI restarted with the settings of the next run); the four
alternate for --rounds rounds (at least 3). Prints every run, the medians with the CPU seconds each component
used in its median run (what bounds a pull on a small host), `socirun-parallel-mode/soci-parallel R`, and as its
last line exactly `socirun-parallel/soci-parallel R`.

    python bench/soci_parallel.py [--layers 150,900,300,50,400,200,100] [--rounds 3] [--rate 25MB]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import soci_bench
import store

from socirun.sandbox.components import containerd2_dir
from socirun.sandbox.sample import build_sample, default_cache_dir, push_sample
from socirun.sandbox.sandbox import Sandbox
from socirun.sandbox.soci_daemon import SociSettings

SEED = 72
NAME = "bench/soci-parallel"
MB = soci_bench.MB
# The seed's DLAMI settings (the defaults of SociSettings when parallel is on).
SOCI_PARALLEL = SociSettings(parallel=True)
LAZY = SociSettings()


def timed(cmd: list[str], env: dict[str, str], watch: store.CpuWatch) -> tuple[float, dict[str, float]]:
    before = watch.snapshot()
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _pid, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - start
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"`{' '.join(cmd)}` failed: {err.strip()[-1500:]}")
    after = watch.snapshot()
    cpu = {"puller": usage.ru_utime + usage.ru_stime} | {name: after[name] - before[name] for name in after}
    return seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--layers", default="150,900,300,50,400,200,100",
                        help="data layer sizes, MiB of files (uncompressed)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", default="25MB", help="per-connection cap in front of the registry")
    parser.add_argument("--dir", default="/tmp/socirun-bench-soci-parallel")
    parser.add_argument("--keep", action="store_true", help="leave the sandbox running afterwards")
    args = parser.parse_args()
    if args.rounds < 3:
        raise SystemExit("--rounds must be at least 3")
    layers = [float(x) for x in args.layers.split(",")]
    image = build_sample(default_cache_dir(), layers, seed=SEED)
    print(f"machine: {soci_bench.machine()}")
    print(f"image: {len(image.layers)} layers, {image.total_size / MB:.0f} MB compressed, largest "
          f"{max(layer.size for layer in image.layers) / MB:.0f} MB")

    box = Sandbox(Path(args.dir))
    info = box.up(soci=True, soci_settings=LAZY)
    print(f"components: {soci_bench.versions(info)}")
    proxy = store.Proxy(info.registry_host, args.rate)
    try:
        ref = push_sample(info.registry_host, NAME, "latest", layers, seed=SEED)
        capped = ref.replace(info.registry_host, proxy.host, 1)
        env = dict(os.environ, CONTAINERD_ADDRESS=info.containerd_address,
                   SOCI_SNAPSHOTTER_CONFIG=str(box.soci.config), SOCI_SNAPSHOTTER_ROOT=str(box.soci.root),
                   SOCIRUN_SOCI_LOG=str(box.soci.log))
        pull = [sys.executable, "-m", "socirun", "pull", "--progress", "quiet"]
        commands = {
            "soci-parallel": ([*pull, "--snapshotter", "soci", capped], SOCI_PARALLEL),
            "socirun-parallel": ([*pull, "--snapshotter", "overlayfs", "--pull-mode", "parallel-stream",
                                  "--discard-unpacked-layers", capped], LAZY),
            "socirun-parallel-mode": ([*pull, "--snapshotter", "overlayfs", "--pull-mode", "parallel", capped], LAZY),
            "ctr": ([str(containerd2_dir() / "ctr"), "-a", info.containerd_address, "-n", "default",
                     "images", "pull", "--plain-http", capped], LAZY),
        }
        runs: dict[str, list[tuple[float, dict[str, float]]]] = {name: [] for name in commands}
        names = list(commands)
        print(f"cap {args.rate}/s per connection, no total cap; {args.rounds} rounds, alternating")
        for round_no in range(args.rounds):
            shift = round_no % len(names)
            for name in names[shift:] + names[:shift]:
                cmd, settings = commands[name]
                soci_bench.cold(box, info, [capped], settings)
                status = box.status()
                watch = store.CpuWatch({"containerd": info.containerd_pid, "soci": status.soci_pid if status else 0,
                                        "registry": info.registry_pid, "proxy": proxy.proc.pid})
                seconds, cpu = timed(cmd, env, watch)
                runs[name].append((seconds, cpu))
                print(f"  round {round_no + 1}: {name:21s} {seconds:7.2f} s "
                      f"({image.total_size / MB / seconds:.0f} MB/s)", flush=True)
        soci_bench.cold(box, info, [capped], LAZY)
    finally:
        proxy.stop()
        if not args.keep:
            box.down()

    cores = os.cpu_count() or 1
    print("| puller | median | MB/s | CPU seconds in the median run (puller, containerd, soci, registry, proxy) |")
    print("|---|---|---|---|")
    medians: dict[str, float] = {}
    for name, values in runs.items():
        ordered = sorted(values, key=lambda v: v[0])
        seconds, cpu = ordered[len(ordered) // 2]
        medians[name] = statistics.median(v[0] for v in values)
        parts = ", ".join(f"{part} {used:.1f}" for part, used in cpu.items())
        print(f"| {name} | {medians[name]:.2f} s | {image.total_size / MB / medians[name]:.0f} | {parts}; "
              f"{sum(cpu.values()) / seconds / cores:.0%} of {cores} cores |")
    print(f"socirun-parallel-mode/soci-parallel {medians['socirun-parallel-mode'] / medians['soci-parallel']:.3f}")
    print(f"socirun-parallel/ctr {medians['socirun-parallel'] / medians['ctr']:.3f}")
    print(f"socirun-parallel/soci-parallel {medians['socirun-parallel'] / medians['soci-parallel']:.3f}")


if __name__ == "__main__":
    main()
