"""Pure formatting for the TUI: model → rich Text cells. No Textual here, so it is cheap to test.

Every string that came from outside (references, digests, platforms, reasons, SOCI's sources and paths, states
and modes named in events or recordings) passes through `safe` here: Rich and Textual keep an ESC or a bidi
override and hand it to the terminal."""

from __future__ import annotations

from rich.text import Text

from socirun import events as ev
from socirun.text import terminal_safe as safe
from socirun.ui.model import LayerRow, PullModel, human_bytes, human_duration

FILL = "█"
PARTIAL = " ▏▎▍▌▋▊▉"
EMPTY = "░"

GLYPHS = {
    "waiting": "·",
    "downloading": "↓",
    "downloaded": "▪",
    "unpacking": "↻",
    "done": "✔",
    "exists": "=",
    "failed": "✖",
}
STATE_STYLE = {
    "waiting": "dim",
    "downloading": "cyan",
    "downloaded": "cyan",
    "unpacking": "yellow",
    "done": "green",
    "exists": "green",
    "failed": "bold red",
}
BADGE_STYLE = {"LAZY": "bold black on magenta", "PARALLEL": "bold black on cyan", "STANDARD": "bold black on white"}
PHASE_STYLE = {"failed": "bold red", "interrupted": "bold yellow", "exited": "bold", "running": "bold green",
               "pulled": "bold green"}

MEDIA_SHORT = (("zstd", "zstd"), ("gzip", "gzip"), ("soci", "soci"))


def bar(fraction: float, width: int, style: str = "cyan") -> Text:
    """A block bar with eighth-cell resolution; the empty part stays visible so rows keep their shape."""
    fraction = min(max(fraction, 0.0), 1.0)
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    text = Text(FILL * full, style=style)
    rest = width - full
    if part and rest > 0:
        text.append(PARTIAL[part], style=style)
        rest -= 1
    text.append(EMPTY * rest, style="grey30")
    return text


def media_short(media_type: str) -> str:
    for needle, label in MEDIA_SHORT:
        if needle in media_type:
            return label
    return "tar"


def layer_glyph(row: LayerRow) -> Text:
    glyph = GLYPHS.get(row.state, "?")
    if row.mode == "lazy" and row.state != "failed":
        glyph = "◐"  # mounted (or being mounted) without its bytes: they arrive on demand
    return Text(glyph, style=STATE_STYLE.get(row.state, ""))


def layer_mode(row: LayerRow) -> str:
    return {"snapshotter": "fetched by snapshotter"}.get(row.mode) or safe(row.mode)


def layer_fraction(row: LayerRow) -> float:
    if row.mode == "lazy":
        return row.lazy_fetched / row.lazy_size if row.lazy_size else 0.0
    if row.state in ("done", "exists"):
        return 1.0
    return row.downloaded / row.size if row.size else 0.0


def layer_bytes(row: LayerRow) -> str:
    if row.state == "exists":
        return f"cached {human_bytes(row.size)}"
    if row.mode == "lazy" and row.lazy is not None:
        return f"{human_bytes(row.lazy_fetched)}/{human_bytes(row.lazy_size)}"
    if row.mode == "lazy":
        return f"{human_bytes(row.lazy_fetched)} lazy"
    if row.state == "done":
        return human_bytes(row.size)
    return f"{human_bytes(row.downloaded)}/{human_bytes(row.size)}"


def layer_rate(row: LayerRow) -> str:
    if row.mode == "lazy" or row.state not in ("downloading", "downloaded"):
        return ""
    return f"{human_bytes(row.rate())}/s"


def layer_eta(row: LayerRow) -> str:
    if row.mode == "lazy" or row.state != "downloading":
        return ""
    return human_duration(row.eta())


def layer_state(row: LayerRow) -> Text:
    word = "cached" if row.state == "exists" else safe(row.state)
    return Text(word, style=STATE_STYLE.get(row.state, ""))


