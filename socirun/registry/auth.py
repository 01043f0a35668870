"""Registry authentication: WWW-Authenticate challenges, docker's credential store, the token flow.

Secrets (passwords, identity tokens, bearer tokens) never appear in an exception message, a log line or a
repr: errors name the registry and the status, never what was sent.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import os
import ssl
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from socirun.decide.transfer import iec_size
from socirun.errors import AuthError, ConfigError

log = logging.getLogger("socirun.registry.auth")

DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
_DOCKER_HUB_HOSTS = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)
_HELPER_TIMEOUT_S = 60
_DEFAULT_TOKEN_LIFETIME_S = 60  # the distribution token spec's default for a missing expires_in
MAX_TOKEN_RESPONSE_BYTES = 1 << 20  # real ones are a few KiB; a token server may not fill our memory
TOKEN_TIMEOUT_S = 60.0
_CLIENT_ID = "socirun"


# --------------------------------------------------------------------------------------------- challenges


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower-cased: "bearer", "basic"
    params: dict[str, str] = field(default_factory=dict, hash=False)


def _skip_ws(s: str, i: int) -> int:
    while i < len(s) and s[i] in " \t":
        i += 1
    return i


def _read_token(s: str, i: int) -> tuple[str, int]:
    start = i
    while i < len(s) and s[i] not in ' \t,="':
        i += 1
    return s[start:i], i


def _read_quoted(s: str, i: int) -> tuple[str, int]:
    """`"…"` starting at s[i] == '"', with backslash escapes; returns the unquoted value."""
    out: list[str] = []
    i += 1
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            out.append(s[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    return "".join(out), i  # unterminated: take what there is


def parse_challenges(header: str | list[str]) -> list[Challenge]:
    """Parse `WWW-Authenticate` (RFC 7235): one or more `Scheme k=v, k="quoted, value"` challenges.

    Several header lines may be given as a list. Unknown or malformed parts are skipped rather than fatal:
    a registry's odd challenge should not hide the one we understand.
    """
    lines = header if isinstance(header, list) else [header]
    out: list[Challenge] = []
    for line in lines:
        i = 0
        current: Challenge | None = None
        while i < len(line):
            i = _skip_ws(line, i)
            if i < len(line) and line[i] == ",":
                i += 1
                continue
            word, j = _read_token(line, i)
            if not word:
                i = j + 1  # a stray quote or '=': skip it
                continue
            k = _skip_ws(line, j)
            if k < len(line) and line[k] == "=" and current is not None:
                k = _skip_ws(line, k + 1)
                if k < len(line) and line[k] == '"':
                    value, i = _read_quoted(line, k)
                else:
                    value, i = _read_token(line, k)
                current.params[word.lower()] = value
            else:
                # A word not followed by '=' starts a new challenge (token68 forms are ignored).
                current = Challenge(word.lower(), {})
                out.append(current)
                i = j
    return out


# --------------------------------------------------------------------------------------------- credentials


@dataclass(frozen=True)
class Credentials:
    """A username and secret, or an identity (refresh) token. repr/str never show the secret."""

    username: str
    secret: str = field(repr=False)
    identity_token: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        kind = "identity token" if self.identity_token else "password"
        return f"Credentials(username={self.username!r}, {kind}=<hidden>)"

    __str__ = __repr__

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.secret}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


def docker_config_dir(explicit: str | None = None, env: Mapping[str, str] = os.environ) -> str:
    if explicit:
        return explicit
    if env.get("DOCKER_CONFIG"):
        return env["DOCKER_CONFIG"]
    return os.path.join(env.get("HOME") or os.path.expanduser("~"), ".docker")


def _hostname_of_key(key: str) -> str:
    """docker's ConvertToHostname: `https://host:port/v1/` → `host:port`."""
    if "://" in key:
        key = urlsplit(key).netloc or key.split("://", 1)[1]
    return key.split("/", 1)[0]


def auth_key_for(host: str) -> str:
    """The key docker stores credentials under: Docker Hub's legacy URL, else the host[:port]."""
    return DOCKER_HUB_AUTH_KEY if host in _DOCKER_HUB_HOSTS else host


def _read_docker_config(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as err:
        raise ConfigError(f"cannot parse {path}: {err.msg} at line {err.lineno}") from None
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror or err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"cannot parse {path}: expected a JSON object")
    return data


def _from_auths_entry(entry: Mapping[str, Any], path: str) -> Credentials | None:
    username = str(entry.get("username") or "")
    password = str(entry.get("password") or "")
    if entry.get("auth"):
        try:
            decoded = base64.b64decode(str(entry["auth"]), validate=False).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise ConfigError(f"an `auth` value in {path} is not valid base64 of user:password") from None
        username, sep, password = decoded.partition(":")
        if not sep:
            raise ConfigError(f"an `auth` value in {path} is not valid base64 of user:password") from None
    identity = str(entry.get("identitytoken") or "") or None
    if not username and not password and not identity:
        return None
    return Credentials(username=username, secret=password, identity_token=identity)


