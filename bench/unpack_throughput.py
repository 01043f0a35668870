"""Benchmark: unpacking one large layer with containerd's Diff.Apply vs socirun's streaming applier.

Both unpack the same gzip layer (the sandbox's sample data layer, ~300 MB by default) from a parentless overlayfs
snapshot on the sandbox's containerd; the blob is in containerd's content store for Diff.Apply and read from the
sample cache in 1 MiB chunks for the streaming applier (as a download would feed it). Prints, per round and as
medians, MB/s (uncompressed) and the CPU seconds of this process (socirun) and of containerd.

    python bench/unpack_throughput.py [--mb 300] [--rounds 3] [--dir /tmp/socirun-unpack-bench]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import store

from socirun.containerd.client import ContainerdClient
from socirun.sandbox.sample import SampleLayer, build_sample, default_cache_dir
from socirun.sandbox.sandbox import Sandbox
from socirun.unpack.snapshot import apply_and_commit

NAMESPACE = "socirun-unpack-bench"
SNAPSHOTTER = "overlayfs"
CHUNK = 1 << 20


async def file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as blob:
        while chunk := blob.read(CHUNK):
            yield chunk


def cpu(proc: psutil.Process) -> float:
    return float(sum(proc.cpu_times()[:2]))


async def one_round(ctd: ContainerdClient, layer: SampleLayer, containerd: psutil.Process,
                    streaming: bool) -> tuple[float, float, float]:
    """(seconds, socirun CPU s, containerd CPU s) of one unpack."""
    me = psutil.Process()
    run = uuid.uuid4().hex[:8]
    key, name = f"extract-{run}", f"bench-{run}"
    mounts = await ctd.snapshot_prepare(SNAPSHOTTER, key, "", {})
    before = (time.monotonic(), cpu(me), cpu(containerd))
    if streaming:
        await apply_and_commit(ctd, SNAPSHOTTER, key=key, name=name, labels={}, mounts=mounts,
                               layer=layer.descriptor(), diff_id=layer.diff_id, chunks=file_chunks(layer.path))
    else:
        applied = await ctd.diff_apply(layer.descriptor(), mounts)
        assert applied.digest == layer.diff_id, applied
        await ctd.snapshot_commit(SNAPSHOTTER, name, key, {})
    after = (time.monotonic(), cpu(me), cpu(containerd))
    await ctd.snapshot_remove(SNAPSHOTTER, name)
    return after[0] - before[0], after[1] - before[1], after[2] - before[2]


async def bench(address: str, containerd_pid: int, layer: SampleLayer, rounds: int) -> None:
    containerd = psutil.Process(containerd_pid)
    async with await ContainerdClient.connect(address, NAMESPACE) as ctd, ctd.lease():
        await ctd.write_content(f"layer-{layer.digest}", layer.digest, layer.size, file_chunks(layer.path))
        results: dict[str, list[tuple[float, float, float]]] = {"Diff.Apply": [], "streaming": []}
        for i in range(rounds):
            order = ["Diff.Apply", "streaming"] if i % 2 == 0 else ["streaming", "Diff.Apply"]
            for which in order:
                took = await one_round(ctd, layer, containerd, which == "streaming")
                results[which].append(took)
                print(f"round {i + 1} {which:10} {took[0]:6.2f} s  {layer.uncompressed_size / took[0] / 1e6:7.1f} MB/s"
                      f"  socirun CPU {took[1]:6.2f} s  containerd CPU {took[2]:6.2f} s", flush=True)
        await ctd.delete_content(layer.digest)
    mb = layer.uncompressed_size / 1e6
    print(f"layer {layer.digest}: {layer.size / 1e6:.1f} MB gzip, {mb:.1f} MB uncompressed; medians of {rounds}:")
    for which, runs in results.items():
        secs, mine, theirs = (statistics.median(r[k] for r in runs) for k in range(3))
        print(f"{which:10} {mb / secs:7.1f} MB/s  socirun CPU {mine:6.2f} s  containerd CPU {theirs:6.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=300.0, help="the data layer's uncompressed MiB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default="/tmp/socirun-unpack-bench")
    args = parser.parse_args()
    print(store.machine())
    sample = build_sample(default_cache_dir(), (args.mb,))
    layer = max(sample.layers, key=lambda candidate: candidate.size)
    box = Sandbox(Path(args.dir))
    try:
        info = box.up()
        asyncio.run(bench(info.containerd_address, info.containerd_pid, layer, args.rounds))
    finally:
        box.down()


if __name__ == "__main__":
    main()
