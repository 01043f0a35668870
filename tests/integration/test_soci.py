"""The SOCI path end to end on the real soci-snapshotter v0.16 (built from its Go modules), the built containerd
2.x, docker-registry and runc: lazy loading of a large image with real indexes from `soci convert`, what SOCI
fetched (its metrics) and which files the container read (its FUSE log), restarts, Ctrl-C, and SOCI's own
parallel pull mode."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from socirun.oci import chain_ids
from socirun.sandbox.sample import SampleFile, build_sample, default_cache_dir, sample_files
from socirun.soci.observer import parse_metrics
from tests.support.cli_result import CliResult
from tests.support.sandbox import short_tmp_dir
from tests.support.soci import SAMPLE_TEXT, SociBox, missing_soci_requirement, soci_sandbox, throttled, wait_for

MB = 1_000_000
MIB = 1 << 20
# A sample of more than 1 GB compressed: the busybox base and three data layers of mixed files (MiB of content,
# ~2:1 compressible), one of which holds a ~20 MB file the lazy test reads.
BIG_LAYERS_MB = (600.0, 900.0, 700.0)
SMALL_LAYERS_MB = (1.0, 24.0)
# The registry's bandwidth for the big test: 25 MB/s per connection, 25 MB/s in total.
RATE = "25MB"


@pytest.fixture(scope="module")
def soci_box() -> Iterator[SociBox]:
    reason = missing_soci_requirement()
    if reason is not None:
        pytest.fail(reason)  # scripts/install-deps.sh builds everything: a missing piece is a real failure
    with soci_sandbox(short_tmp_dir("srs-")) as box:
        yield box


def layer_digests(layers: tuple[float, ...], seed: int) -> list[str]:
    return [layer.digest for layer in build_sample(default_cache_dir(), layers, seed=seed).layers]


def big_file(layers: tuple[float, ...], seed: int, layer: int) -> SampleFile:
    """The sample's one big file in data layer `layer` (its size is in the sample's file listing)."""
    return next(f for f in sample_files(layers, seed) if f.kind == "big" and f.layer == layer)


def first_line(box: SociBox, args: list[str], timeout: float = 300) -> tuple[float, str, CliResult]:
    """Run socirun; seconds from its start to the container's first stdout line, that line, and the result."""
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "socirun", *args], env=box.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    elapsed = time.monotonic() - start
    out, err = proc.communicate(timeout=timeout)
    return elapsed, line, CliResult(proc.returncode, line + out, err)


def test_lazy_run_of_a_large_image_reads_one_file(soci_box: SociBox) -> None:
    """A container that reads one ~20 MB file of a >1 GB image starts long before the image could have been
    downloaded; SOCI fetched (its metrics) at most 10% of the image, on demand; the fetch log names the file."""
    soci_box.configure(background_fetch=False)  # what is fetched is what the container read, nothing more
    image = build_sample(default_cache_dir(), BIG_LAYERS_MB, seed=61)
    assert image.total_size > 1_000_000_000
    target = big_file(BIG_LAYERS_MB, 61, layer=2)
    assert 15 * MB < target.size < 30 * MB
    ref = soci_box.push("soci/big", BIG_LAYERS_MB, "v2", seed=61, min_layer_size=10 * MIB)
    with throttled(soci_box.info.registry_host, RATE, total=RATE) as capped:
        capped_ref = ref.replace(soci_box.info.registry_host, capped, 1)
        elapsed, line, ran = first_line(soci_box, ["run", "--rm", "--net", "none", capped_ref, "wc", "-c",
                                                   target.path])
    assert ran.code == 0, ran.stderr
    assert line.split()[0] == str(target.size)
    could_download = image.total_size / (25 * MB)
    assert elapsed < could_download / 4, (elapsed, could_download)
    assert ran.of("plan_made")[0]["mode"] == "lazy"
    metrics = parse_metrics(soci_box.metrics_text())
    fetched = sum(m.fetched for m in metrics.values() if m.digest in {layer.digest for layer in image.layers})
    assert 0 < fetched <= image.total_size / 10, (fetched, image.total_size)
    assert sum(m.on_demand_fetches for m in metrics.values()) > 0
    reads = [e for e in ran.of("fetch_log") if e["reason"] == "read"]
    assert any(e["path"] == target.path for e in reads), reads[:5]
    soci_box.forget(capped_ref)


