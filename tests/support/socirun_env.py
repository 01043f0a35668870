"""The environment a `socirun` subprocess under test runs in: the sandbox's containerd, a data root and a config
directory of the test's own, nothing socirun reads from the developer's environment (shared by the integration
tests and the campaigns)."""

from __future__ import annotations

import os
from pathlib import Path


def socirun_vars(address: str, data_root: Path, config_home: Path, *, namespace: str = "default",
                 extra: dict[str, str] | None = None) -> dict[str, str]:  # fmt: skip
    """os.environ less every SOCIRUN_* and CONTAINERD_* variable (a developer's SOCIRUN_PROGRESS or data root
    must not change what a test sees), plus the test's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOCIRUN_", "CONTAINERD_"))}
    env |= {"CONTAINERD_ADDRESS": address, "CONTAINERD_NAMESPACE": namespace, "SOCIRUN_DATA_ROOT": str(data_root),
            "XDG_CONFIG_HOME": str(config_home)}  # fmt: skip
    return env | (extra or {})


def write_bridge_config(config_home: Path, *, network: str, bridge: str, subnet: str) -> None:
    """socirun's config file under `config_home`: plain progress and the test's own CNI bridge and subnet (never
    the default ones a real installation may use)."""
    (config_home / "socirun").mkdir(parents=True, exist_ok=True)
    (config_home / "socirun" / "config.toml").write_text(
        f'progress = "plain"\n[network]\nname = "{network}"\nbridge = "{bridge}"\nsubnet = "{subnet}"\n'
    )
