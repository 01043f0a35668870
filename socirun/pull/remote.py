"""The remote-snapshotter (SOCI) side of the pull engine: Prepare keys and labels, classifying what the
snapshotter did with a layer from the labels on its committed snapshot, what to say when it defers a layer the
plan expected it to take, the plan's events, and the planner the CLI hands the engine
(https://github.com/awslabs/soci-snapshotter/blob/v0.16.1/snapshot/snapshot.go)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

from socirun import events as ev
from socirun.containerd.client import ContainerdClient
from socirun.decide.facts import HostProfile, SociConfig, UserChoice
from socirun.decide.plan import Plan, decide
from socirun.decide.transfer import CHUNKED_TRANSFERS, TransferPlan
from socirun.oci import Descriptor
from socirun.pull import labels as lb
from socirun.registry.client import RegistryClient, ResolvedImage
from socirun.soci import constants as c
from socirun.soci.probe import key_tag

Planner = Callable[[ContainerdClient, RegistryClient, ResolvedImage], Awaitable[Plan]]


def soci_prepare_labels(image_ref: str, manifest_digest: str, layers: Sequence[Descriptor], index: int,
                        soci_index_digest: str = "") -> dict[str, str]:
    """The `cri.*` labels plus SOCI's optional ones (sizes, index digest), as nerdctl's SOCI wrapper sets them;
    `image.layers.size` lists the sizes of exactly the digests `cri.image-layers` kept."""
    labels = lb.remote_snapshot_labels(image_ref, manifest_digest, layers, index)
    kept = labels[lb.CRI_IMAGE_LAYERS].split(",") if labels[lb.CRI_IMAGE_LAYERS] else []
    sizes = [str(layer.size) for layer in layers[index:index + len(kept)]]
    budget = lb.MAX_LABEL_BYTES - len(c.SOCI_IMAGE_LAYERS_SIZE)
    while sizes and len(",".join(sizes)) > budget:
        sizes.pop()
    labels[c.SOCI_SIZE] = str(layers[index].size)
    if len(sizes) == len(kept):  # SOCI rejects mismatched lengths; dropping the hint only costs performance
        labels[c.SOCI_IMAGE_LAYERS_SIZE] = ",".join(sizes)
    labels[c.SOCI_INDEX_DIGEST] = soci_index_digest
    return labels


def soci_unpack_key(chain_id: str, manifest_digest: str) -> str:
    """The active-snapshot key of a Prepare sent to a remote snapshotter: containerd's `extract-<unique>
    <chainID>` shape with the manifest digest after the unique part, so that SOCI's log lines (which carry the
    key, never the manifest) say which manifest a failed index lookup was for (socirun.soci.probe.key_tag)."""
    head, _, chain = lb.unpack_key(chain_id).partition(" ")
    return f"{head}{key_tag(manifest_digest)} {chain}"


def classify(labels: Mapping[str, str]) -> tuple[ev.LayerMode, str]:
    """What became of a layer whose Prepare answered ALREADY_EXISTS, from its committed snapshot's labels (v0.16.1
    snapshot/snapshot.go Prepare: SOCI adds …/remote/namespace to every snapshot it commits itself; `remote` marks
    a lazy mount; has.soci.index.digest a layer it fetched whole, with or without an index). A snapshot with
    none of them was committed by a client that downloaded and unpacked the layer (socirun, ctr, containerd's
    unpacker), after SOCI deferred it or without asking SOCI at all."""
    if labels.get(c.REMOTE) == c.REMOTE_VALUE:
        return "lazy", "mounted lazily by SOCI: its bytes arrive on demand and in the background"
    if labels.get(c.HAS_SOCI_INDEX) == "true":
        return "snapshotter", "fetched whole by SOCI (no zTOC for it, below min_layer_size, or its FUSE mount failed)"
    if c.REMOTE_NAMESPACE in labels:
        return "parallel", "downloaded and unpacked by SOCI (parallel pull)"
    return "cached", "already unpacked by a client (committed without SOCI's labels), not fetched by SOCI"


DEFERRED_DESPITE_INDEX = ("SOCI deferred this image although it has an index: SOCI remembers a failed index lookup "
                          "for a manifest until it restarts; restart soci-snapshotter-grpc")


def unexpected_deferral(plan: Plan | None, index: int) -> str:
    """The warning for a layer SOCI deferred (its Prepare returned mounts) although the plan expected SOCI to
    take it; "" when the plan expected the deferral. socirun downloads the layer either way."""
    if plan is None or plan.layers[index].mode in ("standard", "cached"):
        return ""
    if plan.index is not None:
        return DEFERRED_DESPITE_INDEX
    return (f"SOCI deferred layer {index} although the plan expected it to take it "
            f"({plan.layers[index].mode}): socirun downloads it")


def make_planner(user: UserChoice, transfer: TransferPlan, host: HostProfile, soci: SociConfig, *,
                 soci_index_digest: str = "", soci_log: str | None = None) -> Planner:
    """The engine calls this once the image is resolved: gather the facts, decide (with the transfer, the host
    and SOCI's configuration the request builder already has; `soci_log`: SOCI's log file, for a failed index
    lookup it remembers)."""

    async def planner(ctd: ContainerdClient, registry: RegistryClient, img: ResolvedImage) -> Plan:
        from socirun.soci.probe import gather_facts

        facts = await gather_facts(ctd, registry, img, user, transfer, host, soci,
                                   explicit_index=soci_index_digest or None, soci_log=soci_log)
        return decide(facts)

    return planner


def plan_events(plan: Plan) -> list[ev.Event]:
    """PlanMade (reasons, then the fixes) and a warning per warning. Layer rows are the caller's."""
    reasons = (*plan.reasons, *(f"fix: {fix}" for fix in plan.fixes))
    out: list[ev.Event] = [ev.PlanMade(mode=plan.mode, snapshotter=plan.snapshotter, reasons=reasons)]
    out += [ev.WarningMessage(message=w) for w in plan.warnings]
    return out


def planned_mode(plan: Plan | None, index: int, present: bool, transfer_mode: str) -> ev.LayerMode:
    """The LayerPlanned row's mode: the plan's expectation; layers socirun downloads show its transfer mode."""
    if present:
        return "cached"
    if plan is None:
        return "parallel" if transfer_mode in CHUNKED_TRANSFERS else "standard"
    mode = plan.layers[index].mode
    if mode == "standard" and transfer_mode in CHUNKED_TRANSFERS:
        return "parallel"
    return "standard" if mode == "cached" else mode
