"""The pure parts of socirun's container commands (issue 14): ps/port/inspect formats, durations, the json-file log
(format, line splitting, rotation, tail/since), host port choice and conflicts, and the routing of command words."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from socirun.commands.containers import (
    ContainerView,
    human_duration,
    human_size,
    parse_since,
    port_lines,
    ps_json,
    ps_rows,
    shown_command,
    shown_ports,
    signal_number,
    split_image_name,
    table,
)
from socirun.commands.main import _run_argv, build_parser
from socirun.commands.run_flags import parse_signal
from socirun.errors import SocirunError, UsageError
from socirun.runtime import logs
from socirun.runtime.cni import NetworkError, ports_clash, resolve_host_ports
from socirun.runtime.exec import ExecRequest, exec_process_spec, merged_env
from socirun.runtime.lifecycle import ContainerState
from socirun.runtime.options import SIGNALS, PortMapping

# ---------------------------------------------------------------------------------------------- routing


@pytest.mark.parametrize("word", ["ps", "logs", "start", "stop", "kill", "rm", "exec", "images", "rmi", "inspect",
                                  "port", "wait"])  # fmt: skip
def test_command_words_are_commands_never_images(word: str) -> None:
    assert _run_argv(build_parser(), [word, "x"]) is None
    assert _run_argv(build_parser(), ["busybox", word]) == ["busybox", word]


def test_help_lists_the_commands() -> None:
    text = build_parser().format_help()
    for word in ("ps", "logs", "stop", "kill", "rm", "exec", "images", "rmi", "inspect", "port"):
        assert f"    {word} " in text


# ---------------------------------------------------------------------------------------------- formats


@pytest.mark.parametrize(("seconds", "text"), [
    (0.2, "Less than a second"), (1, "1 second"), (45, "45 seconds"), (61, "About a minute"),
    (150, "2 minutes"), (3600, "About an hour"), (5 * 3600, "5 hours"), (3 * 86400, "3 days"),
    (20 * 86400, "2 weeks"), (90 * 86400, "3 months"), (800 * 86400, "2 years"),
])  # fmt: skip
def test_human_duration_is_go_units(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_command_column_is_quoted_and_cut_at_20() -> None:
    cut = shown_command(["sh", "-c", "echo hello world; sleep 100"], no_trunc=False)
    assert cut == '"sh -c echo hello wo…"' and len(cut) == 22  # 20 characters, quoted
    assert shown_command(["sleep", "5"], no_trunc=False) == '"sleep 5"'
    assert shown_command(["sh", "-c", "echo hello world; sleep 100"], no_trunc=True) == \
        '"sh -c echo hello world; sleep 100"'  # fmt: skip


def _view(**kw: object) -> ContainerView:
    base: dict[str, object] = dict(id="a" * 64, name="web", image="busybox", command=["httpd", "-f"],
                                   created=1000.0, state="running",
                                   ports=[{"host_ip": "", "host_port": 8080, "container_port": 80,
                                           "protocol": "tcp"}])  # fmt: skip
    base.update(kw)
    return ContainerView(**base)  # type: ignore[arg-type]


def test_ps_table_has_dockers_columns_and_values() -> None:
    out = table(("CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"),
                ps_rows([_view()], 1005.0, no_trunc=False))  # fmt: skip
    header, row = out.splitlines()
    assert header.split("   ")[0] == "CONTAINER ID"
    assert row.startswith("a" * 12 + "   ")
    assert "Up 5 seconds" in row and "0.0.0.0:8080->80/tcp" in row and row.endswith("web")
    assert header.index("IMAGE") == row.index("busybox")  # aligned columns


def test_status_words() -> None:
    assert _view(state="exited", exit_code=3, finished_at=1000.0).status(1120.0) == "Exited (3) 2 minutes ago"
    assert _view(state="created").status(1.0) == "Created"
    assert _view(state="paused").status(1002.0) == "Up 2 seconds (Paused)"


def test_ps_json_has_dockers_keys() -> None:
    row = ps_json(_view(), 1005.0, no_trunc=False)
    assert {"Command", "CreatedAt", "ID", "Image", "Labels", "Names", "Ports", "RunningFor", "State",
            "Status"} <= set(row)  # fmt: skip
    assert row["ID"] == "a" * 12 and row["State"] == "running" and row["Ports"] == "0.0.0.0:8080->80/tcp"


def test_port_lines() -> None:
    ports = [{"host_ip": "127.0.0.1", "host_port": 32768, "container_port": 80, "protocol": "tcp"},
             {"host_ip": "::1", "host_port": 9000, "container_port": 53, "protocol": "udp"}]  # fmt: skip
    assert port_lines(ports) == ["80/tcp -> 127.0.0.1:32768", "53/udp -> [::1]:9000"]
    assert port_lines(ports, "80") == ["127.0.0.1:32768"]
    assert port_lines(ports, "53/tcp") == []
    assert shown_ports(ports) == "127.0.0.1:32768->80/tcp, [::1]:9000->53/udp"


@pytest.mark.parametrize("text", ["TERM", "sigkill", "2", "+9", "007", "RTMIN+3", "sigrtmax-1", "-9", "0", "65", "²",
                                  "-", "+", "", "SIGNOPE", "99999999999999999999999"])  # fmt: skip
def test_kill_and_stop_signal_read_signals_alike(text: str) -> None:
    """`kill -s` and `--stop-signal` are one reading of moby's ParseSignal (Atoi: "+9" is 9), not two."""
    try:
        stop = parse_signal(text)
    except Exception:  # run_flags' own value error: the parser turns it into docker's sentence
        stop = None
    try:
        kill = signal_number(text)
    except UsageError:
        kill = None
    assert (stop is None) == (kill is None)
    if stop is not None:
        assert SIGNALS[stop.removeprefix("SIG")] == kill


