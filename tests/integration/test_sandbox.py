"""The sandbox for real: containerd and docker-registry started, reused, stopped; sample images pushed with
our own client and then pulled and run by containerd's own `ctr`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

import socirun.sandbox.push as push_module
from socirun.errors import SandboxError
from socirun.oci import OCI_MANIFEST
from socirun.sandbox.components import containerd2_dir, version_of
from socirun.sandbox.processes import free_port, mounts_under
from socirun.sandbox.push import PushStats
from socirun.sandbox.sample import SampleImage, push_sample
from socirun.sandbox.sandbox import Sandbox, SandboxInfo, start_registry

SAMPLE_TEXT = "hello from the socirun sample"
Ctr = Callable[..., "subprocess.CompletedProcess[str]"]
Push = Callable[..., str]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def http_get(url: str, accept: str = "*/*") -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.read(), dict(response.headers)


def test_up_is_idempotent(sandbox: SandboxInfo) -> None:
    again = Sandbox(sandbox.dir).up()
    assert again == sandbox
    assert alive(sandbox.containerd_pid) and alive(sandbox.registry_pid)


def test_status_state_file_and_env_lines(sandbox: SandboxInfo) -> None:
    box = Sandbox(sandbox.dir)
    assert box.status() == sandbox
    assert sandbox.containerd_address == os.path.join(sandbox.dir, "containerd.sock")
    assert sandbox.registry_host.startswith("127.0.0.1:")
    state = json.loads(Path(sandbox.dir, "sandbox.json").read_text())
    assert state["containerd_pid"] == sandbox.containerd_pid
    assert state["registry_pid"] == sandbox.registry_pid
    assert box.env_lines() == [
        f"export CONTAINERD_ADDRESS={sandbox.containerd_address}",
        f"export SOCIRUN_REGISTRY={sandbox.registry_host}",
    ]
    assert http_get(f"http://{sandbox.registry_host}/v2/")[0] == 200


def test_up_on_the_built_containerd_2x(short_tmp_path: Path) -> None:
    """`sandbox up --containerd PATH`: config `version = 3` for 2.x, `status` names the binary and its version,
    and a running sandbox is not silently reused for another containerd."""
    try:
        built = str(containerd2_dir() / "containerd")
    except SandboxError as err:
        pytest.skip(str(err))

    def socirun(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "socirun", "sandbox", *args, "--dir", str(short_tmp_path)],
                              capture_output=True, text=True, timeout=120, check=False)

    up = socirun("up", "--containerd", built)
    assert up.returncode == 0, up.stderr
    assert (short_tmp_path / "containerd.toml").read_text().startswith("version = 3\n")
    status = socirun("status")
    assert version_of(built).startswith("v2.")
    assert f"  containerd {version_of(built)} ({built}) at {short_tmp_path}/containerd.sock" in status.stdout
    other = socirun("up", "--containerd", "containerd")
    assert other.returncode == 125 and other.stderr.count("\n") == 1
    assert f"runs {built}; stop it with `socirun sandbox down`" in other.stderr


def test_status_of_a_sandbox_never_started(short_tmp_path: Path) -> None:
    box = Sandbox(short_tmp_path)
    try:
        assert box.status() is None
        with pytest.raises(SandboxError, match="not running"):
            box.env_lines()
    finally:
        box.down()
    assert not Path(box.dir).exists()


def test_pushed_sample_pulls_and_runs_with_ctr(sample_5: str, sample_5_image: SampleImage, ctr: Ctr) -> None:
    ctr("images", "pull", "--plain-http", sample_5)
    assert SAMPLE_TEXT in ctr("run", "--rm", sample_5, "sbx-t1").stdout
    assert ctr("run", "--rm", sample_5, "sbx-t2", "id", "app").stdout.strip() == (
        "uid=1000(app) gid=1000(app) groups=1000(app),100(users)"
    )
    script = "stat -c '%a %n' /tmp /data/*"
    listing = ctr("run", "--rm", sample_5, "sbx-t3", "sh", "-c", script).stdout.splitlines()
    data_layers = len(sample_5_image.layers) - 1
    assert listing == ["1777 /tmp"] + [f"755 /data/layer-{i}" for i in range(1, data_layers + 1)]


def test_second_push_uploads_nothing(push_sample_5: Push, sample_5: str, sample_5_image: SampleImage) -> None:
    stats = PushStats()
    assert push_sample_5(stats=stats) == sample_5
    assert stats == PushStats(
        uploaded_blobs=0, uploaded_bytes=0, skipped_blobs=1 + len(sample_5_image.layers)
    )


def test_chunked_upload_assembles_the_same_blobs(
    sandbox: SandboxInfo, push_sample_5: Push, sample_5_image: SampleImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every blob goes up as PATCH chunks of 256 KiB (a new repository, so nothing is skipped).
    monkeypatch.setattr(push_module, "MONOLITHIC_MAX", 0)
    monkeypatch.setattr(push_module, "CHUNK_SIZE", 256 * 1024)
    stats = PushStats()
    ref = push_sample_5("socirun/chunked", "v1", stats=stats)
    assert ref == f"{sandbox.registry_host}/socirun/chunked:v1"
    assert stats.uploaded_blobs == 1 + len(sample_5_image.layers) and stats.skipped_blobs == 0
    biggest = max(sample_5_image.layers, key=lambda layer: layer.size)
    status, body, _ = http_get(f"http://{sandbox.registry_host}/v2/socirun/chunked/blobs/{biggest.digest}")
    assert status == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == biggest.digest
    status, body, headers = http_get(
        f"http://{sandbox.registry_host}/v2/socirun/chunked/manifests/v1", OCI_MANIFEST
    )
    assert body == sample_5_image.manifest_bytes
    assert headers["Docker-Content-Digest"] == sample_5_image.manifest_digest


def test_push_to_a_registry_nobody_serves_is_one_sentence(tmp_path: Path) -> None:
    host = f"127.0.0.1:{free_port()}"
    with pytest.raises(SandboxError) as caught:
        push_sample(host, "x/y", "v1", [0.1], cache_dir=tmp_path)
    assert str(caught.value).startswith(f"cannot reach the registry at {host} ")
    assert "\n" not in str(caught.value)


def test_pull_through_mirror(
    sandbox: SandboxInfo, sample_5: str, sample_5_image: SampleImage, short_tmp_path: Path
) -> None:
    name, _, tag = sample_5.removeprefix(sandbox.registry_host + "/").rpartition(":")
    mirror = start_registry(short_tmp_path, proxy_remote_url=f"http://{sandbox.registry_host}")
    try:
        assert mirror.alive() and mirror.host != sandbox.registry_host
        url = f"http://{mirror.host}/v2/{name}/manifests/{tag}"
        status, body, _ = http_get(url, OCI_MANIFEST)
        assert status == 200 and body == sample_5_image.manifest_bytes
        layer = sample_5_image.layers[-1]
        _, blob, _ = http_get(f"http://{mirror.host}/v2/{name}/blobs/{layer.digest}")
        assert "sha256:" + hashlib.sha256(blob).hexdigest() == layer.digest
    finally:
        mirror.stop()
    assert not mirror.alive()


def test_down_refuses_a_directory_that_is_not_a_sandbox(short_tmp_path: Path) -> None:
    (short_tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(SandboxError, match="does not look like a socirun sandbox"):
        Sandbox(short_tmp_path).down()
    assert (short_tmp_path / "precious.txt").read_text() == "keep me"


def test_missing_binary_names_the_debian_package(
    monkeypatch: pytest.MonkeyPatch, short_tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    box = Sandbox(short_tmp_path)
    try:
        with pytest.raises(SandboxError) as caught:
            box.up()
        assert "install the Debian package containerd" in str(caught.value)
        assert caught.value.exit_code == 125
    finally:
        box.down()


def test_recorded_pid_of_another_process_is_never_signalled(short_tmp_path: Path) -> None:
    stranger = subprocess.Popen(["sleep", "60"])
    box = Sandbox(short_tmp_path)
    try:
        Path(box.dir, "sandbox.json").write_text(
            json.dumps({"containerd_pid": stranger.pid, "registry_pid": stranger.pid})
        )
        assert box.status() is None
        box.down()
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_restart_after_a_crash_then_down_stops_exactly_what_it_started(
    sandbox: SandboxInfo, sample_5: str, short_tmp_path: Path
) -> None:
    box = Sandbox(short_tmp_path)
    first = box.up()
    assert first.containerd_pid != sandbox.containerd_pid

    # The registry dies: the sandbox is no longer "running", and `up` starts it again on the same port.
    registry = psutil.Process(first.registry_pid)
    registry.kill()
    registry.wait(10)
    assert box.status() is None
    info = box.up()
    assert info.registry_pid != first.registry_pid and not alive(first.containerd_pid)
    assert info.registry_host == first.registry_host

    # A running container (shim + process + overlay rootfs mount) in this sandbox's containerd.
    def ctr(*args: str) -> str:
        argv = ["ctr", "-a", info.containerd_address, *args]
        return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120).stdout

    ctr("images", "pull", "--plain-http", sample_5)
    ctr("run", "-d", sample_5, "sbx-bg", "sleep", "600")
    shims = [
        p
        for p in psutil.process_iter(["cmdline"])
        if info.containerd_address in (p.info["cmdline"] or []) and "sbx-bg" in (p.info["cmdline"] or [])
    ]
    assert len(shims) == 1
    workload = shims[0].children()
    assert workload and mounts_under(Path(info.dir))

    box.down()
    assert not alive(info.containerd_pid) and not alive(info.registry_pid)
    assert not alive(shims[0].pid) and not any(alive(p.pid) for p in workload)
    assert mounts_under(Path(info.dir)) == []
    assert not Path(info.dir).exists()
    # The session's sandbox is untouched.
    assert Sandbox(sandbox.dir).status() == sandbox
