"""`socirun plan` and `socirun doctor`: thin CLI shells around socirun.plan and socirun.doctor."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from socirun.config import SocirunConfig
from socirun.plan import UserChoice


def _connection(args: argparse.Namespace, config: SocirunConfig) -> tuple[str, str]:
    from socirun.containerd.client import resolve_target

    return resolve_target(getattr(args, "address", None), getattr(args, "namespace", None), config)


async def _plan(args: argparse.Namespace, config: SocirunConfig) -> dict[str, Any]:
    from socirun.containerd.client import ContainerdClient
    from socirun.oci import host_platform, parse_platform
    from socirun.plan import decide, default_choose_transfer, describe
    from socirun.pull.request import PullChoices, pull_mode_for
    from socirun.reference import expand_alias, parse_reference
    from socirun.registry.client import RegistryClient
    from socirun.soci.observer import observation_sources
    from socirun.soci.probe import gather_facts

    text, alias = expand_alias(args.image, config.aliases)
    reference = parse_reference(text)
    platform = parse_platform(args.platform) if args.platform else host_platform()
    snapshotter = args.snapshotter or config.snapshotter  # config holds CONTAINERD_SNAPSHOTTER already
    user = UserChoice(snapshotter, pull_mode_for(PullChoices(pull_mode=getattr(args, "pull_mode", None)), config))
    address, namespace = _connection(args, config)
    insecure = [*config.insecure_registries, *args.insecure_registry]
    async with await ContainerdClient.connect(address, namespace) as ctd, RegistryClient(
        hosts_dir=args.hosts_dir or config.hosts_dir, insecure=insecure
    ) as registry:
        img = await registry.resolve(reference, platform)
        facts = await gather_facts(ctd, registry, img, user, explicit_index=args.soci_index_digest)
    plan = decide(facts, default_choose_transfer())
    sources = observation_sources(facts.soci_config)
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


def plan_command(args: argparse.Namespace, config: SocirunConfig) -> int:
    doc = asyncio.run(_plan(args, config))
    if args.json:
        text = doc.pop("text")
        del text
        print(json.dumps(doc, indent=2))
    else:
        print("\n".join(doc["text"]))
    return 0


async def _doctor(args: argparse.Namespace, config: SocirunConfig) -> list[Any]:
    from socirun import doctor
    from socirun.soci.config import load_soci_config

    address, namespace = _connection(args, config)
    checks, _facts = await doctor.check_containerd(address, namespace)
    checks += doctor.soci_config_checks(load_soci_config(), args.soci_log)
    checks.append(doctor.cni_check())
    checks.append(doctor.gpu_check())
    if args.image:
        checks.append(doctor.credentials_check(args.image))
    return checks


def doctor_command(args: argparse.Namespace, config: SocirunConfig) -> int:
    from socirun import doctor

    checks = asyncio.run(_doctor(args, config))
    print("\n".join(doctor.render(checks)), file=sys.stderr)
    failed = [c for c in checks if not c.ok and not c.optional]
    return 1 if failed else 0
