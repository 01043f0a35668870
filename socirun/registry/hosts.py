"""Which URLs serve a registry: containerd's hosts.toml convention (`remotes/docker/config/hosts.go`).

For a registry host `H` (maybe `H:port`) the first existing directory of
`<dir>/H_port_`, `<dir>/H:port`, `<dir>/_default` is used, for each hosts dir in turn (nerdctl's default:
/etc/containerd/certs.d, then /etc/docker/certs.d). Its `hosts.toml` lists mirrors (`[host."…"]`, tried first,
in file order) and the upstream (`server`, tried last):

    server = "https://registry-1.docker.io"       # top-level keys configure the server itself
    [host."https://mirror.example"]
      capabilities = ["pull"]                     # default: pull, resolve, push
      ca = "/etc/certs/mirror.pem"                # or a list; relative paths are relative to the directory
      client = [["/etc/certs/client.cert", "/etc/certs/client.key"]]  # a cert/key pair; a path: combined PEM
      skip_verify = false
      override_path = false                       # true: the URL path replaces /v2
      [host."https://mirror.example".header]
        x-custom = "value"

Without hosts.toml: docker.io → https://registry-1.docker.io; localhost, 127.0.0.0/8 and ::1 → plain http;
everything else → https. Plain HTTP is used only for loopback, an explicit `http://` URL in hosts.toml, or a
registry named in the insecure list (which tries https without verification first, then http).
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from socirun.errors import ConfigError

CAPABILITIES = ("pull", "resolve", "push")
DEFAULT_HOSTS_DIRS = ("/etc/containerd/certs.d", "/etc/docker/certs.d")
DOCKER_HUB = "docker.io"
DOCKER_HUB_UPSTREAM = "registry-1.docker.io"


@dataclass(frozen=True)
class RegistryHost:
    scheme: str  # "https" or "http"
    host: str  # host[:port] as it goes into the URL
    path: str  # "/v2", or the override path
    capabilities: frozenset[str] = frozenset(CAPABILITIES)
    ca_files: tuple[str, ...] = ()
    client_cert: str | None = None
    client_key: str | None = None  # None: the key is inside client_cert
    skip_verify: bool = False
    headers: tuple[tuple[str, str], ...] = ()  # extra request headers, repeats allowed
    is_mirror: bool = False  # requests carry ?ns=<original registry host>

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}{self.path}"

    def can(self, capability: str) -> bool:
        return capability in self.capabilities

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}"


def split_host_port(host: str) -> tuple[str, str | None]:
    """`[::1]:5000` → ("::1", "5000"); `localhost` → ("localhost", None)."""
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return host, None
        rest = host[end + 1 :]
        return host[1:end], (rest[1:] if rest.startswith(":") else None)
    if host.count(":") == 1:
        name, port = host.split(":")
        return name, port
    return host, None


def is_loopback(host: str) -> bool:
    """containerd's docker.IsLocalhost: `localhost` or a loopback IP, with or without a port."""
    name, _ = split_host_port(host)
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_insecure(host: str, insecure: Collection[str]) -> bool:
    """Does an insecure-registry entry name `host`? Entries: `host:port`, `host` (any port), or an IP CIDR."""
    name, _ = split_host_port(host)
    for entry in insecure:
        entry = entry.strip()
        if "://" in entry:
            entry = urlsplit(entry).netloc
        entry = entry.rstrip("/")
        if not entry:
            continue
        if entry in (host, name):
            return True
        if "/" in entry:
            try:
                if ipaddress.ip_address(name) in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue
    return False


def _is_proxy(registry_host: str, host: str) -> bool:
    """containerd's isProxy: a host other than the registry's own (Docker Hub's upstream is its own)."""
    if host == registry_host:
        return False
    return not (registry_host == DOCKER_HUB and host == DOCKER_HUB_UPSTREAM)


