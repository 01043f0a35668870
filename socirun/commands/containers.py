"""docker's container and image commands for what socirun runs: ps, logs, stop, kill, rm, exec, wait, port, inspect,
images, rmi. Their names, flags, output formats and exit codes are docker's: data on stdout, messages on stderr,
1 for a failed request (`No such container`), 125 for bad flags (the argparse shell in socirun.commands.main).

Every container in the namespace is listed (as nerdctl does); what only socirun's state records (the command, the
chosen ports, the exit code, the log) comes from `<data-root>/containers/<ns>/<id>/`. The decisions and formats
are pure functions (unit-tested); the engines are socirun.runtime.lifecycle (stop, rm), socirun.runtime.exec and
socirun.runtime.logs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from socirun.commands.context import GlobalOptions
from socirun.config import SocirunConfig
from socirun.containerd import labels
from socirun.containerd.client import ContainerdClient, resolve_target
from socirun.containerd.runtime import ContainerRecord, Runtime, TaskInfo
from socirun.duration import parse_go_duration
from socirun.errors import SocirunError, UsageError
from socirun.runtime import lifecycle, logs
from socirun.runtime.options import lookup_signal
from socirun.text import terminal_safe

EXIT_GENERAL = 1  # docker's exit when a request failed (no such container, is running, …)
DEFAULT_STOP_TIMEOUT_S = 10
COMMANDS = ("ps", "logs", "start", "stop", "kill", "rm", "exec", "wait", "port", "inspect", "images", "rmi")


# ---------------------------------------------------------------------------------------------- pure: formats


def human_duration(seconds: float) -> str:
    """go-units' HumanDuration, which docker's CREATED and STATUS columns use."""
    if seconds < 1:
        return "Less than a second"
    if seconds < 2:
        return "1 second"
    if seconds < 60:
        return f"{int(seconds)} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = math.floor(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600 / 24 / 365)} years"


def ellipsis(text: str, width: int) -> str:
    """docker's formatter.Ellipsis: cut to `width` characters, the last one "…"."""
    return text if len(text) <= width else text[: width - 1] + "…"


def shown_command(args: Sequence[str], *, no_trunc: bool) -> str:
    command = " ".join(args)
    return f'"{command if no_trunc else ellipsis(command, 20)}"'


def shown_ports(ports: Sequence[dict[str, Any]]) -> str:
    """`0.0.0.0:8080->80/tcp, 127.0.0.1:9000->9000/udp`, as docker's PORTS column."""
    out = []
    for p in ports:
        ip = p.get("host_ip") or "0.0.0.0"
        host = f"[{ip}]" if ":" in ip else ip
        out.append(f"{host}:{p.get('host_port')}->{p.get('container_port')}/{p.get('protocol', 'tcp')}")
    return ", ".join(out)


def port_lines(ports: Sequence[dict[str, Any]], wanted: str = "") -> list[str]:
    """`docker port`: `80/tcp -> 0.0.0.0:32768` per mapping; with PRIVATE_PORT[/PROTO] only the host addresses."""
    port, _, proto = wanted.partition("/")
    out = []
    for p in ports:
        ip = p.get("host_ip") or "0.0.0.0"
        address = f"[{ip}]:{p.get('host_port')}" if ":" in ip else f"{ip}:{p.get('host_port')}"
        private = f"{p.get('container_port')}/{p.get('protocol', 'tcp')}"
        if not wanted:
            out.append(f"{private} -> {address}")
        elif str(p.get("container_port")) == port and (not proto or proto == p.get("protocol", "tcp")):
            out.append(address)
    return out


