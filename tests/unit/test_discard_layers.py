"""--discard-unpacked-layers / `[pull] discard_unpacked_layers`: how the choice is read, where it travels (flags →
PullChoices → PullSetup's TransferPlan), what the plan says, and which blobs a discarding pull may leave out."""

from __future__ import annotations

import pytest

from socirun.commands.main import build_parser
from socirun.commands.run_flags import parse_run_args
from socirun.config import SocirunConfig
from socirun.decide.facts import HostProfile, PlanFacts, UserChoice
from socirun.decide.plan import decide
from socirun.decide.transfer import discard_unpacked_layers_for, plan_transfer
from socirun.errors import ConfigError
from socirun.pull.request import PullChoices, pull_setup
from socirun.pull.stream import discardable_blobs

HOST = HostProfile(cpus=8, memory_bytes=32 << 30, nic_speed_mbps=None, nic_name="", free_disk_bytes=None,
                   disk_path="/")
ON = {"pull": {"discard_unpacked_layers": True}}


def test_off_unless_asked_for() -> None:
    assert discard_unpacked_layers_for(None, {}) is False
    assert discard_unpacked_layers_for(None, {"pull": {"mode": "parallel-stream"}}) is False


def test_the_config_turns_it_on_and_the_flag_wins_either_way() -> None:
    assert discard_unpacked_layers_for(None, ON) is True
    assert discard_unpacked_layers_for(False, ON) is False  # --discard-unpacked-layers=false / --no-…
    assert discard_unpacked_layers_for(True, {}) is True


@pytest.mark.parametrize("value", ["true", 1, "yes"])
def test_a_config_value_that_is_not_a_boolean_is_one_clear_error(value: object) -> None:
    with pytest.raises(ConfigError, match=r"pull\.discard_unpacked_layers must be true or false"):
        discard_unpacked_layers_for(None, {"pull": {"discard_unpacked_layers": value}})


def test_the_pull_and_plan_commands_take_the_flag() -> None:
    parser = build_parser()
    assert parser.parse_args(["pull", "img"]).discard_unpacked_layers is None
    assert parser.parse_args(["pull", "--discard-unpacked-layers", "img"]).discard_unpacked_layers is True
    assert parser.parse_args(["pull", "--no-discard-unpacked-layers", "img"]).discard_unpacked_layers is False
    assert parser.parse_args(["plan", "--discard-unpacked-layers", "img"]).discard_unpacked_layers is True


def test_run_takes_the_flag_as_docker_takes_a_boolean() -> None:
    assert parse_run_args(["img"]).discard_unpacked_layers is None
    assert parse_run_args(["--discard-unpacked-layers", "img"]).discard_unpacked_layers is True
    assert parse_run_args(["--discard-unpacked-layers=false", "img"]).discard_unpacked_layers is False


def test_the_choice_reaches_the_transfer_plan_from_the_config_or_the_choices() -> None:
    config = SocirunConfig(raw={"pull": {"discard_unpacked_layers": True, "mode": "parallel-stream"}})
    assert pull_setup(config, PullChoices()).transfer.discard_unpacked_layers is True
    assert pull_setup(config, PullChoices(discard_unpacked_layers=False)).transfer.discard_unpacked_layers is False
    plain = SocirunConfig()
    setup = pull_setup(plain, PullChoices(pull_mode="parallel-stream", discard_unpacked_layers=True))
    assert setup.transfer.discards("overlayfs")


def test_only_parallel_stream_into_a_local_snapshotter_discards() -> None:
    stream = plan_transfer(mode="parallel-stream", raw_config=ON, snapshotter="overlayfs", host=HOST,
                           discard_unpacked_layers=True)
    assert stream.discards("overlayfs") and stream.discards("native")
    assert not stream.discards("soci")  # a remote snapshotter's layers are never unpacked by socirun
    for mode in ("parallel", "standard"):
        other = plan_transfer(mode=mode, raw_config=ON, snapshotter="overlayfs", host=HOST,
                              discard_unpacked_layers=True)
        assert not other.discards("overlayfs")
        assert f"no effect on a {mode} pull" in other.discard_note("overlayfs")
    unasked = plan_transfer(mode="parallel-stream", raw_config={}, snapshotter="overlayfs", host=HOST)
    assert not unasked.discards("overlayfs") and unasked.discard_note("overlayfs") == ""


def test_the_transfer_sentence_says_what_discarding_costs() -> None:
    stream = plan_transfer(mode="parallel-stream", raw_config={}, snapshotter="overlayfs", host=HOST,
                           discard_unpacked_layers=True)
    how = stream.how("overlayfs")
    assert "only into socirun's own applier" in how
    assert "not written to containerd's content store" in how and "exported, pushed or unpacked again" in how
    kept = plan_transfer(mode="parallel-stream", raw_config={}, snapshotter="overlayfs", host=HOST)
    assert "into containerd's content store and at the same time" in kept.how("overlayfs")
    assert "discard_unpacked_layers" not in kept.how("overlayfs")
    assert "has no effect with the soci snapshotter" in stream.how("soci")


def test_the_plan_shows_the_choice_where_it_explains_the_pull_mode() -> None:
    from tests.unit.test_plan import DEFAULTS, MID, NO_SOCI, image

    transfer = plan_transfer(mode="parallel-stream", raw_config={}, snapshotter="overlayfs", host=MID,
                             discard_unpacked_layers=True)
    plan = decide(PlanFacts(NO_SOCI, DEFAULTS, image(), MID, UserChoice(pull_mode="parallel-stream"), transfer))
    assert any("discard_unpacked_layers: the blob of a layer unpacked as its bytes arrive" in r for r in plan.reasons)


def test_a_blob_two_layers_share_is_always_stored() -> None:
    # The second layer with the same blob is unpacked by Diff.Apply from the store (only one applier reads a tap).
    assert discardable_blobs(["sha256:a", "sha256:b", "sha256:a", "sha256:c"]) == {"sha256:b", "sha256:c"}
    assert discardable_blobs([]) == frozenset()