def default_upstream(registry_host: str) -> RegistryHost:
    if registry_host == DOCKER_HUB:
        return RegistryHost("https", DOCKER_HUB_UPSTREAM, "/v2")
    if is_loopback(registry_host):
        # containerd talks plain HTTP to loopback registries and would skip TLS verification if asked to TLS.
        return RegistryHost("http", registry_host, "/v2", skip_verify=True)
    return RegistryHost("https", registry_host, "/v2")


def host_dir_candidates(root: str, registry_host: str) -> list[str]:
    """`<root>/H_port_`, `<root>/H:port`, `<root>/_default` (the first only when there is a port)."""
    out: list[str] = []
    idx = registry_host.rfind(":")
    if idx > 0 and not registry_host.endswith("]"):
        out.append(os.path.join(root, f"{registry_host[:idx]}_{registry_host[idx + 1 :]}_"))
    out.append(os.path.join(root, registry_host))
    out.append(os.path.join(root, "_default"))
    return out


def find_host_dir(registry_host: str, hosts_dir: str | None) -> str | None:
    roots: Sequence[str] = (hosts_dir,) if hosts_dir else DEFAULT_HOSTS_DIRS
    for root in roots:
        for candidate in host_dir_candidates(root, registry_host):
            if os.path.isdir(candidate):
                return candidate
    return None


def _paths(value: Any, base: str, what: str, origin: str) -> list[str]:
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = list(value)
    else:
        raise ConfigError(f"{what} in {origin} must be a path or a list of paths")
    return [v if os.path.isabs(v) else os.path.join(base, v) for v in items if v]


def _client_pair(value: Any, base: str, origin: str) -> tuple[str | None, str | None]:
    """`client` is a combined PEM path, a list of them, or [[cert, key], …]; the first entry is used."""
    if value is None or value == []:
        return None, None
    first = value[0] if isinstance(value, list) else value
    if isinstance(first, list):
        parts = _paths(first, base, "client", origin)
        if not 1 <= len(parts) <= 2:
            raise ConfigError(f"client in {origin} must be [cert, key] pairs")
        return parts[0], (parts[1] if len(parts) == 2 else None)
    return _paths(first, base, "client", origin)[0], None


def _host_from_table(
    url: str, table: dict[str, Any], base: str, origin: str, registry_host: str
) -> RegistryHost:
    """One `[host."url"]` table (or the top level for `server`) → RegistryHost."""
    if "://" not in url:
        url = "https://" + url  # containerd treats a bare host as https
    parts = urlsplit(url)
    if "@" in parts.netloc:
        # Refused rather than stripped: the URL would otherwise be shown in messages, events and recordings
        # with its password, and silently dropping it would hide that the credentials are not used.
        shown = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        raise ConfigError(
            f'the URL for {shown} in {origin} carries a user name or password; remove it and put the '
            "credentials in docker's config (docker login), which socirun reads"
        )
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f'"{url}" in {origin} is not an http(s) URL')
    override_path = bool(table.get("override_path", False))
    path = parts.path.rstrip("/")
    if path:
        path = os.path.normpath(path)
        if not path.endswith("/v2") and not override_path:
            path += "/v2"
    elif not override_path:
        path = "/v2"

    caps_value = table.get("capabilities")
    if caps_value is None:
        caps = frozenset(CAPABILITIES)
    else:
        if not isinstance(caps_value, list) or not all(isinstance(c, str) for c in caps_value):
            raise ConfigError(f'capabilities in {origin} must be a list like ["pull", "resolve"]')
        unknown = [c for c in caps_value if c.lower() not in CAPABILITIES]
        if unknown:
            raise ConfigError(f'unknown capability "{unknown[0]}" in {origin} (use pull, resolve, push)')
        caps = frozenset(c.lower() for c in caps_value)

    headers: list[tuple[str, str]] = []
    header_table = table.get("header", {})
    if not isinstance(header_table, dict):
        raise ConfigError(f"[header] in {origin} must be a table")
    for name, value in header_table.items():
        values = value if isinstance(value, list) else [value]
        headers.extend((name, str(v)) for v in values)

    cert, key = _client_pair(table.get("client"), base, origin)
    return RegistryHost(
        scheme=parts.scheme,
        host=parts.netloc,
        path=path,
        capabilities=caps,
        ca_files=tuple(_paths(table.get("ca", []), base, "ca", origin)),
        client_cert=cert,
        client_key=key,
        skip_verify=bool(table.get("skip_verify", False)),
        headers=tuple(headers),
        is_mirror=_is_proxy(registry_host, parts.netloc),
    )


