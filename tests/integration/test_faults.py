"""The registry fault campaign (issue 12) against the sandbox: `socirun pull`, standard and parallel, through a
proxy that injects one fault (tests/support/faultproxy.py), must complete with the right image or exit 125 with one
sentence; what it leaves is counted (tests/support/leaks.py), and a normal pull afterwards works. Plus 4 concurrent
pulls of one image. bench/faults.py runs the same matrix more often, and the run soak.

Two concurrent `run --name X`, exactly one winning with docker's Conflict sentence, is
tests/integration/test_run_safety.py::test_two_concurrent_runs_with_one_name_exactly_one_wins.

Each test works in its own containerd namespace with an image of its own seed, so nothing another test pulled
makes a layer "already there" and the fault never fires.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from socirun.sandbox.sample import push_sample
from socirun.sandbox.sandbox import SandboxInfo
from tests.support.fault_campaign import FAULTS, PULL_MODES, Campaign, Outcome

NAME, TAG, SEED = "faults/sample", "v1", 1213
LAYERS_MB = (1.0, 2.0)
# What each fault must end in: a transient fault is survived (a retry or a resumed range), corrupt bytes and a
# registry that cannot speak the configured protocol are refused.
REFUSED = {"one flipped byte", "TLS hello to plain HTTP (hosts.toml says https)"}
QUICK_FAULTS = [name for name in FAULTS if not name.startswith("stall")]


@pytest.fixture(scope="module")
def pushed(sandbox: SandboxInfo) -> str:
    push_sample(sandbox.registry_host, NAME, TAG, LAYERS_MB, seed=SEED)
    return f"{NAME}:{TAG}"


def _campaign(sandbox: SandboxInfo, workdir: Path, namespace: str) -> Campaign:
    return Campaign(address=sandbox.containerd_address, registry_host=sandbox.registry_host, name=NAME, tag=TAG,
                    namespace=namespace, workdir=workdir)  # fmt: skip


@pytest.fixture(scope="module")
def campaign(sandbox: SandboxInfo, pushed: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Campaign]:
    with _campaign(sandbox, tmp_path_factory.mktemp("faults"), "socirun-faults") as c:
        yield c


def _check(out: Outcome) -> None:
    context = f"{out.fault} ({out.mode}): exit {out.code}, stderr {out.stderr!r}"
    assert out.fired >= 1, f"the fault never fired: {context}"
    if out.fault in REFUSED:
        assert out.refused, context
    else:
        assert out.completed, context
    assert out.leak_notes == [] and out.leaks.total() == 0, f"{context}: {out.leak_notes}"
    assert out.recovered


@pytest.mark.parametrize("mode", PULL_MODES)
@pytest.mark.parametrize("fault", QUICK_FAULTS)
def test_a_registry_fault_is_survived_or_refused_in_one_sentence_and_leaves_nothing(
    campaign: Campaign, fault: str, mode: str
) -> None:
    _check(campaign.run_case(fault, mode))


def test_a_stalled_blob_is_given_up_on_and_resumed_in_both_modes(
    sandbox: SandboxInfo, pushed: str, tmp_path: Path
) -> None:
    """socirun gives up on a silent connection after its 120 s read timeout: both modes at once (each in its own
    namespace behind its own proxy), so the file waits for that only once."""
    outcomes: dict[str, Outcome] = {}

    def one(mode: str) -> None:
        with _campaign(sandbox, tmp_path / mode, f"socirun-stall-{mode}") as c:
            outcomes[mode] = c.run_case("stall after 64 KiB", mode)

    threads = [threading.Thread(target=one, args=(mode,)) for mode in PULL_MODES]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=500)
    assert sorted(outcomes) == sorted(PULL_MODES)
    for out in outcomes.values():
        _check(out)


@pytest.mark.parametrize("mode", PULL_MODES)
def test_four_concurrent_pulls_of_one_image_all_succeed_and_leave_nothing(campaign: Campaign, mode: str) -> None:
    campaign.forget()
    baseline = campaign.leaks()
    procs = [subprocess.Popen(campaign.pull_argv(mode), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, env=campaign.env()) for _ in range(4)]  # fmt: skip
    results = [(p.wait(timeout=300), p.stderr.read() if p.stderr else "") for p in procs]
    assert [code for code, _ in results] == [0, 0, 0, 0], results
    assert campaign.image_complete() == ""
    after = campaign.leaks(baseline)
    assert after.leases == 0 and after.ingests == 0, after.nonzero()
    campaign.forget()
    assert campaign.leaks(baseline).total() == 0
