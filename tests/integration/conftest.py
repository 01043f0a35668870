"""Session fixtures for the integration tests: a private sandbox (containerd + docker-registry, both real),
a pushed five-layer sample image, and a `ctr` runner bound to the sandbox's containerd.

`--containerd debian|built|PATH` picks the session sandbox's containerd: debian (default) is the first on PATH
(Debian's 1.6), built is the containerd 2.x that scripts/install-deps.sh builds into /opt/socirun/bin. The option
is defined here, so give pytest this directory (or a file in it): `pytest tests/integration --containerd built`.

Fixtures hand values over explicitly; nothing here sets environment variables.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from socirun.sandbox.components import ctr_beside
from socirun.sandbox.push import PushStats
from socirun.sandbox.sample import SampleImage, build_sample, default_cache_dir, push_sample
from socirun.sandbox.sandbox import Sandbox, SandboxInfo
from tests.support.sandbox import (
    SAMPLE_5_LAYERS_MB,
    SAMPLE_5_NAME,
    SAMPLE_5_TAG,
    CtrRunner,
    containerd_choice,
    missing_requirement,
    short_tmp_dir,
)

HERE = Path(__file__).parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--containerd", default="debian", metavar="debian|built|PATH",
                     help="the containerd the session sandbox runs: debian (the first on PATH, default), built "
                          "(the containerd 2.x in /opt/socirun/bin), or a binary's path")


@pytest.fixture(scope="session")
def containerd_binary(request: pytest.FixtureRequest) -> str:
    """The containerd binary `--containerd` names (skips when it is not there). getoption's default covers a
    run where this conftest was not loaded before the command line was parsed (`pytest` from the root)."""
    binary, reason = containerd_choice(str(request.config.getoption("--containerd", default="debian")))
    if binary is None:
        pytest.skip(reason)
    return binary


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def sandbox(containerd_binary: str) -> Iterator[SandboxInfo]:
    reason = missing_requirement()
    if reason is not None:
        pytest.skip(reason)
    box = Sandbox(short_tmp_dir())
    try:
        yield box.up(containerd=containerd_binary)
    finally:
        box.down()


@pytest.fixture(scope="session")
def sample_5_image() -> SampleImage:
    """The sample that `sample_5` pushes (built once, then taken from the persistent sample cache)."""
    return build_sample(default_cache_dir(), SAMPLE_5_LAYERS_MB)


@pytest.fixture(scope="session")
def push_sample_5(sandbox: SandboxInfo) -> Callable[..., str]:
    """`push_sample_5(name=..., tag=..., stats=PushStats())` pushes the `sample_5` image (again, or under
    another name) to the sandbox registry and returns its reference."""

    def push(name: str = SAMPLE_5_NAME, tag: str = SAMPLE_5_TAG, *, stats: PushStats | None = None) -> str:
        return push_sample(sandbox.registry_host, name, tag, SAMPLE_5_LAYERS_MB, stats=stats)

    return push


@pytest.fixture(scope="session")
def sample_5(push_sample_5: Callable[..., str]) -> str:
    """ "127.0.0.1:PORT/socirun/sample5:latest", pushed to the sandbox registry: the busybox base and four
    data layers (see `sample_5_image`)."""
    return push_sample_5()


@pytest.fixture
def short_tmp_path() -> Iterator[Path]:
    """Like tmp_path, but directly under /tmp (for sandboxes and their unix sockets); removed afterwards,
    with `Sandbox.down()` first when a test left a sandbox there (so no daemon outlives its directory)."""
    path = short_tmp_dir()
    yield path
    if (path / "sandbox.json").exists() or (path / "containerd.toml").exists():
        Sandbox(path).down()
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def ctr(sandbox: SandboxInfo) -> CtrRunner:
    """`ctr("images", "ls")` runs `ctr -a <sandbox socket> -n default images ls` and returns the
    CompletedProcess (text). A non-zero exit fails the test unless `check=False`. The ctr is the one built with
    the sandbox's containerd (2.x's own for the built one)."""
    ctr_path = ctr_beside(sandbox.containerd_binary)

    def run(
        *args: str, namespace: str = "default", check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        argv = [ctr_path, "-a", sandbox.containerd_address, "-n", namespace, *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"`{shlex.join(argv)}` exited {done.returncode}: {done.stderr.strip()}")
        return done

    return run


@pytest.fixture
def throttle(sandbox: SandboxInfo) -> Iterator[Callable[..., str]]:
    """`throttle("20MB", total="8MB")` puts the sandbox registry behind `socirun.sandbox.throttle` (a cap per
    connection, optionally one for all together) and returns the proxy's host:port; stopped after the test."""
    procs: list[subprocess.Popen[str]] = []

    def start(rate: str, *, total: str | None = None) -> str:
        argv = [sys.executable, "-m", "socirun.sandbox.throttle", "--upstream", sandbox.registry_host, "--rate", rate]
        if total is not None:
            argv += ["--total", total]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None
        return proc.stdout.readline().strip()

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)
