"""An event stream whose outside strings carry terminal escapes, shared by the terminal-safety tests of every face:
the image-chosen file names, the platform, the registry's and SOCI's words, and an error message hold an ESC
(CSI and OSC sequences), a C1 CSI (U+009B), a bidi override and a BEL."""

from __future__ import annotations

from socirun import events as ev
from tests.support.streams import GZ, L1, L2, T0

CSI_CLEAR = "\x1b[2J\x1b[H"  # clear the screen, cursor home
OSC_TITLE = "\x1b]0;pwned\x07"  # retitle the window
OSC_LINK = "\x1b]8;;http://evil.invalid\x1b\\click\x1b]8;;\x1b\\"  # a hyperlink that hides its target
C1_CSI = "\x9b31m"  # a one-character CSI: red on terminals that take 8-bit controls
RLO = "\u202e"  # right-to-left override: "txt.exe" reads as "exe.txt"
HOSTILE = CSI_CLEAR + OSC_TITLE + OSC_LINK + C1_CSI + RLO + "\u2066" + "\x7f\r"

REF = "127.0.0.1:5000/demo/evil:latest"
PLATFORM = "linux/amd64" + HOSTILE
FILE = "/etc/" + HOSTILE + "exe.txt"
ERROR = "denied: " + HOSTILE + "the registry says no"


def hostile_pull(*, with_error: bool = True) -> list[ev.Event]:
    """A lazy pull and run whose every outside string is hostile; ends in an error when `with_error`."""
    out: list[ev.Event] = [
        ev.Resolving(reference=REF, expanded_from="evil" + HOSTILE, time=T0),
        ev.ImageResolved(reference=REF + HOSTILE, digest="sha256:" + HOSTILE, manifest_digest="sha256:" + HOSTILE,
                         platform=PLATFORM, layer_count=2, total_size=60_000_000, time=T0 + 0.2),
        ev.PlanMade(mode="lazy" + HOSTILE, snapshotter="soci" + HOSTILE, reasons=("because " + HOSTILE,),
                    time=T0 + 0.2),
        ev.LayerPlanned(index=0, digest=L1, media_type=GZ, size=10_000_000, mode="standard", time=T0 + 0.2),
        # A recording may name any mode or state: the faces show what they are given.
        ev.LayerPlanned(index=1, digest="sha256:" + HOSTILE, media_type=GZ + HOSTILE, size=50_000_000,
                        mode="lazy" + HOSTILE, time=T0 + 0.2),  # type: ignore[arg-type]
        ev.LayerStateChanged(state="downloading" + HOSTILE,  # type: ignore[arg-type]
                             digest=L1, detail=HOSTILE, time=T0 + 0.3),
        ev.LayerStateChanged(digest="sha256:" + HOSTILE, state="done", detail=HOSTILE, time=T0 + 0.3),
        ev.ObservationSources(live=("state files: " + HOSTILE,), missing=("metrics: " + HOSTILE,), time=T0 + 0.4),
        ev.LazyLayerStats(digest="sha256:" + HOSTILE, fetched=10, size=50_000_000, source="state file" + HOSTILE,
                          error=HOSTILE, time=T0 + 0.5),
        ev.WarningMessage(message="careful: " + HOSTILE, time=T0 + 0.5),
        ev.FetchLogEntry(reason="read", path=FILE, requests=1, time=T0 + 0.6),
        ev.FetchLogEntry(reason="on-demand" + HOSTILE, layer_digest=L2, offset=0, length=4096, path=FILE,
                         time=T0 + 0.7),
        ev.LayerStateChanged(digest=L1, state="done", time=T0 + 1.0),
        ev.PullFinished(reference=REF + HOSTILE, manifest_digest="sha256:" + HOSTILE, snapshotter="soci" + HOSTILE,
                        mode="lazy" + HOSTILE, fetched=10_000_000, total_size=60_000_000, elapsed=1.0, time=T0 + 1.0),
        ev.ContainerCreated(container_id=HOSTILE, name=HOSTILE, time=T0 + 1.1),
        ev.ContainerStarted(container_id=HOSTILE, pid=1, since_command_start=1.2, time=T0 + 1.2),
        ev.ContainerExited(container_id=HOSTILE, exit_code=0, time=T0 + 2.0),
    ]
    if with_error:
        out.append(ev.Error(message=ERROR, exit_code=125, time=T0 + 2.1))
    return out


def unsafe_characters(text: str) -> list[str]:
    """The characters in `text` a terminal would act on instead of show (an empty list when it is safe to print;
    newlines are allowed, as the faces write lines)."""
    return sorted({c for c in text if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F
                   or 0x202A <= ord(c) <= 0x202E or 0x2066 <= ord(c) <= 0x2069})