@dataclass
class ContainerView:
    """What docker's `ps` and `inspect` show of one container."""

    id: str
    name: str
    image: str
    command: list[str]
    created: float
    state: str  # docker's: created, running, paused, exited
    pid: int = 0
    exit_code: int | None = None
    finished_at: float = 0.0
    ports: list[dict[str, Any]] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    socirun: bool = False  # socirun keeps its state (logs, ports, exit code)

    def status(self, now: float) -> str:
        """docker's STATUS: `Up 5 seconds`, `Exited (0) 3 seconds ago`, `Created`."""
        if self.state in ("running", "paused"):
            up = f"Up {human_duration(now - self.created)}"
            return f"{up} (Paused)" if self.state == "paused" else up
        if self.state == "exited":
            code = "" if self.exit_code is None else f" ({self.exit_code})"
            ago = f" {human_duration(now - self.finished_at)} ago" if self.finished_at else ""
            return f"Exited{code}{ago}"
        return "Created"


def state_name(task: TaskInfo | None, exit_recorded: bool) -> str:
    """docker's state word from containerd's task status (no task: exited when it ever ran, else created)."""
    if task is None:
        return "exited" if exit_recorded else "created"
    return {"RUNNING": "running", "PAUSED": "paused", "PAUSING": "paused", "CREATED": "created"}.get(
        task.status, "exited")  # fmt: skip


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """docker's tabwriter layout: columns padded to their widest cell and three spaces apart."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for row in [headers, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(row, widths, strict=True)]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def ps_rows(views: Sequence[ContainerView], now: float, *, no_trunc: bool) -> list[list[str]]:
    return [[v.id if no_trunc else v.id[:12], v.image, shown_command(v.command, no_trunc=no_trunc),
             f"{human_duration(now - v.created)} ago", v.status(now), shown_ports(v.ports), v.name]
            for v in views]  # fmt: skip


PS_HEADERS = ("CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES")


def ps_json(v: ContainerView, now: float, *, no_trunc: bool) -> dict[str, Any]:
    """One line of `docker ps --format json` (the same keys, strings as docker prints them)."""
    created = dt.datetime.fromtimestamp(v.created).astimezone().strftime("%Y-%m-%d %H:%M:%S %z %Z")
    return {
        "Command": shown_command(v.command, no_trunc=no_trunc),
        "CreatedAt": created,
        "ID": v.id if no_trunc else v.id[:12],
        "Image": v.image,
        "Labels": ",".join(f"{k}={val}" for k, val in sorted(v.labels.items())),
        "LocalVolumes": "0",
        "Mounts": "",
        "Names": v.name,
        "Networks": "",
        "Ports": shown_ports(v.ports),
        "RunningFor": f"{human_duration(now - v.created)} ago",
        "Size": "",
        "State": v.state,
        "Status": v.status(now),
    }


def rfc3339(epoch: float) -> str:
    return logs.rfc3339nano(int(epoch * 1e9)) if epoch else "0001-01-01T00:00:00Z"


def inspect_json(v: ContainerView) -> dict[str, Any]:
    """A subset of `docker inspect`'s document, with its keys."""
    bindings: dict[str, list[dict[str, str]]] = {}
    for p in v.ports:
        bindings.setdefault(f"{p.get('container_port')}/{p.get('protocol', 'tcp')}", []).append(
            {"HostIp": p.get("host_ip") or "0.0.0.0", "HostPort": str(p.get("host_port"))})
    return {
        "Id": v.id,
        "Created": rfc3339(v.created),
        "Path": v.command[0] if v.command else "",
        "Args": v.command[1:],
        "State": {
            "Status": v.state,
            "Running": v.state == "running",
            "Paused": v.state == "paused",
            "Pid": v.pid,
            "ExitCode": v.exit_code or 0,
            "FinishedAt": rfc3339(v.finished_at),
        },
        "Image": v.image,
        "Name": f"/{v.name}",
        "Config": {"Image": v.image, "Cmd": v.command, "Labels": v.labels,
                   "StopSignal": v.labels.get(labels.STOP_SIGNAL, "SIGTERM")},
        "NetworkSettings": {"Ports": bindings},
        "HostConfig": {"PortBindings": bindings},
    }  # fmt: skip


