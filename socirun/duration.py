"""Go's duration syntax (https://pkg.go.dev/time#ParseDuration), which docker's flags take: `--since 1h30m`,
`--health-timeout 500ms`, and socirun's `--ready-timeout 2m`. Pure."""

from __future__ import annotations

import re

_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")  # Go takes both micro signs
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
# A Go duration is an int64 of nanoseconds: anything longer is refused ("invalid duration").
_MAX_S = (2**63 - 1) / 1e9


def parse_go_duration(text: str) -> float | None:
    """Seconds of `text` read as Go's time.ParseDuration reads it ("1h30m", "-1.5s", ".5ms", "0"), or None
    where Go refuses it (no unit, an unknown unit, spaces, out of range)."""
    sign = -1.0 if text.startswith("-") else 1.0
    body = text[1:] if text[:1] in "+-" else text
    if body == "0":
        return 0.0
    pos, total = 0, 0.0
    for match in _PART.finditer(body):
        number = match.group(1)
        if match.start() != pos or number in ("", "."):
            return None
        total += float(number) * _UNIT_S[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(body) or total > _MAX_S:
        return None
    return sign * total
