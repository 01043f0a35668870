"""Small process and mount helpers for the sandbox: start a daemon detached, recognise it later, stop it.

A process is "ours" only when its command line contains a marker we chose (the path of the config file we
wrote for it), so a recorded PID that the kernel has since given to someone else is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

from socirun.errors import SandboxError

# Debian packages that provide the binaries the sandbox starts.
DEBIAN_PACKAGES = {
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "docker-registry": "docker-registry",
}


def require_binary(name: str) -> str:
    """The absolute path of `name` on PATH, or a SandboxError naming the Debian package to install."""
    path = shutil.which(name)
    if path is None:
        package = DEBIAN_PACKAGES.get(name, name)
        raise SandboxError(f"{name} was not found on PATH: install the Debian package {package}.")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    """True when a listener could bind 127.0.0.1:`port` now (SO_REUSEADDR, as Go's listeners set it, so
    connections still in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def spawn(argv: Sequence[str], log_path: Path, *, cwd: Path, env: dict[str, str] | None = None) -> int:
    """Start `argv` in its own session (so it outlives us), stdout and stderr appended to `log_path`."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    return proc.pid


def _reap(pid: int) -> None:
    """Collect `pid` if it is an exited child of ours (a zombie would otherwise look alive)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def find_ours(pid: int, marker: str) -> psutil.Process | None:
    """The running process `pid` if its command line contains `marker`, else None."""
    if pid <= 0:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            _reap(pid)
            return None
        if any(marker in arg for arg in proc.cmdline()):
            return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        _reap(pid)
    return None


def is_ours(pid: int, marker: str) -> bool:
    return find_ours(pid, marker) is not None


def stop_process(pid: int, marker: str, timeout: float = 10.0, *, sig: int = signal.SIGTERM) -> None:
    """Send `sig` (SIGTERM) to `pid` if it is still ours, wait up to `timeout`, then SIGKILL it."""
    proc = find_ours(pid, marker)
    if proc is None:
        return
    kill_processes([proc], timeout=timeout, sig=sig)


def kill_processes(procs: Sequence[psutil.Process], *, timeout: float, hard: bool = False,
                   sig: int = signal.SIGTERM) -> None:
    """Signal every process (SIGKILL when `hard`, else `sig`, SIGTERM by default, then SIGKILL after
    `timeout`) and wait."""
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            if hard:
                proc.kill()
            else:
                proc.send_signal(sig)
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    if alive:
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(alive, timeout=5.0)
    for proc in procs:
        _reap(proc.pid)


def _exited(pid: int, marker: str) -> bool:
    """Whether `pid` has exited. For our own child waitpid is authoritative; matching the command line right
    after the start can misread a busy machine's just-started daemon as gone, and leave it running."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return not is_ours(pid, marker)
    return done == pid


def wait_until(
    ready: Callable[[], bool],
    *,
    pid: int,
    marker: str,
    timeout: float,
    what: str,
    log_path: Path,
) -> None:
    """Poll `ready` until it is true; fail early when the process exits, or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if ready():
            return
        if _exited(pid, marker):
            raise SandboxError(f"{what} exited during startup; read {log_path} for the reason.")
        if time.monotonic() > deadline:
            raise SandboxError(f"{what} did not become ready within {timeout:.0f} s; read {log_path}.")
        time.sleep(0.05)


def unix_socket_answers(path: Path) -> bool:
    """True when something accepts connections on the unix socket at `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
        except OSError:
            return False
        return True


def _unescape_mountinfo(field: str) -> str:
    """/proc/self/mountinfo writes space, tab, newline and backslash as octal escapes (\\040 ...)."""
    out: list[str] = []
    i = 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below `root` (symlinks resolved, as the kernel reports them), oldest first."""
    root = root.resolve()
    prefix = str(root).rstrip("/") + "/"
    found: list[str] = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as mountinfo:
        for line in mountinfo:
            fields = line.split(" ")
            if len(fields) < 5:
                continue
            point = _unescape_mountinfo(fields[4])
            if point == str(root) or point.startswith(prefix):
                found.append(point)
    return found


def unmount_under(root: Path) -> None:
    """Unmount everything mounted at or below `root`, newest first; lazily (MNT_DETACH) when busy."""
    for point in reversed(mounts_under(root)):
        done = subprocess.run(["umount", point], capture_output=True, check=False)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    left = mounts_under(root)
    if left:
        raise SandboxError(f"could not unmount {left[0]}; unmount it by hand, then run the command again.")
