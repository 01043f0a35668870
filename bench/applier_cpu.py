"""Profile: the CPU cost of socirun's streaming layer applier, stage by stage, without containerd.

The sample's gzip layers (socirun.sandbox.sample, default one 300 MiB data layer plus the busybox base: ~150 MB
compressed) are read into memory and cut into the chunks a parallel pull feeds (--chunk, default 8 MiB). Each
stage then runs alone over the same bytes, timed in this process's CPU seconds (user + system):

    sha256 compressed     hashlib over the compressed chunks (the blob's digest)
    inflate               socirun's Decompressor (what LayerApplier uses), chunks in, pieces out
    inflate (zlib)        the standard library's zlib over the same chunks, for comparison
    sha256 uncompressed   hashlib over the decompressed pieces (the diffID)
    tar parsing           TarStream over the decompressed pieces into a sink that does nothing
    file writes           TarStream into LayerWriter (a fresh plain directory), less the tar parsing above

and the whole LayerApplier once more end to end (into another fresh directory), whose total the stages should
roughly add up to. Figures are CPU seconds per GB (1e9 bytes) of compressed input; the machine's load at the time
(other processes) shows in the load average printed first. The inflate stage keeps the whole decompressed layer in
memory for the stages after it, so its system time is mostly page faults that the applier itself does not have.
--profile prints the top of a cProfile of the end-to-end run instead of timing the stages.

--dir /dev/shm (tmpfs) measures socirun's own work; a disk directory adds the filesystem's. On an ext4 without a
journal (this project's VM) creating a file right after many files were deleted costs ~0.3-1 ms of kernel time
(ext4's recently_deleted scan in find_inode_bit skips inodes freed in the last 60 s, 360 s while their inode-table
block is dirty), so disk figures grow run after run; they charge any unpacker, containerd's too.

    python bench/applier_cpu.py [--mb 300] [--seed 0] [--chunk 8] [--rounds 1] [--dir /var/tmp] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import os
import pstats
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable
from functools import partial
from pathlib import Path

from socirun.sandbox.sample import SampleLayer, build_sample, default_cache_dir
from socirun.unpack.apply import LayerApplier
from socirun.unpack.decompress import Decompressor
from socirun.unpack.fs import LayerWriter
from socirun.unpack.target import ApplyTarget
from socirun.unpack.tarstream import TarStream

MIB = 1 << 20


class NullSink:
    """A tar sink that does nothing: what the parser costs on its own."""

    def begin(self, info: tarfile.TarInfo) -> None:
        pass

    def data(self, piece: memoryview) -> None:
        pass

    def end(self) -> None:
        pass


def cpu() -> tuple[float, float]:
    """(user, system) CPU seconds of this process so far."""
    times = os.times()
    return times.user, times.system


def timed(work: Callable[[], object]) -> tuple[float, float]:
    """(user, system) CPU seconds that `work` took."""
    user, system = cpu()
    work()
    after = cpu()
    return after[0] - user, after[1] - system


def chunked(blob: bytes, size: int) -> list[bytes]:
    return [blob[start:start + size] for start in range(0, len(blob), size)]


def inflate(layer: SampleLayer, chunks: list[bytes], pieces: list[bytes]) -> None:
    decompressor = Decompressor(layer.media_type)
    for chunk in chunks:
        pieces.extend(decompressor.feed(chunk))
    pieces.extend(decompressor.finish())


def inflate_zlib(chunks: list[bytes]) -> int:
    """Plain single-member zlib, as socirun's Decompressor used before it took isal (the sample is one member)."""
    inflater = zlib.decompressobj(wbits=31)
    total = 0
    for chunk in chunks:
        total += len(inflater.decompress(chunk, 4 * MIB))
        while inflater.unconsumed_tail:
            total += len(inflater.decompress(inflater.unconsumed_tail, 4 * MIB))
    return total + len(inflater.flush())


def sha256_all(pieces: list[bytes]) -> str:
    digest = hashlib.sha256()
    for piece in pieces:
        digest.update(piece)
    return digest.hexdigest()


