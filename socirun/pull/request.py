"""One place that turns the user's choices into a PullRequest, so `socirun pull`, `socirun run` and `socirun plan`
decide alike: the pull mode read once, the host probed once, the transfer decided once, SOCI's configuration
loaded once; the plan (SOCI or not) is made from these once the image is resolved."""

from __future__ import annotations

from dataclasses import dataclass

from socirun.config import SocirunConfig
from socirun.decide.facts import DEFAULT_SNAPSHOTTER, HostProfile, SociConfig, UserChoice
from socirun.decide.transfer import TransferPlan, discard_unpacked_layers_for, plan_transfer, pull_mode_for
from socirun.host import probe_host
from socirun.oci import Platform
from socirun.pull.engine import PullRequest
from socirun.pull.remote import make_planner
from socirun.reference import ImageReference
from socirun.soci.config import load_soci_config


@dataclass(frozen=True)
class PullChoices:
    """What the user asked for, from flags; None means "not given" (config, then the plan decide)."""

    snapshotter: str | None = None  # flag, CONTAINERD_SNAPSHOTTER or config already applied by the caller
    pull_mode: str | None = None
    max_concurrent_downloads: int | None = None
    chunk_size: str | None = None
    soci_index_digest: str = ""
    # --discard-unpacked-layers (None: not given, `[pull] discard_unpacked_layers` decides)
    discard_unpacked_layers: bool | None = None


@dataclass(frozen=True)
class PullSetup:
    """The inputs every decision of one pull shares, each gathered or decided once."""

    user: UserChoice
    transfer: TransferPlan
    host: HostProfile
    soci: SociConfig
    soci_log: str | None = None  # SOCI's log file (SOCIRUN_SOCI_LOG): the plan reads failed index lookups from it


def pull_setup(config: SocirunConfig, choices: PullChoices) -> PullSetup:
    mode = pull_mode_for(choices.pull_mode, config.raw)
    host = probe_host()
    transfer = plan_transfer(
        mode=mode, raw_config=config.raw, snapshotter=choices.snapshotter or DEFAULT_SNAPSHOTTER, host=host,
        max_concurrent_downloads=choices.max_concurrent_downloads, chunk_size=choices.chunk_size,
        discard_unpacked_layers=discard_unpacked_layers_for(choices.discard_unpacked_layers, config.raw),
    )
    soci = load_soci_config(config.soci_config_path, root=config.soci_root)
    return PullSetup(UserChoice(choices.snapshotter, mode), transfer, host, soci, config.soci_log)


def build_pull_request(
    reference: ImageReference, platform: Platform, setup: PullSetup, choices: PullChoices,
    *, expanded_from: str | None = None,
) -> PullRequest:
    return PullRequest(
        reference=reference,
        platform=platform,
        transfer=setup.transfer,
        snapshotter=choices.snapshotter or DEFAULT_SNAPSHOTTER,
        expanded_from=expanded_from,
        planner=make_planner(setup.user, setup.transfer, setup.host, setup.soci,
                             soci_index_digest=choices.soci_index_digest, soci_log=setup.soci_log),
        soci_index_digest=choices.soci_index_digest,
    )