def bar_style(row: LayerRow) -> str:
    if row.state == "failed":
        return "red"
    if row.state in ("done", "exists"):
        return "green"
    return "magenta" if row.mode == "lazy" else "cyan"


def summary_text(m: PullModel, width: int, now: float | None = None) -> Text:
    """The pinned summary: one bar by bytes (never by layer count), rate, ETA, counts; lazy: fetched / size.
    `now` (in the events' clock) lets a layer's unpacking time advance between events."""
    done, total = m.counts()
    have, need = m.bytes_done(), m.total_size
    if m.is_lazy():
        # Lazy layers are mounted, not downloaded: the bar is what must arrive before the container can start.
        eager = [r for r in m.layers.values() if r.mode != "lazy"]
        need = sum(r.size for r in eager)
        have = sum(r.size if r.state in ("done", "exists") else r.downloaded for r in eager)
    fraction = 1.0 if m.finished is not None or need == 0 else have / need
    tail = f" {fraction * 100:3.0f}%  {human_bytes(have)}/{human_bytes(need)}"
    extra = ""
    if m.finished is None and m.error is None:
        rate = m.rate()
        eta = 0.0 if have >= need else ((need - have) / rate if rate > 0 else None)
        extra = f"  {human_bytes(rate)}/s  eta {human_duration(eta)}"
        if not m.is_lazy():  # the ETA includes the unpacking still ahead, which has its own progress (issue 13)
            eta_text, unpack = m.eta_text(now), m.unpack_text(now)
            extra = "".join(f"  {part}" for part in (f"{human_bytes(rate)}/s", eta_text, unpack) if part)
    counts = f"  [{done}/{total} layers]"
    bar_width = max(8, width - len(tail) - len(extra) - len(counts) - 2)
    text = bar(fraction, bar_width, "green" if m.finished is not None else "cyan")
    text.append(tail)
    text.append(extra, style="bold")
    text.append(counts, style="dim")
    if m.is_lazy():
        text.append("\n")
        text.append_text(lazy_line(m, width))
    text.no_wrap, text.overflow = True, "ellipsis"
    return text


def lazy_line(m: PullModel, width: int = 200) -> Text:
    """SOCI's figures for the lazy layers, each with its source; a missing source is said, not guessed around.
    Below `width` the words get shorter (and only SOCI's own bytes are shown) rather than the counts cut off."""
    source = safe(m.lazy_source())
    counts = m.span_counts()
    files, requests = m.read_totals()
    origin = f"SOCI {'metrics' if source == 'metrics' else source + 's'}" if source else "no figures from SOCI yet"
    if m.bytes_moved() > 0:
        origin = f"socirun's downloads + {origin}"
    lazy_rows = [r for r in m.layers.values() if r.mode == "lazy"]
    lazy_held = sum(r.lazy_fetched for r in lazy_rows)
    lazy_size = sum(r.lazy_size for r in lazy_rows)
    for short in (False, True):
        if not short:
            parts: list[tuple[str, str]] = [
                ("dim", "fetched so far "),
                ("bold magenta", f"{human_bytes(m.fetched_so_far())} / {human_bytes(m.total_size)} image size"),
                ("dim", f" ({origin})"),
            ]
        else:
            parts = [("dim", "lazy "), ("bold magenta", f"{human_bytes(lazy_held)} / {human_bytes(lazy_size)}"),
                     ("dim", f" ({source or 'nothing from SOCI yet'})")]
        if counts is not None:
            parts.append(("dim", f"  spans on demand {counts[0]}, background {counts[1]}" if not short
                          else f"  spans {counts[0]} on demand, {counts[1]} bg"))
        elif source:
            parts.append(("dim", "  span counts need SOCI's metrics (p)" if not short
                          else "  span counts need metrics (p)"))
        if files:
            parts.append(("dim", f"  read {files} files ({requests} requests)" if not short
                          else f"  read {files} files"))
        if sum(len(t) for _, t in parts) <= width:
            break
    text = Text(no_wrap=True, overflow="ellipsis")
    for style, part in parts:
        text.append(part, style=style)
    return text


