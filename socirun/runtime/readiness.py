"""Readiness of a running container (`--ready-url URL`, `--ready-port PORT`): when it can serve.

What a probe reaches, decided as a docker user would expect (pure: `probe_target`):

- `--ready-port PORT` is a port *inside* the container, as in a HEALTHCHECK: the probe connects to the container's
  own IP (its bridge address), or to 127.0.0.1 with `--network host`. No `-p` is needed.
- `--ready-url URL` is the URL a HEALTHCHECK would curl. Its host `localhost` / `127.0.0.1` / `::1` means the
  container (docker runs HEALTHCHECK commands inside it): the probe goes to the container's IP instead, and a port
  the user wrote as a published host port (`-p 8080:80` then `http://localhost:8080/`) is mapped back to the
  container port (80), so both spellings work. Any other host is probed from the host exactly as written (a
  published port on the host's address, or a remote name).
- With `--network none` (or `container:…`) nothing of the container is reachable from the host: a loopback URL or
  a port is then one sentence (exit 125) before anything starts.

The probes themselves are thin adapters: `probe_once` (one TCP connect or one HTTP GET that must answer 2xx) and
`wait_ready` (repeat until it answers or the time is up), with an injectable clock for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp

from socirun.duration import parse_go_duration
from socirun.errors import UsageError

PROBE_INTERVAL_S = 0.1  # between failed attempts: a server that starts listening at t is seen by t + ~0.1 s
PROBE_TIMEOUT_S = 2.0  # one attempt: a connect or a GET that hangs longer counts as not ready yet
LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


@dataclass(frozen=True)
class ReadyCheck:
    """What the user asked for: an HTTP URL (`url`) or a TCP port in the container (`port`); exactly one."""

    url: str = ""
    port: int = 0

    def __post_init__(self) -> None:
        if bool(self.url) == bool(self.port):
            raise ValueError("a ReadyCheck has exactly one of url and port")


@dataclass(frozen=True)
class ProbeTarget:
    """Where a probe goes: `url` for an HTTP GET, else a TCP connect to (`host`, `port`)."""

    host: str
    port: int
    url: str = ""

    def describe(self) -> str:
        return f"GET {self.url}" if self.url else f"tcp {_join(self.host, self.port)}"


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_ready_url(text: str) -> ReadyCheck:
    """`--ready-url`'s value, checked: an http(s) URL with a host (one sentence otherwise)."""
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as err:
        raise UsageError(f'invalid --ready-url "{text}": {err}') from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f'invalid --ready-url "{text}": give an http:// or https:// URL with a host, '
                         "e.g. http://localhost:8000/health")
    del port
    return ReadyCheck(url=text)


def parse_ready_port(text: str) -> ReadyCheck:
    """`--ready-port`'s value: a TCP port number inside the container."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise UsageError(f'invalid --ready-port "{text}": give a TCP port of the container (1-65535)')
    return ReadyCheck(port=port)


def parse_ready_timeout(text: str) -> float:
    """`--ready-timeout`'s value: a duration as docker writes them (90s, 2m, 1m30s, 500ms) or bare seconds."""
    seconds = parse_duration(text)
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise UsageError(f'invalid --ready-timeout "{text}": give a duration such as 90s or 5m')
    return seconds


def parse_duration(text: str) -> float | None:
    """Seconds of a Go duration (docker's --health-timeout form: "1m30s", "500ms", "2h") or a bare number of
    seconds; None when it is neither."""
    text = text.strip()
    with contextlib.suppress(ValueError):
        return float(text)
    return parse_go_duration(text)


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Published:
    """One published port of the container: host port → container port (tcp only matters here)."""

    host_port: int
    container_port: int
    protocol: str = "tcp"


def probe_target(check: ReadyCheck, *, network: str, container_ip: str,
                 published: Sequence[Published] = ()) -> ProbeTarget:
    """Where the probe for `check` goes, for a container on `network` ("bridge", "host", "none", "container")
    with `container_ip` ("" when it has none the host can reach). See the module's docstring."""
    reachable = "127.0.0.1" if network == "host" else container_ip
    if check.port:
        if not reachable:
            raise UsageError(f"--ready-port {check.port}: the container's network ({network}) cannot be reached "
                             "from the host; use --ready-url with an address the host can reach")
        return ProbeTarget(reachable, check.port)
    parts = urllib.parse.urlsplit(check.url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if not is_loopback(host) or network == "host":
        return ProbeTarget(host, port, check.url)
    if not reachable:
        raise UsageError(f'--ready-url "{check.url}": localhost means the container, and its network ({network}) '
                         "cannot be reached from the host; give an address the host can reach")
    for p in published:
        if p.protocol == "tcp" and p.host_port == port:
            port = p.container_port  # written as the published host port: the container listens on this one
            break
    netloc = _join(reachable, port)
    if parts.username or parts.password:
        netloc = f"{parts.netloc.rsplit('@', 1)[0]}@{netloc}"
    return ProbeTarget(reachable, port, urllib.parse.urlunsplit(parts._replace(netloc=netloc)))


# ------------------------------------------------------------------------------------------ probing (I/O)


async def probe_once(target: ProbeTarget, *, timeout: float = PROBE_TIMEOUT_S,
                     session: aiohttp.ClientSession | None = None) -> bool:
    """One attempt: a TCP connect that succeeds, or an HTTP GET answered with a 2xx status."""
    if not target.url:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(target.host, target.port), timeout)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True
    own = session is None
    client = session or _session()
    try:
        async with client.get(target.url, timeout=aiohttp.ClientTimeout(total=timeout),
                              allow_redirects=True) as resp:
            return 200 <= resp.status < 300
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
        return False
    finally:
        if own:
            await client.close()


def _session() -> aiohttp.ClientSession:
    # No proxy from the environment: the probe must reach the container itself, never a corporate proxy.
    return aiohttp.ClientSession(trust_env=False)


async def wait_ready(target: ProbeTarget, *, timeout: float | None = None, interval: float = PROBE_INTERVAL_S,
                     clock: Callable[[], float] = time.monotonic,
                     still_running: Callable[[], bool] | None = None) -> float | None:
    """Probe until `target` answers; the clock's time when it did, or None when `timeout` seconds passed first
    (or `still_running` says the container is gone). Connection refusals are the normal "not yet"."""
    start = clock()
    async with _session() as session:
        while True:
            attempt = PROBE_TIMEOUT_S if timeout is None else max(0.05, min(PROBE_TIMEOUT_S,
                                                                              start + timeout - clock()))
            if await probe_once(target, timeout=attempt, session=session):
                return clock()
            if timeout is not None and clock() - start >= timeout:
                return None
            if still_running is not None and not still_running():
                return None
            await asyncio.sleep(interval)
