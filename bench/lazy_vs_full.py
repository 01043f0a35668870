"""Benchmark: time from command start to the container's first output line, lazy loading (the SOCI emulator,
`socirun run --snapshotter soci`) against a full pull (`socirun run --snapshotter overlayfs`), for the same
sample (>= 1 GB compressed, 7 layers, SOCI v2 index) behind a per-connection bandwidth cap.

Each run starts cold: the image is removed with a synchronous GC (content and snapshots gone) and the SOCI
emulator is restarted (no background fill of an earlier run competes for bandwidth). Pairs alternate which
mode goes first. Prints every run, the medians, and as its last line the ratio full/lazy.

    python bench/lazy_vs_full.py [--layers 32,128,256,512,512,640] [--pairs 3] [--rate 25MB]

What the ratio shows: how much sooner a container whose command reads little of a big image starts when its
layers are mounted lazily than when every layer must be downloaded and unpacked first, with transfer time
dominating as on a real network. What it does not show: SOCI's FUSE read path. The emulator fills lazy layers
in the background from ranged registry reads and has no on-demand fetch, so a workload that reads much of the
image before printing would look better here than with the real snapshotter.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from socirun.sandbox.sample import build_sample, default_cache_dir, push_sample
from socirun.sandbox.sandbox import Sandbox
from socirun.sandbox.soci_emulator.process import emulator_config

SEED = 11
NAME = "bench/lazy"
TEXT = "hello from the socirun sample"


def ctr(address: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ctr", "-a", address, "-n", "default", *args], capture_output=True, text=True,
                          check=check)


def cold(box: Sandbox, address: str, ref: str) -> None:
    """No image, no content, no snapshots in either snapshotter; a fresh emulator."""
    ctr(address, "images", "rm", "--sync", ref, check=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        content = ctr(address, "content", "ls", "-q").stdout.split()
        overlay = ctr(address, "snapshots", "--snapshotter", "overlayfs", "ls").stdout.splitlines()[1:]
        soci = ctr(address, "snapshots", "--snapshotter", "soci", "ls").stdout.splitlines()[1:]
        if not content and not overlay and not soci:
            break
        time.sleep(0.5)
    else:
        raise SystemExit("the store did not empty within 60 s")
    box.restart_soci(emulator_config(box.soci))


def first_line_after(cmd: list[str], env: dict[str, str]) -> float:
    """Seconds from start to the container's first stdout line; the command must then exit 0."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    elapsed = time.monotonic() - start
    proc.stdout.read()
    if proc.wait() != 0 or TEXT not in line:
        raise SystemExit(f"`{' '.join(cmd)}` failed (exit {proc.returncode}, first line {line!r})")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--layers", default="32,128,256,512,512,640", help="data layer sizes, MB uncompressed")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--rate", default="25MB", help="per-connection cap in front of the registry")
    parser.add_argument("--dir", default="/tmp/socirun-bench-lazy")
    parser.add_argument("--keep", action="store_true", help="leave the sandbox running afterwards")
    args = parser.parse_args()
    layers = [float(x) for x in args.layers.split(",")]

    image = build_sample(default_cache_dir(), layers, seed=SEED)
    print(f"sample: {len(image.layers)} layers, {image.total_size / 1e9:.2f} GB compressed", file=sys.stderr)
    box = Sandbox(Path(args.dir))
    info = box.up(soci=True)
    throttle = subprocess.Popen([sys.executable, "-m", "socirun.sandbox.throttle", "--upstream",
                                 info.registry_host, "--rate", args.rate], stdout=subprocess.PIPE, text=True)
    try:
        assert throttle.stdout is not None
        capped = throttle.stdout.readline().strip()
        push_sample(info.registry_host, NAME, "latest", layers, seed=SEED, soci="v2")
        ref = f"{capped}/{NAME}:latest"
        env = dict(os.environ, CONTAINERD_ADDRESS=info.containerd_address,
                   SOCI_SNAPSHOTTER_CONFIG=str(box.soci.config), SOCIRUN_PROGRESS="quiet")
        base = [sys.executable, "-m", "socirun", "run", "--rm", "--net", "none"]
        runs: dict[str, list[float]] = {"lazy": [], "full": []}
        for pair in range(args.pairs):
            order = ("lazy", "full") if pair % 2 == 0 else ("full", "lazy")
            for mode in order:
                cold(box, info.containerd_address, ref)
                snapshotter = "soci" if mode == "lazy" else "overlayfs"
                seconds = first_line_after([*base, "--snapshotter", snapshotter, ref], env)
                runs[mode].append(seconds)
                print(f"pair {pair + 1} {mode:<4} ({snapshotter}): first line after {seconds:.2f} s", file=sys.stderr)
        lazy, full = statistics.median(runs["lazy"]), statistics.median(runs["full"])
        print(f"rate cap {args.rate}/s per connection; medians: lazy {lazy:.2f} s, full {full:.2f} s")
        print(f"ratio full/lazy (time to first output line): {full / lazy:.1f}x")
    finally:
        throttle.terminate()
        throttle.wait()
        if not args.keep:
            box.down()


if __name__ == "__main__":
    main()
