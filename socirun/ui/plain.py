"""Plain face: one line per state change, a heartbeat every few seconds, one summary line. No control codes:
every line is made terminal-safe as it is written (it quotes references, platforms, reasons, SOCI's paths and
messages, and the file names an image chose), and the helpers other faces reuse return safe lines too."""

from __future__ import annotations

from typing import TextIO

from socirun import events as ev
from socirun.text import terminal_safe
from socirun.ui.model import PullModel, human_bytes, human_duration, short_digest

HEARTBEAT_S = 5.0
STATS_EVERY_S = 5.0  # a lazy layer's byte figure alone is repeated at most this often


class PlainRenderer:
    def __init__(self, out: TextIO, *, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.out = out
        self.model = PullModel()
        self.heartbeat_s = heartbeat_s
        self._last_beat: float | None = None
        self._stats_said: dict[str, tuple[float, ev.LazyLayerStats]] = {}

    def _line(self, text: str) -> None:
        self.out.write(terminal_safe(text) + "\n")
        self.out.flush()

    def handle(self, event: ev.Event) -> None:
        self.model.apply(event)
        if self._last_beat is None:
            self._last_beat = event.time
        m = self.model
        match event:
            case ev.Resolving():
                if event.expanded_from:
                    self._line(alias_line(event))
                self._line(f"resolving {event.reference}")
            case ev.ImageResolved():
                self._line(
                    f"resolved {event.reference} to {event.manifest_digest} ({event.platform}): "
                    f"{event.layer_count} layers, {human_bytes(event.total_size)}"
                )
            case ev.PlanMade():
                self._line(f"plan: {event.mode} pull, snapshotter {event.snapshotter}")
                for reason in event.reasons:
                    self._line(f"  - {reason}")
            case ev.LayerStateChanged():
                row = m.layers.get(event.digest)
                size = f" ({human_bytes(row.size)})" if row is not None else ""
                took = ""
                if row is not None and event.state == "done" and row.started is not None:
                    took = f" in {human_duration(event.time - row.started)}"
                detail = f": {event.detail}" if event.detail else ""
                self._line(f"{short_digest(event.digest)}: {event.state}{size}{took}{detail}")
            case ev.FetchLogEntry(reason="read"):
                if m.last_read_new:  # later entries for the path only update its count
                    self._line(read_line(event))
            case ev.FetchLogEntry():
                self._line(
                    f"{short_digest(event.layer_digest)}: fetched {human_bytes(event.length)} "
                    f"at {human_bytes(event.offset)} ({event.reason}){' ' + event.path if event.path else ''}"
                )
            case ev.LazyLayerStats():
                if self._stats_worth_a_line(event):
                    self._line(lazy_stats_line(event))
            case ev.ObservationSources():
                self._line(f"observing SOCI through {'; '.join(event.live) or 'nothing'}")
                for sentence in event.missing:
                    self._line(f"  {sentence}")
            case ev.WarningMessage():
                self._line(f"warning: {event.message}")
            case ev.PullFinished():
                self._line(summary_line(m, event))
            case ev.ContainerStarted():
                after = human_duration(event.since_command_start)
                self._line(f"container {event.container_id[:12]} started after {after}")
            case ev.ContainerExited():
                self._lazy_recap()
                self._line(f"container {event.container_id[:12]} exited with code {event.exit_code}")
            case ev.Error():
                pass  # the CLI's single error handler prints the sentence
            case _:
                pass

    def _stats_worth_a_line(self, event: ev.LazyLayerStats) -> bool:
        """The first figures for a layer, a change of its span fetch counts, its completion or an error always;
        a change of bytes alone (the background fill) at most every STATS_EVERY_S."""
        said = self._stats_said.get(event.digest)
        if said is None:
            worth = True
        else:
            at, before = said
            worth = (
                event.on_demand_fetches != before.on_demand_fetches
                or event.complete != before.complete
                or event.error != before.error
                or event.source != before.source
                or (event.fetched != before.fetched and event.time - at >= STATS_EVERY_S)
            )
        if worth:
            self._stats_said[event.digest] = (event.time, event)
        return worth

    def _lazy_recap(self) -> None:
        """When the container exits: each lazy layer's latest figures not yet printed, and the reads."""
        for stats in self.model.lazy_stats():
            said = self._stats_said.get(stats.digest)
            if said is None or said[1] != stats:
                self._stats_said[stats.digest] = (stats.time, stats)
                self._line(lazy_stats_line(stats))
        files, requests = self.model.read_totals()
        if files:
            self._line(f"read {files} files through SOCI's lazy mounts ({requests} FUSE read requests)")

    def tick(self, now: float) -> None:
        """Called about once a second; prints a heartbeat every `heartbeat_s` while a pull is in flight."""
        m = self.model
        if m.started is None or m.finished is not None or m.error is not None or not m.layers:
            return
        if self._last_beat is not None and now - self._last_beat < self.heartbeat_s:
            return
        self._last_beat = now
        self._line(heartbeat_line(m, now))


def alias_line(event: ev.Resolving) -> str:
    return terminal_safe(f"short name {event.expanded_from!r} expanded to {event.reference}")


def read_line(event: ev.FetchLogEntry) -> str:
    return terminal_safe(f"read {event.path}")


def lazy_stats_line(s: ev.LazyLayerStats) -> str:
    """One lazy layer's figures, each as SOCI gave it, with where they come from."""
    pct = f" ({s.fetched * 100 / s.size:.0f}%)" if s.size else ""
    text = f"{short_digest(s.digest)}: SOCI holds {human_bytes(s.fetched)} of {human_bytes(s.size)}{pct}"
    if s.on_demand_fetches is not None:
        text += f"; spans fetched on demand {s.on_demand_fetches}, background spans {s.background_spans or 0}"
        if s.background_failures:
            text += f" ({s.background_failures} failed)"
    text += f" [{s.source}]"
    if s.on_demand_fetches is None:
        text += " (span counts need SOCI's metrics)"
    if s.complete:
        text += "; complete"
    if s.error:
        text += f"; error: {s.error}"
    return terminal_safe(text)


def heartbeat_line(m: PullModel, now: float) -> str:
    done, total = m.counts()
    elapsed = now - m.started if m.started is not None else 0.0
    eta = m.eta_text(now)  # includes the unpacking still ahead; "" when only unpacking of unknown length is left
    unpack = m.unpack_text(now)
    return terminal_safe(
        f"pulling {m.reference} {m.fraction() * 100:.0f}% "
        f"{human_bytes(m.bytes_done())}/{human_bytes(m.total_size)} "
        f"{human_bytes(m.rate())}/s {eta + ' ' if eta else ''}"
        f"elapsed {human_duration(elapsed)} [{done}/{total} layers]{'; ' + unpack if unpack else ''}"
    )


def summary_line(m: PullModel, event: ev.PullFinished) -> str:
    cached = sum(1 for r in m.layers.values() if r.state == "exists")
    rate = event.fetched / event.elapsed if event.elapsed > 0 else 0.0
    return terminal_safe(
        f"pulled {event.reference} ({event.mode}, {event.snapshotter}): fetched "
        f"{human_bytes(event.fetched)} of {human_bytes(event.total_size)} in "
        f"{human_duration(event.elapsed)} ({human_bytes(rate)}/s); {len(m.layers)} layers, {cached} cached"
    )
