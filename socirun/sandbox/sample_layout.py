"""What files a sample image's data layers hold: LAYOUT says it in words, `sample_files` / `layer_files` list
them (path, size) from the sample's arguments alone, and `file_text` gives a small file's bytes. Pure and
light (no I/O, hashlib only), so the command line can print the layout in its --help.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from socirun.errors import SandboxError

MIB = 1 << 20

# Every data layer holds BIG_NAME of min(BIG_FILE_SIZE, half the layer): a known file of about 20 MB that a
# test or a person can read from any layer of at least 40 MiB.
BIG_FILE_SIZE = 20 * MIB
BIG_NAME = "big.bin"
# Of what is left: SMALL_SHARE (at most SMALL_CAP) in small text files, MEDIUM_SHARE (at most MEDIUM_CAP) in
# medium binaries, the rest in large binaries. The caps keep the file count of a huge layer in the thousands
# (a Python environment's site-packages), so building stays fast and its bytes sit in the large files.
SMALL_SHARE = 25
SMALL_CAP = 32 * MIB
MEDIUM_SHARE = 25
MEDIUM_CAP = 192 * MIB
# Size ranges (bytes). A uniform draw u in [0, 1) gives lo + (hi - lo) * u**power: a skew towards the small
# end, as real file sizes have (small files: median ~3 KB, mean ~6 KB).
SMALL_RANGE = (200, 24 * 1024, 3)
MEDIUM_RANGE = (64 * 1024, 2 * MIB, 3)
LARGE_RANGE = (4 * MIB, 48 * MIB, 2)
MODULES_PER_PACKAGE = 40
# Small files are text: a slice of one deterministic corpus of Python-like lines (gzip: ~5:1), behind a
# header line naming the file, so no two files are alike.
_CORPUS_SIZE = 512 * 1024

_LAYOUT_ROWS = (
    (f"/data/layer-N/{BIG_NAME}", f"min({BIG_FILE_SIZE // MIB} MiB, half the layer), binary"),
    ("/data/layer-N/lib/libsample-KKK.so", f"large binaries, {LARGE_RANGE[0] // MIB}-{LARGE_RANGE[1] // MIB} MiB each"),
    ("/data/layer-N/site-packages/pkgPPP/_nativeKK.so",
     f"medium binaries, {MEDIUM_RANGE[0] // 1024} KiB-{MEDIUM_RANGE[1] // MIB} MiB each"),
    ("/data/layer-N/site-packages/pkgPPP/modMMM.py",
     f"small Python-like text, {SMALL_RANGE[0]} B-{SMALL_RANGE[1] // 1024} KiB each"),
)
LAYOUT = "\n".join([
    "Files of a sample (data layer N is the Nth size of --layers, from 1; layer 0 is the busybox base):",
    *(f"  {path:<50}{what}" for path, what in _LAYOUT_ROWS),
    f"Of what {BIG_NAME} leaves, {SMALL_SHARE}% (at most {SMALL_CAP // MIB} MiB) are small files "
    f"({MODULES_PER_PACKAGE} per package),",
    f"{MEDIUM_SHARE}% (at most {MEDIUM_CAP // MIB} MiB) medium ones, the rest large ones. A layer's size in MB is "
    "the sum of its",
    "files' sizes; binaries compress about 2:1, text about 5:1. The same arguments always give the same files",
    "and digests (--seed changes them); --list-files prints every file with its size.",
    "",
])


@dataclass(frozen=True)
class SampleFile:
    path: str  # absolute path in the image, e.g. "/data/layer-2/big.bin"
    size: int
    layer: int  # the image layer that holds it (data layers count from 1; 0 is the busybox base)
    kind: str  # "big", "large", "medium" or "small"


class _Draws:
    """Deterministic uniform integers from a key (SHAKE-128 as a stream), so file sizes never depend on the
    Python version or the platform."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._batch = 0
        self._buf = b""
        self._pos = 0

    def u32(self) -> int:
        if self._pos + 4 > len(self._buf):
            self._buf = hashlib.shake_128(self._key + self._batch.to_bytes(8, "little")).digest(4096)
            self._batch += 1
            self._pos = 0
        value = int.from_bytes(self._buf[self._pos:self._pos + 4], "little")
        self._pos += 4
        return value

    def size(self, lo: int, hi: int, power: int) -> int:
        # Integer arithmetic only, so the sizes are the same on every platform.
        skewed = int(self.u32() ** power)
        return lo + ((hi - lo) * skewed >> (32 * power))


def _fill_budget(draws: _Draws, budget: int, size_range: tuple[int, int, int]) -> list[int]:
    """File sizes drawn from `size_range` that add up to `budget` exactly (the last one takes what is left)."""
    sizes: list[int] = []
    while budget > 0:
        size = min(budget, draws.size(*size_range))
        sizes.append(size)
        budget -= size
    return sizes


