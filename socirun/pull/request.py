"""One place that turns the user's choices into a PullRequest, so `socirun pull` and `socirun run` pull alike:
the same plan (SOCI or not, decided once the image is resolved), the same transfer settings, the same reasons."""

from __future__ import annotations

from dataclasses import dataclass

from socirun.config import SocirunConfig
from socirun.errors import UsageError
from socirun.oci import Platform
from socirun.plan import PULL_MODES, PullMode, UserChoice
from socirun.pull.engine import DEFAULT_MAX_CONCURRENT_DOWNLOADS, PullRequest
from socirun.pull.remote import make_planner
from socirun.pull.transfer_plan import plan_overlay_pull, probe_host
from socirun.reference import ImageReference


@dataclass(frozen=True)
class PullChoices:
    """What the user asked for, from flags; None means "not given" (config, then the plan decide)."""

    snapshotter: str | None = None  # flag, CONTAINERD_SNAPSHOTTER or config already applied by the caller
    pull_mode: str | None = None
    max_concurrent_downloads: int | None = None
    chunk_size: str | None = None
    soci_index_digest: str = ""


def pull_mode_for(choices: PullChoices, config: SocirunConfig) -> PullMode:
    """--pull-mode, else `[pull] mode` in socirun's config, else auto."""
    table = config.raw.get("pull")
    from_config = table.get("mode") if isinstance(table, dict) else None
    mode = choices.pull_mode or from_config or "auto"
    if mode not in PULL_MODES:
        raise UsageError(f'invalid --pull-mode "{mode}": use one of {", ".join(PULL_MODES)}')
    return mode  # type: ignore[return-value]  # checked against PULL_MODES just above


def build_pull_request(
    reference: ImageReference, platform: Platform, config: SocirunConfig, choices: PullChoices,
    *, expanded_from: str | None = None,
) -> PullRequest:
    snapshotter = choices.snapshotter or "overlayfs"
    transfer = plan_overlay_pull(
        requested=choices.pull_mode, raw_config=config.raw, snapshotter=snapshotter, host=probe_host(),
        max_concurrent_downloads=choices.max_concurrent_downloads, chunk_size=choices.chunk_size,
    )
    parallel = transfer.mode == "parallel"
    return PullRequest(
        reference=reference,
        platform=platform,
        snapshotter=snapshotter,
        max_concurrent_downloads=transfer.settings.max_concurrent_downloads if parallel
        else choices.max_concurrent_downloads or DEFAULT_MAX_CONCURRENT_DOWNLOADS,
        expanded_from=expanded_from,
        pull_mode=transfer.mode,
        chunk_size=transfer.settings.chunk_size,
        chunk_window=transfer.settings.window,
        schedule=transfer.settings.schedule,
        transfer_reasons=transfer.reasons,
        planner=make_planner(UserChoice(choices.snapshotter, pull_mode_for(choices, config)),
                             soci_index_digest=choices.soci_index_digest),
        soci_index_digest=choices.soci_index_digest,
    )
