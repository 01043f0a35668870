"""Real SOCI indexes for sample images, made by the real `soci` CLI (soci-snapshotter v0.16; flags:
https://github.com/awslabs/soci-snapshotter/blob/v0.16.1/docs/soci-cli.md).

- v2: `soci convert --standalone --format oci-dir` on an OCI image layout of the sample (no containerd needed).
  Its output layout is an OCI index holding the image manifest re-serialized with the annotation
  `com.amazon.soci.index-digest` and the SOCI index manifest (artifactType v2), plus real zTOC blobs; push it
  as it is (socirun.sandbox.push.push_layout). Converted layouts are cached beside the sample, keyed by the
  sample, `--min-layer-size`, the soci version and CACHE_FORMAT, with layer blobs hard-linked to the sample's.
- v1: `soci create` reads the image from a containerd content store and `soci push` pushes the index with a
  `subject`; on a registry without the referrers API (Debian's docker-registry 2.8) `soci push` also writes the
  referrers tag `sha256-<hex of the image manifest>`, through which the snapshotter (with
  `[pull_modes.soci_v1] enable = true`) and socirun's probe find the index. The image is fetched (not unpacked)
  into BUILD_NAMESPACE of the sandbox's containerd and removed again afterwards, so nothing stays in the
  namespaces that socirun and the tests use; the index lives in a private soci root (`--content-store soci`),
  out of reach of containerd's garbage collector between create and push.

`soci` skips layers whose compressed size is below `--min-layer-size` (strictly less; soci's default 10 MiB)
and fails with "no ztocs created" when it skips them all.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from socirun.errors import SandboxError
from socirun.sandbox.components import require, version_of
from socirun.sandbox.oci_layout import blob_path, link_or_copy, read_layout, write_sample_layout
from socirun.soci import constants as c

if TYPE_CHECKING:
    # sample.push_sample calls this module; the types alone come from there.
    from socirun.sandbox.sample import SampleImage, SampleLayer

SOCI = "soci"
DEFAULT_MIN_LAYER_SIZE = c.DEFAULT_MIN_LAYER_SIZE
# Bump when what is done around `soci convert` changes the cached layout.
CACHE_FORMAT = 1
# The containerd namespace the v1 build fetches the image into (and empties afterwards).
BUILD_NAMESPACE = "socirun-sample"
# A ≥ 1 GB image takes seconds to convert; a hung tool must still end.
SOCI_TIMEOUT_S = 900.0
NO_ZTOCS = "no ztocs created"


def ztoc_layers(image: SampleImage, min_layer_size: int) -> tuple[SampleLayer, ...]:
    """The layers `soci convert/create --min-layer-size N` makes zTOCs for: compressed size ≥ N (pure)."""
    return tuple(layer for layer in image.layers if layer.size >= min_layer_size)


def no_ztocs_error(image: SampleImage, min_layer_size: int) -> SandboxError:
    biggest = max(layer.size for layer in image.layers)
    return SandboxError(
        f"no layer of the sample reaches --min-layer-size {min_layer_size} bytes (the biggest is {biggest} bytes "
        f'compressed), so soci would make no zTOC ("{NO_ZTOCS}"): lower --min-layer-size (0 gives every layer '
        "a zTOC) or make a layer bigger.")


def v2_cache_name(min_layer_size: int, soci_version: str) -> str:
    """The directory, inside the sample's cache entry, of its converted layout (pure)."""
    inputs = {"format": CACHE_FORMAT, "min_layer_size": min_layer_size, "soci": soci_version}
    return "soci-v2-" + hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def _run(argv: Sequence[str], what: str) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=SOCI_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise SandboxError(f"{what} did not finish within {SOCI_TIMEOUT_S:.0f} s.") from None
    except OSError as err:
        raise SandboxError(f"{what} could not be started ({err.strerror}).") from None
    return done


def _failure(done: subprocess.CompletedProcess[str], what: str) -> SandboxError:
    lines = (done.stderr.strip() or done.stdout.strip()).splitlines()
    return SandboxError(f"{what} exited {done.returncode}: {lines[-1][:400] if lines else 'no output'}.")


