"""RegistryClient against a real docker-registry (distribution v2.8) on loopback, plus tiny aiohttp servers
for what a stock registry cannot show: token auth, 429/503 retries, a connection dropped mid-blob, and a
registry that ignores Range.

The registry is started here on a free 127.0.0.1 port with its storage in a temp dir, and killed by PID.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import io
import json
import logging
import os
import shutil
import socket
import subprocess
import tarfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from socirun.errors import AuthError, DigestMismatchError, ImageNotFoundError, RegistryError
from socirun.oci import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    Platform,
    sha256_digest,
)
from socirun.reference import parse_reference
from socirun.registry import RangeNotSupportedError, RegistryClient
from socirun.registry.client import _retry_after

pytestmark = pytest.mark.integration

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"
AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64", "v8")
SECRET = "t0p-s3cret-for-tests"


# ----------------------------------------------------------------------------------------- image building


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gzip_layer(name: str, content: bytes) -> tuple[bytes, str]:
    """A one-file tar.gz layer and its diff_id (sha256 of the uncompressed tar)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(content)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(content))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, mtime=0), sha256_digest(tar_bytes)


def desc(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256_digest(data), "size": len(data), **extra}


def canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


@dataclass
class Image:
    """Everything an image push needs: blobs by digest, the manifest and its bytes."""

    blobs: dict[str, bytes] = field(default_factory=dict)
    manifest: bytes = b""
    manifest_type: str = OCI_MANIFEST
    config_digest: str = ""
    layer_digests: list[str] = field(default_factory=list)
    diff_ids: list[str] = field(default_factory=list)

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)


def make_image(arch: str, variant: str = "", *, docker_types: bool = False) -> Image:
    img = Image(manifest_type=DOCKER_MANIFEST if docker_types else OCI_MANIFEST)
    layer_type = DOCKER_LAYER_GZIP if docker_types else OCI_LAYER_GZIP
    layers = []
    for i in range(2):
        blob, diff_id = gzip_layer(f"file{i}", f"{arch} layer {i}\n".encode() * 50)
        img.blobs[sha256_digest(blob)] = blob
        layers.append(desc(layer_type, blob))
        img.layer_digests.append(sha256_digest(blob))
        img.diff_ids.append(diff_id)
    config: dict[str, Any] = {
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": img.diff_ids},
    }
    if variant:
        config["variant"] = variant
    config_bytes = canonical(config)
    img.blobs[sha256_digest(config_bytes)] = config_bytes
    img.config_digest = sha256_digest(config_bytes)
    img.manifest = canonical(
        {
            "schemaVersion": 2,
            "mediaType": img.manifest_type,
            "config": desc(DOCKER_CONFIG if docker_types else OCI_CONFIG, config_bytes),
            "layers": layers,
        }
    )
    return img


def make_index(images: list[tuple[Image, Platform]]) -> bytes:
    manifests = []
    for img, plat in images:
        p = {"os": plat.os, "architecture": plat.architecture}
        if plat.variant:
            p["variant"] = plat.variant
        manifests.append(desc(img.manifest_type, img.manifest, platform=p))
    return canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})


