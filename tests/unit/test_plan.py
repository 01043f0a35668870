"""The plan decision, table-driven: SOCI absent / present / dead; parallel on / off; index v2 / v1 / none /
explicit / named but unfetchable; a failed lookup SOCI remembers; runtime min_layer_size; v1 or v2 disabled;
each forced mode; small and large hosts. Each row asserts snapshotter, mode and a phrase the reasons (or
warnings) must contain: the fact that decided. The per-layer rule (soci_layer_mode), the index choice
(usable_index) and what the engine downloads up front (downloads_before_prepare) have tables of their own."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from socirun.decide.facts import (
    FailedIndexLookup,
    HostProfile,
    ImageFacts,
    LayerFact,
    PlanFacts,
    SnapshotterFacts,
    SociConfig,
    SociIndex,
    UserChoice,
)
from socirun.decide.plan import (
    LayerPlan,
    Plan,
    decide,
    describe,
    downloads_before_prepare,
    soci_layer_mode,
    usable_index,
)
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
GONE = "the registry does not serve it (manifest unknown)"
V2_GONE = replace(V2, ztoc_layers=frozenset(), problem=GONE)
V1_GONE = replace(V1, ztoc_layers=frozenset(), problem=GONE)
EXPLICIT_GONE = replace(EXPLICIT, ztoc_layers=frozenset(), problem=GONE)
FAILED = FailedIndexLookup("2026-01-01T10:00:00Z", 'unable to fetch SOCI artifacts for image "r.example/app:1": '
                           "no valid SOCI index found: not found", "2026-01-01T09:00:00Z")

SOCI_UP = SnapshotterFacts(("overlayfs", "native", "soci"), True, True, "", "/run/soci.sock")
SOCI_DEAD = SnapshotterFacts(("overlayfs", "native", "soci"), True, False, "connection refused", "/run/soci.sock")
NO_SOCI = SnapshotterFacts(("overlayfs", "native"), False, False)

DEFAULTS = SociConfig(source="/etc/soci-snapshotter-grpc/config.toml")
PARALLEL = replace(DEFAULTS, parallel_enable=True)
FALLBACK = replace(DEFAULTS, parallel_as_fallback=True)
V1_ON = replace(DEFAULTS, v1_enable=True)
V2_OFF = replace(DEFAULTS, v2_enable=False)
ALL_OFF = replace(DEFAULTS, v2_enable=False, v1_enable=False)
MIN_100 = replace(DEFAULTS, min_layer_size=100 * MB)  # LAYERS[0] (2 MB) is below it, the others are not

SMALL = HostProfile(cpus=2, memory_bytes=4 << 30, nic_speed_mbps=100, nic_name="eth0",
                    free_disk_bytes=1 << 30, disk_path="/var/lib/containerd")
MID = HostProfile(cpus=4, memory_bytes=16 << 30, nic_speed_mbps=10_000, nic_name="eth0",
                  free_disk_bytes=500 << 30, disk_path="/var/lib/containerd")
LARGE = HostProfile(cpus=64, memory_bytes=512 << 30, nic_speed_mbps=100_000, nic_name="ens5",
                    free_disk_bytes=2 << 40, disk_path="/var/lib/containerd")


def image(v2: SociIndex | None = None, v1: SociIndex | None = None, explicit: SociIndex | None = None,
          cached: dict[str, frozenset[str]] | None = None, failed: FailedIndexLookup | None = None) -> ImageFacts:
    return ImageFacts("r.example/app:1", "sha256:" + "f" * 64, LAYERS, v2, v1, explicit, (), cached or {}, failed)


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
        "SOCI defers the image to the runtime", ("standard",) * 3),
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
    # runtime min_layer_size: SOCI checks the size label before it looks for an index (§6.3)
    Row("none-forced-soci-min-size", SOCI_UP, MIN_100, image(), UserChoice("soci"), "soci", "standard",
        "SOCI fetches those whole itself", ("snapshotter", "standard", "standard")),
    Row("none-fallback-min-size", SOCI_UP, replace(MIN_100, parallel_as_fallback=True), image(), UserChoice(),
        "soci", "parallel", "min_layer_size = 104857600", ("snapshotter", "parallel", "parallel")),
    Row("none-auto-min-size-bypasses-soci", SOCI_UP, MIN_100, image(), UserChoice(), "overlayfs", "standard",
        "has no SOCI index", ("standard",) * 3),
    Row("v2-runtime-min-size-blocks-all", SOCI_UP, replace(DEFAULTS, min_layer_size=1000 * MB), image(v2=V2),
        UserChoice(), "soci", "lazy", "lower [snapshotter] min_layer_size", ("snapshotter",) * 3),
    Row("parallel-ignores-min-size", SOCI_UP, replace(PARALLEL, min_layer_size=100 * MB), image(v2=V2),
        UserChoice(), "soci", "parallel", "even for an image with a SOCI index", ("parallel",) * 3),
    # named but unfetchable: SOCI defers the whole image and never tries the next kind (§6.5)
    Row("v2-unfetchable-auto", SOCI_UP, DEFAULTS, image(v2=V2_GONE), UserChoice(), "overlayfs", "standard",
        "SOCI defers the whole image when the index it picks cannot be fetched", ("standard",) * 3),
    Row("v2-unfetchable-no-v1-fallback", SOCI_UP, V1_ON, image(v2=V2_GONE, v1=V1), UserChoice(), "overlayfs",
        "standard", "does not fall back to a v1 index"),
    Row("v2-unfetchable-forced-soci", SOCI_UP, MIN_100, image(v2=V2_GONE), UserChoice("soci"), "soci", "standard",
        "manifest unknown", ("snapshotter", "standard", "standard")),
    Row("v2-unfetchable-fallback", SOCI_UP, FALLBACK, image(v2=V2_GONE), UserChoice(), "soci", "parallel",
        "experimental_parallel_pull_as_fallback = true", ("parallel",) * 3),
    Row("v2-unfetchable-lazy-warns", SOCI_UP, DEFAULTS, image(v2=V2_GONE), UserChoice(pull_mode="lazy"),
        "overlayfs", "standard", "push the image's SOCI index"),
    Row("explicit-unfetchable-no-v2-fallback", SOCI_UP, DEFAULTS, image(v2=V2, explicit=EXPLICIT_GONE),
        UserChoice(), "overlayfs", "standard", "does not fall back to the manifest's v2 annotation"),
    Row("explicit-unfetchable-forced", SOCI_UP, DEFAULTS, image(explicit=EXPLICIT_GONE), UserChoice("soci"), "soci",
        "standard", "pass a --soci-index-digest the registry has", ("standard",) * 3),
    Row("v1-unfetchable", SOCI_UP, V1_ON, image(v1=V1_GONE), UserChoice(), "overlayfs", "standard",
        "SOCI v1 index"),
    Row("v2-disabled-unfetchable-v1-used", SOCI_UP, replace(V2_OFF, v1_enable=True), image(v2=V2_GONE, v1=V1),
        UserChoice(), "soci", "lazy", "SOCI v1 index", ("snapshotter", "lazy", "lazy")),
    # a failed lookup SOCI remembers until it restarts (§6.6)
    Row("failed-lookup-defers-indexed-image", SOCI_UP, DEFAULTS, image(v2=V2, failed=FAILED), UserChoice(),
        "overlayfs", "standard", "restart soci-snapshotter-grpc", ("standard",) * 3),
    Row("failed-lookup-forced-soci", SOCI_UP, MIN_100, image(v2=V2, failed=FAILED), UserChoice("soci"), "soci",
        "standard", "remembers a failed lookup for a manifest until it restarts",
        ("snapshotter", "standard", "standard")),
    Row("failed-lookup-lazy-warns", SOCI_UP, DEFAULTS, image(v2=V2, failed=FAILED), UserChoice(pull_mode="lazy"),
        "overlayfs", "standard", "although the image has an index now"),
    Row("failed-lookup-no-index", SOCI_UP, DEFAULTS, image(failed=FAILED), UserChoice(), "overlayfs", "standard",
        "failed at 2026-01-01T10:00:00Z"),
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
        given = plan_transfer(mode=forced, raw_config={}, snapshotter="overlayfs", host=SMALL)
        plan = decide(PlanFacts(NO_SOCI, DEFAULTS, image(), LARGE, UserChoice(pull_mode=forced), given))
        assert plan.mode == forced and plan.transfer is given
        assert given.reasons[0] in plan.reasons and given.how("overlayfs") in plan.reasons
        assert plan.to_json()["transfer"]["strategy"] == forced
    cached = image(cached={"overlayfs": frozenset(layer.digest for layer in LAYERS)})
    given = plan_transfer(mode="parallel", raw_config={}, snapshotter="overlayfs", host=SMALL)
    plan = decide(PlanFacts(NO_SOCI, DEFAULTS, cached, SMALL, UserChoice(pull_mode="parallel"), given))
    assert plan.mode == "parallel" and plan.transfer is None  # nothing to download: no transfer reasons


def test_the_plan_unpacks_in_parallel_only_where_the_snapshotter_can_rebase() -> None:
    given = plan_transfer(mode="parallel", raw_config={}, snapshotter="overlayfs", host=SMALL)
    rebase = replace(NO_SOCI, capabilities={"overlayfs": ("rebase",)})
    plan = decide(PlanFacts(rebase, DEFAULTS, image(), SMALL, UserChoice(pull_mode="parallel"), given))
    assert plan.unpacks == given.settings.max_concurrent_unpacks == 2 and plan.to_json()["unpacks_at_once"] == 2
    assert given.how("overlayfs", 2) in plan.reasons and any("can rebase" in r for r in plan.reasons)
    plain = decide(PlanFacts(NO_SOCI, DEFAULTS, image(), SMALL, UserChoice(pull_mode="parallel"), given))
    assert plain.unpacks == 0 and not any("can rebase" in r for r in plain.reasons)


def test_the_plan_completes_autos_transfer_for_the_snapshotter_it_picks() -> None:
    given = plan_transfer(mode="auto", raw_config={}, snapshotter="overlayfs", host=MID)
    assert given.mode == "parallel-stream"
    rebase = replace(NO_SOCI, capabilities={"overlayfs": ("rebase",)})
    plan = decide(PlanFacts(rebase, DEFAULTS, image(), MID, UserChoice(), given))
    assert plan.transfer is not None and plan.transfer.mode == "parallel"  # what the engine follows
    assert plan.to_json()["transfer"]["strategy"] == "parallel"
    assert any("overlayfs can rebase, so containerd unpacks several layers at once" in r for r in plan.reasons)
    assert plan.transfer.how("overlayfs", plan.unpacks) in plan.reasons
    unchanged = decide(PlanFacts(NO_SOCI, DEFAULTS, image(), MID, UserChoice(), given))  # containerd 1.6
    assert unchanged.transfer is given and unchanged.to_json()["transfer"]["strategy"] == "parallel-stream"


SMALL_LAYER, BIG_ZTOC = LAYERS[0], LAYERS[1]
NO_ZTOC_BIG = LayerFact("sha256:" + "d" * 64, 300 * MB, GZ)


@pytest.mark.parametrize(("layer", "cfg", "index", "cached", "mode"), [
    # size below [snapshotter] min_layer_size wins over everything but the cache, index or not
    (SMALL_LAYER, MIN_100, None, False, "snapshotter"),
    (SMALL_LAYER, MIN_100, V2, False, "snapshotter"),
    (SMALL_LAYER, replace(MIN_100, parallel_as_fallback=True), None, False, "snapshotter"),
    (SMALL_LAYER, MIN_100, None, True, "cached"),
    # min_layer_size = 0 is off; the size is strictly "less than"
    (SMALL_LAYER, DEFAULTS, None, False, "standard"),
    (BIG_ZTOC, replace(DEFAULTS, min_layer_size=BIG_ZTOC.size), V2, False, "lazy"),
    (BIG_ZTOC, replace(DEFAULTS, min_layer_size=BIG_ZTOC.size + 1), V2, False, "snapshotter"),
    # no usable index: deferred, or SOCI's parallel pull with the fallback on
    (BIG_ZTOC, DEFAULTS, None, False, "standard"),
    (BIG_ZTOC, FALLBACK, None, False, "parallel"),
    # an index: lazy with a zTOC, fetched whole by SOCI without one
    (BIG_ZTOC, DEFAULTS, V2, False, "lazy"),
    (NO_ZTOC_BIG, DEFAULTS, V2, False, "snapshotter"),
    (NO_ZTOC_BIG, FALLBACK, V2, False, "snapshotter"),  # a sparse index is never pulled in parallel
])
def test_soci_layer_mode(layer: LayerFact, cfg: SociConfig, index: SociIndex | None, cached: bool,
                         mode: str) -> None:
    got, why = soci_layer_mode(layer, cfg, index, cached=cached)
    assert got == mode
    assert why


@pytest.mark.parametrize(("cfg", "img", "picked", "usable"), [
    (DEFAULTS, image(), None, False),
    (DEFAULTS, image(v2=V2), V2, True),
    (DEFAULTS, image(v2=V2_GONE), V2_GONE, False),
    (V1_ON, image(v2=V2_GONE, v1=V1), V2_GONE, False),  # no fallback to v1
    (replace(V2_OFF, v1_enable=True), image(v2=V2_GONE, v1=V1), V1, True),  # v2 off: never looked at
    (DEFAULTS, image(v2=V2, explicit=EXPLICIT_GONE), EXPLICIT_GONE, False),  # no fallback to v2
    (ALL_OFF, image(v2=V2, explicit=EXPLICIT), EXPLICIT, True),  # the explicit digest ignores the pull modes
    (ALL_OFF, image(v2=V2), None, False),
    (DEFAULTS, image(v1=V1), None, False),  # v1 off by default
    (DEFAULTS, image(v2=V2, failed=FAILED), V2, False),  # remembered failure
])
def test_usable_index_follows_socis_order(cfg: SociConfig, img: ImageFacts, picked: SociIndex | None,
                                         usable: bool) -> None:
    lookup = usable_index(cfg, img)
    assert lookup.index == picked
    assert lookup.usable == usable
    if not usable:
        assert lookup.notes and lookup.fixes  # always says why, and what to do


def test_an_unfetchable_index_is_not_an_absent_one() -> None:
    gone = " ".join(decide(facts(SOCI_UP, DEFAULTS, image(v2=V2_GONE), MID, UserChoice())).reasons)
    absent = " ".join(decide(facts(SOCI_UP, DEFAULTS, image(), MID, UserChoice())).reasons)
    assert "has no SOCI index" in absent and "has no SOCI index" not in gone
    assert V2_GONE.digest.split(":")[1][:12] in gone and GONE in gone


def test_a_remembered_failure_warns_only_when_an_index_could_be_used() -> None:
    with_index = decide(facts(SOCI_UP, DEFAULTS, image(v2=V2, failed=FAILED), MID, UserChoice()))
    assert any("restart" in w or "remembers" in w for w in with_index.warnings)
    without = decide(facts(SOCI_UP, DEFAULTS, image(failed=FAILED), MID, UserChoice()))
    assert not without.warnings  # SOCI would defer anyway: nothing is lost by the cached failure
    assert any("remembers a failed lookup" in r for r in without.reasons)


def test_parallel_mode_config_soci_refuses() -> None:
    """v0.16.1 refuses to start in parallel mode (or with its fallback) unless [content_store] type is
    "containerd" or discard_unpacked_layers = true; a live SOCI means the config read is not its config."""
    bad = replace(PARALLEL, content_store_type="soci", discard_unpacked_layers=False)
    plan = decide(facts(SOCI_UP, bad, image(v2=V2), MID, UserChoice()))
    assert any("refuses to start" in w for w in plan.warnings)
    for ok in (replace(bad, content_store_type="containerd"), replace(bad, discard_unpacked_layers=True)):
        assert not ok.parallel_store_problem
        assert not any("refuses" in w for w in decide(facts(SOCI_UP, ok, image(v2=V2), MID, UserChoice())).warnings)
    fallback = replace(FALLBACK, content_store_type="soci")
    assert "experimental_parallel_pull_as_fallback" in fallback.parallel_store_problem
    assert not DEFAULTS.parallel_store_problem  # parallel off: the store type does not matter


def test_parallel_mode_concurrency_in_words() -> None:
    limited = decide(facts(SOCI_UP, replace(PARALLEL, content_store_type="containerd"), image(), MID, UserChoice()))
    assert any("3 at a time" in r for r in limited.reasons)
    unbounded = decide(facts(SOCI_UP, replace(PARALLEL, content_store_type="containerd",
                                             max_concurrent_downloads_per_image=-1), image(), MID, UserChoice()))
    assert any("no limit per image" in r for r in unbounded.reasons)


def _plan_of(*modes: str) -> Plan:
    layers = tuple(LayerPlan(i, f"sha256:{i}", 1, m, "") for i, m in enumerate(modes))  # type: ignore[arg-type]
    return Plan("soci", "standard", layers, ("r",))


@pytest.mark.parametrize(("plan", "snapshotter", "expected"), [
    (None, "overlayfs", (True, True)),  # a local snapshotter only unpacks: socirun downloads everything
    (_plan_of("lazy", "standard"), "overlayfs", (True, True)),
    (None, "soci", (False, False)),  # no plan: SOCI is asked first
    (_plan_of("standard", "standard"), "soci", (True, True)),
    (_plan_of("snapshotter", "standard"), "soci", (False, True)),  # below min_layer_size: SOCI fetches it
    (_plan_of("lazy", "parallel"), "soci", (False, False)),
    (_plan_of("cached", "standard"), "soci", (False, True)),
])
def test_downloads_before_prepare(plan: Plan | None, snapshotter: str, expected: tuple[bool, bool]) -> None:
    assert tuple(downloads_before_prepare(plan, i, snapshotter) for i in range(2)) == expected


def test_what_the_engine_downloads_is_what_the_plan_calls_standard() -> None:
    """No double download: with snapshotter soci, min_layer_size and no index, socirun fetches only the layers
    SOCI defers, never the ones the plan says SOCI fetches whole."""
    plan = decide(facts(SOCI_UP, MIN_100, image(), MID, UserChoice("soci")))
    fetched = [downloads_before_prepare(plan, i, plan.snapshotter) for i in range(len(LAYERS))]
    assert fetched == [layer.mode == "standard" for layer in plan.layers] == [False, True, True]
