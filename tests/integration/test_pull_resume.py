"""Ctrl-C during a pull keeps what was downloaded, and the rerun fetches only what is missing (issue 13).

The registry sits behind the throttling proxy (so the pull lasts long enough to interrupt after some layers
finished) and, in front of that, a counting proxy: the bytes it passed to socirun are the truth about what the
rerun fetched, whatever socirun itself reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future

import pytest

from socirun.containerd.client import ContainerdClient
from socirun.pull.leases import GC_EXPIRE, LABEL_PURPOSE, drop_dead_leases
from socirun.sandbox.sample import push_sample
from socirun.sandbox.sandbox import SandboxInfo
from tests.support.cli_result import CliResult
from tests.support.sandbox import registry_json

Ctr = Callable[..., subprocess.CompletedProcess[str]]
MODES = {
    "standard": ("--pull-mode", "standard"),
    "parallel": ("--pull-mode", "parallel", "--max-concurrent-downloads", "4", "--chunk-size", "1MiB"),
}
# (mode, signal, seed): images of different seeds share no blob. SIGKILL leaves the pull lease of a dead owner,
# which the next run's sweep turns into a resume lease (socirun/pull/leases.py: drop_dead_leases).
CASES = [("standard", signal.SIGINT, 1301), ("parallel", signal.SIGINT, 1302), ("standard", signal.SIGKILL, 1303)]
# What the rerun may fetch beyond the missing layer bytes: manifest and config (added per test), HTTP headers of
# every request (parallel mode asks for 1 MiB ranges: about 50 of them) and the registry's token and ping answers.
HEADER_MARGIN = 128 * 1024


class CountingProxy:
    """A TCP pass-through that counts the bytes going from the registry to the client."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.down = 0
        self.host = ""
        self._loop = asyncio.new_event_loop()
        self._ready: Future[str] = Future()
        self._thread = threading.Thread(target=self._run, args=(self._ready,), daemon=True)

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        self.host = self._ready.result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def _run(self, ready: Future[str]) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        ready.set_result(f"127.0.0.1:{server.sockets[0].getsockname()[1]}")
        self._loop.run_forever()
        server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = self.upstream.rsplit(":", 1)
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer, count=False), self._pipe(up_reader, writer, count=True))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, count: bool) -> None:
        try:
            while data := await reader.read(1 << 16):
                if count:
                    self.down += len(data)
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


@pytest.fixture
def counted(throttle: Callable[..., str]) -> Iterator[CountingProxy]:
    """The registry at 20 MB/s in all, behind a byte counter."""
    with CountingProxy(throttle("20MB", total="20MB")) as proxy:
        yield proxy


async def _ingest_offsets(address: str) -> dict[str, int]:
    async with await ContainerdClient.connect(address, "default") as ctd:
        return {s.ref: s.offset for s in await ctd.list_ingests()}


async def _sweep_then_collect(address: str) -> list[dict[str, str]]:
    """What `socirun run` does first (drop dead owners' leases), then a synchronous GC; the leases left."""
    async with await ContainerdClient.connect(address, "default") as ctd:
        await drop_dead_leases(ctd)
        lease = await ctd.create_lease({})
        await ctd.delete_lease(lease, sync=True)  # a GC pass now, not whenever containerd's scheduler runs
        return [info.labels for info in await ctd.list_leases_info()]


def _content(ctr: Ctr) -> set[str]:
    return set(ctr("content", "ls", "-q").stdout.split())


@pytest.mark.parametrize(("mode", "sig", "seed"), CASES, ids=[f"{m}-{s.name}" for m, s, _ in CASES])
def test_an_interrupted_pull_keeps_finished_layers_and_the_rerun_fetches_only_what_is_missing(
    mode: str, sig: signal.Signals, seed: int, sandbox: SandboxInfo, counted: CountingProxy, ctr: Ctr
) -> None:
    name = f"resume13/{mode}-{sig.name.lower()}"
    # The busybox base and two data layers of about 4 MB (the sample's content compresses 2:1), then one of 50 MB.
    pushed = push_sample(sandbox.registry_host, name, "v1", [8, 8, 100], seed=seed)
    manifest = registry_json(sandbox.registry_host, name, "v1")
    small = [layer["digest"] for layer in manifest["layers"][:-1]]
    big = manifest["layers"][-1]
    ref = pushed.replace(sandbox.registry_host, counted.host, 1)
    env = dict(os.environ, CONTAINERD_ADDRESS=sandbox.containerd_address)
    argv = [sys.executable, "-m", "socirun", "pull", *MODES[mode], "--progress", "json", ref]

    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    partial = 0
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
        partial = max(asyncio.run(_ingest_offsets(sandbox.containerd_address)).values(), default=0)
        if set(small) <= _content(ctr) and partial >= 8_000_000:
            break
    assert proc.poll() is None, "the pull finished before it could be interrupted"
    assert set(small) <= _content(ctr), "the small layers did not finish first"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL), stderr

    # The finished layers and the partial one survived the interrupted pull, also once a run's start swept
    # dead owners' leases and GC ran: the resume lease (no owner, an expiry) holds them.
    leases = asyncio.run(_sweep_then_collect(sandbox.containerd_address))
    assert leases and all(labels.get(LABEL_PURPOSE) == "resume" and GC_EXPIRE in labels for labels in leases)
    assert set(small) <= _content(ctr)
    offsets = asyncio.run(_ingest_offsets(sandbox.containerd_address))
    kept = max(offsets.values(), default=0)
    assert kept >= 8_000_000, offsets
    missing = big["size"] - kept

    counted.down = 0
    rerun = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)
    result = CliResult.of_process(rerun)
    assert result.code == 0, result.stderr
    finished = result.finished()
    assert finished["fetched"] == missing  # socirun's own count: the missing bytes of the big layer, no more
    margin = HEADER_MARGIN + manifest["config"]["size"] + 2 * len(str(manifest))
    assert counted.down <= missing + margin, (counted.down, missing)  # the proxy's count agrees
    states = {e["digest"]: e for e in result.of("layer_state") if e["state"] == "downloading"}
    assert "resuming at" in states[big["digest"]]["detail"]
    assert not set(small) & set(states)  # the small layers were never downloaded again
    assert ctr("leases", "ls", "-q").stdout.split() == []  # the successful rerun dropped the resume lease