def layer_files(index: int, size: int, seed: int = 0) -> tuple[SampleFile, ...]:
    """The files of data layer `index` (from 1) holding `size` bytes of file content, in the layer's order."""
    root = f"/data/layer-{index}"
    draws = _Draws(f"socirun-sample-files/{seed}/{index}/{size}".encode())
    big = min(BIG_FILE_SIZE, size // 2)
    rest = size - big
    small_budget = min(rest * SMALL_SHARE // 100, SMALL_CAP)
    medium_budget = min(rest * MEDIUM_SHARE // 100, MEDIUM_CAP)
    large_budget = rest - small_budget - medium_budget
    small = _fill_budget(draws, small_budget, SMALL_RANGE)
    medium = _fill_budget(draws, medium_budget, MEDIUM_RANGE)
    large = _fill_budget(draws, large_budget, LARGE_RANGE)
    files = [SampleFile(f"{root}/{BIG_NAME}", big, index, "big")]
    files += [SampleFile(f"{root}/lib/libsample-{k:03d}.so", n, index, "large") for k, n in enumerate(large)]
    packages = max(1, -(-len(small) // MODULES_PER_PACKAGE))
    for p in range(packages):
        package = f"{root}/site-packages/pkg{p:03d}"
        modules = small[p * MODULES_PER_PACKAGE:(p + 1) * MODULES_PER_PACKAGE]
        files += [SampleFile(f"{package}/mod{m:03d}.py", n, index, "small") for m, n in enumerate(modules)]
        # Medium file k goes to package k % packages, so every package holds a few.
        files += [SampleFile(f"{package}/_native{k // packages:02d}.so", medium[k], index, "medium")
                  for k in range(p, len(medium), packages)]
    return tuple(files)


def sample_files(layer_sizes_mb: Sequence[float], seed: int = 0) -> tuple[SampleFile, ...]:
    """Every data file of the sample that `build_sample(_, layer_sizes_mb, seed=seed)` builds (pure)."""
    files: list[SampleFile] = []
    for index, size in enumerate(layer_sizes_bytes(layer_sizes_mb), start=1):
        files += layer_files(index, size, seed)
    return tuple(files)


def layer_sizes_bytes(layer_sizes_mb: Sequence[float]) -> list[int]:
    sizes = [round(mb * MIB) for mb in layer_sizes_mb]
    if any(size < 0 for size in sizes):
        raise SandboxError("sample layer sizes must not be negative.")
    return sizes


_VERBS = ("get", "set", "load", "read", "write", "make", "build", "parse", "check", "find", "update", "apply",
          "resolve", "fetch", "open", "close")
_NOUNS = ("value", "config", "layer", "items", "index", "data", "path", "options", "result", "name", "size",
          "state", "cache", "module", "handle", "buffer")
_WORDS = ("def", "return", "self", "import", "from", "class", "if", "else:", "elif", "for", "in", "not", "and",
          "or", "None", "True", "False", "=", "==", "(", ")", ":", "[]", "{}", "+=", "-", "*", ",", "with", "as",
          "try:", "except", "raise", "lambda", "yield", "pass", "#", '"""', "'", ".", "0", "1", "2", "len", "str",
          "int", "dict", "list")


@functools.cache
def _corpus() -> bytes:
    """Python-like lines (indentation, then 3 to 10 tokens of a 256-word vocabulary), the same every time."""
    vocabulary = [*_WORDS, *(f"{verb}_{noun}" for verb in _VERBS for noun in _NOUNS)][:256]
    rnd = hashlib.shake_128(b"socirun-sample-corpus").digest(_CORPUS_SIZE // 2)
    lines: list[str] = []
    total = i = 0
    while total < _CORPUS_SIZE and i + 12 <= len(rnd):
        count = 3 + rnd[i + 1] % 8
        line = "    " * (rnd[i] % 3) + " ".join(vocabulary[b] for b in rnd[i + 2:i + 2 + count])
        lines.append(line)
        total += len(line) + 1
        i += 2 + count
    return ("\n".join(lines) + "\n").encode()


def file_text(file: SampleFile, seed: int) -> bytes:
    """A small file's bytes: a header line naming it, then a corpus slice at an offset of its own."""
    header = f"# socirun sample (seed {seed}): {file.path}\n".encode()[:file.size]
    corpus = _corpus()
    body = file.size - len(header)
    start = int.from_bytes(hashlib.sha256(header).digest()[:4], "little") % len(corpus)
    while len(corpus) - start < body:  # only for files bigger than what is left of the corpus
        corpus += _corpus()
    return header + corpus[start:start + body]
