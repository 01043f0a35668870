"""WWW-Authenticate parsing, docker credential loading (files and helper programs), and secret hygiene."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from socirun.errors import AuthError, ConfigError
from socirun.registry.auth import Challenge, Credentials, load_credentials, parse_challenges

SECRET = "pa55-w0rd-NEVER-SHOWN"


# ------------------------------------------------------------------------------------------- challenges


def test_bearer_challenge_with_quoted_commas() -> None:
    header = (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/ubuntu:pull,push"'
    )
    assert parse_challenges(header) == [
        Challenge(
            "bearer",
            {
                "realm": "https://auth.docker.io/token",
                "service": "registry.docker.io",
                "scope": "repository:library/ubuntu:pull,push",
            },
        )
    ]


def test_several_challenges_and_spacing() -> None:
    header = 'Basic realm="Registry Realm", Bearer  realm = "https://x/token" , service=plain,error="a\\"b"'
    got = parse_challenges(header)
    assert [c.scheme for c in got] == ["basic", "bearer"]
    assert got[0].params == {"realm": "Registry Realm"}
    assert got[1].params == {"realm": "https://x/token", "service": "plain", "error": 'a"b'}


def test_list_of_header_lines_and_junk() -> None:
    got = parse_challenges(['Bearer realm="r1"', "Basic", ""])
    assert [(c.scheme, c.params) for c in got] == [("bearer", {"realm": "r1"}), ("basic", {})]
    assert parse_challenges("") == []
    assert parse_challenges('Bearer realm="unterminated')[0].params == {"realm": "unterminated"}


# ------------------------------------------------------------------------------------------- credentials


def write_config(directory: Path, config: dict[str, object]) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    return str(directory)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_auths_base64(tmp_path: Path) -> None:
    d = write_config(tmp_path, {"auths": {"registry.example.com": {"auth": b64(f"alice:{SECRET}")}}})
    creds = load_credentials("registry.example.com", d)
    assert creds == Credentials("alice", SECRET)
    assert load_credentials("other.example.com", d) is None


def test_auths_username_password_and_url_keys(tmp_path: Path) -> None:
    d = write_config(
        tmp_path,
        {"auths": {"https://reg.example:5000/v2/": {"username": "bob", "password": SECRET}}},
    )
    assert load_credentials("reg.example:5000", d) == Credentials("bob", SECRET)


def test_docker_hub_uses_the_legacy_key(tmp_path: Path) -> None:
    d = write_config(tmp_path, {"auths": {"https://index.docker.io/v1/": {"auth": b64(f"hub:{SECRET}")}}})
    for host in ("docker.io", "registry-1.docker.io", "index.docker.io"):
        assert load_credentials(host, d) == Credentials("hub", SECRET)


def test_identity_token(tmp_path: Path) -> None:
    d = write_config(tmp_path, {"auths": {"r.example": {"auth": b64("u:"), "identitytoken": SECRET}}})
    creds = load_credentials("r.example", d)
    assert creds is not None and creds.identity_token == SECRET


def test_docker_config_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = write_config(tmp_path / "dc", {"auths": {"r.example": {"auth": b64(f"env:{SECRET}")}}})
    monkeypatch.setenv("DOCKER_CONFIG", d)
    assert load_credentials("r.example") == Credentials("env", SECRET)


def test_missing_or_bad_config(tmp_path: Path) -> None:
    assert load_credentials("r.example", str(tmp_path / "nowhere")) is None
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"config\.json"):
        load_credentials("r.example", str(tmp_path))


HELPER = """#!/bin/sh
# A docker credential helper: `get` reads the server URL on stdin and prints JSON.
[ "$1" = "get" ] || exit 2
read -r server
echo "$server" >> "$(dirname "$0")/asked"
case "$server" in
  registry.example.com) echo '{"ServerURL":"registry.example.com","Username":"carol","Secret":"%s"}' ;;
  https://index.docker.io/v1/) echo '{"ServerURL":"x","Username":"<token>","Secret":"%s"}' ;;
  broken.example.com) echo 'oops %s'; exit 0 ;;
  failing.example.com) echo 'internal error, leaking %s'; exit 3 ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac
"""


@pytest.fixture
def helper_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "docker-credential-teststore"
    script.write_text(HELPER % (SECRET, SECRET, SECRET, SECRET))
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    return bindir


def test_creds_store_helper(tmp_path: Path, helper_on_path: Path) -> None:
    # With credsStore set, the store is authoritative even where `auths` holds a stale entry.
    d = write_config(
        tmp_path / "docker",
        {"credsStore": "teststore", "auths": {"registry.example.com": {"auth": b64("stale:stale")}}},
    )
    assert load_credentials("registry.example.com", d) == Credentials("carol", SECRET)
    hub = load_credentials("registry-1.docker.io", d)
    assert hub is not None and hub.identity_token == SECRET and hub.username == ""
    assert load_credentials("unknown.example.com", d) is None  # "credentials not found" → anonymous
    asked = (helper_on_path / "asked").read_text().split()
    assert asked == ["registry.example.com", "https://index.docker.io/v1/", "unknown.example.com"]


def test_cred_helpers_per_host(tmp_path: Path, helper_on_path: Path) -> None:
    d = write_config(
        tmp_path / "docker",
        {
            "credHelpers": {"registry.example.com": "teststore"},
            "auths": {"other.example.com": {"auth": b64(f"dave:{SECRET}")}},
        },
    )
    assert load_credentials("registry.example.com", d) == Credentials("carol", SECRET)
    assert load_credentials("other.example.com", d) == Credentials("dave", SECRET)


def test_missing_helper_program_is_a_clear_auth_error(tmp_path: Path) -> None:
    d = write_config(tmp_path, {"credsStore": "does-not-exist-anywhere"})
    with pytest.raises(AuthError) as info:
        load_credentials("registry.example.com", d)
    msg = str(info.value)
    assert "docker-credential-does-not-exist-anywhere" in msg
    assert "not installed" in msg and str(tmp_path / "config.json") in msg


@pytest.mark.parametrize("host", ["broken.example.com", "failing.example.com"])
def test_helper_failures_never_echo_output(tmp_path: Path, helper_on_path: Path, host: str) -> None:
    d = write_config(tmp_path / "docker", {"credsStore": "teststore"})
    with pytest.raises(AuthError) as info:
        load_credentials(host, d)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)


# ------------------------------------------------------------------------------------------- hygiene


def test_credentials_repr_hides_secrets() -> None:
    creds = Credentials("alice", SECRET)
    token = Credentials("", "", identity_token=SECRET)
    for text in (repr(creds), str(creds), repr(token), str(token), f"{creds}", repr([creds, token])):
        assert SECRET not in text
    assert "alice" in repr(creds)
    assert "<hidden>" in repr(creds)
    # The Authorization value itself is only ever produced on request, for the wire.
    assert creds.basic_header() == "Basic " + b64(f"alice:{SECRET}")


def test_bad_base64_auth_error_hides_value(tmp_path: Path) -> None:
    d = write_config(tmp_path, {"auths": {"r.example": {"auth": b64(SECRET)}}})  # no colon inside
    with pytest.raises(ConfigError) as info:
        load_credentials("r.example", d)
    assert SECRET not in str(info.value) and b64(SECRET) not in str(info.value)
