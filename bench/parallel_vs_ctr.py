"""Benchmark: socirun's pull modes against `ctr images pull` on containerd 1.6 and on containerd 2.x (its parallel
layer fetch configured generously), through a per-connection bandwidth cap, and against the machine's limit.

Two sandboxes run side by side: Debian's containerd 1.6 (the first `containerd` on PATH) and the built 2.x
(/opt/socirun/bin, `scripts/build-go-components.sh --containerd2`), whose transfer service gets
`[plugins.'io.containerd.transfer.v1.local']` max_concurrent_downloads (--ctr2-downloads, default 32),
concurrent_layer_fetch_buffer (--ctr2-buffer, default 16 MiB: ranged chunks of that size, the parallel layer
fetch of containerd 2.1+) and max_concurrent_unpacks (--ctr2-unpacks, default 4). The pullers:

    ctr-1.6            `ctr images pull` on 1.6
    ctr-2.x-parallel   `ctr images pull` on 2.x (its transfer service, configured as above)
    standard           `socirun pull --pull-mode standard` on 1.6
    parallel           `socirun pull --pull-mode parallel` on 1.6
    parallel-stream    `socirun pull --pull-mode parallel-stream` on 1.6 (layers unpacked as their bytes arrive)
    stream-discard     the same with --discard-unpacked-layers (streamed layers' blobs are not stored)
    parallel-2.x       `socirun pull --pull-mode parallel` on 2.x
    parallel-stream-2.x `socirun pull --pull-mode parallel-stream` on 2.x
    stream-discard-2.x `socirun pull --pull-mode parallel-stream --discard-unpacked-layers` on 2.x

On 2.x, whose overlayfs can rebase, socirun unpacks up to [pull] max_concurrent_unpacks layers at once (its
default: one per CPU, up to 4), each prepared without its parent and committed in order, as containerd 2.x does.

The sample (default: a busybox base plus data layers of 150, 900, 300, 50, 400, 200 and 100 MB uncompressed,
about 1.1 GB compressed over 8 layers, the largest 43% of the image) is pushed once, to the 1.6 sandbox's
registry. One throttling proxy in front of it caps every TCP connection at --rate (default 25 MB/s, like one
stream from S3 or a CDN) and nothing in total; both containerds pull through it, so the cap is the same for all.
Each run starts from empty stores (images removed, leases removed, GC done, content and snapshots checked empty
in both sandboxes); the pullers alternate (the order rotates every round) for --rounds rounds.

The machine's limit for the pull, on each containerd, is the larger of
- fetch: the time to fetch every blob through the same proxy with unlimited connections (64 ranged requests
  of 8 MiB at once, bytes discarded): the most this machine, loopback and proxy included, can move; and
- apply: the time that containerd needs to unpack the layers alone, blobs already local (`ctr images pull` with
  all content present and no snapshots);
a pull that overlaps them perfectly takes max(fetch, apply).

Then, without the proxy, the ctrs and socirun's parallel modes alternate again (unthrottled). With --schedules,
parallel runs on 1.6 also compare the chunk schedules (in-order, largest-first, interleave).

Peak RSS is the socirun process's own high-water mark, VmHWM of /proc/PID/status read every 20 ms until it exits
(not wait4's ru_maxrss: Linux carries the high-water mark of the mm a child had before exec -- this benchmark's own,
shared by the vfork of subprocess -- into ru_maxrss, so that figure is never below the benchmark's own size).
For the fastest run of each puller it prints the CPU seconds each process used (the puller, containerd, the
registry, the proxy): on a small host their sum over the cores, not the network, is what bounds the pull.

The last three lines are exactly `parallel/ctr-1.6 R`, `parallel/ctr-2.x-parallel R`, `parallel/limit R`:
socirun's parallel pull as `socirun pull` runs it with no flags (median) over the same containerd's ctr, and on
1.6 over 1.6's limit. `auto` picks the transfer: on these hosts parallel-stream on 1.6 (the ranged parallel
download with each layer unpacked by socirun as its bytes arrive, blobs kept) and plain parallel on 2.x (whose
overlayfs can rebase, so containerd unpacks several layers at once itself); the benchmark asks `socirun plan --json`
on each containerd which one it picks, says so, and takes that puller's runs. The lines above them give the same
ratios for plain `--pull-mode parallel` (`plain-parallel/...`: containerd's Diff.Apply from each stored blob),
parallel-stream and stream-discard (both containerds) and for 2.x's limit.

    python bench/parallel_vs_ctr.py [--rounds 3] [--rate 25MB] [--layers 150,900,300,50,400,200,100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import store

from socirun.sandbox.components import containerd2_dir, ctr_beside, version_of
from socirun.sandbox.sample import build_sample, default_cache_dir, push_sample
from socirun.sandbox.sandbox import Sandbox, SandboxInfo

NAMESPACE = "socirun-bench-parallel"
SEED = 11
MB = 1_000_000
MIB = 1 << 20
REPO = "bench/parallel"
CTRS = ("ctr-1.6", "ctr-2.x-parallel")
SOCIRUN_MODES = {"standard": "1.6", "parallel": "1.6", "parallel-stream": "1.6", "stream-discard": "1.6",
                 "parallel-2.x": "2.x", "parallel-stream-2.x": "2.x", "stream-discard-2.x": "2.x"}
# socirun's flags per puller, after `pull --progress quiet`.
SOCIRUN_FLAGS = {
    "standard": ["--pull-mode", "standard"],
    "parallel": ["--pull-mode", "parallel"],
    "parallel-stream": ["--pull-mode", "parallel-stream"],
    "stream-discard": ["--pull-mode", "parallel-stream", "--discard-unpacked-layers"],
    "parallel-2.x": ["--pull-mode", "parallel"],
    "parallel-stream-2.x": ["--pull-mode", "parallel-stream"],
    "stream-discard-2.x": ["--pull-mode", "parallel-stream", "--discard-unpacked-layers"],
}
PULLERS = (*CTRS, *SOCIRUN_MODES)
UNTHROTTLED = (*CTRS, "parallel", "parallel-stream", "stream-discard", "parallel-2.x", "parallel-stream-2.x",
               "stream-discard-2.x")


@dataclass
class Run:
    seconds: float
    peak_rss: int  # bytes; 0 for ctr
    cpu: float = 0.0  # CPU seconds of the puller itself (socirun or ctr)
    others_cpu: dict[str, float] = field(default_factory=dict)  # containerd, registry, proxy during the run


@dataclass
class Target:
    """One sandbox's containerd, and the ctr built with it."""

    label: str  # "1.6" or "2.x"
    info: SandboxInfo
    ctr: str
    watch: store.CpuWatch | None = None

    @property
    def address(self) -> str:
        return self.info.containerd_address


