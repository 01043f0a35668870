"""hosts.toml resolution (containerd's certs.d convention), defaults, loopback and insecure rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from socirun.errors import ConfigError
from socirun.registry.hosts import (
    RegistryHost,
    host_dir_candidates,
    is_insecure,
    is_loopback,
    resolve_hosts,
)


def write_hosts(root: Path, dirname: str, text: str) -> Path:
    d = root / dirname
    d.mkdir(parents=True, exist_ok=True)
    (d / "hosts.toml").write_text(text)
    return d


def urls(hosts: list[RegistryHost]) -> list[str]:
    return [h.base_url for h in hosts]


def test_defaults_without_hosts_toml(tmp_path: Path) -> None:
    empty = str(tmp_path)
    [hub] = resolve_hosts("docker.io", empty)
    assert hub == RegistryHost("https", "registry-1.docker.io", "/v2")
    assert not hub.is_mirror
    [other] = resolve_hosts("ghcr.io", empty)
    assert other.base_url == "https://ghcr.io/v2" and not other.skip_verify
    for loop in ("localhost:5000", "localhost", "127.0.0.1:5000", "127.1.2.3", "[::1]:5000"):
        [h] = resolve_hosts(loop, empty)
        assert h.scheme == "http" and h.skip_verify and h.host == loop


def test_plain_http_only_where_allowed(tmp_path: Path) -> None:
    for remote in ("registry.lan:5000", "10.0.0.7:5000", "example.com"):
        assert all(h.scheme == "https" for h in resolve_hosts(remote, str(tmp_path)))


def test_loopback_detection() -> None:
    assert is_loopback("localhost:5000")
    assert is_loopback("127.0.0.1")
    assert is_loopback("[::1]:443")
    assert not is_loopback("localhost.example.com")
    assert not is_loopback("10.0.0.1:5000")


def test_insecure_entries(tmp_path: Path) -> None:
    assert is_insecure("registry.lan:5000", ["registry.lan:5000"])
    assert is_insecure("registry.lan:5000", ["registry.lan"])  # a bare host covers every port
    assert is_insecure("10.1.2.3:5000", ["10.0.0.0/8"])
    assert is_insecure("registry.lan", ["http://registry.lan/"])
    assert not is_insecure("registry.lan:5000", ["other.lan", "10.0.0.0/8"])

    hosts = resolve_hosts("registry.lan:5000", str(tmp_path), ["registry.lan:5000"])
    # docker's semantics: HTTPS without verification first, then plain HTTP.
    assert [(h.scheme, h.skip_verify) for h in hosts] == [("https", True), ("http", True)]
    # Loopback too, when listed (unlisted loopback stays plain HTTP, as containerd does).
    hosts = resolve_hosts("localhost:5000", str(tmp_path), ["localhost:5000"])
    assert [(h.scheme, h.skip_verify) for h in hosts] == [("https", True), ("http", True)]
    # An explicit plain-HTTP mirror is left as configured.
    (tmp_path / "registry.lan:5000").mkdir()
    (tmp_path / "registry.lan:5000" / "hosts.toml").write_text('[host."http://cache.lan"]\n')
    hosts = resolve_hosts("registry.lan:5000", str(tmp_path), ["registry.lan:5000"])
    assert [h.base_url for h in hosts] == [
        "http://cache.lan/v2",
        "https://registry.lan:5000/v2",
        "http://registry.lan:5000/v2",
    ]


def test_lookup_directory_order(tmp_path: Path) -> None:
    assert host_dir_candidates("/c", "localhost:5000") == [
        "/c/localhost_5000_",
        "/c/localhost:5000",
        "/c/_default",
    ]
    assert host_dir_candidates("/c", "docker.io") == ["/c/docker.io", "/c/_default"]

    write_hosts(tmp_path, "_default", 'server = "https://default.example"\n')
    assert urls(resolve_hosts("reg.example:5000", str(tmp_path))) == ["https://default.example/v2"]
    write_hosts(tmp_path, "reg.example:5000", 'server = "https://colon.example"\n')
    assert urls(resolve_hosts("reg.example:5000", str(tmp_path))) == ["https://colon.example/v2"]
    write_hosts(tmp_path, "reg.example_5000_", 'server = "https://underscore.example"\n')
    assert urls(resolve_hosts("reg.example:5000", str(tmp_path))) == ["https://underscore.example/v2"]


def test_mirrors_first_in_file_order_then_server(tmp_path: Path) -> None:
    write_hosts(
        tmp_path,
        "docker.io",
        """
server = "https://registry-1.docker.io"

[host."https://mirror-b.example"]
  capabilities = ["pull"]

[host."http://mirror-a.example:5000"]
  capabilities = ["pull", "resolve"]
  skip_verify = true