def test_signals_and_since() -> None:
    assert signal_number("TERM") == 15 and signal_number("sigkill") == 9 and signal_number("2") == 2
    with pytest.raises(UsageError):
        signal_number("NOPE")
    with pytest.raises(UsageError):  # a digit to str.isdigit(), not to int(): a sentence, not a traceback
        signal_number("²")
    assert parse_since("1h30m", 10_000.0) == 10_000.0 - 5400
    assert parse_since("1700000000", 0) == 1_700_000_000
    assert parse_since("2024-01-01T00:00:00Z", 0) == 1704067200
    with pytest.raises(UsageError):
        parse_since("yesterday", 0)


def test_image_names_and_sizes() -> None:
    assert split_image_name("docker.io/library/busybox:latest") == ("busybox", "latest")
    assert split_image_name("127.0.0.1:5000/socirun/sample5:v1") == ("127.0.0.1:5000/socirun/sample5", "v1")
    assert human_size(1_234_567) == "1.235MB" and human_size(999) == "999B"


# ---------------------------------------------------------------------------------------------- json-file log


def test_entry_is_dockers_json_file_line() -> None:
    line = logs.entry(b"hello\n", "stdout", 1_700_000_000_123_400_000)
    assert json.loads(line) == {"log": "hello\n", "stream": "stdout", "time": "2023-11-14T22:13:20.1234Z"}
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert logs.rfc3339nano(1_700_000_000_000_000_000) == "2023-11-14T22:13:20Z"


def test_split_lines_keeps_partial_and_cuts_long_lines() -> None:
    lines, rest = logs.split_lines(b"", b"one\ntw")
    assert lines == [b"one\n"] and rest == b"tw"
    lines, rest = logs.split_lines(rest, b"o\n")
    assert lines == [b"two\n"] and rest == b""
    lines, rest = logs.split_lines(b"", b"x" * (logs.PARTIAL_LINE_BYTES + 10))
    assert lines == [b"x" * logs.PARTIAL_LINE_BYTES] and rest == b"x" * 10


def test_writer_rotates_and_keeps_max_file(tmp_path: Path) -> None:
    path = str(tmp_path / "c-json.log")
    writer = logs.JsonFileWriter(path, max_size=300, max_file=3)
    for i in range(40):
        writer.write(f"line {i}\n".encode(), "stdout", ns=i)
    writer.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["c-json.log", "c-json.log.1", "c-json.log.2"]
    assert all(p.stat().st_size <= 300 for p in tmp_path.iterdir())
    entries = list(logs.read_entries(path, 3))
    numbers = [int(e.log.split()[1]) for e in entries]
    assert numbers == list(range(numbers[0], 40)) and numbers[0] > 0  # oldest dropped, order kept


def test_select_tail_and_since() -> None:
    entries = [logs.LogEntry(f"{i}\n", "stdout", logs.rfc3339nano(i * 1_000_000_000)) for i in range(10)]
    assert [e.log for e in logs.select(entries, tail=2, since=None)] == ["8\n", "9\n"]
    assert logs.select(entries, tail=0, since=None) == []
    assert len(logs.select(entries, tail=50, since=None)) == 10
    assert [e.log for e in logs.select(entries, tail=None, since=7.0)] == ["7\n", "8\n", "9\n"]


