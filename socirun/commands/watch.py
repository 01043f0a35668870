"""`socirun watch CONTAINER` (and `run -d --watch`, and `run -d --ready-timeout`): a running container's log tail,
its lazily loaded layers (bytes SOCI fetched per layer so far, the files read), CPU/memory from containerd's task
metrics, and readiness (`--ready-url` / `--ready-port`, socirun.runtime.readiness), as events for any face.
`q` in the TUI leaves the container running; the plain and JSON faces end when the container exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from socirun import events as ev
from socirun.commands.context import GlobalOptions
from socirun.config import SocirunConfig
from socirun.containerd import labels
from socirun.containerd.client import ContainerdClient, resolve_target
from socirun.containerd.runtime import ContainerRecord, Runtime
from socirun.decide.facts import SociConfig
from socirun.errors import SocirunError, UsageError
from socirun.runtime import logs, readiness
from socirun.runtime.lifecycle import ContainerState, load_state

LOG_POLL_S = 0.25
STATS_EVERY_S = 1.0
DEFAULT_TAIL = 20
EXIT_NOT_READY = 1  # the container runs but never answered: not socirun's failure (125), the service's


@dataclass(frozen=True)
class WatchTarget:
    """Where the container is, and how SOCI is observed (its config is read only once a layer is lazy)."""

    address: str
    namespace: str
    data_root: str  # socirun's state of the container is looked up here, never where a label points
    soci: Callable[[], SociConfig]
    soci_log: str | None


@dataclass(frozen=True)
class WatchParts:
    """What to follow. `until_ready`: return as soon as the probe answers (run -d --ready-timeout)."""

    check: readiness.ReadyCheck | None = None
    ready_timeout: float | None = None
    logs: bool = True
    stats: bool = True
    until_ready: bool = False
    tail: int = DEFAULT_TAIL


def ready_check(url: str, port: int, timeout: float | None, *, detach: bool | None = None,
                watch: bool = False) -> readiness.ReadyCheck | None:
    """The probe the flags ask for, or None; the combinations that make no sense are one sentence each."""
    if url and port:
        raise UsageError("give one of --ready-url and --ready-port, not both")
    if timeout is not None and not (url or port):
        raise UsageError("--ready-timeout needs --ready-url or --ready-port")
    if detach is False and watch:
        raise UsageError("--watch goes with -d (a foreground container owns the terminal); "
                         "run `socirun watch CONTAINER` from another terminal")
    if url:
        return readiness.ReadyCheck(url=url)
    return readiness.ReadyCheck(port=port) if port else None


# ------------------------------------------------------------------------------------------ the log tail


class LogTail:
    """A container's output as (stream, line) pairs, read from the file the -d reaper writes: docker's json-file
    `<id>-json.log` (socirun.runtime.logs) when it is there, else the older raw `container.log` (stdout and
    stderr mixed, so every line is "stdout"). Which one is decided on each read until one exists."""

    RAW_TAIL_BYTES = 64 * 1024

    def __init__(self, state_dir: str, container_id: str) -> None:
        self.state_dir = state_dir
        self.container_id = container_id
        self._json: logs.Follower | None = None  # once the json-file log is found
        self._raw: tuple[BinaryIO, bytes] | None = None  # (the raw log, its partial last line)

    def _json_path(self) -> str:
        return logs.log_path(self.state_dir, self.container_id)

    def last(self, n: int) -> list[tuple[str, str]]:
        """The last `n` lines written so far; `new()` then returns what comes after them."""
        if os.path.exists(self._json_path()):
            follower = logs.Follower(self._json_path())
            follower.start_at_end()
            self._json = follower
            entries = logs.select(logs.read_entries(self._json_path(), 100), tail=n, since=None)
            return [(e.stream, e.log.rstrip("\n")) for e in entries]
        raw = os.path.join(self.state_dir, "container.log")
        try:
            f = open(raw, "rb")  # noqa: SIM115 (kept open to follow; closed by close())
        except FileNotFoundError:
            return []
        size = os.fstat(f.fileno()).st_size
        f.seek(max(0, size - self.RAW_TAIL_BYTES))
        data = f.read()
        lines = data.split(b"\n")
        partial = lines.pop()
        if size > self.RAW_TAIL_BYTES and lines:
            lines.pop(0)  # cut mid-line by the seek
        self._raw = (f, partial)
        return [("stdout", line.decode("utf-8", "replace")) for line in lines[-n:]] if n > 0 else []

    def new(self) -> list[tuple[str, str]]:
        if self._json is None and self._raw is None:
            self.last(0)
            if self._json is None and self._raw is None:
                return []
        if self._json is not None:
            return [(e.stream, e.log.rstrip("\n")) for e in self._json.read()]
        assert self._raw is not None
        f, partial = self._raw
        data = partial + f.read()
        *lines, rest = data.split(b"\n")
        self._raw = (f, rest)
        return [("stdout", line.decode("utf-8", "replace")) for line in lines]

    def close(self) -> None:
        if self._json is not None:
            self._json.close()
        if self._raw is not None:
            self._raw[0].close()


# ------------------------------------------------------------------------------------------ lookups


def process_start(pid: int) -> float | None:
    """When process `pid` (a task's init, in the host's PID namespace) started, epoch seconds."""
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def container_ip(state: ContainerState) -> str:
    """The container's IPv4 address on the bridge, from the CNI result cached when its network was set up."""
    if not state.bridge:
        return ""
    from socirun.runtime import cni
    from socirun.runtime.lifecycle import cni_ipam_dir

    try:
        plugins = cni.Cni("", cni.BridgeNetwork(**state.bridge), cni_ipam_dir(state.data_root))
    except (TypeError, ValueError):
        return ""
    return cni.ipv4_of(plugins.cached_result(state.id))