def _run_helper(helper: str, server_url: str, config_path: str) -> Credentials | None:
    """`docker-credential-<helper> get` with the server URL on stdin (argument list, never a shell)."""
    program = f"docker-credential-{helper}"
    try:
        proc = subprocess.run(
            [program, "get"],
            input=server_url.encode(),
            capture_output=True,
            timeout=_HELPER_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError:
        raise AuthError(
            f"credential helper {program} (named in {config_path}) is not installed or not on PATH; "
            "install it or remove it from the docker config"
        ) from None
    except subprocess.TimeoutExpired:
        raise AuthError(f"credential helper {program} did not answer within {_HELPER_TIMEOUT_S} s") from None
    except OSError as err:
        raise AuthError(f"cannot run credential helper {program}: {err.strerror or err}") from None
    if proc.returncode != 0:
        # docker-credential-helpers print this exact text for "no entry"; it means anonymous access. The
        # helper's output is not quoted otherwise, in case it echoes anything sensitive.
        if b"credentials not found" in proc.stdout.lower() or b"credentials not found" in proc.stderr.lower():
            return None
        raise AuthError(
            f"credential helper {program} failed for {server_url} (exit status {proc.returncode})"
        )
    try:
        data = json.loads(proc.stdout)
        username = str(data.get("Username") or "")
        secret = str(data.get("Secret") or "")
    except (ValueError, AttributeError):
        raise AuthError(
            f"credential helper {program} printed something that is not JSON credentials"
        ) from None
    if not username and not secret:
        return None
    if username == "<token>":  # docker's convention for an identity token
        return Credentials(username="", secret="", identity_token=secret)
    return Credentials(username=username, secret=secret)


def load_credentials(host: str, config_dir: str | None = None) -> Credentials | None:
    """Credentials for `host` (the host[:port] being contacted) from docker's config.json, or None.

    Order as docker's CLI: credHelpers[host], else credsStore, else the `auths` entry.
    """
    directory = docker_config_dir(config_dir)
    path = os.path.join(directory, "config.json")
    config = _read_docker_config(path)
    key = auth_key_for(host)
    wanted = {_hostname_of_key(key)} | (
        {"index.docker.io", "docker.io"} if key == DOCKER_HUB_AUTH_KEY else set()
    )

    helpers = config.get("credHelpers") or {}
    if isinstance(helpers, dict):
        for name, helper in helpers.items():
            if _hostname_of_key(name) in wanted and helper:
                return _run_helper(str(helper), key, path)
    store = config.get("credsStore")
    if isinstance(store, str) and store:
        return _run_helper(store, key, path)

    auths = config.get("auths") or {}
    if isinstance(auths, dict):
        if isinstance(auths.get(key), dict):  # the exact key first
            return _from_auths_entry(auths[key], path)
        for name, entry in auths.items():
            if _hostname_of_key(name) in wanted and isinstance(entry, dict):
                return _from_auths_entry(entry, path)
    return None


# --------------------------------------------------------------------------------------------- token flow


@dataclass
class _Token:
    value: str
    expires_at: float


@dataclass
class _HostAuth:
    challenge: Challenge | None = None
    tokens: dict[str, _Token] = field(default_factory=dict)  # request scope → token
    # One token fetch at a time per host: many parallel range reads meeting their first 401 together would
    # otherwise each ask the token server.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # The registry host's TLS settings (hosts.toml `ca`, client certificate), for its token server too.
    ssl: ssl.SSLContext | bool = True
    # Set for a host a registry redirected to (blob storage): only ever the anonymous token flow there.
    redirected_from: str | None = None
    label: str = ""  # how messages name the host


def check_realm(realm: str, label: str, *, plain_http: bool) -> None:
    """A bearer challenge's realm must be an https URL (or http when the registry itself is plain HTTP by
    hosts.py's rules: loopback, an http:// URL in hosts.toml, an insecure registry): credentials and tokens are
    never sent in the clear to a token server an HTTPS registry merely names."""
    parts = urlsplit(realm)
    allowed = ("https", "http") if plain_http else ("https",)
    if parts.scheme.lower() not in allowed or not parts.hostname:
        shown = f"{parts.scheme}://{parts.hostname}" if parts.scheme and parts.hostname else repr(realm[:60])
        raise AuthError(
            f"{label} names the token server {shown}, which is not an https URL; "
            "socirun asks for tokens only over HTTPS (or plain HTTP for a plain-HTTP registry)"
        )


RequestOptions = Callable[[str], Mapping[str, Any]]


class Authorizer:
    """Answers 401 challenges and remembers what each host wants, so later requests carry a token at once.

    Keyed by the host being contacted (`registry-1.docker.io`, `mirror:5000`), as containerd's authorizer is.
    `request_options(url)` gives extra aiohttp keyword arguments (the proxy) for token-server requests.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        docker_config_dir: str | None = None,
        request_options: RequestOptions | None = None,
        timeout: float = TOKEN_TIMEOUT_S,
    ) -> None:
        self._session = session
        self._config_dir = docker_config_dir
        self._options: RequestOptions = request_options or (lambda url: {})
        self._timeout = timeout
        self._hosts: dict[str, _HostAuth] = {}
        self._creds: dict[str, Credentials | None] = {}

    def _credentials(self, host: str) -> Credentials | None:
        if host not in self._creds:
            self._creds[host] = load_credentials(host, self._config_dir)
        return self._creds[host]

    def authorization(self, host: str, scope: str) -> str | None:
        """The Authorization header value to send to `host` for `scope`, if one is known and still valid."""
        state = self._hosts.get(host)
        if state is None or state.challenge is None:
            return None
        if state.challenge.scheme == "basic":
            creds = self._creds.get(host)
            return creds.basic_header() if creds and not creds.identity_token else None
        token = state.tokens.get(scope)
        if token is None or token.expires_at <= time.monotonic():
            return None
        return f"Bearer {token.value}"

    async def ensure(self, host: str, scope: str) -> str | None:
        """Like authorization(), but fetch a token first when the host is known to want one."""
        header = self.authorization(host, scope)
        state = self._hosts.get(host)
        if (
            header is not None
            or state is None
            or state.challenge is None
            or state.challenge.scheme != "bearer"
        ):
            return header
        async with state.lock:
            if self.authorization(host, scope) is None:  # not fetched meanwhile by a parallel request
                await self._fetch_token(host, state, scope, ())
        return self.authorization(host, scope)

    async def on_unauthorized(
        self,
        host: str,
        scope: str,
        www_authenticate: list[str],
        sent: str | None = None,
        *,
        ssl_context: ssl.SSLContext | bool = True,
        plain_http: bool = False,
        redirected_from: str | None = None,
    ) -> bool:
        """Handle a 401 to a request that carried `sent` (its Authorization value, or None): remember the
        challenge and obtain what it asks for. False: no challenge we can answer.

        `ssl_context`: the registry host's TLS settings, used for its token server too; `plain_http`: the
        registry is plain HTTP, so an http realm is acceptable; `redirected_from`: `host` is where that
        registry redirected us, which gets no credentials, only the anonymous token flow."""
        challenges = parse_challenges(www_authenticate)
        state = self._hosts.setdefault(host, _HostAuth())
        state.ssl = ssl_context
        if redirected_from is not None:
            state.redirected_from = redirected_from
        state.label = (
            f"the host registry {state.redirected_from} redirected to ({host.removeprefix('redirect:')})"
            if state.redirected_from
            else f"registry {host}"
        )
        for ch in challenges:
            if ch.scheme == "bearer" and ch.params.get("realm"):
                check_realm(ch.params["realm"], state.label, plain_http=plain_http)
                async with state.lock:
                    state.challenge = ch
                    current = self.authorization(host, scope)
                    if current is None or current == sent:
                        # No token yet, or the one we sent was refused: ask for a new one, for our scope and
                        # whatever else the challenge names.
                        await self._fetch_token(host, state, scope, ch.params.get("scope", "").split())
                return True
        for ch in challenges:
            if ch.scheme == "basic":
                if state.redirected_from is not None:
                    raise AuthError(
                        f"{state.label} asks for a password; socirun sends the registry's credentials "
                        "to the registry alone"
                    )
                creds = await asyncio.to_thread(self._credentials, host)  # helpers are programs
                if creds is None or creds.identity_token:
                    raise AuthError(
                        f"registry {host} requires a login: run `docker login {host}` "
                        "(socirun reads docker's credentials)"
                    )
                state.challenge = ch
                return True
        return False

    async def _fetch_token(
        self, host: str, state: _HostAuth, scope: str, extra_scopes: Sequence[str]
    ) -> None:
        assert state.challenge is not None
        params = state.challenge.params
        realm = params["realm"]
        service = params.get("service", "")
        scopes = [scope, *(s for s in extra_scopes if s and s != scope)]
        creds = (
            None if state.redirected_from is not None
            else await asyncio.to_thread(self._credentials, host)  # helpers are programs
        )
        name = host.removeprefix("redirect:")  # messages name the host, not our key for it
        try:
            async with asyncio.timeout(self._timeout):
                if creds is None:
                    token = await self._token_get(name, state, realm, service, scopes, None)
                else:
                    token = await self._token_post(name, state, realm, service, scopes, creds)
        except TimeoutError:
            raise AuthError(
                f"the token server for {name} did not answer within {self._timeout:g} s"
            ) from None
        state.tokens[scope] = token

    async def _token_post(
        self, host: str, state: _HostAuth, realm: str, service: str, scopes: list[str], creds: Credentials
    ) -> _Token:
        """OAuth2 form POST (password or refresh-token grant); GET with Basic auth where that is missing."""
        form: list[tuple[str, str]] = [("service", service), ("client_id", _CLIENT_ID)]
        form += [("scope", s) for s in scopes]
        if creds.identity_token:
            form += [("grant_type", "refresh_token"), ("refresh_token", creds.identity_token)]
        else:
            form += [("grant_type", "password"), ("username", creds.username), ("password", creds.secret)]
        try:
            async with self._session.post(realm, data=form, ssl=state.ssl, **self._options(realm)) as resp:
                status = resp.status
                if status == 200:
                    return self._parse_token(host, await _read_token_body(host, resp))
        except aiohttp.ClientError as err:
            raise AuthError(f"cannot reach the token server for {host}: {type(err).__name__}") from None
        fallback = status in (400, 401, 404) or (status == 405 and bool(creds.username))
        if fallback and not creds.identity_token:
            return await self._token_get(host, state, realm, service, scopes, creds)
        raise _token_refused(host, status, with_credentials=True)

    async def _token_get(
        self,
        host: str,
        state: _HostAuth,
        realm: str,
        service: str,
        scopes: list[str],
        creds: Credentials | None,
    ) -> _Token:
        query: list[tuple[str, str]] = []
        if service:
            query.append(("service", service))
        query += [("scope", s) for s in scopes]
        headers = {"Authorization": creds.basic_header()} if creds else {}
        try:
            async with self._session.get(
                realm, params=query, headers=headers, ssl=state.ssl, **self._options(realm)
            ) as resp:
                if resp.status != 200:
                    raise _token_refused(host, resp.status, with_credentials=creds is not None)
                return self._parse_token(host, await _read_token_body(host, resp))
        except aiohttp.ClientError as err:
            raise AuthError(f"cannot reach the token server for {host}: {type(err).__name__}") from None

    @staticmethod
    def _parse_token(host: str, body: bytes) -> _Token:
        return parse_token(host, body)


async def _read_token_body(host: str, resp: aiohttp.ClientResponse) -> bytes:
    """The token response, refused past MAX_TOKEN_RESPONSE_BYTES (declared or received)."""
    too_big = AuthError(
        f"the token server for {host} sent more than {iec_size(MAX_TOKEN_RESPONSE_BYTES)}, which is no token"
    )
    if resp.content_length is not None and resp.content_length > MAX_TOKEN_RESPONSE_BYTES:
        raise too_big
    chunks: list[bytes] = []
    total = 0
    async for chunk in resp.content.iter_chunked(1 << 16):
        total += len(chunk)
        if total > MAX_TOKEN_RESPONSE_BYTES:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def _usable_token(value: object) -> bool:
    # It goes into an HTTP header: printable ASCII without spaces (RFC 6750's b64token is stricter still).
    return isinstance(value, str) and bool(value) and value.isascii() and value.isprintable() and " " not in value


def parse_token(host: str, body: bytes) -> _Token:
    """A token server's JSON answer (`token` or `access_token`, optional `expires_in`) → _Token; anything
    else is an AuthError naming the host."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        raise AuthError(f"the token server for {host} answered with something that is not a JSON token")
    value = data.get("access_token") or data.get("token")
    if not _usable_token(value):
        raise AuthError(f"the token server for {host} answered without a usable token")
    assert isinstance(value, str)
    expires = data.get("expires_in")
    lifetime = _DEFAULT_TOKEN_LIFETIME_S
    if isinstance(expires, int | float) and not isinstance(expires, bool) and math.isfinite(expires) and expires > 0:
        lifetime = int(min(expires, 86400.0 * 365))
    # Renew a little early so that a token never expires between our check and the registry's.
    lifetime = max(lifetime - 10, lifetime // 2)
    log.debug("got a token for %s valid %d s", host, lifetime)  # never the token itself
    return _Token(value, time.monotonic() + lifetime)


def _token_refused(host: str, status: int, *, with_credentials: bool) -> AuthError:
    if with_credentials:
        return AuthError(
            f"registry {host} refused the stored credentials (token server answered {status}); "
            f"run `docker login {host}` again"
        )
    return AuthError(f"registry {host} refused anonymous access (token server answered {status})")
