"""--pull-mode parallel-stream: the pure pieces (which layers stream live, the bounded tap, the mode decision)."""

from __future__ import annotations

import asyncio

import pytest

from socirun.decide.facts import PULL_MODES, HostProfile, PlanFacts, UserChoice
from socirun.decide.plan import decide
from socirun.decide.transfer import choose_overlay_transfer, plan_transfer
from socirun.pull.stream import TAP_DEPTH, ApplyState, LayerTap, TapFailedError, stream_live, streaming_window

HOST = HostProfile(cpus=8, memory_bytes=32 << 30, nic_speed_mbps=None, nic_name="", free_disk_bytes=None,
                   disk_path="/")


def test_the_head_of_the_apply_order_streams_live_under_any_schedule() -> None:
    states: list[ApplyState] = ["committed", "committed", "waiting", "waiting"]
    assert stream_live(2, states, in_order=False, resumed=False, supported=True)
    assert stream_live(0, [], in_order=False, resumed=False, supported=True)


def test_a_layer_behind_live_layers_waits_its_turn_only_with_the_in_order_schedule() -> None:
    states: list[ApplyState] = ["committed", "live", "waiting"]
    assert stream_live(2, states, in_order=True, resumed=False, supported=True)
    # Another schedule could hand this layer the whole window while the live layer still needs slots.
    assert not stream_live(2, states, in_order=False, resumed=False, supported=True)


def test_a_layer_behind_a_stored_layer_is_only_stored() -> None:
    assert not stream_live(2, ["live", "stored", "waiting"], in_order=True, resumed=False, supported=True)


def test_with_parallel_unpack_a_layer_behind_a_stored_layer_streams_under_the_in_order_schedule() -> None:
    # Its applier needs an unpack slot, never the stored layer's Diff.Apply (it is prepared without a parent).
    states: list[ApplyState] = ["live", "stored", "waiting"]
    assert stream_live(2, states, in_order=True, resumed=False, supported=True, rebase=True)
    assert not stream_live(2, states, in_order=False, resumed=False, supported=True, rebase=True)
    assert not stream_live(2, states, in_order=True, resumed=True, supported=True, rebase=True)


def test_an_earlier_layer_that_has_not_written_yet_does_not_stop_a_live_one() -> None:
    # Small layers finish their first chunk in any order: the in-order schedule still makes waiting safe.
    assert stream_live(2, ["live", "waiting", "waiting"], in_order=True, resumed=False, supported=True)
    assert not stream_live(2, ["live", "waiting", "waiting"], in_order=False, resumed=False, supported=True)


def test_a_resumed_ingest_or_an_unsupported_layer_is_only_stored() -> None:
    assert not stream_live(0, [], in_order=True, resumed=True, supported=True)
    assert not stream_live(0, [], in_order=True, resumed=False, supported=False)


async def test_a_tap_queues_nothing_before_its_applier_reads() -> None:
    # A live layer waiting for its turn must not hold chunks beyond the download's window.
    tap = LayerTap(depth=2)
    first = asyncio.ensure_future(tap.put(b"a"))
    await asyncio.sleep(0.01)
    assert not first.done()
    reader = tap.chunks()
    assert await asyncio.wait_for(anext(reader), 1) == b"a"
    await asyncio.wait_for(first, 1)


async def test_the_tap_holds_back_the_writer_when_the_applier_is_behind() -> None:
    tap = LayerTap(depth=2)
    reader = tap.chunks()
    first = asyncio.ensure_future(anext(reader))
    await asyncio.sleep(0)
    await tap.put(b"a")
    assert await asyncio.wait_for(first, 1) == b"a"
    await tap.put(b"a2")
    await tap.put(b"b")
    third = asyncio.ensure_future(tap.put(b"c"))
    await asyncio.sleep(0.01)
    assert not third.done()  # bounded: the third chunk waits for the applier
    assert await anext(reader) == b"a2"
    await asyncio.wait_for(third, 1)

    async def rest() -> list[bytes]:
        return [chunk async for chunk in reader]

    collected = asyncio.ensure_future(rest())
    await asyncio.wait_for(tap.end(), 1)
    assert await asyncio.wait_for(collected, 1) == [b"b", b"c"]


