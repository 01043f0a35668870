"""The plan decision, table-driven: SOCI absent / present / dead; parallel on / off; index v2 / v1 / none /
explicit; v1 or v2 disabled; each forced mode; small and large hosts. Each row asserts snapshotter, mode and a
phrase the reasons (or warnings) must contain: the fact that decided."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from socirun.decide.facts import (
    HostProfile,
    ImageFacts,
    LayerFact,
    PlanFacts,
    SnapshotterFacts,
    SociConfig,
    SociIndex,
    UserChoice,
)
from socirun.decide.plan import decide, describe
from socirun.decide.transfer import TransferPlan, default_transfer_settings, plan_transfer

MB = 1 << 20
GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYERS = (
    LayerFact("sha256:" + "a" * 64, 2 * MB, GZ),  # small base: no zTOC
    LayerFact("sha256:" + "b" * 64, 300 * MB, GZ),
    LayerFact("sha256:" + "c" * 64, 900 * MB, GZ),
)
ZTOCS = frozenset({LAYERS[1].digest, LAYERS[2].digest})
V2 = SociIndex("v2", "sha256:" + "2" * 64, ZTOCS, "the manifest annotation com.amazon.soci.index-digest")
V1 = SociIndex("v1", "sha256:" + "1" * 64, ZTOCS, "the referrers API")
EXPLICIT = SociIndex("explicit", "sha256:" + "e" * 64, ZTOCS, "--soci-index-digest")

SOCI_UP = SnapshotterFacts(("overlayfs", "native", "soci"), True, True, "", "/run/soci.sock")
SOCI_DEAD = SnapshotterFacts(("overlayfs", "native", "soci"), True, False, "connection refused", "/run/soci.sock")
NO_SOCI = SnapshotterFacts(("overlayfs", "native"), False, False)

DEFAULTS = SociConfig(source="/etc/soci-snapshotter-grpc/config.toml")
PARALLEL = replace(DEFAULTS, parallel_enable=True)
FALLBACK = replace(DEFAULTS, parallel_as_fallback=True)
V1_ON = replace(DEFAULTS, v1_enable=True)
V2_OFF = replace(DEFAULTS, v2_enable=False)
ALL_OFF = replace(DEFAULTS, v2_enable=False, v1_enable=False)

SMALL = HostProfile(cpus=2, memory_bytes=4 << 30, nic_speed_mbps=100, nic_name="eth0",
                    free_disk_bytes=1 << 30, disk_path="/var/lib/containerd")
MID = HostProfile(cpus=4, memory_bytes=16 << 30, nic_speed_mbps=10_000, nic_name="eth0",
                  free_disk_bytes=500 << 30, disk_path="/var/lib/containerd")
LARGE = HostProfile(cpus=64, memory_bytes=512 << 30, nic_speed_mbps=100_000, nic_name="ens5",
                    free_disk_bytes=2 << 40, disk_path="/var/lib/containerd")


def image(v2: SociIndex | None = None, v1: SociIndex | None = None, explicit: SociIndex | None = None,
          cached: dict[str, frozenset[str]] | None = None) -> ImageFacts:
    return ImageFacts("r.example/app:1", "sha256:" + "f" * 64, LAYERS, v2, v1, explicit, (), cached or {})


def host_transfer(host: HostProfile, requested: str) -> TransferPlan:
    """A deterministic transfer decision for the table (the real one is socirun.decide.transfer.plan_transfer,
    made once before the plan and handed to it in PlanFacts.transfer)."""
    settings = default_transfer_settings(host.cpus, host.memory_bytes)
    if requested in ("parallel", "standard"):
        return TransferPlan(requested, (f"--pull-mode {requested}",), settings)  # type: ignore[arg-type]
    if host.cpus >= 8:
        return TransferPlan("parallel", (f"{host.cpus} CPUs",), settings)
    return TransferPlan("standard", (f"only {host.cpus} CPUs",), settings)


def facts(sn: SnapshotterFacts, cfg: SociConfig, img: ImageFacts, host: HostProfile, user: UserChoice) -> PlanFacts:
    return PlanFacts(sn, cfg, img, host, user, host_transfer(host, user.pull_mode))


@dataclass(frozen=True)
class Row:
    name: str
    sn: SnapshotterFacts
    cfg: SociConfig
    img: ImageFacts
    user: UserChoice
    snapshotter: str
    mode: str
    says: str  # must appear in the reasons, warnings or fixes
    layer_modes: tuple[str, ...] | None = None
    host: HostProfile = MID
    blocked: bool = False


ROWS = [
    # SOCI absent
    Row("absent-auto", NO_SOCI, DEFAULTS, image(v2=V2), UserChoice(), "overlayfs", "standard",
        "no snapshotter called soci", ("standard",) * 3),
    Row("absent-lazy-warns", NO_SOCI, DEFAULTS, image(v2=V2), UserChoice(pull_mode="lazy"), "overlayfs",
        "standard", "[proxy_plugins.soci]"),
    Row("absent-forced-soci-blocked", NO_SOCI, DEFAULTS, image(v2=V2), UserChoice("soci"), "soci", "standard",
        "no snapshotter called soci", blocked=True),
    # SOCI dead
    Row("dead-auto", SOCI_DEAD, DEFAULTS, image(v2=V2), UserChoice(), "overlayfs", "standard",
        "does not answer at /run/soci.sock: connection refused"),
    Row("dead-lazy", SOCI_DEAD, DEFAULTS, image(v2=V2), UserChoice(pull_mode="lazy"), "overlayfs", "standard",
        "systemctl start soci-snapshotter"),
    Row("dead-forced-soci", SOCI_DEAD, DEFAULTS, image(v2=V2), UserChoice("soci"), "soci", "standard",
        "does not answer", blocked=True),
    # SOCI up, indexes
    Row("v2-lazy", SOCI_UP, DEFAULTS, image(v2=V2), UserChoice(), "soci", "lazy",
        "com.amazon.soci.index-digest", ("snapshotter", "lazy", "lazy")),
    Row("v2-explicit-lazy", SOCI_UP, DEFAULTS, image(v2=V2), UserChoice(pull_mode="lazy"), "soci", "lazy",
        "SOCI v2 index"),
    Row("v1-enabled", SOCI_UP, V1_ON, image(v1=V1), UserChoice(), "soci", "lazy", "referrers API",
        ("snapshotter", "lazy", "lazy")),
    Row("v1-disabled-1558", SOCI_UP, DEFAULTS, image(v1=V1), UserChoice(), "overlayfs", "standard", "#1558"),
    Row("v1-disabled-lazy-warns", SOCI_UP, DEFAULTS, image(v1=V1), UserChoice(pull_mode="lazy"), "overlayfs",
        "standard", "soci convert"),
    Row("v2-disabled", SOCI_UP, replace(V2_OFF, v1_enable=True), image(v2=V2), UserChoice(), "overlayfs", "standard",
        "[pull_modes.soci_v2] enable = false"),
    Row("v2-disabled-v1-found", SOCI_UP, replace(V2_OFF, v1_enable=True), image(v2=V2, v1=V1), UserChoice(),
        "soci", "lazy", "SOCI v1 index"),
    Row("v2-disabled-only-v2", SOCI_UP, V2_OFF, image(v2=V2), UserChoice(), "overlayfs", "standard",
        "all lazy pull modes are disabled"),
    Row("both-disabled", SOCI_UP, ALL_OFF, image(v2=V2), UserChoice(), "overlayfs", "standard",
        "all lazy pull modes are disabled"),
    Row("explicit-with-all-disabled", SOCI_UP, ALL_OFF, image(explicit=EXPLICIT), UserChoice(), "soci", "lazy",
        "--soci-index-digest"),
    Row("none-auto", SOCI_UP, DEFAULTS, image(), UserChoice(), "overlayfs", "standard", "has no SOCI index"),
    Row("none-lazy-warns", SOCI_UP, DEFAULTS, image(), UserChoice(pull_mode="lazy"), "overlayfs", "standard",
        "soci convert"),
    Row("none-forced-soci-defers", SOCI_UP, DEFAULTS, image(), UserChoice("soci"), "soci", "standard",
        "defers every layer", ("standard",) * 3),
    Row("none-fallback-parallel", SOCI_UP, FALLBACK, image(), UserChoice(), "soci", "parallel",
        "experimental_parallel_pull_as_fallback = true", ("parallel",) * 3),
    # parallel on
    Row("parallel-on", SOCI_UP, PARALLEL, image(v2=V2), UserChoice(), "soci", "parallel",
        "[pull_modes.parallel_pull_unpack] enable = true", ("parallel",) * 3),
    Row("parallel-on-lazy-warns", SOCI_UP, PARALLEL, image(v2=V2), UserChoice(pull_mode="lazy"), "soci",
        "parallel", "skips lazy loading"),
    Row("parallel-forced-but-off", SOCI_UP, DEFAULTS, image(v2=V2), UserChoice(pull_mode="parallel"),
        "overlayfs", "parallel", "SOCI's parallel mode is off"),
    Row("parallel-forced-on", SOCI_UP, PARALLEL, image(), UserChoice(pull_mode="parallel"), "soci", "parallel",
        "enable = true"),
    Row("parallel-forced-no-soci", NO_SOCI, DEFAULTS, image(), UserChoice(pull_mode="parallel"), "overlayfs",
        "parallel", "socirun downloads ranged chunks"),
    # user forcing snapshotter / standard
    Row("overlayfs-bypasses", SOCI_UP, DEFAULTS, image(v2=V2), UserChoice("overlayfs"), "overlayfs",
        "standard", "--snapshotter overlayfs was chosen"),
    Row("overlayfs-lazy-warns", SOCI_UP, DEFAULTS, image(v2=V2), UserChoice("overlayfs", "lazy"), "overlayfs",
        "standard", "--pull-mode lazy needs the soci snapshotter"),
    Row("standard-forced", SOCI_UP, DEFAULTS, image(v2=V2), UserChoice(pull_mode="standard"), "overlayfs",
        "standard", "--pull-mode standard was chosen"),
    Row("unknown-snapshotter-blocked", SOCI_UP, DEFAULTS, image(), UserChoice("zfs"), "zfs", "standard",
        "no working snapshotter called zfs", blocked=True),
    # cached layers and min_layer_size
    Row("v2-cached", SOCI_UP, DEFAULTS, image(v2=V2, cached={"soci": frozenset({LAYERS[0].digest})}),
        UserChoice(), "soci", "lazy", "1 are already here", ("cached", "lazy", "lazy")),
    Row("v2-min-layer-size", SOCI_UP, replace(DEFAULTS, min_layer_size=500 * MB), image(v2=V2), UserChoice(),
        "soci", "lazy", "1 of 3 layers have a zTOC", ("snapshotter", "snapshotter", "lazy")),
    Row("overlay-cached", NO_SOCI, DEFAULTS, image(cached={"overlayfs": frozenset({LAYERS[0].digest})}),
        UserChoice(), "overlayfs", "standard", "no snapshotter called soci", ("cached", "standard", "standard")),
    # host profiles
    Row("small-host-stream", NO_SOCI, DEFAULTS, image(), UserChoice(), "overlayfs", "standard",
        "only 2 CPUs socirun downloads each layer in one stream", host=SMALL),
    Row("large-host-chunked", NO_SOCI, DEFAULTS, image(), UserChoice(), "overlayfs", "parallel",
        "64 CPUs socirun downloads ranged chunks", host=LARGE),
    Row("small-disk-warns", NO_SOCI, DEFAULTS, image(), UserChoice(), "overlayfs", "standard",
        "are free on /var/lib/containerd", host=SMALL),
    Row("small-disk-lazy-no-warning", SOCI_UP, DEFAULTS, image(v2=V2), UserChoice(), "soci", "lazy",
        "load lazily", host=replace(SMALL, free_disk_bytes=100 * MB)),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_plan_table(row: Row) -> None:
    plan = decide(facts(row.sn, row.cfg, row.img, row.host, row.user))
    text = " ".join((*plan.reasons, *plan.warnings, *plan.fixes, plan.blocker))
    assert plan.snapshotter == row.snapshotter
    assert plan.mode == row.mode
    assert row.says in text, text
    assert bool(plan.blocker) == row.blocked
    if row.layer_modes is not None:
        assert tuple(layer.mode for layer in plan.layers) == row.layer_modes
    assert plan.reasons, "a plan always says why"


def test_asking_for_lazy_never_falls_back_silently() -> None:
    """Every row where lazy was asked for but the plan is not lazy carries a warning and a fix."""
    for row in ROWS:
        if row.user.pull_mode != "lazy":
            continue
        plan = decide(facts(row.sn, row.cfg, row.img, row.host, row.user))
        if plan.mode != "lazy":
            assert plan.warnings, row.name
            assert plan.fixes, row.name


def test_small_disk_warning_only_counts_full_fetches() -> None:
    lazy_host = replace(SMALL, free_disk_bytes=100 * MB)
    plan = decide(facts(SOCI_UP, DEFAULTS, image(v2=V2), lazy_host, UserChoice()))
    assert not any("free" in w for w in plan.warnings)
    full = decide(facts(SOCI_UP, DEFAULTS, image(v2=V2), lazy_host, UserChoice("overlayfs")))
    assert any("are free" in w for w in full.warnings)


def test_plan_json_and_text() -> None:
    plan = decide(facts(SOCI_UP, DEFAULTS, image(v2=V2), LARGE, UserChoice()))
    doc = plan.to_json()
    assert doc["snapshotter"] == "soci" and doc["mode"] == "lazy"
    assert doc["index"]["kind"] == "v2"
    assert [layer["mode"] for layer in doc["layers"]] == ["snapshotter", "lazy", "lazy"]
    assert doc["transfer"] is None  # socirun downloads nothing itself
    text = "\n".join(describe(plan))
    assert "SOCI index: v2" in text and "lazy" in text


def test_the_plan_reports_the_transfer_it_was_given_and_decides_none() -> None:
    """The transfer is decided once (plan_transfer) and the plan only reports it: whatever the host, the plan's
    mode and reasons for socirun's own downloads are the given decision's."""
    for forced in ("parallel", "standard"):
        given = plan_transfer(mode=forced, raw_config={}, snapshotter="overlayfs", host=SMALL)  # type: ignore[arg-type]
        plan = decide(PlanFacts(NO_SOCI, DEFAULTS, image(), LARGE, UserChoice(pull_mode=forced), given))  # type: ignore[arg-type]
        assert plan.mode == forced and plan.transfer is given
        assert given.reasons[0] in plan.reasons and given.how("overlayfs") in plan.reasons
        assert plan.to_json()["transfer"]["strategy"] == forced
    cached = image(cached={"overlayfs": frozenset(layer.digest for layer in LAYERS)})
    given = plan_transfer(mode="parallel", raw_config={}, snapshotter="overlayfs", host=SMALL)
    plan = decide(PlanFacts(NO_SOCI, DEFAULTS, cached, SMALL, UserChoice(pull_mode="parallel"), given))
    assert plan.mode == "parallel" and plan.transfer is None  # nothing to download: no transfer reasons