def signal_number(text: str) -> int:
    """A signal by number or name (with or without SIG, any case), as docker's -s takes it."""
    found = lookup_signal(text)
    if found is None:
        raise UsageError(f"invalid signal: {text}")
    return found[1]


def parse_since(text: str, now: float) -> float:
    """docker logs --since: a Go duration (`10m`, `1h30m`: that long before now), a Unix timestamp, or an RFC 3339
    date or date-time."""
    # docker's GetTimestamp (api/types/time) reads "0" as the Unix epoch, not as a zero duration.
    duration = parse_go_duration(text) if text != "0" else None
    if duration is not None:
        return now - duration
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return logs.parse_rfc3339(text) if "T" in text else dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise UsageError(f'invalid value for "since": failed to parse value as time or duration: "{text}"') from None


def parse_tail(text: str) -> int | None:
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f'invalid value for "tail": "{text}" is not a number or "all"') from None
    return None if value < 0 else value


# ---------------------------------------------------------------------------------------------- parser


def add_parsers(sub: Any, parser_class: type[argparse.ArgumentParser],
                connection_flags: Callable[[argparse.ArgumentParser], None]) -> None:  # fmt: skip
    """Register the commands on socirun's subparsers (socirun.commands.main)."""

    def add(name: str, text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=text)
        connection_flags(p)
        return p

    ps = add("ps", "list containers")
    ps.add_argument("-a", "--all", action="store_true", help="show all containers (default shows just running)")
    ps.add_argument("-q", "--quiet", action="store_true", help="only display container IDs")
    ps.add_argument("--no-trunc", action="store_true", help="don't truncate output")
    ps.add_argument("--format", default="", help="'json' prints one JSON object per container")

    lg = add("logs", "fetch the logs of a container (docker's json-file log)")
    lg.add_argument("-f", "--follow", action="store_true", help="follow log output until the container ends")
    lg.add_argument("-n", "--tail", default="all", help='number of lines to show from the end (default "all")')
    lg.add_argument("-t", "--timestamps", action="store_true", help="show timestamps")
    lg.add_argument("--since", default="", help="show logs since a timestamp or a relative time (e.g. 42m)")
    lg.add_argument("--until", default="", help="show logs before a timestamp or a relative time")
    lg.add_argument("container")

    start = add("start", "start stopped containers again, detached (their log, network and ports as before)")
    start.add_argument("containers", nargs="+", metavar="CONTAINER")

    stop = add("stop", "stop running containers: the stop signal, then SIGKILL after the timeout")
    stop.add_argument("-t", "--timeout", "--time", type=int, default=None, dest="timeout",
                      help="seconds to wait before killing (default: the container's, else 10)")
    stop.add_argument("-s", "--signal", default="", help="signal to send (default: the container's stop signal)")
    stop.add_argument("containers", nargs="+", metavar="CONTAINER")

    kill = add("kill", "kill running containers")
    kill.add_argument("-s", "--signal", default="KILL", help="signal to send (default KILL)")
    kill.add_argument("containers", nargs="+", metavar="CONTAINER")

    rm = add("rm", "remove containers (their name, state, network; anonymous volumes with -v)")
    rm.add_argument("-f", "--force", action="store_true", help="force the removal of a running container")
    rm.add_argument("-v", "--volumes", action="store_true", help="remove anonymous volumes too")
    rm.add_argument("containers", nargs="+", metavar="CONTAINER")

    ex = add("exec", "run a command in a running container")
    ex.add_argument("-i", "--interactive", action="store_true", help="keep STDIN open")
    ex.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-TTY")
    ex.add_argument("-d", "--detach", action="store_true", help="run the command in the background")
    ex.add_argument("-e", "--env", action="append", default=[], help="set environment variables")
    ex.add_argument("-w", "--workdir", default="", help="working directory inside the container")
    ex.add_argument("-u", "--user", default="", help="username or UID (format: <name|uid>[:<group|gid>])")
    ex.add_argument("container")
    ex.add_argument("argv", nargs=argparse.REMAINDER, metavar="COMMAND")  # `command` is the subcommand's dest

    wait = add("wait", "block until containers stop, then print their exit codes")
    wait.add_argument("containers", nargs="+", metavar="CONTAINER")

    port = add("port", "list a container's port mappings")
    port.add_argument("container")
    port.add_argument("private_port", nargs="?", default="", metavar="PRIVATE_PORT[/PROTO]")

    ins = add("inspect", "low-level information on containers, as JSON")
    ins.add_argument("containers", nargs="+", metavar="CONTAINER")

    images = add("images", "list images")
    images.add_argument("-q", "--quiet", action="store_true", help="only show image IDs")
    images.add_argument("--no-trunc", action="store_true", help="don't truncate output")

    rmi = add("rmi", "remove images")
    rmi.add_argument("-f", "--force", action="store_true", help="remove even when a container uses it")
    rmi.add_argument("images", nargs="+", metavar="IMAGE")


