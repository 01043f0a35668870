"""SVG snapshots of the TUI at 80x24 and 160x48, fixed clock, from replayed streams: synthetic ones, and a real
lazy run against the real soci-snapshotter (tests/support/recordings/).

Update after a deliberate change with `pytest tests/tui --snapshot-update` and look at the SVGs in snapshots/.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support import streams
from tests.support.tui import app_with

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((160, 48), id="160x48")]


@pytest.mark.parametrize("size", SIZES)
def test_standard_mid_pull(snap_compare: Callable[..., bool], size: tuple[int, int]) -> None:
    assert snap_compare(app_with(streams.until(streams.standard_pull(), 5.3)), terminal_size=size)


@pytest.mark.parametrize("size", SIZES)
def test_lazy_mid_pull_with_fetch_log(snap_compare: Callable[..., bool], size: tuple[int, int]) -> None:
    assert snap_compare(app_with(streams.until(streams.lazy_run(), 1.9)), terminal_size=size)


@pytest.mark.parametrize("size", SIZES)
def test_finished(snap_compare: Callable[..., bool], size: tuple[int, int]) -> None:
    assert snap_compare(app_with(streams.standard_pull()), terminal_size=size)


@pytest.mark.parametrize("size", SIZES)
def test_lazy_running_container(snap_compare: Callable[..., bool], size: tuple[int, int]) -> None:
    assert snap_compare(app_with(streams.until(streams.lazy_run(), 6.0), detach=True), terminal_size=size)


@pytest.mark.parametrize("size", SIZES)
def test_error(snap_compare: Callable[..., bool], size: tuple[int, int]) -> None:
    assert snap_compare(app_with(streams.failed_pull()), terminal_size=size)


@pytest.mark.parametrize("size", SIZES)
def test_real_lazy_run_reading_files(snap_compare: Callable[..., bool], size: tuple[int, int]) -> None:
    """A real lazy run, 1.2 s in: every layer mounted, the container reading, SOCI's figures from its metrics."""
    stream = streams.until(streams.recorded("real_lazy_run"), 1.2)
    assert snap_compare(app_with(stream, detach=True), terminal_size=size)


@pytest.mark.parametrize("size", SIZES)
def test_real_lazy_run_exited(snap_compare: Callable[..., bool], size: tuple[int, int]) -> None:
    """The same run once the container exited: the files it read and what SOCI fetched for them."""
    assert snap_compare(app_with(streams.recorded("real_lazy_run"), detach=True), terminal_size=size)
