"""Push a sample image, or every image of an OCI image layout (what `soci convert` writes), to a plain-HTTP
registry (the sandbox's loopback registry) with the distribution API: HEAD to skip blobs already there, POST to
open an upload, then one PUT ?digest= for small blobs or PATCH chunks streamed from the file and a closing PUT
for big ones; manifests after their blobs, each index after the manifests it lists, the tag last.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
from yarl import URL

from socirun.errors import SandboxError
from socirun.oci import OCI_MANIFEST
from socirun.sandbox.oci_layout import blob_path, read_layout

if TYPE_CHECKING:
    from socirun.sandbox.sample import SampleImage

# Blobs up to this size go up in one PUT; bigger ones in PATCH chunks of CHUNK_SIZE read from the file.
MONOLITHIC_MAX = 8 << 20
CHUNK_SIZE = 16 << 20
PARALLEL_UPLOADS = 4


@dataclass
class PushStats:
    """Filled in by push_image: what went up and what the registry already had."""

    uploaded_blobs: int = 0
    uploaded_bytes: int = 0
    skipped_blobs: int = 0


class _Pusher:
    def __init__(self, session: aiohttp.ClientSession, host: str, name: str, stats: PushStats) -> None:
        self.session = session
        self.base = URL(f"http://{host}")
        self.host = host
        self.name = name
        self.stats = stats

    async def _call(
        self,
        method: str,
        url: URL,
        expect: int | None,
        *,
        data: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> aiohttp.ClientResponse:
        """One request, body read; a status other than `expect` (when given) is a SandboxError."""
        try:
            response = await self.session.request(method, url, data=data, headers=headers)
        except aiohttp.ClientConnectionError as exc:
            raise SandboxError(
                f"cannot reach the registry at {self.host} ({exc}); is the sandbox up (socirun sandbox up)?"
            ) from exc
        async with response:
            body = await response.read()
        if expect is not None and response.status != expect:
            text = body.decode(errors="replace").strip()[:300]
            raise SandboxError(f"{method} {url} answered HTTP {response.status}, not {expect}: {text}")
        return response

    def _location(self, response: aiohttp.ClientResponse) -> URL:
        location = response.headers.get("Location")
        if not location:
            raise SandboxError(f"the registry at {self.host} answered an upload without a Location header.")
        return self.base.join(URL(location))

    async def exists(self, digest: str) -> bool:
        response = await self._call("HEAD", self.base / "v2" / self.name / "blobs" / digest, None)
        return response.status == 200

    async def push_blob(self, digest: str, size: int, source: bytes | Path) -> None:
        if await self.exists(digest):
            self.stats.skipped_blobs += 1
            return
        start = await self._call("POST", self.base / "v2" / self.name / "blobs" / "uploads" / "", 202)
        url = self._location(start)
        octets = {"Content-Type": "application/octet-stream"}
        if isinstance(source, bytes) or size <= MONOLITHIC_MAX:
            data = source if isinstance(source, bytes) else await asyncio.to_thread(source.read_bytes)
            await self._call("PUT", url.update_query(digest=digest), 201, data=data, headers=octets)
        else:
            offset = 0
            with open(source, "rb") as blob:
                while chunk := await asyncio.to_thread(blob.read, CHUNK_SIZE):
                    headers = octets | {"Content-Range": f"{offset}-{offset + len(chunk) - 1}"}
                    patched = await self._call("PATCH", url, 202, data=chunk, headers=headers)
                    url = self._location(patched)
                    offset += len(chunk)
            if offset != size:
                raise SandboxError(f"{source} holds {offset} bytes, not the {size} its digest was made for.")
            await self._call("PUT", url.update_query(digest=digest), 201, headers=octets)
        self.stats.uploaded_blobs += 1
        self.stats.uploaded_bytes += size

    async def push_manifest(self, tag: str, manifest: bytes, digest: str, media_type: str = OCI_MANIFEST) -> None:
        """PUT a manifest or index under `tag` (a tag or its own digest)."""
        url = self.base / "v2" / self.name / "manifests" / tag
        response = await self._call("PUT", url, 201, data=manifest, headers={"Content-Type": media_type})
        stored = response.headers.get("Docker-Content-Digest")
        if stored and stored != digest:
            raise SandboxError(f"the registry stored the manifest as {stored}, not {digest}.")


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120))


async def _push_blobs(pusher: _Pusher, blobs: list[tuple[str, int, bytes | Path]]) -> None:
    """Every blob, PARALLEL_UPLOADS at a time."""
    limit = asyncio.Semaphore(PARALLEL_UPLOADS)

    async def one(digest: str, size: int, source: bytes | Path) -> None:
        async with limit:
            await pusher.push_blob(digest, size, source)

    try:
        async with asyncio.TaskGroup() as group:
            for digest, size, source in blobs:
                group.create_task(one(digest, size, source))
    except ExceptionGroup as failed:
        # One sentence for the user: the first of our own errors, not the whole group.
        ours = failed.subgroup(SandboxError)
        if ours is None:
            raise
        raise _first(ours) from None


async def push_image(
    registry_host: str, name: str, tag: str, image: SampleImage, *, stats: PushStats | None = None
) -> str:
    """Push `image` as NAME:TAG to the plain-HTTP registry at `registry_host`; returns "HOST/NAME:TAG"."""
    async with _session() as session:
        pusher = _Pusher(session, registry_host, name, stats if stats is not None else PushStats())
        blobs: list[tuple[str, int, bytes | Path]] = [
            (image.config_digest, len(image.config_bytes), image.config_bytes)
        ]
        blobs += [(layer.digest, layer.size, layer.path) for layer in image.layers]
        await _push_blobs(pusher, blobs)
        await pusher.push_manifest(tag, image.manifest_bytes, image.manifest_digest)
    return f"{registry_host}/{name}:{tag}"


async def push_layout(
    registry_host: str, name: str, tag: str, layout: Path, *, stats: PushStats | None = None
) -> str:
    """Push the one top-level image of the OCI image layout in `layout` (an image, or an index such as the one
    `soci convert` writes: the annotated image manifest and the SOCI index manifest) as NAME:TAG: every blob,
    then each manifest by digest, children before the index that lists them, and the top one under `tag`.
    Returns "HOST/NAME:TAG"."""
    plan = await asyncio.to_thread(read_layout, layout)
    async with _session() as session:
        pusher = _Pusher(session, registry_host, name, stats if stats is not None else PushStats())
        await _push_blobs(pusher, [(b.digest, b.size, blob_path(layout, b.digest)) for b in plan.blobs])
        for manifest in plan.manifests:
            desc = manifest.descriptor
            ref = tag if manifest is plan.top else desc.digest
            await pusher.push_manifest(ref, manifest.body, desc.digest, desc.media_type)
    return f"{registry_host}/{name}:{tag}"


def _first(group: BaseExceptionGroup[SandboxError]) -> SandboxError:
    error = group.exceptions[0]
    return _first(error) if isinstance(error, BaseExceptionGroup) else error