class Pusher:
    """Pushes through the registry's HTTP API (monolithic upload: POST, then PUT ?digest=)."""

    def __init__(self, base: str) -> None:
        self.http = httpx.Client(base_url=base, timeout=60)

    def blob(self, repo: str, data: bytes) -> str:
        digest = sha256_digest(data)
        started = self.http.post(f"/v2/{repo}/blobs/uploads/")
        assert started.status_code == 202, started.text
        location = started.headers["Location"]
        sep = "&" if "?" in location else "?"
        done = self.http.put(
            f"{location}{sep}digest={digest}",
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert done.status_code == 201, done.text
        return digest

    def manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> None:
        resp = self.http.put(
            f"/v2/{repo}/manifests/{ref}", content=data, headers={"Content-Type": media_type}
        )
        assert resp.status_code == 201, resp.text

    def image(self, repo: str, img: Image, tag: str | None = None) -> None:
        for data in img.blobs.values():
            self.blob(repo, data)
        self.manifest(repo, tag or img.digest, img.manifest, img.manifest_type)


# ----------------------------------------------------------------------------------------- the registry


@dataclass
class Pushed:
    host: str  # 127.0.0.1:PORT
    amd64: Image
    arm64: Image
    index: bytes
    single: Image
    big: bytes
    big_digest: str


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pushed]:
    if not os.path.exists(REGISTRY_BIN):
        pytest.skip("docker-registry is not installed")
    root = tmp_path_factory.mktemp("registry")
    port = free_port()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen(
        [REGISTRY_BIN, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"{base}/v2/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, "docker-registry exited"
            assert time.monotonic() < deadline, "docker-registry did not start"
            time.sleep(0.05)

        push = Pusher(base)
        amd64, arm64 = make_image("amd64"), make_image("arm64", "v8")
        index = make_index([(amd64, AMD64), (arm64, ARM64)])
        push.image("test/multi", amd64)
        push.image("test/multi", arm64)
        push.manifest("test/multi", "latest", index, OCI_INDEX)
        single = make_image("amd64", docker_types=True)
        push.image("test/single", single, tag="v1")
        big = os.urandom(3 * 1024 * 1024 + 12345)
        big_digest = push.blob("test/multi", big)
        push.http.close()
        yield Pushed(f"127.0.0.1:{port}", amd64, arm64, index, single, big, big_digest)
    finally:
        proc.kill()  # the registry this fixture started, by its PID
        proc.wait()


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[RegistryClient]:
    # An empty hosts dir and docker config: nothing from this machine's /etc or ~/.docker leaks in.
    async with RegistryClient(
        hosts_dir=str(tmp_path / "certs.d"),
        docker_config_dir=str(tmp_path / "docker"),
        backoff_base=0.01,
        backoff_cap=0.05,
    ) as c:
        yield c


# ----------------------------------------------------------------------------------------- real registry


async def test_resolve_index_picks_platform(registry: Pushed, client: RegistryClient) -> None:
    ref = parse_reference(f"{registry.host}/test/multi")
    for wanted, img in ((AMD64, registry.amd64), (ARM64, registry.arm64)):
        got = await client.resolve(ref, wanted)
        assert got.reference == ref
        assert got.target.media_type == OCI_INDEX
        assert got.target.digest == sha256_digest(registry.index)
        assert got.index_bytes == registry.index
        assert got.manifest.digest == img.digest
        assert got.manifest.platform is not None and got.manifest.platform.architecture == wanted.architecture
        assert got.manifest_bytes == img.manifest
        assert got.config.digest == img.config_digest
        assert got.config_bytes == img.blobs[img.config_digest]
        assert [layer.digest for layer in got.layers] == img.layer_digests
        assert all(layer.media_type == OCI_LAYER_GZIP for layer in got.layers)
        assert list(got.diff_ids) == img.diff_ids
        assert got.platform == wanted
        assert got.source_host == "127.0.0.1"  # the port is dropped (distribution.source.<host>)
        assert got.source_repository == "test/multi"


async def test_resolve_by_digest_and_single_manifest(registry: Pushed, client: RegistryClient) -> None:
    by_digest = parse_reference(f"{registry.host}/test/multi@{sha256_digest(registry.index)}")
    got = await client.resolve(by_digest, AMD64)
    assert got.manifest.digest == registry.amd64.digest

    single = await client.resolve(parse_reference(f"{registry.host}/test/single:v1"), ARM64)
    assert single.index_bytes is None
    assert single.target == single.manifest
    assert single.manifest.media_type == DOCKER_MANIFEST
    assert single.manifest.digest == registry.single.digest
    assert single.platform == AMD64  # from the config; the caller decides whether to warn


async def test_platform_missing(registry: Pushed, client: RegistryClient) -> None:
    with pytest.raises(ImageNotFoundError) as info:
        await client.resolve(parse_reference(f"{registry.host}/test/multi"), Platform("linux", "s390x"))
    msg = str(info.value)
    assert "no manifest for platform linux/s390x" in msg and "linux/amd64" in msg and "linux/arm64/v8" in msg


async def test_not_found(registry: Pushed, client: RegistryClient) -> None:
    ref = parse_reference(f"{registry.host}/test/multi:nope")
    with pytest.raises(ImageNotFoundError) as info:
        await client.resolve(ref, AMD64)
    assert str(info.value) == f"image {registry.host}/test/multi:nope not found: manifest unknown"
    assert info.value.exit_code == 125
    with pytest.raises(ImageNotFoundError, match="not found"):
        await client.resolve(parse_reference(f"{registry.host}/no/such/repo"), AMD64)


async def test_unreachable(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    async with RegistryClient(hosts_dir=str(tmp_path), retries=2, backoff_base=0.01) as c:
        started = time.monotonic()
        with pytest.raises(RegistryError) as info:
            await c.resolve(parse_reference(f"127.0.0.1:{port}/x/y"), AMD64)
    assert str(info.value) == f"cannot reach registry 127.0.0.1:{port}: connection refused"
    assert time.monotonic() - started < 5


async def test_insecure_listed_plain_http_registry(registry: Pushed, tmp_path: Path) -> None:
    """Listed as insecure, a plain-HTTP registry is first tried over TLS; that failure is remembered."""
    async with RegistryClient(
        hosts_dir=str(tmp_path), insecure=[registry.host], docker_config_dir=str(tmp_path)
    ) as c:
        assert [h.scheme for h in c.hosts(registry.host)] == ["https", "http"]
        got = await c.resolve(parse_reference(f"{registry.host}/test/multi"), AMD64)
        assert got.manifest.digest == registry.amd64.digest
        assert [h.scheme for h in c._tls_failed] == ["https"]


async def test_fetch_blob_offsets(registry: Pushed, client: RegistryClient) -> None:
    ref = parse_reference(f"{registry.host}/test/multi")
    big = Descriptor("application/octet-stream", registry.big_digest, len(registry.big))

    async def read(offset: int, chunk: int = 1 << 20) -> bytes:
        out = bytearray()
        async for piece in client.fetch_blob(ref, big, offset, chunk_size=chunk):
            assert len(piece) <= chunk
            out += piece
        return bytes(out)

    whole = await read(0)
    assert hashlib.sha256(whole).hexdigest() == registry.big_digest.removeprefix("sha256:")
    assert await read(1_000_001, chunk=64 << 10) == registry.big[1_000_001:]
    assert await read(len(registry.big) - 1) == registry.big[-1:]
    assert await read(len(registry.big)) == b""
    with pytest.raises(ValueError):
        await read(len(registry.big) + 1)

    wrong_size = Descriptor("application/octet-stream", registry.big_digest, len(registry.big) + 5)
    with pytest.raises(DigestMismatchError):
        async for _ in client.fetch_blob(ref, wrong_size):
            pass


async def test_fetch_range(registry: Pushed, client: RegistryClient) -> None:
    ref = parse_reference(f"{registry.host}/test/multi")
    big = Descriptor("application/octet-stream", registry.big_digest, len(registry.big))
    assert await client.fetch_range(ref, big, 0, 0) == registry.big[:1]
    assert await client.fetch_range(ref, big, 4096, 70_000) == registry.big[4096:70_001]
    last = len(registry.big) - 1
    assert await client.fetch_range(ref, big, last - 9, last) == registry.big[-10:]
    ranges = [(i * 500_000, i * 500_000 + 99_999) for i in range(6)]
    parts = await asyncio.gather(*(client.fetch_range(ref, big, a, b) for a, b in ranges))
    assert parts == [registry.big[a : b + 1] for a, b in ranges]
    with pytest.raises(ValueError):
        await client.fetch_range(ref, big, 10, last + 1)


async def test_blob_bytes_verified(registry: Pushed, client: RegistryClient) -> None:
    ref = parse_reference(f"{registry.host}/test/multi")
    cfg = registry.amd64.config_digest
    data = await client.fetch_blob_bytes(ref, Descriptor(OCI_CONFIG, cfg, len(registry.amd64.blobs[cfg])))
    assert data == registry.amd64.blobs[cfg]
    missing = Descriptor(OCI_CONFIG, "sha256:" + "0" * 64, 10)
    with pytest.raises(RegistryError, match="not found"):
        await client.fetch_blob_bytes(ref, missing)


async def test_referrers_absent_on_distribution_2_8(registry: Pushed, client: RegistryClient) -> None:
    ref = parse_reference(f"{registry.host}/test/multi")
    assert await client.fetch_referrers(ref, registry.amd64.digest) is None


# ----------------------------------------------------------------------------------------- fake servers


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """`host = await serve(handler)` runs an aiohttp app that sends every request to `handler`."""
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        return f"{host}:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


@dataclass
class FakeRegistry:
    """Content for a fake registry: one image under `test/img:v1`, served by path."""

    image: Image = field(default_factory=lambda: make_image("amd64"))
    requests: list[web.Request] = field(default_factory=list)

    def content(self, request: web.Request) -> web.Response:
        path = request.path
        if path.endswith("/manifests/v1") or path.endswith(f"/manifests/{self.image.digest}"):
            return web.Response(
                body=self.image.manifest,
                headers={
                    "Content-Type": self.image.manifest_type,
                    "Docker-Content-Digest": self.image.digest,
                },
            )
        digest = path.rsplit("/", 1)[-1]
        if "/blobs/" in path and digest in self.image.blobs:
            return web.Response(body=self.image.blobs[digest], content_type="application/octet-stream")
        return web.json_response(
            {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}, status=404
        )


def docker_config(tmp_path: Path, auths: dict[str, Any]) -> str:
    d = tmp_path / "docker"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps({"auths": auths}))
    return str(d)


@pytest.mark.parametrize("mode", ["anonymous", "password-post", "basic-fallback", "identity-token"])
async def test_token_auth_flow(
    serve: Callable[[Handler], Awaitable[str]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    mode: str,
) -> None:
    fake = FakeRegistry()
    token_requests: list[tuple[str, dict[str, str], dict[str, str], str]] = []
    host_box: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/token":
            form = dict(await request.post()) if request.method == "POST" else {}
            auth = request.headers.get("Authorization", "")
            token_requests.append(
                (request.method, dict(request.query), {k: str(v) for k, v in form.items()}, auth)
            )
            if request.method == "POST":
                if mode == "basic-fallback":
                    return web.Response(status=404)
                ok = (form.get("grant_type") == "password" and form.get("password") == SECRET) or (
                    form.get("grant_type") == "refresh_token" and form.get("refresh_token") == SECRET
                )
                return web.json_response(
                    {"access_token": "tok-post", "expires_in": 300}, status=200 if ok else 401
                )
            expected_basic = "Basic " + base64.b64encode(f"alice:{SECRET}".encode()).decode()
            if mode == "basic-fallback" and auth != expected_basic:
                return web.Response(status=401)
            return web.json_response({"token": "tok-get"})
        fake.requests.append(request)
        if request.headers.get("Authorization") not in ("Bearer tok-post", "Bearer tok-get"):
            challenge = (
                f'Bearer realm="http://{host_box[0]}/token",service="fake-registry",'
                'scope="repository:test/img:pull"'
            )
            return web.json_response(
                {"errors": [{"code": "UNAUTHORIZED"}]}, status=401, headers={"WWW-Authenticate": challenge}
            )
        return fake.content(request)

    host = await serve(handler)
    host_box.append(host)
    if mode == "anonymous":
        config_dir = docker_config(tmp_path, {})
    elif mode == "identity-token":
        config_dir = docker_config(tmp_path, {host: {"identitytoken": SECRET}})
    else:
        config_dir = docker_config(
            tmp_path, {host: {"auth": base64.b64encode(f"alice:{SECRET}".encode()).decode()}}
        )

    caplog.set_level(logging.DEBUG)
    async with RegistryClient(hosts_dir=str(tmp_path / "none"), docker_config_dir=config_dir) as c:
        # Five at once, before any challenge is known: they all meet the 401, but only one token is fetched.
        first = await asyncio.gather(
            *(c.resolve(parse_reference(f"{host}/test/img:v1"), AMD64) for _ in range(5))
        )
        again = await c.resolve(parse_reference(f"{host}/test/img:v1"), AMD64)
    assert {r.manifest.digest for r in first} == {fake.image.digest} == {again.manifest.digest}

    # One token for the whole session: later requests carry it without another 401.
    assert len(token_requests) == (2 if mode == "basic-fallback" else 1)
    method, query, form, auth = token_requests[-1]
    if mode == "anonymous":
        assert method == "GET" and auth == ""
        assert query == {"service": "fake-registry", "scope": "repository:test/img:pull"}
    elif mode == "password-post":
        assert method == "POST"
        assert form["grant_type"] == "password" and form["username"] == "alice"
        assert form["scope"] == "repository:test/img:pull" and form["service"] == "fake-registry"
    elif mode == "identity-token":
        assert method == "POST" and form["grant_type"] == "refresh_token"
    else:
        assert [r[0] for r in token_requests] == ["POST", "GET"] and auth.startswith("Basic ")
    unauthorised = [r for r in fake.requests if "Authorization" not in r.headers]
    assert len(unauthorised) == 5  # only the first, parallel, requests met the challenge
    assert SECRET not in caplog.text


async def test_refused_credentials_never_leak(
    serve: Callable[[Handler], Awaitable[str]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    host_box: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/token":
            return web.Response(status=403, text=f"echoing what you sent: {await request.text()}")
        return web.Response(
            status=401, headers={"WWW-Authenticate": f'Bearer realm="http://{host_box[0]}/token",service="s"'}
        )

    host = await serve(handler)
    host_box.append(host)
    config_dir = docker_config(tmp_path, {host: {"username": "alice", "password": SECRET}})
    caplog.set_level(logging.DEBUG)
    async with RegistryClient(hosts_dir=str(tmp_path / "none"), docker_config_dir=config_dir) as c:
        with pytest.raises(AuthError) as info:
            await c.resolve(parse_reference(f"{host}/test/img:v1"), AMD64)
    err = info.value
    assert "refused the stored credentials" in str(err)
    basic = base64.b64encode(f"alice:{SECRET}".encode()).decode()
    for text in (str(err), repr(err), caplog.text, repr(err.__cause__), repr(err.__context__)):
        assert SECRET not in text and basic not in text


async def test_429_retry_after_then_success(
    serve: Callable[[Handler], Awaitable[str]], tmp_path: Path
) -> None:
    fake = FakeRegistry()
    calls: list[float] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        calls.append(time.monotonic())
        if len(calls) == 1:
            return web.json_response(
                {"errors": [{"code": "TOOMANYREQUESTS", "message": "slow down"}]},
                status=429,
                headers={"Retry-After": "1"},
            )
        return fake.content(request)

    host = await serve(handler)
    async with RegistryClient(hosts_dir=str(tmp_path), backoff_base=0.01) as c:
        got = await c.resolve(parse_reference(f"{host}/test/img:v1"), AMD64)
    assert got.manifest.digest == fake.image.digest
    assert calls[1] - calls[0] >= 0.95  # Retry-After was honoured, not the 10 ms backoff


async def test_5xx_retried_then_gives_up(serve: Callable[[Handler], Awaitable[str]], tmp_path: Path) -> None:
    fake = FakeRegistry()
    calls = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        if calls <= 2 or "/nope" in request.path:
            return web.Response(status=503, reason="Service Unavailable")
        return fake.content(request)

    host = await serve(handler)
    async with RegistryClient(hosts_dir=str(tmp_path), backoff_base=0.01, retries=4) as c:
        await c.resolve(parse_reference(f"{host}/test/img:v1"), AMD64)
        calls = 100
        before = calls
        with pytest.raises(RegistryError) as info:
            await c.resolve(parse_reference(f"{host}/test/nope:v1"), AMD64)
    assert calls - before == 4  # `retries` attempts in all
    assert "503" in str(info.value)


def test_retry_after_forms() -> None:
    assert _retry_after("3") == 3.0
    assert _retry_after(None) is None and _retry_after("soon") is None
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    got = _retry_after(future)
    assert got is not None and 25 < got <= 31
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


async def test_registry_ignoring_range(serve: Callable[[Handler], Awaitable[str]], tmp_path: Path) -> None:
    data = os.urandom(200_000)
    digest = sha256_digest(data)

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=data)  # always 200 with the whole blob, whatever Range says

    host = await serve(handler)
    ref = parse_reference(f"{host}/test/blob")
    d = Descriptor("application/octet-stream", digest, len(data))
    async with RegistryClient(hosts_dir=str(tmp_path)) as c:
        out = bytearray()
        async for piece in c.fetch_blob(ref, d, offset=123_457, chunk_size=10_000):
            out += piece
        assert bytes(out) == data[123_457:]  # the first 123457 bytes of the 200 were discarded
        with pytest.raises(RangeNotSupportedError):
            await c.fetch_range(ref, d, 10, 20)


async def test_resume_after_connection_drop(tmp_path: Path) -> None:
    """A raw HTTP server that cuts the first response in half; the client must resume with Range."""
    data = os.urandom(1_500_000)
    digest = sha256_digest(data)
    seen_ranges: list[str | None] = []

    async def conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        headers = dict(line.split(": ", 1) for line in head.split("\r\n")[1:] if ": " in line)
        rng = next((v for k, v in headers.items() if k.lower() == "range"), None)
        seen_ranges.append(rng)
        if rng is None:
            writer.write(
                f"HTTP/1.1 200 OK\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
            )
            writer.write(data[: len(data) // 2])
            await writer.drain()
            writer.transport.abort()  # mid-body, as a flaky network would
            return
        start = int(rng.removeprefix("bytes=").rstrip("-"))
        writer.write(
            (
                "HTTP/1.1 206 Partial Content\r\n"
                f"Content-Range: bytes {start}-{len(data) - 1}/{len(data)}\r\n"
                f"Content-Length: {len(data) - start}\r\nConnection: close\r\n\r\n"
            ).encode()
        )
        writer.write(data[start:])
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(conn, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with RegistryClient(hosts_dir=str(tmp_path), backoff_base=0.01) as c:
            h = hashlib.sha256()
            async for piece in c.fetch_blob(
                parse_reference(f"127.0.0.1:{port}/test/blob"), Descriptor("x", digest, len(data))
            ):
                h.update(piece)
        assert "sha256:" + h.hexdigest() == digest
        assert seen_ranges[0] is None
        assert len(seen_ranges) == 2 and seen_ranges[1] is not None
        assert int(seen_ranges[1].removeprefix("bytes=").rstrip("-")) > 0
    finally:
        server.close()
        await server.wait_closed()


async def test_mirror_gets_ns_and_only_what_its_capabilities_allow(
    registry: Pushed, serve: Callable[[Handler], Awaitable[str]], tmp_path: Path
) -> None:
    seen: list[tuple[str, str | None]] = []

    async def mirror(request: web.Request) -> web.StreamResponse:
        seen.append((request.path, request.query.get("ns")))
        return web.json_response({"errors": [{"code": "BLOB_UNKNOWN", "message": "not cached"}]}, status=404)

    mirror_host = await serve(mirror)
    hosts_dir = tmp_path / "certs.d"
    d = hosts_dir / (registry.host.replace(":", "_") + "_")  # containerd's 127.0.0.1_PORT_ form
    d.mkdir(parents=True)
    (d / "hosts.toml").write_text(
        f'server = "http://{registry.host}"\n\n[host."http://{mirror_host}"]\n  capabilities = ["pull"]\n'
    )
    async with RegistryClient(hosts_dir=str(hosts_dir), docker_config_dir=str(tmp_path)) as c:
        got = await c.resolve(parse_reference(f"{registry.host}/test/multi"), AMD64)
    assert got.manifest.digest == registry.amd64.digest  # the upstream answered after the mirror's 404s
    # The tag was resolved upstream only (a pull-only mirror is not trusted to resolve); digests went to the
    # mirror first, with ?ns=<original registry>.
    assert all("/manifests/latest" not in path for path, _ in seen)
    assert (f"/v2/test/multi/manifests/{registry.amd64.digest}", registry.host) in seen
    assert (f"/v2/test/multi/blobs/{registry.amd64.config_digest}", registry.host) in seen


def test_proxy_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://user:p%40ss@proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example,.corp.example")
    for var in ("https_proxy", "no_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(var, raising=False)
    c = RegistryClient()
    opts = c._request_options("https://registry.example.com/v2/x/manifests/latest")
    assert opts["proxy"] == "http://proxy.example:3128"
    assert opts["proxy_headers"] == {
        "Proxy-Authorization": "Basic " + base64.b64encode(b"user:p@ss").decode()
    }
    assert c._request_options("http://registry.example.com/v2/") == {}  # no HTTP_PROXY set
    assert c._request_options("https://internal.example/v2/") == {}
    assert c._request_options("https://reg.corp.example:5000/v2/") == {}
    assert c._request_options("https://127.0.0.1:5000/v2/") == {}  # loopback is never proxied


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make a test certificate")
async def test_tls_ca_from_hosts_toml(tmp_path: Path) -> None:
    """A loopback HTTPS registry with a private certificate: refused without `ca`, trusted with it."""
    import ssl

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    fake = FakeRegistry()

    async def handler(request: web.Request) -> web.StreamResponse:
        return fake.content(request)

    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    host = f"127.0.0.1:{runner.addresses[0][1]}"
    ref = parse_reference(f"{host}/test/img:v1")
    try:
        hosts_dir = tmp_path / "certs.d"
        d = hosts_dir / host
        d.mkdir(parents=True)
        (d / "hosts.toml").write_text(f'server = "https://{host}"\n')
        async with RegistryClient(hosts_dir=str(hosts_dir), docker_config_dir=str(tmp_path)) as c:
            with pytest.raises(RegistryError, match=f"TLS verification failed for registry {host}"):
                await c.resolve(ref, AMD64)
        (d / "hosts.toml").write_text(f'server = "https://{host}"\nca = "{cert}"\n')
        async with RegistryClient(hosts_dir=str(hosts_dir), docker_config_dir=str(tmp_path)) as c:
            got = await c.resolve(ref, AMD64)
        assert got.manifest.digest == fake.image.digest
        # docker's insecure-registries: HTTPS without verification works too.
        (d / "hosts.toml").unlink()
        d.rmdir()
        async with RegistryClient(
            hosts_dir=str(hosts_dir), insecure=[host], docker_config_dir=str(tmp_path)
        ) as c:
            assert (await c.resolve(ref, AMD64)).manifest.digest == fake.image.digest
    finally:
        await runner.cleanup()


async def test_dead_mirror_does_not_hide_upstream_answers(registry: Pushed, tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    d = tmp_path / "certs.d" / registry.host
    d.mkdir(parents=True)
    (d / "hosts.toml").write_text(f'[host."http://{dead}"]\n  capabilities = ["pull", "resolve"]\n')
    async with RegistryClient(hosts_dir=str(tmp_path / "certs.d"), backoff_base=0.5) as c:
        got = await c.resolve(parse_reference(f"{registry.host}/test/multi"), AMD64)
        assert got.manifest.digest == registry.amd64.digest
        started = time.monotonic()
        with pytest.raises(ImageNotFoundError):
            await c.resolve(parse_reference(f"{registry.host}/test/multi:missing"), AMD64)
        assert time.monotonic() - started < 0.4  # no backoff rounds spent on the dead mirror
