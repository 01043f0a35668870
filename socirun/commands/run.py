"""`socirun run` (and a bare `socirun [OPTIONS] IMAGE`): docker run's argv → one frozen RunOptions and one
RunContext, built once here → the engine (socirun.runtime.container) with the face --progress chose."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from socirun import events as ev
from socirun.commands.context import GlobalOptions
from socirun.commands.run_flags import help_text, parse_run_args
from socirun.commands.watch import WatchParts, ready_check, run_watch, watch_container, watch_target
from socirun.config import SocirunConfig
from socirun.containerd.client import ContainerdClient, resolve_target
from socirun.errors import ImageNotFoundError, UsageError
from socirun.oci import host_platform, parse_platform
from socirun.pull.request import PullChoices, pull_setup
from socirun.reference import expand_alias, parse_reference
from socirun.runtime import cni
from socirun.runtime.container import RunContext, ensure_image, run_container
from socirun.runtime.options import RunOptions
from socirun.runtime.readiness import ReadyCheck
from socirun.ui.progress import Renderer, Silent, progress_mode_for, rendering, run_renderer, run_work
from socirun.ui.watch import ready_line


def run_command(argv: Sequence[str], config: SocirunConfig, glob: GlobalOptions, *,
                started_at: float | None = None) -> int:
    """Parse docker-run argv, run the container, return the exit code. `started_at` (epoch seconds): where "started
    after N s" counts from when this run is not the process's only work (the demo starts a sandbox and pushes an
    image first); by default the process's own start, the wait a user at the prompt had."""
    opts = parse_run_args(argv, read_file=lambda p: Path(p).read_text(encoding="utf-8"))
    if opts.help:
        sys.stdout.write(help_text())
        return 0
    check = ready_check(opts.ready_url, opts.ready_port, opts.ready_timeout, detach=opts.detach, watch=opts.watch)
    if opts.ready_timeout is not None and not opts.detach:
        raise UsageError("--ready-timeout goes with -d (a foreground run lasts as long as its container)")
    ctx = run_context(opts, config, glob)
    mode = progress_mode_for("quiet" if opts.quiet else opts.progress or None, config)
    if opts.detach:
        return _run_detached(opts, ctx, config, mode, check, started_at)
    if check is not None:
        return _attached_with_probe(opts, ctx, config, mode, check, started_at)
    if mode != "tty":
        # Quiet shows nothing of what SOCI fetches after the start, so nothing follows it: SOCI's debug log
        # runs to thousands of lines a second while a program starts, and parsing it costs the container CPU.
        # Through run_work, as pull: a failure is the stream's `error` event (with --progress json, its only report).
        observe = mode != "quiet"
        return run_work(lambda emit: run_container(opts, ctx, counted_from(emit, started_at), observe=observe),
                        mode, renderer=run_renderer(mode, sys.stderr), record=opts.record_events or None)
    # Attached: the TUI shows the pull, then closes and hands the terminal to the container (raw mode for -t).
    # Decided before the TUI opens: with nothing to pull it would only flash the alternate screen on and off.
    if opens_tui(opts.pull, image_here=opts.pull == "missing" and asyncio.run(_image_here(opts, ctx))):
        # A recording holds what the TUI showed: the pull and the start, not the container's own output.
        run_work(lambda emit: _image_only(opts, ctx, emit), "tty", record=opts.record_events or None)
        opts = dataclasses.replace(opts, pull="never")  # the image is there now: no second pull
    return asyncio.run(_with_face(Silent(), opts, ctx, observe=False))  # nothing left to show it


def opens_tui(pull: str, *, image_here: bool) -> bool:
    """Whether an attached run opens the TUI for its pull: only when it pulls (`--pull always`, or `missing` with
    the image absent). `--pull never` has nothing to show either: a missing image is then one line."""
    return pull == "always" or (pull == "missing" and not image_here)


