"""How a failed containerd call reaches the user: gRPC status codes mapped onto socirun's error hierarchy.

A NOT_FOUND or ALREADY_EXISTS gets its own class, because callers treat those as answers rather than failures.
An UNAVAILABLE gets a sentence that says who did not answer: containerd itself, or a proxy snapshotter behind it.
"""

from __future__ import annotations

from typing import Any

import grpc

from socirun.errors import ContainerdError

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
    if code == grpc.StatusCode.UNAVAILABLE and is_relayed_transport_failure(rpc, details):
        return RpcError(
            f"containerd {rpc}: containerd could not reach the plugin that serves it ({details}); is that "
            "snapshotter running? (`socirun doctor` checks)",
            rpc=rpc,
            code=code,
            details=details,
        )
    if code == grpc.StatusCode.UNAVAILABLE and is_transport_failure(details):
        return RpcError(
            f"containerd at {address} is not answering ({rpc}: {details}): is containerd running?",
            rpc=rpc,
            code=code,
            details=details,
        )
    name = getattr(code, "name", str(code))
    return RpcError(f"containerd {rpc} failed ({name}): {details}", rpc=rpc, code=code, details=details)


def is_relayed_transport_failure(rpc: str, details: str) -> bool:
    """Whether UNAVAILABLE `details` of `rpc` say containerd could not reach the proxy plugin serving it."""
    return rpc.startswith(_PROXIED_SERVICE) and any(marker in details for marker in _RELAYED_MARKERS)


def is_transport_failure(details: str) -> bool:
    """Whether UNAVAILABLE `details` say our own connection to containerd failed."""
    lowered = details.lower()
    return any(marker in lowered for marker in _TRANSPORT_MARKERS)
