"""Property tests (hypothesis) of the parsers that read what a registry sends: the index, manifest and image config
parsers only ever raise MalformedImageError (a RegistryError, so one sentence and exit 125), the token parser only
AuthError, whatever JSON or bytes arrive. Examples are derandomized (the same every run, no database written):
2,500 per parser, issue 12's "a few thousand examples each in CI" (the module takes about 40 s on a 2-CPU VM)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from socirun.errors import AuthError, MalformedImageError
from socirun.oci import (
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    parse_image_config,
    parse_index,
    parse_manifest,
)
from socirun.registry.auth import parse_token
from socirun.registry.client import _media_type
from socirun.runtime.spec import ImageConfig

FUZZ = settings(max_examples=2500, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=12))
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
DIGESTS = st.sampled_from(["sha256:" + "a" * 64, "sha512:" + "b" * 128, "md5:" + "c" * 32, "sha1:" + "d" * 40,
                           "sha256:abc", "", "sha256:" + "A" * 64]) | JSON
SIZES = st.integers(min_value=-3, max_value=1 << 70) | JSON
STRING_MAPS = st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=3) | JSON
PLATFORMS = st.fixed_dictionaries(
    {}, optional={"os": st.sampled_from(["linux", "windows"]) | JSON, "architecture": st.just("amd64") | JSON,
                  "variant": st.just("v8") | JSON}) | JSON
DESCRIPTORS = st.fixed_dictionaries(
    {"digest": DIGESTS, "size": SIZES},
    optional={"mediaType": st.sampled_from([OCI_MANIFEST, OCI_LAYER_GZIP]) | JSON, "annotations": STRING_MAPS,
              "platform": PLATFORMS, "artifactType": st.text(max_size=5) | JSON},
) | JSON
INDEXES = st.fixed_dictionaries(
    {"manifests": st.lists(DESCRIPTORS, max_size=3) | JSON},
    optional={"schemaVersion": st.just(2) | JSON, "mediaType": st.just(OCI_INDEX) | JSON},
) | JSON
MANIFESTS = st.fixed_dictionaries(
    {"config": DESCRIPTORS}, optional={"layers": st.lists(DESCRIPTORS, max_size=3) | JSON}) | JSON
STRING_LISTS = st.lists(st.text(max_size=6), max_size=3) | st.text(max_size=6) | JSON
CONFIGS: st.SearchStrategy[Any] = st.fixed_dictionaries(
    {},
    optional={
        "os": st.just("linux") | JSON,
        "architecture": st.just("amd64") | JSON,
        "rootfs": st.fixed_dictionaries({"diff_ids": st.lists(DIGESTS, max_size=2) | JSON}) | JSON,
        "config": st.fixed_dictionaries({}, optional={
            "Cmd": STRING_LISTS, "Entrypoint": STRING_LISTS, "Env": STRING_LISTS, "User": st.text(max_size=4) | JSON,
            "WorkingDir": JSON, "StopSignal": JSON, "Labels": STRING_MAPS,
            "Volumes": st.dictionaries(st.text(max_size=6), st.just({}), max_size=2) | JSON,
            "ExposedPorts": JSON,
        }) | JSON,
    },
) | JSON
TOKENS = st.fixed_dictionaries(
    {}, optional={"token": st.text(max_size=10) | JSON, "access_token": st.text(max_size=10) | JSON,
                  "expires_in": st.integers() | st.floats() | JSON}) | JSON


def encode(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def only_malformed(parse: Callable[[bytes, str], Any], data: bytes) -> Any:
    try:
        return parse(data, "the document")
    except MalformedImageError as err:
        assert str(err).startswith("the document") or "of the document" in str(err)
        assert "\n" not in str(err)
        return None


@FUZZ
@given(st.one_of(INDEXES.map(encode), st.binary(max_size=64)))
def test_index_parser_raises_only_the_registry_error(data: bytes) -> None:
    entries = only_malformed(parse_index, data)
    for entry in entries or []:
        assert isinstance(entry, Descriptor) and isinstance(entry.size, int) and entry.size >= 0
    _media_type("application/json", data)  # guessing the type never raises either


@FUZZ
@given(st.one_of(MANIFESTS.map(encode), st.binary(max_size=64)))
def test_manifest_parser_raises_only_the_registry_error(data: bytes) -> None:
    parsed = only_malformed(parse_manifest, data)
    if parsed is not None:
        config, layers = parsed
        assert all(d.digest.startswith(("sha256:", "sha384:", "sha512:")) for d in (config, *layers))


@FUZZ
@given(st.one_of(CONFIGS.map(encode), st.binary(max_size=64)))
def test_config_parser_raises_only_the_registry_error(data: bytes) -> None:
    doc = only_malformed(parse_image_config, data)
    if doc is not None:
        ImageConfig.from_blob(doc)  # what passed the parser never trips the run's own reading of it


@FUZZ
@given(st.one_of(TOKENS.map(encode), st.binary(max_size=64)))
def test_token_parser_raises_only_the_auth_error(data: bytes) -> None:
    try:
        token = parse_token("registry.example", data)
    except AuthError as err:
        assert str(err).startswith("the token server for registry.example ")
        return
    assert token.value.isascii() and token.value.isprintable() and " " not in token.value
