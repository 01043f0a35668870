"""A small typed asyncio client for containerd's v1 gRPC API (grpc.aio over the unix socket).

Thin on purpose: one method per RPC the pull engine and runtime need, converting protobuf messages to plain
dataclasses and gRPC status codes to socirun's error hierarchy. No pull logic lives here.

Every call carries the `containerd-namespace` metadata; calls made inside `async with client.lease():` (and
in tasks created there, since the lease lives in a ContextVar) also carry `containerd-lease`.
Facts and pitfalls referenced as "§n" are from shared/reference/containerd-client.md.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import os
import re
import secrets
import stat
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Self, TypeVar

import grpc
import grpc.aio
from google.protobuf import empty_pb2, field_mask_pb2  # type: ignore[import-untyped]

from socirun.config import SocirunConfig
from socirun.containerd.api.services.content.v1 import content_pb2, content_pb2_grpc
from socirun.containerd.api.services.diff.v1 import diff_pb2, diff_pb2_grpc
from socirun.containerd.api.services.images.v1 import images_pb2, images_pb2_grpc
from socirun.containerd.api.services.introspection.v1 import introspection_pb2, introspection_pb2_grpc
from socirun.containerd.api.services.leases.v1 import leases_pb2, leases_pb2_grpc
from socirun.containerd.api.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
from socirun.containerd.api.services.version.v1 import version_pb2_grpc
from socirun.containerd.api.types import descriptor_pb2, mount_pb2
from socirun.errors import ContainerdError, UsageError
from socirun.oci import Descriptor

DEFAULT_ADDRESS = "/run/containerd/containerd.sock"
DEFAULT_NAMESPACE = "default"
NAMESPACE_HEADER = "containerd-namespace"
LEASE_HEADER = "containerd-lease"
GC_EXPIRE_LABEL = "containerd.io/gc.expire"
SNAPSHOTTER_PLUGIN_TYPE = "io.containerd.snapshotter.v1"
MIN_VERSION = (1, 6)

# Go's client uses 16 MiB in both directions (§1), and so does containerd's server by default.
MAX_MESSAGE_BYTES = 16 << 20
# The largest WRITE message. 8 MiB messages (a parallel chunk sent whole, uncopied) saved a tenth of socirun's
# CPU in a parallel pull but raised its peak RSS by 40-80 MB (grpc's serialized copies in flight): not worth it.
WRITE_CHUNK_BYTES = 1 << 20
# Bytes sent but not yet acknowledged before waiting for an answer (pipelining; see ContentWriter.write).
WRITE_WINDOW_BYTES = 8 << 20

# identifiers.Validate (§1): also the rule for namespaces.
_IDENTIFIER = re.compile(r"^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$")
_IDENTIFIER_MAX = 76

# Snapshot kinds, as containerd's Go `snapshots.Kind.String()` names them, lower-cased.
_SNAPSHOT_KINDS: dict[int, str] = {
    int(snapshots_pb2.UNKNOWN): "unknown",
    int(snapshots_pb2.VIEW): "view",
    int(snapshots_pb2.ACTIVE): "active",
    int(snapshots_pb2.COMMITTED): "committed",
}

# Substrings grpc-core puts in UNAVAILABLE details when the transport itself failed, as opposed to
# containerd returning UNAVAILABLE for a call (e.g. a locked ingest ref, or a dead proxy snapshotter).
_TRANSPORT_MARKERS = (
    "failed to connect to all addresses",
    "socket closed",
    "connection refused",
    "connection reset",
    "broken pipe",
    "goaway",
    "no such file or directory",
    "permission denied",
)

# How grpc-go (inside containerd) words a failure to reach a proxy snapshotter, e.g. one that is restarting:
# 'connection error: desc = "transport: ... soci.sock: connect: connection refused"', or 'connection closed'
# when the connection dropped. Only Snapshots calls go to such a plugin; grpc-core, our own client, words its
# transport failures otherwise.
_RELAYED_MARKERS = ("connection error: desc =", "connection closed", "transport is closing")
_PROXIED_SERVICE = "Snapshots."
# Waits between tries of a call that failed that way: containerd reconnects to a restarted plugin within a second.
PLUGIN_RETRY_DELAYS_S = (0.25, 0.5, 1.0)

_T = TypeVar("_T")


# ---------------------------------------------------------------------------------------------- errors


class RpcError(ContainerdError):
    """containerd answered a call with an error status. Keeps the RPC name, status code and details."""

    def __init__(self, message: str, *, rpc: str, code: Any, details: str) -> None:
        super().__init__(message)
        self.rpc = rpc
        self.code = code  # a grpc.StatusCode
        self.details = details


class NotFoundError(RpcError):
    """gRPC NOT_FOUND."""


class AlreadyExistsError(RpcError):
    """gRPC ALREADY_EXISTS."""


class CommitMismatchError(RpcError):
    """A Content.Write COMMIT found a size or digest other than the expected one."""


def map_rpc_error(rpc: str, exc: Any, address: str) -> ContainerdError:
    """Turn a grpc.aio.AioRpcError from `rpc` (e.g. "Content.Info") into socirun's error for it."""
    code = exc.code()
    details = str(exc.details() or "")
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFoundError(f"containerd {rpc}: {details}", rpc=rpc, code=code, details=details)
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return AlreadyExistsError(f"containerd {rpc}: {details}", rpc=rpc, code=code, details=details)
    if code == grpc.StatusCode.UNAVAILABLE and _is_relayed_transport_failure(rpc, details):
        return RpcError(
            f"containerd {rpc}: containerd could not reach the plugin that serves it ({details}); is that "
            "snapshotter running? (`socirun doctor` checks)",
            rpc=rpc,
            code=code,
            details=details,
        )
    if code == grpc.StatusCode.UNAVAILABLE and _is_transport_failure(details):
        return RpcError(
            f"containerd at {address} is not answering ({rpc}: {details}): is containerd running?",
            rpc=rpc,
            code=code,
            details=details,
        )
    name = getattr(code, "name", str(code))
    return RpcError(f"containerd {rpc} failed ({name}): {details}", rpc=rpc, code=code, details=details)


