"""`socirun sandbox ...` (a private containerd + registry for demos, tests and benchmarks) and `socirun demo`."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys

from socirun.commands.context import GlobalOptions
from socirun.config import SocirunConfig
from socirun.errors import UsageError


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
            info = box.up(soci=args.soci)
            if info.soci_address:
                print(f"SOCI emulator (a stand-in for soci-snapshotter-grpc) registered as snapshotter soci: "
                      f"{info.soci_address} (pid {info.soci_pid})", file=sys.stderr)
            print(f"sandbox up in {info.dir}: containerd {info.containerd_address} (pid {info.containerd_pid}), "
                  f"registry {info.registry_host} (pid {info.registry_pid})", file=sys.stderr)
            print("run `eval \"$(socirun sandbox env)\"` to point socirun and ctr at it", file=sys.stderr)
        case "down":
            box.down()
            print(f"sandbox in {box.dir} stopped and removed", file=sys.stderr)
        case "status":
            status = box.status()
            if status is None:
                print(f"sandbox in {box.dir} is not running", file=sys.stderr)
                return 1
            print(f"sandbox in {status.dir} is running: containerd {status.containerd_address} "
                  f"(pid {status.containerd_pid}), registry {status.registry_host} (pid {status.registry_pid})")
        case "env":
            if box.status() is None:
                raise UsageError(f"the sandbox in {box.dir} is not running; start it with `socirun sandbox up`")
            print("\n".join(box.env_lines()))
        case "push-sample":
            from socirun.sandbox.sample import push_sample

            running = box.status()
            if running is None:
                raise UsageError(f"the sandbox in {box.dir} is not running; start it with `socirun sandbox up`")
            print(push_sample(running.registry_host, args.name, args.tag, _parse_layers(args.layers),
                              seed=args.seed, with_glibc=args.with_glibc, soci=args.soci))
    return 0


DEMO_LAYERS_MB = (8.0, 16.0, 64.0, 384.0)
DEMO_SPAN_PACE_MS = 120.0  # the emulator fetches a 4 MiB span every 120 ms: slow enough to watch


def demo_command(args: argparse.Namespace, config: SocirunConfig) -> int:
    """Sandbox with the SOCI emulator, a sample with a SOCI v2 index, and `socirun run` of it: the container
    starts while its big layer is still being fetched, and the fetch log shows the spans as they arrive."""
    from socirun.commands.run import run_command
    from socirun.sandbox.sample import push_sample
    from socirun.sandbox.sandbox import Sandbox, default_dir
    from socirun.sandbox.soci_emulator.process import emulator_config
    from socirun.ui.progress import progress_mode_for

    box = Sandbox(args.dir or default_dir())
    info = box.up(soci=True)
    # A fresh, slowly paced emulator each time, so the lazy fill is there to be seen.
    box.restart_soci(emulator_config(box.soci), span_pace_ms=DEMO_SPAN_PACE_MS)
    # socirun follows this sandbox's SOCI: its config file (metrics address, state root) and its log file.
    config = dataclasses.replace(config, soci_config_path=str(box.soci.config), soci_log=str(box.soci.log))
    print(f"sandbox: containerd {info.containerd_address}, registry {info.registry_host}, and the SOCI "
          "emulator (a stand-in for soci-snapshotter-grpc, which cannot be installed here)", file=sys.stderr)
    reference = push_sample(info.registry_host, "demo/lazy", "latest", DEMO_LAYERS_MB, soci="v2")
    print(f"pushed {reference} with a SOCI v2 index", file=sys.stderr)
    _forget_demo_image(info.containerd_address, reference)
    progress = progress_mode_for(args.progress, config)
    run_args = ["--rm", "--net", "none", "--progress", progress]
    if progress == "tty":
        # Detached, the TUI keeps following the lazy fill after the start; q leaves it (the container ends
        # by itself after a minute and --rm removes it).
        run_args += ["-d", reference, "sh", "-c", "echo hello from the socirun sample; sleep 60"]
    else:
        run_args += [reference]
    code = run_command(run_args, config, GlobalOptions(address=info.containerd_address, namespace="default"))
    print(f"\nlook around with: ctr -a {info.containerd_address} images ls   |   socirun plan {reference}\n"
          "stop the sandbox with: socirun sandbox down", file=sys.stderr)
    return code


def _forget_demo_image(address: str, reference: str) -> None:
    """A demo shows a cold start each time: drop the image and its snapshots from an earlier demo."""
    subprocess.run(["ctr", "-a", address, "images", "rm", "--sync", reference], capture_output=True, check=False)


