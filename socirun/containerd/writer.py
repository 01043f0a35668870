"""One blob written into containerd's content store over a Content.Write stream.

The stream protocol is documented on WriteContentRequest in
https://github.com/containerd/containerd/blob/v1.6.20/api/services/content/v1/content.proto and implemented by
https://github.com/containerd/containerd/blob/v1.6.20/services/content/contentserver/contentserver.go.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Self

import grpc
import grpc.aio

from socirun.containerd.api.services.content.v1 import content_pb2
from socirun.containerd.errors import AlreadyExistsError, CommitMismatchError, RpcError, map_rpc_error
from socirun.errors import ContainerdError

if TYPE_CHECKING:
    from socirun.containerd.client import ContainerdClient

# The largest WRITE message. 8 MiB messages (a parallel chunk sent whole, uncopied) saved a tenth of socirun's
# CPU in a parallel pull but raised its peak RSS by 40-80 MB (grpc's serialized copies in flight): not worth it.
WRITE_CHUNK_BYTES = 1 << 20
# Bytes sent but not yet acknowledged before waiting for an answer (pipelining; see ContentWriter.write).
WRITE_WINDOW_BYTES = 8 << 20


class StallClock:
    """Whether a locked ingest is worth waiting for (pure: the caller reads the clock and the ingest's offset).

    Another client (a second pull of the same layer) holds the lock while it writes; we wait as long as its
    offset keeps moving and give up only after `stall_s` seconds without a change. A missing ingest (None:
    committed or aborted meanwhile) counts as a change: the next STAT finds the blob or a free lock.
    """

    def __init__(self, stall_s: float, now: float) -> None:
        self.stall_s = stall_s
        self.since = now
        self.offset: int | None = -1  # nothing observed yet

    def observe(self, offset: int | None, now: float) -> bool:
        """Record the other writer's offset at `now`; True while waiting is still worthwhile."""
        if self.offset != -1 and offset != self.offset:
            self.since = now
        self.offset = offset
        return now - self.since < self.stall_s


def _write_pieces(data: bytes) -> Iterator[bytes]:
    if len(data) <= WRITE_CHUNK_BYTES and type(data) is bytes:
        yield data
        return
    view = memoryview(data)
    for start in range(0, len(view), WRITE_CHUNK_BYTES):
        yield bytes(view[start : start + WRITE_CHUNK_BYTES])


class ContentWriter:
    """One Content.Write stream: STAT to open/resume, WRITEs at the current offset, COMMIT.

    Usage (what the pull engine does):

        async with await client.open_writer(ref, desc.digest, desc.size) as writer:
            offset = await writer.start()
            if not writer.already_exists:
                async for chunk in fetch_from(offset):
                    await writer.write(chunk)
                await writer.commit(labels)

    Leaving the block without `commit()` ends the stream uncommitted; the ingest keeps its bytes for a
    later resume (it goes with the lease, or after 24 h without one). Each request gets exactly one
    response, so the stream is driven one request at a time from an asyncio.Queue.
    """

    def __init__(self, client: ContainerdClient, ref: str, expected: str, total: int) -> None:
        self.client = client
        self.ref = ref
        self.expected = expected
        self.total = total
        self.offset = 0
        self.already_exists = False
        self.committed = False
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._call: Any = None
        self._pending: collections.deque[int] = collections.deque()  # offsets of unanswered WRITEs
        self._acked = 0  # the offset containerd last confirmed

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @staticmethod
    async def _requests(queue: asyncio.Queue[Any]) -> AsyncIterator[Any]:
        # Each call reads its own queue: a retried open must not feed (or end) an earlier call's stream.
        while True:
            request = await queue.get()
            if request is None:
                return
            yield request

    def _drop_call(self) -> None:
        """The call ended (an error, or EOF): end its request iterator too, so grpc's task that consumes it
        finishes instead of waiting on the queue for ever (and being reported as destroyed while pending)."""
        call, self._call = self._call, None
        self._pending.clear()
        self._queue.put_nowait(None)
        if call is not None:
            call.cancel()

    async def _roundtrip(self, request: Any) -> Any:
        """Send one request and return its response (after the responses of pipelined WRITEs)."""
        await self.flush()
        self._send(request)
        return await self._receive()

    def _send(self, request: Any) -> None:
        if self._call is None:
            raise RuntimeError("ContentWriter: call start() first")
        self._queue.put_nowait(request)

    async def _receive(self) -> Any:
        if self._call is None:
            raise RuntimeError("ContentWriter: the stream has ended")
        try:
            resp = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            self._drop_call()
            raise map_rpc_error("Content.Write", exc, self.client.address) from exc
        if resp is grpc.aio.EOF:
            self._drop_call()
            raise ContainerdError(f"containerd ended the write of {self.ref} without answering")
        return resp

    async def flush(self) -> None:
        """Wait until containerd has acknowledged every WRITE sent; afterwards `offset` is stored."""
        while self._pending:
            await self._ack_one()

    async def _ack_one(self) -> None:
        resp = await self._receive()
        expected_offset = self._pending.popleft()
        if int(resp.offset) != expected_offset:
            raise ContainerdError(
                f"containerd stored {resp.offset} bytes of {self.ref}, expected {expected_offset}"
            )
        self._acked = expected_offset

    def _open(self) -> None:
        self._queue = asyncio.Queue()
        self._pending.clear()
        self._call = self.client.content_write_stream(self._requests(self._queue))

    async def start(self, *, lock_timeout: float = 60.0) -> int:
        """Open the ingest and return its current offset (> 0 when resuming a partial write).

        When the blob already exists containerd refuses to open it with ALREADY_EXISTS: `already_exists` is
        set and `total` returned, meaning nothing is left to write. Another writer holding the same ref makes
        containerd answer UNAVAILABLE "locked"; like Go's OpenWriter this retries, for as long as that writer
        makes progress (its ingest's offset moves), giving up after `lock_timeout` s without any: a second
        pull of a large layer waits for the first instead of failing after a fixed time.
        """
        delay = 0.016
        clock = StallClock(lock_timeout, time.monotonic())
        while True:
            self._open()
            request = content_pb2.WriteContentRequest(
                action=content_pb2.STAT, ref=self.ref, total=self.total, expected=self.expected
            )
            try:
                resp = await self._roundtrip(request)
            except AlreadyExistsError:
                self.already_exists = True
                self.offset = self.total
                return self.offset
            except RpcError as exc:
                locked = exc.code == grpc.StatusCode.UNAVAILABLE and "locked" in exc.details
                if not locked:
                    raise
                try:
                    status = await self.client.ingest_status(self.ref)
                except RpcError:
                    status = None
                if not clock.observe(None if status is None else status.offset, time.monotonic()):
                    raise ContainerdError(
                        f"blob {self.expected} (ingest {self.ref}) is being written by another client, which "
                        f"made no progress for {lock_timeout:g}s: try again later"
                    ) from exc
                await asyncio.sleep(delay * (0.5 + secrets.randbelow(1000) / 1000))
                delay = min(delay * 2, 2.048)
                continue
            self.offset = self._acked = int(resp.offset)
            return self.offset

    async def truncate(self) -> int:
        """Discard the ingest's bytes and start over at 0 (a WRITE at offset 0 of a non-empty ingest truncates)."""
        resp = await self._roundtrip(content_pb2.WriteContentRequest(action=content_pb2.WRITE, offset=0))
        self.offset = self._acked = int(resp.offset)
        return self.offset

    async def write(self, data: bytes) -> None:
        """Append `data` at the current offset, in messages of at most WRITE_CHUNK_BYTES.

        Up to WRITE_WINDOW_BYTES stay unacknowledged (containerd answers each message, in order), so
        our Python work overlaps containerd's disk writes; `offset` counts bytes sent, `flush()`
        waits for them, and `commit()` flushes first. An error of a pipelined message surfaces on a
        later call. `data` that fits one message (a standard pull's 1 MiB reads) is sent without a copy.
        """
        for piece in _write_pieces(data):
            # offset is always set: > 0 makes containerd verify it, and 0 only happens on an empty ingest.
            request = content_pb2.WriteContentRequest(action=content_pb2.WRITE, offset=self.offset, data=piece)
            self._send(request)
            self.offset += len(piece)
            self._pending.append(self.offset)
            while self._pending and self.offset - self._acked > WRITE_WINDOW_BYTES:
                await self._ack_one()

    async def commit(self, labels: Mapping[str, str] | None = None) -> None:
        """COMMIT with total, expected digest and labels; the blob then exists under its digest.

        A blob that appeared meanwhile (ALREADY_EXISTS) counts as committed; its labels are set by Update.
        A size or digest mismatch raises CommitMismatchError and aborts the ingest: its bytes are wrong,
        so resuming it could never succeed.
        """
        labels = dict(labels or {})
        # offset must be the current one: COMMIT with offset 0 would truncate the ingest first.
        request = content_pb2.WriteContentRequest(
            action=content_pb2.COMMIT,
            offset=self.offset,
            total=self.total,
            expected=self.expected,
            labels=labels,
        )
        await self.flush()  # errors of earlier WRITEs are theirs, not the commit's
        try:
            await self._roundtrip(request)
        except AlreadyExistsError:
            self.already_exists = True
            self.committed = True
            await self.client.content_update_labels(self.expected, labels)
            return
        except RpcError as exc:
            if exc.code != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            await self.client.abort_ingest(self.ref)
            raise CommitMismatchError(
                f"blob {self.expected} ({self.ref}) does not match what was written "
                f"({self.offset} of {self.total} bytes): {exc.details}",
                rpc="Content.Write",
                code=exc.code,
                details=exc.details,
            ) from exc
        self.committed = True
        await self._finish()

    async def _finish(self) -> None:
        """End the stream after COMMIT, draining the final response, which containerd sends twice when a
        Write stream ends cleanly (a deferred send in contentserver.go repeats it)."""
        await self._end_stream()

    async def _end_stream(self) -> None:
        # Half-close rather than cancel: containerd then ends the call cleanly (a cancelled Write is
        # logged as an error in its journal) and releases the ref's lock before we see EOF. Cancel is the
        # fallback when it does not answer promptly.
        call, self._call = self._call, None
        self._pending.clear()  # unanswered WRITEs are drained below; the ingest keeps what arrived
        if call is None:
            return
        self._queue.put_nowait(None)
        try:
            async with asyncio.timeout(2.0):
                while await call.read() is not grpc.aio.EOF:
                    pass
        except (grpc.aio.AioRpcError, TimeoutError):
            pass  # nothing after COMMIT (or after giving up) matters
        finally:
            call.cancel()

    async def aclose(self) -> None:
        """End the stream without committing; the ingest keeps its bytes for a later resume."""
        await self._end_stream()

    close = aclose
