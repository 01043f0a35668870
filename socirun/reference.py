"""Image reference normalisation, as docker does it (distribution/reference `ParseNormalizedNamed`) (pure).

    ubuntu                      → docker.io/library/ubuntu:latest
    user/repo                   → docker.io/user/repo:latest
    localhost:5000/foo          → localhost:5000/foo:latest
    [::1]:5000/x@sha256:<hex>   → [::1]:5000/x@sha256:<hex>     (a digest gets no default tag)
    name:tag@sha256:<hex>       → docker.io/library/name:tag@sha256:<hex>   (the digest is what is pulled)

Short-name aliases (`vllm` → `public.ecr.aws/deep-learning-containers/vllm`) are expanded by `expand_alias`
*before* normalisation, so that an alias never silently turns into a Docker Hub name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from socirun.errors import UsageError

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

# The grammar of distribution/reference (regexp.go), written out once here. Go's `\w` is ASCII-only, hence
# re.ASCII below.
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_REMOTE_NAME = rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN = rf"(?:{_DOMAIN_NAME}|{_IPV6})(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

# Matched with fullmatch: `^…$` would also accept a trailing newline ("latest\n").
_DOMAIN_RE = re.compile(_DOMAIN, re.ASCII)
_REMAINDER_RE = re.compile(rf"({_REMOTE_NAME})(?::({_TAG}))?(?:@({_DIGEST}))?", re.ASCII)
_TAG_RE = re.compile(_TAG, re.ASCII)
_IDENTIFIER_RE = re.compile(r"[a-f0-9]{64}")

# go-digest's registered algorithms and the length of their hex encoding.
_DIGEST_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}

_FORMAT_HINT = "expected [registry[:port]/]name[:tag][@digest]"


def _invalid(detail: str) -> UsageError:
    return UsageError(f"invalid reference format: {detail}")


def validate_digest(digest: str) -> str:
    """go-digest's Validate: a known algorithm and a lowercase hex encoding of the right length."""
    algorithm, sep, encoded = digest.partition(":")
    if not sep or algorithm not in _DIGEST_HEX_LENGTHS:
        raise _invalid(f'unsupported digest algorithm in "{digest}"')
    if len(encoded) != _DIGEST_HEX_LENGTHS[algorithm] or not re.fullmatch(r"[a-f0-9]+", encoded):
        raise _invalid(f'"{digest}" is not a valid {algorithm} digest')
    return digest


@dataclass(frozen=True)
class ImageReference:
    """A fully normalised image reference: `domain/path[:tag][@digest]`."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> ImageReference:
        return parse_reference(text)

    def __str__(self) -> str:
        out = self.repository
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out

    @property
    def repository(self) -> str:
        """`docker.io/library/ubuntu`: the name without tag or digest."""
        return f"{self.domain}/{self.path}"

    @property
    def object(self) -> str:
        """What to ask the registry's /manifests/ endpoint for: the digest when there is one, else the tag."""
        if self.digest is not None:
            return self.digest
        return self.tag if self.tag is not None else DEFAULT_TAG

    @property
    def hostname(self) -> str:
        """The domain without port or IPv6 brackets (Go's url.Hostname(); used for distribution.source)."""
        host = self.domain
        if host.startswith("["):
            return host[1 : host.index("]")]
        return host.rsplit(":", 1)[0] if ":" in host else host

    @property
    def docker_ref(self) -> str:
        """containerd's `ParseDockerRef` form (nerdctl's image name): a digest drops the tag."""
        if self.digest is not None:
            return f"{self.repository}@{self.digest}"
        return str(self)

    def familiar(self) -> str:
        """docker's short display form: `ubuntu:latest`, `user/repo:tag`, `localhost:5000/foo:latest`."""
        name = self.repository
        if self.domain == DEFAULT_DOMAIN:
            name = self.path
            rest = name.removeprefix(OFFICIAL_PREFIX)
            if rest != name and "/" not in rest:
                name = rest
        if self.tag is not None:
            name += f":{self.tag}"
        if self.digest is not None:
            name += f"@{self.digest}"
        return name

    def with_digest(self, digest: str) -> ImageReference:
        """The same reference pinned to `digest` (the tag is kept for display, the digest wins for pulls)."""
        return replace(self, digest=validate_digest(digest))

    def with_tag(self, tag: str) -> ImageReference:
        if not _TAG_RE.fullmatch(tag):
            raise _invalid(f'"{tag}" is not a valid tag')
        return replace(self, tag=tag, digest=None)