# ---------------------------------------------------------------------------------------------- engine glue


@dataclass(frozen=True)
class Target:
    address: str
    namespace: str
    data_root: str


def _target(config: SocirunConfig, glob: GlobalOptions) -> Target:
    address, namespace = resolve_target(glob.address, glob.namespace, config)
    return Target(address, namespace, os.path.abspath(config.data_root))


def no_such_container(name: str) -> SocirunError:
    return SocirunError(f"Error response from daemon: No such container: {name}", exit_code=EXIT_GENERAL)


async def _view(rt: Runtime, t: Target, record: ContainerRecord) -> ContainerView:
    task = await rt.get_task(record.id)
    state = lifecycle.load_state(t.data_root, t.namespace, record.id)
    exit_code = state.exit_code if state else None
    return ContainerView(
        id=record.id,
        name=(state.name if state else "") or record.labels.get(labels.NAME, record.id[:12]),
        image=(state.image if state else "") or record.image,
        command=state.command if state else [],
        created=(state.created if state and state.created else record.created_at),
        state=state_name(task, exit_code is not None or (state is not None and state.finished_at > 0)),
        pid=task.pid if task else 0,
        exit_code=exit_code,
        finished_at=state.finished_at if state else 0.0,
        # Published while the network is up (docker's PORTS of a stopped container is empty).
        ports=list(state.ports) if state and task is not None else [],
        labels=dict(record.labels),
        socirun=state is not None,
    )


async def _find(rt: Runtime, name: str) -> ContainerRecord:
    found = await rt.find_container(name)
    if found is None:
        raise no_such_container(name)
    return found


def _print_error(err: SocirunError) -> None:
    print(f"socirun: {terminal_safe(err.message)}", file=sys.stderr)


async def _each(names: Sequence[str], act: Callable[[str], Any]) -> int:
    """docker's loop over several containers: each failure is printed, the others go on, and the exit is 1."""
    code = 0
    for name in names:
        try:
            await act(name)
        except SocirunError as err:
            _print_error(err)
            code = EXIT_GENERAL
    return code


def container_command(args: argparse.Namespace, config: SocirunConfig, glob: GlobalOptions) -> int:
    t = _target(config, glob)
    return asyncio.run(_dispatch(args, t))


async def _dispatch(args: argparse.Namespace, t: Target) -> int:
    async with await ContainerdClient.connect(t.address, t.namespace) as ctd:
        rt = Runtime(ctd)
        handler: Callable[[Runtime, Target, argparse.Namespace], Any] = {
            "ps": _ps, "logs": _logs, "start": _start, "stop": _stop, "kill": _kill, "rm": _rm, "exec": _exec,
            "wait": _wait, "port": _port, "inspect": _inspect, "images": _images, "rmi": _rmi,
        }[args.command]  # fmt: skip
        code: int = await handler(rt, t, args)
        return code


