"""A small typed asyncio client for containerd's v1 gRPC API (grpc.aio over the unix socket).

Thin on purpose: one method per RPC the pull engine and runtime need, converting protobuf messages to plain
dataclasses (types.py) and gRPC status codes to socirun's error hierarchy (errors.py). No pull logic lives here;
the Content.Write stream is writer.py's, containers and tasks are runtime.py's.

Every call carries the `containerd-namespace` metadata; calls made inside `async with client.lease():` (and
in tasks created there, since the lease lives in a ContextVar) also carry `containerd-lease`.
The services' protocols are documented in containerd's protos,
https://github.com/containerd/containerd/tree/v1.6.20/api/services.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import re
import secrets
import stat
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
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
from socirun.containerd.errors import AlreadyExistsError, NotFoundError, is_relayed_transport_failure, map_rpc_error
from socirun.containerd.types import (
    ContentInfo,
    ImageRecord,
    IngestStatus,
    LeaseInfo,
    Mount,
    PluginInfo,
    SnapshotInfo,
    descriptor_from_proto,
    descriptor_to_proto,
)
from socirun.containerd.writer import ContentWriter
from socirun.errors import ContainerdError, UsageError
from socirun.oci import Descriptor

DEFAULT_ADDRESS = "/run/containerd/containerd.sock"
DEFAULT_NAMESPACE = "default"
NAMESPACE_HEADER = "containerd-namespace"
LEASE_HEADER = "containerd-lease"
GC_EXPIRE_LABEL = "containerd.io/gc.expire"
SNAPSHOTTER_PLUGIN_TYPE = "io.containerd.snapshotter.v1"
MIN_VERSION = (1, 6)

# Go's client uses 16 MiB in both directions (defaults.DefaultMaxRecvMsgSize/DefaultMaxSendMsgSize in
# https://github.com/containerd/containerd/blob/v1.6.20/defaults/defaults.go), and so does containerd's server.
MAX_MESSAGE_BYTES = 16 << 20

# containerd's identifiers.Validate, also the rule for namespaces:
# https://github.com/containerd/containerd/blob/v1.6.20/identifiers/validate.go
_IDENTIFIER = re.compile(r"^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$")
_IDENTIFIER_MAX = 76

# Waits between tries of a call containerd could not pass on to a proxy snapshotter (errors.py tells those
# apart): containerd reconnects to a restarted plugin within a second.
PLUGIN_RETRY_DELAYS_S = (0.25, 0.5, 1.0)

_T = TypeVar("_T")


# ---------------------------------------------------------------------------------------------- config


def resolve_address(flag: str | None, env: Mapping[str, str]) -> str:
    """The containerd socket path: --address, else CONTAINERD_ADDRESS, else the default; drops `unix://`."""
    address = flag or env.get("CONTAINERD_ADDRESS") or DEFAULT_ADDRESS
    address = _socket_path(address)
    if not address:
        raise UsageError("containerd address is empty: pass a socket path such as " + DEFAULT_ADDRESS)
    return address


def resolve_namespace(flag: str | None, env: Mapping[str, str]) -> str:
    """The containerd namespace: --namespace, else CONTAINERD_NAMESPACE, else "default"; validated as identifiers."""
    namespace = flag or env.get("CONTAINERD_NAMESPACE") or DEFAULT_NAMESPACE
    if len(namespace) > _IDENTIFIER_MAX or not _IDENTIFIER.fullmatch(namespace):  # `$` takes "x\n"
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


async def proxy_snapshotter_problem(address: str, namespace: str, timeout: float) -> str | None:
    """Ask a proxy snapshotter itself (its own socket, the Snapshots API it serves to containerd) for its
    snapshots: None when it answers, else why not. Through containerd, Snapshots.List is answered from
    containerd's own metadata and reaches the plugin only for snapshots it already has, so a dead snapshotter
    with no snapshot in the namespace would look alive."""
    channel = grpc.aio.insecure_channel(f"unix:{address}")
    try:
        stub = snapshots_pb2_grpc.SnapshotsStub(channel)
        call = stub.List(snapshots_pb2.ListSnapshotsRequest(snapshotter="soci"),
                         metadata=(("containerd-namespace", namespace),), timeout=timeout)
        async for _ in call:
            break
        call.cancel()
    except grpc.aio.AioRpcError as exc:
        if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return None  # an answer, even an error ("bucket does not exist" on an empty root), means it is up
        text: str = exc.details() or exc.code().name
        return (text.strip().splitlines() or ["no answer"])[0][:200]
    finally:
        await channel.close()
    return None


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
                relayed = exc.code() == grpc.StatusCode.UNAVAILABLE and is_relayed_transport_failure(
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

    def content_write_stream(self, requests: AsyncIterator[Any]) -> Any:
        """Open a Content.Write bidirectional stream fed by `requests`, with our metadata (ContentWriter's)."""
        return self._content.Write(requests, metadata=self.metadata())

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
        """Hold a lease for the block: GC keeps everything created inside it. Yields the lease id.

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
            LeaseInfo.from_proto(lease) for lease in resp.leases
        ]

    async def add_lease_resource(self, lease_id: str, resource_id: str, resource_type: str) -> None:
        """Leases.AddResource; type is "content", "ingests" or "snapshots/<snapshotter>"."""
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
        return None if resp is None else ContentInfo.from_proto(resp.info)

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
            out.extend(ContentInfo.from_proto(info) for info in resp.info)
        return out

    async def ingest_status(self, ref: str) -> IngestStatus | None:
        resp = await self._optional(
            self.call("Content.Status", self._content.Status, content_pb2.StatusRequest(ref=ref))
        )
        return None if resp is None else IngestStatus.from_proto(resp.status)

    async def list_ingests(self, filters: Sequence[str] = ()) -> list[IngestStatus]:
        """Active ingests; filters use containerd syntax on the only field, ref (e.g. `ref~="^layer-"`)."""
        request = content_pb2.ListStatusesRequest(filters=list(filters))
        resp = await self.call("Content.ListStatuses", self._content.ListStatuses, request)
        return [IngestStatus.from_proto(s) for s in resp.statuses]

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
        return None if resp is None else SnapshotInfo.from_proto(resp.info)

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

    async def snapshot_commit(self, snapshotter: str, name: str, key: str, labels: Mapping[str, str],
                              parent: str = "") -> None:
        """Snapshots.Commit active `key` as `name`. AlreadyExistsError when `name` exists. `parent`: the parent
        of a snapshot prepared without one (only for a snapshotter with the "rebase" capability: containerd 1.6
        ignores the field, and the layer would be committed without its parent)."""
        request = snapshots_pb2.CommitSnapshotRequest(
            snapshotter=snapshotter, name=name, key=key, labels=dict(labels), parent=parent
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
        """Snapshots.List. With a timeout it doubles as a liveness probe of a proxy snapshotter (a dead one gives
        UNAVAILABLE)."""
        request = snapshots_pb2.ListSnapshotsRequest(snapshotter=snapshotter, filters=list(filters))
        out: list[SnapshotInfo] = []
        async for resp in self.stream("Snapshots.List", self._snapshots.List, request, timeout=timeout):
            out.extend(SnapshotInfo.from_proto(info) for info in resp.info)
        return out

    # ------------------------------------------------------------------------------------ diff

    async def diff_apply(self, desc: Descriptor, mounts: Sequence[Mount]) -> Descriptor:
        """Diff.Apply: containerd reads blob `desc` from its content store and unpacks it onto `mounts`.

        Returns the applied (uncompressed) descriptor, whose digest must equal the layer's diff_id.
        """
        request = diff_pb2.ApplyRequest(diff=descriptor_to_proto(desc), mounts=[m.to_proto() for m in mounts])
        resp = await self.call("Diff.Apply", self._diff.Apply, request)
        return descriptor_from_proto(resp.applied)

    # ------------------------------------------------------------------------------------ images

    async def image_get(self, name: str) -> ImageRecord | None:
        resp = await self._optional(
            self.call("Images.Get", self._images.Get, images_pb2.GetImageRequest(name=name))
        )
        return None if resp is None else ImageRecord.from_proto(resp.image)

    async def image_create_or_update(
        self, name: str, target: Descriptor, labels: Mapping[str, str] | None = None
    ) -> None:
        """Images.Create; on ALREADY_EXISTS, Update with no mask; on its NOT_FOUND, Create again.

        As Go's Client.createNewImage does: https://github.com/containerd/containerd/blob/v1.6.20/pull.go
        """
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
        return [ImageRecord.from_proto(image) for image in resp.images]

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
        return [PluginInfo.from_proto(p) for p in resp.plugins]

    async def snapshotter_capabilities(self, snapshotter: str) -> tuple[str, ...]:
        """The capabilities snapshotter plugin `snapshotter` advertises (none when it is not loaded)."""
        plugins = await self.plugins([f"type=={SNAPSHOTTER_PLUGIN_TYPE},id=={snapshotter}"])
        return next((p.capabilities for p in plugins if p.ok), ())

    async def snapshotters(self) -> list[PluginInfo]:
        """Every snapshotter plugin (ok or not). A proxy plugin is ok even if its socket is dead: containerd dials
        it lazily, so ok only means configured (probe it with `snapshot_list(..., timeout=...)`)."""
        return await self.plugins([f"type=={SNAPSHOTTER_PLUGIN_TYPE}"])

    # ------------------------------------------------------------------------------------ task metrics

    async def task_metrics(self, container_id: str) -> TaskStats | None:
        """Tasks.Metrics for one container's task (its cgroup's figures), or None when it has no task or containerd
        sends a metrics type this client does not know."""
        from socirun.containerd.api.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc

        stub = tasks_pb2_grpc.TasksStub(self._channel)
        request = tasks_pb2.MetricsRequest(filters=[f"id=={container_id}"])
        resp = await self._optional(self.call("Tasks.Metrics", stub.Metrics, request))
        if resp is None or not resp.metrics:
            return None
        metric = resp.metrics[0]
        at = metric.timestamp.seconds + metric.timestamp.nanos / 1e9 if metric.HasField("timestamp") else time.time()
        return decode_task_metrics(metric.data.type_url, metric.data.value, at=at)


@dataclass(frozen=True)
class TaskStats:
    """A task's CPU and memory, as docker stats reads them: CPU time used so far (nanoseconds; a rate needs two),
    memory in use less the inactive page cache (docker's "MEM USAGE"), and the limit (0 or huge: none)."""

    at: float
    cpu_ns: int
    memory: int
    memory_limit: int
    pids: int


def decode_task_metrics(type_url: str, value: bytes, *, at: float) -> TaskStats | None:
    """The cgroup v1 or v2 metrics containerd wraps in an Any (type `io.containerd.cgroups.v1.Metrics` or
    `...v2.Metrics`, with or without a `type.googleapis.com/` prefix); None for any other type."""
    from socirun.containerd.api.cgroups.v1 import metrics_pb2 as v1
    from socirun.containerd.api.cgroups.v2 import metrics_pb2 as v2

    name = type_url.rsplit("/", 1)[-1]
    if name == v2.Metrics.DESCRIPTOR.full_name:
        m2 = v2.Metrics.FromString(value)
        return TaskStats(at=at, cpu_ns=m2.cpu.usage_usec * 1000,
                         memory=max(0, m2.memory.usage - m2.memory.inactive_file),
                         memory_limit=m2.memory.usage_limit, pids=m2.pids.current)
    if name == v1.Metrics.DESCRIPTOR.full_name:
        m1 = v1.Metrics.FromString(value)
        return TaskStats(at=at, cpu_ns=m1.cpu.usage.total,
                         memory=max(0, m1.memory.usage.usage - m1.memory.total_inactive_file),
                         memory_limit=m1.memory.usage.limit, pids=m1.pids.current)
    return None
