"""Registry side: hosts.toml resolution, authentication, and the async client (resolve, blobs, ranges)."""

from socirun.registry.client import RangeNotSupportedError, RegistryClient, ResolvedImage
from socirun.registry.hosts import RegistryHost, resolve_hosts

__all__ = ["RangeNotSupportedError", "RegistryClient", "RegistryHost", "ResolvedImage", "resolve_hosts"]
