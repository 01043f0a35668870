"""Registry and image hardening (issue 12, items 5, 8, 11, 14, 17, 19): what a hostile or broken registry, token
server, redirect target or image can make socirun do. Servers are tiny aiohttp apps or raw asyncio servers on
127.0.0.1; each test stops its own."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web

from socirun.containerd.errors import AlreadyExistsError, RpcError
from socirun.containerd.types import IngestStatus
from socirun.containerd.writer import ContentWriter, StallClock
from socirun.errors import AuthError, ContainerdError, MalformedImageError, RegistryError
from socirun.oci import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    Platform,
    check_image_config,
    load_json_object,
    parse_image_config,
    parse_index,
    parse_manifest,
    sha256_digest,
)
from socirun.reference import parse_reference
from socirun.registry.auth import Authorizer, check_realm, parse_token
from socirun.registry.client import MAX_MANIFEST_SIZE, RegistryClient, too_large, verify_digest

SECRET = "hunter2-registry-password"
AMD64 = Platform("linux", "amd64")
D = "sha256:" + "a" * 64

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def start_app(handler: Handler, ssl_context: ssl.SSLContext | None = None) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    return runner, f"127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler, ssl_context: ssl.SSLContext | None = None) -> str:
        runner, host = await start_app(handler, ssl_context)
        runners.append(runner)
        return host

    yield start
    for runner in runners:
        await runner.cleanup()


def docker_config(tmp_path: Path, host: str) -> str:
    d = tmp_path / "docker"
    d.mkdir(exist_ok=True)
    auth = base64.b64encode(f"alice:{SECRET}".encode()).decode()
    (d / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return str(d)


def leaked(text: str) -> bool:
    basic = base64.b64encode(f"alice:{SECRET}".encode()).decode()
    return SECRET in text or basic in text


# ------------------------------------------------------------------------------------ item 5: redirects


@pytest.mark.parametrize("challenge", ["bearer", "basic"])
async def test_redirect_targets_challenge_never_gets_the_registrys_credentials(
    serve: Callable[..., Awaitable[str]], tmp_path: Path, challenge: str
) -> None:
    """The registry (Basic auth, alice's password) redirects a blob to a storage host that answers 401. The
    storage host may get an anonymous token from its own realm, never the password nor the registry's header."""
    data = b"layer bytes " * 100
    digest = sha256_digest(data)
    seen_by_storage: list[str] = []  # everything the storage host and its token server received
    storage_box: list[str] = []

    async def storage(request: web.Request) -> web.StreamResponse:
        body = await request.text()
        seen_by_storage.append(f"{request.method} {request.path_qs} {dict(request.headers)} {body}")
        if request.path == "/token":
            return web.json_response({"token": "storage-token"})
        if request.headers.get("Authorization") == "Bearer storage-token":
            return web.Response(body=data)
        header = (f'Bearer realm="http://{storage_box[0]}/token",service="storage"' if challenge == "bearer"
                  else 'Basic realm="storage"')
        return web.Response(status=401, headers={"WWW-Authenticate": header})

    async def registry(request: web.Request) -> web.StreamResponse:
        expected = "Basic " + base64.b64encode(f"alice:{SECRET}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="registry"'})
        raise web.HTTPTemporaryRedirect(f"http://{storage_box[0]}/blobs/{digest}?signed=1")

    storage_box.append(await serve(storage))
    host = await serve(registry)
    ref = parse_reference(f"{host}/test/img:v1")
    desc = Descriptor("application/octet-stream", digest, len(data))
    async with RegistryClient(hosts_dir=str(tmp_path / "none"), docker_config_dir=docker_config(tmp_path, host),
                              retries=1) as c:
        if challenge == "bearer":
            assert await c.fetch_blob_bytes(ref, desc) == data  # the anonymous token flow, for the storage host
        else:
            with pytest.raises(AuthError, match="asks for a password; socirun sends the registry's credentials"):
                await c.fetch_blob_bytes(ref, desc)
    assert seen_by_storage
    assert not any(leaked(s) for s in seen_by_storage)
    assert not any("POST" in s.split(" ", 1)[0] for s in seen_by_storage)  # no password grant attempted


async def test_http_realm_named_by_an_https_registry_is_refused(tmp_path: Path) -> None:
    asked: list[str] = []

    async def token(request: web.Request) -> web.StreamResponse:
        asked.append(request.path_qs)
        return web.json_response({"token": "t"})

    runner, token_host = await start_app(token)
    try:
        async with aiohttp.ClientSession() as session:
            auth = Authorizer(session, docker_config_dir=str(tmp_path))
            with pytest.raises(AuthError, match="not an https URL"):
                await auth.on_unauthorized("registry.example", "repository:x:pull",
                                           [f'Bearer realm="http://{token_host}/token"'], plain_http=False)
            # A plain-HTTP registry (loopback, http:// in hosts.toml, insecure) may name an http realm.
            assert await auth.on_unauthorized("127.0.0.1:5000", "repository:x:pull",
                                              [f'Bearer realm="http://{token_host}/token"'], plain_http=True)
    finally:
        await runner.cleanup()
    assert len(asked) == 1  # only the plain-HTTP registry's token request went out


@pytest.mark.parametrize("realm", ["http://auth.example/token", "ftp://auth.example/x", "/token", "javascript:x"])
def test_check_realm_refuses_anything_but_https(realm: str) -> None:
    with pytest.raises(AuthError, match="not an https URL"):
        check_realm(realm, "registry r.example", plain_http=False)
    check_realm("https://auth.example/token", "registry r.example", plain_http=False)


# ------------------------------------------------------------------------------------ item 14: token TLS


def make_cert(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "ca.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make a test certificate")
async def test_token_server_is_reached_with_the_hosts_toml_ca(
    serve: Callable[..., Awaitable[str]], tmp_path: Path
) -> None:
    """An HTTPS registry with a private CA (hosts.toml `ca`) whose realm is on the same server: the token
    request must trust that CA too, as the registry requests do."""
    cert, key = make_cert(tmp_path)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": OCI_CONFIG, "digest": D, "size": 2}, "layers": []}).encode()
    box: list[str] = []
    tokens: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/token":
            tokens.append(request.method)
            return web.json_response({"token": "tls-token"})
        if request.headers.get("Authorization") != "Bearer tls-token":
            return web.Response(status=401, headers={"WWW-Authenticate": f'Bearer realm="https://{box[0]}/token"'})
        return web.Response(body=manifest, content_type=OCI_MANIFEST)

    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    host = await serve(handler, server_ctx)
    box.append(host)
    d = tmp_path / "certs.d" / host
    d.mkdir(parents=True)
    (d / "hosts.toml").write_text(f'server = "https://{host}"\nca = "{cert}"\n')
    async with RegistryClient(hosts_dir=str(tmp_path / "certs.d"), docker_config_dir=str(tmp_path)) as c:
        _, body = await c.fetch_manifest(parse_reference(f"{host}/test/img:v1"))
    assert body == manifest and tokens == ["GET"]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make a test certificate")
@pytest.mark.parametrize("with_client_cert", [True, False])
async def test_token_server_gets_the_hosts_toml_client_certificate(
    serve: Callable[..., Awaitable[str]], tmp_path: Path, with_client_cert: bool
) -> None:
    """An HTTPS registry whose hosts.toml gives `ca` and `client = [[cert, key]]` (containerd's pair form; a flat
    list names combined PEM files), and whose realm is a token server that accepts only clients with a certificate
    from that client CA (mutual TLS): the token request must present the host's client certificate. Without one in
    hosts.toml, the token server refuses the handshake and the pull ends with one sentence naming the token server
    (the registry itself asks for no client certificate, so it is the token request that must carry it)."""
    server_cert, server_key = make_cert(tmp_path)
    (tmp_path / "client").mkdir()
    client_cert, client_key = make_cert(tmp_path / "client")  # self-signed: its own CA
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": OCI_CONFIG, "digest": D, "size": 2}, "layers": []}).encode()
    tokens: list[str] = []

    async def token(request: web.Request) -> web.StreamResponse:
        tokens.append(request.method)
        return web.json_response({"token": "mtls-token"})

    token_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    token_ctx.load_cert_chain(server_cert, server_key)
    token_ctx.verify_mode = ssl.CERT_REQUIRED
    token_ctx.load_verify_locations(cafile=client_cert)
    token_host = await serve(token, token_ctx)

    async def registry(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != "Bearer mtls-token":
            return web.Response(status=401, headers={"WWW-Authenticate": f'Bearer realm="https://{token_host}/token"'})
        return web.Response(body=manifest, content_type=OCI_MANIFEST)

    registry_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    registry_ctx.load_cert_chain(server_cert, server_key)
    host = await serve(registry, registry_ctx)
    d = tmp_path / "certs.d" / host
    d.mkdir(parents=True)
    client = f'client = [["{client_cert}", "{client_key}"]]\n' if with_client_cert else ""
    (d / "hosts.toml").write_text(f'server = "https://{host}"\nca = "{server_cert}"\n{client}')
    async with RegistryClient(hosts_dir=str(tmp_path / "certs.d"), docker_config_dir=str(tmp_path), retries=1) as c:
        if with_client_cert:
            _, body = await c.fetch_manifest(parse_reference(f"{host}/test/img:v1"))
            assert body == manifest and tokens == ["GET"]
        else:
            with pytest.raises(AuthError, match=f"^cannot reach the token server for {host}: ") as info:
                await c.fetch_manifest(parse_reference(f"{host}/test/img:v1"))
            assert "\n" not in str(info.value) and tokens == []


# ------------------------------------------------------------------------------------ item 8: unbounded reads


async def start_raw(handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
                    ) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


@pytest.mark.parametrize("declared", [False, True])
async def test_a_206_longer_than_asked_is_refused_without_reading_it(tmp_path: Path, declared: bool) -> None:
    """A hostile registry answers a 100-byte range with an endless 206: an error, and the client stops reading
    (what the server managed to send is bounded by the socket buffers, not by its 256 MiB)."""
    sent = 0
    piece = b"x" * (1 << 16)
    limit = 256 << 20

    async def conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await reader.readuntil(b"\r\n\r\n")
        length = f"Content-Length: {limit}\r\n" if declared else ""
        writer.write(("HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-99/1000000\r\n"
                      f"{length}Connection: close\r\n\r\n").encode())
        try:
            while sent < limit:
                writer.write(piece)
                await writer.drain()
                sent += len(piece)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    server, host = await start_raw(conn)
    try:
        async with RegistryClient(hosts_dir=str(tmp_path), retries=1) as c:
            desc = Descriptor("application/octet-stream", D, 1_000_000)
            with pytest.raises(RegistryError, match="bytes asked") as info:
                await c.fetch_range(parse_reference(f"{host}/test/blob"), desc, 0, 99)
        await asyncio.sleep(0.2)  # let the server notice the closed connection
    finally:
        server.close()
        await server.wait_closed()
    assert "100" in str(info.value)
    assert sent < 32 << 20, f"the server sent {sent} bytes before the client stopped reading"


async def test_a_huge_token_response_is_one_sentence(serve: Callable[..., Awaitable[str]], tmp_path: Path) -> None:
    sent = 0
    box: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        if request.path == "/token":
            resp = web.StreamResponse()  # chunked: no Content-Length to refuse it by
            await resp.prepare(request)
            try:
                await resp.write(b'{"token": "')
                while sent < 64 << 20:
                    await resp.write(b"a" * (1 << 16))
                    sent += 1 << 16
            except (ConnectionError, OSError):
                pass
            return resp
        return web.Response(status=401, headers={"WWW-Authenticate": f'Bearer realm="http://{box[0]}/token"'})

    host = await serve(handler)
    box.append(host)
    async with RegistryClient(hosts_dir=str(tmp_path / "none"), docker_config_dir=str(tmp_path), retries=1) as c:
        with pytest.raises(AuthError) as info:
            await c.fetch_manifest(parse_reference(f"{host}/test/img:v1"))
    assert str(info.value) == f"the token server for {host} sent more than 1 MiB, which is no token"
    assert sent < 32 << 20


@pytest.mark.parametrize(("declared", "sentence"), [
    (True, "image {host}/test/img:v1 is 5 MiB, more than the 4.2 MiB allowed"),
    (False, "image {host}/test/img:v1 is larger than the 4.2 MiB allowed"),  # chunked: its size is never known
])
async def test_a_manifest_past_the_limit_is_named_in_humane_units(
    serve: Callable[..., Awaitable[str]], tmp_path: Path, declared: bool, sentence: str
) -> None:
    """Issue 13: "4.2 MiB" (containerd's limit, 4 x 1048 x 1048 bytes), not "4393216"."""
    body = b" " * (5 << 20)

    async def handler(request: web.Request) -> web.StreamResponse:
        if declared:
            return web.Response(body=body, content_type=OCI_MANIFEST)
        resp = web.StreamResponse(headers={"Content-Type": OCI_MANIFEST})
        await resp.prepare(request)
        try:
            for i in range(0, len(body), 1 << 16):
                await resp.write(body[i:i + (1 << 16)])
        except (ConnectionError, OSError):
            pass
        return resp

    host = await serve(handler)
    async with RegistryClient(hosts_dir=str(tmp_path / "none"), docker_config_dir=str(tmp_path), retries=1) as c:
        with pytest.raises(RegistryError) as info:
            await c.fetch_manifest(parse_reference(f"{host}/test/img:v1"))
    assert str(info.value) == sentence.format(host=host)


def test_a_size_that_rounds_to_the_limit_is_left_out() -> None:
    assert too_large("blob x", MAX_MANIFEST_SIZE + 1, MAX_MANIFEST_SIZE) == "blob x is larger than the 4.2 MiB allowed"
    assert too_large("blob x", 70 << 20, 64 << 20) == "blob x is 70 MiB, more than the 64 MiB allowed"


# ------------------------------------------------------------------------------------ item 19: watchdog


async def test_a_trickling_manifest_hits_the_total_timeout(tmp_path: Path) -> None:
    async def conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
        try:
            for _ in range(100):  # a byte every 0.1 s: never idle long enough for sock_read to fire
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(0.1)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    server, host = await start_raw(conn)
    try:
        async with RegistryClient(hosts_dir=str(tmp_path), small_request_timeout=0.5) as c:
            started = time.monotonic()
            with pytest.raises(RegistryError, match=r"did not arrive within 0.5 s"):
                await c.fetch_manifest(parse_reference(f"{host}/test/img:v1"))
            assert time.monotonic() - started < 3
    finally:
        server.close()
        await server.wait_closed()


async def test_a_stalled_token_server_hits_the_token_timeout(tmp_path: Path) -> None:
    release = asyncio.Event()

    async def token(request: web.Request) -> web.StreamResponse:
        await release.wait()  # answers only once the test is over
        return web.json_response({"token": "late"})

    runner, token_host = await start_app(token)
    try:
        async with aiohttp.ClientSession() as session:
            auth = Authorizer(session, docker_config_dir=str(tmp_path), timeout=0.3)
            started = time.monotonic()
            with pytest.raises(AuthError, match=r"the token server for 127.0.0.1:5000 did not answer within 0.3 s"):
                await auth.on_unauthorized("127.0.0.1:5000", "repository:x:pull",
                                           [f'Bearer realm="http://{token_host}/token"'], plain_http=True)
            assert time.monotonic() - started < 3
    finally:
        release.set()
        await runner.cleanup()


# ------------------------------------------------------------------------------------ item 11: image parsers


def desc(**changes: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"mediaType": OCI_LAYER_GZIP, "digest": D, "size": 10}
    out.update(changes)
    return {k: v for k, v in out.items() if v is not ...}


DESCRIPTOR_CASES = [
    ("not an object", ["x"], "is not a JSON object"),
    ("no digest", desc(digest=...), "has no digest"),
    ("md5 digest", desc(digest="md5:" + "a" * 32), "not a sha256, sha384 or sha512 digest"),
    ("sha1 digest", desc(digest="sha1:" + "a" * 40), "not a sha256, sha384 or sha512 digest"),
    ("short sha256", desc(digest="sha256:abc"), "not a sha256, sha384 or sha512 digest"),
    ("upper-case hex", desc(digest="sha256:" + "A" * 64), "not a sha256, sha384 or sha512 digest"),
    ("digest not a string", desc(digest=5), "not a sha256, sha384 or sha512 digest"),
    ("negative size", desc(size=-1), "size -1, not a byte count"),
    ("size a string", desc(size="10"), "not a byte count"),
    ("size a bool", desc(size=True), "not a byte count"),
    ("size a float", desc(size=1.5), "not a byte count"),
    ("no size", desc(size=...), "not a byte count"),
    ("mediaType a list", desc(mediaType=["a"]), "mediaType that is not a string"),
    ("annotations a list", desc(annotations=["a"]), "annotations that are not a JSON object of strings"),
    ("annotation value a number", desc(annotations={"a": 1}), "annotations that are not"),
    ("platform a string", desc(platform="linux/amd64"), "platform that is not a JSON object"),
    ("platform os a dict", desc(platform={"os": {}, "architecture": "amd64"}), "os that is not a string"),
]


@pytest.mark.parametrize(("case", "obj", "sentence"), DESCRIPTOR_CASES, ids=[c[0] for c in DESCRIPTOR_CASES])
def test_malformed_descriptors(case: str, obj: object, sentence: str) -> None:
    with pytest.raises(MalformedImageError, match=sentence) as info:
        Descriptor.from_json(obj, "layer 0 of the manifest of image x")
    assert str(info.value).startswith("layer 0 of the manifest of image x ")
    assert isinstance(info.value, RegistryError)


def test_go_digest_algorithms_are_accepted_and_md5_is_not_verified() -> None:
    assert Descriptor.from_json(desc(digest="sha512:" + "b" * 128)).size == 10
    assert Descriptor.from_json(desc(digest="sha384:" + "c" * 96)).size == 10
    data = b"x"
    with pytest.raises(RegistryError, match="unsupported digest algorithm 'md5'"):
        verify_digest(data, "md5:" + hashlib.md5(data).hexdigest(), "the manifest")  # hashlib would take it
    verify_digest(data, "sha512:" + hashlib.sha512(data).hexdigest(), "the manifest")
    assert Descriptor.from_json(desc(size=0, annotations=None, platform=None)).annotations == {}


def j(doc: object) -> bytes:
    return json.dumps(doc).encode()


DEEP = b"[" * 200_000 + b"]" * 200_000
DEEP_OBJECT = b'{"a":' * 200_000 + b"1" + b"}" * 200_000

PARSER_CASES: list[tuple[str, Callable[[bytes, str], object], bytes, str]] = [
    ("index nested 200k deep", parse_index, DEEP, "nests JSON too deeply"),
    ("manifest nested 200k deep", parse_manifest, DEEP_OBJECT, "nests JSON too deeply"),
    ("config nested 200k deep", parse_image_config, DEEP, "nests JSON too deeply"),
    ("index not JSON", parse_index, b"\xff\xfe", "is not valid JSON"),
    ("index an array", parse_index, j([]), "is not a JSON object"),
    ("index entry without digest", parse_index, j({"manifests": [{"mediaType": OCI_MANIFEST, "size": 3}]}),
     "entry 0 of .* has no digest"),
    ("index manifests an object", parse_index, j({"manifests": {"a": 1}}), "manifests that are not a JSON array"),
    ("index entry a string", parse_index, j({"manifests": ["sha256:x"]}), "entry 0 of .* not a JSON object"),
    ("manifest without config", parse_manifest, j({"layers": []}), "has no config"),
    ("manifest config a string", parse_manifest, j({"config": D}), "config descriptor of .* not a JSON object"),
    ("manifest layers an object", parse_manifest, j({"config": desc(), "layers": {}}), "layers that are not"),
    ("manifest layer negative size", parse_manifest, j({"config": desc(), "layers": [desc(size=-5)]}),
     "layer 0 of .* size -5"),
    ("manifest layer md5", parse_manifest, j({"config": desc(), "layers": [desc(digest="md5:" + "0" * 32)]}),
     "not a sha256, sha384 or sha512 digest"),
    ("config a string", parse_image_config, j("config"), "is not a JSON object"),
    ("config.config a list", parse_image_config, j({"config": []}), "config that is not a JSON object"),
    ("Volumes a list", parse_image_config, j({"config": {"Volumes": ["/data"]}}), "Volumes that are not a JSON"),
    ("Labels a list", parse_image_config, j({"config": {"Labels": ["a=b"]}}), "Labels that are not a JSON"),
    ("Labels with a number", parse_image_config, j({"config": {"Labels": {"a": 1}}}), "Labels that are not"),
    ("ExposedPorts a list", parse_image_config, j({"config": {"ExposedPorts": ["80/tcp"]}}), "ExposedPorts"),
    ("Cmd a string", parse_image_config, j({"config": {"Cmd": "echo hi"}}),
     "gives Cmd as the string 'echo hi'; the image spec requires an array of strings"),
    ("Entrypoint a string", parse_image_config, j({"config": {"Entrypoint": "/bin/sh"}}), "gives Entrypoint"),
    ("Env with a number", parse_image_config, j({"config": {"Env": ["A=1", 2]}}), "Env that is not an array"),
    ("User a number", parse_image_config, j({"config": {"User": 0}}), "User that is not a string"),
    ("rootfs a list", parse_image_config, j({"rootfs": []}), "rootfs that is not a JSON object"),
    ("diff_ids a string", parse_image_config, j({"rootfs": {"diff_ids": D}}), "diff_ids that are not"),
    ("diff_id sha1", parse_image_config, j({"rootfs": {"diff_ids": ["sha1:" + "0" * 40]}}), "diff ID 0 of"),
    ("architecture a number", parse_image_config, j({"architecture": 64}), "architecture that is not a string"),
]


@pytest.mark.parametrize(("case", "parse", "data", "sentence"), PARSER_CASES, ids=[c[0] for c in PARSER_CASES])
def test_malformed_image_documents(
    case: str, parse: Callable[[bytes, str], object], data: bytes, sentence: str
) -> None:
    with pytest.raises(MalformedImageError, match=sentence) as info:
        parse(data, "the thing of image x")
    assert "the thing of image x" in str(info.value)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_a_valid_config_passes_and_a_control_character_is_escaped_in_the_sentence() -> None:
    good = {"os": "linux", "architecture": "amd64", "rootfs": {"type": "layers", "diff_ids": [D]},
            "config": {"Cmd": ["sh"], "Entrypoint": None, "Env": [], "Labels": {"a": "b"}, "Volumes": {"/v": {}},
                       "ExposedPorts": {"80/tcp": {}}, "User": "", "WorkingDir": "/", "StopSignal": "SIGTERM"}}
    assert parse_image_config(j(good), "c") == good
    check_image_config({}, "c")
    with pytest.raises(MalformedImageError) as info:
        parse_image_config(j({"config": {"Cmd": "\x1b[2Jboom"}}), "c")
    assert "\x1b" not in str(info.value)
    assert load_json_object(b"{}", "c") == {}


TOKEN_CASES = [
    (DEEP, "not a JSON token"),
    (b"[]", "not a JSON token"),
    (b"not json", "not a JSON token"),
    (j({"token": ["a"]}), "without a usable token"),
    (j({"token": ""}), "without a usable token"),
    (j({"token": "a\r\nX-Injected: 1"}), "without a usable token"),
    (j({"token": "t\u00e9"}), "without a usable token"),
]


@pytest.mark.parametrize(("body", "sentence"), TOKEN_CASES)
def test_malformed_token_responses(body: bytes, sentence: str) -> None:
    with pytest.raises(AuthError, match=sentence):
        parse_token("registry.example", body)


@pytest.mark.parametrize("expires", [float("inf"), -5, "60", True, 1e308, None, 0])
def test_odd_token_lifetimes_fall_back_or_are_clamped(expires: object) -> None:
    body = json.dumps({"token": "ok", "expires_in": expires}).encode()  # inf → Infinity, which json.loads takes
    token = parse_token("registry.example", body)
    assert token.value == "ok" and token.expires_at > time.monotonic()


async def test_resolve_turns_a_bad_index_into_the_registry_sentence(
    serve: Callable[..., Awaitable[str]], tmp_path: Path
) -> None:
    """End to end: an index entry without a digest (a KeyError before) and a manifest nested 200k deep (a
    RecursionError before) each end as one RegistryError sentence."""
    bodies = {
        "/v2/test/index/manifests/v1": (j({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                           "manifests": [{"mediaType": OCI_MANIFEST, "size": 5,
                                                          "platform": {"os": "linux", "architecture": "amd64"}}]}),
                                        OCI_INDEX),
        "/v2/test/deep/manifests/v1": (DEEP_OBJECT, OCI_MANIFEST),
        "/v2/test/deep-untyped/manifests/v1": (DEEP_OBJECT, "application/json"),
    }

    async def handler(request: web.Request) -> web.StreamResponse:
        body, ctype = bodies[request.path]
        return web.Response(body=body, content_type=ctype)

    host = await serve(handler)
    async with RegistryClient(hosts_dir=str(tmp_path)) as c:
        with pytest.raises(RegistryError, match=r"entry 0 of the index of image .* has no digest"):
            await c.resolve(parse_reference(f"{host}/test/index:v1"), AMD64)
        with pytest.raises(RegistryError, match="nests JSON too deeply"):
            await c.resolve(parse_reference(f"{host}/test/deep:v1"), AMD64)
        with pytest.raises(RegistryError, match="is a application/json, not an image manifest or index"):
            await c.resolve(parse_reference(f"{host}/test/deep-untyped:v1"), AMD64)


def test_run_refuses_a_string_cmd_instead_of_splitting_it() -> None:
    from socirun.runtime.spec import ImageConfig

    with pytest.raises(RegistryError, match="gives Cmd as the string"):
        ImageConfig.from_blob({"config": {"Cmd": "echo hi"}})
    with pytest.raises(RegistryError, match="Volumes that are not a JSON object"):
        ImageConfig.from_blob({"config": {"Volumes": ["/data"]}})


# ------------------------------------------------------------------------------------ item 17: locked ingest


def test_stall_clock_waits_while_the_offset_moves() -> None:
    clock = StallClock(10.0, now=0.0)
    assert clock.observe(100, 1.0)
    assert clock.observe(100, 9.0)
    assert clock.observe(5000, 9.5)  # progress: the stall counts from here
    assert clock.observe(5000, 19.0)
    assert not clock.observe(5000, 19.6)
    assert StallClock(10.0, now=0.0).observe(None, 5.0)


class FakeIngests:
    """A containerd stand-in for ContentWriter.start: another writer holds the lock while `offsets` lasts."""

    address = "fake"

    def __init__(self, offsets: list[int], finish: bool) -> None:
        self.offsets = offsets
        self.finish = finish
        self.polls = 0

    def content_write_stream(self, requests: object) -> Any:
        class Call:
            def cancel(self) -> None:
                pass

        return Call()

    async def ingest_status(self, ref: str) -> IngestStatus | None:
        offset = self.offsets[min(self.polls, len(self.offsets) - 1)]
        self.polls += 1
        return IngestStatus(ref, offset, 1000)


async def run_locked(fake: FakeIngests, lock_timeout: float) -> ContentWriter:
    writer = ContentWriter(fake, "layer-x", D, 1000)  # type: ignore[arg-type]

    async def roundtrip(request: object) -> object:
        if fake.polls < len(fake.offsets) or not fake.finish:
            raise RpcError("locked", rpc="Content.Write", code=grpc.StatusCode.UNAVAILABLE,
                           details="ref layer-x locked for 1s: unavailable")
        raise AlreadyExistsError("exists", rpc="Content.Write", code=grpc.StatusCode.ALREADY_EXISTS, details="")

    writer._roundtrip = roundtrip  # type: ignore[method-assign]
    await writer.start(lock_timeout=lock_timeout)
    return writer


async def test_a_second_writer_waits_as_long_as_the_first_makes_progress() -> None:
    # The first writer moves for longer than lock_timeout (6 polls with backoff: about 0.5 s and more), then
    # commits; the old code gave up at the fixed 0.3 s.
    fake = FakeIngests([i * 10 for i in range(6)], finish=True)
    started = time.monotonic()
    writer = await run_locked(fake, lock_timeout=0.3)
    assert writer.already_exists and writer.offset == 1000
    assert time.monotonic() - started > 0.3  # longer than the old fixed limit would have allowed


async def test_a_second_writer_gives_up_when_the_first_stalls() -> None:
    fake = FakeIngests([40], finish=False)
    started = time.monotonic()
    with pytest.raises(ContainerdError, match=r"made no progress for 0\.3s"):
        await run_locked(fake, lock_timeout=0.3)
    assert time.monotonic() - started < 3