def _is_relayed_transport_failure(rpc: str, details: str) -> bool:
    return rpc.startswith(_PROXIED_SERVICE) and any(marker in details for marker in _RELAYED_MARKERS)


def _is_transport_failure(details: str) -> bool:
    lowered = details.lower()
    return any(marker in lowered for marker in _TRANSPORT_MARKERS)


# ---------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Mount:
    type: str
    source: str
    target: str = ""
    options: tuple[str, ...] = ()

    def to_proto(self) -> Any:
        return mount_pb2.Mount(type=self.type, source=self.source, target=self.target, options=self.options)

    @classmethod
    def from_proto(cls, msg: Any) -> Mount:
        return cls(str(msg.type), str(msg.source), str(msg.target), tuple(str(o) for o in msg.options))


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    parent: str
    kind: str  # "committed", "active", "view" or "unknown"
    labels: dict[str, str] = field(hash=False)


@dataclass(frozen=True)
class ContentInfo:
    digest: str
    size: int
    labels: dict[str, str] = field(hash=False)
    created_at: float = 0.0  # seconds since the epoch


@dataclass(frozen=True)
class IngestStatus:
    ref: str
    offset: int
    total: int


@dataclass(frozen=True)
class PluginInfo:
    type: str
    id: str
    ok: bool
    error: str  # init_err.message when not ok (contains "skip plugin" for plugins skipped on purpose)
    exports: dict[str, str] = field(hash=False)


@dataclass(frozen=True)
class LeaseInfo:
    id: str
    labels: dict[str, str] = field(hash=False)
    created_at: float = 0.0  # seconds since the epoch


@dataclass(frozen=True)
class ImageRecord:
    name: str
    target: Descriptor
    labels: dict[str, str] = field(hash=False)


def descriptor_to_proto(desc: Descriptor) -> Any:
    return descriptor_pb2.Descriptor(
        media_type=desc.media_type, digest=desc.digest, size=desc.size, annotations=dict(desc.annotations)
    )


def descriptor_from_proto(msg: Any) -> Descriptor:
    return Descriptor(
        media_type=str(msg.media_type),
        digest=str(msg.digest),
        size=int(msg.size),
        annotations={str(k): str(v) for k, v in msg.annotations.items()},
    )


def _labels(msg_map: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in msg_map.items()}


def _seconds(ts: Any) -> float:
    return float(ts.seconds) + float(ts.nanos) / 1e9


def _snapshot_info(info: Any) -> SnapshotInfo:
    return SnapshotInfo(
        name=str(info.name),
        parent=str(info.parent),
        kind=_SNAPSHOT_KINDS.get(int(info.kind), "unknown"),
        labels=_labels(info.labels),
    )


