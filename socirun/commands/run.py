"""`socirun run` (and a bare `socirun [OPTIONS] IMAGE`): docker run's argv → one frozen RunOptions and one
RunContext, built once here → the engine (socirun.runtime.container) with the face --progress chose."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from socirun import events as ev
from socirun.commands.context import GlobalOptions
from socirun.commands.run_flags import help_text, parse_run_args
from socirun.config import SocirunConfig
from socirun.containerd.client import ContainerdClient, resolve_target
from socirun.oci import host_platform, parse_platform
from socirun.pull.request import PullChoices, pull_setup
from socirun.reference import expand_alias, parse_reference
from socirun.runtime import cni
from socirun.runtime.container import RunContext, ensure_image, run_container
from socirun.runtime.options import RunOptions
from socirun.ui.progress import Renderer, Silent, progress_mode_for, rendering, run_renderer, run_work


def run_command(argv: Sequence[str], config: SocirunConfig, glob: GlobalOptions) -> int:
    """Parse docker-run argv, run the container, return the exit code."""
    opts = parse_run_args(argv, read_file=lambda p: Path(p).read_text(encoding="utf-8"))
    if opts.help:
        sys.stdout.write(help_text())
        return 0
    ctx = run_context(opts, config, glob)
    mode = progress_mode_for("quiet" if opts.quiet else opts.progress or None, config)
    if mode != "tty":
        # Quiet shows nothing of what SOCI fetches after the start, so nothing follows it: SOCI's debug log
        # runs to thousands of lines a second while a program starts, and parsing it costs the container CPU.
        return asyncio.run(_with_face(run_renderer(mode, sys.stderr), opts, ctx, observe=mode != "quiet"))
    if opts.detach:
        # The TUI keeps following lazily loaded layers after the start until `q`, then prints the ID (as -d does).
        return run_work(lambda emit: _detached_with_tui(opts, ctx, emit), "tty", detach=True)
    # Attached: the TUI shows the pull, then closes and hands the terminal to the container (raw mode for -t).
    run_work(lambda emit: _image_only(opts, ctx, emit), "tty")
    attached = dataclasses.replace(opts, pull="never")  # the image is there now: no second pull
    return asyncio.run(_with_face(Silent(), attached, ctx, observe=False))  # nothing left to show it


def run_context(opts: RunOptions, config: SocirunConfig, glob: GlobalOptions) -> RunContext:
    """Everything the engine needs beyond the options, read and decided once."""
    address, namespace = resolve_target(opts.address or glob.address, opts.namespace or glob.namespace, config)
    text, alias = expand_alias(opts.image, config.aliases)
    snapshotter = opts.snapshotter or config.snapshotter or None  # config holds CONTAINERD_SNAPSHOTTER already
    choices = PullChoices(snapshotter=snapshotter, pull_mode=opts.pull_mode or None)
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


async def _with_face(renderer: Renderer, opts: RunOptions, ctx: RunContext, *, observe: bool) -> int:
    async with rendering(renderer) as emit:
        return await run_container(opts, ctx, emit, observe=observe)


async def _image_only(opts: RunOptions, ctx: RunContext, emit: ev.Emit) -> int:
    async with await ContainerdClient.connect(ctx.address, ctx.namespace) as ctd:
        await ensure_image(ctd, opts, ctx, emit)
    return 0


async def _detached_with_tui(opts: RunOptions, ctx: RunContext, emit: ev.Emit) -> int:
    from socirun.soci.observer import observe_lazy_layers

    async with observe_lazy_layers(emit, ctx.pull().soci, ctx.soci_log) as tapped:
        await run_container(opts, ctx, tapped, print_id=False, observe=False)
        await asyncio.Event().wait()  # until the user presses q: the runner then cancels this and prints the ID
    return 0
