"""The command line's entry: argv → the command's options → the engine. stdout is data (references, IDs);
everything else goes to stderr.

The one error-handling shell: every SocirunError becomes one sentence on stderr and docker's exit code, and any
other exception (a bug, or input a parser let through) one sentence and 125; a traceback is printed only with
--debug. Messages quote registries, images and files, so they are made terminal-safe before they are printed.
The configuration and environment are read once (load_config) and handed down with the global flags as one
GlobalOptions value.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from socirun import __version__
from socirun.commands.context import GlobalOptions
from socirun.config import PROGRESS_MODES, load_config
from socirun.errors import EXIT_DAEMON, EXIT_INTERRUPTED, SocirunError, UsageError
from socirun.text import terminal_safe


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
    # Listed for --help only: main() hands `run ...` and a bare `[OPTIONS] IMAGE ...` to socirun.commands.run.
    sub.add_parser("run", add_help=False,
                   help="run a container: docker run's flags and exit codes (also `socirun [OPTIONS] IMAGE`)")

    pull = sub.add_parser("pull", help="pull an image into containerd and unpack it")
    _add_connection_flags(pull, top_level=False)
    _add_registry_flags(pull)
    pull.add_argument("--platform", default=None, help="os/arch[/variant] (default: this host's)")
    pull.add_argument("--snapshotter", default=None, help="snapshotter to unpack for (default overlayfs)")
    pull.add_argument("--progress", default=None, metavar="|".join(PROGRESS_MODES),
                      help="how to show progress (default auto)")
    pull.add_argument("--pull-mode", default=None, metavar="auto|lazy|parallel|parallel-stream|standard",
                      help="parallel: ranged chunks over several connections; parallel-stream: the same, each "
                           "layer unpacked by socirun as its bytes arrive; standard: one stream per layer; "
                           "auto (default, or [pull] mode): parallel when the host favours it")
    pull.add_argument("--max-concurrent-downloads", type=int, default=None, metavar="N",
                      help="connections per image in parallel mode (default from the host: 8 on 2 CPUs), "
                           "layers at once in standard mode (default 4)")
    pull.add_argument("--chunk-size", default=None, metavar="SIZE",
                      help="bytes per ranged request in parallel mode, e.g. 16MiB or 8MB (default from the host)")
    pull.add_argument("--discard-unpacked-layers", action=argparse.BooleanOptionalAction, default=None,
                      help="in a parallel-stream pull (--pull-mode parallel-stream, or auto, which then streams "
                           "into any local snapshotter): keep no blob of a layer socirun unpacks as its bytes "
                           "arrive (less CPU and disk; the image cannot be exported, pushed or unpacked again "
                           "from the store) (default off, or [pull] discard_unpacked_layers)")
    pull.add_argument("--record-events", default=None, metavar="FILE",
                      help="also write every event as JSON lines to FILE (replayable)")
    pull.add_argument("-q", "--quiet", action="store_true", help="same as --progress=quiet")
    _add_soci_flags(pull)
    pull.add_argument("image")

    plan = sub.add_parser("plan", help="say which snapshotter and pull mode an image would get, and why")
    _add_connection_flags(plan, top_level=False)
    _add_registry_flags(plan)
    plan.add_argument("--platform", default=None, help="os/arch[/variant] (default: this host's)")
    plan.add_argument("--snapshotter", default=None,
                      help="plan for this snapshotter (default: the one `pull` would choose)")
    plan.add_argument("--pull-mode", default=None, metavar="auto|lazy|parallel|parallel-stream|standard",
                      help="plan as `pull --pull-mode` would (default auto, or [pull] mode)")
    plan.add_argument("--discard-unpacked-layers", action=argparse.BooleanOptionalAction, default=None,
                      help="plan as `pull --discard-unpacked-layers` would")
    plan.add_argument("--soci-index-digest", default=None, metavar="DIGEST",
                      help="plan with this SOCI index (skips SOCI's discovery), as nerdctl's flag")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON on stdout")
    plan.add_argument("image", help="the image reference (or a short-name alias), as `pull` takes it")

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
                            help="also start the real soci-snapshotter-grpc (on the built containerd 2.x), "
                                 "registered in containerd as the snapshotter soci")
            sp.add_argument("--containerd", default=None, metavar="PATH",
                            help="the containerd binary to start (default: the first on PATH; with --soci the "
                                 "built 2.x); its --version picks the config schema")
    from socirun.sandbox.sample_layout import LAYOUT

    push = sandbox_sub.add_parser("push-sample", help="build a sample OCI image and push it to the sandbox",
                                  epilog=LAYOUT, formatter_class=argparse.RawDescriptionHelpFormatter)
    push.add_argument("--dir", default=None)
    push.add_argument("--name", default=None, help="repository name, e.g. demo/sample (required to push)")
    push.add_argument("--tag", default="latest")
    push.add_argument("--layers", default="1,2,4,8", metavar="MB,MB,...",
                      help="data layers on top of the busybox base: each one's file content in MB (MiB), "
                           "uncompressed; see below")
    push.add_argument("--seed", type=int, default=0, help="changes the layers' bytes (and digests)")
    push.add_argument("--with-glibc", action="store_true", help="add the host's dynamic loader and libc")
    push.add_argument("--soci", default="none", choices=("v2", "v1", "none"),
                      help="also make a SOCI index with the real soci CLI: v2 (soci convert; the tag points at "
                           "the converted index), v1 (soci create + soci push through the sandbox's containerd; "
                           "found by the referrers tag), none (default)")
    push.add_argument("--min-layer-size", type=int, default=None, metavar="BYTES",
                      help="soci's --min-layer-size: only layers of at least this many compressed bytes get a "
                           "zTOC (default 10485760, soci's own)")
    push.add_argument("--list-files", action="store_true",
                      help="print every data file of this sample (path and size, tab-separated) and push nothing")

    replay = sub.add_parser("replay", help="show a recorded event stream (--record-events FILE) in any face")
    replay.add_argument("--progress", default=None, metavar="|".join(PROGRESS_MODES),
                        help="how to show it (default auto)")
    replay.add_argument("--speed", type=float, default=None, metavar="X",
                        help="X times real time; 0 = no waiting (default: 1 for the TUI, 0 otherwise)")
    replay.add_argument("file", metavar="FILE")

    # docker's container and image commands: registered here, so `socirun ps` is never taken for an image name.
    from socirun.commands.containers import add_parsers

    add_parsers(sub, _Parser, lambda p: _add_connection_flags(p, top_level=False))

    from socirun.commands.watch import add_watch_parser

    _add_connection_flags(add_watch_parser(sub), top_level=False)

    demo = sub.add_parser("demo", help="bring the sandbox up, push a sample and pull it")
    demo.add_argument("--dir", default=None)
    demo.add_argument("--progress", default=None, metavar="|".join(PROGRESS_MODES))
    return parser


_GLOBAL_VALUE_FLAGS = {"--address": "address", "-a": "address", "--namespace": "namespace", "-n": "namespace"}


def _split_global_flags(argv: Sequence[str]) -> tuple[GlobalOptions, list[str]]:
    """The leading global flags (--address/-a, --namespace/-n, --debug) and the rest of argv. The one reader of
    the leading flags: a bare `socirun [OPTIONS] IMAGE` passes docker's flags on, which argparse cannot."""
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
    return GlobalOptions(found.get("address"), found.get("namespace"), "debug" in found), list(argv[i:])


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
        leading, rest = _split_global_flags(argv)
        parser = build_parser()
        run_argv = _run_argv(parser, rest)
        if run_argv is not None:
            from socirun.commands.run import run_command

            return run_command(run_argv, load_config(), leading)
        # The leading global flags are taken; a subcommand may repeat them after its name (nerdctl does).
        args = parser.parse_args(rest)
        glob = GlobalOptions(address=getattr(args, "address", None) or leading.address,
                             namespace=getattr(args, "namespace", None) or leading.namespace,
                             debug=bool(getattr(args, "debug", False)) or leading.debug)
        debug = glob.debug
        config = load_config()
        match args.command:
            case "plan":
                from socirun.commands.plan import plan_command

                return plan_command(args, config, glob)
            case "doctor":
                from socirun.commands.doctor import doctor_command

                return doctor_command(args, config, glob)
            case "pull":
                from socirun.commands.pull import pull_command

                return pull_command(args, config, glob)
            case "replay":
                from socirun.commands.replay import replay_command

                return replay_command(args, config)
            case "sandbox":
                from socirun.commands.sandbox import sandbox_command

                return sandbox_command(args)
            case ("ps" | "logs" | "start" | "stop" | "kill" | "rm" | "exec" | "wait" | "port" | "inspect" | "images"
                  | "rmi"):
                from socirun.commands.containers import container_command

                return container_command(args, config, glob)
            case "watch":
                from socirun.commands.watch import watch_command

                return watch_command(args, config, glob)
            case "demo":
                from socirun.commands.sandbox import demo_command

                return demo_command(args, config)
            case _:
                parser.print_help(sys.stderr)
                return 0 if not argv else 125
    except KeyboardInterrupt:
        from socirun.ui.progress import INTERRUPTED

        print(f"socirun: {INTERRUPTED}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # the one shell: whatever escaped becomes a sentence, never a traceback
        from socirun.ui.progress import Reported

        if isinstance(err, Reported):  # --progress json: the stream's last event said it; stderr stays JSON
            if debug and err.__cause__ is not None:
                traceback.print_exception(err.__cause__)
            return err.exit_code
        if debug:
            traceback.print_exc()
        message, code = error_sentence(err, debug=debug)
        print(f"socirun: {terminal_safe(message)}", file=sys.stderr)
        return code


def error_sentence(err: Exception, *, debug: bool = False) -> tuple[str, int]:
    """What the shell says for `err`, and the exit code: a SocirunError's own sentence and code (also when it
    comes wrapped in an ExceptionGroup from a task group); anything else is socirun's own failure, exit 125."""
    ours = _first_socirun_error(err)
    if ours is not None:
        return ours.message, ours.exit_code
    detail = str(err) or "no message"
    hint = "" if debug else "; rerun with --debug for the traceback"
    return f"unexpected error ({type(err).__name__}: {detail}){hint}", EXIT_DAEMON


def _first_socirun_error(err: BaseException) -> SocirunError | None:
    if isinstance(err, SocirunError):
        return err
    if isinstance(err, BaseExceptionGroup):
        for inner in err.exceptions:
            found = _first_socirun_error(inner)
            if found is not None:
                return found
    return None


def run() -> NoReturn:
    sys.exit(main())


if __name__ == "__main__":
    run()
