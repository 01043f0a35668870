"""`socirun pull` against a real containerd and a real docker-registry, checked with containerd's own `ctr`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from socirun.oci import chain_ids
from socirun.sandbox.sample import push_sample
from socirun.sandbox.sandbox import SandboxInfo, start_registry
from tests.support.cli_result import CliResult
from tests.support.sandbox import SAMPLE_5_LAYERS_MB, registry_blob_path

SAMPLE_TEXT = "hello from the socirun sample"


def socirun_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "socirun", *args]


@pytest.fixture
def socirun(sandbox: SandboxInfo) -> Callable[..., CliResult]:
    def run(*args: str, timeout: float = 300) -> CliResult:
        env = dict(os.environ, CONTAINERD_ADDRESS=sandbox.containerd_address)
        proc = subprocess.run(socirun_cmd(*args), capture_output=True, text=True, env=env, timeout=timeout,
                              check=False)
        return CliResult.of_process(proc)

    return run


def image_names(ctr: Callable[..., subprocess.CompletedProcess[str]]) -> list[str]:
    return ctr("images", "ls", "-q").stdout.split()


def snapshot_keys(ctr: Callable[..., subprocess.CompletedProcess[str]]) -> list[str]:
    lines = ctr("snapshots", "ls").stdout.splitlines()[1:]
    return [line.split()[0] for line in lines if line.strip()]


def lease_ids(ctr: Callable[..., subprocess.CompletedProcess[str]]) -> list[str]:
    lines = ctr("leases", "ls").stdout.splitlines()[1:]
    return [line.split()[0] for line in lines if line.strip()]


def config_diff_ids(ctr: Callable[..., subprocess.CompletedProcess[str]], ref: str) -> list[str]:
    manifest = json.loads(ctr("content", "get", _image_target(ctr, ref)).stdout)
    config = json.loads(ctr("content", "get", manifest["config"]["digest"]).stdout)
    return list(config["rootfs"]["diff_ids"])


def _image_target(ctr: Callable[..., subprocess.CompletedProcess[str]], ref: str) -> str:
    for line in ctr("images", "ls").stdout.splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] == ref:
            return fields[2]
    raise AssertionError(f"{ref} not in ctr images ls")


def test_pull_is_accepted_by_containerds_own_client(
    socirun: Callable[..., CliResult], sandbox: SandboxInfo, ctr: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    # Data layers of their own (seed), so that no earlier test's pull left them in the store (containerd shares
    # blobs across namespaces): this pull fetches them.
    sample_5 = push_sample(sandbox.registry_host, "pull/accepted", "v1", SAMPLE_5_LAYERS_MB, seed=5151)
    result = socirun("pull", "--progress", "json", sample_5)
    assert result.code == 0, result.stderr
    finished = result.finished()
    assert finished["fetched"] > 0 and finished["snapshotter"] == "overlayfs"
    assert sample_5 in image_names(ctr)

    # The snapshots socirun committed are exactly the image's chainIDs, so `ctr` unpacks nothing new.
    chain = chain_ids(config_diff_ids(ctr, sample_5))
    before = set(snapshot_keys(ctr))
    assert set(chain) <= before
    ctr("images", "pull", "--plain-http", sample_5)
    assert set(snapshot_keys(ctr)) == before

    run = ctr("run", "--rm", sample_5, "socirun-pull-check")
    assert SAMPLE_TEXT in run.stdout
    assert lease_ids(ctr) == []


def test_second_pull_downloads_nothing(
    socirun: Callable[..., CliResult], sample_5: str, ctr: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    assert socirun("pull", "--progress", "json", sample_5).code == 0
    again = socirun("pull", "--progress", "json", sample_5)
    assert again.code == 0, again.stderr
    assert again.finished()["fetched"] == 0
    states = {e["digest"]: e["state"] for e in again.events if e["type"] == "layer_state"}
    assert states and set(states.values()) == {"exists"}


def test_plain_progress_goes_to_stderr_and_stdout_stays_empty(
    socirun: Callable[..., CliResult], sample_5: str
) -> None:
    result = socirun("pull", "--progress", "plain", sample_5)
    assert result.code == 0, result.stderr
    assert result.stdout == ""
    assert f"resolving {sample_5}" in result.stderr
    assert "\x1b[" not in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith(f"pulled {sample_5}")


def test_pull_through_a_mirror_named_in_hosts_toml(
    socirun: Callable[..., CliResult], sandbox: SandboxInfo, tmp_path: Path,
    ctr: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    ref = push_sample(sandbox.registry_host, "mirror/sample", "v1", [1, 2], seed=101)
    mirror = start_registry(tmp_path / "mirror", proxy_remote_url=f"http://{sandbox.registry_host}")
    try:
        hosts = tmp_path / "certs.d" / sandbox.registry_host
        hosts.mkdir(parents=True)
        (hosts / "hosts.toml").write_text(
            f'server = "http://{sandbox.registry_host}"\n\n'
            f'[host."http://{mirror.host}"]\n  capabilities = ["pull", "resolve"]\n'
        )
        result = socirun("pull", "--progress", "json", "--hosts-dir", str(tmp_path / "certs.d"), ref)
        assert result.code == 0, result.stderr
        # The pull-through cache now holds the layers: the bytes came through the mirror.
        cached = {p.parent.name for p in (tmp_path / "mirror").rglob("data") if "blobs" in p.parts}
        layer_digests = [e["digest"] for e in result.events if e["type"] == "layer_planned"]
        assert {d.split(":")[1] for d in layer_digests} <= cached
    finally:
        mirror.stop()
    assert ref in image_names(ctr)


@pytest.fixture
def throttled_registry(throttle: Callable[..., str]) -> str:
    """The sandbox registry behind a 20 MB/s-per-connection proxy, so a pull takes long enough to kill."""
    return throttle("20MB")


def test_killed_pull_resumes_with_fewer_bytes(
    socirun: Callable[..., CliResult], sandbox: SandboxInfo, throttled_registry: str,
    ctr: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    pushed = push_sample(sandbox.registry_host, "resume/sample", "v1", [96], seed=202)
    ref = pushed.replace(sandbox.registry_host, throttled_registry, 1)
    env = dict(os.environ, CONTAINERD_ADDRESS=sandbox.containerd_address)
    # One stream per layer (tests/integration/test_parallel_pull.py covers parallel mode, whose eight
    # connections would finish this blob before it could be interrupted).
    proc = subprocess.Popen(socirun_cmd("pull", "--pull-mode", "standard", "--progress", "json", ref), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    partial = 0
    while time.monotonic() < deadline and partial < 16_000_000:
        time.sleep(0.2)
        for line in ctr("content", "active").stdout.splitlines()[1:]:
            fields = line.split()
            if fields and fields[0].startswith("layer-"):
                partial = max(partial, _parse_size(fields[1]) if len(fields) > 1 else 0)
    assert proc.poll() is None, "the pull finished before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert partial >= 16_000_000

    result = socirun("pull", "--pull-mode", "standard", "--progress", "json", ref)
    assert result.code == 0, result.stderr
    finished = result.finished()
    assert 0 < finished["fetched"] < finished["total_size"]
    assert any("resuming" in e.get("detail", "") for e in result.events if e["type"] == "layer_state")
    assert SAMPLE_TEXT in ctr("run", "--rm", ref, "socirun-resume-check").stdout
    # The dead process's lease was dropped by the successful rerun.
    assert lease_ids(ctr) == []


def _parse_size(text: str) -> int:
    """`ctr content active` prints sizes like 16.5MiB / 512.0KiB / 100B."""
    units = {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "kB": 1000, "MB": 1000**2, "GB": 1000**3, "B": 1}
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return 0


def test_corrupt_blob_is_refused_and_nothing_is_kept(
    socirun: Callable[..., CliResult], sandbox: SandboxInfo, ctr: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    ref = push_sample(sandbox.registry_host, "corrupt/sample", "v1", [2, 3], seed=303)
    request = urllib.request.Request(
        f"http://{sandbox.registry_host}/v2/corrupt/sample/manifests/v1",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        manifest = json.loads(response.read())
    bad = manifest["layers"][-1]["digest"]
    hexd = bad.split(":")[1]
    blob = registry_blob_path(sandbox.dir, f"sha256:{hexd}")
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes: the registry serves it as if nothing happened
    blob.write_bytes(bytes(data))

    before = set(snapshot_keys(ctr))
    result = socirun("pull", "--progress", "plain", ref)
    assert result.code == 125
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("socirun: ") and bad in last and "Traceback" not in result.stderr
    assert ref not in image_names(ctr)
    after = set(snapshot_keys(ctr))
    assert not any(k.startswith("extract-") for k in after)
    config_url = f"http://{sandbox.registry_host}/v2/corrupt/sample/blobs/{manifest['config']['digest']}"
    with urllib.request.urlopen(config_url, timeout=10) as response:
        config = json.loads(response.read())
    bad_chain = chain_ids(config["rootfs"]["diff_ids"])[-1]
    assert bad_chain not in after and after >= before
    # Only resume leases are left: they keep the verified layers for a rerun, never the corrupt one (issue 13).
    left = ctr("leases", "ls").stdout.splitlines()[1:]
    assert all("io.socirun/purpose=resume" in row for row in left), left
    for row in left:  # later tests of this session expect no lease at all
        ctr("leases", "delete", "--sync", row.split()[0])
    assert not any(bad in line for line in ctr("content", "active").stdout.splitlines())
    # Nothing of the failed pull is left in the content store once its lease is gone (GC collects it).
    assert manifest["config"]["digest"] not in ctr("content", "ls", "-q").stdout.split()


def test_image_that_does_not_exist(socirun: Callable[..., CliResult], sandbox: SandboxInfo) -> None:
    result = socirun("pull", f"{sandbox.registry_host}/no/such-image:latest")
    assert result.code == 125
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("socirun: ") and "not found" in lines[-1]
    assert "Traceback" not in result.stderr


def test_unreachable_registry(socirun: Callable[..., CliResult]) -> None:
    result = socirun("pull", "127.0.0.1:9/x/y:z")
    assert result.code == 125
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("socirun: ") and "127.0.0.1:9" in last
    assert "Traceback" not in result.stderr


def test_missing_containerd_socket(socirun: Callable[..., CliResult], sample_5: str, tmp_path: Path) -> None:
    missing = tmp_path / "nope.sock"
    result = socirun("pull", "--address", str(missing), sample_5)
    assert result.code == 125
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0]
