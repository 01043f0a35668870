"""Which async HTTP client should the registry client use? httpx or aiohttp, measured against a real registry.

Starts a private `docker-registry` (distribution v2.8) on a free loopback port, uploads one blob of random
bytes through the registry's HTTP API, then downloads it repeatedly the way a pull does: a streaming GET read
in 1 MiB pieces and hashed with sha256, and also split into 4 concurrent ranged GETs. Runs alternate between
the two clients (and the order flips each round) so that caches and CPU frequency favour neither.

    python bench/http_client_throughput.py [--size-mb 300] [--rounds 3]

Prints one line per run and the medians in MB/s (10^6 bytes per second) and the aiohttp/httpx ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx

CHUNK = 1 << 20
REPO = "bench/blob"
PARTS = 4


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_registry(root: Path, port: int) -> subprocess.Popen[bytes]:
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    proc = subprocess.Popen(
        [binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"docker-registry exited with status {proc.returncode}")
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("docker-registry did not answer on /v2/ within 15 s")


def upload(base: str, data: bytes, digest: str) -> None:
    with httpx.Client(timeout=120) as client:
        started = client.post(f"{base}/v2/{REPO}/blobs/uploads/")
        started.raise_for_status()
        location = started.headers["Location"]
        if location.startswith("/"):
            location = base + location
        sep = "&" if "?" in location else "?"
        done = client.put(
            f"{location}{sep}digest={digest}",
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        done.raise_for_status()


# One download = bytes hashed; each function returns the hex digest(s) so the run can be checked.


async def httpx_stream(client: httpx.AsyncClient, url: str) -> str:
    h = hashlib.sha256()
    async with client.stream("GET", url) as resp:
        resp.raise_for_status()
        async for chunk in resp.aiter_raw(CHUNK):
            h.update(chunk)
    return h.hexdigest()


async def aiohttp_stream(session: aiohttp.ClientSession, url: str) -> str:
    h = hashlib.sha256()
    async with session.get(url) as resp:
        resp.raise_for_status()
        async for chunk in resp.content.iter_chunked(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def ranges(size: int) -> list[tuple[int, int]]:
    step = -(-size // PARTS)
    return [(a, min(a + step, size) - 1) for a in range(0, size, step)]


async def httpx_ranged(client: httpx.AsyncClient, url: str, size: int) -> str:
    async def part(a: int, b: int) -> str:
        h = hashlib.sha256()
        async with client.stream("GET", url, headers={"Range": f"bytes={a}-{b}"}) as resp:
            assert resp.status_code == 206, resp.status_code
            async for chunk in resp.aiter_raw(CHUNK):
                h.update(chunk)
        return h.hexdigest()

    return ",".join(await asyncio.gather(*(part(a, b) for a, b in ranges(size))))


async def aiohttp_ranged(session: aiohttp.ClientSession, url: str, size: int) -> str:
    async def part(a: int, b: int) -> str:
        h = hashlib.sha256()
        async with session.get(url, headers={"Range": f"bytes={a}-{b}"}) as resp:
            assert resp.status == 206, resp.status
            async for chunk in resp.content.iter_chunked(CHUNK):
                h.update(chunk)
        return h.hexdigest()

    return ",".join(await asyncio.gather(*(part(a, b) for a, b in ranges(size))))


async def measure(
    name: str, results: dict[str, list[float]], size: int, expect: str, run: Callable[[], Awaitable[str]]
) -> None:
    t0 = time.perf_counter()
    got = await run()
    dt = time.perf_counter() - t0
    if got != expect:
        raise SystemExit(f"{name}: digest mismatch")
    rate = size / dt / 1e6
    results.setdefault(name, []).append(rate)
    print(f"  {name:<18} {rate:8.1f} MB/s  ({dt:.2f} s)", flush=True)


async def bench(base: str, data: bytes, digest: str, rounds: int) -> dict[str, list[float]]:
    url = f"{base}/v2/{REPO}/blobs/{digest}"
    size = len(data)
    whole = digest.removeprefix("sha256:")
    parts = ",".join(hashlib.sha256(data[a : b + 1]).hexdigest() for a, b in ranges(size))
    results: dict[str, list[float]] = {}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with (
        httpx.AsyncClient(timeout=120, limits=limits) as hx,
        aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_read=120),
            connector=aiohttp.TCPConnector(limit=64),
        ) as ah,
    ):
        # A warm-up of each so that first-connection and page-cache effects do not land on one side.
        await httpx_stream(hx, url)
        await aiohttp_stream(ah, url)
        for i in range(rounds):
            print(f"round {i + 1}/{rounds}", flush=True)
            order = ["httpx", "aiohttp"] if i % 2 == 0 else ["aiohttp", "httpx"]
            for lib in order:
                if lib == "httpx":
                    await measure("httpx stream", results, size, whole, lambda: httpx_stream(hx, url))
                    await measure("httpx 4 ranges", results, size, parts, lambda: httpx_ranged(hx, url, size))
                else:
                    await measure("aiohttp stream", results, size, whole, lambda: aiohttp_stream(ah, url))
                    await measure(
                        "aiohttp 4 ranges", results, size, parts, lambda: aiohttp_ranged(ah, url, size)
                    )
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=300, help="blob size in MB (10^6 bytes)")
    ap.add_argument("--rounds", type=int, default=3, help="downloads per client and mode (>= 3)")
    args = ap.parse_args()
    rounds = max(3, args.rounds)

    data = os.urandom(args.size_mb * 1_000_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with tempfile.TemporaryDirectory(prefix="socirun-bench-") as tmp:
        port = free_port()
        proc = start_registry(Path(tmp), port)
        try:
            base = f"http://127.0.0.1:{port}"
            t0 = time.perf_counter()
            upload(base, data, digest)
            print(f"uploaded {len(data) / 1e6:.0f} MB in {time.perf_counter() - t0:.1f} s to {base}")
            print(
                f"python {sys.version.split()[0]}, httpx {httpx.__version__}, aiohttp {aiohttp.__version__}"
            )
            results = asyncio.run(bench(base, data, digest, rounds))
        finally:
            proc.kill()  # only the registry this script started, by its PID
            proc.wait()

    med = {k: statistics.median(v) for k, v in results.items()}
    print("\nmedians (MB/s):")
    for k in ("httpx stream", "aiohttp stream", "httpx 4 ranges", "aiohttp 4 ranges"):
        print(f"  {k:<18} {med[k]:8.1f}")
    print(f"ratio aiohttp/httpx, stream:   {med['aiohttp stream'] / med['httpx stream']:.2f}")
    print(f"ratio aiohttp/httpx, 4 ranges: {med['aiohttp 4 ranges'] / med['httpx 4 ranges']:.2f}")


if __name__ == "__main__":
    main()
