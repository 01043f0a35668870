"""The overlay transfer decision and the parallel-mode settings (pure functions)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from socirun.decide.facts import HostProfile
from socirun.decide.transfer import (
    MIB,
    choose_overlay_transfer,
    config_pull_mode,
    default_transfer_settings,
    parse_size,
    plan_transfer,
    resolve_transfer_settings,
)
from socirun.errors import ConfigError, UsageError


def HostFacts(cpus: int, nic_speed_mbps: int | None = None) -> HostProfile:
    """A host profile with only what the transfer decision weighs set."""
    return HostProfile(cpus=cpus, memory_bytes=16 << 30, nic_speed_mbps=nic_speed_mbps, nic_name="eth0",
                       free_disk_bytes=None, disk_path="/")


@dataclass(frozen=True)
class Layer:
    size: int


BIG = (Layer(1 << 20), Layer(400 << 20))
HOST_2 = HostFacts(cpus=2)


def test_forced_modes_win_and_say_so() -> None:
    mode, reasons = choose_overlay_transfer(HostFacts(cpus=1), requested="parallel")
    assert mode == "parallel" and "--pull-mode parallel" in reasons[0]
    choice = choose_overlay_transfer(HostFacts(cpus=64), BIG, requested="standard")
    assert choice.mode == "standard" and "one stream per layer" in choice.reasons[0]


def test_auto_picks_parallel_stream_for_overlayfs_on_a_multi_cpu_host() -> None:
    mode, reasons = choose_overlay_transfer(HostFacts(cpus=2), BIG, snapshotter="overlayfs")
    assert mode == "parallel-stream"
    assert "2 CPUs" in reasons[-2] and "unpacks each layer into overlayfs as its bytes arrive" in reasons[-1]


def test_auto_keeps_one_stream_where_parallel_would_not_help() -> None:
    assert choose_overlay_transfer(HostFacts(cpus=1), BIG).mode == "standard"
    mode, reasons = choose_overlay_transfer(HostFacts(cpus=8), (Layer(1_000_000),), chunk_size=8 * MIB)
    assert mode == "standard" and "only 976.6 KiB," in reasons[0]
    mode, reasons = choose_overlay_transfer(HostFacts(cpus=8), BIG, snapshotter="soci")
    assert mode == "standard" and "soci" in reasons[0]
    mode, reasons = choose_overlay_transfer(HostFacts(cpus=8, nic_speed_mbps=100), BIG)
    assert mode == "standard" and "100 Mb/s" in reasons[0]


def test_lazy_falls_back_like_auto_and_explains_why() -> None:
    mode, reasons = choose_overlay_transfer(HostFacts(cpus=4, nic_speed_mbps=10_000), BIG, requested="lazy")
    assert mode == "parallel-stream"
    assert "soci snapshotter" in reasons[0] and len(reasons) == 3


def test_unknown_mode_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--pull-mode"):
        choose_overlay_transfer(HostFacts(cpus=2), requested="fast")


def test_defaults_follow_the_host_and_fewer_on_small_hosts() -> None:
    one, two, big = default_transfer_settings(1), default_transfer_settings(2, 4 << 30), default_transfer_settings(
        32, 256 << 30)
    assert one.max_concurrent_downloads == 3  # SOCI's per-image default
    assert one.max_concurrent_downloads < two.max_concurrent_downloads < big.max_concurrent_downloads
    assert two.chunk_size == 8 * MIB and big.chunk_size == 16 * MIB
    assert two.memory_bound == two.window * two.chunk_size <= 128 * MIB


@pytest.mark.parametrize(("text", "size"), [
    ("16MiB", 16 * MIB), ("8MB", 8_000_000), ("8mb", 8_000_000), ("65536", 65536), ("1.5MiB", 3 * MIB // 2),
    ("512KiB", 512 * 1024), ("1gb", 10**9),
])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MiB", "16 furlongs", "-1MB"])
def test_parse_size_refuses_nonsense(text: str) -> None:
    with pytest.raises(UsageError, match="invalid size"):
        parse_size(text)


def test_config_then_flags() -> None:
    raw = {"pull": {"mode": "parallel", "max_concurrent_downloads": 5, "chunk_size": "4MiB", "schedule": "interleave"}}
    assert config_pull_mode(raw) == "parallel"
    s = resolve_transfer_settings(cpus=2, memory_bytes=None, raw_config=raw)
    assert (s.max_concurrent_downloads, s.chunk_size, s.window, s.schedule) == (5, 4 * MIB, 10, "interleave")
    s = resolve_transfer_settings(cpus=2, memory_bytes=None, raw_config=raw, max_concurrent_downloads=7,
                                  chunk_size="16MiB")
    assert (s.max_concurrent_downloads, s.chunk_size, s.window) == (7, 16 * MIB, 14)
    s = resolve_transfer_settings(cpus=2, memory_bytes=None, raw_config={"pull": {"window": 3}},
                                  max_concurrent_downloads=7)
    assert s.window == 3 and s.memory_bound == 3 * s.chunk_size


def test_bad_config_values_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"pull\.chunk_size"):
        resolve_transfer_settings(cpus=2, memory_bytes=None, raw_config={"pull": {"chunk_size": "1KiB"}})
    with pytest.raises(ConfigError, match=r"pull\.window"):
        resolve_transfer_settings(cpus=2, memory_bytes=None, raw_config={"pull": {"window": 0}})
    with pytest.raises(ConfigError, match=r"pull\.schedule"):
        resolve_transfer_settings(cpus=2, memory_bytes=None, raw_config={"pull": {"schedule": "random"}})
    with pytest.raises(ConfigError, match=r"pull\.mode"):
        config_pull_mode({"pull": {"mode": "turbo"}})
    with pytest.raises(UsageError, match="--chunk-size"):
        resolve_transfer_settings(cpus=2, memory_bytes=None, raw_config={}, chunk_size="2GiB")


def test_unpacks_at_once_only_where_the_local_snapshotter_can_rebase() -> None:
    raw = {"pull": {"max_concurrent_unpacks": 3}}
    plan = plan_transfer(mode="parallel", raw_config=raw, snapshotter="overlayfs", host=HOST_2)
    assert plan.unpacks_at_once("overlayfs", ("rebase",)) == 3
    assert plan.unpacks_at_once("overlayfs", ()) == 0  # containerd 1.6's overlayfs advertises nothing
    assert plan.unpacks_at_once("soci", ("rebase",)) == 0  # a remote snapshotter unpacks for itself
    assert "up to 3 layers at once, each prepared without its parent" in plan.how("overlayfs", 3)
    assert "as soon as its parent is ready" in plan.how("overlayfs", 0)
    stream = plan_transfer(mode="parallel-stream", raw_config=raw, snapshotter="overlayfs", host=HOST_2)
    assert "as their bytes arrive, up to 3 layers at once" in stream.how("overlayfs", 3)
    assert "once its parent is committed" in stream.how("overlayfs", 0)
    off = plan_transfer(mode="parallel", raw_config={"pull": {"max_concurrent_unpacks": 0}},
                        snapshotter="overlayfs", host=HOST_2)
    assert off.unpacks_at_once("overlayfs", ("rebase",)) == 0  # 0: each layer on its committed parent


def test_unpack_concurrency_defaults_to_the_cpus_up_to_four_and_is_checked() -> None:
    assert [default_transfer_settings(c).max_concurrent_unpacks for c in (1, 2, 3, 8, 64)] == [1, 2, 3, 4, 4]
    for bad in (-1, "2", True, 1.5):
        with pytest.raises(ConfigError, match=r"pull\.max_concurrent_unpacks"):
            resolve_transfer_settings(cpus=2, memory_bytes=None, raw_config={"pull": {"max_concurrent_unpacks": bad}})


def test_auto_leaves_the_unpacking_to_containerd_where_the_snapshotter_can_rebase() -> None:
    auto = plan_transfer(mode="auto", raw_config={}, snapshotter="overlayfs", host=HOST_2)
    assert auto.mode == "parallel-stream" and auto.asked == "auto"
    settled = auto.settle("overlayfs", ("rebase",))  # containerd 2.x's overlayfs
    assert settled.mode == "parallel" and settled.settings == auto.settings and settled.chunked
    assert "2 CPUs" in settled.reasons[-2] and "overlayfs can rebase, so containerd unpacks" in settled.reasons[-1]
    assert not any("as its bytes arrive" in reason for reason in settled.reasons[:-1])
    assert auto.settle("overlayfs", ()) is auto  # containerd 1.6: socirun's applier, as auto picked
    assert auto.settle("soci", ("rebase",)) is auto  # a remote snapshotter's layers are never streamed anyway
    lazy = plan_transfer(mode="lazy", raw_config={}, snapshotter="overlayfs", host=HOST_2)
    assert lazy.settle("overlayfs", ("rebase",)).mode == "parallel"  # lazy falls back as auto does
    for named in ("parallel-stream", "parallel", "standard"):  # a mode the user names is never changed
        asked = plan_transfer(mode=named, raw_config={}, snapshotter="overlayfs", host=HOST_2)
        assert asked.settle("overlayfs", ("rebase",)) is asked
    # Discarding needs socirun's applier (and stream + discard is the fastest pull there too).
    discarding = plan_transfer(mode="auto", raw_config={}, snapshotter="overlayfs", host=HOST_2,
                               discard_unpacked_layers=True)
    assert discarding.settle("overlayfs", ("rebase",)) is discarding
