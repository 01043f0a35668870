"""Benchmark: time from the command to the container's first output line on the real soci-snapshotter, for a
>= 1 GB sample whose start reads about 5% of it spread over many files, three ways:

- lazy:     `socirun run IMAGE ...` (the plan picks SOCI lazy loading: v2 index made by `soci convert`);
- parallel: `socirun run --snapshotter overlayfs --pull-mode parallel IMAGE ...` (socirun's full pull);
- ctr:      `ctr images pull` + `ctr run` of the same layers without an index (containerd 2.x's own full pull).

The registry is behind a cap of --rate per connection (default 25 MB/s, like one stream from S3 or a CDN), no
total cap. Every run starts cold (images removed, content and snapshots gone in both snapshotters, SOCI
restarted); the three alternate, for --rounds rounds. Bytes fetched: for lazy, what SOCI's metrics say it
fetched (soci_fs_layer_fetched_size_bytes) when the first line appeared; for the full pulls, the image.

    python bench/lazy_vs_full.py [--layers 600,900,700] [--rounds 3] [--rate 25MB] [--share 0.05]

The last line is exactly `full/lazy start-time ratio R`, full being ctr.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time

import soci_bench

from socirun.sandbox.components import containerd2_dir
from socirun.sandbox.sample import SampleFile, sample_files
from socirun.sandbox.sandbox import Sandbox, SandboxInfo
from socirun.sandbox.soci_daemon import metrics_port_of
from socirun.soci.observer import fetch_metrics, parse_metrics

SEED = 71
NAME = "bench/lazy"
MB = soci_bench.MB
MARK = "socirun-bench-started"


def files_to_read(layers: list[float], share: float, image_size: int) -> list[SampleFile]:
    """Files whose sizes add up to about `share` of the image's compressed size, as a program's start reads
    them: a run of neighbouring files (a package's modules and libraries, next to each other in the layer) from
    every data layer, each run about the same number of bytes."""
    files = [f for f in sample_files(layers, SEED) if f.kind != "big"]
    data_layers = sorted({f.layer for f in files})
    per_layer = share * image_size / len(data_layers)
    chosen: list[SampleFile] = []
    for layer in data_layers:
        mine = [f for f in files if f.layer == layer]
        start = len(mine) // 3  # not the first files of the layer: the middle of its tree
        taken = 0
        for f in mine[start:] + mine[:start]:
            if taken >= per_layer:
                break
            chosen.append(f)
            taken += f.size
    return chosen


def first_line(cmd: list[str], env: dict[str, str] | None = None) -> float:
    """Seconds from start to the first stdout line (which must be the mark); the command must then exit 0."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    elapsed = time.monotonic() - start
    _, err = proc.communicate()
    if proc.returncode != 0 or MARK not in line:
        raise SystemExit(f"`{' '.join(cmd[:8])} ...` failed (exit {proc.returncode}, first line {line!r}): "
                         f"{err.strip()[-1500:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--layers", default="600,900,700", help="data layer sizes, MiB of files (uncompressed)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", default="25MB", help="per-connection cap in front of the registry")
    parser.add_argument("--share", type=float, default=0.05, help="what the start reads, of the image size")
    parser.add_argument("--dir", default="/tmp/socirun-bench-lazy")
    parser.add_argument("--keep", action="store_true", help="leave the sandbox running afterwards")
    args = parser.parse_args()
    layers = [float(x) for x in args.layers.split(",")]

    image = soci_bench.sample(layers, SEED)
    reads = files_to_read(layers, args.share, image.total_size)
    read_bytes = sum(f.size for f in reads)
    print(f"the start reads {len(reads)} files, {read_bytes / MB:.1f} MB "
          f"({100 * read_bytes / image.total_size:.1f}% of the compressed image), then prints a line")
    script = f"cat {' '.join(f.path for f in reads)} > /dev/null && echo {MARK}"

    with soci_bench.soci_sandbox(args.dir, NAME, layers, SEED, args.rate, keep=args.keep) as bench:
        box, info, settings = bench.box, bench.info, bench.settings
        lazy_ref, plain_ref = bench.lazy_ref, bench.plain_ref
        env = box_env(box, info)
        socirun = [sys.executable, "-m", "socirun", "run", "--rm", "--net", "none", "--progress", "quiet"]
        ctr = [str(containerd2_dir() / "ctr"), "-a", info.containerd_address, "-n", "default"]
        commands = {
            "lazy": [*socirun, lazy_ref, "sh", "-c", script],
            "parallel": [*socirun, "--snapshotter", "overlayfs", "--pull-mode", "parallel", plain_ref, "sh", "-c",
                         script],
        }
        metrics_at = f"127.0.0.1:{metrics_port_of(box.soci.config.read_text())}"
        runs: dict[str, list[float]] = {"lazy": [], "parallel": [], "ctr": []}
        fetched: list[int] = []
        names = list(runs)
        print(f"cap {args.rate}/s per connection, no total cap; {args.rounds} rounds, alternating")
        for round_no in range(args.rounds):
            for name in names[round_no % 3:] + names[:round_no % 3]:
                soci_bench.cold(box, info, [lazy_ref, plain_ref], settings)
                if name == "ctr":
                    start = time.monotonic()
                    soci_bench.ctr2(info.containerd_address, "images", "pull", "--plain-http", plain_ref)
                    pulled = time.monotonic() - start
                    seconds = pulled + first_line([*ctr, "run", "--rm", plain_ref, "bench-ctr", "sh", "-c", script])
                else:
                    seconds = first_line(commands[name], env)
                if name == "lazy":
                    metrics = parse_metrics(asyncio.run(fetch_metrics(metrics_at, "tcp")))
                    fetched.append(sum(m.fetched for m in metrics.values()))
                runs[name].append(seconds)
                extra = f", SOCI fetched {fetched[-1] / MB:.1f} MB" if name == "lazy" else ""
                print(f"  round {round_no + 1}: {name:8s} first line after {seconds:7.2f} s{extra}", flush=True)
        soci_bench.cold(box, info, [lazy_ref, plain_ref], settings)

    med = {name: statistics.median(values) for name, values in runs.items()}
    lazy_fetched = statistics.median(fetched)
    print("| way | median time to first line | bytes fetched before it |")
    print("|---|---|---|")
    print(f"| socirun, lazy (SOCI) | {med['lazy']:.2f} s | {lazy_fetched / MB:.1f} MB "
          f"({100 * lazy_fetched / image.total_size:.1f}%) |")
    print(f"| socirun, parallel pull | {med['parallel']:.2f} s | {image.total_size / MB:.0f} MB (all) |")
    print(f"| ctr pull + ctr run | {med['ctr']:.2f} s | {image.total_size / MB:.0f} MB (all) |")
    print(f"parallel/lazy start-time ratio {med['parallel'] / med['lazy']:.1f}")
    print(f"full/lazy start-time ratio {med['ctr'] / med['lazy']:.1f}")


def box_env(box: Sandbox, info: SandboxInfo) -> dict[str, str]:
    """What `eval "$(socirun sandbox env)"` would set."""
    return dict(os.environ, CONTAINERD_ADDRESS=info.containerd_address,
                SOCI_SNAPSHOTTER_CONFIG=str(box.soci.config), SOCI_SNAPSHOTTER_ROOT=str(box.soci.root),
                SOCIRUN_SOCI_LOG=str(box.soci.log))


if __name__ == "__main__":
    main()