[host."https://mirror-c.example/some/prefix"]

[host."https://mirror-d.example/custom/path"]
  override_path = true
""",
    )
    hosts = resolve_hosts("docker.io", str(tmp_path))
    assert urls(hosts) == [
        "https://mirror-b.example/v2",
        "http://mirror-a.example:5000/v2",
        "https://mirror-c.example/some/prefix/v2",
        "https://mirror-d.example/custom/path",
        "https://registry-1.docker.io/v2",
    ]
    assert hosts[0].capabilities == frozenset({"pull"})
    assert hosts[1].capabilities == frozenset({"pull", "resolve"}) and hosts[1].skip_verify
    assert hosts[2].capabilities == frozenset({"pull", "resolve", "push"})
    assert [h.is_mirror for h in hosts] == [True, True, True, True, False]
    # A public mirror with only `pull` is not asked to resolve tags.
    assert [h.host for h in hosts if h.can("resolve")] == [
        "mirror-a.example:5000",
        "mirror-c.example",
        "mirror-d.example",
        "registry-1.docker.io",
    ]


def test_host_settings(tmp_path: Path) -> None:
    d = write_hosts(
        tmp_path,
        "reg.example",
        """
server = "https://reg.example"
ca = "top-ca.pem"

[host."https://mirror.example"]
  ca = ["/etc/certs/a.pem", "b.pem"]
  client = [["/etc/certs/client.cert", "/etc/certs/client.key"]]
  [host."https://mirror.example".header]
    x-custom = "1"
    x-multi = ["a", "b"]

[host."https://mirror2.example"]
  client = "combined.pem"
""",
    )
    mirror, mirror2, server = resolve_hosts("reg.example", str(tmp_path))
    assert mirror.ca_files == ("/etc/certs/a.pem", str(d / "b.pem"))
    assert (mirror.client_cert, mirror.client_key) == ("/etc/certs/client.cert", "/etc/certs/client.key")
    assert mirror.headers == (("x-custom", "1"), ("x-multi", "a"), ("x-multi", "b"))
    assert (mirror2.client_cert, mirror2.client_key) == (str(d / "combined.pem"), None)
    # Top-level keys configure the server entry.
    assert server.ca_files == (str(d / "top-ca.pem"),) and not server.is_mirror


def test_hosts_toml_without_server_keeps_default_upstream(tmp_path: Path) -> None:
    write_hosts(tmp_path, "localhost:5000", '[host."http://cache.local:5001"]\n  capabilities = ["pull"]\n')
    hosts = resolve_hosts("localhost:5000", str(tmp_path))
    assert urls(hosts) == ["http://cache.local:5001/v2", "http://localhost:5000/v2"]
    assert hosts[-1].skip_verify and not hosts[-1].is_mirror


def test_docker_style_cert_files(tmp_path: Path) -> None:
    d = tmp_path / "reg.example"
    d.mkdir()
    for name in ("ca.crt", "client.cert", "client.key"):
        (d / name).write_text("x")
    [h] = resolve_hosts("reg.example", str(tmp_path))
    assert h.ca_files == (str(d / "ca.crt"),)
    assert (h.client_cert, h.client_key) == (str(d / "client.cert"), str(d / "client.key"))


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('server = "https://x"\n[host."https://m"\n', "line 2"),
        ('[host."https://m"]\n  capabilities = ["pull", "fly"]\n', 'unknown capability "fly"'),
        ('server = "ftp://x"\n', "not an http(s) URL"),
        ('[host."https://m"]\n  ca = 5\n', "ca in"),
    ],
)
def test_bad_hosts_toml_names_the_file(tmp_path: Path, text: str, needle: str) -> None:
    d = write_hosts(tmp_path, "reg.example", text)
    with pytest.raises(ConfigError) as info:
        resolve_hosts("reg.example", str(tmp_path))
    assert str(d / "hosts.toml") in str(info.value)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        'server = "https://alice:hunter2-secret@registry.example"\n',
        '[host."https://alice:hunter2-secret@mirror.example"]\n  capabilities = ["pull"]\n',
        '[host."alice:hunter2-secret@mirror.example:5000"]\n',  # bare host form, https implied
        'server = "ftp://alice:hunter2-secret@registry.example"\n',  # refused before the scheme is echoed
    ],
)
def test_userinfo_in_hosts_toml_is_refused_without_echoing_it(tmp_path: Path, text: str) -> None:
    write_hosts(tmp_path, "registry.example", text)
    with pytest.raises(ConfigError) as info:
        resolve_hosts("registry.example", str(tmp_path))
    message = str(info.value)
    assert "user name or password" in message and "docker login" in message
    assert "hunter2-secret" not in message and "alice" not in message