def _content_info(info: Any) -> ContentInfo:
    return ContentInfo(
        digest=str(info.digest),
        size=int(info.size),
        labels=_labels(info.labels),
        created_at=_seconds(info.created_at),
    )


def _ingest_status(status: Any) -> IngestStatus:
    return IngestStatus(ref=str(status.ref), offset=int(status.offset), total=int(status.total))


# ---------------------------------------------------------------------------------------------- config


def resolve_address(flag: str | None, env: Mapping[str, str]) -> str:
    """The containerd socket path: --address, else CONTAINERD_ADDRESS, else the default; drops `unix://`."""
    address = flag or env.get("CONTAINERD_ADDRESS") or DEFAULT_ADDRESS
    address = _socket_path(address)
    if not address:
        raise UsageError("containerd address is empty: pass a socket path such as " + DEFAULT_ADDRESS)
    return address


def resolve_namespace(flag: str | None, env: Mapping[str, str]) -> str:
    """The containerd namespace: --namespace, else CONTAINERD_NAMESPACE, else "default"; validated as §1."""
    namespace = flag or env.get("CONTAINERD_NAMESPACE") or DEFAULT_NAMESPACE
    if len(namespace) > _IDENTIFIER_MAX or not _IDENTIFIER.match(namespace):
        raise UsageError(
            f'invalid containerd namespace "{namespace}": use letters and digits, separated by single '
            f'".", "_" or "-", at most {_IDENTIFIER_MAX} characters'
        )
    return namespace


def resolve_target(address: str | None, namespace: str | None, config: SocirunConfig) -> tuple[str, str]:
    """(address, namespace): the flag, else CONTAINERD_ADDRESS / CONTAINERD_NAMESPACE, else socirun's config
    file (`load_config` already lets the environment override the files), else containerd's defaults."""
    return (resolve_address(address or config.address, os.environ),
            resolve_namespace(namespace or config.namespace, os.environ))


def _socket_path(address: str) -> str:
    if address.startswith("unix://"):
        return address[len("unix://") :]
    if address.startswith("unix:"):
        return address[len("unix:") :]
    return address


def parse_version(text: str) -> tuple[int, int] | None:
    """(major, minor) of a containerd version string ("1.6.20~ds1", "v2.0.0"); None when unparsable."""
    match = re.match(r"^v?(\d+)\.(\d+)", text.strip())
    return (int(match.group(1)), int(match.group(2))) if match else None