def _layout_complete(layout: Path) -> bool:
    """Whether `layout` holds a readable layout with every blob its top image needs, at the right size."""
    try:
        plan = read_layout(layout)
        return all(blob_path(layout, blob.digest).stat().st_size == blob.size for blob in plan.blobs)
    except (SandboxError, OSError, ValueError, KeyError, TypeError):
        return False


def convert_v2(image: SampleImage, *, min_layer_size: int = DEFAULT_MIN_LAYER_SIZE) -> Path:
    """The OCI image layout `soci convert --standalone` makes of `image` (converted now, or cached)."""
    if min_layer_size < 0:
        raise SandboxError("--min-layer-size must not be negative.")
    soci = require(SOCI)
    target = image.dir / v2_cache_name(min_layer_size, version_of(soci))
    if _layout_complete(target):
        return target
    if not ztoc_layers(image, min_layer_size):
        raise no_ztocs_error(image, min_layer_size)
    tmp = Path(tempfile.mkdtemp(prefix=".soci-v2-", dir=image.dir))
    try:
        write_sample_layout(image, tmp / "in")
        out = tmp / "out"
        # --root: standalone mode keeps nothing there, but a private one guarantees the host's default
        # (/var/lib/soci-snapshotter-grpc) is never touched.
        argv = [soci, "--root", str(tmp / "root"), "convert", "--standalone", "--format", "oci-dir",
                "--min-layer-size", str(min_layer_size), str(tmp / "in"), str(out)]
        done = _run(argv, "soci convert")
        if done.returncode != 0:
            if NO_ZTOCS in done.stderr + done.stdout:
                raise no_ztocs_error(image, min_layer_size)
            raise _failure(done, "soci convert")
        # soci copies every layer into its output: hard links to the sample's blobs instead keep one copy.
        for layer in image.layers:
            if blob_path(out, layer.digest).is_file():
                link_or_copy(layer.path, blob_path(out, layer.digest))
        if not _layout_complete(out):
            raise SandboxError(f"soci convert wrote an incomplete OCI layout in {out}.")
        try:
            out.rename(target)
        except OSError:
            # A concurrent conversion finished first (keep it), or a damaged one is in the way (replace it).
            if not _layout_complete(target):
                shutil.rmtree(target, ignore_errors=True)
                out.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def create_v1(reference: str, image: SampleImage, *, containerd_address: str,
              min_layer_size: int = DEFAULT_MIN_LAYER_SIZE) -> None:
    """Make a SOCI v1 index for the already pushed `reference` (the plain image) with `soci create` and push it
    with `soci push --plain-http`, through the containerd at `containerd_address`."""
    if min_layer_size < 0:
        raise SandboxError("--min-layer-size must not be negative.")
    if not ztoc_layers(image, min_layer_size):
        raise no_ztocs_error(image, min_layer_size)
    soci = require(SOCI)
    ctr = [require("ctr"), "--address", containerd_address, "--namespace", BUILD_NAMESPACE]
    with tempfile.TemporaryDirectory(prefix=".soci-v1-", dir=image.dir) as root:
        base = [soci, "--address", containerd_address, "--namespace", BUILD_NAMESPACE, "--root", root,
                "--content-store", "soci"]
        try:
            # `soci create` reads the image's manifest and layers from containerd: fetch them, unpack nothing.
            done = _run([*ctr, "content", "fetch", "--plain-http", reference], "ctr content fetch")
            if done.returncode != 0:
                raise _failure(done, f"ctr content fetch {reference}")
            done = _run([*base, "create", "--min-layer-size", str(min_layer_size), reference], "soci create")
            if done.returncode != 0:
                if NO_ZTOCS in done.stderr + done.stdout:
                    raise no_ztocs_error(image, min_layer_size)
                raise _failure(done, "soci create")
            done = _run([*base, "push", "--plain-http", "--quiet", reference], "soci push")
            if done.returncode != 0:
                raise _failure(done, "soci push")
        finally:
            # --sync waits for containerd's garbage collection: the fetched blobs are gone when this returns,
            # so a later pull in another namespace downloads them for real.
            _run([*ctr, "images", "rm", "--sync", reference], "ctr images rm")
            # The namespace goes too when nothing else is in it (containerd refuses otherwise).
            _run([*ctr[:-2], "namespaces", "rm", BUILD_NAMESPACE], "ctr namespaces rm")
