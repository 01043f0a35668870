"""Readiness (socirun.runtime.readiness): what a probe reaches, and when a server that starts late is seen."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from aiohttp import web

from socirun.errors import UsageError
from socirun.runtime.readiness import (
    ProbeTarget,
    Published,
    ReadyCheck,
    parse_duration,
    parse_ready_port,
    parse_ready_timeout,
    parse_ready_url,
    probe_once,
    probe_target,
    wait_ready,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize("text", ["ftp://x/", "localhost:8000", "http://", "http://h:99999/"])
def test_ready_url_rejects_what_is_not_an_http_url(text: str) -> None:
    with pytest.raises(UsageError, match="--ready-url"):
        parse_ready_url(text)


@pytest.mark.parametrize("text", ["0", "65536", "http", "-1"])
def test_ready_port_rejects_what_is_not_a_port(text: str) -> None:
    with pytest.raises(UsageError, match="--ready-port"):
        parse_ready_port(text)


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90.0), ("2m", 120.0), ("1m30s", 90.0), ("500ms", 0.5),
                                                ("12", 12.0), ("1.5h", 5400.0)])
def test_durations_read_as_docker_writes_them(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["0", "-5s", "soon", "5x", "inf", "s"])
def test_ready_timeout_rejects_nonsense(text: str) -> None:
    with pytest.raises(UsageError, match="--ready-timeout"):
        parse_ready_timeout(text)


# ------------------------------------------------------------------------------------------ where it goes


def test_port_goes_to_the_container_ip_on_the_bridge() -> None:
    target = probe_target(ReadyCheck(port=8080), network="bridge", container_ip="10.4.0.7")
    assert (target.host, target.port, target.url) == ("10.4.0.7", 8080, "")
    assert target.describe() == "tcp 10.4.0.7:8080"


def test_port_goes_to_loopback_on_the_host_network() -> None:
    assert probe_target(ReadyCheck(port=80), network="host", container_ip="").host == "127.0.0.1"


def test_localhost_url_means_the_container_and_keeps_path_and_query() -> None:
    target = probe_target(ReadyCheck(url="http://localhost:8000/health?x=1"), network="bridge",
                          container_ip="10.4.0.7")
    assert target.url == "http://10.4.0.7:8000/health?x=1"


def test_published_host_port_is_mapped_back_to_the_container_port() -> None:
    target = probe_target(ReadyCheck(url="http://127.0.0.1:8080/"), network="bridge", container_ip="10.4.0.7",
                          published=[Published(8080, 80)])
    assert target.url == "http://10.4.0.7:80/"


def test_other_hosts_are_probed_as_written() -> None:
    target = probe_target(ReadyCheck(url="http://192.0.2.1:8080/ok"), network="bridge", container_ip="10.4.0.7")
    assert target.url == "http://192.0.2.1:8080/ok"


def test_unreachable_network_is_a_sentence() -> None:
    with pytest.raises(UsageError, match="cannot be reached from the host"):
        probe_target(ReadyCheck(port=80), network="none", container_ip="")
    with pytest.raises(UsageError, match="localhost means the container"):
        probe_target(ReadyCheck(url="http://localhost/"), network="none", container_ip="")


# ------------------------------------------------------------------------------------------ probing


async def test_tcp_probe_sees_a_late_listener_between_delay_and_delay_plus_one() -> None:
    port = _free_port()
    delay = 1.5

    async def listen_late() -> asyncio.Server:
        await asyncio.sleep(delay)
        return await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)

    t0 = time.monotonic()
    server_task = asyncio.create_task(listen_late())
    at = await wait_ready(ProbeTarget("127.0.0.1", port), timeout=10)
    server = await server_task
    server.close()
    assert at is not None
    assert delay <= at - t0 <= delay + 1.0


async def test_http_probe_needs_a_2xx_and_sees_it_between_delay_and_delay_plus_one() -> None:
    """The server listens at delay/2 but answers 503 until `delay`: only the 200 counts."""
    port = _free_port()
    delay = 1.6
    t0 = time.monotonic()

    async def health(request: web.Request) -> web.Response:
        return web.Response(status=200 if time.monotonic() - t0 >= delay else 503)

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()

    async def listen_late() -> None:
        await asyncio.sleep(delay / 2)
        await web.TCPSite(runner, "127.0.0.1", port).start()

    starter = asyncio.create_task(listen_late())
    try:
        target = ProbeTarget("127.0.0.1", port, f"http://127.0.0.1:{port}/health")
        at = await wait_ready(target, timeout=10)
        assert at is not None
        assert delay <= at - t0 <= delay + 1.0
    finally:
        await starter
        await runner.cleanup()


async def test_probe_gives_up_after_the_timeout() -> None:
    port = _free_port()  # nothing listens there
    t0 = time.monotonic()
    assert await wait_ready(ProbeTarget("127.0.0.1", port), timeout=0.5) is None
    assert 0.5 <= time.monotonic() - t0 < 2.0
    assert not await probe_once(ProbeTarget("127.0.0.1", port))


async def test_probe_stops_when_the_container_is_gone() -> None:
    port = _free_port()
    t0 = time.monotonic()
    assert await wait_ready(ProbeTarget("127.0.0.1", port), timeout=30, still_running=lambda: False) is None
    assert time.monotonic() - t0 < 2.0