def parse_hosts_toml(text: str, registry_host: str, base_dir: str, origin: str) -> list[RegistryHost]:
    """Mirrors in file order, then the upstream (`server`, or the default one)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"cannot parse {origin}: {err}") from None
    hosts: list[RegistryHost] = []
    host_tables = data.get("host", {})
    if not isinstance(host_tables, dict):
        raise ConfigError(f'[host] in {origin} must be tables like [host."https://mirror.example"]')
    for url, table in host_tables.items():  # tomllib keeps file order
        if not isinstance(table, dict):
            raise ConfigError(f'[host."{url}"] in {origin} must be a table')
        hosts.append(_host_from_table(url, table, base_dir, origin, registry_host))

    server = data.get("server")
    if server is not None:
        if not isinstance(server, str):
            raise ConfigError(f"server in {origin} must be a URL string")
        hosts.append(_host_from_table(server, data, base_dir, origin, registry_host))
    else:
        # Top-level settings still configure the default upstream.
        upstream = default_upstream(registry_host)
        top = _host_from_table(f"{upstream.scheme}://{upstream.host}", data, base_dir, origin, registry_host)
        hosts.append(replace(top, skip_verify=top.skip_verify or upstream.skip_verify))
    return hosts


def _docker_cert_files(directory: str) -> tuple[list[str], str | None, str | None]:
    """Docker's certs.d layout, used without hosts.toml: *.crt are CAs, *.cert + *.key a client pair."""
    cas: list[str] = []
    cert = key = None
    for name in sorted(os.listdir(directory)):
        full = os.path.join(directory, name)
        if name.endswith(".crt"):
            cas.append(full)
        elif name.endswith(".cert") and cert is None:
            key_path = full[: -len(".cert")] + ".key"
            if os.path.exists(key_path):
                cert, key = full, key_path
    return cas, cert, key


def resolve_hosts(
    registry_host: str, hosts_dir: str | None = None, insecure: Collection[str] = ()
) -> list[RegistryHost]:
    """The hosts to try, in order, for `registry_host` (a reference's domain: `docker.io`, `localhost:5000`).

    Callers filter by capability: `resolve` for tags, `pull` for digests and blobs.
    """
    directory = find_host_dir(registry_host, hosts_dir)
    hosts: list[RegistryHost]
    toml_path = os.path.join(directory, "hosts.toml") if directory else None
    if directory and toml_path and os.path.isfile(toml_path):
        try:
            with open(toml_path, encoding="utf-8") as f:
                text = f.read()
        except OSError as err:
            raise ConfigError(f"cannot read {toml_path}: {err.strerror or err}") from None
        hosts = parse_hosts_toml(text, registry_host, directory, toml_path)
    else:
        upstream = default_upstream(registry_host)
        if directory:
            cas, cert, key = _docker_cert_files(directory)
            upstream = replace(upstream, ca_files=tuple(cas), client_cert=cert, client_key=key)
        hosts = [upstream]

    if is_insecure(registry_host, insecure):
        # docker's insecure-registries: HTTPS without verification first, then plain HTTP. Loopback hosts
        # (plain HTTP by default) get the HTTPS try too, so a TLS registry on localhost works when listed.
        out: list[RegistryHost] = []
        for h in hosts:
            if not h.is_mirror and (h.scheme == "https" or is_loopback(h.host)):
                out.append(replace(h, scheme="https", skip_verify=True))
                out.append(replace(h, scheme="http", skip_verify=True))
            else:
                out.append(h)
        hosts = out
    return hosts
