"""The TUI in a real terminal: `socirun pull --progress tty` inside tmux, read back with `capture-pane`
while the (throttled) pull runs and after it has finished."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from socirun.sandbox.sample import push_sample
from socirun.sandbox.sandbox import SandboxInfo
from tests.support.sandbox import CtrRunner

ROW = re.compile(r"^\s*\S\s+[0-9a-f]{12}\s", re.MULTILINE)
RECAP = re.compile(r"^[0-9a-f]{12}: done \(", re.MULTILINE)
# Four data layers and the base; random bytes, so gzip cannot shrink them and the throttle decides the time.
LAYERS_MB = (2.0, 2.0, 2.0, 2.0)


class Tmux:
    """A private tmux server (its own socket) running one command in a detached session of a fixed size."""

    def __init__(self, directory: Path, *, width: int = 100, height: int = 30) -> None:
        self.socket = str(directory / "tmux.sock")
        self.marker = directory / "exited"
        self.width, self.height = width, height

    def _tmux(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["tmux", "-u", "-S", self.socket, *args], capture_output=True, text=True,
                              timeout=30, check=True)

    def start(self, argv: Sequence[str], env: dict[str, str]) -> None:
        """Run `argv`; when it ends, "<code> <start> <end>" (epoch seconds) is written to the marker file and
        the pane stays open so its final screen can be read. argv travels as arguments, never as shell text."""
        # COLUMNS / LINES inherited from the test process would pin the app to their size instead of the pane's.
        wrapper = ('unset COLUMNS LINES; s=$(date +%s.%N); "$@"; rc=$?; e=$(date +%s.%N); '
                   'echo "$rc $s $e" > "$MARKER"; echo "socirun exited $rc"; sleep 600')
        env_args = [arg for key, value in {**env, "MARKER": str(self.marker)}.items()
                    for arg in ("-e", f"{key}={value}")]
        self._tmux("new-session", "-d", "-s", "main", "-x", str(self.width), "-y", str(self.height), *env_args,
                   "sh", "-c", wrapper, "sh", *argv)

    def press(self, key: str) -> None:
        self._tmux("send-keys", "-t", "main", key)

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "main").stdout

    def result(self) -> tuple[int, float] | None:
        """(exit code, seconds the command ran), once it has ended."""
        if not self.marker.exists():
            return None
        text = self.marker.read_text().split()
        if len(text) < 3:
            return None
        return int(text[0]), float(text[2]) - float(text[1])

    def wait_for_screen(self, predicate: Callable[[str], bool], what: str, timeout: float = 30) -> None:
        """Wait until the screen satisfies `predicate`, the command still running."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.result() is None, self.screen()
            if predicate(self.screen()):
                return
            time.sleep(0.05)
        raise AssertionError(f"never saw {what}; screen:\n{self.screen()}")

    def wait(self, timeout: float) -> tuple[int, float]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.result()
            if done is not None:
                return done
            time.sleep(0.05)
        raise AssertionError(f"the command did not end within {timeout}s; screen:\n{self.screen()}")

    def kill(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True, timeout=30, check=False)


def socirun_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "socirun", *args]


@pytest.fixture
def tmux(short_tmp_path: Path) -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    session = Tmux(short_tmp_path)
    try:
        yield session
    finally:
        session.kill()


@pytest.fixture
def slow_registry(throttle: Callable[..., str]) -> str:
    """The sandbox registry behind a proxy capped at 2 MB/s in all, so a ~9 MB pull lasts a few seconds."""
    return throttle("2MB", total="2MB")


def test_tui_pull_in_a_real_terminal(sandbox: SandboxInfo, slow_registry: str, tmux: Tmux) -> None:
    pushed = push_sample(sandbox.registry_host, "tui/sample", "v1", LAYERS_MB, seed=404)
    ref = pushed.replace(sandbox.registry_host, slow_registry, 1)
    tmux.start(socirun_argv("pull", "--progress", "tty", ref),
               {"CONTAINERD_ADDRESS": sandbox.containerd_address, "TERM": "xterm-256color"})

    # While it runs: the header, the mode badge and one row per layer, some of them still transferring.
    mid = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and tmux.result() is None:
        screen = tmux.screen()
        if "pulling" in screen and len(ROW.findall(screen)) == 5 and re.search(r"\d MB/\d", screen):
            mid = screen
            break
        time.sleep(0.1)
    assert mid, f"never saw the pull in progress; last screen:\n{tmux.screen()}"
    assert re.search(r"\b(STANDARD|PARALLEL)\b", mid) and "tui/sample:v1" in mid and "q Quit" in mid
    assert "Nothing is fetched lazily" in mid

    code, _ = tmux.wait(120)
    after = tmux.screen()
    assert code == 0, after
    # After: the TUI has given the screen back and left the final state in the scrollback.
    assert len(RECAP.findall(after)) == 5, after
    assert re.search(r"^pulled .*tui/sample:v1 \((standard|parallel), overlayfs\): fetched", after, re.MULTILINE), after
    assert "socirun exited 0" in after