def header_text(m: PullModel, elapsed: float) -> Text:
    """Two lines, never wrapped: badge, phase, elapsed, snapshotter, reference; then digest, platform, container.
    The short, always-useful facts come first so a narrow terminal cuts only the end of the reference."""
    text = Text(no_wrap=True, overflow="ellipsis")
    badge = m.mode_badge()
    if badge:
        text.append(f" {badge} ", style=BADGE_STYLE.get(badge, "reverse"))
        text.append(" ")
    phase = m.phase()
    text.append(phase, style=PHASE_STYLE.get(phase, "bold cyan"))
    if m.exit_code is not None:
        text.append(f" (exit code {m.exit_code})", style="bold")
    text.append(f" {human_duration(elapsed)}", style="dim")
    if m.snapshotter:
        text.append(f"  {safe(m.snapshotter)}", style="dim")
    text.append("  ")
    text.append(safe(m.reference) or "…", style="bold")
    text.append("\n")
    if m.digest:
        text.append(safe(m.digest), style="dim")
        if m.platform:
            text.append(f"  {safe(m.platform)}", style="dim")
    if m.container_id:
        text.append(f"  container {safe(m.container_id[:12])}", style="dim")
    return text


def plan_text(m: PullModel) -> Text:
    text = Text()
    if not m.mode:
        text.append("No plan yet: the image is still being resolved.")
        return text
    text.append(f"Mode: {safe(m.mode)}  (snapshotter {safe(m.snapshotter)})\n\n", style="bold")
    for reason in m.reasons or ("no reasons were given",):
        text.append(f"• {safe(reason)}\n")
    if m.sources is not None:
        text.append("\nWhat SOCI shows of its lazy layers\n", style="bold")
        for live in m.sources.live:
            text.append(f"• {safe(live)}\n")
        for missing in m.sources.missing:
            text.append(f"• {safe(missing)}\n", style="yellow")
    return text


def fetch_line(started: float | None, event: ev.FetchLogEntry) -> str:
    """One fetch-log line, time relative to the start of the pull (deterministic for replays): a file read
    ("read" and its path; SOCI does not say which layer served it), or, in older recordings, a byte range."""
    at = event.time - started if started is not None else 0.0
    if event.reason == "read":
        return safe(f"+{at:7.3f}s read {event.path}")
    short = event.layer_digest.split(":", 1)[-1][:12]
    where = f" {event.path}" if event.path else ""
    length, offset = human_bytes(event.length), human_bytes(event.offset)
    return safe(f"+{at:7.3f}s {short} {event.reason:<10} {length:>9} @{offset}{where}")


def missing_line(sentence: str) -> str:
    """A missing source as one short log line: what is not shown (the plan view, p, has the whole sentence)."""
    return safe(f"! {sentence.split(': ', 1)[0]} (p says how to turn it on)")


def summary_lines(m: PullModel) -> list[str]:
    """What stays on stderr when the TUI hands the terminal to a started container."""
    from socirun.ui.plain import summary_line

    lines = [summary_line(m, m.finished)] if m.finished is not None else []
    if m.container_started is not None:
        after = human_duration(m.container_started.since_command_start)
        lines.append(safe(f"container {m.container_started.container_id[:12]} started after {after}"))
    return lines


def recap_lines(m: PullModel) -> list[str]:
    """The final state, left in the scrollback after the TUI closes: one line per layer, then the summary."""
    lines = []
    for row in m.layers.values():
        word = "cached" if row.state == "exists" else row.state
        held = ""
        if row.lazy is not None:
            held = f"; SOCI holds {human_bytes(row.lazy.fetched)} [{row.lazy.source}]"
        lines.append(safe(f"{row.short}: {word} ({human_bytes(row.size)}, {layer_mode(row)}{held})"))
    return lines + summary_lines(m)