def _looks_like_registry(first: str) -> bool:
    """Is the first component of a name with a slash a registry? localhost, a dotted name or IP, anything
    with a port, or (since Hub namespaces are lowercase) anything with an uppercase letter."""
    return first == "localhost" or any(c in first for c in ".:") or first.lower() != first


def _split_domain(name: str) -> tuple[str, str]:
    """distribution/reference's splitDockerDomain: is the first component a registry, or a Hub namespace?"""
    first, slash, rest = name.partition("/")
    if not slash:
        # A single element ("ubuntu", "ubuntu:22.04", even "localhost:5000") is always a Docker Hub name.
        return DEFAULT_DOMAIN, OFFICIAL_PREFIX + name
    if _looks_like_registry(first):
        domain, remainder = first, rest
    else:
        domain, remainder = DEFAULT_DOMAIN, name
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in _name_part(remainder):
        remainder = OFFICIAL_PREFIX + remainder
    return domain, remainder


def _name_part(remainder: str) -> str:
    """The repository path of `path[:tag][@digest]`, without the tag or digest."""
    return re.split(r"[:@]", remainder, maxsplit=1)[0]


def parse_reference(text: str) -> ImageReference:
    """Normalise `text` as `docker pull` does, adding the `latest` tag when there is neither tag nor digest.

    Raises UsageError("invalid reference format: …") for anything docker would reject.
    """
    if not text:
        raise _invalid("the image name is empty")
    if _IDENTIFIER_RE.fullmatch(text):
        raise _invalid(f"repository name ({text}) cannot be a 64-character hexadecimal string")
    domain, remainder = _split_domain(text)
    path = _name_part(remainder)
    if path.lower() != path:
        raise _invalid(f"repository name ({path}) must be lowercase")
    if not _DOMAIN_RE.fullmatch(domain):
        raise _invalid(f'"{text}" has an invalid registry "{domain}" ({_FORMAT_HINT})')
    m = _REMAINDER_RE.fullmatch(remainder)
    if m is None:
        raise _invalid(f'"{text}" ({_FORMAT_HINT})')
    path, tag, digest = m.group(1), m.group(2), m.group(3)
    if len(domain) + 1 + len(path) > NAME_TOTAL_LENGTH_MAX:
        raise _invalid(f"repository name must not be more than {NAME_TOTAL_LENGTH_MAX} characters")
    if digest is not None:
        validate_digest(digest)
    elif tag is None:
        tag = DEFAULT_TAG
    return ImageReference(domain=domain, path=path, tag=tag, digest=digest)


def expand_alias(text: str, aliases: Mapping[str, str]) -> tuple[str, str | None]:
    """Replace a short-name alias at the start of `text`; returns (text, alias key used or None).

    The alias must match the whole repository name of a reference that names no registry, so
    `vllm:0.19.0-gpu` → `public.ecr.aws/deep-learning-containers/vllm:0.19.0-gpu`, while Docker Hub names that
    merely start with the same word (`vllm/vllm-openai`) are left alone. Tags and digests are kept. Keys may
    contain slashes (`myteam/app = "registry.example.com/team/app"`).
    """
    first, slash, _ = text.partition("/")
    if slash and _looks_like_registry(first):
        return text, None
    name = _name_part(text)
    if name not in aliases:
        return text, None
    return aliases[name] + text[len(name) :], name
