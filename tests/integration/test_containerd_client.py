"""socirun.containerd (client, writer) against a real, private containerd (no mocks).

Each module run starts its own containerd (root, state, sockets under a pytest tmp dir, CRI off) and stops
it by PID afterwards. Needs root and the `containerd` binary; skipped otherwise.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import os
import shutil
import socket
import subprocess
import tarfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from socirun.containerd.client import ContainerdClient, parse_version
from socirun.containerd.errors import AlreadyExistsError, CommitMismatchError, RpcError
from socirun.containerd.types import Mount
from socirun.containerd.writer import WRITE_WINDOW_BYTES
from socirun.errors import EXIT_DAEMON, ContainerdError
from socirun.oci import OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_MANIFEST, Descriptor, sha256_digest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("containerd") is None, reason="containerd binary not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="a private containerd needs root"),
]

CONFIG = """\
version = 2
root = "{dir}/root"
state = "{dir}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{dir}/containerd.sock"

[ttrpc]
  address = "{dir}/containerd.sock.ttrpc"

[debug]
  address = "{dir}/debug.sock"

[metrics]
  address = ""
"""


class PrivateContainerd:
    """A containerd process of our own; stopped by its PID only."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.socket = str(base / "containerd.sock")
        (base / "config.toml").write_text(CONFIG.format(dir=base))
        self.log = open(base / "containerd.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["containerd", "--config", str(base / "config.toml")],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited: {(base / 'containerd.log').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("containerd did not create its socket within 20 s")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="module")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateContainerd]:
    daemon = PrivateContainerd(tmp_path_factory.mktemp("ctd"))
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
async def client(containerd: PrivateContainerd) -> AsyncIterator[ContainerdClient]:
    async with await ContainerdClient.connect(containerd.socket, "socirun-test") as c:
        yield c


@pytest.fixture(scope="module")
async def snapshotter(client: ContainerdClient) -> str:
    plugins = {p.id: p for p in await client.snapshotters()}
    return "overlayfs" if plugins.get("overlayfs") and plugins["overlayfs"].ok else "native"


def blob(size: int) -> tuple[bytes, str]:
    data = os.urandom(size)
    return data, sha256_digest(data)


async def chunked(data: bytes, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def make_layer(files: dict[str, bytes]) -> tuple[bytes, str]:
    """A gzip'd tar layer; returns (compressed bytes, diff_id = digest of the uncompressed tar)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(content))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, mtime=0), sha256_digest(tar_bytes)


# ------------------------------------------------------------------------------------------- connect


async def test_connect_and_version(client: ContainerdClient) -> None:
    version = await client.version()
    parsed = parse_version(version)
    assert parsed is not None and parsed >= (1, 6), version
    assert client.namespace == "socirun-test"


async def test_connect_accepts_unix_scheme(containerd: PrivateContainerd) -> None:
    async with await ContainerdClient.connect("unix://" + containerd.socket, "default") as c:
        assert c.address == containerd.socket
        assert await c.version()


async def test_missing_socket_is_one_sentence(tmp_path: Path) -> None:
    path = tmp_path / "nope.sock"
    with pytest.raises(ContainerdError) as info:
        await ContainerdClient.connect(str(path), "default")
    err = info.value
    assert err.exit_code == EXIT_DAEMON == 125
    assert str(err) == (
        f"containerd socket {path} not found: is containerd running? set --address or CONTAINERD_ADDRESS"
    )


async def test_stale_socket_nobody_listening(tmp_path: Path) -> None:
    path = str(tmp_path / "stale.sock")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    sock.close()  # the file stays, nothing listens: connect() is refused
    with pytest.raises(ContainerdError, match="nothing is listening") as info:
        await ContainerdClient.connect(path, "default", timeout=5)
    assert info.value.exit_code == 125 and "\n" not in str(info.value)


async def test_socket_that_never_answers(tmp_path: Path) -> None:
    path = str(tmp_path / "mute.sock")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    sock.listen(8)  # accepts connections in the kernel, never speaks HTTP/2
    try:
        started = time.monotonic()
        with pytest.raises(ContainerdError, match=r"did not answer within 0.5s"):
            await ContainerdClient.connect(path, "default", timeout=0.5)
        assert time.monotonic() - started < 5
    finally:
        sock.close()


async def test_not_a_socket(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("")
    with pytest.raises(ContainerdError, match="is not a unix socket"):
        await ContainerdClient.connect(str(path), "default")


async def test_daemon_gone_maps_to_not_answering(tmp_path_factory: pytest.TempPathFactory) -> None:
    daemon = PrivateContainerd(tmp_path_factory.mktemp("ctd-gone"))
    try:
        c = await ContainerdClient.connect(daemon.socket, "default")
    finally:
        daemon.stop()
    try:
        with pytest.raises(ContainerdError, match=rf"containerd at {daemon.socket} is not answering"):
            await c.version()
    finally:
        await c.close()


async def test_other_errors_name_the_rpc(client: ContainerdClient) -> None:
    with pytest.raises(RpcError, match=r"^containerd Snapshots.Stat failed \(INVALID_ARGUMENT\): .*nosuch"):
        await client.snapshot_stat("nosuch", "x")


# ------------------------------------------------------------------------------------------- leases


async def test_lease_header_and_resources(client: ContainerdClient) -> None:
    data, digest = blob(1000)
    assert client.current_lease is None
    async with client.lease() as lease_id:
        assert lease_id in await client.list_leases()
        assert ("containerd-lease", lease_id) in client.metadata()

        # Tasks created inside the block inherit the lease through the ContextVar.
        async def in_task() -> str | None:
            await client.write_blob(f"test-{digest}", digest, data, {})
            return client.current_lease

        assert await asyncio.create_task(in_task()) == lease_id
        assert ("content", digest) in await client.lease_resources(lease_id)
    assert client.current_lease is None
    assert all(key != "containerd-lease" for key, _ in client.metadata())
    assert lease_id not in await client.list_leases()


async def test_lease_expire_label(client: ContainerdClient) -> None:
    from socirun.containerd.api.services.leases.v1 import leases_pb2

    async with client.lease(expire_after=600) as lease_id:
        resp = await client.call("Leases.List", client._leases.List, leases_pb2.ListRequest())
        lease = next(lease for lease in resp.leases if lease.id == lease_id)
        expire = lease.labels["containerd.io/gc.expire"]
        assert expire.endswith("Z") and "T" in expire


async def test_manual_lease_helpers(client: ContainerdClient) -> None:
    data, digest = blob(2000)
    lease_id = await client.create_lease(
        {"containerd.io/gc.expire": "2099-01-01T00:00:00Z", "io.socirun/x": "1"}
    )
    try:
        info = next(lease for lease in await client.list_leases_info() if lease.id == lease_id)
        assert info.labels["io.socirun/x"] == "1" and info.created_at > 0
        with client.using_lease(lease_id):
            assert client.current_lease == lease_id
            writer = await client.open_writer(f"manual-{digest}", digest, len(data))
            await writer.start()
            await writer.write(data[:100])
            await writer.aclose()
        assert client.current_lease is None
        assert ("ingests", f"manual-{digest}") in await client.lease_resources(lease_id)

        other = await client.create_lease({"containerd.io/gc.expire": "2099-01-01T00:00:00Z"})
        await client.add_lease_resource(other, f"manual-{digest}", "ingests")
        assert ("ingests", f"manual-{digest}") in await client.lease_resources(other)
        await client.delete_lease(other)
    finally:
        await client.abort_ingest(f"manual-{digest}")
        await client.delete_lease(lease_id)
    assert lease_id not in await client.list_leases()
    await client.delete_lease(lease_id)  # NOT_FOUND ignored


async def test_lease_deleted_on_error_and_cancel(client: ContainerdClient) -> None:
    seen: list[str] = []
    with pytest.raises(ValueError):
        async with client.lease() as lease_id:
            seen.append(lease_id)
            raise ValueError("boom")

    entered = asyncio.Event()

    async def hold() -> None:
        async with client.lease() as lid:
            seen.append(lid)
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(hold())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.2)  # the shielded delete finishes on its own
    leases = await client.list_leases()
    assert len(seen) == 2 and not set(seen) & set(leases)


# ------------------------------------------------------------------------------------------- content


async def test_write_resume_commit_with_labels(client: ContainerdClient) -> None:
    # More than one message per write() call and more than the unacknowledged window: split and pipelined.
    data, digest = blob(2 * WRITE_WINDOW_BYTES + 123)
    ref = f"layer-{digest}"
    half = 1_500_000
    async with client.lease():
        writer = await client.open_writer(ref, digest, len(data))
        assert await writer.start() == 0
        await writer.write(data[:half])
        assert writer.offset == half
        await writer.aclose()  # interrupted: no commit

        status = await client.ingest_status(ref)
        assert status is not None and (status.offset, status.total) == (half, len(data))
        assert ref in [s.ref for s in await client.list_ingests([f'ref=="{ref}"'])]

        async with await client.open_writer(ref, digest, len(data)) as writer:
            offset = await writer.start()
            assert offset == half and not writer.already_exists
            await writer.write(data[offset:])
            await writer.commit({"test/label": "v1", "containerd.io/gc.root": "1"})
        assert writer.committed

        info = await client.content_info(digest)
        assert info is not None and info.size == len(data)
        assert info.labels == {"test/label": "v1", "containerd.io/gc.root": "1"}
        assert info.created_at > time.time() - 60
        assert await client.ingest_status(ref) is None
        assert await client.read_content(digest) == data

        await client.content_update_labels(digest, {"test/other": "x", "containerd.io/gc.root": ""})
        info = await client.content_info(digest)
        assert info is not None and info.labels == {"test/label": "v1", "test/other": "x"}


async def test_already_exists_is_not_an_error(client: ContainerdClient) -> None:
    data, digest = blob(4096)
    async with client.lease():
        assert await client.write_content(
            f"cfg-{digest}", digest, len(data), chunked(data), labels={"a": "1"}
        )
        writer = await client.open_writer(f"again-{digest}", digest, len(data))
        assert await writer.start() == len(data)
        assert writer.already_exists
        await writer.aclose()
        # write_blob on an existing blob only adds/sets the labels it is given.
        await client.write_blob(f"again-{digest}", digest, data, {"b": "2"})
        info = await client.content_info(digest)
        assert info is not None and info.labels == {"a": "1", "b": "2"}
        assert not await client.write_content(f"x-{digest}", digest, len(data), chunked(data))
    # A refused open ends the stream's request side too: grpc's task feeding it must not linger (it was
    # reported as "Task was destroyed but it is pending" at exit, on stderr that belongs to the container).
    await asyncio.sleep(0.1)
    lingering = [t for t in asyncio.all_tasks() if "_consume_request_iterator" in repr(t.get_coro())]
    assert lingering == []


async def test_commit_digest_mismatch(client: ContainerdClient) -> None:
    data, digest = blob(10_000)
    ref = f"bad-{digest}"
    async with client.lease():
        writer = await client.open_writer(ref, digest, len(data))
        await writer.start()
        await writer.write(os.urandom(len(data)))  # right size, wrong bytes
        with pytest.raises(CommitMismatchError, match=rf"blob {digest} \({ref}\) does not match") as info:
            await writer.commit({})
        await writer.aclose()
        assert info.value.exit_code == 125
        assert "unexpected commit digest" in info.value.details
        assert await client.ingest_status(ref) is None  # aborted: resuming it could never succeed
        assert await client.content_info(digest) is None


async def test_commit_size_mismatch(client: ContainerdClient) -> None:
    data, digest = blob(10_000)
    async with client.lease():
        writer = await client.open_writer(f"short-{digest}", digest, len(data))
        await writer.start()
        await writer.write(data[:5000])
        with pytest.raises(CommitMismatchError, match=digest):
            await writer.commit({})
        await writer.aclose()


async def test_write_content_resumes_from_offset(client: ContainerdClient) -> None:
    data, digest = blob(2_000_000)
    ref = f"layer-{digest}"
    async with client.lease():
        writer = await client.open_writer(ref, digest, len(data))
        await writer.start()
        await writer.write(data[:700_000])
        await writer.aclose()

        asked: list[int] = []
        progress: list[int] = []

        def from_offset(offset: int) -> AsyncIterator[bytes]:
            asked.append(offset)
            return chunked(data[offset:])

        assert await client.write_content(
            ref, digest, len(data), from_offset, labels={"k": "v"}, on_written=progress.append
        )
        assert asked == [700_000]
        assert progress[0] == 700_000 and progress[-1] == len(data)
        info = await client.content_info(digest)
        assert info is not None and info.labels == {"k": "v"}


async def test_write_content_complete_ingest_just_commits(client: ContainerdClient) -> None:
    data, digest = blob(200_000)
    ref = f"layer-{digest}"
    async with client.lease():
        writer = await client.open_writer(ref, digest, len(data))
        await writer.start()
        await writer.write(data)
        await writer.aclose()  # every byte is there, the commit never happened

        asked: list[int] = []

        def never(offset: int) -> AsyncIterator[bytes]:
            asked.append(offset)
            return chunked(b"")

        assert await client.write_content(ref, digest, len(data), never, labels={"done": "1"})
        assert asked == []
        info = await client.content_info(digest)
        assert info is not None and info.labels == {"done": "1"}


async def test_content_shared_from_another_namespace(
    client: ContainerdClient, containerd: PrivateContainerd
) -> None:
    # containerd 1.6 shares blobs across namespaces: a writer that names the expected digest opens
    # with offset == total and no bytes to send, and only a COMMIT is needed.
    data, digest = blob(300_000)
    await client.write_blob(f"cfg-{digest}", digest, data, {"containerd.io/gc.root": "1"})
    async with await ContainerdClient.connect(containerd.socket, "socirun-other") as other:
        writer = await other.open_writer(f"cfg-{digest}", digest, len(data))
        assert await writer.start() == len(data) and not writer.already_exists
        await writer.aclose()

        def never(offset: int) -> AsyncIterator[bytes]:
            raise AssertionError(f"fetch asked from {offset}")

        async with other.lease():
            assert await other.write_content(f"cfg-{digest}", digest, len(data), never, labels={"x": "y"})
        info = await other.content_info(digest)
        assert info is not None and info.labels == {"x": "y"}
        assert await other.read_content(digest) == data
        await other.delete_content(digest)
    await client.delete_content(digest)


async def test_write_content_iterable_skips_resumed_bytes(client: ContainerdClient) -> None:
    data, digest = blob(900_000)
    ref = f"layer-{digest}"
    async with client.lease():
        writer = await client.open_writer(ref, digest, len(data))
        await writer.start()
        await writer.write(data[:300_001])
        await writer.aclose()
        await client.write_content(ref, digest, len(data), chunked(data, 100_000))
        assert await client.read_content(digest) == data


async def test_write_content_without_resume_truncates(client: ContainerdClient) -> None:
    data, digest = blob(500_000)
    ref = f"layer-{digest}"
    async with client.lease():
        writer = await client.open_writer(ref, digest, len(data))
        await writer.start()
        await writer.write(b"garbage" * 1000)
        await writer.aclose()
        progress: list[int] = []
        await client.write_content(
            ref, digest, len(data), chunked(data), resume=False, on_written=progress.append
        )
        assert progress[0] == 0
        assert await client.read_content(digest) == data


async def test_second_writer_waits_for_the_lock(client: ContainerdClient) -> None:
    data, digest = blob(100_000)
    ref = f"layer-{digest}"
    async with client.lease():
        first = await client.open_writer(ref, digest, len(data))
        await first.start()
        await first.write(data[:40_000])

        blocked = await client.open_writer(ref, digest, len(data))
        with pytest.raises(ContainerdError, match="being written by another client"):
            await blocked.start(lock_timeout=0.3)

        second = await client.open_writer(ref, digest, len(data))
        waiting = asyncio.create_task(second.start(lock_timeout=10))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await first.aclose()
        assert await waiting == 40_000
        await second.write(data[40_000:])
        await second.commit({})
        assert await client.read_content(digest) == data


async def test_abort_and_delete_are_idempotent(client: ContainerdClient) -> None:
    data, digest = blob(1000)
    async with client.lease():
        writer = await client.open_writer("abort-me", digest, len(data))
        await writer.start()
        await writer.write(data[:10])
        await writer.aclose()
        await client.abort_ingest("abort-me")
        assert await client.ingest_status("abort-me") is None
        await client.abort_ingest("abort-me")
        await client.write_blob(f"del-{digest}", digest, data, {})
        await client.delete_content(digest)
        assert await client.content_info(digest) is None
        await client.delete_content(digest)


# ------------------------------------------------------------------------------------------- snapshots + diff


async def test_snapshot_prepare_commit_stat_remove(client: ContainerdClient, snapshotter: str) -> None:
    name = sha256_digest(uuid.uuid4().bytes)
    key = f"extract-{time.time_ns()}-test {name}"  # the Go unpacker's key shape, space included
    async with client.lease():
        mounts = await client.snapshot_prepare(snapshotter, key, "", {"containerd.io/snapshot.ref": name})
        assert mounts and mounts[0].type == "bind"
        assert await client.snapshot_mounts(snapshotter, key) == mounts
        active = await client.snapshot_stat(snapshotter, key)
        assert active is not None and active.kind == "active"
        with pytest.raises(AlreadyExistsError):
            await client.snapshot_prepare(snapshotter, key, "", {})

        await client.snapshot_commit(snapshotter, name, key, {"containerd.io/snapshot.ref": name})
        info = await client.snapshot_stat(snapshotter, name)
        assert info is not None and info.kind == "committed" and info.parent == ""
        assert info.labels["containerd.io/snapshot.ref"] == name
        assert await client.snapshot_stat(snapshotter, key) is None

        # Preparing the same target again is refused before the backend is asked.
        with pytest.raises(AlreadyExistsError, match="already exists"):
            await client.snapshot_prepare(
                snapshotter, f"extract-2 {name}", "", {"containerd.io/snapshot.ref": name}
            )

        child = f"ctr-{uuid.uuid4().hex[:8]}"
        child_mounts = await client.snapshot_prepare(snapshotter, child, name, {})
        assert child_mounts
        listed = await client.snapshot_list(snapshotter, [f"parent=={name}"], timeout=10)
        assert [s.name for s in listed] == [child]

        await client.snapshot_remove(snapshotter, child)
        await client.snapshot_remove(snapshotter, name)
        assert await client.snapshot_stat(snapshotter, name) is None
        await client.snapshot_remove(snapshotter, name)  # NOT_FOUND ignored


async def test_diff_apply_gzip_layer(client: ContainerdClient, snapshotter: str) -> None:
    files = {"hello.txt": b"hello from socirun\n", "etc/motd": uuid.uuid4().bytes}
    layer, diff_id = make_layer(files)
    desc = Descriptor(OCI_LAYER_GZIP, sha256_digest(layer), len(layer))
    chain_id = diff_id  # a first layer's chainID is its diff_id
    key = f"extract-{time.time_ns()}-t {chain_id}"
    labels = {"containerd.io/snapshot.ref": chain_id}
    async with client.lease():
        await client.write_blob(f"layer-{desc.digest}", desc.digest, layer, {})
        mounts = await client.snapshot_prepare(snapshotter, key, "", labels)
        applied = await client.diff_apply(desc, mounts)
        assert applied.digest == diff_id
        assert applied.media_type == OCI_LAYER_TAR
        assert applied.size > len(files["hello.txt"])
        await client.snapshot_commit(snapshotter, chain_id, key, labels)
        await client.content_update_labels(desc.digest, {"containerd.io/uncompressed": diff_id})

        view_key = f"view-{uuid.uuid4().hex[:8]}"
        view = await client.snapshot_view(snapshotter, view_key, chain_id)
        assert len(view) == 1 and view[0].type == "bind"
        assert Path(view[0].source, "hello.txt").read_bytes() == files["hello.txt"]
        await client.snapshot_remove(snapshotter, view_key)
        await client.snapshot_remove(snapshotter, chain_id)


async def test_mount_conversion_round_trip() -> None:
    mount = Mount("overlay", "overlay", "", ("index=off", "lowerdir=/a:/b"))
    assert Mount.from_proto(mount.to_proto()) == mount


# ------------------------------------------------------------------------------------------- images


async def test_image_create_or_update_twice(client: ContainerdClient) -> None:
    name = f"localhost/socirun/test:{uuid.uuid4().hex[:8]}"
    first = Descriptor(OCI_MANIFEST, sha256_digest(b"one"), 3)
    second = Descriptor(OCI_MANIFEST, sha256_digest(b"two!"), 4, annotations={"a": "b"})
    await client.image_create_or_update(name, first, {"v": "1"})
    got = await client.image_get(name)
    assert got is not None and got.target == first and got.labels == {"v": "1"}

    await client.image_create_or_update(name, second, {"v": "2"})
    got = await client.image_get(name)
    assert got is not None and got.target == second and got.target.annotations == {"a": "b"}
    assert got.labels == {"v": "2"}
    assert name in [image.name for image in await client.image_list()]

    await client.image_delete(name, sync=True)
    assert await client.image_get(name) is None
    await client.image_delete(name)  # NOT_FOUND ignored


# ------------------------------------------------------------------------------------------- introspection


async def test_plugins_list_snapshotters(client: ContainerdClient) -> None:
    snapshotters = {p.id: p for p in await client.snapshotters()}
    assert snapshotters["overlayfs"].ok, snapshotters["overlayfs"].error
    assert snapshotters["native"].ok
    assert all(p.type == "io.containerd.snapshotter.v1" for p in snapshotters.values())
    skipped = [p for p in snapshotters.values() if not p.ok]
    assert all(p.error for p in skipped)
    content = await client.plugins(["type==io.containerd.content.v1"])
    assert [p.id for p in content] == ["content"]
