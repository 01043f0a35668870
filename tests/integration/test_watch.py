"""Readiness and `socirun watch` against the sandbox's real containerd, runc and CNI (issue 14, items 4 and 5).

The fixtures are test_run.py's: a private data root, bridge and subnet per test session.
"""

from __future__ import annotations

import json
import re

from tests.integration.test_run import Env, env, image  # noqa: F401 (pytest fixtures)

LATE_SERVER = "sleep 3; echo ok > /tmp/index.html; echo listening; exec httpd -f -p 8080 -h /tmp"
# The server cannot answer before its 3 s sleep: that is the bound that matters. The upper one only says the probe
# noticed soon after (its poll interval, plus container start-up on a loaded 2-CPU CI machine: 4.0 s seen once).
READY_BY_S = 8.0


def _records(stderr: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_a_server_listening_after_3_s_is_ready_after_3_s_and_soon(env: Env, image: str) -> None:  # noqa: F811
    result = env.run("-d", "--rm", "--progress", "json", "--ready-port", "8080", "--ready-timeout", "30s",
                     image, "sh", "-c", LATE_SERVER)
    assert result.code == 0, result.err
    cid = result.out.strip()
    try:
        ready = [r for r in _records(result.err) if r["type"] == "container_ready"]
        assert len(ready) == 1, result.err
        assert ready[0]["container_id"] == cid
        assert 3.0 <= float(ready[0]["after"]) <= READY_BY_S, ready  # type: ignore[arg-type]
        assert str(ready[0]["probe"]).startswith("tcp 10.")
    finally:
        env.run("kill", cid)  # `socirun kill` (issue 14 item 1); --rm removes it


def test_localhost_url_means_the_container_and_a_published_port_maps_back(env: Env, image: str) -> None:  # noqa: F811
    result = env.run("-d", "--rm", "-p", "127.0.0.1:18089:8080", "--ready-url", "http://localhost:18089/",
                     "--ready-timeout", "30s", image, "sh", "-c", LATE_SERVER)
    assert result.code == 0, result.err
    cid = result.out.strip()
    try:
        after = re.search(r"ready after (\d+\.\d)s", result.err)
        assert after is not None and 3.0 <= float(after.group(1)) <= READY_BY_S, result.err
        assert "GET http://10." in result.err and ":8080/" in result.err
    finally:
        env.run("kill", cid)


def test_ready_timeout_fails_with_a_sentence_and_exit_1(env: Env, image: str) -> None:  # noqa: F811
    result = env.run("-d", "--rm", "--ready-port", "8080", "--ready-timeout", "2s", image, "sleep", "30")
    cid = result.out.strip()
    try:
        assert result.code == 1, result.err
        assert len(cid) == 64  # the ID is printed first, so a script can still remove the container
        assert "was not ready within 2s: tcp 10." in result.err
    finally:
        env.run("kill", cid)


def test_watch_plain_shows_logs_stats_readiness_and_the_exit(env: Env, image: str) -> None:  # noqa: F811
    # httpd daemonizes and the shell's last command ends the container. (`timeout 4 httpd -f` never ended it: sh
    # execs its last command, so timeout, then httpd, is PID 1, and the SIGTERM timeout sends to PID 1 is ignored
    # by the kernel for an init without a handler; the watch rightly kept watching.)
    started = env.run("-d", "--rm", image, "sh", "-c",
                      "echo before-watch; sleep 2; echo ok > /tmp/index.html; echo hello-from-container; "
                      "httpd -p 8080 -h /tmp; sleep 4")
    assert started.code == 0, started.err
    cid = started.out.strip()
    watched = env.run("watch", "--progress", "plain", "--ready-port", "8080", cid, timeout=60)
    assert watched.code == 0, watched.err
    lines = watched.err.splitlines()
    assert lines[0].startswith(f"watching container {cid[:12]}")
    assert "| before-watch" in lines and "| hello-from-container" in lines
    assert any(line.startswith("cpu ") and " mem " in line for line in lines), watched.err
    assert any(line.startswith("ready after ") for line in lines), watched.err
    assert lines[-1].startswith(f"container {cid[:12]} exited with code")


def test_watch_of_no_such_container_is_a_sentence(env: Env) -> None:  # noqa: F811
    result = env.run("watch", "--progress", "plain", "no-such-container")
    assert result.code == 1 and "No such container: no-such-container" in result.err
