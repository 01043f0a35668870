"""Volumes under socirun's data root, nerdctl's layout: `<data-root>/volumes/<namespace>/<name>/_data`.

-v/--mount/--tmpfs specs become spec mounts here: named volumes are created on first use, anonymous ones get a
random 64-hex name (recorded so --rm removes them), bind sources are made absolute; a missing one is created as a
directory for -v (and --mount bind-create-src) and refused for --mount type=bind, as docker does.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field

from socirun.errors import SocirunError
from socirun.runtime.options import VolumeSpec
from socirun.runtime.spec import SpecMount

# docker's volume name pattern (volume/local), matched whole: with `$`, "name\n" would pass.
VOLUME_NAME_PATTERN = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")


@dataclass
class ResolvedVolumes:
    mounts: list[SpecMount] = field(default_factory=list)
    anonymous: list[str] = field(default_factory=list)  # names of volumes created for this container
    records: list[dict[str, object]] = field(default_factory=list)  # nerdctl/mounts.N label values


def bind_source_missing(source: str) -> str:
    """docker's sentence for --mount type=bind of a path that does not exist (moby's errBindSourceDoesNotExist)."""
    return f'invalid mount config for type "bind": bind source path does not exist: {source}'


def volumes_dir(data_root: str, namespace: str) -> str:
    return os.path.join(data_root, "volumes", namespace)


def volume_path(data_root: str, namespace: str, name: str) -> str:
    return os.path.join(volumes_dir(data_root, namespace), name, "_data")


def resolve_volumes(
    specs: Sequence[VolumeSpec], image_volumes: Sequence[str], data_root: str, namespace: str, cwd: str
) -> ResolvedVolumes:
    out = ResolvedVolumes()
    targets = {s.target for s in specs}
    # The image's VOLUME entries become anonymous volumes unless a flag mounts something there.
    all_specs = [*specs, *(VolumeSpec("volume", "", v) for v in image_volumes if v not in targets)]
    for spec in all_specs:
        if spec.kind == "tmpfs":
            opts = ("nosuid", "noexec", "nodev", *spec.options, *(("ro",) if spec.readonly else ()))
            out.mounts.append(SpecMount(spec.target, "tmpfs", "tmpfs", opts))
            out.records.append({"Type": "tmpfs", "Destination": spec.target, "RW": True})
            continue
        propagation = [o for o in spec.options if o.endswith(("private", "shared", "slave"))] or ["rprivate"]
        bind = "bind" if "bind" in spec.options else "rbind"
        opts_list = [bind, *propagation]
        if spec.readonly:
            # rro: --mount bind-recursive=readonly (and nerdctl's -v mode), read-only all the way down
            opts_list.append("rro" if "rro" in spec.options else "ro")
        if spec.kind == "bind":
            source = spec.source if os.path.isabs(spec.source) else os.path.join(cwd, spec.source)
            if not os.path.exists(source):  # os.Stat, as docker: a dangling link is missing
                if not spec.create_missing:
                    raise SocirunError(bind_source_missing(source))
                os.makedirs(source, mode=0o755, exist_ok=True)
            out.mounts.append(SpecMount(spec.target, "bind", source, tuple(opts_list)))
            out.records.append({"Type": "bind", "Source": source, "Destination": spec.target,
                                "RW": not spec.readonly})  # fmt: skip
            continue
        name = spec.source
        if not name:
            name = secrets.token_hex(32)
            out.anonymous.append(name)
        elif not VOLUME_NAME_PATTERN.fullmatch(name):  # the name becomes a directory under the data root
            raise SocirunError(f"{name!r} includes invalid characters for a local volume name, only "
                               '"[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed')  # fmt: skip
        path = volume_path(data_root, namespace, name)
        try:
            os.makedirs(path, mode=0o755, exist_ok=True)
        except OSError as err:
            raise SocirunError(f"cannot create volume {name} under {data_root}: {err.strerror or err}") from None
        # A volume is socirun's own directory: what a container leaves in it must not become a setuid binary or a
        # device node that works on the host's side (CVE-2021-41091's class), so it is mounted nosuid, nodev.
        out.mounts.append(SpecMount(spec.target, "bind", path, (*opts_list, "nosuid", "nodev")))
        out.records.append({"Type": "volume", "Name": name, "Source": path, "Destination": spec.target,
                            "Driver": "local", "RW": not spec.readonly})  # fmt: skip
    return out


def remove_volumes(data_root: str, namespace: str, names: Sequence[str]) -> None:
    for name in names:
        shutil.rmtree(os.path.join(volumes_dir(data_root, namespace), name), ignore_errors=True)
