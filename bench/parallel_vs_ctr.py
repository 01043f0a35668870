"""Benchmark: `socirun pull --pull-mode parallel` against `ctr images pull` and `socirun pull --pull-mode standard`,
through a per-connection bandwidth cap, and against the machine's limit for the same pull.

The sample (default: a busybox base plus data layers of 150, 900, 300, 50, 400, 200 and 100 MB uncompressed,
about 1.1 GB compressed over 8 layers, the largest 43% of the image) is pushed to a private sandbox registry.
A throttling proxy in front of it caps every TCP connection at --rate (default 25 MB/s, like one stream from S3
or a CDN) and nothing in total. Each run starts from an empty store (image removed, GC run synchronously,
content and snapshots checked empty); the three pullers alternate, for --rounds rounds.

The machine's limit for the pull is the larger of
- fetch: the time to fetch every blob through the same proxy with unlimited connections (64 ranged requests
  of 8 MiB at once, bytes discarded): the most this machine, loopback and proxy included, can move; and
- apply: the time containerd needs to unpack the layers alone, blobs already local (`ctr images pull` with
  all content present and no snapshots);
a pull that overlaps them perfectly takes max(fetch, apply).

Then, without the proxy, ctr and socirun parallel alternate again (unthrottled). With --schedules, parallel runs
also compare the chunk schedules (in-order, largest-first, interleave).

Peak RSS is the socirun process's own maximum resident set (wait4's ru_maxrss).
It also prints the CPU seconds each process used in the fastest parallel run (socirun, containerd, the
registry, the proxy): on a small host their sum over the cores, not the network, is what bounds the pull.

    python bench/parallel_vs_ctr.py [--rounds 3] [--rate 25MB] [--layers 150,900,300,50,400,200,100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import store

from socirun.sandbox.sample import build_sample, default_cache_dir, push_sample
from socirun.sandbox.sandbox import Sandbox

NAMESPACE = "socirun-bench-parallel"
SEED = 11
MB = 1_000_000


@dataclass
class Run:
    seconds: float
    peak_rss: int  # bytes; 0 for ctr
    cpu: float = 0.0  # CPU seconds of the puller itself (socirun or ctr)
    others_cpu: dict[str, float] = field(default_factory=dict)  # containerd, registry, proxy during the run


def ctr(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return store.ctr(address, NAMESPACE, *args)


def empty_store(address: str, refs: list[str], *, keep_content: bool = False) -> None:
    """Remove the images (or, with keep_content, only the snapshots) and wait until GC has done its work."""
    if keep_content:
        # Remove the top snapshots; GC then collects the parents nothing references any more. Repeat until none.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            rows = [line.split() for line in ctr(address, "snapshots", "ls").stdout.splitlines()[1:] if line.strip()]
            if not rows:
                return
            parents = {row[1] for row in rows if len(row) > 2}
            for row in rows:
                if row[0] not in parents:
                    subprocess.run(["ctr", "-a", address, "-n", NAMESPACE, "snapshots", "rm", row[0]],
                                   capture_output=True, check=False)
            time.sleep(0.2)
        raise SystemExit("the snapshots did not go within 120 s")
    store.empty_store(address, NAMESPACE, refs)


def timed(cmd: list[str], env: dict[str, str], watch: store.CpuWatch | None = None) -> Run:
    """Run cmd; its wall time, its own peak RSS and CPU (from wait4, so no polling can miss a peak), and the
    CPU the helper processes used meanwhile."""
    before = watch.snapshot() if watch else {}
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _pid, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"`{' '.join(cmd)}` failed ({proc.returncode}): {stderr.strip()[-2000:]}")
    after = watch.snapshot() if watch else {}
    return Run(elapsed, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime,
               {name: after[name] - before[name] for name in after})


async def fetch_all(host: str, repo: str, layers: list[tuple[str, int]], connections: int, chunk: int) -> float:
    """Every blob in ranged chunks, `connections` requests at once, bytes discarded; the wall time."""
    ranges = [(digest, start, min(start + chunk, size) - 1) for digest, size in layers
              for start in range(0, size, chunk)]
    queue: asyncio.Queue[tuple[str, int, int]] = asyncio.Queue()
    for item in ranges:
        queue.put_nowait(item)
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:

        async def worker() -> None:
            while not queue.empty():
                digest, start, end = queue.get_nowait()
                url = f"http://{host}/v2/{repo}/blobs/{digest}"
                async with session.get(url, headers={"Range": f"bytes={start}-{end}"}) as resp:
                    assert resp.status == 206, resp.status
                    async for _ in resp.content.iter_chunked(1 << 20):
                        pass

        start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(connections)))
        return time.monotonic() - start


def machine() -> str:
    containerd = subprocess.run(["containerd", "--version"], capture_output=True, text=True).stdout.strip()
    return f"{store.machine()}, {containerd}"


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def med(runs: list[Run]) -> float:
    return statistics.median(r.seconds for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", default="150,900,300,50,400,200,100", help="data layer sizes, MB uncompressed")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", default="25MB", help="cap per connection (default 25MB/s)")
    parser.add_argument("--unthrottled-rounds", type=int, default=3)
    parser.add_argument("--schedules", action="store_true", help="also compare the chunk schedules")
    parser.add_argument("--dir", default="/tmp/socirun-bench-parallel")
    parser.add_argument("--keep", action="store_true", help="leave the sandbox running afterwards")
    args = parser.parse_args()
    box = Sandbox(Path(args.dir))
    try:
        bench(box, args)
    finally:
        if not args.keep:
            box.down()


def bench(box: Sandbox, args: argparse.Namespace) -> None:
    print(f"machine: {machine()}")
    print(f"load average before: {loadavg()}")
    info = box.up()
    sizes = [float(s) for s in args.layers.split(",")]
    sample = build_sample(default_cache_dir(), sizes, seed=SEED)
    ref = push_sample(info.registry_host, "bench/parallel", "v1", sizes, seed=SEED)
    layer_sizes = [layer.size for layer in sample.layers]
    total = sum(layer_sizes)
    print(f"image: {len(layer_sizes)} layers, {total / MB:.0f} MB compressed "
          f"({sum(sizes) + 0:.0f} MB of data uncompressed), largest {max(layer_sizes) / MB:.0f} MB "
          f"= {100 * max(layer_sizes) / total:.0f}%; layers (MB): {', '.join(f'{s / MB:.1f}' for s in layer_sizes)}")
    address = info.containerd_address
    proxy = store.Proxy(info.registry_host, args.rate, None)
    watch = store.CpuWatch({"containerd": info.containerd_pid, "registry": info.registry_pid, "proxy": proxy.proc.pid})
    cfg_dir = Path(tempfile.mkdtemp(prefix="socirun-bench-cfg-"))
    try:
        throttled = ref.replace(info.registry_host, proxy.host, 1)
        refs = [ref, throttled]
        env = dict(os.environ, CONTAINERD_ADDRESS=address, CONTAINERD_NAMESPACE=NAMESPACE,
                   XDG_CONFIG_HOME=str(cfg_dir))
        socirun = [sys.executable, "-m", "socirun", "pull", "--progress", "quiet"]

        def commands(target: str) -> dict[str, list[str]]:
            return {
                "ctr": ["ctr", "-a", address, "-n", NAMESPACE, "images", "pull", "--plain-http", target],
                "standard": [*socirun, "--pull-mode", "standard", target],
                "parallel": [*socirun, "--pull-mode", "parallel", target],
            }

        empty_store(address, refs)
        timed(commands(ref)["parallel"], env)  # warm the page cache for the registry's files
        print(f"per-connection cap {args.rate}/s, no total cap; {args.rounds} rounds, alternating")
        runs: dict[str, list[Run]] = {"ctr": [], "standard": [], "parallel": []}
        names = list(runs)
        for round_no in range(args.rounds):
            order = names[round_no % 3:] + names[:round_no % 3]
            for name in order:
                empty_store(address, refs)
                run = timed(commands(throttled)[name], env, watch)
                runs[name].append(run)
                rss = f", peak RSS {run.peak_rss / MB:.0f} MB" if name != "ctr" else ""
                print(f"  round {round_no + 1}: {name:9s} {run.seconds:7.2f} s{rss}", flush=True)

        # The machine's limit: fetch with unlimited connections through the same proxy, and apply alone.
        empty_store(address, refs)
        digests = list(zip([d.digest for d in sample.layers], layer_sizes, strict=True))
        fetch = [asyncio.run(fetch_all(proxy.host, "bench/parallel", digests, 64, 8 << 20)) for _ in range(2)]
        fetch_s = min(fetch)
        timed(commands(ref)["ctr"], env)  # content and snapshots in place
        apply_runs = []
        for _ in range(2):
            empty_store(address, refs, keep_content=True)
            apply_runs.append(timed(commands(ref)["ctr"], env, watch))
        apply_run = min(apply_runs, key=lambda r: r.seconds)
        apply_s = apply_run.seconds
        limit = max(fetch_s, apply_s)
        print(f"  limit: fetch at the cap with unlimited connections {fetch_s:.2f} s "
              f"({total / MB / fetch_s:.0f} MB/s), containerd apply alone {apply_s:.2f} s -> {limit:.2f} s")

        if args.schedules:
            sched_runs: dict[str, list[float]] = {}
            for round_no in range(args.rounds):
                for schedule in ("in-order", "largest-first", "interleave"):
                    (cfg_dir / "socirun").mkdir(exist_ok=True)
                    (cfg_dir / "socirun" / "config.toml").write_text(f'[pull]\nschedule = "{schedule}"\n')
                    empty_store(address, refs)
                    seconds = timed(commands(throttled)["parallel"], env).seconds
                    sched_runs.setdefault(schedule, []).append(seconds)
                    print(f"  round {round_no + 1}: parallel {schedule:13s} {seconds:7.2f} s", flush=True)
            (cfg_dir / "socirun" / "config.toml").unlink()
            print("  schedules (median): " + ", ".join(
                f"{name} {statistics.median(v):.2f} s" for name, v in sched_runs.items()))

        unthrottled: dict[str, list[Run]] = {"ctr": [], "parallel": []}
        for round_no in range(args.unthrottled_rounds):
            for name in (["ctr", "parallel"] if round_no % 2 == 0 else ["parallel", "ctr"]):
                empty_store(address, refs)
                run = timed(commands(ref)[name], env)
                unthrottled[name].append(run)
                print(f"  unthrottled round {round_no + 1}: {name:9s} {run.seconds:7.2f} s", flush=True)
        empty_store(address, refs)
    finally:
        proxy.stop()

    print(f"load average after: {loadavg()}")
    print(f"median, {args.rate}/s per connection: ctr {med(runs['ctr']):.2f} s, socirun standard "
          f"{med(runs['standard']):.2f} s, socirun parallel {med(runs['parallel']):.2f} s; limit {limit:.2f} s")
    print(f"peak RSS of socirun: standard {max(r.peak_rss for r in runs['standard']) / MB:.0f} MB, parallel "
          f"{max(r.peak_rss for r in runs['parallel']) / MB:.0f} MB")
    # What the machine must do in a parallel pull, in CPU seconds, against what it has: the cores bound any pull.
    cores = os.cpu_count() or 1
    fastest = min(runs["parallel"], key=lambda r: r.seconds)
    parts = {"socirun": fastest.cpu, **fastest.others_cpu}
    used = sum(parts.values())
    print(f"CPU seconds in the fastest parallel run ({fastest.seconds:.2f} s): "
          + ", ".join(f"{name} {value:.1f}" for name, value in parts.items())
          + f"; {used:.1f} in all = {used / cores:.2f} s of all {cores} cores "
          f"(containerd applying alone used {apply_run.others_cpu.get('containerd', 0.0):.1f})")
    print(f"median unthrottled: ctr {med(unthrottled['ctr']):.2f} s, socirun parallel "
          f"{med(unthrottled['parallel']):.2f} s")
    print(f"unthrottled parallel/ctr {med(unthrottled['parallel']) / med(unthrottled['ctr']):.3f}")
    print(f"parallel/limit {med(runs['parallel']) / limit:.3f}")
    print(f"parallel/standard {med(runs['parallel']) / med(runs['standard']):.3f}")
    print(f"parallel/ctr {med(runs['parallel']) / med(runs['ctr']):.3f}")


if __name__ == "__main__":
    main()
