"""`socirun start` (issue 14 item 1) of a stopped container created without --rm, against the sandbox's real
containerd, runc and CNI: it runs again detached, on its own network with its published port, its writable layer
kept, its log appended to. The fixtures are test_run.py's."""

from __future__ import annotations

import time

from tests.integration.test_run import Env, env, image  # noqa: F401 (pytest fixtures)
from tests.support.waiting import get_index

# The first run leaves a mark in its writable layer and exits 3; a start finds the mark and serves.
TWICE = ("echo round; if [ -f /mark ]; then echo served > /tmp/index.html; exec httpd -f -p 8080 -h /tmp; fi; "
         "touch /mark; exit 3")


def test_start_runs_a_stopped_container_again_with_its_network_ports_layer_and_log(env: Env, image: str) -> None:  # noqa: F811
    name = "start-again"
    created = env.run("-d", "--name", name, "-p", "127.0.0.1::8080", image, "sh", "-c", TWICE)
    assert created.code == 0, created.err
    cid = created.out.strip()
    try:
        assert env.run("wait", name).out.strip() == "3"
        assert "Exited (3)" in env.run("ps", "-a").out
        started = env.run("start", name)
        assert started.code == 0 and started.out == f"{name}\n", started.err
        port = int(env.run("port", name, "8080").out.strip().rsplit(":", 1)[1])
        deadline = time.monotonic() + 20
        body = b""
        while b"served" not in body and time.monotonic() < deadline:
            body = get_index(port)
            time.sleep(0.2)
        assert b"served" in body, env.run("logs", name).err
        assert f"{cid[:12]}" in env.run("ps").out  # running again: listed without -a
        # /etc/hosts names the address this start got (IPAM need not hand out the first run's again)
        ip = env.run("exec", name, "sh", "-c", "ip -4 -o addr show eth0").out.split()[3].split("/")[0]
        assert f"{ip}\t{cid[:12]}" in env.run("exec", name, "cat", "/etc/hosts").out
        assert env.run("logs", name).out.splitlines() == ["round", "round"]  # both runs, one log
        again = env.run("start", name)  # a running container: left alone, as docker
        assert again.code == 0 and again.out == f"{name}\n"
    finally:
        env.run("rm", "-f", name)
    assert name not in env.run("ps", "-a").out


def test_start_of_no_such_container_is_docker_s_sentence(env: Env) -> None:  # noqa: F811
    result = env.run("start", "no-such-container")
    assert result.code == 1 and "No such container: no-such-container" in result.err