def run_context(opts: RunOptions, config: SocirunConfig, glob: GlobalOptions) -> RunContext:
    """Everything the engine needs beyond the options, read and decided once."""
    address, namespace = resolve_target(opts.address or glob.address, opts.namespace or glob.namespace, config)
    text, alias = expand_alias(opts.image, config.aliases)
    snapshotter = opts.snapshotter or config.snapshotter or None  # config holds CONTAINERD_SNAPSHOTTER already
    choices = PullChoices(snapshotter=snapshotter, pull_mode=opts.pull_mode or None,
                          discard_unpacked_layers=opts.discard_unpacked_layers)
    return RunContext(
        address=address,
        namespace=namespace,
        data_root=os.path.abspath(opts.data_root or config.data_root),  # config holds SOCIRUN_DATA_ROOT
        reference=parse_reference(text),
        expanded_from=alias,
        platform=parse_platform(opts.platform) if opts.platform else host_platform(),
        snapshotter=snapshotter,
        pull_choices=choices,
        pull=functools.cache(lambda: pull_setup(config, choices)),
        hosts_dir=config.hosts_dir,
        insecure_registries=tuple(config.insecure_registries),
        soci_log=config.soci_log,
        bridge=cni.BridgeNetwork.from_config(config.raw),
    )


def counted_from(emit: ev.Emit, started_at: float | None) -> ev.Emit:
    """`emit`, with a ContainerStarted's "started after" counted from `started_at` instead of the process start."""
    if started_at is None:
        return emit

    def counted(event: ev.Event) -> None:
        if isinstance(event, ev.ContainerStarted):
            event = dataclasses.replace(event, since_command_start=max(0.0, event.time - started_at))
        emit(event)

    return counted


async def _with_face(renderer: Renderer, opts: RunOptions, ctx: RunContext, *, observe: bool,
                     wrap: Callable[[ev.Emit], ev.Emit] | None = None) -> int:
    async with rendering(renderer) as emit:
        return await run_container(opts, ctx, wrap(emit) if wrap is not None else emit, observe=observe)


async def _image_here(opts: RunOptions, ctx: RunContext) -> bool:
    """Whether the image is ready to run as it is: the one lookup ensure_image itself makes, without a pull."""
    async with await ContainerdClient.connect(ctx.address, ctx.namespace) as ctd:
        try:
            await ensure_image(ctd, dataclasses.replace(opts, pull="never"), ctx, lambda event: None)
        except ImageNotFoundError:
            return False
    return True


async def _image_only(opts: RunOptions, ctx: RunContext, emit: ev.Emit) -> int:
    async with await ContainerdClient.connect(ctx.address, ctx.namespace) as ctd:
        await ensure_image(ctd, opts, ctx, emit)
    return 0


# ------------------------------------------------------------------------------------------ -d, readiness


@dataclass(frozen=True)
class DetachSteps:
    """What `run -d` does around the start (pure decision: `detached_steps`)."""

    pull_tui: bool  # the TUI shows the pull and closes once the container has started; then the ID is printed
    wait_ready: bool  # after printing the ID, wait for readiness (--ready-timeout) and exit 1 if it never comes
    watch: bool  # then the watch view (--watch)


def detached_steps(*, mode: str, pull: str, image_here: bool, probe: bool, ready_timeout: float | None,
                   watch: bool) -> DetachSteps:
    """docker's -d: the ID at once when nothing is pulled (no TUI, not even a flash of one: a script's
    `ID=$(socirun -d …)` in a terminal must return without a key); a TUI only for a pull, closing at the start.
    Following the container afterwards is the explicit --watch; waiting for readiness the explicit
    --ready-timeout (with --watch, the watch view waits and says it instead)."""
    return DetachSteps(pull_tui=mode == "tty" and opens_tui(pull, image_here=image_here),
                       wait_ready=probe and ready_timeout is not None and not watch,
                       watch=watch)