def transfer_config(downloads: int, buffer: int, unpacks: int) -> str:
    """containerd 2.x's transfer service (what `ctr images pull` uses there) with its parallel layer fetch on:
    `buffer` > 512 bytes turns on ranged chunks of that size, `downloads` bounds the requests of a pull."""
    return "\n".join([
        "[plugins.'io.containerd.transfer.v1.local']",
        f"  max_concurrent_downloads = {downloads}",
        f"  concurrent_layer_fetch_buffer = {buffer}",
        f"  max_concurrent_unpacks = {unpacks}",
    ])


def empty_store(target: Target, refs: list[str], *, keep_content: bool = False) -> None:
    """Remove the images (or, with keep_content, only the snapshots) and wait until GC has done its work."""
    if keep_content:
        # Remove the top snapshots; GC then collects the parents nothing references any more. Repeat until none.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            listing = store.ctr(target.address, NAMESPACE, "snapshots", "ls", binary=target.ctr).stdout
            rows = [line.split() for line in listing.splitlines()[1:] if line.strip()]
            if not rows:
                return
            parents = {row[1] for row in rows if len(row) > 2}
            for row in rows:
                if row[0] not in parents:
                    subprocess.run([target.ctr, "-a", target.address, "-n", NAMESPACE, "snapshots", "rm", row[0]],
                                   capture_output=True, check=False)
            time.sleep(0.2)
        raise SystemExit("the snapshots did not go within 120 s")
    store.empty_store(target.address, NAMESPACE, refs, binary=target.ctr)


