"""`socirun pull`: the flags → one PullChoices → the pull engine, run by the face --progress chose."""

from __future__ import annotations

import argparse
import dataclasses

from socirun import events as ev
from socirun.commands.context import GlobalOptions
from socirun.config import SocirunConfig
from socirun.ui.progress import progress_mode_for, run_work


def pull_command(args: argparse.Namespace, config: SocirunConfig, glob: GlobalOptions) -> int:
    mode = progress_mode_for("quiet" if args.quiet else args.progress, config)

    async def work(emit: ev.Emit) -> int:
        # The setup (a bad reference, platform or chunk size) runs inside the work too, so its error is an
        # `error` event like any other: the JSON face then says it as JSON, and a recording ends with it.
        return await _pull_work(args, config, glob)(emit)

    return run_work(work, mode, record=args.record_events)


def _pull_work(args: argparse.Namespace, config: SocirunConfig, glob: GlobalOptions) -> ev.Work:
    """The pull as `async (emit) -> int`, so any face (plain in asyncio.run, or the TUI's loop) can run it."""
    # Imported here so `socirun --help` stays fast and needs no gRPC.
    from socirun.containerd.client import ContainerdClient, resolve_target
    from socirun.oci import host_platform, parse_platform
    from socirun.pull.engine import pull_image
    from socirun.pull.request import PullChoices, build_pull_request, pull_setup
    from socirun.reference import expand_alias, parse_reference
    from socirun.registry.client import RegistryClient
    from socirun.soci.observer import observe_lazy_layers

    if args.soci_log:  # --soci-log names SOCI's log for the plan (remembered failed lookups) and the observer
        config = dataclasses.replace(config, soci_log=args.soci_log)
    text, alias = expand_alias(args.image, config.aliases)
    reference = parse_reference(text)
    platform = parse_platform(args.platform) if args.platform else host_platform()
    address, namespace = resolve_target(glob.address, glob.namespace, config)
    choices = PullChoices(
        snapshotter=args.snapshotter or config.snapshotter,  # config holds CONTAINERD_SNAPSHOTTER already
        pull_mode=args.pull_mode,
        max_concurrent_downloads=args.max_concurrent_downloads,
        chunk_size=args.chunk_size,
        soci_index_digest=args.soci_index_digest or "",
        discard_unpacked_layers=args.discard_unpacked_layers,
    )
    setup = pull_setup(config, choices)
    request = build_pull_request(reference, platform, setup, choices, expanded_from=alias)
    insecure = [*config.insecure_registries, *args.insecure_registry]

    async def work(emit: ev.Emit) -> int:
        async with await ContainerdClient.connect(address, namespace) as ctd, RegistryClient(
            hosts_dir=args.hosts_dir or config.hosts_dir, insecure=insecure
        ) as registry, observe_lazy_layers(emit, setup.soci, setup.soci_log) as tapped:
            await pull_image(ctd, registry, request, tapped)
        return 0

    return work