def target_for(check: readiness.ReadyCheck, state: ContainerState | None) -> readiness.ProbeTarget:
    if state is None:
        return readiness.probe_target(check, network="unknown", container_ip="")
    published = [readiness.Published(int(p.get("host_port", 0)), int(p.get("container_port", 0)),
                                     str(p.get("protocol", "tcp"))) for p in state.ports]
    return readiness.probe_target(check, network=state.network, container_ip=container_ip(state),
                                  published=published)


async def lazy_layers(ctd: ContainerdClient, rec: ContainerRecord) -> list[tuple[str, str, int]]:
    """(digest, media type, size) of the image's layers when the container's rootfs is SOCI's (only then can any
    be lazily loaded); [] otherwise or when the image record is gone."""
    if rec.snapshotter != "soci" or not rec.image:
        return []
    import json

    from socirun.oci import INDEX_TYPES, Descriptor, host_platform
    from socirun.registry.client import select_platform

    record = await ctd.image_get(rec.image)
    if record is None:
        return []
    try:
        doc = json.loads(await ctd.read_content(record.target.digest))
        if record.target.media_type in INDEX_TYPES or "manifests" in doc:
            entries = [Descriptor.from_json(e) for e in doc.get("manifests") or []]
            chosen = select_platform(entries, host_platform())
            if chosen is None:
                return []
            doc = json.loads(await ctd.read_content(chosen.digest))
        return [(str(layer["digest"]), str(layer.get("mediaType", "")), int(layer.get("size", 0)))
                for layer in doc.get("layers") or []]
    except (SocirunError, KeyError, ValueError, TypeError):
        return []


async def lazy_fetched_now(cfg: SociConfig, digests: list[str]) -> int | None:
    """Compressed bytes SOCI holds now of the lazily mounted layers among `digests`, from its metrics (else its
    state files); None when it reports on none of them (no layer is lazy, or SOCI says nothing)."""
    from socirun.soci import observer

    wanted = set(digests)
    if cfg.metrics_enabled:
        with contextlib.suppress(Exception):
            dump = observer.parse_metrics_dump(
                await observer.fetch_metrics(cfg.metrics_address, cfg.metrics_network))
            found = [m.fetched for d, m in dump.layers.items() if d in wanted and m.size > 0]
            if found:
                return sum(found)
    states = await asyncio.to_thread(observer.read_state_files, cfg.root)
    found = [s.fetched for d, s in states.items() if d in wanted and s.size > 0]
    return sum(found) if found else None


# ------------------------------------------------------------------------------------------ the work