async def _ps(rt: Runtime, t: Target, args: argparse.Namespace) -> int:
    if args.format not in ("", "json", "table", "{{json .}}"):
        raise UsageError(f"--format {args.format!r} is not supported: use json or table")
    views = [await _view(rt, t, r) for r in await rt.list_containers()]
    views = [v for v in views if args.all or v.state in ("running", "paused")]
    views.sort(key=lambda v: v.created, reverse=True)
    now = time.time()
    if args.quiet:
        out = "".join(f"{v.id if args.no_trunc else v.id[:12]}\n" for v in views)
    elif args.format in ("json", "{{json .}}"):
        out = "".join(json.dumps(ps_json(v, now, no_trunc=args.no_trunc)) + "\n" for v in views)
    else:
        out = table(PS_HEADERS, ps_rows(views, now, no_trunc=args.no_trunc))
    sys.stdout.write(terminal_safe(out, multiline=True))
    return 0


LOG_POLL_S = 0.1


def _write_entries(entries: Sequence[logs.LogEntry], timestamps: bool) -> None:
    for e in entries:
        stream = sys.stderr if e.stream == "stderr" else sys.stdout
        stream.write(e.render(timestamps=timestamps))
        stream.flush()


async def _logs(rt: Runtime, t: Target, args: argparse.Namespace) -> int:
    record = await _find(rt, args.container)
    now = time.time()
    since = parse_since(args.since, now) if args.since else None
    until = parse_since(args.until, now) if args.until else None
    tail = parse_tail(args.tail)
    state = lifecycle.load_state(t.data_root, t.namespace, record.id)
    if state is None:
        return 0  # not socirun's, or removed: no log it knows of
    path = logs.log_path(state.state_dir, state.id)
    follower = logs.Follower(path)
    follower.start_at_end()  # before the history is read: nothing written meanwhile is missed or doubled
    history = logs.select(logs.read_entries(path, state.log_max_file), tail=tail, since=since, until=until)
    _write_entries(history, args.timestamps)
    if not args.follow or until is not None:
        follower.close()
        return 0
    try:
        owners = lifecycle.owner_pids(state)
        while True:
            _write_entries(follower.read(), args.timestamps)
            task = await rt.get_task(record.id)
            running = task is not None and task.status in lifecycle.RUNNING_STATUSES
            writing = any(_alive(p) for p in owners)
            if not running and not writing:
                _write_entries(follower.read(), args.timestamps)  # what the writer flushed last
                return 0
            await asyncio.sleep(LOG_POLL_S)
    finally:
        follower.close()


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _restore_network(state: lifecycle.ContainerState) -> None:
    """The network a stopped container had (its teardown removed it), again: the netns under the same name (the
    container's spec names its path), for a bridge the CNI ADD with the same published ports (claimed again: a
    port another container took meanwhile is refused with docker's sentence), and /etc/hosts with the IP IPAM
    hands out now. On failure what was set up is torn down again."""
    from socirun.runtime import cni
    from socirun.runtime.options import PortMapping
    from socirun.runtime.spec import hosts_file

    if not state.netns or state.network not in ("bridge", "none"):
        return  # host network, or another container's: nothing of its own to restore
    net = cni.BridgeNetwork(**state.bridge) if state.bridge else None
    netns_path = cni.create_netns(state.netns)
    try:
        if state.network == "none" or net is None:
            cni.Cni(cni.find_plugin_dir(), cni.BridgeNetwork(), lifecycle.cni_ipam_dir(state.data_root)).loopback(
                state.id, netns_path)
            return
        ports = lifecycle.claim_ports(state, [PortMapping(**p) for p in state.ports])
        ip = cni.Cni(cni.find_plugin_dir(), net, lifecycle.cni_ipam_dir(state.data_root)).add(
            state.id, netns_path, ports)
        hosts = os.path.join(state.state_dir, "hosts")
        with contextlib.suppress(OSError):
            with open(hosts, encoding="utf-8") as f:
                lines = f.read().splitlines()
            hostname = lines[2].split("\t", 1)[1] if len(lines) > 2 and "\t" in lines[2] else state.id[:12]
            extra = [(ln.split("\t", 1)[1], ln.split("\t", 1)[0]) for ln in lines[3:] if "\t" in ln]
            with open(hosts, "w", encoding="utf-8") as f:  # the same inode: the container's bind mount sees it
                f.write(hosts_file(hostname, ip or None, extra))
    except BaseException:
        lifecycle.teardown_network(state)
        raise