def test_follower_reads_across_a_rotation(tmp_path: Path) -> None:
    path = str(tmp_path / "c-json.log")
    writer = logs.JsonFileWriter(path, max_size=200, max_file=2)
    follower = logs.Follower(path)
    follower.start_at_end()
    seen: list[str] = []
    for i in range(12):
        writer.write(f"n{i}\n".encode(), "stderr", ns=i)
        seen += [e.log for e in follower.read()]
    writer.close()
    assert seen == [f"n{i}\n" for i in range(12)]


def test_state_load_ignores_unknown_fields(tmp_path: Path) -> None:
    state = ContainerState(id="x", name="n", namespace="default", address="a", snapshotter="overlayfs",
                           data_root=str(tmp_path), state_dir=str(tmp_path))  # fmt: skip
    state.save()
    raw = json.loads((tmp_path / "socirun-state.json").read_text())
    raw["from_the_future"] = 1
    (tmp_path / "socirun-state.json").write_text(json.dumps(raw))
    loaded = ContainerState.load(str(tmp_path))
    loaded.record_exit(7, 123.0)
    assert ContainerState.load(str(tmp_path)).exit_code == 7


# ---------------------------------------------------------------------------------------------- ports


def test_clash_rules() -> None:
    a = PortMapping("", 8080, 80)
    assert ports_clash(a, PortMapping("127.0.0.1", 8080, 81))
    assert not ports_clash(a, PortMapping("", 8080, 80, "udp"))
    assert not ports_clash(PortMapping("127.0.0.1", 8080, 80), PortMapping("127.0.0.2", 8080, 80))


def test_zero_host_port_gets_a_free_one_not_held_by_another_container() -> None:
    picks = iter([9000, 9001])
    out = resolve_host_ports([PortMapping("", 0, 80)], [PortMapping("", 9000, 1)], endpoint="c",
                             probe=lambda p: None, pick=lambda ip, proto: next(picks))  # fmt: skip
    assert out == [PortMapping("", 9001, 80)]


def test_allocated_and_bound_ports_are_refused_with_dockers_sentences() -> None:
    with pytest.raises(NetworkError, match=r"^Bind for 0.0.0.0:8080 failed: port is already allocated$"):
        resolve_host_ports([PortMapping("", 8080, 80)], [PortMapping("127.0.0.1", 8080, 80)], endpoint="c",
                           probe=lambda p: None)  # fmt: skip
    with pytest.raises(NetworkError, match=r"listen tcp4 0.0.0.0:8099: bind: address already in use$"):
        resolve_host_ports([PortMapping("", 8099, 80)], [], endpoint="c",
                           probe=lambda p: "address already in use")  # fmt: skip
    with pytest.raises(NetworkError, match="already allocated"):  # twice in one run
        resolve_host_ports([PortMapping("", 8080, 80), PortMapping("", 8080, 81)], [], endpoint="c",
                           probe=lambda p: None)  # fmt: skip


def test_real_bind_probe_sees_a_listening_socket() -> None:
    import socket

    from socirun.runtime.cni import bind_problem, free_port

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        taken = s.getsockname()[1]
        assert bind_problem(PortMapping("127.0.0.1", taken, 80)) == "address already in use"
    assert bind_problem(PortMapping("127.0.0.1", free_port("127.0.0.1", "tcp"), 80)) is None


# ---------------------------------------------------------------------------------------------- exec


def test_exec_process_overrides_args_env_cwd_user_terminal() -> None:
    base = {"args": ["httpd"], "env": ["PATH=/bin", "A=1"], "cwd": "/", "terminal": False,
            "capabilities": {"bounding": ["CAP_KILL"]}, "consoleSize": {"height": 1, "width": 1}}  # fmt: skip
    from socirun.runtime.image_users import ResolvedUser

    spec = exec_process_spec(base, ExecRequest(args=["sh"], env=["A=2", "B=3"], workdir="/tmp", tty=True),
                             ResolvedUser(1000, 1000, (1000,)))  # fmt: skip
    assert spec["args"] == ["sh"] and spec["env"] == ["PATH=/bin", "A=2", "B=3"] and spec["cwd"] == "/tmp"
    assert spec["terminal"] is True and "consoleSize" not in spec
    assert spec["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [1000]}
    assert spec["capabilities"] == base["capabilities"] and base["args"] == ["httpd"]  # the base is not changed
    assert merged_env(["A=1"], ["A=2"]) == ["A=2"]


def test_log_opts_parse() -> None:
    from socirun.commands.run_flags import parse_run_args

    opts = parse_run_args(["--log-opt", "max-size=1m", "--log-opt", "max-file=3", "img"], read_file=None)
    assert (opts.log_max_size, opts.log_max_file) == (1 << 20, 3)
    with pytest.raises(SocirunError, match="unknown log opt 'foo' for json-file log driver"):
        parse_run_args(["--log-opt", "foo=bar", "img"], read_file=None)