def parse(pieces: list[bytes], sink: NullSink | LayerWriter) -> None:
    stream = TarStream(sink)
    for piece in pieces:
        stream.feed(piece)
    stream.finish()
    if isinstance(sink, LayerWriter):
        sink.finish()
        sink.close()


def apply(layer: SampleLayer, chunks: list[bytes], root: Path) -> None:
    applier = LayerApplier(ApplyTarget(root, overlay=False), layer.descriptor())
    for chunk in chunks:
        applier.feed(chunk)
    applied = applier.finish(layer.diff_id)
    assert applied.diff_id == layer.diff_id, applied


def stages(layers: list[SampleLayer], chunk: int, base: Path) -> dict[str, tuple[float, float]]:
    took: dict[str, tuple[float, float]] = {}

    def add(name: str, seconds: tuple[float, float]) -> None:
        user, system = took.get(name, (0.0, 0.0))
        took[name] = (user + seconds[0], system + seconds[1])

    for layer in layers:
        chunks = chunked(layer.path.read_bytes(), chunk)
        add("sha256 compressed", timed(partial(sha256_all, chunks)))
        pieces: list[bytes] = []
        add("inflate", timed(partial(inflate, layer, chunks, pieces)))
        add("inflate (zlib, reference)", timed(partial(inflate_zlib, chunks)))
        add("sha256 uncompressed", timed(partial(sha256_all, pieces)))
        parsing = timed(partial(parse, pieces, NullSink()))
        add("tar parsing", parsing)
        with tempfile.TemporaryDirectory(prefix="applier-cpu-", dir=base) as root:
            writes = timed(partial(parse, pieces, LayerWriter(ApplyTarget(Path(root), False))))
            add("file writes", (writes[0] - parsing[0], writes[1] - parsing[1]))
        del pieces
        with tempfile.TemporaryDirectory(prefix="applier-cpu-", dir=base) as root:
            add("LayerApplier end to end", timed(partial(apply, layer, chunks, Path(root))))
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, nargs="+", default=[300.0], help="the data layers' uncompressed MiB")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk", type=float, default=8.0, help="MiB per feed (a parallel pull's ranged chunk)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--dir", default="/var/tmp", help="where the temporary layer directories go")
    parser.add_argument("--profile", action="store_true", help="cProfile the end-to-end run instead")
    args = parser.parse_args()
    sample = build_sample(default_cache_dir(), args.mb, seed=args.seed)
    layers = list(sample.layers)
    compressed = sum(layer.size for layer in layers)
    uncompressed = sum(layer.uncompressed_size for layer in layers)
    chunk = int(args.chunk * MIB)
    base = Path(args.dir)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; {len(layers)} layers, "
          f"{compressed / 1e6:.1f} MB compressed, {uncompressed / 1e6:.1f} MB uncompressed, "
          f"fed in {args.chunk:g} MiB chunks", flush=True)
    if args.profile:
        profile = cProfile.Profile()
        for layer in layers:
            chunks = chunked(layer.path.read_bytes(), chunk)
            with tempfile.TemporaryDirectory(prefix="applier-cpu-", dir=base) as root:
                profile.runcall(apply, layer, chunks, Path(root))
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        return
    for round_ in range(args.rounds):
        start = time.monotonic()
        took = stages(layers, chunk, base)
        gb = compressed / 1e9
        print(f"round {round_ + 1} ({time.monotonic() - start:.1f} s wall): CPU s per GB compressed "
              "(user + system = total; then the total CPU s)")
        for name, (user, system) in took.items():
            print(f"  {name:28} {user / gb:6.2f} + {system / gb:6.2f} = {(user + system) / gb:6.2f}"
                  f"   ({user + system:.2f} s)")
        parts = sum(sum(v) for k, v in took.items() if not k.startswith(("inflate (zlib", "LayerApplier")))
        print(f"  {'sum of the stages':28} {'':17}{parts / gb:6.2f}   ({parts:.2f} s)", flush=True)


if __name__ == "__main__":
    main()