async def _start(rt: Runtime, t: Target, args: argparse.Namespace) -> int:
    """docker start (detached): a stopped container socirun created runs again, its output appended to its
    json-file log by a new reaper, as `run -d` does. A running one is left alone (docker prints its name too)."""
    from socirun.runtime import reaper

    async def start(name: str) -> None:
        record = await _find(rt, name)
        task = await rt.get_task(record.id)
        if task is not None and task.status in lifecycle.RUNNING_STATUSES:
            print(name, flush=True)
            return
        state = lifecycle.load_state(t.data_root, t.namespace, record.id)
        if state is None:
            raise SocirunError(f"Error response from daemon: cannot start container {name}: socirun did not "
                               "create it (no state under its data root); start it with the tool that did",
                               exit_code=EXIT_GENERAL)  # fmt: skip
        pids = lifecycle.owner_pids(state)
        if pids:  # the last run's owner is still tearing it down: let it finish first
            await lifecycle.wait_pids_gone(pids, lifecycle.OWNER_WAIT_S)
        errors = await lifecycle.teardown(rt, state, remove=False)  # a STOPPED task nobody deleted, its network
        if await rt.get_task(record.id) is not None:
            raise SocirunError(f"Error response from daemon: cannot start container {name}: "
                               f"{'; '.join(errors)}", exit_code=EXIT_GENERAL)  # fmt: skip
        rootfs = await rt.ctd.snapshot_mounts(state.snapshotter, state.id)
        _restore_network(state)
        log_path = logs.log_path(state.state_dir, state.id)
        fifos = [os.path.join(state.state_dir, n) for n in (("out.fifo",) if state.tty else ("out.fifo", "err.fifo"))]
        try:
            for fifo in fifos:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(fifo)  # left by a reaper that was killed
                os.mkfifo(fifo, 0o600)
            reaper.start(state.state_dir, log_path, fifos)
            await rt.create_task(state.id, rootfs, ("", fifos[0], "" if state.tty else fifos[1]), state.tty)
            await rt.start_task(state.id)
        except BaseException:
            for fifo in fifos:
                with contextlib.suppress(OSError):  # lets the reaper's readers see EOF; it finds no task and leaves
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            await lifecycle.teardown(rt, state, remove=False)
            raise
        fresh = lifecycle.load_state(t.data_root, t.namespace, record.id) or state
        fresh.exit_code, fresh.finished_at = None, 0.0  # `ps` says Up again; the reaper records the next exit
        fresh.save()
        print(name, flush=True)

    return await _each(args.containers, start)


async def _stop(rt: Runtime, t: Target, args: argparse.Namespace) -> int:
    override = signal_number(args.signal) if args.signal else None

    async def stop(name: str) -> None:
        record = await _find(rt, name)
        sig = override or signal_number(record.labels.get(labels.STOP_SIGNAL) or "SIGTERM")
        timeout = args.timeout
        if timeout is None:
            label = record.labels.get(labels.STOP_TIMEOUT, "")
            timeout = int(label) if label.lstrip("-").isdigit() else DEFAULT_STOP_TIMEOUT_S
        await lifecycle.stop_task(rt, record.id, sig, float(timeout))
        state = lifecycle.load_state(t.data_root, t.namespace, record.id)
        if state is not None:
            await lifecycle.settle(rt, state)
        print(name, flush=True)

    return await _each(args.containers, stop)


