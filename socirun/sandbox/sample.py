"""Build a small, valid, deterministic OCI image in Python: a busybox base layer plus data layers of chosen
sizes, each a tree of many files of mixed sizes like a Python environment (thousands of small `.py`-like text
files, some medium `.so`-like binaries, a few large ones), whose content compresses about 2:1 with gzip as a
real image does. `sample_files` lists every data file (path and size) from the arguments alone; LAYOUT says it
in words (both in socirun.sandbox.sample_layout).

Layers are written as gzip tar files, streaming, with the compressed digest and the diff_id (digest of the
uncompressed tar) computed in the same pass, so memory stays bounded whatever the layer size. Built samples
are cached under the work directory, keyed by every input, so the same arguments never build twice and
always give the same digests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from socirun.errors import SandboxError
from socirun.oci import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, Descriptor, host_platform, sha256_digest
from socirun.sandbox import soci_index
from socirun.sandbox.push import PushStats, push_image, push_layout
from socirun.sandbox.sample_layout import (
    BIG_FILE_SIZE,
    BIG_NAME,
    LAYOUT,
    MIB,
    SampleFile,
    file_text,
    layer_files,
    layer_sizes_bytes,
    sample_files,
)

# Bump when the bytes a given set of arguments produces change, so stale cache entries are not reused.
FORMAT_VERSION = 3
# gzip level 6 is what `gzip`, Go's compress/gzip and most image builders use; on this content it builds at
# ~80 MB/s per core, fast enough that the level-1 speed-up is not worth a less typical blob.
GZIP_LEVEL = 6
# Every entry's modification time, and the config's `created`: 2023-11-14T22:13:20Z.
EPOCH = 1_700_000_000
CREATED = "2023-11-14T22:13:20Z"
DEFAULT_CMD = ("sh", "-c", "echo hello from the socirun sample")
# Data layers (MiB) of the default sample; with the busybox base that makes six layers.
DEFAULT_LAYER_SIZES_MB = (1.0, 2.0, 4.0, 8.0, 16.0)
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUSYBOX = Path("/bin/busybox")
# Applets linked into /bin when the host's busybox has them.
APPLETS = (
    "[", "[[", "ash", "awk", "base64", "basename", "cat", "chgrp", "chmod", "chown", "cmp", "cp", "cut",
    "date", "dd", "df", "diff", "dirname", "du", "echo", "egrep", "env", "expr", "false", "fgrep", "find",
    "free", "grep", "groups", "gunzip", "gzip", "head", "hexdump", "hostname", "httpd", "id", "ip", "kill",
    "less", "ln", "ls", "md5sum", "mkdir", "mkfifo", "mktemp", "more", "mount", "mv", "nc", "nproc",
    "nslookup", "od", "ping", "printf", "ps", "pwd", "readlink", "realpath", "rm", "rmdir", "sed", "seq",
    "setsid", "sh", "sha256sum", "sleep", "sort", "stat", "stty", "sync", "tail", "tar", "tee", "test",
    "timeout", "top", "touch", "tr", "true", "tty", "umount", "uname", "uniq", "vi", "wc", "wget", "which",
    "whoami", "xargs", "yes", "zcat",
)  # fmt: skip
PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "app:x:1000:1000:app:/home/app:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\nusers:x:100:app\napp:x:1000:\nnogroup:x:65534:\n"
# The dynamic loader, libc and the few libraries nvidia-smi links against, per architecture.
GLIBC_FILES = {
    "amd64": (
        "/lib64/ld-linux-x86-64.so.2",
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib/x86_64-linux-gnu/libdl.so.2",
        "/lib/x86_64-linux-gnu/libpthread.so.0",
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/lib/x86_64-linux-gnu/librt.so.1",
    ),
    "arm64": (
        "/lib/ld-linux-aarch64.so.1",
        "/lib/aarch64-linux-gnu/libc.so.6",
        "/lib/aarch64-linux-gnu/libdl.so.2",
        "/lib/aarch64-linux-gnu/libpthread.so.0",
        "/lib/aarch64-linux-gnu/libm.so.6",
        "/lib/aarch64-linux-gnu/librt.so.1",
    ),
}
# Binary content: 64 KiB blocks of 32 KiB pseudo-random bytes followed by a 16-byte pattern repeated over
# 32 KiB. gzip keeps the random half and all but removes the repeated half: a ratio just under 2:1.
_BLOCK = 64 * 1024
_RANDOM_PART = 32 * 1024
_PATTERN = 16
_COPY_BUFSIZE = MIB


@dataclass(frozen=True)
class SampleLayer:
    digest: str  # of the gzip blob
    size: int  # of the gzip blob
    diff_id: str  # digest of the uncompressed tar
    uncompressed_size: int
    path: Path  # the gzip blob on disk
    media_type: str = OCI_LAYER_GZIP

    def descriptor(self) -> Descriptor:
        return Descriptor(self.media_type, self.digest, self.size)


@dataclass(frozen=True)
class SampleImage:
    manifest_bytes: bytes
    manifest_digest: str
    config_bytes: bytes
    config_digest: str
    layers: tuple[SampleLayer, ...]
    files: tuple[SampleFile, ...] = ()  # the data layers' files (sample_files of the same arguments)

    @property
    def dir(self) -> Path:
        """The cache entry that holds the blobs (derived artifacts such as converted SOCI layouts go there)."""
        return self.layers[0].path.parent

    def manifest_descriptor(self) -> Descriptor:
        return Descriptor(OCI_MANIFEST, self.manifest_digest, len(self.manifest_bytes))

    def config_descriptor(self) -> Descriptor:
        return Descriptor(OCI_CONFIG, self.config_digest, len(self.config_bytes))

    @property
    def total_size(self) -> int:
        """Compressed bytes of all layers."""
        return sum(layer.size for layer in self.layers)


# -- streaming layer writer -----------------------------------------------------------------------------


class _LayerSink:
    """A write-only file for tarfile: hashes the tar bytes (diff_id), gzips them, hashes and stores the
    gzip bytes (digest), in one pass."""

    def __init__(self, out: io.BufferedWriter) -> None:
        self._out = out
        self._diff = hashlib.sha256()
        self._blob = hashlib.sha256()
        # wbits 16 + 15: a gzip wrapper with a zero mtime and no file name, so output is deterministic.
        self._zip = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        self.uncompressed = 0
        self.compressed = 0

    def write(self, data: bytes) -> int:
        self._diff.update(data)
        self.uncompressed += len(data)
        self._emit(self._zip.compress(data))
        return len(data)

    def tell(self) -> int:
        return self.uncompressed

    # tarfile's file protocol also names these; a write-only stream does not need them.
    def read(self, size: int, /) -> bytes:
        raise io.UnsupportedOperation("read")

    def seek(self, pos: int, /) -> int:
        raise io.UnsupportedOperation("seek")

    def close(self) -> None:
        pass

    def _emit(self, data: bytes) -> None:
        if data:
            self._blob.update(data)
            self._out.write(data)
            self.compressed += len(data)

    def finish(self) -> tuple[str, int, str, int]:
        """Flush; returns (digest, size, diff_id, uncompressed size)."""
        self._emit(self._zip.flush())
        return (
            "sha256:" + self._blob.hexdigest(),
            self.compressed,
            "sha256:" + self._diff.hexdigest(),
            self.uncompressed,
        )


class _DataReader:
    """A read-only file of deterministic, ~2:1-compressible bytes derived from `key`."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._block = 0
        self._buf = bytearray()

    def read(self, size: int) -> bytes:
        while len(self._buf) < size:
            rnd = hashlib.shake_128(self._key + self._block.to_bytes(8, "little")).digest(_RANDOM_PART)
            self._buf += rnd
            self._buf += rnd[:_PATTERN] * ((_BLOCK - _RANDOM_PART) // _PATTERN)
            self._block += 1
        out = bytes(self._buf[:size])
        del self._buf[:size]
        return out


def _entry(
    name: str, kind: bytes, mode: int, *, size: int = 0, link: str = "", owner: int = 0
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.linkname = link
    info.mtime = EPOCH
    info.uid = info.gid = owner
    info.uname = info.gname = "root" if owner == 0 else ""
    return info


def _dir(name: str, mode: int = 0o755, owner: int = 0) -> tarfile.TarInfo:
    return _entry(name, tarfile.DIRTYPE, mode, owner=owner)


def _write_layer(path: Path, fill: Callable[[tarfile.TarFile], None]) -> SampleLayer:
    """Write a gzip tar layer to `path`; `fill(tar)` adds the entries."""
    with open(path, "wb") as out:
        sink = _LayerSink(out)
        with tarfile.TarFile(
            fileobj=sink, mode="w", format=tarfile.PAX_FORMAT, copybufsize=_COPY_BUFSIZE
        ) as tar:
            fill(tar)
        digest, size, diff_id, usize = sink.finish()
    return SampleLayer(digest=digest, size=size, diff_id=diff_id, uncompressed_size=usize, path=path)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    tar.addfile(_entry(name, tarfile.REGTYPE, mode, size=len(data)), io.BytesIO(data))


def _add_host_file(tar: tarfile.TarFile, name: str, source: Path, mode: int = 0o755) -> None:
    """Add the content of `source` (symlinks resolved) as a regular file called `name`."""
    with open(source.resolve(), "rb") as src:
        size = os.fstat(src.fileno()).st_size
        tar.addfile(_entry(name, tarfile.REGTYPE, mode, size=size), src)


def _fill_base(tar: tarfile.TarFile, applets: Sequence[str], seed: int) -> None:
    tar.addfile(_dir("bin"))
    _add_host_file(tar, "bin/busybox", BUSYBOX)
    for applet in applets:
        tar.addfile(_entry(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox"))
    tar.addfile(_dir("dev"))
    tar.addfile(_dir("etc"))
    _add_bytes(tar, "etc/group", GROUP.encode())
    _add_bytes(tar, "etc/hosts", b"")
    _add_bytes(tar, "etc/passwd", PASSWD.encode())
    # The seed makes the base layer differ too, so images of different seeds share no blob at all.
    _add_bytes(tar, "etc/socirun-sample", f"seed={seed}\n".encode())
    tar.addfile(_dir("home"))
    tar.addfile(_dir("home/app", owner=1000))
    tar.addfile(_dir("proc", 0o555))
    tar.addfile(_dir("root", 0o700))
    tar.addfile(_dir("sys", 0o555))
    tar.addfile(_dir("tmp", 0o1777))


def _fill_data(tar: tarfile.TarFile, index: int, size: int, seed: int) -> None:
    made: set[str] = set()
    for file in layer_files(index, size, seed):
        name = file.path.lstrip("/")
        parents = [str(parent) for parent in reversed(Path(name).parents[:-1])]  # parents[-1] is "."
        for parent in parents:
            if parent not in made:
                made.add(parent)
                tar.addfile(_dir(parent))
        if file.kind == "small":
            _add_bytes(tar, name, file_text(file, seed))
        else:
            info = _entry(name, tarfile.REGTYPE, 0o644, size=file.size)
            reader = _DataReader(f"socirun-sample/{seed}/{file.path}".encode())
            tar.addfile(info, reader)  # type: ignore[arg-type]


def _fill_glibc(tar: tarfile.TarFile, files: Sequence[str]) -> None:
    seen: set[str] = set()
    for path in files:
        name = path.lstrip("/")
        parents = Path(name).parents
        for parent in reversed(parents[:-1]):  # parents[-1] is "."
            if str(parent) not in seen:
                seen.add(str(parent))
                tar.addfile(_dir(str(parent)))
        _add_host_file(tar, name, Path(path))


# -- building and caching -------------------------------------------------------------------------------


def _file_sha256(path: Path) -> str:
    with open(path.resolve(), "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _host_applets() -> list[str]:
    """The applets of APPLETS that the host's busybox provides."""
    if not BUSYBOX.exists():
        raise SandboxError(f"{BUSYBOX} was not found: install the Debian package busybox-static.")
    listed = subprocess.run(
        [str(BUSYBOX), "--list"], capture_output=True, text=True, check=False
    ).stdout.split()
    return sorted(set(APPLETS) & set(listed))


def _glibc_files(arch: str) -> tuple[str, ...]:
    files = GLIBC_FILES.get(arch)
    if files is None:
        raise SandboxError(f"the glibc sample layer is not available on {arch} hosts; leave with_glibc off.")
    for path in files:
        if not Path(path).exists():
            raise SandboxError(f"{path} was not found on this host; the glibc sample layer needs it.")
    return files


def default_cache_dir() -> Path:
    """$SOCIRUN_SAMPLE_CACHE, else $XDG_CACHE_HOME/socirun/samples (default ~/.cache/socirun/samples)."""
    if os.environ.get("SOCIRUN_SAMPLE_CACHE"):
        return Path(os.environ["SOCIRUN_SAMPLE_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "socirun" / "samples"


def build_sample(
    workdir: Path,
    layer_sizes_mb: Sequence[float],
    *,
    seed: int = 0,
    cmd: Sequence[str] = DEFAULT_CMD,
    with_glibc: bool = False,
) -> SampleImage:
    """Build (or take from the cache in `workdir`) a sample image: a busybox base layer, one data layer per
    entry of `layer_sizes_mb` (MiB of uncompressed file content, laid out as LAYOUT says), and with
    `with_glibc` a last layer with the host's dynamic loader and libc."""
    workdir = Path(workdir)
    platform = host_platform()
    sizes = layer_sizes_bytes(layer_sizes_mb)
    applets = _host_applets()
    glibc = _glibc_files(platform.architecture) if with_glibc else ()
    inputs = {
        "format": FORMAT_VERSION,
        "gzip": GZIP_LEVEL,
        "platform": str(platform),
        "sizes": sizes,
        "seed": seed,
        "cmd": list(cmd),
        "busybox": _file_sha256(BUSYBOX),
        "applets": applets,
        "glibc": [[path, _file_sha256(Path(path))] for path in glibc],
    }
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:24]
    target = workdir / f"sample-{key}"
    cached = _load(target)
    if cached is not None:
        return cached

    workdir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=workdir))
    try:
        # (data size, how to fill the layer's tar), in image order.
        fills: list[tuple[int, Callable[[tarfile.TarFile], None]]] = [
            (0, partial(_fill_base, applets=applets, seed=seed))
        ]
        for i, size in enumerate(sizes, start=1):
            fills.append((size, partial(_fill_data, index=i, size=size, seed=seed)))
        if glibc:
            fills.append((0, partial(_fill_glibc, files=glibc)))
        workers = max(1, min(len(fills), os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            # The biggest layers start first so they do not finish last on their own.
            order = sorted(range(len(fills)), key=lambda n: -fills[n][0])
            futures = {n: pool.submit(_write_layer, tmp / f"layer-{n}.tar.gz", fills[n][1]) for n in order}
            layers = [futures[n].result() for n in range(len(fills))]
        files = sample_files(layer_sizes_mb, seed)
        _write_image(tmp, platform.architecture, platform.variant, list(cmd), layers, files, inputs)
        try:
            tmp.rename(target)
        except OSError:
            # Either a concurrent build finished first (keep it) or the entry was damaged (replace it).
            if _load(target) is None:
                shutil.rmtree(target)
                tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    built = _load(target)
    if built is None:
        raise SandboxError(f"the sample built in {target} cannot be read back; remove that directory.")
    return built


def _write_image(dir: Path, arch: str, variant: str, cmd: list[str], layers: list[SampleLayer],
                 files: Sequence[SampleFile], inputs: dict[str, Any]) -> None:
    history = ["socirun sample: busybox base"] + [f"socirun sample: layer {n}" for n in range(1, len(layers))]
    config: dict[str, Any] = {"created": CREATED, "architecture": arch, "os": "linux"}
    if variant:
        config["variant"] = variant
    config |= {
        "config": {"Env": [PATH_ENV], "Cmd": cmd, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": CREATED, "created_by": line} for line in history],
    }
    config_bytes = json.dumps(config, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": Descriptor(OCI_CONFIG, sha256_digest(config_bytes), len(config_bytes)).to_json(),
        "layers": [layer.descriptor().to_json() for layer in layers],
    }
    manifest_bytes = json.dumps(manifest, separators=(",", ":")).encode()
    (dir / "config.json").write_bytes(config_bytes)
    (dir / "manifest.json").write_bytes(manifest_bytes)
    # What was built from what, readable by a person: the inputs, the blobs, and every data file.
    index = {
        "inputs": inputs,
        "layers": [
            {
                "file": layer.path.name,
                "digest": layer.digest,
                "size": layer.size,
                "diff_id": layer.diff_id,
                "uncompressed_size": layer.uncompressed_size,
                "files": [[f.path, f.size, f.kind] for f in files if f.layer == n],
            }
            for n, layer in enumerate(layers)
        ],
    }
    (dir / "sample.json").write_text(json.dumps(index, separators=(",", ":")) + "\n")


def _load(dir: Path) -> SampleImage | None:
    """A cached sample, or None when `dir` does not hold a complete one."""
    try:
        index = json.loads((dir / "sample.json").read_text())
        manifest_bytes = (dir / "manifest.json").read_bytes()
        config_bytes = (dir / "config.json").read_bytes()
        layers = tuple(
            SampleLayer(
                digest=str(entry["digest"]),
                size=int(entry["size"]),
                diff_id=str(entry["diff_id"]),
                uncompressed_size=int(entry["uncompressed_size"]),
                path=dir / str(entry["file"]),
            )
            for entry in index["layers"]
        )
        files = tuple(
            SampleFile(path=str(path), size=int(size), layer=n, kind=str(kind))
            for n, entry in enumerate(index["layers"])
            for path, size, kind in entry.get("files", ())
        )
        listed = [str(layer["digest"]) for layer in json.loads(manifest_bytes)["layers"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if listed != [layer.digest for layer in layers]:
        return None
    if any(not layer.path.is_file() or layer.path.stat().st_size != layer.size for layer in layers):
        return None
    return SampleImage(
        manifest_bytes=manifest_bytes,
        manifest_digest=sha256_digest(manifest_bytes),
        config_bytes=config_bytes,
        config_digest=sha256_digest(config_bytes),
        layers=layers,
        files=files,
    )


SOCI_VERSIONS = ("v2", "v1", "none")


def push_sample(
    registry_host: str,
    name: str,
    tag: str = "latest",
    layer_sizes_mb: Sequence[float] = DEFAULT_LAYER_SIZES_MB,
    *,
    seed: int = 0,
    cmd: Sequence[str] = DEFAULT_CMD,
    with_glibc: bool = False,
    cache_dir: Path | None = None,
    stats: PushStats | None = None,
    soci: str = "none",
    min_layer_size: int = soci_index.DEFAULT_MIN_LAYER_SIZE,
    containerd_address: str | None = None,
) -> str:
    """Build (or take from the cache) a sample image and push it; returns "HOST/NAME:TAG".

    `soci` "v2": the tag points at what `soci convert` made of the image (an OCI index holding the annotated
    image manifest and the SOCI v2 index, with real zTOCs for the layers of at least `min_layer_size`
    compressed bytes). "v1": the plain image, then `soci create` + `soci push` through the sandbox's
    containerd at `containerd_address` (required), the index found by its referrers tag. See
    socirun.sandbox.soci_index. Safe to call from inside a running event loop: each push runs on its own loop
    in a worker thread.
    """
    if soci not in SOCI_VERSIONS:
        raise SandboxError(f'unknown SOCI index version "{soci}": use v2, v1 or none.')
    if soci == "v1" and not containerd_address:
        raise SandboxError("a SOCI v1 index is made through containerd: pass the sandbox's containerd address.")
    image = build_sample(
        cache_dir if cache_dir is not None else default_cache_dir(),
        layer_sizes_mb,
        seed=seed,
        cmd=cmd,
        with_glibc=with_glibc,
    )
    if soci != "none" and not soci_index.ztoc_layers(image, min_layer_size):
        raise soci_index.no_ztocs_error(image, min_layer_size)  # before anything is pushed
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        if soci == "v2":
            layout = soci_index.convert_v2(image, min_layer_size=min_layer_size)
            return pool.submit(asyncio.run, push_layout(registry_host, name, tag, layout, stats=stats)).result()
        reference = pool.submit(asyncio.run, push_image(registry_host, name, tag, image, stats=stats)).result()
    if soci == "v1":
        assert containerd_address is not None
        soci_index.create_v1(reference, image, containerd_address=containerd_address,
                             min_layer_size=min_layer_size)
    return reference


__all__ = [
    "BIG_FILE_SIZE",
    "BIG_NAME",
    "DEFAULT_CMD",
    "DEFAULT_LAYER_SIZES_MB",
    "LAYOUT",
    "MIB",
    "SOCI_VERSIONS",
    "SampleFile",
    "SampleImage",
    "SampleLayer",
    "build_sample",
    "default_cache_dir",
    "layer_files",
    "push_sample",
    "sample_files",
]
