"""Go's duration syntax, as time.ParseDuration reads it: the cases of Go's own time package tests
(src/time/time_test.go, parseDurationTests and parseDurationErrorTests), less the ones a float cannot tell apart."""

from __future__ import annotations

import pytest

from socirun.commands.containers import parse_since
from socirun.duration import parse_go_duration
from socirun.runtime.readiness import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0), ("5s", 5.0), ("30s", 30.0), ("1478s", 1478.0), ("-5s", -5.0), ("+5s", 5.0), ("-0", 0.0),
        ("+0", 0.0), ("5.0s", 5.0), ("5.6s", 5.6), ("5.s", 5.0), (".5s", 0.5), ("1.004s", 1.004),
        ("100.00100s", 100.001), ("10ns", 10e-9), ("11us", 11e-6), ("12µs", 12e-6), ("12μs", 12e-6),
        ("13ms", 0.013), ("15m", 900.0), ("16h", 57600.0), ("3h30m", 12600.0), ("10.5s4m", 250.5),
        ("-2m3.4s", -123.4), ("1h2m3s4ms5us6ns", 3723.004005006), ("39h9m14.425s", 140_954.425),
    ],
)  # fmt: skip
def test_what_go_accepts(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds, abs=1e-12)


@pytest.mark.parametrize("text", ["", "3", "-", "s", ".", "-.", ".s", "+.s", "1d", "5 s", " 5s", "5s ", "1h-5m",
                                  "9223372037s", "1.5.5s", "5S"])  # fmt: skip
def test_what_go_refuses(text: str) -> None:
    assert parse_go_duration(text) is None


def test_ready_timeout_takes_bare_seconds_too() -> None:
    assert parse_duration(" 12 ") == 12.0
    assert parse_duration("1m30s") == 90.0
    assert parse_duration("12 parsecs") is None


def test_logs_since_reads_durations_back_from_now_and_zero_as_the_epoch() -> None:
    assert parse_since("1h2m3s4ms", 10_000.0) == pytest.approx(10_000.0 - 3723.004)
    assert parse_since(".5s", 100.0) == pytest.approx(99.5)  # the old parser wanted a leading digit
    assert parse_since("12µs", 1.0) == pytest.approx(1.0 - 12e-6)
    assert parse_since("0", 10_000.0) == 0.0  # docker: "0" is a timestamp
