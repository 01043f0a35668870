"""`socirun plan IMAGE`: the plan a pull would make (the same PullSetup as `socirun pull`), and why."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from socirun.commands.context import GlobalOptions
from socirun.config import SocirunConfig
from socirun.text import terminal_safe


async def _plan(args: argparse.Namespace, config: SocirunConfig, glob: GlobalOptions) -> dict[str, Any]:
    from socirun.containerd.client import ContainerdClient, resolve_target
    from socirun.decide.plan import decide, describe
    from socirun.oci import host_platform, parse_platform
    from socirun.pull.request import PullChoices, pull_setup
    from socirun.reference import expand_alias, parse_reference
    from socirun.registry.client import RegistryClient
    from socirun.soci.observer import observation_sources
    from socirun.soci.probe import gather_facts

    text, alias = expand_alias(args.image, config.aliases)
    reference = parse_reference(text)
    platform = parse_platform(args.platform) if args.platform else host_platform()
    # The same inputs a pull of this image would decide from (config holds CONTAINERD_SNAPSHOTTER already).
    setup = pull_setup(config, PullChoices(snapshotter=args.snapshotter or config.snapshotter,
                                           pull_mode=args.pull_mode,
                                           discard_unpacked_layers=args.discard_unpacked_layers))
    address, namespace = resolve_target(glob.address, glob.namespace, config)
    insecure = [*config.insecure_registries, *args.insecure_registry]
    async with await ContainerdClient.connect(address, namespace) as ctd, RegistryClient(
        hosts_dir=args.hosts_dir or config.hosts_dir, insecure=insecure
    ) as registry:
        img = await registry.resolve(reference, platform)
        facts = await gather_facts(ctd, registry, img, setup.user, setup.transfer, setup.host, setup.soci,
                                   explicit_index=args.soci_index_digest, soci_log=setup.soci_log)
    plan = decide(facts)
    sources = observation_sources(facts.soci_config, config.soci_log)
    doc = plan.to_json() | {
        "reference": str(img.reference),
        "expanded_from": alias,
        "manifest_digest": img.manifest.digest,
        "soci": {
            "registered": facts.snapshotters.soci_registered,
            "alive": facts.snapshotters.soci_alive,
            "problem": facts.snapshotters.soci_problem,
            "config": facts.soci_config.to_json(),
            "observation_sources": [{"name": s.name, "live": s.live, "detail": s.detail, "enable": s.enable}
                                    for s in sources],
        },
        "host": facts.host.to_json(),
        "text": describe(plan) + [f"SOCI {s.name}: {'live' if s.live else 'off'} ({s.detail})"
                                  + (f"; to turn it on: {s.enable}" if s.enable and not s.live else "")
                                  for s in sources if facts.snapshotters.soci_registered],
    }
    return doc


def plan_command(args: argparse.Namespace, config: SocirunConfig, glob: GlobalOptions) -> int:
    doc = asyncio.run(_plan(args, config, glob))
    print(render_plan(doc, as_json=args.json))
    return 0


def render_plan(doc: dict[str, Any], *, as_json: bool) -> str:
    """What `plan` prints on stdout: the document as JSON (json.dumps escapes every control and non-ASCII
    character), or its text lines, each terminal-safe (they quote the registry's and SOCI's words)."""
    if as_json:
        return json.dumps({k: v for k, v in doc.items() if k != "text"}, indent=2)
    return "\n".join(terminal_safe(line) for line in doc["text"])
