"""A TCP proxy that caps bandwidth per connection (and optionally in total), for tests and benchmarks.

A single stream from S3 or a CDN runs at a few tens of MB/s however fast the host's NIC is; on loopback
transfers are instant. Putting this proxy in front of the sandbox registry makes transfer time dominate the
way it does on a real network, so a pull can be interrupted mid-download and parallel downloads can be
measured. Only the registry → client direction is limited; requests pass untouched.

    python -m socirun.sandbox.throttle --upstream 127.0.0.1:5000 --rate 25MB [--total 100MB]

prints the listening `127.0.0.1:PORT` on stdout once ready, and runs until terminated.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time

CHUNK = 64 * 1024


class TokenBucket:
    """Allows `rate` bytes per second with a burst of a tenth of a second's worth."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(rate / 10, CHUNK)
        self.tokens = self.capacity
        self.stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self, n: int) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= n:
                    self.tokens -= n
                    return
                await asyncio.sleep((n - self.tokens) / self.rate)


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, buckets: list[TokenBucket]
) -> None:
    try:
        while data := await reader.read(CHUNK):
            for bucket in buckets:
                await bucket.take(len(data))
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


def parse_rate(text: str) -> float:
    """`25MB`, `25M`, `1.5GB`, `800kB`, a plain number of bytes; decimal units, per second."""
    units = {"gb": 1e9, "g": 1e9, "mb": 1e6, "m": 1e6, "kb": 1e3, "k": 1e3, "b": 1.0}
    lowered = text.strip().lower().removesuffix("/s")
    for suffix, factor in units.items():
        if lowered.endswith(suffix):
            return float(lowered[: -len(suffix)]) * factor
    return float(lowered)


async def serve(
    upstream: str,
    rate: float | None,
    total: float | None,
    listen_host: str = "127.0.0.1",
    listen_port: int = 0,
) -> asyncio.Server:
    up_host, up_port = upstream.rsplit(":", 1)
    shared = [TokenBucket(total)] if total else []

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(up_host, int(up_port))
        except OSError:
            client_writer.close()
            return
        down = ([TokenBucket(rate)] if rate else []) + shared
        await asyncio.gather(_pipe(client_reader, up_writer, []), _pipe(up_reader, client_writer, down))

    return await asyncio.start_server(handle, listen_host, listen_port)


async def _main(args: argparse.Namespace) -> None:
    rate = parse_rate(args.rate) if args.rate else None
    total = parse_rate(args.total) if args.total else None
    server = await serve(args.upstream, rate, total, listen_port=args.port)
    port = server.sockets[0].getsockname()[1]
    print(f"127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m socirun.sandbox.throttle", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--upstream", required=True, help="HOST:PORT to forward to (loopback)")
    parser.add_argument("--rate", default="25MB", help="cap per connection, bytes/s (default 25MB); 0 = none")
    parser.add_argument("--total", default=None, help="cap for all connections together, bytes/s")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    args = parser.parse_args(argv)
    if args.rate in ("0", ""):
        args.rate = None
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))


if __name__ == "__main__":
    main(sys.argv[1:])
