"""`socirun pull --pull-mode parallel` against the real sandbox (containerd + docker-registry), checked with `ctr`.

A small aiohttp reverse proxy sits in front of the registry where a test needs to see or change what the
registry does with `Range`: it records the Range header of every blob request, and in `strip_range` mode it
drops the header so the registry answers 200 with the whole blob, as registries and CDNs without range support do.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from socirun.oci import chain_ids
from socirun.sandbox.sample import push_sample
from socirun.sandbox.sandbox import SandboxInfo
from tests.support.cli_result import CliResult
from tests.support.sandbox import registry_blob_path

SAMPLE_TEXT = "hello from the socirun sample"
Ctr = Callable[..., "subprocess.CompletedProcess[str]"]
PARALLEL = ("--pull-mode", "parallel", "--max-concurrent-downloads", "4", "--chunk-size", "1MiB")


@pytest.fixture
def pull(sandbox: SandboxInfo) -> Callable[..., CliResult]:
    def run(*args: str, timeout: float = 300) -> CliResult:
        env = dict(os.environ, CONTAINERD_ADDRESS=sandbox.containerd_address)
        proc = subprocess.run([sys.executable, "-m", "socirun", "pull", *args], capture_output=True, text=True,
                              env=env, timeout=timeout, check=False)
        return CliResult.of_process(proc)

    return run


class RegistryProxy:
    """An HTTP reverse proxy for the registry, run on its own event loop in a thread."""

    def __init__(self, upstream: str, *, strip_range: bool) -> None:
        self.upstream = upstream
        self.strip_range = strip_range
        self.blob_ranges: list[str | None] = []  # the Range header of each blob GET, as the client sent it
        self.host = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RegistryProxy:
        self._thread.start()
        assert self._ready.wait(10), "the proxy did not start"
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            self._session = session
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            self.host = f"127.0.0.1:{port}"
            self._ready.set()
            await self._stop.wait()
            await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        if "/blobs/" in request.path and request.method == "GET":
            self.blob_ranges.append(request.headers.get("Range"))
            if self.strip_range:
                headers.pop("Range", None)
        body = await request.read()
        async with self._session.request(request.method, f"http://{self.upstream}{request.path_qs}",
                                         headers=headers, data=body or None, allow_redirects=False) as up:
            response = web.StreamResponse(status=up.status)
            for key, value in up.headers.items():
                if key.lower() in ("content-type", "content-length", "docker-content-digest", "content-range",
                                   "location", "docker-distribution-api-version", "www-authenticate"):
                    response.headers[key] = value
            await response.prepare(request)
            if request.method != "HEAD":
                async for piece in up.content.iter_chunked(1 << 16):
                    await response.write(piece)
            await response.write_eof()
            return response


@pytest.fixture
def range_proxy(sandbox: SandboxInfo) -> Iterator[Callable[..., RegistryProxy]]:
    started: list[RegistryProxy] = []

    def make(*, strip_range: bool) -> RegistryProxy:
        proxy = RegistryProxy(sandbox.registry_host, strip_range=strip_range).start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


def snapshot_keys(ctr: Ctr) -> set[str]:
    return {line.split()[0] for line in ctr("snapshots", "ls").stdout.splitlines()[1:] if line.strip()}


def lease_ids(ctr: Ctr) -> list[str]:
    return [line.split()[0] for line in ctr("leases", "ls").stdout.splitlines()[1:] if line.strip()]


def registry_json(host: str, path: str, accept: str = "application/vnd.oci.image.manifest.v1+json") -> Any:
    request = urllib.request.Request(f"http://{host}/v2/{path}", headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def image_chain(host: str, repo: str, tag: str) -> tuple[dict[str, Any], list[str]]:
    manifest = registry_json(host, f"{repo}/manifests/{tag}")
    config = registry_json(host, f"{repo}/blobs/{manifest['config']['digest']}", accept="*/*")
    return manifest, chain_ids(config["rootfs"]["diff_ids"])


def test_parallel_pull_makes_a_valid_image_from_bounded_ranges(
    pull: Callable[..., CliResult], sandbox: SandboxInfo, ctr: Ctr, range_proxy: Callable[..., RegistryProxy]
) -> None:
    proxy = range_proxy(strip_range=False)
    pushed = push_sample(sandbox.registry_host, "parallel/valid", "v1", [3, 6, 1], seed=601)
    ref = pushed.replace(sandbox.registry_host, proxy.host, 1)
    result = pull("--progress", "json", *PARALLEL, ref)
    assert result.code == 0, result.stderr

    plan = result.of("plan_made")[0]
    assert plan["mode"] == "parallel" and any("--pull-mode parallel" in r for r in plan["reasons"])
    assert {e["mode"] for e in result.of("layer_planned")} == {"parallel"}
    finished = result.finished()
    assert finished["mode"] == "parallel" and finished["fetched"] == finished["total_size"]
    # Every layer byte came through bounded ranges of at most 1 MiB: `bytes=a-b`, never open-ended.
    ranges = [r for r in proxy.blob_ranges if r is not None]
    assert len(ranges) > 4
    for header in ranges:
        start, _, end = header.removeprefix("bytes=").partition("-")
        assert end and 0 <= int(end) - int(start) < 1 << 20, header
    # Per-layer progress says which phase the bytes are in: all downloaded before any is applied.
    for digest in {e["digest"] for e in result.of("layer_planned")}:
        progress = [e for e in result.of("layer_progress") if e["digest"] == digest]
        assert progress[-1]["downloaded"] == progress[-1]["total"] == progress[-1]["applied"]
        assert all(e["applied"] in (0, e["total"]) for e in progress)

    _manifest, chain = image_chain(sandbox.registry_host, "parallel/valid", "v1")
    before = snapshot_keys(ctr)
    assert set(chain) <= before
    ctr("images", "pull", "--plain-http", ref)  # containerd's own client finds nothing left to unpack
    assert snapshot_keys(ctr) == before
    assert SAMPLE_TEXT in ctr("run", "--rm", ref, "socirun-parallel-check").stdout
    assert lease_ids(ctr) == []


def test_registry_without_range_support_falls_back_to_one_stream(
    pull: Callable[..., CliResult], sandbox: SandboxInfo, ctr: Ctr, range_proxy: Callable[..., RegistryProxy]
) -> None:
    proxy = range_proxy(strip_range=True)
    pushed = push_sample(sandbox.registry_host, "parallel/norange", "v1", [4, 2], seed=602)
    ref = pushed.replace(sandbox.registry_host, proxy.host, 1)
    result = pull("--progress", "json", *PARALLEL, ref)
    assert result.code == 0, result.stderr
    warnings = [e["message"] for e in result.of("warning")]
    assert len(warnings) == 1 and "does not serve byte ranges" in warnings[0] and "one stream" in warnings[0]
    assert any("one stream" in e["detail"] for e in result.of("layer_state"))
    finished = result.finished()
    assert finished["fetched"] == finished["total_size"]  # nothing fetched twice
    assert SAMPLE_TEXT in ctr("run", "--rm", ref, "socirun-norange-check").stdout
    assert lease_ids(ctr) == []


@pytest.fixture
def slow_registry(throttle: Callable[..., str]) -> str:
    """The registry behind the throttling proxy: 4 MB/s per connection, 8 MB/s in all."""
    return throttle("4MB", total="8MB")


def _active_layer_bytes(ctr: Ctr) -> int:
    # `ctr content active` prints sizes like 16.5MiB, 1.049MB, 512.0KiB, 100B.
    units = {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "kB": 1000, "MB": 1000**2, "GB": 1000**3, "B": 1}
    best = 0
    for line in ctr("content", "active").stdout.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 1 and fields[0].startswith("layer-"):
            for unit, factor in units.items():
                if fields[1].endswith(unit):
                    best = max(best, int(float(fields[1][: -len(unit)]) * factor))
                    break
    return best


def test_parallel_pull_killed_and_resumed(
    pull: Callable[..., CliResult], sandbox: SandboxInfo, slow_registry: str, ctr: Ctr
) -> None:
    pushed = push_sample(sandbox.registry_host, "parallel/resume", "v1", [80], seed=603)
    ref = pushed.replace(sandbox.registry_host, slow_registry, 1)
    env = dict(os.environ, CONTAINERD_ADDRESS=sandbox.containerd_address)
    proc = subprocess.Popen([sys.executable, "-m", "socirun", "pull", "--progress", "quiet", *PARALLEL, ref],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    partial = 0
    while time.monotonic() < deadline and partial < 10_000_000:
        time.sleep(0.2)
        partial = _active_layer_bytes(ctr)
    assert proc.poll() is None, "the pull finished before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert partial >= 10_000_000

    result = pull("--progress", "json", *PARALLEL, ref)
    assert result.code == 0, result.stderr
    finished = result.finished()
    assert finished["mode"] == "parallel"
    assert 0 < finished["fetched"] <= finished["total_size"] - partial
    assert any("resuming at" in e["detail"] for e in result.of("layer_state"))
    assert SAMPLE_TEXT in ctr("run", "--rm", ref, "socirun-parallel-resume-check").stdout
    assert lease_ids(ctr) == []


def test_digest_mismatch_in_one_chunk_aborts_that_layer(
    pull: Callable[..., CliResult], sandbox: SandboxInfo, ctr: Ctr
) -> None:
    ref = push_sample(sandbox.registry_host, "parallel/corrupt", "v1", [2, 5], seed=604)
    manifest, chain = image_chain(sandbox.registry_host, "parallel/corrupt", "v1")
    bad = manifest["layers"][-1]["digest"]
    hexd = bad.split(":")[1]
    blob = registry_blob_path(sandbox.dir, f"sha256:{hexd}")
    data = bytearray(blob.read_bytes())
    data[len(data) * 2 // 3] ^= 0xFF  # one byte in one 1 MiB chunk; the size stays right
    blob.write_bytes(bytes(data))

    before = snapshot_keys(ctr)
    result = pull("--progress", "plain", *PARALLEL, ref)
    assert result.code == 125
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("socirun: ") and bad in last and "do not match" in last
    assert "Traceback" not in result.stderr
    after = snapshot_keys(ctr)
    assert chain[-1] not in after and after >= before
    assert not any(k.startswith("extract-") for k in after)
    assert bad not in ctr("content", "ls", "-q").stdout.split()
    assert not any(hexd in line for line in ctr("content", "active").stdout.splitlines())
    # Only resume leases are left: they keep the verified layers for a rerun, never the corrupt one (issue 13).
    left = ctr("leases", "ls").stdout.splitlines()[1:]
    assert all("io.socirun/purpose=resume" in row for row in left), left
    for row in left:  # later tests of this session expect no lease at all
        ctr("leases", "delete", "--sync", row.split()[0])