def test_soci_restart_between_two_runs(soci_box: SociBox) -> None:
    """SOCI restarted (SIGINT: it unmounts) between two runs of a lazily loaded image: the second run works on
    the same snapshots, remounted; removing the image leaves no FUSE mount behind."""
    soci_box.configure()
    ref = soci_box.push("soci/restart", SMALL_LAYERS_MB, "v2", seed=62, min_layer_size=4 * MIB)
    first = soci_box.socirun("run", "--rm", "--net", "none", ref)
    assert first.code == 0 and SAMPLE_TEXT in first.stdout, first.stderr
    lazy = [e["digest"] for e in first.of("layer_classified") if e["mode"] == "lazy"]
    assert lazy and len(soci_box.fuse_mounts()) >= len(lazy)
    soci_box.configure()
    second = soci_box.socirun("run", "--rm", "--net", "none", ref, "sh", "-c", "wc -c /data/*/* | tail -1")
    assert second.code == 0, second.stderr
    assert not second.of("plan_made")  # nothing pulled again: the snapshots survived the restart
    assert soci_box.leases() == []
    soci_box.forget(ref)
    wait_for(lambda: not soci_box.fuse_mounts(), 30, "SOCI to unmount the removed image's layers")


def test_ctrl_c_during_a_lazy_run_leaves_nothing_behind(soci_box: SociBox) -> None:
    soci_box.configure(background_fetch=False)
    ref = soci_box.push("soci/ctrlc", SMALL_LAYERS_MB, "v2", seed=63, min_layer_size=4 * MIB)
    big = big_file(SMALL_LAYERS_MB, 63, layer=2)
    with throttled(soci_box.info.registry_host, "1MB", total="1MB") as capped:
        ref = ref.replace(soci_box.info.registry_host, capped, 1)
        proc = subprocess.Popen([sys.executable, "-m", "socirun", "run", "--rm", "--net", "none", ref, "sh", "-c",
                                 # PID 1 ignores SIGINT unless it has a handler (as under docker): this one has.
                                 f"trap 'exit 130' INT; cat {big.path} > /dev/null & wait $!"],
                                env=soci_box.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        started = False
        for line in proc.stderr:
            if line.startswith("{") and json.loads(line)["type"] == "container_started":
                started = True
                break
        assert started
        time.sleep(1.0)  # the container is reading through SOCI, slowly
        proc.send_signal(signal.SIGINT)
        proc.stderr.read()
        assert proc.wait(timeout=60) == 130
    assert soci_box.leases() == []
    assert soci_box.ctr("containers", "ls", "-q").stdout.split() == []
    assert [row for row in soci_box.snapshots() if row[-1] != "Committed"] == []
    soci_box.forget(ref)
    wait_for(lambda: not soci_box.fuse_mounts(), 30, "SOCI to unmount the removed image's layers")
    assert soci_box.snapshots() == []


def test_soci_parallel_pull_mode(soci_box: SociBox) -> None:
    """[pull_modes.parallel_pull_unpack] on: the plan says SOCI downloads and unpacks; the stream has moving
    byte counts for the layers SOCI downloads; the image is complete, and ctr runs it."""
    soci_box.configure(parallel=True)
    layers = (40.0, 120.0)
    ref = soci_box.push("soci/parallel", layers, "v2", seed=64, min_layer_size=4 * MIB)
    plan = json.loads(soci_box.socirun("plan", "--json", ref).stdout)
    assert plan["snapshotter"] == "soci" and plan["mode"] == "parallel", plan
    with throttled(soci_box.info.registry_host, RATE, total="20MB") as capped:
        pulled = soci_box.socirun("pull", ref.replace(soci_box.info.registry_host, capped, 1))
    assert pulled.code == 0, pulled.stderr
    assert {e["mode"] for e in pulled.of("layer_classified")} == {"parallel"}
    big = layer_digests(layers, 64)[-1]
    counts = [e["downloaded"] for e in pulled.of("layer_progress") if e["digest"] == big]
    size = next(e["size"] for e in pulled.of("layer_planned") if e["digest"] == big)
    assert len({c for c in counts if 0 < c < size}) >= 2, counts  # it moved while SOCI downloaded
    assert counts == sorted(counts) and counts[-1] == size
    capped_ref = ref.replace(soci_box.info.registry_host, capped, 1)
    # Complete: every layer's snapshot is committed in soci (with discard_unpacked_layers SOCI keeps no layer
    # blob in the content store, so `ctr images check` would call it incomplete although it runs).
    image = build_sample(default_cache_dir(), layers, seed=64)
    committed = {row[0] for row in soci_box.snapshots() if row[-1] == "Committed"}
    assert set(chain_ids([layer.diff_id for layer in image.layers])) <= committed
    ran = soci_box.ctr("run", "--rm", "--snapshotter", "soci", capped_ref, "soci-parallel-ctr")
    assert SAMPLE_TEXT in ran.stdout
    soci_box.forget(capped_ref)


def test_overlayfs_bypasses_soci(soci_box: SociBox) -> None:
    soci_box.configure()
    ref = soci_box.push("soci/bypass", SMALL_LAYERS_MB, "v2", seed=65, min_layer_size=4 * MIB)
    before = soci_box.soci_log_size()
    pulled = soci_box.socirun("pull", "--snapshotter", "overlayfs", ref)
    assert pulled.code == 0, pulled.stderr
    plan = pulled.of("plan_made")[0]
    assert plan["snapshotter"] == "overlayfs"
    assert any("--snapshotter overlayfs was chosen" in r for r in plan["reasons"])
    assert '"msg":"prepare"' not in soci_box.soci_log_since(before)


def test_dead_soci_socket_is_reported_and_plan_picks_overlayfs(soci_box: SociBox) -> None:
    soci_box.configure()
    ref = soci_box.push("soci/dead", SMALL_LAYERS_MB, "v2", seed=66, min_layer_size=4 * MIB)
    soci_box.box.stop_soci()
    try:
        assert soci_box.fuse_mounts() == []  # SIGINT: SOCI unmounted everything before exiting
        doctor = soci_box.socirun("doctor", timeout=60)
        assert doctor.code == 1, doctor.stderr
        assert "snapshotter soci: registered, but it does not answer" in doctor.stderr
        plan = json.loads(soci_box.socirun("plan", "--json", ref).stdout)
        assert plan["snapshotter"] == "overlayfs"
        assert any("does not answer" in r for r in plan["reasons"])
        forced = soci_box.socirun("pull", "--snapshotter", "soci", ref)
        assert forced.code == 125 and "does not answer" in forced.stderr
    finally:
        soci_box.configure()


def test_run_without_a_snapshotter_lets_the_plan_pick_lazy_loading(soci_box: SociBox) -> None:
    """`socirun run IMAGE` pulls the way `socirun pull` does: the plan picks soci for an indexed image, and the
    container runs on SOCI's lazily mounted snapshots; a second run reuses them without pulling."""
    soci_box.configure()
    ref = soci_box.push("soci/run-auto", SMALL_LAYERS_MB, "v2", seed=67, min_layer_size=4 * MIB)
    ran = soci_box.socirun("run", "--rm", "--net", "none", ref)
    assert ran.code == 0 and SAMPLE_TEXT in ran.stdout, ran.stderr
    plan = ran.of("plan_made")[0]
    assert plan["snapshotter"] == "soci" and plan["mode"] == "lazy"
    assert "lazy" in {e["mode"] for e in ran.of("layer_classified")}
    again = soci_box.socirun("run", "--rm", "--net", "none", ref)
    assert again.code == 0 and SAMPLE_TEXT in again.stdout, again.stderr
    assert not again.of("plan_made")
