"""Sandbox helpers for the integration tests: what the host must have, short socket-safe directories, the
sample the session fixtures push, the type of the `ctr` fixture, reading the sandbox registry's manifests, and
the labels of a snapshotter's snapshots (which layers SOCI mounted lazily)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The base layer plus four small data layers: five layers, ~4 MB compressed, quick to push and pull.
SAMPLE_5_LAYERS_MB = (1.0, 1.0, 2.0, 4.0)
SAMPLE_5_NAME = "socirun/sample5"
SAMPLE_5_TAG = "latest"

CtrRunner = Callable[..., "subprocess.CompletedProcess[str]"]


def missing_requirement() -> str | None:
    """Why the sandbox cannot run here, or None."""
    if os.geteuid() != 0:
        return "the integration tests need root (containerd mounts snapshots and runs runc)"
    for binary in ("containerd", "ctr", "runc", "docker-registry"):
        if shutil.which(binary) is None:
            return f"{binary} is not installed"
    return None


def containerd_choice(choice: str) -> tuple[str | None, str]:
    """(binary, "") for `--containerd debian|built|PATH`, or (None, why it is not there)."""
    from socirun.errors import SandboxError
    from socirun.sandbox.components import containerd2_dir, resolve_containerd

    try:
        if choice == "debian":
            return resolve_containerd("containerd"), ""
        if choice == "built":
            return str(containerd2_dir() / "containerd"), ""
        return resolve_containerd(choice), ""
    except SandboxError as err:
        return None, f"--containerd {choice}: {err}"


def short_tmp_dir(prefix: str = "srt-") -> Path:
    """A fresh directory directly under /tmp: unix socket paths inside it stay far below 108 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


MANIFEST_ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])


def registry_get(host: str, path: str, accept: str = "") -> tuple[int, bytes]:
    """GET http://HOST/v2/PATH from a plain-HTTP registry: (status, body); a 4xx/5xx is returned, not raised."""
    request = urllib.request.Request(f"http://{host}/v2/{path}", headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def registry_json(host: str, name: str, reference: str) -> dict[str, Any]:
    """The manifest or index NAME:REFERENCE (a tag or a digest) as JSON; fails the test unless it exists."""
    status, body = registry_get(host, f"{name}/manifests/{reference}", accept=MANIFEST_ACCEPT)
    assert status == 200, f"{name}:{reference} answered HTTP {status}: {body[:200]!r}"
    doc: dict[str, Any] = json.loads(body)
    return doc


def snapshot_labels(ctr: str, address: str, snapshotter: str = "soci") -> dict[str, dict[str, str]]:
    """Every snapshot's labels in `snapshotter` (namespace default), by key, through `ctr snapshots info`
    (`ctr` should be containerd 2.x's own when the sandbox runs 2.x)."""
    base = [ctr, "-a", address, "-n", "default", "snapshots", "--snapshotter", snapshotter]
    listing = subprocess.run([*base, "ls"], capture_output=True, text=True, timeout=60, check=True).stdout
    labels: dict[str, dict[str, str]] = {}
    for line in listing.splitlines()[1:]:
        if not line.strip():
            continue
        key = line.split()[0]
        info = subprocess.run([*base, "info", key], capture_output=True, text=True, timeout=60, check=True).stdout
        labels[key] = dict(json.loads(info).get("Labels") or {})
    return labels


def remote_layers(labels: dict[str, dict[str, str]]) -> set[str]:
    """The layer digests (cri.layer-digest) of the snapshots SOCI mounted lazily: containerd.io/snapshot/remote
    = "remote snapshot" (soci-snapshotter's snapshot/snapshot.go)."""
    return {
        label["containerd.io/snapshot/cri.layer-digest"]
        for label in labels.values()
        if label.get("containerd.io/snapshot/remote") == "remote snapshot"
        and "containerd.io/snapshot/cri.layer-digest" in label
    }


def snapshot_layers(labels: dict[str, dict[str, str]]) -> set[str]:
    """The layer digests of every snapshot that carries one (SOCI's, lazy or fetched whole)."""
    return {label["containerd.io/snapshot/cri.layer-digest"] for label in labels.values()
            if "containerd.io/snapshot/cri.layer-digest" in label}


# -- the sandbox registry's API (tests/integration/test_soci_plan.py) ---------------------------------------------


def _registry_call(method: str, url: str, *, body: bytes | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def registry_manifest(registry_host: str, name: str, digest: str) -> tuple[str, bytes]:
    """(media type, bytes) of the manifest `digest` in repository `name` of the sandbox registry."""
    status, headers, body = _registry_call("GET", f"http://{registry_host}/v2/{name}/manifests/{digest}",
                                           headers={"Accept": MANIFEST_ACCEPT})
    assert status == 200, f"GET manifest {digest} of {name}: {status} {body[:200]!r}"
    return headers.get("Content-Type", ""), body


def registry_delete_manifest(registry_host: str, name: str, digest: str) -> None:
    """Delete a manifest by digest (the sandbox registry has deletes enabled): SOCI can no longer fetch it."""
    status, _, body = _registry_call("DELETE", f"http://{registry_host}/v2/{name}/manifests/{digest}")
    assert status == 202, f"DELETE manifest {digest} of {name}: {status} {body[:200]!r}"


def registry_put_manifest(registry_host: str, name: str, reference: str, media_type: str, body: bytes) -> None:
    status, _, answer = _registry_call("PUT", f"http://{registry_host}/v2/{name}/manifests/{reference}", body=body,
                                       headers={"Content-Type": media_type})
    assert status == 201, f"PUT manifest {reference} of {name}: {status} {answer[:200]!r}"


def registry_blob_path(sandbox_dir: str | Path, digest: str) -> Path:
    """Where the sandbox's docker-registry keeps a blob (its filesystem driver's layout under `<dir>/registry`).
    Looked up directly, not by walking the sandbox: containerd removes snapshot directories under it while a
    walk runs."""
    hexd = digest.split(":", 1)[1]
    path = Path(sandbox_dir) / "registry" / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexd[:2] / hexd / "data"
    assert path.is_file(), f"{digest} is not in the sandbox registry's storage at {path}"
    return path