async def _kill(rt: Runtime, t: Target, args: argparse.Namespace) -> int:
    sig = signal_number(args.signal)

    async def kill(name: str) -> None:
        record = await _find(rt, name)
        task = await rt.get_task(record.id)
        if task is None or task.status not in lifecycle.RUNNING_STATUSES:
            raise SocirunError(f"Error response from daemon: cannot kill container: {name}: container "
                               f"{record.id} is not running", exit_code=EXIT_GENERAL)  # fmt: skip
        await rt.kill_task(record.id, sig)
        print(name, flush=True)

    return await _each(args.containers, kill)


async def _rm(rt: Runtime, t: Target, args: argparse.Namespace) -> int:
    async def rm(name: str) -> None:
        record = await _find(rt, name)
        state = lifecycle.load_state(t.data_root, t.namespace, record.id)
        shown = (state.name if state else "") or record.labels.get(labels.NAME, record.id)
        errors = await lifecycle.remove_container(rt, record.id, state, force=args.force, volumes=args.volumes,
                                                  name=shown)  # fmt: skip
        if await rt.get_container(record.id) is not None:
            raise SocirunError(f"Error response from daemon: could not remove container {name}: "
                               f"{'; '.join(errors) or 'it is still there'}", exit_code=EXIT_GENERAL)  # fmt: skip
        for err in errors:
            print(f"socirun: cleanup: {terminal_safe(err)}", file=sys.stderr)
        print(name, flush=True)

    return await _each(args.containers, rm)


async def _exec(rt: Runtime, t: Target, args: argparse.Namespace) -> int:
    from socirun.runtime.exec import ExecRequest, run_exec

    command = list(args.argv)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise UsageError("\"socirun exec\" requires at least 2 arguments. See 'socirun exec --help'.")
    if args.workdir and not args.workdir.startswith("/"):
        raise UsageError("the working directory must be an absolute path")
    for item in args.env:
        if not item or item.startswith("="):
            raise UsageError(f"invalid environment variable: {item}")
    env = [e if "=" in e else f"{e}={os.environ.get(e, '')}" for e in args.env if "=" in e or e in os.environ]
    record = await _find(rt, args.container)
    req = ExecRequest(args=command, env=env, workdir=args.workdir, user=args.user, tty=args.tty,
                      interactive=args.interactive, detach=args.detach)  # fmt: skip
    return await run_exec(rt, record.id, req)


async def _wait(rt: Runtime, t: Target, args: argparse.Namespace) -> int:
    async def wait(name: str) -> None:
        record = await _find(rt, name)
        while True:
            task = await rt.get_task(record.id)
            if task is None or task.status == "STOPPED":
                break
            await asyncio.sleep(LOG_POLL_S)
        state = lifecycle.load_state(t.data_root, t.namespace, record.id)
        if state is not None:
            pids = lifecycle.owner_pids(state)
            if pids:  # the owner records the exit code once it has the task's exit
                await lifecycle.wait_pids_gone(pids, lifecycle.OWNER_WAIT_S)
            state = lifecycle.load_state(t.data_root, t.namespace, record.id) or state
        code = state.exit_code if state is not None and state.exit_code is not None else 0
        print(code, flush=True)

    return await _each(args.containers, wait)


async def _port(rt: Runtime, t: Target, args: argparse.Namespace) -> int:
    view = await _view(rt, t, await _find(rt, args.container))
    lines = port_lines(view.ports, args.private_port)
    if args.private_port and not lines:
        raise SocirunError(f"Error: No public port '{args.private_port}' published for {args.container}",
                           exit_code=EXIT_GENERAL)  # fmt: skip
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    return 0


async def _inspect(rt: Runtime, t: Target, args: argparse.Namespace) -> int:
    found: list[dict[str, Any]] = []

    async def inspect(name: str) -> None:
        found.append(inspect_json(await _view(rt, t, await _find(rt, name))))

    code = await _each(args.containers, inspect)
    sys.stdout.write(json.dumps(found, indent=4) + "\n")
    return code


# ---------------------------------------------------------------------------------------------- images


