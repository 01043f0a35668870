"""Chunk scheduling and in-order reassembly, driven by a fake chunk source (no network: pure logic); the stall
watchdog of ranged reads with a fake range opener, and once over a loopback socket for both client paths."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path

import aiohttp
import pytest

from socirun.decide.transfer import Schedule
from socirun.errors import RegistryError
from socirun.oci import Descriptor, sha256_digest
from socirun.pull.chunked import (
    ChunkFetcher,
    ChunkFetchError,
    TransferBudget,
    chunk_priority,
    download_chunked,
    plan_ranges,
)
from socirun.reference import parse_reference
from socirun.registry.client import RangeNotSupportedError, RegistryClient, StalledError, read_range


def blob(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


class FakeSource:
    """Serves ranges of `data` after a per-call delay; can fail or cut short chosen calls."""

    def __init__(self, data: bytes, *, delays: dict[int, float] | None = None, seed: int = 0) -> None:
        self.data = data
        self.delays = delays or {}
        self.rng = random.Random(seed)
        self.calls: list[tuple[int, int]] = []
        self.fail_once: set[int] = set()  # range starts that raise ConnectionResetError the first time
        self.short_once: set[int] = set()  # range starts that return too few bytes the first time
        self.always_fail: set[int] = set()
        self.in_flight = 0
        self.peak_in_flight = 0
        self.completed: list[int] = []  # range starts, in completion order
        self.returned = 0  # bytes handed out

    async def __call__(self, start: int, end: int) -> bytes:
        self.calls.append((start, end))
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delays.get(start, self.rng.uniform(0, 0.004)))
            if start in self.always_fail:
                raise ConnectionResetError("connection reset by peer")
            if start in self.fail_once:
                self.fail_once.discard(start)
                raise ConnectionResetError("connection reset by peer")
            piece = self.data[start : end + 1]
            if start in self.short_once:
                self.short_once.discard(start)
                piece = piece[: len(piece) // 2]
            self.completed.append(start)
            self.returned += len(piece)
            return piece
        finally:
            self.in_flight -= 1


class Sink:
    def __init__(self, delay: float = 0.0) -> None:
        self.parts: list[bytes] = []
        self.delay = delay

    async def write(self, data: bytes) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        self.parts.append(data)

    @property
    def data(self) -> bytes:
        return b"".join(self.parts)


def test_plan_ranges_are_bounded_and_cover_the_rest_of_the_blob() -> None:
    assert plan_ranges(10, 0, 4) == [(0, 3), (4, 7), (8, 9)]
    assert plan_ranges(10, 5, 4) == [(5, 8), (9, 9)]
    assert plan_ranges(10, 10, 4) == []
    assert plan_ranges(8, 0, 4) == [(0, 3), (4, 7)]
    with pytest.raises(ValueError):
        plan_ranges(10, 11, 4)
    with pytest.raises(ValueError):
        plan_ranges(10, 0, 0)


async def test_out_of_order_arrival_is_written_in_order() -> None:
    data = blob(10_000)
    # Earlier chunks are the slowest: they arrive last, yet must be written first.
    delays = {start: 0.05 - i * 0.005 for i, (start, _end) in enumerate(plan_ranges(10_000, 0, 1000))}
    source = FakeSource(data, delays=delays)
    sink = Sink()
    budget = TransferBudget(connections=10, window=10, chunk_size=1000)
    stats = await download_chunked(source, sink.write, size=len(data), offset=0, budget=budget)
    assert source.completed[0] > source.completed[-1], "the fake did not deliver out of order"
    assert sink.data == data
    assert [len(p) for p in sink.parts] == [1000] * 10
    assert stats.chunks == 10 and stats.retries == 0
    assert budget.slots_in_use == 0 and budget.buffered_bytes == 0


async def test_a_failed_chunk_is_retried_and_the_blob_is_intact() -> None:
    data = blob(8_192, seed=2)
    source = FakeSource(data)
    source.fail_once = {2048, 6144}
    sink = Sink()
    budget = TransferBudget(connections=3, window=4, chunk_size=1024)
    stats = await download_chunked(source, sink.write, size=len(data), offset=0, budget=budget, backoff=0)
    assert sink.data == data
    assert stats.retries == 2
    assert source.calls.count((2048, 3071)) == 2


async def test_a_short_read_is_detected_and_fetched_again() -> None:
    data = blob(5_000, seed=3)
    source = FakeSource(data)
    source.short_once = {1000}
    sink = Sink()
    budget = TransferBudget(connections=2, window=2, chunk_size=1000)
    stats = await download_chunked(source, sink.write, size=len(data), offset=0, budget=budget, backoff=0)
    assert sink.data == data
    assert stats.short_reads == 1 and stats.retries == 1
    assert hashlib.sha256(sink.data).digest() == hashlib.sha256(data).digest()


async def test_a_chunk_that_keeps_failing_stops_the_blob_and_frees_the_budget() -> None:
    data = blob(6_000, seed=4)
    source = FakeSource(data)
    source.always_fail = {3000}
    sink = Sink()
    budget = TransferBudget(connections=2, window=3, chunk_size=1000)
    with pytest.raises(ChunkFetchError, match="bytes 3000-3999 of layer x failed 3 times"):
        await download_chunked(source, sink.write, size=len(data), offset=0, budget=budget, backoff=0,
                               what="layer x")
    assert source.calls.count((3000, 3999)) == 3
    assert sink.data == data[:3000]  # everything before the bad chunk, in order, and nothing after
    assert budget.slots_in_use == 0 and budget.buffered_bytes == 0 and budget.requests_in_flight == 0


async def test_the_memory_window_is_never_exceeded() -> None:
    chunk, window = 1000, 3
    data = blob(40_000, seed=5)
    # Many connections, fast source, slow writer: chunks pile up unless the window holds them back.
    source = FakeSource(data, seed=5)
    budget = TransferBudget(connections=16, window=window, chunk_size=chunk)
    written = 0
    peak_outside = 0

    async def slow_write(part: bytes) -> None:
        nonlocal written, peak_outside
        # Bytes the source has handed out that the writer has not taken yet (this one included).
        peak_outside = max(peak_outside, source.returned - written)
        await asyncio.sleep(0.003)
        written += len(part)

    await download_chunked(source, slow_write, size=len(data), offset=0, budget=budget)
    assert written == len(data)
    assert budget.peak_slots == window
    assert budget.peak_buffered_bytes <= budget.memory_bound == window * chunk
    assert peak_outside <= window * chunk
    assert source.peak_in_flight <= window


class Tracked(bytearray):
    """A chunk whose lifetime a weakref can observe (bytes cannot be weakly referenced)."""


async def test_written_chunks_are_freed_so_memory_stays_within_the_window() -> None:
    chunk, window = 1000, 4
    data = blob(60_000, seed=9)
    alive = 0
    peak_alive = 0

    def freed() -> None:
        nonlocal alive
        alive -= 1

    async def fetch(start: int, end: int) -> bytes:
        await asyncio.sleep(random.uniform(0, 0.002))
        nonlocal alive
        piece = Tracked(data[start : end + 1])
        alive += 1
        weakref.finalize(piece, freed)
        return piece  # type: ignore[return-value]  # a bytes-like object, as aiohttp may hand out

    digest = hashlib.sha256()

    async def write(part: bytes) -> None:
        nonlocal peak_alive
        peak_alive = max(peak_alive, alive)
        digest.update(part)
        await asyncio.sleep(0.001)

    budget = TransferBudget(connections=8, window=window, chunk_size=chunk)
    await download_chunked(fetch, write, size=len(data), offset=0, budget=budget)
    assert digest.digest() == hashlib.sha256(data).digest()
    # Chunk objects actually alive in the process, not just what the budget counts: never more than the window.
    assert 0 < peak_alive <= window


async def test_the_connection_limit_is_shared_by_every_layer() -> None:
    budget = TransferBudget(connections=3, window=12, chunk_size=500)
    layers = [blob(6_000, seed=s) for s in range(4)]
    sources = [FakeSource(d, seed=i) for i, d in enumerate(layers)]
    in_flight = 0
    peak = 0

    def counting(source: FakeSource) -> ChunkFetcher:
        async def fetch(start: int, end: int) -> bytes:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                return await source(start, end)
            finally:
                in_flight -= 1

        return fetch

    sinks = [Sink() for _ in layers]
    await asyncio.gather(*(
        download_chunked(counting(src), sink.write, size=len(d), offset=0, budget=budget, layer_index=i)
        for i, (src, sink, d) in enumerate(zip(sources, sinks, layers, strict=True))
    ))
    assert [s.data for s in sinks] == layers
    assert peak == 3 and budget.peak_requests == 3


async def test_resume_fetches_only_what_containerd_does_not_hold() -> None:
    data = blob(10_000, seed=6)
    source = FakeSource(data)
    sink = Sink()
    budget = TransferBudget(connections=4, window=4, chunk_size=4096)
    positions: list[int] = []
    await download_chunked(source, sink.write, size=len(data), offset=3000, budget=budget,
                           on_written=lambda pos, _n: positions.append(pos))
    assert sink.data == data[3000:]
    assert min(start for start, _ in source.calls) == 3000
    assert positions == [7096, 10_000]


async def test_a_registry_without_range_support_is_not_retried() -> None:
    calls = 0

    async def no_ranges(start: int, end: int) -> bytes:
        nonlocal calls
        calls += 1
        raise RangeNotSupportedError("registry for x does not serve byte ranges")

    budget = TransferBudget(connections=1, window=1, chunk_size=100)
    with pytest.raises(RangeNotSupportedError):
        await download_chunked(no_ranges, Sink().write, size=1000, offset=0, budget=budget)
    assert calls == 1
    assert budget.slots_in_use == 0


def test_schedules_order_chunks_as_described() -> None:
    assert chunk_priority("in-order", 0, 10, 5) < chunk_priority("in-order", 1, 99, 0)
    assert chunk_priority("largest-first", 3, 99, 0) < chunk_priority("largest-first", 0, 10, 0)
    assert chunk_priority("interleave", 1, 10, 0) < chunk_priority("interleave", 0, 10, 1)


@pytest.mark.parametrize(("schedule", "expected"), [
    ("in-order", ["a0", "a1", "a2", "b0", "b1", "b2", "b3"]),
    ("interleave", ["a0", "b0", "a1", "b1", "a2", "b2", "b3"]),
    ("largest-first", ["a0", "b0", "b1", "b2", "b3", "a1", "a2"]),
])
async def test_schedule_decides_which_layer_gets_the_next_slot(schedule: Schedule, expected: list[str]) -> None:
    # One slot at a time, so the order chunks are fetched in is exactly the schedule's order. Layer a (3 chunks)
    # asks first and gets the first slot; from then on both wait and the schedule picks.
    budget = TransferBudget(connections=1, window=1, chunk_size=100, schedule=schedule)
    order: list[str] = []
    hold = asyncio.Event()

    def source(name: str, data: bytes) -> ChunkFetcher:
        async def fetch(start: int, end: int) -> bytes:
            await hold.wait()
            order.append(f"{name}{start // 100}")
            return data[start : end + 1]

        return fetch

    a, b = blob(300, 7), blob(400, 8)
    first = asyncio.create_task(download_chunked(source("a", a), Sink().write, size=len(a), offset=0,
                                                 budget=budget, layer_index=0))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(download_chunked(source("b", b), Sink().write, size=len(b), offset=0,
                                                  budget=budget, layer_index=1))
    await asyncio.sleep(0.01)
    hold.set()
    await asyncio.gather(first, second)
    assert order == expected


def recording_source(order: list[str], name: str, data: bytes) -> ChunkFetcher:
    """A fake source over `data` that appends "<name><chunk>" to `order` for each range asked (100-byte chunks)."""
    async def fetch(start: int, end: int) -> bytes:
        order.append(f"{name}{start // 100}")
        return data[start : end + 1]

    return fetch


async def test_an_announced_layer_keeps_its_turn_until_it_asks() -> None:
    # The engine announces every layer before any asks. Layer 1 opens its ingest first, but the in-order
    # schedule must still give layer 0 every chunk first: otherwise the unpacker waits for layer 0.
    budget = TransferBudget(connections=1, window=1, chunk_size=100)
    a, b = blob(300, 9), blob(200, 10)
    budget.expect(0, len(a))
    budget.expect(1, len(b))
    order: list[str] = []
    source = partial(recording_source, order)

    second = asyncio.create_task(download_chunked(source("b", b), Sink().write, size=len(b), offset=0,
                                                  budget=budget, layer_index=1))
    await asyncio.sleep(0.02)
    assert order == []  # b waits for a, which has not asked yet
    first = asyncio.create_task(download_chunked(source("a", a), Sink().write, size=len(a), offset=0,
                                                 budget=budget, layer_index=0))
    await asyncio.gather(first, second)
    assert order == ["a0", "a1", "a2", "b0", "b1"]


async def test_a_settled_layer_no_longer_holds_back_later_ones() -> None:
    budget = TransferBudget(connections=1, window=1, chunk_size=100)
    b = blob(200, 11)
    budget.expect(0, 500)
    budget.expect(1, len(b))
    sink = Sink()
    task = asyncio.create_task(download_chunked(FakeSource(b), sink.write, size=len(b), offset=0, budget=budget,
                                                layer_index=1))
    await asyncio.sleep(0.02)
    assert not task.done()
    budget.settle(0)  # layer 0 turned out to be in the store already: it never asks
    await asyncio.wait_for(task, 2)
    assert sink.data == b


async def test_a_free_slot_waits_for_a_layer_between_two_requests() -> None:
    # Layer 0 has just been given a slot and will ask again at once; a release in the meantime must not hand
    # the slot to layer 1, whose key comes later.
    budget = TransferBudget(connections=2, window=2, chunk_size=100)
    await budget.acquire_slot(0, chunk_priority("in-order", 0, 300, 0))
    await budget.acquire_slot(0, chunk_priority("in-order", 0, 300, 1))
    budget.hold_place(0, chunk_priority("in-order", 0, 300, 2))
    later = asyncio.create_task(budget.acquire_slot(1, chunk_priority("in-order", 1, 300, 0)))
    budget.release_slot()
    await asyncio.sleep(0.01)
    assert not later.done()
    await budget.acquire_slot(0, chunk_priority("in-order", 0, 300, 2))  # layer 0 gets the held slot
    budget.settle(0)
    budget.release_slot()
    await asyncio.wait_for(later, 1)
    assert budget.slots_in_use == 2


async def test_attached_layers_share_the_window_ahead_of_the_rest() -> None:
    # Parallel unpack: layers 1 and 2 have appliers (attached) and take slots in turn, chunk by chunk; layer 0,
    # which no applier reads, gets a slot only once neither attached layer is asking. Without attach, in-order
    # would give layer 0 all its chunks first.
    budget = TransferBudget(connections=1, window=1, chunk_size=100)
    blobs = [blob(200, 20), blob(300, 21), blob(200, 22)]
    for index, data in enumerate(blobs):
        budget.expect(index, len(data))
    budget.attach(1)
    budget.attach(2)
    order: list[str] = []
    source = partial(recording_source, order)

    tasks = [asyncio.create_task(download_chunked(source(name, data), Sink().write, size=len(data), offset=0,
                                                  budget=budget, layer_index=index))
             for index, (name, data) in enumerate(zip("abc", blobs, strict=True))]
    await asyncio.wait_for(asyncio.gather(*tasks), 2)
    assert order == ["b0", "c0", "b1", "c1", "b2", "a0", "a1"]


async def test_a_detached_layer_falls_back_to_its_place_in_order() -> None:
    budget = TransferBudget(connections=1, window=1, chunk_size=100)
    budget.attach(1)
    budget.detach(1)
    first = asyncio.create_task(budget.acquire_slot(1, chunk_priority("in-order", 1, 100, 0)))
    second = asyncio.create_task(budget.acquire_slot(0, chunk_priority("in-order", 0, 100, 0)))
    await asyncio.sleep(0.01)
    assert first.done() and not second.done()  # the first asker got the one slot
    budget.release_slot()
    await asyncio.wait_for(second, 1)
    budget.settle(0)
    budget.settle(1)  # both launched their one chunk
    budget.attach(3)
    waiting = [asyncio.create_task(budget.acquire_slot(i, chunk_priority("in-order", i, 100, 0))) for i in (2, 3)]
    await asyncio.sleep(0.01)
    budget.release_slot()
    await asyncio.sleep(0.01)
    assert [t.done() for t in waiting] == [False, True]  # attached layer 3 before layer 2
    budget.settle(3)
    budget.release_slot()
    await asyncio.wait_for(waiting[0], 1)


# ------------------------------------------------------------------------------------ stalled connections (issue 15)


class StallingRanges:
    """A fake range opener (no network) over `data`: request number i (0-based) delivers `stall_after[i]` bytes
    in pieces and then nothing, for ever; requests past the list deliver everything. `closed` counts requests
    whose body was abandoned (their context exited)."""

    def __init__(self, data: bytes, stall_after: list[int], piece: int = 1000) -> None:
        self.data = data
        self.stall_after = stall_after
        self.piece = piece
        self.requests: list[tuple[int, int]] = []
        self.closed = 0

    @contextlib.asynccontextmanager
    async def __call__(self, first: int, last: int) -> AsyncIterator[Callable[[int], Awaitable[bytes]]]:
        n = len(self.requests)
        self.requests.append((first, last))
        body = self.data[first : last + 1]
        limit = self.stall_after[n] if n < len(self.stall_after) else len(body)
        sent = 0

        async def read(size: int) -> bytes:
            nonlocal sent
            if sent >= limit:
                if sent >= len(body):
                    return b""
                await asyncio.Event().wait()  # a stall: nothing, until the reader gives up
            part = body[sent : min(sent + size, self.piece + sent, limit)]
            sent += len(part)
            await asyncio.sleep(0)
            return part

        try:
            yield read
        finally:
            self.closed += 1


async def test_a_stalled_range_is_re_requested_from_the_byte_it_reached() -> None:
    data = blob(50_000)
    source = StallingRanges(data, stall_after=[7_000])
    started = time.monotonic()
    got = await read_range(source, 10_000, 39_999, what="blob x", stall_s=0.05)
    assert got == data[10_000:40_000]
    # The remainder only: the 7000 bytes the stalled request delivered are kept, not asked for again.
    assert source.requests == [(10_000, 39_999), (17_000, 39_999)]
    assert source.closed == 2  # the stalled request was abandoned (its connection closed)
    assert time.monotonic() - started < 2  # the stall cost about stall_s, not a read timeout


async def test_a_range_that_stalls_max_stalls_times_is_given_up_in_one_sentence() -> None:
    data = blob(50_000)
    source = StallingRanges(data, stall_after=[1_000, 2_000, 0, 0])
    with pytest.raises(StalledError) as info:
        await read_range(source, 0, 49_999, what="blob sha256:abc of x/y", stall_s=0.02, max_stalls=3)
    message = str(info.value)
    assert message == ("bytes 0-49999 of blob sha256:abc of x/y stalled 3 times (nothing for 0.02 s, last at byte "
                       "3000): the registry or the network stopped delivering it")
    assert "\n" not in message
    assert source.requests == [(0, 49_999), (1_000, 49_999), (3_000, 49_999)]  # no fourth request


async def test_a_dropped_range_resumes_from_the_byte_it_reached() -> None:
    data = blob(20_000)
    calls: list[tuple[int, int]] = []

    @contextlib.asynccontextmanager
    async def dropping(first: int, last: int) -> AsyncIterator[Callable[[int], Awaitable[bytes]]]:
        calls.append((first, last))
        sent = 0

        async def read(size: int) -> bytes:
            nonlocal sent
            if len(calls) == 1 and sent >= 4_000:
                raise aiohttp.ClientPayloadError("connection reset")
            part = data[first + sent : min(first + sent + min(size, 1000), last + 1)]
            sent += len(part)
            return part

        yield read

    assert await read_range(dropping, 0, 19_999, what="blob x", stall_s=1) == data
    assert calls == [(0, 19_999), (4_000, 19_999)]


async def test_a_body_longer_than_the_range_is_refused() -> None:
    data = blob(1_000)

    @contextlib.asynccontextmanager
    async def endless(first: int, last: int) -> AsyncIterator[Callable[[int], Awaitable[bytes]]]:
        async def read(size: int) -> bytes:
            return data[:size]

        yield read

    with pytest.raises(RegistryError, match="more than the 100 bytes asked"):
        await read_range(endless, 0, 99, what="blob x", stall_s=1)


async def test_a_stalled_range_is_not_retried_by_the_chunk_scheduler() -> None:
    calls = 0

    async def stalls(start: int, end: int) -> bytes:
        nonlocal calls
        calls += 1
        raise StalledError(f"bytes {start}-{end} of blob x stalled 3 times")

    budget = TransferBudget(connections=2, window=2, chunk_size=100)
    with pytest.raises(StalledError):
        await download_chunked(stalls, Sink().write, size=1000, offset=0, budget=budget, backoff=0)
    assert calls <= 2  # the chunks in flight at most, each once: no second round through the same stalls
    assert budget.slots_in_use == 0


async def _stall_server(stall_after: int, data: bytes, seen: list[str | None]) -> tuple[asyncio.Server, str]:
    """A raw HTTP server: the first blob request gets `stall_after` body bytes and then silence; later ones
    (Range honoured) their bytes. `seen` collects each request's Range header."""

    async def conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        rng = next((line.split(":", 1)[1].strip() for line in head.split("\r\n")
                    if line.lower().startswith("range:")), None)  # fmt: skip
        seen.append(rng)
        first, last = 0, len(data) - 1
        if rng is not None:
            a, _, b = rng.removeprefix("bytes=").partition("-")
            first, last = int(a), int(b) if b else len(data) - 1
        body = data[first : last + 1]
        status = "206 Partial Content" if rng else "200 OK"
        writer.write((f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
                      + (f"Content-Range: bytes {first}-{last}/{len(data)}\r\n" if rng else "")
                      + "\r\n").encode())  # fmt: skip
        try:
            if len(seen) == 1:
                writer.write(body[:stall_after])
                await writer.drain()
                await reader.read()  # silence until the client closes
            else:
                writer.write(body)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(conn, "127.0.0.1", 0)
    return server, f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


