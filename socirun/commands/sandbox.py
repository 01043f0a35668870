"""`socirun sandbox ...` (a private containerd + registry for demos, tests and benchmarks) and `socirun demo`."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import time
from typing import TYPE_CHECKING

from socirun.commands.context import GlobalOptions
from socirun.config import SocirunConfig
from socirun.errors import UsageError

if TYPE_CHECKING:
    from socirun.sandbox.sandbox import Sandbox, SandboxInfo


def _parse_layers(text: str) -> list[float]:
    try:
        sizes = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f'invalid --layers "{text}": give comma-separated sizes in MB, e.g. 1,2,4') from None
    if any(s < 0 for s in sizes):
        raise UsageError(f'invalid --layers "{text}": sizes cannot be negative')
    return sizes


def sandbox_command(args: argparse.Namespace) -> int:
    from socirun.sandbox.sandbox import Sandbox, default_dir

    box = Sandbox(args.dir or default_dir())
    match args.sandbox_command:
        case "up":
            info = box.up(soci=args.soci, containerd=args.containerd)
            for line in _describe(box, info):
                print(line, file=sys.stderr)
            print("run `eval \"$(socirun sandbox env)\"` to point socirun and ctr at it", file=sys.stderr)
        case "down":
            box.down()
            print(f"sandbox in {box.dir} stopped and removed", file=sys.stderr)
        case "status":
            status = box.status()
            if status is None:
                print(f"sandbox in {box.dir} is not running", file=sys.stderr)
                return 1
            print("\n".join(_describe(box, status)))
        case "env":
            if box.status() is None:
                raise UsageError(f"the sandbox in {box.dir} is not running; start it with `socirun sandbox up`")
            print("\n".join(box.env_lines()))
        case "push-sample":
            _push_sample(box, args)
    return 0


def _push_sample(box: Sandbox, args: argparse.Namespace) -> None:
    """`sandbox push-sample`: the reference on stdout; with --list-files the sample's files instead."""
    layers = _parse_layers(args.layers)
    if args.list_files:
        from socirun.sandbox.sample_layout import sample_files

        for file in sample_files(layers, args.seed):
            print(f"{file.path}\t{file.size}")
        return
    if not args.name:
        raise UsageError("push-sample needs --name (the repository, e.g. demo/sample)")
    if args.min_layer_size is not None and args.min_layer_size < 0:
        raise UsageError(f'invalid --min-layer-size "{args.min_layer_size}": it cannot be negative')
    from socirun.sandbox.sample import push_sample
    from socirun.sandbox.soci_index import DEFAULT_MIN_LAYER_SIZE

    running = box.status()
    if running is None:
        raise UsageError(f"the sandbox in {box.dir} is not running; start it with `socirun sandbox up`")
    min_layer_size = DEFAULT_MIN_LAYER_SIZE if args.min_layer_size is None else args.min_layer_size
    print(push_sample(running.registry_host, args.name, args.tag, layers, seed=args.seed,
                      with_glibc=args.with_glibc, soci=args.soci, min_layer_size=min_layer_size,
                      containerd_address=running.containerd_address))
    if args.soci == "v1":
        print("SOCI v1 indexes are used only when the snapshotter's config has [pull_modes.soci_v1] enable = true",
              file=sys.stderr)


def _describe(box: Sandbox, info: SandboxInfo) -> list[str]:
    """What runs in the sandbox: each daemon with its binary, version, address and PID."""
    from socirun.sandbox.components import version_of
    from socirun.sandbox.soci_daemon import daemon_running, metrics_port_of

    containerd = info.containerd_binary or "containerd"
    version = info.containerd_version or version_of(containerd)
    lines = [f"sandbox in {info.dir} is running:",
             f"  containerd {version} ({containerd}) at {info.containerd_address}, "
             f"pid {info.containerd_pid}",
             f"  docker-registry at {info.registry_host}, pid {info.registry_pid}"]
    if info.soci_address:
        binary = info.soci_binary or "soci-snapshotter-grpc"
        port = metrics_port_of(box.soci.config.read_text()) if box.soci.config.exists() else None
        state = f"pid {info.soci_pid}" if daemon_running(box.soci, info.soci_pid) else \
            f"NOT RUNNING (read {box.soci.log})"
        lines.append(f"  soci-snapshotter-grpc {version_of(binary)} ({binary}) at {info.soci_address}, {state}, "
                     f"registered as snapshotter soci; metrics 127.0.0.1:{port}, log {box.soci.log}, "
                     f"root {box.soci.root}")
    return lines


DEMO_LAYERS_MB = (8.0, 16.0, 64.0, 384.0)
# What the demo's container reads: one file of the big layer (the sample's file listing names it).
DEMO_COMMAND = ("echo hello from the socirun sample; wc -c /data/layer-4/big.bin; "
                "cat /data/layer-3/site-packages/pkg000/mod00*.py | wc -l")