async def watch_container(target: WatchTarget, container: str, parts: WatchParts, emit: ev.Emit) -> int:
    """Follow `container` (ID, unique ID prefix or name) until it exits (or, `until_ready`, until it is ready);
    raises a sentence when it is not there or not running, or never became ready in `ready_timeout`."""
    async with await ContainerdClient.connect(target.address, target.namespace) as ctd:
        rt = Runtime(ctd)
        rec = await rt.find_container(container)
        if rec is None:
            raise SocirunError(f"No such container: {container}", exit_code=1)
        task = await rt.get_task(rec.id)
        if task is None or task.status != "RUNNING":
            raise SocirunError(f"container {container} is not running", exit_code=1)
        state = load_state(target.data_root, target.namespace, rec.id)  # None: not a container socirun made
        probe = target_for(parts.check, state) if parts.check is not None else None  # bad input: before anything
        emit(ev.ContainerCreated(container_id=rec.id, name=rec.labels.get(labels.NAME, "")))
        started = process_start(task.pid) or time.time()
        emit(ev.ContainerStarted(container_id=rec.id, pid=task.pid, since_command_start=0.0, time=started))
        layers = await lazy_layers(ctd, rec)
        observing: contextlib.AbstractAsyncContextManager[ev.Emit] = contextlib.nullcontext(emit)
        if layers:
            from socirun.soci.observer import observe_lazy_layers

            observing = observe_lazy_layers(emit, target.soci, target.soci_log)
        async with observing as tapped:
            for i, (digest, media_type, size) in enumerate(layers):
                tapped(ev.LayerPlanned(index=i, digest=digest, media_type=media_type, size=size, mode="lazy"))
                tapped(ev.LayerClassified(digest=digest, mode="lazy", detail="mounted by SOCI"))
            return await _follow(ctd, rt, rec.id, started, state, probe, [d for d, _, _ in layers], target,
                                 parts, tapped)


async def _follow(ctd: ContainerdClient, rt: Runtime, container_id: str, started: float,
                  state: ContainerState | None, probe: readiness.ProbeTarget | None, digests: list[str],
                  target: WatchTarget, parts: WatchParts, emit: ev.Emit) -> int:
    exited = asyncio.Event()
    tail = LogTail(state.state_dir, container_id) if state is not None and parts.logs else None

    def drain() -> None:
        if tail is not None:
            for stream, line in tail.new():
                emit(ev.ContainerLogLine(container_id=container_id, stream=stream, line=line))

    async def logs() -> None:
        assert tail is not None
        for stream, line in tail.last(parts.tail):
            emit(ev.ContainerLogLine(container_id=container_id, stream=stream, line=line))
        while True:
            await asyncio.sleep(LOG_POLL_S)
            drain()

    async def stats() -> None:
        before = None
        while True:
            with contextlib.suppress(SocirunError):
                now = await ctd.task_metrics(container_id)
                if now is not None:
                    percent = None
                    if before is not None and now.at > before.at:
                        percent = max(0.0, (now.cpu_ns - before.cpu_ns) / 1e9 / (now.at - before.at) * 100)
                    before = now
                    emit(ev.ContainerStats(container_id=container_id, cpu_percent=percent, memory=now.memory,
                                           memory_limit=now.memory_limit, pids=now.pids))
            await asyncio.sleep(STATS_EVERY_S)

    async def ready() -> None:
        assert probe is not None
        emit(ev.ReadyWaiting(container_id=container_id, probe=probe.describe(), timeout=parts.ready_timeout))
        remaining = None if parts.ready_timeout is None else max(0.0, started + parts.ready_timeout - time.time())
        at = await readiness.wait_ready(probe, timeout=remaining, clock=time.time,
                                        still_running=lambda: not exited.is_set())
        if at is None:
            if exited.is_set():
                raise SocirunError(f"container {container_id[:12]} exited before it was ready "
                                   f"({probe.describe()} never answered)", exit_code=EXIT_NOT_READY)
            raise SocirunError(f"container {container_id[:12]} was not ready within {parts.ready_timeout:g}s: "
                               f"{probe.describe()} did not answer", exit_code=EXIT_NOT_READY)
        fetched = await lazy_fetched_now(target.soci(), digests) if digests else None
        emit(ev.ContainerReady(container_id=container_id, probe=probe.describe(), after=max(0.0, at - started),
                               fetched=fetched))

    async def wait_exit() -> int:
        code = await rt.wait_task(container_id)
        exited.set()
        return code

    waiter = asyncio.ensure_future(wait_exit())
    helpers = []
    if tail is not None and not parts.until_ready:
        helpers.append(asyncio.ensure_future(logs()))
    if parts.stats and not parts.until_ready:
        helpers.append(asyncio.ensure_future(stats()))
    prober = asyncio.ensure_future(ready()) if probe is not None else None
    try:
        if parts.until_ready and prober is not None:
            await prober
            return 0
        if prober is not None:
            await asyncio.wait((waiter, prober), return_when=asyncio.FIRST_COMPLETED)
            if prober.done():
                prober.result()  # a readiness failure ends the watch with its sentence
            if not waiter.done():
                await waiter
        else:
            await waiter
        if prober is not None and not prober.done():
            with contextlib.suppress(SocirunError):
                await prober  # it sees the exit within one interval and says so
        drain()
        emit(ev.ContainerExited(container_id=container_id, exit_code=waiter.result()))
        return 0
    finally:
        for t in (waiter, *helpers, *([prober] if prober is not None else [])):
            t.cancel()
        for t in (waiter, *helpers, *([prober] if prober is not None else [])):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if tail is not None:
            tail.close()


