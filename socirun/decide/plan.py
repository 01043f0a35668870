"""The mode decision: which snapshotter, which pull mode, and what happens to each layer — with the reasons in
plain sentences. A pure function (`decide`) over facts that thin probes gather (`socirun.soci.probe`).

It follows what soci-snapshotter v0.16.1 does on each Prepare (its Prepare in snapshot/snapshot.go and the index
lookup in fs/fs.go; https://github.com/awslabs/soci-snapshotter/blob/v0.16.1/docs/pull-modes.md) so that what
the plan says is what the snapshotter will do, and it never falls back silently: whenever the user asked for
something that cannot happen, a warning says what happens instead and a fix says how to get it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from socirun.decide.facts import (
    DEFAULT_SNAPSHOTTER,
    LOCAL_SNAPSHOTTERS,
    SOCI,
    ImageFacts,
    LayerFact,
    PlanFacts,
    SociConfig,
    SociIndex,
)
from socirun.decide.transfer import TransferPlan
from socirun.events import LayerMode
from socirun.oci import layer_compression

PlanMode = Literal["lazy", "parallel", "standard"]
FIX_CONVERT = "make a SOCI-enabled (v2) image with `soci convert SRC DST` and push DST"
# Compressed layers unpack to roughly twice their size; used only for the free-disk warning.
UNPACK_FACTOR = 2


@dataclass(frozen=True)
class LayerPlan:
    index: int
    digest: str
    size: int
    mode: LayerMode  # lazy | snapshotter (fetched whole by SOCI) | parallel | standard (socirun) | cached
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "digest": self.digest, "size": self.size, "mode": self.mode,
                "reason": self.reason}


@dataclass(frozen=True)
class Plan:
    snapshotter: str
    # lazy: SOCI lazy loading; parallel: SOCI's parallel pull (snapshotter soci) or socirun's ranged chunks
    # (any other snapshotter); standard: one stream per layer
    mode: PlanMode
    layers: tuple[LayerPlan, ...]
    reasons: tuple[str, ...]
    warnings: tuple[str, ...] = ()
    fixes: tuple[str, ...] = ()
    index: SociIndex | None = None
    transfer: TransferPlan | None = None  # set when socirun downloads any layer (facts.transfer)
    blocker: str = ""  # the pull cannot work as asked (e.g. --snapshotter soci while soci is dead)
    # Layers unpacked at once (TransferPlan.unpacks_at_once for this snapshotter's capabilities); 0: each on its
    # committed parent, one after another.
    unpacks: int = 0

    def layer_mode(self, digest: str) -> LayerMode | None:
        for layer in self.layers:
            if layer.digest == digest:
                return layer.mode
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshotter": self.snapshotter,
            "mode": self.mode,
            "reasons": list(self.reasons),
            "warnings": list(self.warnings),
            "fixes": list(self.fixes),
            "blocker": self.blocker,
            "unpacks_at_once": self.unpacks,
            "index": None if self.index is None else {
                "kind": self.index.kind, "digest": self.index.digest, "found_via": self.index.found_via,
                "ztoc_layers": sorted(self.index.ztoc_layers)},
            "transfer": None if self.transfer is None else {
                "strategy": self.transfer.mode, "reason": "; ".join(self.transfer.reasons)},
            "layers": [layer.to_json() for layer in self.layers],
        }


# ------------------------------------------------------------------------------------------ helpers


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


def _short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


@dataclass(frozen=True)
class IndexLookup:
    """What SOCI's index lookup for this image comes to. `index` is the one SOCI picks, in its own order
    (v0.16.1 fs/fs.go findSociIndexDesc: the explicit digest, else the v2 annotation if v2 is enabled, else a v1
    referrer if v1 is enabled), even when it cannot be fetched: SOCI never moves on to the next kind then, it
    defers the whole image. `usable`: SOCI will mount the image with it."""

    index: SociIndex | None
    usable: bool
    notes: tuple[str, ...]  # why no index is used (reasons)
    warnings: tuple[str, ...]  # the image has an index, and SOCI will still not use it
    fixes: tuple[str, ...]


def usable_index(cfg: SociConfig, image: ImageFacts) -> IndexLookup:
    """The index SOCI would pick for `image` and whether it can use it, with sentences on why not and fixes."""
    notes: list[str] = []
    warnings: list[str] = []
    fixes: list[str] = []
    picked: SociIndex | None = image.explicit_index
    if picked is None:
        if not cfg.v1_enable and not cfg.v2_enable:
            notes.append(f"both [pull_modes.soci_v1] and [pull_modes.soci_v2] are disabled in {cfg.source}, so SOCI "
                         "looks for no index (\"all lazy pull modes are disabled\")")
            fixes.append("set [pull_modes.soci_v2] enable = true in SOCI's config.toml and restart soci-snapshotter")
            return IndexLookup(None, False, tuple(notes), (), tuple(fixes))
        if image.v2_index is not None:
            if cfg.v2_enable:
                picked = image.v2_index
            else:
                notes.append(f"the image has a SOCI v2 index, but [pull_modes.soci_v2] enable = false in "
                             f"{cfg.source}")
                fixes.append("set [pull_modes.soci_v2] enable = true in SOCI's config.toml and restart "
                             "soci-snapshotter")
    if picked is None and image.v1_index is not None:
        if cfg.v1_enable:
            picked = image.v1_index
        else:
            notes.append(f"the image has only a SOCI v1 index (found via {image.v1_index.found_via}), and SOCI "
                         f"v0.10+ ignores v1 indexes unless [pull_modes.soci_v1] enable = true ({cfg.source} "
                         "leaves it false; soci-snapshotter issue #1558)")
            fixes.append("set [pull_modes.soci_v1] enable = true in SOCI's config.toml, or " + FIX_CONVERT)
    if picked is None:
        if image.v2_index is None and image.v1_index is None:
            notes.append("the image has no SOCI index: no com.amazon.soci.index-digest annotation on its manifest"
                         + (" and no SOCI v1 referrer" if cfg.v1_enable else "")
                         + ("" if not image.discovery_notes else " (" + "; ".join(image.discovery_notes) + ")"))
            fixes.append(FIX_CONVERT)
        notes.extend(_failed_lookup_note(image, has_index=False))
        return IndexLookup(None, False, tuple(notes), (), tuple(fixes))
    if not picked.fetchable:
        others = "" if picked.kind == "v1" else (
            " and does not fall back to " + ("the manifest's v2 annotation or a v1 index" if picked.kind == "explicit"
                                             else "a v1 index"))
        named = (f"--soci-index-digest names the SOCI index {_short(picked.digest)}" if picked.kind == "explicit"
                 else f"the image names the SOCI {picked.kind} index {_short(picked.digest)} (via {picked.found_via})")
        notes.append(f"{named}, but {picked.problem}: SOCI defers the whole image when the index it picks cannot "
                     f"be fetched{others}")
        warnings.append(f"{named}, but it cannot be fetched, so nothing loads lazily: SOCI defers the whole image")
        fixes.append("pass a --soci-index-digest the registry has" if picked.kind == "explicit" else
                     "push the image's SOCI index (and its zTOCs) again: " + FIX_CONVERT)
        notes.extend(_failed_lookup_note(image, has_index=False))
        return IndexLookup(picked, False, tuple(notes), tuple(warnings), tuple(fixes))
    if image.failed_lookup is not None:
        notes.append(_failed_lookup_note(image, has_index=True)[0])
        warnings.append("SOCI remembers a failed index lookup for this manifest until it restarts, so it defers this "
                        "image although the image has a SOCI index now")
        fixes.append("restart soci-snapshotter-grpc (systemctl restart soci-snapshotter) so that it looks the "
                     "index up again")
        return IndexLookup(picked, False, tuple(notes), tuple(warnings), tuple(fixes))
    return IndexLookup(picked, True, tuple(notes), (), tuple(fixes))


def _failed_lookup_note(image: ImageFacts, *, has_index: bool) -> list[str]:
    failed = image.failed_lookup
    if failed is None:
        return []
    told = (f"SOCI's index lookup for manifest {_short(image.manifest_digest)} failed at {failed.at} "
            f"({failed.error}), and SOCI remembers a failed lookup for a manifest until it restarts (it last "
            f"started at {failed.daemon_started})")
    if has_index:
        return [told + ": it defers this image although the image has an index now"]
    return [told]


def soci_layer_mode(layer: LayerFact, cfg: SociConfig, index: SociIndex | None, *,
                    cached: bool = False) -> tuple[LayerMode, str]:
    """What soci-snapshotter v0.16.1 does with one layer on Prepare when its parallel mode is off
    (snapshot/snapshot.go Prepare), given the index it uses (None: it found none it can use, so it defers).
    socirun always sends the layer's size label (…/remote/soci.size), and SOCI compares it with [snapshotter]
    min_layer_size *before* it looks for an index: a smaller layer is fetched whole by SOCI itself even when the
    image has no index. The engine downloads exactly the layers this calls "standard"."""
    if cached:
        return "cached", "its snapshot is already in soci"
    if cfg.min_layer_size > 0 and layer.size < cfg.min_layer_size:
        return "snapshotter", (f"it is smaller than [snapshotter] min_layer_size = {cfg.min_layer_size}: SOCI "
                               "fetches it whole itself (it checks the size before it looks for an index)")
    if index is None:
        if cfg.parallel_as_fallback:
            return "parallel", ("no usable SOCI index, and experimental_parallel_pull_as_fallback = true: SOCI "
                                "downloads and unpacks it in parallel")
        return "standard", "SOCI defers it: socirun downloads it and containerd unpacks it"
    if layer.digest not in index.ztoc_layers:
        why = "it has no zTOC in the SOCI index"
        if layer_compression(layer.media_type) == "zstd":
            why += " (zstd layers are never lazily loaded)"
        elif layer.size < 10 << 20:
            why += " (`soci convert` makes none for a layer under its --min-layer-size, 10 MiB by default)"
        return "snapshotter", why + ": SOCI fetches it whole"
    return "lazy", "it has a zTOC: SOCI mounts it at once and fetches its bytes as they are read"


def _soci_layers(image: ImageFacts, cfg: SociConfig, index: SociIndex | None) -> list[LayerPlan]:
    cached = image.cached_in(SOCI)
    out: list[LayerPlan] = []
    for i, layer in enumerate(image.layers):
        mode, why = soci_layer_mode(layer, cfg, index, cached=layer.digest in cached)
        out.append(LayerPlan(i, layer.digest, layer.size, mode, why))
    return out


def downloads_before_prepare(plan: Plan | None, index: int, snapshotter: str) -> bool:
    """Whether socirun downloads layer `index` before it asks the snapshotter for it. A local snapshotter only
    unpacks, so always. A remote one (SOCI) is asked first, and only the layers the plan says it defers are
    fetched up front: a layer SOCI takes itself (lazily, whole or in parallel) is never downloaded twice, and one
    it defers unexpectedly is downloaded when its Prepare says so."""
    if snapshotter in LOCAL_SNAPSHOTTERS:
        return True
    return plan is not None and plan.layers[index].mode == "standard"


def _uniform(image: ImageFacts, snapshotter: str, mode: LayerMode, reason: str) -> list[LayerPlan]:
    cached = image.cached_in(snapshotter)
    return [
        LayerPlan(i, layer.digest, layer.size, "cached" if layer.digest in cached else mode,
                  f"its snapshot is already in {snapshotter}" if layer.digest in cached else reason)
        for i, layer in enumerate(image.layers)
    ]


# ------------------------------------------------------------------------------------------ the decision


def decide(facts: PlanFacts) -> Plan:
    """The plan for pulling `facts.image`. Pure: same facts, same plan. How socirun downloads the layers it
    downloads itself is `facts.transfer`, decided before; the plan reports it, completed for the snapshotter it
    picks (`TransferPlan.settle`: auto's choice where containerd can unpack layers side by side itself)."""
    sn, cfg, image, user = facts.snapshotters, facts.soci_config, facts.image, facts.user
    mode_asked = user.pull_mode
    reasons: list[str] = []
    warnings: list[str] = []
    fixes: list[str] = []
    soci_up = sn.soci_registered and sn.soci_alive

    def standard(snapshotter: str, why_layers: str, planned: list[LayerPlan] | None = None) -> Plan:
        """socirun downloads the layers (`planned`, or every layer not cached) and containerd unpacks them."""
        layers = planned if planned is not None else _uniform(image, snapshotter, "standard", why_layers)
        downloads = any(layer.mode == "standard" for layer in layers)  # socirun downloads some layer itself
        capabilities = sn.capabilities.get(snapshotter, ())
        # auto's transfer completed for this snapshotter (TransferPlan.settle), once: the engine follows it.
        transfer = facts.transfer.settle(snapshotter, capabilities) if downloads and facts.transfer else None
        unpacks = 0
        if transfer is not None:
            unpacks = transfer.unpacks_at_once(snapshotter, capabilities)
            reasons.extend((*transfer.reasons, transfer.how(snapshotter, unpacks)))
        # The mode is the transfer's even when every layer is already here (nothing to download this time).
        mode: PlanMode = "parallel" if facts.transfer is not None and facts.transfer.chunked else "standard"
        _disk_warning(facts, layers, warnings)
        blocker = ""
        if snapshotter not in sn.available and not (snapshotter == SOCI and soci_up):
            blocker = (f"containerd has no working snapshotter called {snapshotter} (it has: "
                       f"{', '.join(sn.available) or 'none'})")
        return Plan(snapshotter, mode, tuple(layers), tuple(reasons), tuple(warnings), tuple(fixes),
                    None, transfer, blocker, unpacks)

    def soci_state() -> str:
        if not sn.soci_registered:
            return ("containerd has no snapshotter called soci (it has: "
                    f"{', '.join(sn.available) or 'none'})")
        return (f"the soci snapshotter is registered in containerd, but it does not answer"
                f"{' at ' + sn.soci_address if sn.soci_address else ''}"
                f"{': ' + sn.soci_problem if sn.soci_problem else ''}")

    def soci_fix() -> str:
        if not sn.soci_registered:
            return ("install soci-snapshotter-grpc and register it in containerd's config: [proxy_plugins.soci] "
                    'type = "snapshot", address = "/run/soci-snapshotter-grpc/soci-snapshotter-grpc.sock"')
        return "start the snapshotter: systemctl start soci-snapshotter (journalctl -u soci-snapshotter says why "\
               "it stopped)"

    # 1. The user named a snapshotter other than soci: SOCI is bypassed whatever the image has.
    if user.snapshotter and user.snapshotter != SOCI:
        reasons.append(f"--snapshotter {user.snapshotter} was chosen, so SOCI is bypassed and socirun "
                       "downloads every layer itself")
        if mode_asked == "lazy":
            warnings.append(f"--pull-mode lazy needs the soci snapshotter; with --snapshotter {user.snapshotter} "
                            "every layer is downloaded in full before the container starts")
            fixes.append("drop --snapshotter (or pass --snapshotter soci) to load lazily")
        return standard(user.snapshotter, "socirun downloads it and containerd unpacks it")

    # 2. The user asked for a standard pull and left the snapshotter to us.
    if mode_asked == "standard" and user.snapshotter is None:
        reasons.append("--pull-mode standard was chosen: socirun downloads every layer and unpacks it into "
                       f"{DEFAULT_SNAPSHOTTER}")
        return standard(DEFAULT_SNAPSHOTTER, "socirun downloads it and containerd unpacks it")

    # 3. SOCI is missing or dead.
    if not soci_up:
        if user.snapshotter == SOCI:
            plan = standard(SOCI, "soci does not answer")
            return Plan(plan.snapshotter, plan.mode, plan.layers,
                        (*plan.reasons, soci_state()), plan.warnings, (*plan.fixes, soci_fix()),
                        None, plan.transfer, f"--snapshotter soci was chosen, but {soci_state()}")
        reasons.append(f"{soci_state()}, so socirun downloads every layer into {DEFAULT_SNAPSHOTTER}")
        if mode_asked == "lazy":
            warnings.append(f"--pull-mode lazy asked for lazy loading, but {soci_state()}; socirun downloads "
                            f"every layer into {DEFAULT_SNAPSHOTTER} instead")
            fixes.append(soci_fix())
        elif mode_asked in ("parallel", "parallel-stream"):
            # socirun's own ranged downloads are a parallel pull too: nothing the user asked for is lost.
            reasons.append(f"--pull-mode {mode_asked} was chosen: socirun downloads ranged chunks over several "
                           "connections")
        if mode_asked != "lazy" and sn.soci_registered:
            fixes.append(soci_fix())
        return standard(DEFAULT_SNAPSHOTTER, "socirun downloads it and containerd unpacks it")

    up = f"the soci snapshotter answers{' at ' + sn.soci_address if sn.soci_address else ''}"

    # 4. SOCI's parallel mode is on: it skips its remote-snapshot path for every layer of every image, with or
    #    without an index and before min_layer_size (v0.16.1 snapshot/snapshot.go skipRemoteSnapshotPrepare).
    if cfg.parallel_enable:
        per_image = cfg.max_concurrent_downloads_per_image
        at_a_time = f"{per_image} at a time" if per_image > 0 else "with no limit per image"
        reasons.append(f"{up}, and [pull_modes.parallel_pull_unpack] enable = true in {cfg.source}: SOCI "
                       f"downloads and unpacks every layer itself, {at_a_time} (lazy loading is skipped entirely, "
                       "even for an image with a SOCI index)")
        if cfg.discard_unpacked_layers:
            reasons.append("discard_unpacked_layers = true: SOCI keeps no layer blob in containerd's content store "
                           "after unpacking it")
        if cfg.parallel_store_problem:
            warnings.append(f"{cfg.parallel_store_problem}; it answers, so it is not running with {cfg.source}")
            fixes.append("point SOCI_SNAPSHOTTER_CONFIG at the config.toml soci-snapshotter-grpc runs with")
        if mode_asked == "lazy":
            warnings.append("--pull-mode lazy was asked for, but SOCI's parallel mode skips lazy loading "
                            "entirely; SOCI downloads every layer in full instead")
            fixes.append("set [pull_modes.parallel_pull_unpack] enable = false in SOCI's config.toml and restart "
                         "soci-snapshotter to load lazily")
        layers = _uniform(image, SOCI, "parallel", "SOCI downloads and unpacks it in parallel")
        _disk_warning(facts, layers, warnings)
        return Plan(SOCI, "parallel", tuple(layers), tuple(reasons), tuple(warnings), tuple(fixes))

    lookup = usable_index(cfg, image)
    index = lookup.index

    # 5. An index SOCI will use.
    if index is not None and lookup.usable:
        if mode_asked in ("parallel", "parallel-stream") and user.snapshotter is None:
            reasons.append(f"--pull-mode {mode_asked} was chosen, and SOCI's parallel mode is off "
                           f"([pull_modes.parallel_pull_unpack] enable = false in {cfg.source}), so socirun "
                           f"downloads the layers itself into {DEFAULT_SNAPSHOTTER}, not lazily")
            fixes.append("for SOCI's own parallel pull set [pull_modes.parallel_pull_unpack] enable = true in "
                         "SOCI's config.toml")
            return standard(DEFAULT_SNAPSHOTTER, "socirun downloads it and containerd unpacks it")
        layers = _soci_layers(image, cfg, index)
        lazy = sum(1 for layer in layers if layer.mode == "lazy")
        whole = sum(1 for layer in layers if layer.mode == "snapshotter")
        reasons.append(f"{up}, and the image has a SOCI {index.kind} index {_short(index.digest)} "
                       f"(found via {index.found_via})")
        cached = sum(1 for layer in layers if layer.mode == "cached")
        reasons.append(f"{lazy} of {len(layers)} layers have a zTOC and load lazily; {whole} are fetched whole "
                       f"by SOCI{f'; {cached} are already here' if cached else ''}; the container starts once "
                       "every layer is mounted")
        if lazy == 0 and whole:
            warnings.append("no layer of this image loads lazily; SOCI fetches every layer whole")
            if any(layer.digest in index.ztoc_layers for layer in image.layers):
                fixes.append(f"lower [snapshotter] min_layer_size (now {cfg.min_layer_size}) in SOCI's "
                             "config.toml and restart soci-snapshotter")
            else:
                fixes.append("rebuild the index with a smaller --min-layer-size: soci convert --min-layer-size N "
                             "SRC DST")
        if mode_asked == "lazy" and user.snapshotter is None:
            reasons.append("--pull-mode lazy was chosen")
        _disk_warning(facts, layers, warnings)
        return Plan(SOCI, "lazy", tuple(layers), tuple(reasons), tuple(warnings), tuple(fixes), index)

    # 6. No index SOCI will use (none, disabled, unfetchable, or a remembered failed lookup): SOCI defers the
    #    image, except the layers under min_layer_size, which it fetches whole before it ever looks for an index.
    reasons.extend(lookup.notes)
    warnings.extend(lookup.warnings)
    why_not = "; ".join(lookup.notes)
    if cfg.parallel_as_fallback:
        layers = _soci_layers(image, cfg, None)
        reasons.append(f"{up}, and experimental_parallel_pull_as_fallback = true in {cfg.source}: SOCI "
                       "downloads and unpacks every layer itself in parallel" + _whole_note(layers, cfg))
        if cfg.parallel_store_problem:
            warnings.append(f"{cfg.parallel_store_problem}; it answers, so it is not running with {cfg.source}")
        if mode_asked == "lazy":
            warnings.append("--pull-mode lazy was asked for, but " + why_not +
                            "; SOCI falls back to its parallel pull instead")
        fixes.extend(lookup.fixes)
        _disk_warning(facts, layers, warnings)
        return Plan(SOCI, "parallel", tuple(layers), tuple(reasons), tuple(warnings), tuple(fixes))
    if user.snapshotter == SOCI:
        layers = _soci_layers(image, cfg, None)
        reasons.append(f"{up}, but without a usable index SOCI defers the image to the runtime: socirun "
                       "downloads each deferred layer and unpacks it into soci's snapshots" + _whole_note(layers, cfg))
        if mode_asked == "lazy":
            warnings.append("--pull-mode lazy was asked for, but " + why_not +
                            "; every layer is downloaded in full instead")
        fixes.extend(lookup.fixes)
        return standard(SOCI, "", layers)
    reasons.append(f"without a usable index SOCI would only defer to the runtime, so socirun downloads every "
                   f"layer into {DEFAULT_SNAPSHOTTER}")
    if mode_asked == "lazy":
        warnings.append("--pull-mode lazy was asked for, but " + why_not +
                        f"; socirun downloads every layer into {DEFAULT_SNAPSHOTTER} instead")
    fixes.extend(lookup.fixes)
    return standard(DEFAULT_SNAPSHOTTER, "socirun downloads it and containerd unpacks it")


def _whole_note(layers: list[LayerPlan], cfg: SociConfig) -> str:
    whole = sum(1 for layer in layers if layer.mode == "snapshotter")
    if not whole:
        return ""
    return (f"; {whole} of {len(layers)} layers are smaller than [snapshotter] min_layer_size = "
            f"{cfg.min_layer_size}, and SOCI fetches those whole itself (socirun does not download them)")


def _disk_warning(facts: PlanFacts, layers: list[LayerPlan], warnings: list[str]) -> None:
    """Layers fetched in full need their unpacked size on disk; lazy ones only what is read."""
    full = sum(layer.size for layer in layers if layer.mode in ("standard", "parallel", "snapshotter"))
    free = facts.host.free_disk_bytes
    if free is not None and full * UNPACK_FACTOR > free:
        warnings.append(f"only {_mb(free)} are free on {facts.host.disk_path}, and the layers fetched in full "
                        f"unpack to about {_mb(full * UNPACK_FACTOR)}")


def describe(plan: Plan) -> list[str]:
    """The plan as lines for a terminal (socirun plan)."""
    lines = [f"snapshotter: {plan.snapshotter}", f"mode: {plan.mode}"]
    if plan.index is not None:
        lines.append(f"SOCI index: {plan.index.kind} {plan.index.digest} (via {plan.index.found_via})")
    lines += [f"because {reason}" for reason in plan.reasons]
    for layer in plan.layers:
        lines.append(f"  layer {layer.index} {_short(layer.digest)} {_mb(layer.size):>10}  {layer.mode:<11} "
                     f"{layer.reason}")
    lines += [f"warning: {w}" for w in plan.warnings]
    lines += [f"fix: {f}" for f in plan.fixes]
    if plan.blocker:
        lines.append(f"this pull cannot work: {plan.blocker}")
    return lines