def demo_command(args: argparse.Namespace, config: SocirunConfig) -> int:
    """Sandbox with the real soci-snapshotter, a sample with a real SOCI v2 index (`soci convert`), and
    `socirun run` of it: the container starts as soon as every layer is mounted, and the fetch log shows what
    SOCI fetched and which files the container read. Where the snapshotter is not built, one sentence says so
    and the demo shows socirun's parallel pull instead."""
    from socirun.commands.run import run_command
    from socirun.errors import SandboxError
    from socirun.sandbox.components import BUILD_HINT, find_binary
    from socirun.sandbox.sample import push_sample
    from socirun.sandbox.sandbox import Sandbox, default_dir
    from socirun.sandbox.soci_daemon import BINARY
    from socirun.ui.progress import progress_mode_for

    box = Sandbox(args.dir or default_dir())
    lazy = find_binary(BINARY) is not None
    if lazy:
        try:
            info = box.up(soci=True)
        except SandboxError as err:
            if "without soci-snapshotter-grpc" not in str(err):
                raise
            box.down()  # a sandbox from an earlier `up` without --soci: start over with SOCI
            info = box.up(soci=True)
        # socirun follows this sandbox's SOCI: its config (metrics address), root (state files) and log file.
        config = dataclasses.replace(config, soci_config_path=str(box.soci.config), soci_root=str(box.soci.root),
                                     soci_log=str(box.soci.log))
        print(f"sandbox: containerd {info.containerd_address}, registry {info.registry_host}, and the real "
              f"soci-snapshotter-grpc at {info.soci_address}", file=sys.stderr)
        reference = push_sample(info.registry_host, "demo/lazy", "latest", DEMO_LAYERS_MB, soci="v2")
        print(f"pushed {reference} with a SOCI v2 index made by `soci convert`", file=sys.stderr)
    else:
        print(f"soci-snapshotter-grpc is not built on this host, so the demo shows socirun's parallel pull "
              f"instead of lazy loading ({BUILD_HINT}).", file=sys.stderr)
        info = box.up()
        reference = push_sample(info.registry_host, "demo/parallel", "latest", DEMO_LAYERS_MB)
    _forget_demo_image(info.containerd_address, reference)
    progress = progress_mode_for(args.progress, config)
    run_args = ["--rm", "--net", "none", "--progress", progress]
    if not lazy:
        run_args += ["--pull-mode", "parallel"]
    if progress == "tty":
        # Detached, the TUI keeps following SOCI's background fetch after the start; q leaves it (the
        # container ends by itself after a minute and --rm removes it).
        run_args += ["-d", reference, "sh", "-c", DEMO_COMMAND + "; sleep 60"]
    else:
        run_args += [reference, "sh", "-c", DEMO_COMMAND]
    # "started after N s" counts from here: the sandbox's start-up and the push are not the run's.
    code = run_command(run_args, config, GlobalOptions(address=info.containerd_address, namespace="default"),
                       started_at=time.time())
    print("\n" + "\n".join(demo_hints(_socirun_executable(), reference, args.dir)), file=sys.stderr)
    return code


def _socirun_executable() -> str:
    """The absolute path of this socirun's console script (the venv's bin/socirun), else plain `socirun`."""
    beside = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "socirun")
    return beside if os.access(beside, os.X_OK) else "socirun"


def demo_hints(executable: str, reference: str, sandbox_dir: str | None) -> list[str]:
    """The demo's closing lines: commands that work as they stand in a fresh shell, where neither socirun (a venv's
    script) nor the sandbox's variables are set."""
    exe = shlex.quote(executable)
    directory = f" --dir {shlex.quote(sandbox_dir)}" if sandbox_dir else ""
    lines = ["look around (these work in any shell):",
             f"  eval \"$({exe} sandbox env{directory})\"    # points socirun and ctr at the sandbox",
             f"  {exe} plan {shlex.quote(reference)}"]
    if executable != "socirun":
        lines.append(f"  source {shlex.quote(os.path.join(os.path.dirname(executable), 'activate'))}"
                     "    # then plain `socirun` works in this shell")
    lines.append(f"stop the sandbox with: {exe} sandbox down{directory}")
    return lines


def _forget_demo_image(address: str, reference: str) -> None:
    """A demo shows a cold start each time: drop the image and its snapshots from an earlier demo."""
    import asyncio

    from socirun.containerd.client import ContainerdClient

    async def forget() -> None:
        async with await ContainerdClient.connect(address, "default") as ctd:
            await ctd.image_delete(reference, sync=True)

    asyncio.run(forget())