async def test_a_failed_download_stops_the_applier_even_with_a_full_queue() -> None:
    tap = LayerTap(depth=1)
    reader = tap.chunks()
    first = asyncio.ensure_future(anext(reader))
    await asyncio.sleep(0)
    await tap.put(b"a")
    assert await asyncio.wait_for(first, 1) == b"a"
    await tap.put(b"b")  # the queue is full now
    tap.fail()
    with pytest.raises(TapFailedError):
        await asyncio.wait_for(anext(reader), 1)


async def test_a_detached_tap_frees_a_blocked_writer_and_drops_what_follows() -> None:
    tap = LayerTap(depth=1)
    blocked = asyncio.ensure_future(tap.put(b"b"))
    await asyncio.sleep(0.01)
    assert not blocked.done()
    tap.detach()
    await asyncio.wait_for(blocked, 1)
    for _ in range(5):
        await asyncio.wait_for(tap.put(b"x" * 10), 1)  # never blocks once detached
    await asyncio.wait_for(tap.end(), 1)


def test_parallel_stream_is_a_mode_and_what_auto_picks_for_a_local_snapshotter() -> None:
    assert "parallel-stream" in PULL_MODES
    chosen = choose_overlay_transfer(HOST, requested="parallel-stream")
    assert chosen.mode == "parallel-stream"
    assert "as its bytes arrive" in chosen.reasons[0]
    # auto picks it (measured faster than plain parallel on both containerds) and says how to get the other.
    auto = choose_overlay_transfer(HOST, requested="auto")
    assert auto.mode == "parallel-stream" and "--pull-mode parallel leaves the unpacking" in auto.reasons[-1]
    # Plain parallel (containerd unpacks from the stored blob) only when asked for.
    assert choose_overlay_transfer(HOST, requested="parallel").mode == "parallel"


def test_the_plan_says_who_unpacks_in_parallel_stream_mode() -> None:
    plan = plan_transfer(mode="parallel-stream", raw_config={}, snapshotter="overlayfs", host=HOST)
    assert plan.chunked and plan.connections == plan.settings.max_concurrent_downloads
    assert "socirun's own applier" in plan.how("overlayfs")
    # A remote snapshotter's layers are not streamed: the sentence says containerd unpacks them.
    assert "containerd unpacks each layer into soci" in plan.how("soci")


@pytest.mark.parametrize("soci", ["up", "absent"])
def test_asking_for_parallel_stream_downloads_with_socirun_even_with_a_soci_index(soci: str) -> None:
    # Before parallel-stream was a mode the plan knew, an image with a usable SOCI index went lazy.
    from tests.unit.test_plan import DEFAULTS, MID, NO_SOCI, SOCI_UP, V2, image

    transfer = plan_transfer(mode="parallel-stream", raw_config={}, snapshotter="overlayfs", host=MID)
    facts = PlanFacts(SOCI_UP if soci == "up" else NO_SOCI, DEFAULTS, image(v2=V2), MID,
                      UserChoice(pull_mode="parallel-stream"), transfer)
    plan = decide(facts)
    assert (plan.snapshotter, plan.mode) == ("overlayfs", "parallel")
    assert {layer.mode for layer in plan.layers} == {"standard"}
    assert any("--pull-mode parallel-stream was chosen" in r for r in plan.reasons)
    assert any("socirun's own applier" in r for r in plan.reasons)


def test_a_streaming_pull_counts_the_appliers_chunks_against_the_window() -> None:
    """The tap's queued chunks and the one the applier reads are held beyond the download's window: the window
    gives them up, so the memory bound is the configured one (16 × 8 MiB on a 2-CPU host)."""
    assert streaming_window(16, 8) == 16 - TAP_DEPTH - 1
    assert streaming_window(16, 8) + TAP_DEPTH + 1 == 16
    assert streaming_window(8, 8) == 8  # never below one chunk per connection
    # Parallel unpack: every applier's chunks come out of the window.
    assert streaming_window(16, 8, appliers=2) == 16 - 2 * (TAP_DEPTH + 1)
    assert streaming_window(16, 8, appliers=4) == 8
