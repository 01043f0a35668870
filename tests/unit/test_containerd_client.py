"""socirun.containerd pieces that need no containerd: config, error mapping, connect checks."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from socirun.containerd import client as ctd
from socirun.containerd.api.services.introspection.v1 import introspection_pb2
from socirun.containerd.api.services.snapshots.v1 import snapshots_pb2
from socirun.containerd.api.services.version.v1 import version_pb2, version_pb2_grpc
from socirun.containerd.errors import AlreadyExistsError, NotFoundError, RpcError, map_rpc_error
from socirun.containerd.types import Mount, PluginInfo, descriptor_from_proto, descriptor_to_proto
from socirun.errors import ContainerdError, UsageError
from socirun.oci import Descriptor


def test_resolve_address_precedence() -> None:
    env = {"CONTAINERD_ADDRESS": "/env.sock"}
    assert ctd.resolve_address("/flag.sock", env) == "/flag.sock"
    assert ctd.resolve_address(None, env) == "/env.sock"
    assert ctd.resolve_address(None, {}) == ctd.DEFAULT_ADDRESS == "/run/containerd/containerd.sock"
    assert ctd.resolve_address("unix:///x/c.sock", {}) == "/x/c.sock"
    assert ctd.resolve_address(None, {"CONTAINERD_ADDRESS": "unix:///y.sock"}) == "/y.sock"


def test_resolve_namespace() -> None:
    assert ctd.resolve_namespace(None, {}) == "default"
    assert ctd.resolve_namespace(None, {"CONTAINERD_NAMESPACE": "k8s.io"}) == "k8s.io"
    assert ctd.resolve_namespace("my-ns_1", {"CONTAINERD_NAMESPACE": "k8s.io"}) == "my-ns_1"
    for bad in ("-x", "a..b", "a/b", "has space", "x" * 77, "a-"):
        with pytest.raises(UsageError, match="invalid containerd namespace"):
            ctd.resolve_namespace(bad, {})
    assert ctd.resolve_namespace("x" * 76, {}) == "x" * 76


def test_parse_version() -> None:
    assert ctd.parse_version("1.6.20~ds1") == (1, 6)
    assert ctd.parse_version("v2.0.0") == (2, 0)
    assert ctd.parse_version("1.10.1") == (1, 10)
    assert ctd.parse_version("devel") is None


def test_lease_id_and_expiry_format() -> None:
    lease_id = ctd._new_lease_id()
    assert ctd._IDENTIFIER.match(lease_id)
    assert ctd._rfc3339(datetime(2030, 1, 2, 3, 4, 5, 678, tzinfo=UTC)) == "2030-01-02T03:04:05Z"


def _rpc_error(code: Any, details: str) -> Any:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


def test_map_rpc_error() -> None:
    err = map_rpc_error("Images.Get", _rpc_error(grpc.StatusCode.NOT_FOUND, "image x: not found"), "/s")
    assert isinstance(err, NotFoundError) and isinstance(err, ContainerdError)
    assert err.exit_code == 125 and err.rpc == "Images.Get" and err.details == "image x: not found"

    err = map_rpc_error("Images.Create", _rpc_error(grpc.StatusCode.ALREADY_EXISTS, "exists"), "/s")
    assert isinstance(err, AlreadyExistsError)

    transport = _rpc_error(
        grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; Connection refused"
    )
    err = map_rpc_error("Content.Info", transport, "/run/c.sock")
    assert str(err).startswith("containerd at /run/c.sock is not answering")

    # UNAVAILABLE that containerd itself returned (a locked ingest) keeps its own message.
    locked = _rpc_error(grpc.StatusCode.UNAVAILABLE, "ref default/1/x locked for 1s: unavailable")
    err = map_rpc_error("Content.Write", locked, "/s")
    assert (
        str(err)
        == "containerd Content.Write failed (UNAVAILABLE): ref default/1/x locked for 1s: unavailable"
    )

    err = map_rpc_error("Leases.Create", _rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "bad"), "/s")
    assert type(err) is RpcError and str(err) == "containerd Leases.Create failed (INVALID_ARGUMENT): bad"


RELAYED = ('connection error: desc = "transport: failed to write client preface: write unix '
           '@->/run/soci/soci.sock: write: broken pipe"')


def test_a_plugin_containerd_cannot_reach_is_not_blamed_on_containerd() -> None:
    err = map_rpc_error("Snapshots.Prepare", _rpc_error(grpc.StatusCode.UNAVAILABLE, RELAYED), "/run/c.sock")
    assert str(err).startswith("containerd Snapshots.Prepare: containerd could not reach the plugin that serves it")
    assert "is containerd running" not in str(err)


class FlakyMethod:
    """A unary stub method failing with `details` (UNAVAILABLE) for its first `failures` calls."""

    def __init__(self, failures: int, details: str = RELAYED) -> None:
        self.failures = failures
        self.details = details
        self.calls = 0

    async def __call__(self, request: Any, *, metadata: Any, timeout: float | None) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise _rpc_error(grpc.StatusCode.UNAVAILABLE, self.details)
        return "answer"


@pytest.fixture
async def offline_client(monkeypatch: pytest.MonkeyPatch) -> ctd.ContainerdClient:
    monkeypatch.setattr(ctd, "PLUGIN_RETRY_DELAYS_S", (0.0, 0.0, 0.0))
    return ctd.ContainerdClient(grpc.aio.insecure_channel("unix:/nonexistent.sock"), "/nonexistent.sock", "default")


async def test_a_call_containerd_could_not_pass_on_is_tried_again(offline_client: ctd.ContainerdClient) -> None:
    method = FlakyMethod(failures=2)
    assert await offline_client.call("Snapshots.Prepare", method, object()) == "answer"
    assert method.calls == 3


async def test_retries_end_and_some_failures_are_never_retried(offline_client: ctd.ContainerdClient) -> None:
    always = FlakyMethod(failures=99)
    with pytest.raises(RpcError, match="could not reach the plugin"):
        await offline_client.call("Snapshots.Stat", always, object())
    assert always.calls == 4  # the first try and one per delay

    probe = FlakyMethod(failures=99)  # a probe (it has a timeout) must answer fast
    with pytest.raises(RpcError):
        await offline_client.call("Snapshots.List", probe, object(), timeout=2.0)
    assert probe.calls == 1

    locked = FlakyMethod(failures=99, details="ref default/1/x locked for 1s: unavailable")
    with pytest.raises(RpcError, match="locked"):
        await offline_client.call("Content.Write", locked, object())
    assert locked.calls == 1

    # Only Snapshots calls pass through a proxy plugin; the same words elsewhere are containerd's own answer.
    content = FlakyMethod(failures=99, details="connection closed: unavailable")
    with pytest.raises(RpcError):
        await offline_client.call("Content.Info", content, object())
    assert content.calls == 1


async def test_a_dropped_plugin_connection_is_tried_again(offline_client: ctd.ContainerdClient) -> None:
    # What containerd answers a Prepare right after its proxy snapshotter restarted (the old socket is gone).
    method = FlakyMethod(failures=1, details="connection closed: unavailable")
    assert await offline_client.call("Snapshots.Prepare", method, object()) == "answer"
    assert method.calls == 2


def test_descriptor_and_mount_conversion() -> None:
    desc = Descriptor("application/x", "sha256:" + "a" * 64, 42, annotations={"k": "v"})
    assert descriptor_from_proto(descriptor_to_proto(desc)) == desc
    assert descriptor_from_proto(descriptor_to_proto(desc)).annotations == {"k": "v"}
    mount = Mount("bind", "/src", "", ("rbind", "ro"))
    assert Mount.from_proto(mount.to_proto()) == mount


async def test_connect_missing_socket(tmp_path: Path) -> None:
    path = tmp_path / "none.sock"
    with pytest.raises(ContainerdError) as info:
        await ctd.ContainerdClient.connect(str(path), "default")
    assert info.value.exit_code == 125
    assert str(info.value) == (
        f"containerd socket {path} not found: is containerd running? set --address or CONTAINERD_ADDRESS"
    )


async def test_connect_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "c.sock")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    try:
        # Tests run as root, where access() always succeeds; pretend we are an ordinary user.
        monkeypatch.setattr(os, "access", lambda *_args, **_kw: False)
        with pytest.raises(ContainerdError, match=r"permission denied on containerd socket .*run as root"):
            await ctd.ContainerdClient.connect(path, "default")
    finally:
        sock.close()


class _OldVersion(version_pb2_grpc.VersionServicer):  # type: ignore[misc]
    def __init__(self, version: str) -> None:
        self.version = version

    async def Version(self, request: Any, context: Any) -> Any:  # the gRPC method's name
        return version_pb2.VersionResponse(version=self.version, revision="x")


@pytest.fixture
async def version_server(tmp_path: Path) -> AsyncIterator[tuple[str, _OldVersion]]:
    """A bare gRPC server speaking only containerd's Version service (to test the version gate)."""
    path = str(tmp_path / "v.sock")
    servicer = _OldVersion("1.5.9")
    server = grpc.aio.server()
    version_pb2_grpc.add_VersionServicer_to_server(servicer, server)
    server.add_insecure_port(f"unix:{path}")
    await server.start()
    try:
        yield path, servicer
    finally:
        await server.stop(None)


async def test_connect_rejects_old_containerd(version_server: tuple[str, _OldVersion]) -> None:
    path, servicer = version_server
    with pytest.raises(
        ContainerdError, match=r"^containerd 1.5.9 at .* is too old: socirun needs containerd 1.6"
    ):
        await ctd.ContainerdClient.connect(path, "default")
    servicer.version = "v2.1.0"
    async with await ctd.ContainerdClient.connect(path, "default") as client:
        assert await client.version() == "v2.1.0"
        assert client.metadata() == (("containerd-namespace", "default"),)


def test_plugin_capabilities_and_the_commit_parent_are_on_the_wire() -> None:
    plugin = introspection_pb2.Plugin(type="io.containerd.snapshotter.v1", id="overlayfs", capabilities=["rebase"])
    assert PluginInfo.from_proto(plugin).capabilities == ("rebase",)
    # containerd 2.x's API (v1.9+) reads the parent given at Commit as field 5, a string: tag (5 << 3) | 2.
    request = snapshots_pb2.CommitSnapshotRequest(name="n", key="k", parent="sha256:p")
    assert b"\x2a\x08sha256:p" in request.SerializeToString()