@pytest.mark.parametrize("mode", ["range", "stream"])
async def test_the_registry_client_abandons_a_stalled_response_and_asks_for_the_rest(tmp_path: Path,
                                                                                     mode: str) -> None:
    """Both client paths over a real socket: parallel mode's fetch_range and standard mode's fetch_blob give up
    on a response that stalls after 64 KiB within their stall limit (not the 120 s read timeout) and ask for
    the remaining bytes only."""
    data = blob(300_000)
    seen: list[str | None] = []
    server, host = await _stall_server(65_536, data, seen)
    ref = parse_reference(f"{host}/test/blob")
    desc = Descriptor("application/octet-stream", sha256_digest(data), len(data))
    started = time.monotonic()
    try:
        async with RegistryClient(hosts_dir=str(tmp_path), backoff_base=0.01, range_stall_s=0.3,
                                  stream_stall_s=0.3) as c:  # fmt: skip
            if mode == "range":
                got = await c.fetch_range(ref, desc, 1000, len(data) - 1)
                assert got == data[1000:]
                assert seen == ["bytes=1000-299999", f"bytes={1000 + 65_536}-299999"]
            else:
                out = bytearray()
                async for piece in c.fetch_blob(ref, desc):
                    out += piece
                assert bytes(out) == data
                assert seen == [None, "bytes=65536-"]
    finally:
        server.close()
        await server.wait_closed()
    assert time.monotonic() - started < 10
