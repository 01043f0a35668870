"""The mode decision: which snapshotter, which pull mode, and what happens to each layer — with the reasons in
plain sentences. A pure function (`decide`) over facts that thin probes gather (`socirun.soci.probe`).

It follows SOCI's own decision table (https://github.com/awslabs/soci-snapshotter/blob/v0.15.0/docs/pull-modes.md) so
that what the plan
says is what the snapshotter will do, and it never falls back silently: whenever the user asked for something
that cannot happen, a warning says what happens instead and a fix says how to get it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from socirun.decide.facts import (
    DEFAULT_SNAPSHOTTER,
    SOCI,
    ImageFacts,
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


def usable_index(cfg: SociConfig, image: ImageFacts) -> tuple[SociIndex | None, list[str], list[str]]:
    """The index SOCI would use (in SOCI's discovery order), plus sentences on why others are not used and fixes."""
    notes: list[str] = []
    fixes: list[str] = []
    if image.explicit_index is not None:
        return image.explicit_index, notes, fixes
    if not cfg.v1_enable and not cfg.v2_enable:
        notes.append(f"both [pull_modes.soci_v1] and [pull_modes.soci_v2] are disabled in {cfg.source}, so SOCI "
                     "looks for no index (\"all lazy pull modes are disabled\")")
        fixes.append("set [pull_modes.soci_v2] enable = true in SOCI's config.toml and restart soci-snapshotter")
        return None, notes, fixes
    if image.v2_index is not None:
        if cfg.v2_enable:
            return image.v2_index, notes, fixes
        notes.append(f"the image has a SOCI v2 index, but [pull_modes.soci_v2] enable = false in {cfg.source}")
        fixes.append("set [pull_modes.soci_v2] enable = true in SOCI's config.toml and restart soci-snapshotter")
    if image.v1_index is not None:
        if cfg.v1_enable:
            return image.v1_index, notes, fixes
        notes.append(f"the image has only a SOCI v1 index (found via {image.v1_index.found_via}), and SOCI "
                     f"v0.10+ ignores v1 indexes unless [pull_modes.soci_v1] enable = true ({cfg.source} leaves "
                     "it false; soci-snapshotter issue #1558)")
        fixes.append("set [pull_modes.soci_v1] enable = true in SOCI's config.toml, or " + FIX_CONVERT)
    if image.v2_index is None and image.v1_index is None:
        notes.append("the image has no SOCI index: no com.amazon.soci.index-digest annotation on its manifest"
                     + (" and no SOCI v1 referrer" if cfg.v1_enable else "")
                     + ("" if not image.discovery_notes else " (" + "; ".join(image.discovery_notes) + ")"))
        fixes.append(FIX_CONVERT)
    return None, notes, fixes


def _lazy_layers(image: ImageFacts, index: SociIndex, cfg: SociConfig) -> list[LayerPlan]:
    out: list[LayerPlan] = []
    cached = image.cached_in(SOCI)
    for i, layer in enumerate(image.layers):
        if layer.digest in cached:
            out.append(LayerPlan(i, layer.digest, layer.size, "cached", "its snapshot is already in soci"))
        elif layer.digest not in index.ztoc_layers:
            why = "it has no zTOC in the SOCI index"
            if layer_compression(layer.media_type) == "zstd":
                why += " (zstd layers are never lazily loaded)"
            elif layer.size < 10 << 20:
                why += " (`soci convert` skips layers under 10 MiB)"
            out.append(LayerPlan(i, layer.digest, layer.size, "snapshotter", why + ": SOCI fetches it whole"))
        elif layer.size < cfg.min_layer_size:
            out.append(LayerPlan(i, layer.digest, layer.size, "snapshotter",
                                 f"it is smaller than [snapshotter] min_layer_size = {cfg.min_layer_size}: "
                                 "SOCI fetches it whole"))
        else:
            out.append(LayerPlan(i, layer.digest, layer.size, "lazy",
                                 "it has a zTOC: SOCI mounts it at once and fetches its bytes as they are read"))
    return out


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
    downloads itself is `facts.transfer`, decided before; the plan reports it and never decides it again."""
    sn, cfg, image, user = facts.snapshotters, facts.soci_config, facts.image, facts.user
    mode_asked = user.pull_mode
    reasons: list[str] = []
    warnings: list[str] = []
    fixes: list[str] = []
    soci_up = sn.soci_registered and sn.soci_alive

    def standard(snapshotter: str, why_layers: str) -> Plan:
        layers = _uniform(image, snapshotter, "standard", why_layers)
        downloads = any(layer.mode == "standard" for layer in layers)  # socirun downloads some layer itself
        transfer = facts.transfer if downloads else None
        if transfer is not None:
            reasons.extend((*transfer.reasons, transfer.how(snapshotter)))
        # The mode is the transfer's even when every layer is already here (nothing to download this time).
        mode: PlanMode = "parallel" if facts.transfer is not None and facts.transfer.mode == "parallel" \
            else "standard"
        _disk_warning(facts, layers, warnings)
        blocker = ""
        if snapshotter not in sn.available and not (snapshotter == SOCI and soci_up):
            blocker = (f"containerd has no working snapshotter called {snapshotter} (it has: "
                       f"{', '.join(sn.available) or 'none'})")
        return Plan(snapshotter, mode, tuple(layers), tuple(reasons), tuple(warnings), tuple(fixes),
                    None, transfer, blocker)

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
        elif mode_asked == "parallel":
            # socirun's own ranged downloads are a parallel pull too: nothing the user asked for is lost.
            reasons.append("--pull-mode parallel was chosen: socirun downloads ranged chunks over several "
                           "connections")
        if mode_asked != "lazy" and sn.soci_registered:
            fixes.append(soci_fix())
        return standard(DEFAULT_SNAPSHOTTER, "socirun downloads it and containerd unpacks it")

    up = f"the soci snapshotter answers{' at ' + sn.soci_address if sn.soci_address else ''}"

    # 4. SOCI's parallel mode is on: lazy loading is skipped entirely (docs/parallel-mode.md).
    if cfg.parallel_enable:
        reasons.append(f"{up}, and [pull_modes.parallel_pull_unpack] enable = true in {cfg.source}: SOCI "
                       f"downloads and unpacks every layer itself, {cfg.max_concurrent_downloads_per_image} at a "
                       "time (lazy loading is skipped entirely)")
        if mode_asked == "lazy":
            warnings.append("--pull-mode lazy was asked for, but SOCI's parallel mode skips lazy loading "
                            "entirely; SOCI downloads every layer in full instead")
            fixes.append("set [pull_modes.parallel_pull_unpack] enable = false in SOCI's config.toml and restart "
                         "soci-snapshotter to load lazily")
        layers = _uniform(image, SOCI, "parallel", "SOCI downloads and unpacks it in parallel")
        _disk_warning(facts, layers, warnings)
        return Plan(SOCI, "parallel", tuple(layers), tuple(reasons), tuple(warnings), tuple(fixes))

    index, notes, index_fixes = usable_index(cfg, image)

    # 5. An index SOCI will use.
    if index is not None:
        if mode_asked == "parallel" and user.snapshotter is None:
            reasons.append(f"--pull-mode parallel was chosen, and SOCI's parallel mode is off "
                           f"([pull_modes.parallel_pull_unpack] enable = false in {cfg.source}), so socirun "
                           f"downloads the layers itself into {DEFAULT_SNAPSHOTTER}, not lazily")
            fixes.append("for SOCI's own parallel pull set [pull_modes.parallel_pull_unpack] enable = true in "
                         "SOCI's config.toml")
            return standard(DEFAULT_SNAPSHOTTER, "socirun downloads it and containerd unpacks it")
        layers = _lazy_layers(image, index, cfg)
        lazy = sum(1 for layer in layers if layer.mode == "lazy")
        whole = sum(1 for layer in layers if layer.mode == "snapshotter")
        reasons.append(f"{up}, and the image has a SOCI {index.kind} index {_short(index.digest)} "
                       f"(found via {index.found_via})")
        cached = sum(1 for layer in layers if layer.mode == "cached")
        reasons.append(f"{lazy} of {len(layers)} layers have a zTOC and load lazily; {whole} are fetched whole "
                       f"by SOCI{f'; {cached} are already here' if cached else ''}; the container starts once "
                       "every layer is mounted")
        if lazy == 0:
            warnings.append("no layer of this image has a zTOC, so nothing loads lazily; SOCI fetches every "
                            "layer whole")
            fixes.append("rebuild the index with a smaller --min-layer-size: soci convert --min-layer-size N "
                         "SRC DST")
        if mode_asked == "lazy" and user.snapshotter is None:
            reasons.append("--pull-mode lazy was chosen")
        _disk_warning(facts, layers, warnings)
        return Plan(SOCI, "lazy", tuple(layers), tuple(reasons), tuple(warnings), tuple(fixes), index)

    # 6. No usable index.
    reasons.extend(notes)
    if cfg.parallel_as_fallback:
        reasons.append(f"{up}, and experimental_parallel_pull_as_fallback = true in {cfg.source}: SOCI "
                       "downloads and unpacks every layer itself in parallel")
        if mode_asked == "lazy":
            warnings.append("--pull-mode lazy was asked for, but " + "; ".join(notes) +
                            "; SOCI falls back to its parallel pull instead")
            fixes.extend(index_fixes)
        layers = _uniform(image, SOCI, "parallel", "SOCI downloads and unpacks it in parallel")
        _disk_warning(facts, layers, warnings)
        return Plan(SOCI, "parallel", tuple(layers), tuple(reasons), tuple(warnings), tuple(fixes))
    if user.snapshotter == SOCI:
        reasons.append(f"{up}, but without an index SOCI defers every layer to the runtime: socirun downloads "
                       "each one and unpacks it into soci's snapshots")
        if mode_asked == "lazy":
            warnings.append("--pull-mode lazy was asked for, but " + "; ".join(notes) +
                            "; every layer is downloaded in full instead")
        fixes.extend(index_fixes)
        return standard(SOCI, "SOCI defers it: socirun downloads it and containerd unpacks it")
    reasons.append(f"without a usable index SOCI would only defer to the runtime, so socirun downloads every "
                   f"layer into {DEFAULT_SNAPSHOTTER}")
    if mode_asked == "lazy":
        warnings.append("--pull-mode lazy was asked for, but " + "; ".join(notes) +
                        f"; socirun downloads every layer into {DEFAULT_SNAPSHOTTER} instead")
    fixes.extend(index_fixes)
    return standard(DEFAULT_SNAPSHOTTER, "socirun downloads it and containerd unpacks it")


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
