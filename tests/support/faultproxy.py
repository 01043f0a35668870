"""A fault-injecting HTTP proxy in front of the sandbox's docker-registry, for the fault campaign (issue 12).

Loopback only. It runs its own asyncio loop in a thread, so a test (or bench/faults.py) sets a fault, runs
`socirun pull 127.0.0.1:PORT/...` against it, and reads how often the fault fired. Each request gets its own
upstream connection and every answer says `Connection: close`, so a fault on one response never spoils a
connection a client would reuse.

Faults (on GETs of blobs, optionally only of one digest, or of manifests with `manifests=True`), each `times`
times (default once), then the registry's normal answer:

- `reset`: the first `after` body bytes, then a TCP reset (SO_LINGER 0);
- `short`: the first `after` body bytes of a response whose Content-Length promises more, then a clean close;
- `stall`: the first `after` body bytes, then nothing for `stall_s` seconds (or until the client gives up);
- `flip`: the whole body with the byte at offset `after` inverted;
- `503` / `429`: that status with `Retry-After: 1` and no body, without asking the registry.

Every answered blob GET is recorded in `served` (its Range header, status, body bytes sent, the fault it carried),
across inject() calls until clear_served(): what a client asked for again after a fault.

TLS: the registry speaks plain HTTP. A connection that opens with a TLS ClientHello (first byte 0x16) is counted
(`tls_hellos`) and passed to the registry untouched, which answers it with an HTTP 400, as a plain-HTTP port
does: that is what socirun meets when it tries https first (an `--insecure-registry` loopback host) or is told
to use https (hosts.toml `server = "https://..."`).

This is a test tool: it trusts the registry behind it and parses only what it needs of HTTP/1.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

FaultKind = Literal["reset", "short", "stall", "flip", "503", "429"]
FAULT_KINDS: tuple[FaultKind, ...] = ("reset", "short", "stall", "flip", "503", "429")
CHUNK = 64 * 1024
_HEAD_LIMIT = 64 * 1024
_TLS_HANDSHAKE = 0x16


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    after: int = 64 * 1024  # body bytes sent before the fault (flip: the offset of the inverted byte)
    times: int = 1
    digest: str | None = None  # only GETs of this blob; None: any blob
    manifests: bool = False  # GETs of manifests instead of blobs
    stall_s: float = 600.0


@dataclass
class Served:
    """One answered GET of a blob, in `FaultProxy.served`: what was asked and how many body bytes went out."""

    phase: int  # how many times inject() had been called: the responses of one fault round share it
    target: str
    range: str | None  # the request's Range header
    status: int
    sent: int = 0  # body bytes passed to the client
    fault: FaultKind | None = None  # the fault this response carried, when it fired


@dataclass
class _Request:
    method: str
    target: str
    head: bytes  # request line and headers, rewritten for the upstream
    body_length: int
    range: str | None = None


def _parse_head(raw: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = raw.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
    return lines[0], headers


def _rebuild(first: str, headers: list[tuple[str, str]], extra: list[tuple[str, str]]) -> bytes:
    """The head with hop-by-hop connection headers replaced by `Connection: close`."""
    kept = [(n, v) for n, v in headers if n.lower() not in ("connection", "keep-alive", "proxy-connection")]
    lines = [first, *(f"{n}: {v}" for n, v in [*kept, *extra, ("Connection", "close")])]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    return next((v for n, v in headers if n.lower() == name), None)


class FaultProxy:
    """`with FaultProxy("127.0.0.1:5000") as proxy:` … `proxy.address` is "127.0.0.1:PORT"."""

    def __init__(self, upstream: str, listen_host: str = "127.0.0.1") -> None:
        self.upstream_host, port = upstream.rsplit(":", 1)
        self.upstream_port = int(port)
        self.listen_host = listen_host
        self.address = ""
        self.injected = 0  # how many responses the current fault changed
        self.tls_hellos = 0
        self.requests: list[str] = []  # "GET /v2/..." of every request, in arrival order
        # Every answered blob GET, kept across inject() calls (a fault round's pull and the one after it) until
        # clear_served(): which ranges a client asked for again after a fault, and how many bytes each got.
        self.served: list[Served] = []
        self._phase = 0
        self._fault: Fault | None = None
        self._remaining = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._stop: asyncio.Event | None = None

    # -- control (any thread) --------------------------------------------------------------------------------

    def inject(self, fault: Fault | None) -> None:
        """Use `fault` from now on (None: pass everything through); resets the counters."""
        with self._lock:
            self._fault = fault
            self._remaining = fault.times if fault else 0
            self._phase += 1
            self.injected = 0
            self.tls_hellos = 0
            self.requests = []

    def clear_served(self) -> None:
        with self._lock:
            self.served = []

    def _take(self, method: str, target: str) -> Fault | None:
        """The fault to apply to this request, counting it, or None."""
        with self._lock:
            self.requests.append(f"{method} {target}")
            fault = self._fault
            if fault is None or self._remaining <= 0 or method != "GET":
                return None
            path = target.split("?", 1)[0]
            if fault.manifests:
                hit = "/manifests/" in path
            else:
                hit = "/blobs/" in path and (fault.digest is None or path.endswith("/blobs/" + fault.digest))
            if not hit:
                return None
            self._remaining -= 1
            self.injected += 1
            return fault

    def start(self) -> FaultProxy:
        ready: Future[str] = Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="faultproxy", daemon=True)
        self._thread.start()
        self.address = ready.result(timeout=30)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.stop()

    # -- the proxy (its own loop) ----------------------------------------------------------------------------

    def _run(self, ready: Future[str]) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._server = await asyncio.start_server(self._handle, self.listen_host, 0)
            port = self._server.sockets[0].getsockname()[1]
            ready.set_result(f"{self.listen_host}:{port}")
            async with self._server:
                await self._stop.wait()
                self._server.close()
                # Stalled handlers wait for their client; do not wait for them here.
                for task in asyncio.all_tasks() - {asyncio.current_task()}:
                    task.cancel()

        try:
            asyncio.run(main())
        except BaseException as err:  # handed to start(), which raises it in the caller
            if not ready.done():
                ready.set_exception(err)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_writer: asyncio.StreamWriter | None = None
        try:
            first = await reader.readexactly(1)
            up_reader, up_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
            if first[0] == _TLS_HANDSHAKE:
                with self._lock:
                    self.tls_hellos += 1
                up_writer.write(first)
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
                return
            request = await self._read_request(first, reader)
            fault = self._take(request.method, request.target)
            if fault is not None and fault.kind in ("503", "429"):
                await _refuse(writer, fault.kind)
                return
            up_writer.write(request.head)
            if request.body_length:
                up_writer.write(await reader.readexactly(request.body_length))
            await up_writer.drain()
            await self._respond(up_reader, writer, reader, request, fault)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    with contextlib.suppress(Exception):
                        w.close()

    @staticmethod
    async def _read_request(first: bytes, reader: asyncio.StreamReader) -> _Request:
        raw = first + await reader.readuntil(b"\r\n\r\n")
        if len(raw) > _HEAD_LIMIT:
            raise ConnectionError("request head too long")
        line, headers = _parse_head(raw[:-4])
        method, target = [*line.split(" "), "", ""][:2]
        length = int(_header(headers, "content-length") or 0)
        return _Request(method, target, _rebuild(line, headers, []), length, _header(headers, "range"))

    async def _respond(self, up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       client: asyncio.StreamReader, request: _Request, fault: Fault | None) -> None:  # fmt: skip
        raw = await up_reader.readuntil(b"\r\n\r\n")
        line, headers = _parse_head(raw[:-4])
        writer.write(_rebuild(line, headers, []))
        status = int(line.split(" ")[1]) if len(line.split(" ")) > 1 else 0
        length_text = _header(headers, "content-length")
        length = int(length_text) if length_text is not None else None
        body_fault = fault if fault is not None and request.method == "GET" and status in (200, 206) else None
        if body_fault is not None and length is not None and length <= body_fault.after:
            body_fault = None  # too short to be cut where asked: passed through
        if body_fault is None and fault is not None:
            with self._lock:
                self.injected -= 1  # it did not fire after all (a redirect, an error answer, a short body)
        record: Served | None = None
        if request.method == "GET" and "/blobs/" in request.target.split("?", 1)[0]:
            record = Served(self._phase, request.target, request.range, status,
                            fault=body_fault.kind if body_fault is not None else None)  # fmt: skip
            with self._lock:
                self.served.append(record)
        sent = 0
        while True:
            if body_fault is not None and body_fault.kind != "flip" and sent >= body_fault.after:
                await writer.drain()
                await _cut(writer, client, body_fault)
                return
            limit = CHUNK
            if body_fault is not None and body_fault.kind != "flip":
                limit = min(CHUNK, body_fault.after - sent)
            data = await up_reader.read(limit)
            if not data:
                break
            if body_fault is not None and body_fault.kind == "flip" and sent <= body_fault.after < sent + len(data):
                i = body_fault.after - sent
                data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
            sent += len(data)
            if record is not None:
                record.sent = sent
            writer.write(data)
            await writer.drain()
        await writer.drain()


async def _refuse(writer: asyncio.StreamWriter, kind: str) -> None:
    reason = "Service Unavailable" if kind == "503" else "Too Many Requests"
    body = b'{"errors":[{"code":"UNAVAILABLE","message":"injected fault"}]}'
    writer.write(f"HTTP/1.1 {kind} {reason}\r\nRetry-After: 1\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)  # fmt: skip
    await writer.drain()


async def _cut(writer: asyncio.StreamWriter, client: asyncio.StreamReader, fault: Fault) -> None:
    if fault.kind == "reset":
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    elif fault.kind == "stall":
        # Silence until the client gives up (its read times out and it closes) or stall_s passes.
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(fault.stall_s):
                while await client.read(CHUNK):
                    pass
    # short: the finally in _handle closes cleanly (FIN) with the rest of the promised body unsent.


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()