# ------------------------------------------------------------------------------------------ the command


def watch_target(config: SocirunConfig, address: str, namespace: str, data_root: str) -> WatchTarget:
    import functools

    from socirun.pull.request import PullChoices, pull_setup

    setup = functools.cache(lambda: pull_setup(config, PullChoices()))
    return WatchTarget(address=address, namespace=namespace, data_root=data_root, soci=lambda: setup().soci,
                       soci_log=config.soci_log)


def add_watch_parser(sub: Any) -> argparse.ArgumentParser:
    """`socirun watch`'s flags, on main's subparsers (`sub`)."""
    from socirun.config import PROGRESS_MODES

    p: argparse.ArgumentParser = sub.add_parser(
        "watch", help="follow a running container: logs, lazy fetches, CPU/memory, readiness")
    p.add_argument("--progress", default=None, metavar="|".join(PROGRESS_MODES),
                   help="tty: the TUI (q leaves the container running); plain or json: lines until it exits")
    p.add_argument("--ready-url", default="", metavar="URL",
                   help="readiness: an HTTP GET that must answer 2xx (localhost means the container)")
    p.add_argument("--ready-port", default=None, metavar="PORT", help="readiness: a TCP port of the container")
    p.add_argument("--ready-timeout", default=None, metavar="DURATION",
                   help="fail (exit 1) when not ready this long after the container started, e.g. 90s")
    p.add_argument("--tail", type=int, default=DEFAULT_TAIL, metavar="N", help="log lines shown from before")
    p.add_argument("container", metavar="CONTAINER")
    return p


def watch_command(args: argparse.Namespace, config: SocirunConfig, glob: GlobalOptions) -> int:
    from socirun.ui.progress import progress_mode_for

    url = readiness.parse_ready_url(args.ready_url).url if args.ready_url else ""
    port = readiness.parse_ready_port(args.ready_port).port if args.ready_port else 0
    timeout = readiness.parse_ready_timeout(args.ready_timeout) if args.ready_timeout else None
    parts = WatchParts(check=ready_check(url, port, timeout), ready_timeout=timeout, tail=max(0, args.tail))
    address, namespace = resolve_target(glob.address, glob.namespace, config)
    mode = progress_mode_for(args.progress, config)
    # As the other container commands: the data root from the config, which holds SOCIRUN_DATA_ROOT.
    target = watch_target(config, address, namespace, os.path.abspath(config.data_root))
    return run_watch(target, args.container, parts, mode)


def run_watch(target: WatchTarget, container: str, parts: WatchParts, mode: str) -> int:
    """Watch with the face `mode`: the TUI until `q` (or the container's exit and then `q`), or lines."""
    if mode == "tty":
        from socirun.ui.tui.watch_app import run_watch_tui

        return run_watch_tui(lambda emit: watch_container(target, container, parts, emit))
    from socirun.ui.progress import run_work
    from socirun.ui.watch import WatchPlainRenderer

    renderer = WatchPlainRenderer(sys.stderr) if mode == "plain" else None
    return run_work(lambda emit: watch_container(target, container, parts, emit), mode, renderer=renderer)