def _run_detached(opts: RunOptions, ctx: RunContext, config: SocirunConfig, mode: str,
                  check: ReadyCheck | None, started_at: float | None) -> int:
    image_here = mode == "tty" and opts.pull == "missing" and asyncio.run(_image_here(opts, ctx))
    steps = detached_steps(mode=mode, pull=opts.pull, image_here=image_here, probe=check is not None,
                           ready_timeout=opts.ready_timeout, watch=opts.watch)
    started: list[str] = []

    def noting(emit: ev.Emit) -> ev.Emit:
        def note(event: ev.Event) -> None:
            if isinstance(event, ev.ContainerStarted):
                started.append(event.container_id)
            emit(event)

        return counted_from(note, started_at)

    if steps.pull_tui:
        # The TUI closes at ContainerStarted; the ID is printed once it is gone.
        code = run_work(lambda emit: run_container(opts, ctx, noting(emit), print_id=False, observe=False), "tty",
                        foreground=True, record=opts.record_events or None)
        if started:
            print(started[0], flush=True)
    elif mode == "tty":
        code = asyncio.run(_with_face(Silent(), opts, ctx, observe=False, wrap=noting))
    else:
        # Through run_work, as pull: a failure is the stream's `error` event (with --progress json, its only report).
        code = run_work(lambda emit: run_container(opts, ctx, noting(emit), observe=mode != "quiet"), mode,
                        renderer=run_renderer(mode, sys.stderr), record=opts.record_events or None)
    if code != 0 or not started:
        return code
    target = watch_target(config, ctx.address, ctx.namespace, ctx.data_root)
    if steps.watch:
        return run_watch(target, started[0], WatchParts(check=check, ready_timeout=opts.ready_timeout), mode)
    if steps.wait_ready:
        parts = WatchParts(check=check, ready_timeout=opts.ready_timeout, logs=False, stats=False, until_ready=True)
        face = "json" if mode == "json" else "quiet" if mode == "quiet" else "plain"
        return run_work(lambda emit: watch_container(target, started[0], parts, emit), face,
                        renderer=ReadyFace(face, sys.stderr))
    return 0


def _attached_with_probe(opts: RunOptions, ctx: RunContext, config: SocirunConfig, mode: str,
                         check: ReadyCheck, started_at: float | None) -> int:
    """A foreground run with --ready-url/--ready-port: the container owns the terminal; once it has started, the
    probe runs beside it and says "ready after N s" on stderr (in the JSON stream: `container_ready`)."""
    target = watch_target(config, ctx.address, ctx.namespace, ctx.data_root)
    face: Renderer = ReadyFace(mode, sys.stderr)
    parts = WatchParts(check=check, logs=False, stats=False, until_ready=True)
    probes: list[asyncio.Task[int]] = []

    def probing(emit: ev.Emit) -> ev.Emit:
        def tap(event: ev.Event) -> None:
            emit(event)
            if isinstance(event, ev.ContainerStarted) and not probes:
                probes.append(asyncio.ensure_future(
                    watch_container(target, event.container_id, parts, face.handle)))
            elif isinstance(event, ev.ContainerExited):
                for task in probes:
                    task.cancel()

        return counted_from(tap, started_at)

    async def attached(renderer: Renderer, run_opts: RunOptions, observe: bool) -> int:
        try:
            return await _with_face(renderer, run_opts, ctx, observe=observe, wrap=probing)
        finally:
            for task in probes:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task  # a probe that failed (the container left first) has nothing more to say

    if mode != "tty":
        return asyncio.run(attached(run_renderer(mode, sys.stderr), opts, mode != "quiet"))
    if opens_tui(opts.pull, image_here=opts.pull == "missing" and asyncio.run(_image_here(opts, ctx))):
        run_work(lambda emit: _image_only(opts, ctx, emit), "tty", record=opts.record_events or None)
        opts = dataclasses.replace(opts, pull="never")
    return asyncio.run(attached(Silent(), opts, False))


class ReadyFace:
    """What a run says of readiness: the `ready after` sentence (or, json, the `ready_waiting` and
    `container_ready` events); nothing else, as the run's own face already said the start."""

    def __init__(self, mode: str, out: TextIO) -> None:
        self.mode = mode
        self.out = out

    def handle(self, event: ev.Event) -> None:
        if self.mode == "quiet":
            return
        if self.mode == "json" and isinstance(event, ev.ReadyWaiting | ev.ContainerReady | ev.Error):
            self.out.write(json.dumps(ev.to_record(event), separators=(",", ":")) + "\n")
            self.out.flush()
        elif self.mode != "json" and isinstance(event, ev.ContainerReady):
            self.out.write(f"socirun: container {event.container_id[:12]} {ready_line(event)}\n")
            self.out.flush()

    def tick(self, now: float) -> None:
        pass