def test_ctrl_c_in_the_tui_cancels_cleanly(sandbox: SandboxInfo, slow_registry: str, tmux: Tmux,
                                           ctr: CtrRunner) -> None:
    pushed = push_sample(sandbox.registry_host, "tui/cancel", "v1", LAYERS_MB, seed=405)
    ref = pushed.replace(sandbox.registry_host, slow_registry, 1)
    namespace = "tui-cancel"
    tmux.start(socirun_argv("pull", "--namespace", namespace, "--progress", "tty", ref),
               {"CONTAINERD_ADDRESS": sandbox.containerd_address, "TERM": "xterm-256color"})
    tmux.wait_for_screen(lambda screen: bool(re.search(r"\d MB/\d", screen)), "the transfer rate",
                         timeout=60)
    tmux.press("C-c")
    code, _ = tmux.wait(60)
    after = tmux.screen()
    assert code == 130, after
    assert "socirun: interrupted" in after and "Traceback" not in after
    assert ctr("leases", "ls", "-q", namespace=namespace).stdout.split() == []
    assert ref not in ctr("images", "ls", "-q", namespace=namespace).stdout.split()
    snapshots = ctr("snapshots", "ls", namespace=namespace).stdout.splitlines()
    assert not any(line.startswith("extract-") for line in snapshots)


def test_run_shows_the_pull_in_the_tui_then_hands_the_terminal_to_the_container(
    sandbox: SandboxInfo, slow_registry: str, tmux: Tmux, short_tmp_path: Path
) -> None:
    pushed = push_sample(sandbox.registry_host, "tui/run", "v1", LAYERS_MB, seed=406)
    ref = pushed.replace(sandbox.registry_host, slow_registry, 1)
    tmux.start(socirun_argv("run", "--progress", "tty", "--rm", "-t", "--net", "none", "--data-root",
                            str(short_tmp_path / "data"), ref, "sh", "-c", "tty; stty size; exit 7"),
               {"CONTAINERD_ADDRESS": sandbox.containerd_address, "TERM": "xterm-256color"})
    mid = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and tmux.result() is None:
        screen = tmux.screen()
        if "pulling" in screen and len(ROW.findall(screen)) == 5 and "q Quit" in screen:
            mid = screen
            break
        time.sleep(0.1)
    assert mid, f"never saw the pull in the TUI; last screen:\n{tmux.screen()}"
    code, _ = tmux.wait(120)
    after = tmux.screen()
    assert code == 7, after  # the container's exit code passes through
    # The TUI left its summary, then the container had the terminal, at the pane's size from the first moment.
    assert re.search(r"^pulled .*tui/run:v1 ", after, re.MULTILINE), after
    assert re.search(r"^/dev/pts/\d+\s*$", after, re.MULTILINE), after
    assert re.search(rf"^{tmux.height} {tmux.width}\s*$", after, re.MULTILINE), after
    assert "Traceback" not in after


def test_keys_reach_the_tui_in_a_real_terminal(sandbox: SandboxInfo, slow_registry: str, tmux: Tmux) -> None:
    # socirun's own input thread (socirun.ui.tui.driver) reads the keys: a plain key, a lone Esc (which only
    # the parser's timeout turns into a key) and q, which cancels the pull in flight.
    pushed = push_sample(sandbox.registry_host, "tui/keys", "v1", LAYERS_MB, seed=407)
    ref = pushed.replace(sandbox.registry_host, slow_registry, 1)
    tmux.start(socirun_argv("pull", "--namespace", "tui-keys", "--progress", "tty", ref),
               {"CONTAINERD_ADDRESS": sandbox.containerd_address, "TERM": "xterm-256color"})
    tmux.wait_for_screen(lambda screen: "q Quit" in screen and bool(re.search(r"\d MB/\d", screen)),
                         "the pull in progress")
    tmux.press("?")
    tmux.wait_for_screen(lambda screen: "socirun keys" in screen, "the help after ?")
    tmux.press("Escape")
    tmux.wait_for_screen(lambda screen: "socirun keys" not in screen, "the help closed by Esc")
    tmux.press("q")
    code, _ = tmux.wait(60)
    assert code == 130, tmux.screen()
