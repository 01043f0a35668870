"""The SOCI path end to end with the SOCI emulator in a sandbox: real containerd (soci registered as a proxy
snapshotter), real docker-registry, real runc. Containers run on the emulator's snapshots with
`socirun run --snapshotter soci`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from socirun import events as ev
from socirun.sandbox.sample import build_sample, default_cache_dir, push_sample
from socirun.sandbox.sandbox import Sandbox, SandboxInfo
from socirun.sandbox.soci_emulator.process import emulator_config
from socirun.soci.config import load_soci_config
from socirun.soci.observer import SociObserver, fetch_metrics, observing, parse_metrics
from tests.support.cli_result import CliResult
from tests.support.sandbox import missing_requirement, short_tmp_dir

SAMPLE_TEXT = "hello from the socirun sample"
MIB = 1 << 20
# Data layers (MiB, uncompressed): two big ones load lazily (zTOC for compressed layers ≥ 4 MiB here).
LAZY_LAYERS_MB = (1.0, 24.0, 48.0)
SMALL_LAYERS_MB = (1.0, 12.0)
ZTOC_MIN = 4 * MIB


@dataclass
class SociBox:
    box: Sandbox
    info: SandboxInfo

    def env(self) -> dict[str, str]:
        return dict(os.environ, CONTAINERD_ADDRESS=self.info.containerd_address,
                    SOCI_SNAPSHOTTER_CONFIG=str(self.box.soci.config), SOCIRUN_PROGRESS="json")

    def socirun(self, *args: str, timeout: float = 300) -> CliResult:
        done = subprocess.run([sys.executable, "-m", "socirun", *args], capture_output=True, text=True,
                              env=self.env(), timeout=timeout, check=False)
        return CliResult.of_process(done)

    def configure(self, *, pace_ms: float = 0.0, **keys: Any) -> None:
        self.box.restart_soci(emulator_config(self.box.soci, min_layer_size=0, **keys), span_pace_ms=pace_ms)

    def push(self, name: str, layers: tuple[float, ...], soci: str, seed: int) -> str:
        return push_sample(self.info.registry_host, name, "latest", layers, seed=seed, soci=soci,
                           ztoc_min_layer_size=ZTOC_MIN)

    def run_container(self, ref: str, *command: str) -> CliResult:
        return self.socirun("run", "--rm", "--snapshotter", "soci", "--net", "none", ref, *command, timeout=120)


@pytest.fixture(scope="module")
def soci_box() -> Iterator[SociBox]:
    reason = missing_requirement()
    if reason is not None:
        pytest.skip(reason)
    box = Sandbox(short_tmp_dir("srs-"))
    try:
        yield SociBox(box, box.up(soci=True))
    finally:
        box.down()


def layer_digests(layers: tuple[float, ...], seed: int) -> list[str]:
    image = build_sample(default_cache_dir(), layers, seed=seed)
    return [layer.digest for layer in image.layers]


async def _metrics(box: SociBox) -> dict[str, Any]:
    return parse_metrics(await fetch_metrics(str(box.box.soci.metrics), "unix"))


async def test_lazy_run_starts_before_big_layers_complete(soci_box: SociBox) -> None:
    # One span per second: the 25 MB layer needs ~7 s of background fill, the container far less.
    soci_box.configure(pace_ms=1000)
    ref = soci_box.push("soci/lazy", LAZY_LAYERS_MB, "v2", seed=51)
    digests = layer_digests(LAZY_LAYERS_MB, 51)
    big = digests[-1]
    cfg = load_soci_config(soci_box.env()["SOCI_SNAPSHOTTER_CONFIG"], use_dump=False)
    seen: list[ev.Event] = []
    # The whole log (earlier tests' lines name other layers): no span line can slip past the follower.
    observer = SociObserver(cfg, seen.append, soci_log=str(soci_box.box.soci.log), use_journal=False,
                            layers=frozenset(digests[-2:]), log_from_start=True)
    async with observing(observer):
        pulled = await asyncio.to_thread(soci_box.socirun, "pull", ref)
        assert pulled.code == 0, pulled.stderr
        plan = pulled.of("plan_made")[0]
        assert plan["snapshotter"] == "soci" and plan["mode"] == "lazy"
        classified = {e["digest"]: e["mode"] for e in pulled.of("layer_classified")}
        assert classified[big] == "lazy" and classified[digests[0]] == "snapshotter"
        assert pulled.of("pull_finished")[0]["fetched"] == 0  # socirun downloaded nothing itself

        ran = await asyncio.to_thread(soci_box.run_container, ref)
        assert ran.code == 0, ran.stderr
        assert SAMPLE_TEXT in ran.stdout
        metrics = await _metrics(soci_box)
        # The container ran and exited while the big layer was still being fetched in the background.
        assert 0 <= metrics[big].fetched < metrics[big].size

        deadline = time.monotonic() + 90
        while not observer.all_complete():
            assert time.monotonic() < deadline, f"layers never completed: {observer.fetched}"
            await asyncio.sleep(0.2)
    spans = [e for e in seen if isinstance(e, ev.FetchLogEntry) and e.layer_digest == big]
    size = metrics[big].size
    assert len(spans) == -(-size // (4 * MIB))  # one fetch-log entry per 4 MiB span
    assert sum(e.length for e in spans) == size
    progress = [e for e in seen if isinstance(e, ev.LayerProgress) and e.digest == big]
    assert progress[-1].downloaded == progress[-1].total == size
    assert any(isinstance(e, ev.LayerStateChanged) and e.digest == big and e.state == "done" for e in seen)
    # Once complete, the layer's files are really there for a new container.
    again = soci_box.run_container(ref, "sh", "-c", "wc -c /data/layer-2.bin /data/layer-3.bin")
    assert again.code == 0 and str(48 * MIB) in again.stdout and str(24 * MIB) in again.stdout, again.stderr


def test_parallel_mode(soci_box: SociBox) -> None:
    soci_box.configure(parallel=True)
    ref = soci_box.push("soci/parallel", SMALL_LAYERS_MB, "v2", seed=52)
    plan = json.loads(soci_box.socirun("plan", "--json", ref).stdout)
    assert plan["snapshotter"] == "soci" and plan["mode"] == "parallel"
    assert any("parallel_pull_unpack] enable = true" in r for r in plan["reasons"])
    pulled = soci_box.socirun("pull", ref)
    assert pulled.code == 0, pulled.stderr
    modes = {e["mode"] for e in pulled.of("layer_classified")}
    assert modes == {"parallel"}
    assert "preparing snapshot with parallel pull/unpack" in soci_box.box.soci.log.read_text()
    ran = soci_box.run_container(ref)
    assert ran.code == 0 and SAMPLE_TEXT in ran.stdout, ran.stderr


def test_no_index_defers_and_socirun_downloads(soci_box: SociBox) -> None:
    soci_box.configure()
    ref = soci_box.push("soci/none", SMALL_LAYERS_MB, "none", seed=53)
    plan = json.loads(soci_box.socirun("plan", "--json", ref).stdout)
    assert plan["snapshotter"] == "overlayfs"
    assert any("has no SOCI index" in r for r in plan["reasons"]) and any("soci convert" in f for f in plan["fixes"])
    lazy = json.loads(soci_box.socirun("plan", "--json", "--pull-mode", "lazy", ref).stdout)
    assert lazy["warnings"] and "instead" in lazy["warnings"][0]
    pulled = soci_box.socirun("pull", "--snapshotter", "soci", ref)
    assert pulled.code == 0, pulled.stderr
    classified = pulled.of("layer_classified")
    assert len(classified) == 3 and {e["mode"] for e in classified} == {"standard"}
    assert pulled.of("pull_finished")[0]["fetched"] > 0
    assert "no valid SOCI index found; deferring to container runtime" in soci_box.box.soci.log.read_text()
    ran = soci_box.run_container(ref)
    assert ran.code == 0 and SAMPLE_TEXT in ran.stdout, ran.stderr


def test_snapshotter_overlayfs_bypasses_soci(soci_box: SociBox) -> None:
    soci_box.configure()
    ref = soci_box.push("soci/bypass", SMALL_LAYERS_MB, "v2", seed=54)
    before = soci_box.box.soci.log.read_text().count("preparing snapshot\"")
    pulled = soci_box.socirun("pull", "--snapshotter", "overlayfs", ref)
    assert pulled.code == 0, pulled.stderr
    plan = pulled.of("plan_made")[0]
    assert plan["snapshotter"] == "overlayfs"
    assert any("--snapshotter overlayfs was chosen" in r for r in plan["reasons"])
    assert not pulled.of("layer_classified")
    assert soci_box.box.soci.log.read_text().count("preparing snapshot\"") == before


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_index_discovery(soci_box: SociBox, version: str) -> None:
    soci_box.configure(v1=version == "v1")
    ref = soci_box.push(f"soci/disc-{version}", SMALL_LAYERS_MB, version, seed=55 if version == "v1" else 56)
    plan = json.loads(soci_box.socirun("plan", "--json", ref).stdout)
    assert plan["snapshotter"] == "soci" and plan["mode"] == "lazy", plan
    assert plan["index"]["kind"] == version
    via = "referrers tag sha256-" if version == "v1" else "com.amazon.soci.index-digest"
    assert via in plan["index"]["found_via"]
    assert [layer["mode"] for layer in plan["layers"]] == ["snapshotter", "snapshotter", "lazy"]
    pulled = soci_box.socirun("pull", ref)
    assert pulled.code == 0, pulled.stderr
    assert [e["mode"] for e in pulled.of("layer_classified")] == ["snapshotter", "snapshotter", "lazy"]
    if version == "v1":
        # The same v1 image with SOCI's default config (v1 off): no lazy loading, and the plan says why.
        soci_box.configure()
        off = json.loads(soci_box.socirun("plan", "--json", "--pull-mode", "lazy", ref).stdout)
        assert off["snapshotter"] == "overlayfs"
        assert any("#1558" in r for r in off["reasons"]), off
        assert any("[pull_modes.soci_v1] enable = true" in f for f in off["fixes"])


def test_dead_soci_socket_is_reported_and_plan_picks_overlayfs(soci_box: SociBox) -> None:
    soci_box.configure()
    ref = soci_box.push("soci/dead", SMALL_LAYERS_MB, "v2", seed=57)
    soci_box.box.stop_soci()
    try:
        doctor = soci_box.socirun("doctor", timeout=60)
        assert doctor.code == 1
        assert "snapshotter soci: registered, but it does not answer" in doctor.stderr
        assert "systemctl start soci-snapshotter" in doctor.stderr
        plan = json.loads(soci_box.socirun("plan", "--json", ref).stdout)
        assert plan["snapshotter"] == "overlayfs"
        assert any("does not answer" in r for r in plan["reasons"])
        forced = soci_box.socirun("pull", "--snapshotter", "soci", ref)
        assert forced.code == 125 and "does not answer" in forced.stderr
    finally:
        soci_box.configure()
    assert Path(soci_box.info.soci_address).exists()


def test_unexpected_defer_downloads_only_the_deferred_layers(soci_box: SociBox, tmp_path: Path) -> None:
    """socirun's view of SOCI's config is stale (it thinks v2 is on; the snapshotter has it off): the plan
    expects lazy layers, SOCI defers every layer, and socirun downloads each one only when it is deferred."""
    soci_box.configure(v2=False, v1=True)
    stale = tmp_path / "stale-config.toml"
    stale.write_text(emulator_config(soci_box.box.soci))
    ref = soci_box.push("soci/stale", SMALL_LAYERS_MB, "v2", seed=58)
    env = soci_box.env() | {"SOCI_SNAPSHOTTER_CONFIG": str(stale)}
    done = subprocess.run([sys.executable, "-m", "socirun", "pull", ref], capture_output=True, text=True, env=env,
                          timeout=300, check=False)
    pulled = CliResult.of_process(done)
    assert pulled.code == 0, pulled.stderr
    assert [e["mode"] for e in pulled.of("layer_planned")] == ["snapshotter", "snapshotter", "lazy"]
    classified = pulled.of("layer_classified")
    assert [e["mode"] for e in classified] == ["standard"] * 3
    assert all("deferred" in e["detail"] for e in classified)
    # Each download started after its own Prepare was answered with mounts, never before.
    kinds = [(e["type"], e.get("digest")) for e in pulled.events if e["type"] in ("layer_classified", "layer_state")
             and e.get("state", "downloading") == "downloading"]
    for digest in {d for _, d in kinds}:
        assert kinds.index(("layer_classified", digest)) < kinds.index(("layer_state", digest))
    assert pulled.of("pull_finished")[0]["fetched"] > 0
    ran = soci_box.run_container(ref)
    assert ran.code == 0 and SAMPLE_TEXT in ran.stdout, ran.stderr


def test_run_without_a_snapshotter_lets_the_plan_pick_lazy_loading(soci_box: SociBox) -> None:
    """`socirun run IMAGE` pulls the way `socirun pull` does: the plan picks soci for an indexed image, and
    the container runs on the snapshots the plan chose; a second run reuses them without pulling."""
    soci_box.configure()
    ref = soci_box.push("soci/run-auto", SMALL_LAYERS_MB, "v2", seed=57)
    ran = soci_box.socirun("run", "--rm", "--net", "none", ref, timeout=120)
    assert ran.code == 0 and SAMPLE_TEXT in ran.stdout, ran.stderr
    plan = ran.of("plan_made")[0]
    assert plan["snapshotter"] == "soci" and plan["mode"] == "lazy"
    again = soci_box.socirun("run", "--rm", "--net", "none", ref, timeout=120)
    assert again.code == 0 and SAMPLE_TEXT in again.stdout, again.stderr
    assert not again.of("plan_made")  # nothing to pull: the image is unpacked for soci already
