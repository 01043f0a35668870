"""Command line: argv → options → the engine. stdout is data (references, IDs); everything else goes to stderr.

One top-level handler turns every SocirunError into one sentence on stderr and docker's exit code; a
traceback is printed only with --debug.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from socirun import __version__
from socirun import events as ev
from socirun.config import PROGRESS_MODES, SocirunConfig, load_config
from socirun.errors import EXIT_INTERRUPTED, SocirunError, UsageError
from socirun.progress import Work, progress_mode_for, run_work


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad input as a UsageError (exit 125, like docker) instead of exiting 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}. See '{self.prog} --help'.")


def _add_connection_flags(p: argparse.ArgumentParser, *, top_level: bool) -> None:
    """Global flags; as in nerdctl they may also follow the subcommand, but the short forms only lead."""
    default = None if top_level else argparse.SUPPRESS
    short = {"address": ["-a"], "namespace": ["-n"]} if top_level else {"address": [], "namespace": []}
    p.add_argument("--address", *short["address"], default=default,
                   help="containerd socket (env CONTAINERD_ADDRESS, default /run/containerd/containerd.sock)")
    p.add_argument("--namespace", *short["namespace"], default=default,
                   help="containerd namespace (env CONTAINERD_NAMESPACE, default 'default')")
    p.add_argument("--debug", action="store_true", default=default if not top_level else False,
                   help="print tracebacks on errors")


def _add_registry_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hosts-dir", default=None,
                   help="containerd hosts.toml directory (default /etc/containerd/certs.d, /etc/docker/certs.d)")
    p.add_argument("--insecure-registry", action="append", default=[], metavar="HOST",
                   help="allow plain HTTP / unverified TLS for HOST (repeatable)")


def _add_soci_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--soci-index-digest", default=None, metavar="DIGEST",
                   help="use this SOCI index (skips SOCI's discovery), as nerdctl's flag")
    p.add_argument("--soci-log", default=None, metavar="FILE",
                   help="follow SOCI's JSON log in FILE for the fetch log (default: journalctl -u soci-snapshotter)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="socirun", description="Fast, visible cold starts for big container images.")
    parser.add_argument("--version", action="version", version=f"socirun {__version__}")
    _add_connection_flags(parser, top_level=True)
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    # Listed for --help only: main() hands `run ...` and a bare `[OPTIONS] IMAGE ...` to socirun.run first.
    sub.add_parser("run", add_help=False,
                   help="run a container: docker run's flags and exit codes (also `socirun [OPTIONS] IMAGE`)")

    pull = sub.add_parser("pull", help="pull an image into containerd and unpack it")
    _add_connection_flags(pull, top_level=False)
    _add_registry_flags(pull)
    pull.add_argument("--platform", default=None, help="os/arch[/variant] (default: this host's)")
    pull.add_argument("--snapshotter", default=None, help="snapshotter to unpack for (default overlayfs)")
    pull.add_argument("--progress", default=None, metavar="|".join(PROGRESS_MODES),
                      help="how to show progress (default auto)")
    pull.add_argument("--pull-mode", default=None, metavar="auto|lazy|parallel|standard",
                      help="parallel: ranged chunks over several connections; standard: one stream per layer; "
                           "auto (default, or [pull] mode): parallel when the host favours it")
    pull.add_argument("--max-concurrent-downloads", type=int, default=None, metavar="N",
                      help="connections per image in parallel mode (default from the host: 8 on 2 CPUs), "
                           "layers at once in standard mode (default 4)")
    pull.add_argument("--chunk-size", default=None, metavar="SIZE",
                      help="bytes per ranged request in parallel mode, e.g. 16MiB or 8MB (default from the host)")
    pull.add_argument("--record-events", default=None, metavar="FILE",
                      help="also write every event as JSON lines to FILE (replayable)")
    pull.add_argument("-q", "--quiet", action="store_true", help="same as --progress=quiet")
    _add_soci_flags(pull)
    pull.add_argument("image")

    plan = sub.add_parser("plan", help="say which snapshotter and pull mode an image would get, and why")
    _add_connection_flags(plan, top_level=False)
    _add_registry_flags(plan)
    plan.add_argument("--platform", default=None)
    plan.add_argument("--snapshotter", default=None)
    plan.add_argument("--pull-mode", default=None, metavar="auto|lazy|parallel|standard")
    plan.add_argument("--soci-index-digest", default=None, metavar="DIGEST")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON on stdout")
    plan.add_argument("image")

    doctor = sub.add_parser("doctor", help="check containerd, snapshotters, SOCI, CNI, GPUs, credentials")
    _add_connection_flags(doctor, top_level=False)
    _add_registry_flags(doctor)
    doctor.add_argument("--soci-log", default=None, metavar="FILE", help="SOCI's log file, if not in journald")
    doctor.add_argument("image", nargs="?", default=None, help="also check registry credentials for IMAGE")

    sandbox = sub.add_parser("sandbox", help="a private containerd + registry for demos, tests and benchmarks")
    sandbox_sub = sandbox.add_subparsers(dest="sandbox_command", parser_class=_Parser, required=True)
    for name, text in (("up", "start (idempotent)"), ("down", "stop what `up` started and remove its state"),
                       ("status", "show whether it runs"), ("env", "print export lines for eval")):
        sp = sandbox_sub.add_parser(name, help=text)
        sp.add_argument("--dir", default=None, help="state directory (default $SOCIRUN_SANDBOX_DIR or "
                        "/var/lib/socirun/sandbox)")
        if name == "up":
            sp.add_argument("--soci", action="store_true",
                            help="also start the SOCI emulator, registered in containerd as the snapshotter soci")
    push = sandbox_sub.add_parser("push-sample", help="build a sample OCI image and push it to the sandbox")
    push.add_argument("--dir", default=None)
    push.add_argument("--name", required=True, help="repository name, e.g. demo/sample")
    push.add_argument("--tag", default="latest")
    push.add_argument("--layers", default="1,2,4,8", metavar="MB,MB,...",
                      help="uncompressed sizes of the data layers on top of the busybox base, in MB")
    push.add_argument("--seed", type=int, default=0, help="changes the layers' bytes (and digests)")
    push.add_argument("--with-glibc", action="store_true", help="add the host's dynamic loader and libc")
    push.add_argument("--soci", default="none", choices=("v2", "v1", "none"),
                      help="attach a SOCI index (placeholder zTOCs, for the SOCI emulator): v2 binds by manifest "
                           "annotation, v1 by subject")

    replay = sub.add_parser("replay", help="show a recorded event stream (--record-events FILE) in any face")
    replay.add_argument("--progress", default=None, metavar="|".join(PROGRESS_MODES),
                        help="how to show it (default auto)")
    replay.add_argument("--speed", type=float, default=None, metavar="X",
                        help="X times real time; 0 = no waiting (default: 1 for the TUI, 0 otherwise)")
    replay.add_argument("file", metavar="FILE")

    demo = sub.add_parser("demo", help="bring the sandbox up, push a sample and pull it")
    demo.add_argument("--dir", default=None)
    demo.add_argument("--progress", default=None, metavar="|".join(PROGRESS_MODES))
    return parser


def _parse_layers(text: str) -> list[float]:
    try:
        sizes = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f'invalid --layers "{text}": give comma-separated sizes in MB, e.g. 1,2,4') from None
    if any(s < 0 for s in sizes):
        raise UsageError(f'invalid --layers "{text}": sizes cannot be negative')
    return sizes


def progress_mode(requested: str | None, config: SocirunConfig) -> str:
    """The face to use: flag, then SOCIRUN_PROGRESS, then the config file; `auto` resolved against the TTYs."""
    return progress_mode_for(requested or os.environ.get("SOCIRUN_PROGRESS") or config.progress)


def _pull(args: argparse.Namespace, config: SocirunConfig) -> int:
    mode = progress_mode("quiet" if args.quiet else args.progress, config)
    return run_work(_pull_work(args, config), mode, record=args.record_events)


def _pull_work(args: argparse.Namespace, config: SocirunConfig) -> Work:
    """The pull as `async (emit) -> int`, so any face (plain in asyncio.run, or the TUI's loop) can run it."""
    # Imported here so `socirun --help` stays fast and needs no gRPC.
    from socirun.containerd.client import ContainerdClient, resolve_target
    from socirun.oci import host_platform, parse_platform
    from socirun.pull.engine import pull_image
    from socirun.pull.request import PullChoices, build_pull_request
    from socirun.reference import expand_alias, parse_reference
    from socirun.registry.client import RegistryClient

    text, alias = expand_alias(args.image, config.aliases)
    reference = parse_reference(text)
    platform = parse_platform(args.platform) if args.platform else host_platform()
    address, namespace = resolve_target(getattr(args, "address", None), getattr(args, "namespace", None), config)
    choices = PullChoices(
        snapshotter=args.snapshotter or config.snapshotter,  # config holds CONTAINERD_SNAPSHOTTER already
        pull_mode=getattr(args, "pull_mode", None),
        max_concurrent_downloads=args.max_concurrent_downloads,
        chunk_size=getattr(args, "chunk_size", None),
        soci_index_digest=getattr(args, "soci_index_digest", None) or "",
    )
    request = build_pull_request(reference, platform, config, choices, expanded_from=alias)
    insecure = [*config.insecure_registries, *args.insecure_registry]

    async def work(emit: ev.Emit) -> int:
        async with await ContainerdClient.connect(address, namespace) as ctd, RegistryClient(
            hosts_dir=args.hosts_dir or config.hosts_dir, insecure=insecure
        ) as registry:
            from socirun.soci.observer import observe_lazy_layers

            async with observe_lazy_layers(emit, getattr(args, "soci_log", None)) as tapped:
                await pull_image(ctd, registry, request, tapped)
        return 0

    return work


def _replay(args: argparse.Namespace, config: SocirunConfig) -> int:
    from socirun.replay import replay

    if args.speed is not None and args.speed < 0:
        raise UsageError(f"invalid --speed {args.speed}: give 0 (no waiting) or a positive factor")
    return replay(args.file, progress_mode(args.progress, config), speed=args.speed)


def _sandbox(args: argparse.Namespace) -> int:
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


def _demo(args: argparse.Namespace, config: SocirunConfig) -> int:
    """Sandbox with the SOCI emulator, a sample with a SOCI v2 index, and `socirun run` of it: the container
    starts while its big layer is still being fetched, and the fetch log shows the spans as they arrive."""
    from socirun.run import run_command
    from socirun.sandbox.sample import push_sample
    from socirun.sandbox.sandbox import Sandbox, default_dir
    from socirun.sandbox.soci_emulator.process import emulator_config

    box = Sandbox(args.dir or default_dir())
    info = box.up(soci=True)
    # A fresh, slowly paced emulator each time, so the lazy fill is there to be seen.
    box.restart_soci(emulator_config(box.soci), span_pace_ms=DEMO_SPAN_PACE_MS)
    os.environ["SOCI_SNAPSHOTTER_CONFIG"] = str(box.soci.config)
    os.environ["SOCIRUN_SOCI_LOG"] = str(box.soci.log)
    print(f"sandbox: containerd {info.containerd_address}, registry {info.registry_host}, and the SOCI "
          "emulator (a stand-in for soci-snapshotter-grpc, which cannot be installed here)", file=sys.stderr)
    reference = push_sample(info.registry_host, "demo/lazy", "latest", DEMO_LAYERS_MB, soci="v2")
    print(f"pushed {reference} with a SOCI v2 index", file=sys.stderr)
    _forget_demo_image(info.containerd_address, reference)
    progress = progress_mode_for(args.progress or os.environ.get("SOCIRUN_PROGRESS") or config.progress)
    run_args = ["--rm", "--net", "none", "--progress", progress]
    if progress == "tty":
        # Detached, the TUI keeps following the lazy fill after the start; q leaves it (the container ends
        # by itself after a minute and --rm removes it).
        run_args += ["-d", reference, "sh", "-c", "echo hello from the socirun sample; sleep 60"]
    else:
        run_args += [reference]
    code = run_command(run_args, config, address=info.containerd_address, namespace="default")
    print(f"\nlook around with: ctr -a {info.containerd_address} images ls   |   socirun plan {reference}\n"
          "stop the sandbox with: socirun sandbox down", file=sys.stderr)
    return code


def _forget_demo_image(address: str, reference: str) -> None:
    """A demo shows a cold start each time: drop the image and its snapshots from an earlier demo."""
    subprocess.run(["ctr", "-a", address, "images", "rm", "--sync", reference], capture_output=True, check=False)


_GLOBAL_VALUE_FLAGS = {"--address": "address", "-a": "address", "--namespace": "namespace", "-n": "namespace"}


def _split_global_flags(argv: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """The leading global flags (--address/-a, --namespace/-n, --debug) and the rest of argv."""
    found: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        key, eq, value = arg.partition("=")
        if key in _GLOBAL_VALUE_FLAGS and key.startswith("--") and eq:
            found[_GLOBAL_VALUE_FLAGS[key]] = value
        elif arg in _GLOBAL_VALUE_FLAGS and i + 1 < len(argv):
            found[_GLOBAL_VALUE_FLAGS[arg]] = argv[i + 1]
            i += 1
        elif arg == "--debug":
            found["debug"] = "1"
        else:
            break
        i += 1
    return found, list(argv[i:])


def _run_argv(parser: argparse.ArgumentParser, rest: list[str]) -> list[str] | None:
    """docker's `run` arguments when argv is `run ...` or a bare `[OPTIONS] IMAGE ...`; None for subcommands."""
    if not rest or rest[0] in ("--help", "--version") or rest == ["-h"]:
        return None  # (`-h NAME` is docker's --hostname, so `socirun -h box IMAGE` is a run)
    if rest[0] == "run":
        return rest[1:]
    known: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            known.update(action.choices)
    return None if rest[0] in known else rest


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        global_flags, rest = _split_global_flags(argv)
        run_argv = _run_argv(build_parser(), rest)
        if run_argv is not None:
            from socirun.run import run_command

            return run_command(run_argv, load_config(), address=global_flags.get("address"),
                               namespace=global_flags.get("namespace"))
        args = build_parser().parse_args(argv)
        debug = bool(getattr(args, "debug", False))
        config = load_config()
        match args.command:
            case "plan" | "doctor":
                from socirun.soci.commands import doctor_command, plan_command

                return plan_command(args, config) if args.command == "plan" else doctor_command(args, config)
            case "pull":
                return _pull(args, config)
            case "replay":
                return _replay(args, config)
            case "sandbox":
                return _sandbox(args)
            case "demo":
                return _demo(args, config)
            case _:
                build_parser().print_help(sys.stderr)
                return 0 if not argv else 125
    except SocirunError as err:
        if debug:
            traceback.print_exc()
        print(f"socirun: {err.message}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("socirun: interrupted; nothing half-written was kept, and a rerun resumes the download",
              file=sys.stderr)
        return EXIT_INTERRUPTED


def run() -> NoReturn:
    sys.exit(main())


if __name__ == "__main__":
    run()
