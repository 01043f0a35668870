"""`python -m socirun.sandbox.soci_emulator`: serve the SOCI emulator until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import grpc.aio

from socirun.containerd.api.services.snapshots.v1 import snapshots_pb2_grpc
from socirun.decide.facts import SociConfig
from socirun.registry.client import RegistryClient
from socirun.sandbox.soci_emulator import LABEL
from socirun.sandbox.soci_emulator.observe import log, serve_metrics
from socirun.sandbox.soci_emulator.service import EmulatorSettings, SociEmulator
from socirun.soci.config import parse_soci_config


async def serve(args: argparse.Namespace) -> None:
    config = SociConfig(source="built-in defaults")
    if args.config and os.path.exists(args.config):
        config = parse_soci_config(Path(args.config).read_text(), args.config)
    settings = EmulatorSettings(
        root=Path(args.root),
        containerd_address=args.containerd_address,
        config=config,
        span_pace_s=args.span_pace_ms / 1000,
        silence_s=args.silence_ms / 1000,
    )
    settings.root.mkdir(parents=True, exist_ok=True)
    loop = asyncio.get_running_loop()
    async with RegistryClient(insecure=args.insecure_registry) as registry:
        emulator = SociEmulator(settings, registry, loop)
        server = grpc.aio.server()
        snapshots_pb2_grpc.add_SnapshotsServicer_to_server(emulator, server)
        if os.path.exists(args.address):
            os.unlink(args.address)
        server.add_insecure_port(f"unix:{args.address}")
        await server.start()
        metrics = None
        if config.metrics_enabled:
            metrics = await serve_metrics(emulator.metrics, config.metrics_address, config.metrics_network)
        log("info", f"{LABEL} serving", address=args.address, metrics=config.metrics_address,
            config=config.source, parallel=config.parallel_enable, v1=config.v1_enable, v2=config.v2_enable)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log("info", f"{LABEL} stopping")
        await emulator.close()
        await server.stop(1)
        if metrics is not None:
            await metrics.cleanup()
        with contextlib.suppress(OSError):
            os.unlink(args.address)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m socirun.sandbox.soci_emulator", description=LABEL)
    parser.add_argument("--root", required=True, help="state directory (snapshots, metadata)")
    parser.add_argument("--address", required=True, help="unix socket to serve the Snapshots API on")
    parser.add_argument("--containerd-address", required=True, help="containerd's socket (its content store)")
    parser.add_argument("--config", default="", help="SOCI config.toml (pull modes, metrics_address, …)")
    parser.add_argument("--span-pace-ms", type=float, default=0.0, help="pause after each background span")
    parser.add_argument("--silence-ms", type=float, default=0.0, help="pause before a new image's background fill")
    parser.add_argument("--insecure-registry", action="append", default=[])
    asyncio.run(serve(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