class HighWater:
    """The VmHWM (peak resident set of its current mm, after exec) of a running process, read every 20 ms by a
    thread until `stop`; the last read is the peak up to at most 20 ms before the process ended."""

    def __init__(self, pid: int) -> None:
        self.peak = 0
        self._path = f"/proc/{pid}/status"
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._done.is_set():
            try:
                with open(self._path, encoding="ascii") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            self.peak = max(self.peak, int(line.split()[1]) * 1024)
            except (OSError, ValueError):
                pass  # not started yet, or a zombie (no mm): keep the last value
            self._done.wait(0.02)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def timed(cmd: list[str], env: dict[str, str], watch: store.CpuWatch | None = None) -> Run:
    """Run cmd; its wall time, its own peak RSS and CPU (from wait4, so no polling can miss a peak), and the
    CPU the helper processes used meanwhile."""
    before = watch.snapshot() if watch else {}
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    hwm = HighWater(proc.pid)
    _pid, status, usage = os.wait4(proc.pid, 0)
    hwm.stop()
    elapsed = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"`{' '.join(cmd)}` failed ({proc.returncode}): {stderr.strip()[-2000:]}")
    after = watch.snapshot() if watch else {}
    return Run(elapsed, hwm.peak, usage.ru_utime + usage.ru_stime,
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


def machine(targets: dict[str, Target]) -> str:
    versions = ", ".join(f"containerd {t.label}: {t.info.containerd_version or version_of(t.info.containerd_binary)}"
                         for t in targets.values())
    return f"{store.machine()}, {versions}, runc {version_of('runc').split()[0]}"


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
    parser.add_argument("--ctr2-downloads", type=int, default=32,
                        help="containerd 2.x transfer service max_concurrent_downloads (default 32)")
    parser.add_argument("--ctr2-buffer", type=int, default=16 * MIB,
                        help="containerd 2.x transfer service concurrent_layer_fetch_buffer, bytes (default 16 MiB)")
    parser.add_argument("--ctr2-unpacks", type=int, default=4,
                        help="containerd 2.x transfer service max_concurrent_unpacks (default 4)")
    parser.add_argument("--schedules", action="store_true", help="also compare the chunk schedules")
    parser.add_argument("--dir", default="/tmp/socirun-bench-parallel",
                        help="the 1.6 sandbox's directory; the 2.x sandbox's is the same with -2x appended")
    parser.add_argument("--keep", action="store_true", help="leave the sandboxes running afterwards")
    args = parser.parse_args()
    boxes = {"1.6": Sandbox(Path(args.dir)), "2.x": Sandbox(Path(args.dir + "-2x"))}
    try:
        bench(boxes, args)
    finally:
        if not args.keep:
            for box in boxes.values():
                box.down()


def bench(boxes: dict[str, Sandbox], args: argparse.Namespace) -> None:
    print(f"load average before: {loadavg()}")
    info16 = boxes["1.6"].up()
    ctr2_settings = transfer_config(args.ctr2_downloads, args.ctr2_buffer, args.ctr2_unpacks)
    info2 = boxes["2.x"].up(containerd=str(containerd2_dir() / "containerd"), extra_config=ctr2_settings)
    targets = {"1.6": Target("1.6", info16, ctr_beside(info16.containerd_binary)),
               "2.x": Target("2.x", info2, ctr_beside(info2.containerd_binary))}
    print(f"machine: {machine(targets)}")
    print("containerd 2.x: " + "; ".join(line.strip() for line in ctr2_settings.splitlines()))
    sizes = [float(s) for s in args.layers.split(",")]
    sample = build_sample(default_cache_dir(), sizes, seed=SEED)
    # Pushed once, to the 1.6 sandbox's registry; the 2.x sandbox pulls from it too, through the same proxy.
    ref = push_sample(info16.registry_host, REPO, "v1", sizes, seed=SEED)
    layer_sizes = [layer.size for layer in sample.layers]
    total = sum(layer_sizes)
    print(f"image: {len(layer_sizes)} layers, {total / MB:.0f} MB compressed "
          f"({sum(sizes) + 0:.0f} MB of data uncompressed), largest {max(layer_sizes) / MB:.0f} MB "
          f"= {100 * max(layer_sizes) / total:.0f}%; layers (MB): {', '.join(f'{s / MB:.1f}' for s in layer_sizes)}")
    proxy = store.Proxy(info16.registry_host, args.rate, None)
    for target in targets.values():
        target.watch = store.CpuWatch({"containerd": target.info.containerd_pid,
                                       "registry": info16.registry_pid, "proxy": proxy.proc.pid})
    cfg_dir = Path(tempfile.mkdtemp(prefix="socirun-bench-cfg-"))
    try:
        throttled = ref.replace(info16.registry_host, proxy.host, 1)
        refs = [ref, throttled]

        def env_for(target: Target) -> dict[str, str]:
            return dict(os.environ, CONTAINERD_ADDRESS=target.address, CONTAINERD_NAMESPACE=NAMESPACE,
                        XDG_CONFIG_HOME=str(cfg_dir))

        def command(name: str, image: str) -> tuple[Target, list[str]]:
            if name in CTRS:
                target = targets["1.6" if name == "ctr-1.6" else "2.x"]
                return target, [target.ctr, "-a", target.address, "-n", NAMESPACE, "images", "pull", "--plain-http",
                                image]
            return targets[SOCIRUN_MODES[name]], [sys.executable, "-m", "socirun", "pull", "--progress", "quiet",
                                                  *SOCIRUN_FLAGS[name], image]

        def cold() -> None:
            for target in targets.values():
                empty_store(target, refs)

        def run(name: str, image: str, watched: bool = True) -> Run:
            target, cmd = command(name, image)
            cold()
            return timed(cmd, env_for(target), target.watch if watched else None)

        run("parallel", ref, watched=False)  # warm the page cache for the registry's files
        # The puller whose runs stand for socirun's parallel pull in the last lines: what auto picks on each one.
        picked: dict[str, str] = {}
        cold()  # a plan for an image already in the store downloads nothing and names no transfer
        for label, target in targets.items():
            planned = subprocess.run([sys.executable, "-m", "socirun", "plan", "--json", throttled],
                                     env=env_for(target), capture_output=True, text=True, check=True)
            transfer = json.loads(planned.stdout)["transfer"]  # the plan's own "mode" says only "parallel"
            mode = transfer["strategy"] if transfer else "none"
            name = mode if label == "1.6" else f"{mode}-2.x"
            if name not in SOCIRUN_MODES:
                raise SystemExit(f"auto picks {mode} on containerd {label}, which this benchmark does not run")
            picked[label] = name
            print(f"socirun pull (auto) picks {mode} on containerd {label}: `{name}` stands for its parallel pull")
        print(f"per-connection cap {args.rate}/s, no total cap; {args.rounds} rounds, alternating")
        runs: dict[str, list[Run]] = {name: [] for name in PULLERS}
        for round_no in range(args.rounds):
            shift = round_no % len(PULLERS)
            for name in PULLERS[shift:] + PULLERS[:shift]:
                result = run(name, throttled)
                runs[name].append(result)
                rss = f", peak RSS {result.peak_rss / MB:.0f} MB" if name not in CTRS else ""
                print(f"  round {round_no + 1}: {name:18s} {result.seconds:7.2f} s{rss}", flush=True)

        # The machine's limit: fetch with unlimited connections through the same proxy, and apply alone.
        cold()
        digests = list(zip([d.digest for d in sample.layers], layer_sizes, strict=True))
        fetch = [asyncio.run(fetch_all(proxy.host, REPO, digests, 64, 8 << 20)) for _ in range(2)]
        fetch_s = min(fetch)
        limits: dict[str, float] = {}
        apply_runs: dict[str, Run] = {}
        for label, ctr_name in (("1.6", "ctr-1.6"), ("2.x", "ctr-2.x-parallel")):
            target, cmd = command(ctr_name, ref)
            timed(cmd, env_for(target))  # content and snapshots in place
            tries = []
            for _ in range(2):
                empty_store(target, refs, keep_content=True)
                tries.append(timed(cmd, env_for(target), target.watch))
            apply_runs[label] = min(tries, key=lambda r: r.seconds)
            limits[label] = max(fetch_s, apply_runs[label].seconds)
            print(f"  limit on {label}: fetch at the cap with unlimited connections {fetch_s:.2f} s "
                  f"({total / MB / fetch_s:.0f} MB/s), containerd {label} apply alone "
                  f"{apply_runs[label].seconds:.2f} s -> {limits[label]:.2f} s")
            empty_store(target, refs)

        if args.schedules:
            sched_runs: dict[str, list[float]] = {}
            for round_no in range(args.rounds):
                for schedule in ("in-order", "largest-first", "interleave"):
                    (cfg_dir / "socirun").mkdir(exist_ok=True)
                    (cfg_dir / "socirun" / "config.toml").write_text(f'[pull]\nschedule = "{schedule}"\n')
                    seconds = run("parallel", throttled, watched=False).seconds
                    sched_runs.setdefault(schedule, []).append(seconds)
                    print(f"  round {round_no + 1}: parallel {schedule:13s} {seconds:7.2f} s", flush=True)
            (cfg_dir / "socirun" / "config.toml").unlink()
            print("  schedules (median): " + ", ".join(
                f"{name} {statistics.median(v):.2f} s" for name, v in sched_runs.items()))

        unthrottled: dict[str, list[Run]] = {name: [] for name in UNTHROTTLED}
        for round_no in range(args.unthrottled_rounds):
            shift = round_no % len(UNTHROTTLED)
            for name in UNTHROTTLED[shift:] + UNTHROTTLED[:shift]:
                result = run(name, ref, watched=False)
                unthrottled[name].append(result)
                print(f"  unthrottled round {round_no + 1}: {name:18s} {result.seconds:7.2f} s", flush=True)
        cold()
    finally:
        proxy.stop()
        shutil.rmtree(cfg_dir, ignore_errors=True)

    print(f"load average after: {loadavg()}")
    print(f"median, {args.rate}/s per connection: " + ", ".join(f"{name} {med(runs[name]):.2f} s" for name in PULLERS)
          + f"; limit 1.6 {limits['1.6']:.2f} s, limit 2.x {limits['2.x']:.2f} s")
    print("peak RSS of socirun: " + ", ".join(
        f"{name} {max(r.peak_rss for r in runs[name]) / MB:.0f} MB" for name in SOCIRUN_MODES))
    # What the machine must do in each pull, in CPU seconds, against what it has: the cores bound any pull.
    cores = os.cpu_count() or 1
    print(f"CPU seconds in each puller's fastest run ({cores} cores):")
    for name in PULLERS:
        fastest = min(runs[name], key=lambda r: r.seconds)
        parts = {("ctr" if name in CTRS else "socirun"): fastest.cpu, **fastest.others_cpu}
        used = sum(parts.values())
        print(f"  {name:18s} {fastest.seconds:7.2f} s: " + ", ".join(f"{k} {v:.1f}" for k, v in parts.items())
              + f"; {used:.1f} in all = {used / cores:.2f} s of all cores")
    print("containerd applying alone used " + ", ".join(
        f"{label} {apply_runs[label].others_cpu.get('containerd', 0.0):.1f}" for label in apply_runs))
    if args.unthrottled_rounds > 0:
        print("median unthrottled: " + ", ".join(f"{name} {med(unthrottled[name]):.2f} s" for name in UNTHROTTLED))
        for name in UNTHROTTLED[len(CTRS):]:
            for ctr_name in CTRS:
                print(f"unthrottled {name}/{ctr_name} {med(unthrottled[name]) / med(unthrottled[ctr_name]):.3f}")
    print(f"parallel/standard {med(runs['parallel']) / med(runs['standard']):.3f}")
    for name in ("parallel-stream", "stream-discard"):
        print(f"{name}/ctr-1.6 {med(runs[name]) / med(runs['ctr-1.6']):.3f}")
        print(f"{name}/limit {med(runs[name]) / limits['1.6']:.3f}")
    print(f"parallel-2.x/limit-2.x {med(runs['parallel-2.x']) / limits['2.x']:.3f}")
    print(f"parallel-stream-2.x/ctr-2.x-parallel "
          f"{med(runs['parallel-stream-2.x']) / med(runs['ctr-2.x-parallel']):.3f}")
    print(f"stream-discard-2.x/ctr-2.x-parallel {med(runs['stream-discard-2.x']) / med(runs['ctr-2.x-parallel']):.3f}")
    print(f"stream-discard-2.x/limit-2.x {med(runs['stream-discard-2.x']) / limits['2.x']:.3f}")
    print(f"plain-parallel/ctr-1.6 {med(runs['parallel']) / med(runs['ctr-1.6']):.3f}")
    print(f"plain-parallel/ctr-2.x-parallel {med(runs['parallel-2.x']) / med(runs['ctr-2.x-parallel']):.3f}")
    print(f"plain-parallel/limit {med(runs['parallel']) / limits['1.6']:.3f}")
    # socirun's parallel pull as auto picks it (above): the three lines.
    print(f"parallel/ctr-1.6 {med(runs[picked['1.6']]) / med(runs['ctr-1.6']):.3f}")
    print(f"parallel/ctr-2.x-parallel {med(runs[picked['2.x']]) / med(runs['ctr-2.x-parallel']):.3f}")
    print(f"parallel/limit {med(runs[picked['1.6']]) / limits['1.6']:.3f}")


if __name__ == "__main__":
    main()