def _check_socket(path: str) -> None:
    """Fail with one sentence when the socket is missing, not a socket, or not ours to use."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ContainerdError(
            f"containerd socket {path} not found: is containerd running? set --address or CONTAINERD_ADDRESS"
        ) from None
    except PermissionError:
        raise ContainerdError(
            f"permission denied reaching containerd socket {path}: run as root or ask for access to it"
        ) from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ContainerdError(
            f"{path} is not a unix socket: set --address or CONTAINERD_ADDRESS to containerd's socket"
        )
    # connect(2) on a unix socket needs write permission on it.
    if not os.access(path, os.R_OK | os.W_OK):
        raise ContainerdError(
            f"permission denied on containerd socket {path}: run as root or ask for access to the socket"
        )


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _new_lease_id() -> str:
    # Like Go's leases.WithRandomID (time + random), hex so it is also a valid identifier.
    return f"socirun-{time.time_ns()}-{secrets.token_hex(3)}"


# ---------------------------------------------------------------------------------------------- client


class ContainerdClient:
    """One grpc.aio channel to containerd, bound to one namespace. Create with `await connect(...)`."""

    def __init__(self, channel: Any, address: str, namespace: str) -> None:
        self.address = address
        self.namespace = namespace
        self._channel = channel
        # Per-client, so a lease taken on one daemon never leaks into calls to another.
        self._lease: contextvars.ContextVar[str | None] = contextvars.ContextVar(
            f"containerd-lease-{id(self)}", default=None
        )
        self._version_stub = version_pb2_grpc.VersionStub(channel)
        self._leases = leases_pb2_grpc.LeasesStub(channel)
        self._content = content_pb2_grpc.ContentStub(channel)
        self._snapshots = snapshots_pb2_grpc.SnapshotsStub(channel)
        self._diff = diff_pb2_grpc.DiffStub(channel)
        self._images = images_pb2_grpc.ImagesStub(channel)
        self._introspection = introspection_pb2_grpc.IntrospectionStub(channel)

    @classmethod
    async def connect(cls, address: str, namespace: str, *, timeout: float = 5.0) -> ContainerdClient:
        """Open the channel; check containerd answers and is 1.6+ (errors: one sentence, exit 125)."""
        path = _socket_path(address)
        _check_socket(path)
        channel = grpc.aio.insecure_channel(
            f"unix:{path}",
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        client = cls(channel, path, namespace)
        try:
            version = await client._probe_version(timeout)
        except BaseException:
            await channel.close()
            raise
        parsed = parse_version(version)
        if parsed is not None and parsed < MIN_VERSION:
            await channel.close()
            raise ContainerdError(
                f"containerd {version} at {path} is too old: socirun needs containerd 1.6 or newer"
            )
        return client

    async def _probe_version(self, timeout: float) -> str:
        path = self.address
        try:
            # No wait_for_ready: a refused or forbidden connect fails at once with a useful detail.
            resp = await self._version_stub.Version(
                empty_pb2.Empty(), metadata=self.metadata(), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            details = str(exc.details() or "")
            lowered = details.lower()
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise ContainerdError(
                    f"containerd at {path} did not answer within {timeout:g}s: is it running and healthy?"
                ) from exc
            if "permission denied" in lowered:
                raise ContainerdError(
                    f"permission denied on containerd socket {path}: "
                    "run as root or ask for access to the socket"
                ) from exc
            if "connection refused" in lowered or "no such file" in lowered:
                raise ContainerdError(
                    f"nothing is listening on containerd socket {path}: is containerd running? "
                    "set --address or CONTAINERD_ADDRESS"
                ) from exc
            raise ContainerdError(f"cannot talk to containerd at {path}: {details}") from exc
        return str(resp.version)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------------------------------ plumbing

    @property
    def channel(self) -> Any:
        """The grpc.aio channel, for services this client does not wrap (build stubs on it, use `call`)."""
        return self._channel

    @property
    def current_lease(self) -> str | None:
        """The lease id calls from this context carry, if any."""
        return self._lease.get()

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """gRPC metadata for a call from the current context: namespace, plus the lease when inside one."""
        lease = self._lease.get()
        if lease is None:
            return ((NAMESPACE_HEADER, self.namespace),)
        return ((NAMESPACE_HEADER, self.namespace), (LEASE_HEADER, lease))

    async def call(
        self, rpc: str, method: Callable[..., Any], request: Any, *, timeout: float | None = None
    ) -> Any:
        """Invoke a unary stub method with our metadata, mapping errors; `rpc` names it ("Images.Get").

        A Snapshots call that containerd could not pass on to a proxy snapshotter (one restarting, or whose
        connection just dropped) is tried again after PLUGIN_RETRY_DELAYS_S. Repeating it is safe: the call
        either never reached the plugin or, for a Prepare that did, the repeat fails with ALREADY_EXISTS, which
        the pull handles, and the first snapshot goes with the pull's lease. Calls with a timeout are probes
        that must answer fast, and are not retried.
        """
        delays = iter(PLUGIN_RETRY_DELAYS_S if timeout is None else ())
        while True:
            try:
                return await method(request, metadata=self.metadata(), timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                delay = next(delays, None)
                relayed = exc.code() == grpc.StatusCode.UNAVAILABLE and _is_relayed_transport_failure(
                    rpc, str(exc.details() or ""))
                if delay is None or not relayed:
                    raise map_rpc_error(rpc, exc, self.address) from exc
            await asyncio.sleep(delay)

    async def stream(
        self, rpc: str, method: Callable[..., Any], request: Any, *, timeout: float | None = None
    ) -> AsyncIterator[Any]:
        """Invoke a server-streaming stub method with our metadata and yield its responses."""
        call = method(request, metadata=self.metadata(), timeout=timeout)
        try:
            async for resp in call:
                yield resp
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(rpc, exc, self.address) from exc
        finally:
            call.cancel()  # no-op when finished; stops the stream when the consumer left early

    async def _optional(self, coro: Awaitable[_T]) -> _T | None:
        """Await `coro`, turning NotFoundError into None."""
        try:
            return await coro
        except NotFoundError:
            return None

    async def version(self) -> str:
        resp = await self.call("Version.Version", self._version_stub.Version, empty_pb2.Empty())
        return str(resp.version)

    # ------------------------------------------------------------------------------------ leases

    @contextlib.asynccontextmanager
    async def lease(
        self, expire_after: float = 24 * 3600, labels: Mapping[str, str] | None = None
    ) -> AsyncIterator[str]:
        """Hold a lease for the block: GC keeps everything created inside it (§2). Yields the lease id.

        The lease expires on its own after `expire_after` seconds, so a crashed socirun leaks nothing for
        long. On exit it is deleted with sync=False (GC runs later), even on an exception or cancellation.
        """
        expire = _rfc3339(datetime.now(UTC) + timedelta(seconds=expire_after))
        lease_id = await self.create_lease({**(labels or {}), GC_EXPIRE_LABEL: expire})
        token = self._lease.set(lease_id)
        try:
            yield lease_id
        except BaseException:
            self._lease.reset(token)
            # The body's error wins; a failed delete only means the lease lingers until it expires.
            with contextlib.suppress(Exception):
                await self._shielded_delete_lease(lease_id)
            raise
        self._lease.reset(token)
        await self._shielded_delete_lease(lease_id)

    async def create_lease(self, labels: Mapping[str, str], lease_id: str | None = None) -> str:
        """Leases.Create with these labels (put `containerd.io/gc.expire` in them!); returns the id.

        For lifetimes `lease()` does not fit; pair with `using_lease` and `delete_lease`.
        """
        lease_id = lease_id or _new_lease_id()
        request = leases_pb2.CreateRequest(id=lease_id, labels=dict(labels))
        await self.call("Leases.Create", self._leases.Create, request)
        return lease_id

    @contextlib.contextmanager
    def using_lease(self, lease_id: str) -> Iterator[None]:
        """Calls from this context (and tasks created in it) carry `lease_id` while inside the block."""
        token = self._lease.set(lease_id)
        try:
            yield
        finally:
            self._lease.reset(token)

    async def _shielded_delete_lease(self, lease_id: str) -> None:
        task = asyncio.ensure_future(self.delete_lease(lease_id))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            # We were cancelled while the delete runs on: let it finish, and retrieve its outcome so
            # asyncio does not warn about an unretrieved exception.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            raise

    async def delete_lease(self, lease_id: str, *, sync: bool = False) -> None:
        """Leases.Delete; NOT_FOUND is ignored. sync=True makes containerd run GC before answering."""
        with contextlib.suppress(NotFoundError):
            await self.call(
                "Leases.Delete", self._leases.Delete, leases_pb2.DeleteRequest(id=lease_id, sync=sync)
            )

    async def list_leases(self) -> list[str]:
        return [lease.id for lease in await self.list_leases_info()]

    async def list_leases_info(self, filters: Sequence[str] = ()) -> list[LeaseInfo]:
        """Leases.List with labels; filters like `labels."io.socirun/purpose"==pull`."""
        resp = await self.call(
            "Leases.List", self._leases.List, leases_pb2.ListRequest(filters=list(filters))
        )
        return [
            LeaseInfo(id=str(lease.id), labels=_labels(lease.labels), created_at=_seconds(lease.created_at))
            for lease in resp.leases
        ]

    async def add_lease_resource(self, lease_id: str, resource_id: str, resource_type: str) -> None:
        """Leases.AddResource; type is "content", "ingests" or "snapshots/<snapshotter>" (§2)."""
        request = leases_pb2.AddResourceRequest(
            id=lease_id, resource=leases_pb2.Resource(id=resource_id, type=resource_type)
        )
        await self.call("Leases.AddResource", self._leases.AddResource, request)

    async def lease_resources(self, lease_id: str) -> list[tuple[str, str]]:
        """(type, id) of what a lease holds: type is "content", "ingests" or "snapshots/<snapshotter>"."""
        resp = await self.call(
            "Leases.ListResources", self._leases.ListResources, leases_pb2.ListResourcesRequest(id=lease_id)
        )
        return [(str(r.type), str(r.id)) for r in resp.resources]

    # ------------------------------------------------------------------------------------ content

    async def content_info(self, digest: str) -> ContentInfo | None:
        resp = await self._optional(
            self.call("Content.Info", self._content.Info, content_pb2.InfoRequest(digest=digest))
        )
        return None if resp is None else _content_info(resp.info)

    async def content_update_labels(self, digest: str, labels: Mapping[str, str]) -> None:
        """Set (or, with value "", delete) the given labels only; other labels stay (mask labels.<key>)."""
        if not labels:
            return  # an empty mask would replace *all* labels with none
        request = content_pb2.UpdateRequest(
            info=content_pb2.Info(digest=digest, labels=dict(labels)),
            update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{key}" for key in labels]),
        )
        await self.call("Content.Update", self._content.Update, request)

    async def list_content(self, filters: Sequence[str] = ()) -> list[ContentInfo]:
        out: list[ContentInfo] = []
        request = content_pb2.ListContentRequest(filters=list(filters))
        async for resp in self.stream("Content.List", self._content.List, request):
            out.extend(_content_info(info) for info in resp.info)
        return out

    async def ingest_status(self, ref: str) -> IngestStatus | None:
        resp = await self._optional(
            self.call("Content.Status", self._content.Status, content_pb2.StatusRequest(ref=ref))
        )
        return None if resp is None else _ingest_status(resp.status)

    async def list_ingests(self, filters: Sequence[str] = ()) -> list[IngestStatus]:
        """Active ingests; filters use containerd syntax on the only field, ref (e.g. `ref~="^layer-"`)."""
        request = content_pb2.ListStatusesRequest(filters=list(filters))
        resp = await self.call("Content.ListStatuses", self._content.ListStatuses, request)
        return [_ingest_status(s) for s in resp.statuses]

    async def abort_ingest(self, ref: str) -> None:
        with contextlib.suppress(NotFoundError):
            await self.call("Content.Abort", self._content.Abort, content_pb2.AbortRequest(ref=ref))

    async def open_writer(self, ref: str, expected: str, total: int) -> ContentWriter:
        """A writer for blob `expected` of `total` bytes under ingest `ref`; call `start()` next."""
        return ContentWriter(self, ref, expected, total)

    async def write_content(
        self,
        ref: str,
        expected: str,
        total: int,
        chunks: AsyncIterable[bytes] | Callable[[int], AsyncIterable[bytes]],
        *,
        labels: Mapping[str, str] | None = None,
        resume: bool = True,
        on_written: Callable[[int], None] | None = None,
    ) -> bool:
        """Write and commit one blob; returns False when it already existed (its labels are then updated).

        `chunks` is either a callable `offset -> AsyncIterable[bytes]` yielding the blob *from* that
        offset (the resume-friendly form: fetch with an HTTP Range from there), or an AsyncIterable
        yielding the blob from byte 0, of which the bytes already in the ingest are skipped (the fetch is
        then repeated in full; only the write is saved). resume=False discards a partial ingest first.
        `on_written` receives the ingest's offset (bytes handed to containerd so far, resumed ones
        included) once after opening and after every chunk.
        """
        labels = dict(labels or {})
        async with await self.open_writer(ref, expected, total) as writer:
            offset = await writer.start()
            if writer.already_exists:
                await self.content_update_labels(expected, labels)
                return False
            # All bytes already there (an interrupted commit, or a blob containerd shares from another
            # namespace, which cannot be truncated): nothing to fetch, just COMMIT, as Go's fetch does.
            # The COMMIT still checks size and digest.
            complete = bool(total) and offset >= total
            if offset and not resume and not complete:
                offset = await writer.truncate()
            if on_written is not None:
                on_written(offset)
            if not complete:
                await self._feed(writer, chunks, offset, on_written)
            await writer.commit(labels)
            return not writer.already_exists

    @staticmethod
    async def _feed(
        writer: ContentWriter,
        chunks: AsyncIterable[bytes] | Callable[[int], AsyncIterable[bytes]],
        offset: int,
        on_written: Callable[[int], None] | None,
    ) -> None:
        if callable(chunks):
            source = chunks(offset)
            skip = 0
        else:
            source = chunks
            skip = offset
        async for chunk in source:
            if skip:
                dropped = min(skip, len(chunk))
                chunk = chunk[dropped:]
                skip -= dropped
                if not chunk:
                    continue
            await writer.write(chunk)
            if on_written is not None:
                on_written(writer.offset)

    async def write_blob(self, ref: str, expected: str, data: bytes, labels: Mapping[str, str]) -> None:
        """Write a small in-memory blob (manifest, config, index); if it exists, only set the labels."""

        async def one_chunk() -> AsyncIterator[bytes]:
            yield data

        await self.write_content(ref, expected, len(data), one_chunk(), labels=labels)

    async def read_content(self, digest: str) -> bytes:
        parts: list[bytes] = []
        request = content_pb2.ReadContentRequest(digest=digest)
        async for resp in self.stream("Content.Read", self._content.Read, request):
            parts.append(bytes(resp.data))
        return b"".join(parts)

    async def delete_content(self, digest: str) -> None:
        """Content.Delete; NOT_FOUND is ignored."""
        with contextlib.suppress(NotFoundError):
            await self.call(
                "Content.Delete", self._content.Delete, content_pb2.DeleteContentRequest(digest=digest)
            )

    # ------------------------------------------------------------------------------------ snapshots

    async def snapshot_stat(self, snapshotter: str, key: str) -> SnapshotInfo | None:
        request = snapshots_pb2.StatSnapshotRequest(snapshotter=snapshotter, key=key)
        resp = await self._optional(self.call("Snapshots.Stat", self._snapshots.Stat, request))
        return None if resp is None else _snapshot_info(resp.info)

    async def snapshot_prepare(
        self, snapshotter: str, key: str, parent: str, labels: Mapping[str, str]
    ) -> list[Mount]:
        """Snapshots.Prepare -> mounts. AlreadyExistsError when the key or the snapshot.ref target exists."""
        request = snapshots_pb2.PrepareSnapshotRequest(
            snapshotter=snapshotter, key=key, parent=parent, labels=dict(labels)
        )
        resp = await self.call("Snapshots.Prepare", self._snapshots.Prepare, request)
        return [Mount.from_proto(m) for m in resp.mounts]

    async def snapshot_view(
        self, snapshotter: str, key: str, parent: str, labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """Snapshots.View: a read-only snapshot of `parent` -> mounts."""
        request = snapshots_pb2.ViewSnapshotRequest(
            snapshotter=snapshotter, key=key, parent=parent, labels=dict(labels or {})
        )
        resp = await self.call("Snapshots.View", self._snapshots.View, request)
        return [Mount.from_proto(m) for m in resp.mounts]

    async def snapshot_commit(self, snapshotter: str, name: str, key: str, labels: Mapping[str, str]) -> None:
        """Snapshots.Commit active `key` as `name`. AlreadyExistsError when `name` exists."""
        request = snapshots_pb2.CommitSnapshotRequest(
            snapshotter=snapshotter, name=name, key=key, labels=dict(labels)
        )
        await self.call("Snapshots.Commit", self._snapshots.Commit, request)

    async def snapshot_remove(self, snapshotter: str, key: str) -> None:
        """Snapshots.Remove; NOT_FOUND is ignored."""
        request = snapshots_pb2.RemoveSnapshotRequest(snapshotter=snapshotter, key=key)
        with contextlib.suppress(NotFoundError):
            await self.call("Snapshots.Remove", self._snapshots.Remove, request)

    async def snapshot_mounts(self, snapshotter: str, key: str) -> list[Mount]:
        request = snapshots_pb2.MountsRequest(snapshotter=snapshotter, key=key)
        resp = await self.call("Snapshots.Mounts", self._snapshots.Mounts, request)
        return [Mount.from_proto(m) for m in resp.mounts]

    async def snapshot_list(
        self, snapshotter: str, filters: Sequence[str] = (), timeout: float | None = None
    ) -> list[SnapshotInfo]:
        """Snapshots.List. With a timeout it doubles as a liveness probe of a proxy snapshotter (§11)."""
        request = snapshots_pb2.ListSnapshotsRequest(snapshotter=snapshotter, filters=list(filters))
        out: list[SnapshotInfo] = []
        async for resp in self.stream("Snapshots.List", self._snapshots.List, request, timeout=timeout):
            out.extend(_snapshot_info(info) for info in resp.info)
        return out

    # ------------------------------------------------------------------------------------ diff

    async def diff_apply(self, desc: Descriptor, mounts: Sequence[Mount]) -> Descriptor:
        """Diff.Apply: containerd reads blob `desc` from its content store and unpacks it onto `mounts`.

        Returns the applied (uncompressed) descriptor, whose digest must equal the layer's diff_id (§6).
        """
        request = diff_pb2.ApplyRequest(diff=descriptor_to_proto(desc), mounts=[m.to_proto() for m in mounts])
        resp = await self.call("Diff.Apply", self._diff.Apply, request)
        return descriptor_from_proto(resp.applied)

    # ------------------------------------------------------------------------------------ images

    async def image_get(self, name: str) -> ImageRecord | None:
        resp = await self._optional(
            self.call("Images.Get", self._images.Get, images_pb2.GetImageRequest(name=name))
        )
        return None if resp is None else _image_record(resp.image)

    async def image_create_or_update(
        self, name: str, target: Descriptor, labels: Mapping[str, str] | None = None
    ) -> None:
        """Images.Create; on ALREADY_EXISTS, Update with no mask; on its NOT_FOUND, Create again (§5)."""
        image = images_pb2.Image(name=name, target=descriptor_to_proto(target), labels=dict(labels or {}))
        # Bounded: the race (deleted between our Create and Update) needs another client to be busy.
        for _ in range(3):
            try:
                await self.call(
                    "Images.Create", self._images.Create, images_pb2.CreateImageRequest(image=image)
                )
                return
            except AlreadyExistsError:
                pass
            try:
                await self.call(
                    "Images.Update", self._images.Update, images_pb2.UpdateImageRequest(image=image)
                )
                return
            except NotFoundError:
                continue
        raise ContainerdError(f"image {name} keeps appearing and disappearing: another client is changing it")

    async def image_list(self, filters: Sequence[str] = ()) -> list[ImageRecord]:
        resp = await self.call(
            "Images.List", self._images.List, images_pb2.ListImagesRequest(filters=list(filters))
        )
        return [_image_record(image) for image in resp.images]

    async def image_delete(self, name: str, sync: bool = False) -> None:
        """Images.Delete; NOT_FOUND is ignored. sync=True makes containerd run GC before answering."""
        with contextlib.suppress(NotFoundError):
            await self.call(
                "Images.Delete", self._images.Delete, images_pb2.DeleteImageRequest(name=name, sync=sync)
            )

    # ------------------------------------------------------------------------------------ introspection

    async def plugins(self, filters: Sequence[str] = ()) -> list[PluginInfo]:
        """Introspection.Plugins; filters on `type`, `id`: "type==io.containerd.snapshotter.v1,id==soci"."""
        request = introspection_pb2.PluginsRequest(filters=list(filters))
        resp = await self.call("Introspection.Plugins", self._introspection.Plugins, request)
        return [
            PluginInfo(
                type=str(p.type),
                id=str(p.id),
                ok=not p.HasField("init_err"),
                error=str(p.init_err.message) if p.HasField("init_err") else "",
                exports=_labels(p.exports),
            )
            for p in resp.plugins
        ]

    async def snapshotters(self) -> list[PluginInfo]:
        """Every snapshotter plugin (ok or not). A proxy plugin is ok even if its socket is dead (§11)."""
        return await self.plugins([f"type=={SNAPSHOTTER_PLUGIN_TYPE}"])


def _image_record(image: Any) -> ImageRecord:
    return ImageRecord(
        name=str(image.name), target=descriptor_from_proto(image.target), labels=_labels(image.labels)
    )


# ---------------------------------------------------------------------------------------------- writer


def _write_pieces(data: bytes) -> Iterator[bytes]:
    if len(data) <= WRITE_CHUNK_BYTES and type(data) is bytes:
        yield data
        return
    view = memoryview(data)
    for start in range(0, len(view), WRITE_CHUNK_BYTES):
        yield bytes(view[start : start + WRITE_CHUNK_BYTES])


class ContentWriter:
    """One Content.Write stream (§3): STAT to open/resume, WRITEs at the current offset, COMMIT.

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
        self._call = self.client._content.Write(self._requests(self._queue), metadata=self.client.metadata())

    async def start(self, *, lock_timeout: float = 60.0) -> int:
        """Open the ingest and return its current offset (> 0 when resuming a partial write).

        When the blob already exists containerd refuses to open it (pitfall #3): `already_exists` is set
        and `total` returned, meaning nothing is left to write. Another writer holding the same ref makes
        containerd answer UNAVAILABLE "locked"; like Go's OpenWriter this retries, for `lock_timeout` s.
        """
        delay = 0.016
        deadline = time.monotonic() + lock_timeout
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
                if time.monotonic() >= deadline:
                    raise ContainerdError(
                        f"blob {self.expected} (ingest {self.ref}) is being written by another client and "
                        f"stayed locked for {lock_timeout:g}s: try again later"
                    ) from exc
                await asyncio.sleep(delay * (0.5 + secrets.randbelow(1000) / 1000))
                delay = min(delay * 2, 2.048)
                continue
            self.offset = self._acked = int(resp.offset)
            return self.offset

    async def truncate(self) -> int:
        """Discard the ingest's bytes and start over at 0 (a WRITE at offset 0 truncates, §3)."""
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
        # offset must be the current one: COMMIT with offset 0 would truncate the ingest first (§3).
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
        """End the stream after COMMIT, draining the duplicate final response (pitfall #4)."""
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
