"""The global flags, parsed once by socirun.commands.main and handed to every command with the configuration."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GlobalOptions:
    """--address/-a, --namespace/-n and --debug, before the subcommand or after it (nerdctl takes both)."""

    address: str | None = None
    namespace: str | None = None
    debug: bool = False
