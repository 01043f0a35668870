"""`socirun run` against the sandbox's real containerd, runc and the CNI plugins, checked with `ctr`.

Every run uses a private data root and its own bridge and subnet (chosen from the test process's PID, so two test
sessions on one machine do not share them) through a config file: the tests never touch /var/lib/socirun or a
bridge another socirun uses.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from socirun.runtime.cni import netns_name
from socirun.sandbox.sandbox import SandboxInfo
from tests.support.socirun_env import socirun_vars, write_bridge_config
from tests.support.waiting import wait_until

_SLOT = os.getpid() % 200
BRIDGE = f"srtest{_SLOT}"
SUBNET = f"10.213.{_SLOT + 20}.0/24"
SUBNET_PREFIX = f"10.213.{_SLOT + 20}."
NETWORK = "socirun-test"
CtrRunner = Callable[..., "subprocess.CompletedProcess[str]"]


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class Env:
    vars: dict[str, str]
    data_root: Path

    def run(self, *args: str, input: str | None = None, timeout: float = 90) -> Result:
        done = subprocess.run([sys.executable, "-m", "socirun", *args], input=input, capture_output=True,
                              text=True, env=self.vars, timeout=timeout, check=False)  # fmt: skip
        return Result(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def env(sandbox: SandboxInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    home = tmp_path_factory.mktemp("runcfg")
    write_bridge_config(home, network=NETWORK, bridge=BRIDGE, subnet=SUBNET)
    data_root = tmp_path_factory.mktemp("rundata")
    yield Env(socirun_vars(sandbox.containerd_address, data_root, home), data_root)
    subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True, check=False)


@pytest.fixture(scope="module")
def image(env: Env, sample_5: str) -> str:
    """sample_5, pulled by a first run if no other test pulled it yet (test_pull_never_always_missing checks the
    pull paths with an image of its own)."""
    first = env.run("--rm", sample_5, "true")
    assert first.code == 0, first.err
    return sample_5


def netns_names() -> set[str]:
    return {n for n in os.listdir("/run/netns") if n.startswith("socirun-")} if os.path.isdir("/run/netns") else set()


def ipam_allocations(env: Env) -> list[str]:
    d = env.data_root / "cni" / "networks" / NETWORK
    return [p.name for p in d.iterdir() if p.name[0].isdigit()] if d.is_dir() else []


# ---------------------------------------------------------------------------------------------- exit codes, stdio


@pytest.mark.parametrize(
    ("args", "code", "err_text"),
    [
        (["sh", "-c", "exit 0"], 0, ""),
        (["sh", "-c", "exit 3"], 3, ""),
        (["no-such-binary"], 127, "executable file not found"),
        (["/etc/passwd"], 126, "permission denied"),
    ],
)
def test_exit_codes(env: Env, image: str, args: list[str], code: int, err_text: str) -> None:
    result = env.run("--rm", image, *args)
    assert result.code == code, result.err
    assert err_text in result.err


def test_a_bad_flag_is_125_before_anything_runs(env: Env, image: str) -> None:
    result = env.run("--rm", "--no-such-flag", image, "true")
    assert result.code == 125 and "unknown flag: --no-such-flag" in result.err


def test_stdout_and_stderr_stay_separate(env: Env, image: str) -> None:
    result = env.run("--rm", image, "sh", "-c", "echo to-out; echo to-err >&2")
    assert result.code == 0
    assert result.out == "to-out\n"
    assert result.err == "to-err\n"


def test_stdin_with_i_reaches_the_container_and_eof_ends_it(env: Env, image: str) -> None:
    result = env.run("--rm", "-i", image, "sh", "-c", "cat; echo done", input="line one\nline two\n")
    assert result.code == 0, result.err
    assert result.out == "line one\nline two\ndone\n"


def test_env_env_file_workdir_and_user_by_name(env: Env, image: str, tmp_path: Path) -> None:
    env_file = tmp_path / "vars.env"
    env_file.write_text("# comment\nFROM_FILE=file value\nBOTH=file\n")
    result = env.run("--rm", "--env-file", str(env_file), "-e", "BOTH=flag", "-e", "PLAIN=1", "-w", "/tmp",
                     "-u", "app", image, "sh", "-c",
                     'echo "$FROM_FILE|$BOTH|$PLAIN"; pwd; id -u; id -g; id -un')  # fmt: skip
    assert result.code == 0, result.err
    assert result.out.splitlines() == ["file value|flag|1", "/tmp", "1000", "1000", "app"]


def test_unknown_user_is_125(env: Env, image: str) -> None:
    result = env.run("--rm", "-u", "nosuchuser", image, "true")
    assert result.code == 125 and "unable to find user nosuchuser" in result.err


# ---------------------------------------------------------------------------------------------- volumes


def test_bind_mount_read_only_refuses_writes(env: Env, image: str, tmp_path: Path) -> None:
    host = tmp_path / "shared"
    host.mkdir()
    (host / "f.txt").write_text("original\n")
    result = env.run("--rm", "-v", f"{host}:/data:ro", image, "sh", "-c",
                     "cat /data/f.txt; echo changed > /data/f.txt && echo wrote; exit 0")  # fmt: skip
    assert result.code == 0
    assert result.out == "original\n"
    assert "Read-only file system" in result.err
    assert (host / "f.txt").read_text() == "original\n"
    rw = env.run("--rm", "-v", f"{host}:/data", image, "sh", "-c", "echo new > /data/g.txt")
    assert rw.code == 0 and (host / "g.txt").read_text() == "new\n"


def test_named_volume_survives_rm_and_is_seen_by_the_next_run(env: Env, image: str) -> None:
    first = env.run("--rm", "-v", "keepme:/vol", image, "sh", "-c", "echo persisted > /vol/x")
    assert first.code == 0, first.err
    assert (env.data_root / "volumes" / "default" / "keepme" / "_data" / "x").read_text() == "persisted\n"
    second = env.run("--rm", "--mount", "type=volume,src=keepme,dst=/other", image, "cat", "/other/x")
    assert second.code == 0 and second.out == "persisted\n"


def test_anonymous_volume_is_removed_with_rm(env: Env, image: str) -> None:
    vols = env.data_root / "volumes" / "default"
    before = set(os.listdir(vols)) if vols.is_dir() else set()
    result = env.run("--rm", "-v", "/anon", image, "sh", "-c", "echo x > /anon/y")
    assert result.code == 0
    after = set(os.listdir(vols)) if vols.is_dir() else set()
    assert after == before


def test_spec_flags_take_effect_inside(env: Env, image: str) -> None:
    result = env.run("--rm", "--hostname", "boxy", "--add-host", "db:10.1.2.3", "--read-only", "--tmpfs", "/scratch",
                     "--cap-drop", "ALL", "--ulimit", "nofile=123:456", "--dns", "10.9.9.9", image, "sh", "-c",
                     "hostname; grep db /etc/hosts; touch /x 2>&1 || echo ro-root; touch /scratch/ok && echo tmpfs-rw;"
                     "grep CapEff /proc/self/status; ulimit -n; grep nameserver /etc/resolv.conf")  # fmt: skip
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0] == "boxy" and lines[1].split() == ["10.1.2.3", "db"]
    assert "ro-root" in lines and "tmpfs-rw" in lines
    assert "CapEff:\t0000000000000000" in lines and "123" in lines and "nameserver 10.9.9.9" in lines


@pytest.mark.skipif(not any(shutil.which(b) for b in ("docker-init", "tini-static")), reason="no static tini")
def test_init_runs_the_command_under_tini(env: Env, image: str) -> None:
    result = env.run("--rm", "--init", image, "sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '; exit 4")
    assert result.code == 4, result.err
    assert result.out.startswith("/sbin/docker-init -- sh -c")


def test_privileged_sees_host_devices_and_device_adds_one(env: Env, image: str) -> None:
    priv = env.run("--rm", "--privileged", image, "sh", "-c", "ls /dev; grep CapEff /proc/self/status")
    assert priv.code == 0, priv.err
    own = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("CapBnd:"))
    assert own.replace("CapBnd", "CapEff") in priv.out and "zero" in priv.out.split()
    dev = env.run("--rm", "--device", "/dev/zero:/dev/myzero", image, "sh", "-c",
                  "head -c 4 /dev/myzero | od -An -tx1")  # fmt: skip
    assert dev.code == 0 and dev.out.split() == ["00", "00", "00", "00"], dev.err


# ---------------------------------------------------------------------------------------------- ipc, shm


def test_ipc_host_shares_the_hosts_ipc_namespace(env: Env, image: str) -> None:
    result = env.run("--rm", "--ipc=host", image, "readlink", "/proc/self/ns/ipc")
    assert result.code == 0, result.err
    assert result.out.strip() == os.readlink("/proc/self/ns/ipc")
    private = env.run("--rm", image, "readlink", "/proc/self/ns/ipc")
    assert private.out.strip() != os.readlink("/proc/self/ns/ipc")


def test_shm_size_is_seen_inside(env: Env, image: str) -> None:
    result = env.run("--rm", "--shm-size=256m", image, "df", "-k", "/dev/shm")
    assert result.code == 0, result.err
    assert "262144" in result.out
    default = env.run("--rm", image, "df", "-k", "/dev/shm")
    assert "65536" in default.out


# ---------------------------------------------------------------------------------------------- networking


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http_get(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


def test_detached_published_port_is_reachable_then_stop_tears_everything_down(
    env: Env, image: str, ctr: CtrRunner
) -> None:
    port = _free_port()
    result = env.run("-d", "--rm", "--name", "web", "-p", f"127.0.0.1:{port}:80", image,
                     "sh", "-c", "echo served-by-socirun > /tmp/index.html; exec httpd -f -p 80 -h /tmp")  # fmt: skip
    assert result.code == 0, result.err
    cid = result.out.strip()
    assert len(cid) == 64 and all(c in "0123456789abcdef" for c in cid)
    tasks = ctr("tasks", "ls").stdout
    assert any(line.split()[0] == cid and line.split()[-1] == "RUNNING" for line in tasks.splitlines()[1:])
    assert cid in ctr("containers", "ls", "-q").stdout
    labels = ctr("containers", "info", cid).stdout
    assert '"nerdctl/name": "web"' in labels and '"nerdctl/namespace": "default"' in labels
    assert wait_until(lambda: b"served-by-socirun" in _try_get(port), 10)
    assert netns_name(cid) in netns_names() and ipam_allocations(env)
    # A name in use is refused while it exists.
    again = env.run("--rm", "--name", "web", image, "true")
    assert again.code == 125 and 'The container name "/web" is already in use' in again.err
    ctr("tasks", "kill", "--signal", "SIGKILL", cid)
    assert wait_until(lambda: cid not in ctr("containers", "ls", "-q").stdout, 20)
    assert wait_until(lambda: netns_name(cid) not in netns_names() and not ipam_allocations(env), 10)
    assert not (env.data_root / "containers" / "default" / cid).exists()
    assert cid not in ctr("snapshots", "ls").stdout


def _try_get(port: int) -> bytes:
    try:
        return _http_get(port, "/index.html")
    except OSError:
        return b""


def test_network_modes(env: Env, image: str) -> None:
    none = env.run("--rm", "--network", "none", image, "ls", "/sys/class/net")
    assert none.code == 0 and none.out.split() == ["lo"]
    bridge = env.run("--rm", image, "sh", "-c", "ls /sys/class/net; ip -4 addr show eth0")
    assert bridge.code == 0 and "eth0" in bridge.out and SUBNET_PREFIX in bridge.out
    host = env.run("--rm", "--network", "host", image, "ls", "/sys/class/net")
    assert host.code == 0 and sorted(host.out.split()) == sorted(os.listdir("/sys/class/net"))


def test_network_container_joins_a_running_container(env: Env, image: str, ctr: CtrRunner) -> None:
    target = env.run("-d", "--rm", "--name", "netowner", image, "sleep", "60")
    assert target.code == 0, target.err
    cid = target.out.strip()
    try:
        own = env.run("--rm", "--network", "container:netowner", image, "readlink", "/proc/self/ns/net")
        assert own.code == 0, own.err
        tasks = ctr("tasks", "ls").stdout.splitlines()
        pid = next(line.split()[1] for line in tasks if line.startswith(cid))
        assert own.out.strip() == os.readlink(f"/proc/{pid}/ns/net")
    finally:
        ctr("tasks", "kill", "--signal", "SIGKILL", cid, check=False)
    assert wait_until(lambda: cid not in ctr("containers", "ls", "-q").stdout, 20)


# ---------------------------------------------------------------------------------- --rm, names, pull, cidfile


def test_rm_leaves_nothing_behind(env: Env, image: str, ctr: CtrRunner, tmp_path: Path) -> None:
    containers = set(ctr("containers", "ls", "-q").stdout.split())
    snapshots = ctr("snapshots", "ls").stdout.count("Active")
    cidfile = tmp_path / "cid"
    result = env.run("--rm", "--cidfile", str(cidfile), "-p", f"127.0.0.1:{_free_port()}:80", image, "sh", "-c",
                     "ls /sys/class/net; echo ok")  # fmt: skip
    assert result.code == 0 and result.out.split() == ["eth0", "lo", "ok"], result.err
    cid = cidfile.read_text()
    assert set(ctr("containers", "ls", "-q").stdout.split()) == containers
    assert ctr("snapshots", "ls").stdout.count("Active") == snapshots
    assert ctr("tasks", "ls", "-q").stdout.strip() == ""
    assert netns_name(cid) not in netns_names()
    assert cid not in ctr("snapshots", "ls").stdout
    assert not (env.data_root / "containers" / "default" / cid).exists()  # its FIFO dir, /etc files, state
    assert ipam_allocations(env) == []


def test_without_rm_the_container_stays_and_its_name_is_taken(env: Env, image: str, ctr: CtrRunner,
                                                              tmp_path: Path) -> None:  # fmt: skip
    cidfile = tmp_path / "cid"
    first = env.run("--name", "keeper", "--cidfile", str(cidfile), image, "true")
    assert first.code == 0, first.err
    cid = cidfile.read_text()
    assert len(cid) == 64 and cid in ctr("containers", "ls", "-q").stdout
    second = env.run("--name", "keeper", image, "true")
    assert second.code == 125 and "already in use" in second.err
    again = env.run("--rm", "--cidfile", str(cidfile), image, "true")
    assert again.code == 125 and "Container ID file found" in again.err
    ctr("containers", "rm", cid)  # ctr removes the snapshot with it


def test_pull_never_always_missing(env: Env, push_sample_5: Callable[..., str], ctr: CtrRunner) -> None:
    ref = push_sample_5(name="socirun/runpull")
    never = env.run("--rm", "--pull", "never", ref, "true")
    assert never.code == 125 and "No such image" in never.err
    missing = env.run("--rm", ref, "echo", "pulled")
    assert missing.code == 0 and missing.out == "pulled\n"
    assert "Unable to find image" in missing.err
    present = env.run("--rm", "--pull", "missing", ref, "true")
    assert present.code == 0 and "Unable to find image" not in present.err and present.err == ""
    always = env.run("--rm", "--pull", "always", "-q", ref, "true")
    assert always.code == 0 and always.err == ""
    bad = env.run("--rm", "--pull", "sometimes", ref, "true")
    assert bad.code == 125 and "invalid pull option" in bad.err


def test_detached_output_goes_to_the_state_log_with_and_without_a_tty(env: Env, image: str, ctr: CtrRunner) -> None:
    for flags in (["-d"], ["-dt"]):
        result = env.run(*flags, "--network", "none", image, "sh", "-c", "tty; echo out; echo err >&2")
        assert result.code == 0, result.err
        cid = result.out.strip()
        # docker's json-file log (socirun/runtime/logs.py): one {"log", "stream", "time"} object per line.
        log = env.data_root / "containers" / "default" / cid / f"{cid}-json.log"
        assert wait_until(lambda cid=cid: cid not in ctr("tasks", "ls", "-q").stdout, 15)
        assert wait_until(lambda log=log: log.exists() and "err" in log.read_text(), 15)
        entries = [json.loads(line) for line in log.read_bytes().decode().splitlines()]
        text = "".join(e["log"] for e in entries)
        if flags == ["-d"]:
            # The shim copies stdout and stderr into the file separately: their order is not kept.
            assert sorted((e["stream"], e["log"]) for e in entries) == [
                ("stderr", "err\n"), ("stdout", "not a tty\n"), ("stdout", "out\n")], entries
        else:
            assert text.startswith("/dev/pts/") and text.endswith("\r\nout\r\nerr\r\n"), text
        ctr("containers", "rm", cid)


def test_gpus_on_a_host_without_gpu_is_125_with_a_sentence(env: Env, image: str) -> None:
    if os.path.exists("/dev/nvidia0"):
        pytest.skip("this host has a GPU; bench/gpu_check.sh covers it")
    result = env.run("--rm", "--gpus", "all", image, "true")
    assert result.code == 125
    assert "this host has no NVIDIA GPU" in result.err and len(result.err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------- tty


def _read_until(fd: int, needle: bytes, timeout: float = 15) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while needle not in buf and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
    return buf


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def test_it_under_a_pseudo_terminal(env: Env, image: str) -> None:
    master, slave = os.openpty()
    _set_size(slave, 24, 80)

    def controlling_tty() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen([sys.executable, "-m", "socirun", "--rm", "-it", image, "sh"], stdin=slave,
                            stdout=slave, stderr=slave, env=env.vars, start_new_session=True,
                            preexec_fn=controlling_tty)  # fmt: skip
    os.close(slave)
    try:
        os.write(master, b"tty\n")
        out = _read_until(master, b"/dev/pts/")
        assert b"/dev/pts/" in out, out
        _set_size(master, 33, 100)  # the kernel sends SIGWINCH to socirun, which calls ResizePty
        time.sleep(1.0)
        os.write(master, b"stty size\n")
        out = _read_until(master, b"33 100")
        assert b"33 100" in out, out
        # Outputs are computed ($((...))) so the tty's echo of the typed line cannot match them.
        os.write(master, b"sleep 30; echo NOT$((2+2))\n")
        time.sleep(1.0)
        started = time.monotonic()
        os.write(master, b"\x03")  # Ctrl-C, passed through raw mode to the container's tty
        os.write(master, b"echo AFTER$((1+1))\n")
        out = _read_until(master, b"AFTER2")
        assert b"AFTER2" in out and b"NOT4" not in out, out
        assert time.monotonic() - started < 20
        os.write(master, b"exit 5\n")
        assert proc.wait(timeout=30) == 5
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # forwarded to the container, so socirun still cleans up
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        os.close(master)