def split_image_name(name: str) -> tuple[str, str]:
    """(REPOSITORY, TAG) as docker shows them: docker.io/library/ and docker.io/ dropped; a digest is <none>."""
    repo, at, _digest = name.partition("@")
    slash = repo.rfind("/")
    colon = repo.rfind(":")
    tag = "<none>" if at and colon <= slash else ""
    if colon > slash:
        repo, tag = repo[:colon], repo[colon + 1:]
    for prefix in ("docker.io/library/", "docker.io/"):
        if repo.startswith(prefix):
            repo = repo[len(prefix):]
            break
    return repo, tag or "latest"


def human_size(size: int) -> str:
    """go-units' HumanSize (decimal units, 3 significant digits), docker images' SIZE."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if value < 1000 or unit == "PB":
            return f"{value:.4g}{unit}"
        value /= 1000
    return f"{value:.4g}PB"


async def _image_facts(rt: Runtime, target_digest: str) -> tuple[str, float, int]:
    """(config digest, created epoch, size: config + compressed layers) of an image, the host's platform first."""
    from socirun.oci import host_platform

    ctd = rt.ctd
    try:
        doc = json.loads(await ctd.read_content(target_digest))
        if "manifests" in doc:
            here = host_platform()
            entries = doc.get("manifests") or []
            chosen = next((m for m in entries if (m.get("platform") or {}).get("architecture") == here.architecture
                           and (m.get("platform") or {}).get("os") == here.os), entries[0] if entries else None)
            if chosen is None:
                return target_digest, 0.0, 0
            doc = json.loads(await ctd.read_content(str(chosen["digest"])))
        config = doc["config"]
        size = int(config.get("size", 0)) + sum(int(layer.get("size", 0)) for layer in doc.get("layers") or [])
        created = 0.0
        try:
            blob = json.loads(await ctd.read_content(str(config["digest"])))
            created = logs.parse_rfc3339(str(blob.get("created", ""))) if blob.get("created") else 0.0
        except (SocirunError, ValueError):
            pass
        return str(config["digest"]), created, size
    except (SocirunError, ValueError, KeyError, TypeError, IndexError):
        return target_digest, 0.0, 0


async def _images(rt: Runtime, t: Target, args: argparse.Namespace) -> int:
    rows: list[list[str]] = []
    ids: list[str] = []
    now = time.time()
    for image in await rt.ctd.image_list():
        config_digest, created, size = await _image_facts(rt, image.target.digest)
        image_id = config_digest if args.no_trunc else config_digest.removeprefix("sha256:")[:12]
        repo, tag = split_image_name(image.name)
        ids.append(image_id)
        rows.append([repo, tag, image_id, f"{human_duration(now - created)} ago" if created else "N/A",
                     human_size(size)])  # fmt: skip
    if args.quiet:
        out = "".join(f"{i}\n" for i in dict.fromkeys(ids))
    else:
        out = table(("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"), rows)
    sys.stdout.write(terminal_safe(out, multiline=True))
    return 0


async def _rmi(rt: Runtime, t: Target, args: argparse.Namespace) -> int:
    from socirun.reference import parse_reference

    async def rmi(name: str) -> None:
        try:
            full = str(parse_reference(name))
        except (SocirunError, ValueError):
            full = name
        record = next((i for i in await rt.ctd.image_list() if i.name in (name, full)), None)
        if record is None:
            raise SocirunError(f"Error response from daemon: No such image: {name}", exit_code=EXIT_GENERAL)
        users = [c for c in await rt.list_containers() if c.image in (record.name, name)]
        if users and not args.force:
            raise SocirunError(f'Error response from daemon: conflict: unable to remove repository reference "{name}" '
                               f"(must force) - container {users[0].id[:12]} is using its referenced image",
                               exit_code=EXIT_GENERAL)  # fmt: skip
        await rt.ctd.image_delete(record.name)
        print(f"Untagged: {name}", flush=True)

    return await _each(args.images, rmi)
