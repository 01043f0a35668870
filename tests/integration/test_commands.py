"""socirun's container commands (issue 14) against the sandbox's real containerd, runc and CNI: ps, logs, stop,
kill, rm, exec, port, inspect, wait, and the host ports -p chooses or refuses.

A private data root, bridge and subnet per test session (from the PID, as tests/integration/test_run.py does, on
another /16), so these tests never share a bridge with test_run's.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from socirun.sandbox.components import ctr_beside
from socirun.sandbox.sandbox import SandboxInfo
from tests.support.leaks import count_leaks
from tests.support.socirun_env import socirun_vars, write_bridge_config
from tests.support.waiting import get_index, wait_until

_SLOT = os.getpid() % 200
BRIDGE = f"srcmd{_SLOT}"
SUBNET = f"10.215.{_SLOT + 20}.0/24"
NETWORK = "socirun-cmdtest"


class Env:
    def __init__(self, vars: dict[str, str], data_root: Path, address: str, ctr: str) -> None:
        self.vars, self.data_root, self.address, self.ctr = vars, data_root, address, ctr

    def run(self, *args: str, input: str | None = None, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "socirun", *args], input=input, capture_output=True, text=True,
                              env=self.vars, timeout=timeout, check=False)  # fmt: skip

    def detached(self, *args: str) -> str:
        done = self.run("-d", *args)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def leaks(self, baseline: object = None) -> object:
        return count_leaks(ctr=self.ctr, address=self.address, namespace="default",
                           data_root=self.data_root, bridge=BRIDGE, baseline=baseline)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def env(sandbox: SandboxInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    home = tmp_path_factory.mktemp("cmdcfg")
    write_bridge_config(home, network=NETWORK, bridge=BRIDGE, subnet=SUBNET)
    data_root = tmp_path_factory.mktemp("cmddata")
    vars = socirun_vars(sandbox.containerd_address, data_root, home)
    # The ctr of the sandbox's own containerd (2.x's for the built one).
    yield Env(vars, data_root, sandbox.containerd_address, ctr_beside(sandbox.containerd_binary))
    subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True, check=False)


@pytest.fixture(scope="module")
def image(env: Env, sample_5: str) -> str:
    first = env.run("--rm", "--network", "none", sample_5, "true")
    assert first.returncode == 0, first.stderr
    return sample_5


HTTPD = "echo served-by-socirun > /tmp/index.html; exec httpd -f -p 80 -h /tmp"


def test_command_words_are_not_pulled(env: Env) -> None:
    started = time.monotonic()
    done = env.run("ps")
    assert done.returncode == 0, done.stderr
    assert "resolving" not in done.stderr and time.monotonic() - started < 10
    assert done.stdout.splitlines()[0].split() == ["CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS",
                                                   "PORTS", "NAMES"]  # fmt: skip


def test_random_port_ps_port_and_conflicts(env: Env, image: str) -> None:
    cid = env.detached("--name", "cmdweb", "-p", "127.0.0.1::80", image, "sh", "-c", HTTPD)
    try:
        port_out = env.run("port", "cmdweb")
        assert port_out.returncode == 0, port_out.stderr
        line = port_out.stdout.strip()
        assert line.startswith("80/tcp -> 127.0.0.1:"), line
        host_port = int(line.rsplit(":", 1)[1])
        assert host_port > 0
        assert wait_until(lambda: b"served-by-socirun" in get_index(host_port), 15)
        assert env.run("port", "cmdweb", "80/tcp").stdout == f"127.0.0.1:{host_port}\n"

        ps = env.run("ps")
        row = next(r for r in ps.stdout.splitlines() if r.startswith(cid[:12]))
        assert "Up " in row and f"127.0.0.1:{host_port}->80/tcp" in row and row.endswith("cmdweb")
        assert '"sh -c echo served-b…"' in row
        assert env.run("ps", "-q").stdout.split().count(cid[:12]) == 1
        assert cid in env.run("ps", "-q", "--no-trunc").stdout.split()
        rows = [json.loads(r) for r in env.run("ps", "--format", "json").stdout.splitlines()]
        mine = next(r for r in rows if r["Names"] == "cmdweb")
        assert mine["State"] == "running" and mine["ID"] == cid[:12] and mine["Image"] == image
        inspected = json.loads(env.run("inspect", "cmdweb").stdout)
        assert inspected[0]["Id"] == cid and inspected[0]["State"]["Running"] is True
        assert inspected[0]["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"] == str(host_port)

        # The same host port again: docker's "already allocated", and nothing of the refused run is left.
        again = env.run("--rm", "-p", f"127.0.0.1:{host_port}:80", image, "true")
        assert again.returncode == 125
        assert f"Bind for 127.0.0.1:{host_port} failed: port is already allocated" in again.stderr
        wildcard = env.run("--rm", "-p", f"{host_port}:80", image, "true")
        assert wildcard.returncode == 125 and "port is already allocated" in wildcard.stderr
    finally:
        assert env.run("rm", "-f", "cmdweb").returncode == 0
    # A host process on the port: docker's "address already in use" (portmap alone would silently take it over).
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        busy = server.getsockname()[1]
        taken = env.run("--rm", "-p", f"127.0.0.1:{busy}:80", image, "true")
        assert taken.returncode == 125
        assert f"listen tcp4 127.0.0.1:{busy}: bind: address already in use" in taken.stderr


def test_bare_container_port_is_published_on_a_free_port(env: Env, image: str) -> None:
    env.detached("--name", "cmdany", "-p", "80", image, "sh", "-c", HTTPD)
    try:
        line = env.run("port", "cmdany").stdout.strip()
        assert line.startswith("80/tcp -> 0.0.0.0:"), line
        host_port = int(line.rsplit(":", 1)[1])
        assert wait_until(lambda: b"served-by-socirun" in get_index(host_port), 15)
    finally:
        env.run("rm", "-f", "cmdany")


def test_logs_json_file_follow_tail_timestamps(env: Env, image: str) -> None:
    script = "for i in 1 2 3; do echo line$i; echo err$i >&2; sleep 1; done"
    cid = env.detached("--name", "cmdlogs", "--network", "none", image, "sh", "-c", script)
    try:
        started = time.monotonic()
        follow = env.run("logs", "-f", "cmdlogs", timeout=60)
        assert follow.returncode == 0, follow.stderr
        assert follow.stdout == "line1\nline2\nline3\n" and follow.stderr == "err1\nerr2\nerr3\n"
        assert time.monotonic() - started < 20  # it ended with the container
        log = env.data_root / "containers" / "default" / cid / f"{cid}-json.log"
        first = json.loads(log.read_text().splitlines()[0])
        assert set(first) == {"log", "stream", "time"} and first["time"].endswith("Z")
        tail = env.run("logs", "--tail", "1", "cmdlogs")
        assert tail.stdout + tail.stderr in ("line3\n", "err3\n")
        stamped = env.run("logs", "-t", "cmdlogs").stdout.splitlines()
        assert stamped[0].endswith(" line1") and stamped[0][:4].isdigit() and "T" in stamped[0]
        assert env.run("wait", "cmdlogs").stdout == "0\n"
        ps = env.run("ps", "-a").stdout
        assert any(r.startswith(cid[:12]) and "Exited (0)" in r for r in ps.splitlines())
        assert not any(r.startswith(cid[:12]) for r in env.run("ps").stdout.splitlines())
    finally:
        env.run("rm", "-f", "cmdlogs")


def test_log_opt_rotates(env: Env, image: str) -> None:
    cid = env.detached("--network", "none", "--log-opt", "max-size=2k", "--log-opt", "max-file=2", image, "sh",
                       "-c", "i=0; while [ $i -lt 300 ]; do echo line-$i; i=$((i+1)); done")  # fmt: skip
    try:
        assert env.run("wait", cid).stdout == "0\n"
        state_dir = env.data_root / "containers" / "default" / cid
        files = sorted(p.name for p in state_dir.iterdir() if "-json.log" in p.name)
        assert files == [f"{cid}-json.log", f"{cid}-json.log.1"]
        assert all((state_dir / f).stat().st_size <= 2048 for f in files)
        out = env.run("logs", cid).stdout.splitlines()
        assert out[-1] == "line-299" and len(out) < 300
    finally:
        env.run("rm", "-f", cid)


def test_stop_waits_the_timeout_then_kills(env: Env, image: str) -> None:
    env.detached("--name", "cmdstop", "--network", "none", image, "sh", "-c",
                 "trap '' TERM; while true; do sleep 0.1; done")  # fmt: skip
    try:
        started = time.monotonic()
        done = env.run("stop", "-t", "2", "cmdstop")
        took = time.monotonic() - started
        assert done.returncode == 0 and done.stdout == "cmdstop\n", done.stderr
        assert 2 <= took < 10, took
        row = next(r for r in env.run("ps", "-a").stdout.splitlines() if r.endswith("cmdstop"))
        assert "Exited (137)" in row
        assert env.run("kill", "cmdstop").returncode == 1
    finally:
        env.run("rm", "-f", "cmdstop")


def test_rm_refuses_running_then_force_removes_everything(env: Env, image: str) -> None:
    baseline = env.leaks()
    volumes = env.data_root / "volumes" / "default"
    before = set(os.listdir(volumes)) if volumes.is_dir() else set()
    env.detached("--name", "cmdrm", "-p", "127.0.0.1::80", "-v", "/data", image, "sleep", "60")
    refused = env.run("rm", "cmdrm")
    assert refused.returncode == 1
    assert 'cannot remove container "/cmdrm": container is running: stop the container before removing or force ' \
        "remove" in refused.stderr  # fmt: skip
    removed = env.run("rm", "-f", "-v", "cmdrm")
    assert removed.returncode == 0 and removed.stdout == "cmdrm\n", removed.stderr
    assert env.run("rm", "cmdrm").returncode == 1  # gone: "No such container"
    left = env.leaks(baseline)
    assert left.total() == 0, left.nonzero()  # type: ignore[attr-defined]
    assert (set(os.listdir(volumes)) if volumes.is_dir() else set()) == before
    # The name is free again.
    again = env.run("--rm", "--name", "cmdrm", "--network", "none", image, "true")
    assert again.returncode == 0, again.stderr


def test_exec_exit_code_env_workdir_stdin_and_tty(env: Env, image: str) -> None:
    env.detached("--name", "cmdexec", "--network", "none", image, "sleep", "60")
    try:
        assert env.run("exec", "cmdexec", "sh", "-c", "exit 3").returncode == 3
        plain = env.run("exec", "-e", "X=one", "-w", "/tmp", "cmdexec", "sh", "-c", "echo $X; pwd; echo e >&2")
        assert plain.returncode == 0 and plain.stdout == "one\n/tmp\n" and plain.stderr == "e\n"
        piped = env.run("exec", "-i", "cmdexec", "cat", input="through stdin\n")
        assert piped.stdout == "through stdin\n"
        tty = env.run("exec", "-t", "cmdexec", "tty")
        assert tty.returncode == 0 and tty.stdout.startswith("/dev/pts/"), tty.stderr
        user = env.run("exec", "-u", "app", "cmdexec", "id", "-u")
        assert user.stdout == "1000\n", user.stderr
        missing = env.run("exec", "cmdexec", "no-such-binary")
        assert missing.returncode in (126, 127) and "no-such-binary" in missing.stderr
        assert env.run("exec", "nosuchcontainer", "true").returncode == 1
    finally:
        env.run("rm", "-f", "cmdexec")
