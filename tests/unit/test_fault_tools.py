"""The fault campaign's own tools (tests/support/faultproxy.py, leaks.py, fault_campaign.py), against a local
HTTP server: a fault that does not do what it says would make the campaign prove nothing."""

from __future__ import annotations

import datetime as dt
import http.client
import http.server
import ipaddress
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fault_campaign import one_sentence
from tests.support.faultproxy import Fault, FaultKind, FaultProxy
from tests.support.leaks import (
    Leaks,
    LeaseInfo,
    is_resume_lease,
    matching_iptables_rules,
    mounts_under,
    parse_lease_row,
)

BODY = bytes(range(256)) * 1024  # 256 KiB
DIGEST = "sha256:" + "ab" * 32


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    with FaultProxy(f"127.0.0.1:{server.server_address[1]}") as p:
        yield p
    server.shutdown()
    server.server_close()


def _get(proxy: FaultProxy, path: str = f"/v2/x/blobs/{DIGEST}") -> tuple[int, dict[str, str], bytes]:
    host, port = proxy.address.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = b""
        try:
            body = resp.read()
        except http.client.IncompleteRead as err:
            body = err.partial
        return resp.status, dict(resp.getheaders()), body
    finally:
        conn.close()


def test_without_a_fault_the_body_passes_unchanged_and_the_connection_closes(proxy: FaultProxy) -> None:
    status, headers, body = _get(proxy)
    assert status == 200 and body == BODY and headers["Connection"] == "close"
    assert proxy.injected == 0


def test_503_and_429_answer_once_with_retry_after_then_pass(proxy: FaultProxy) -> None:
    kinds: tuple[FaultKind, ...] = ("503", "429")
    for kind in kinds:
        proxy.inject(Fault(kind))
        status, headers, _ = _get(proxy)
        assert status == int(kind) and headers["Retry-After"] == "1"
        assert _get(proxy)[0] == 200 and proxy.injected == 1


def test_short_body_stops_after_the_bytes_asked(proxy: FaultProxy) -> None:
    proxy.inject(Fault("short", after=1000))
    status, headers, body = _get(proxy)
    assert status == 200 and headers["Content-Length"] == str(len(BODY)) and body == BODY[:1000]


def test_reset_resets(proxy: FaultProxy) -> None:
    proxy.inject(Fault("reset", after=1000))
    with pytest.raises((ConnectionResetError, http.client.IncompleteRead)):
        host, port = proxy.address.split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", f"/v2/x/blobs/{DIGEST}")
        resp = conn.getresponse()
        while resp.read(4096):
            pass
        raise AssertionError("the body ended without a reset")
    assert proxy.injected == 1


def test_flip_inverts_exactly_one_byte_and_only_of_the_digest_asked(proxy: FaultProxy) -> None:
    proxy.inject(Fault("flip", after=5000, digest=DIGEST))
    assert _get(proxy, "/v2/x/blobs/sha256:" + "cd" * 32)[2] == BODY  # another blob: untouched
    body = _get(proxy)[2]
    assert len(body) == len(BODY)
    assert [i for i in range(len(BODY)) if body[i] != BODY[i]] == [5000]


def test_a_tls_hello_is_counted_and_passed_to_the_plain_http_upstream(proxy: FaultProxy) -> None:
    host, port = proxy.address.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"\x16\x03\x01\x00\x05hello\r\n\r\n")
        answer = b""
        while part := s.recv(4096):
            answer += part
    # http.server answers bytes it cannot parse with its 400 page, as a plain-HTTP registry does.
    assert b"400" in answer and proxy.tls_hellos == 1


def test_iptables_rules_of_the_bridge_and_its_private_chains_are_found() -> None:
    dump = "\n".join([
        "*nat",
        ":CNI-abc - [0:0]",
        '-A POSTROUTING -s 10.9.0.5/32 -m comment --comment "name: n id: c" -j CNI-abc',
        "-A CNI-abc -d 10.9.0.0/24 -j ACCEPT",
        "-A CNI-abc ! -d 224.0.0.0/4 -j MASQUERADE",
        "-A CNI-HOSTPORT-DNAT -p tcp -m multiport --dports 8080 -j CNI-DN-1",
        "-A CNI-DN-1 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.9.0.5:80",
        "-A CNI-FORWARD -o br9 -j ACCEPT",
        "-A POSTROUTING -s 172.17.0.0/16 -j MASQUERADE",  # the host's docker: not ours
        "-A CNI-xyz -d 10.8.0.0/24 -j ACCEPT",  # another CNI network
    ])
    found = matching_iptables_rules(dump, "br9", ipaddress.IPv4Network("10.9.0.0/24"))
    assert len(found) == 6 and not any("172.17" in r or "10.8.0" in r for r in found)


def test_mounts_are_counted_under_the_roots_only(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text("36 25 0:32 / /tmp/sb/root/a rw - overlay overlay rw\n"
                    "37 25 0:33 / /tmp/sb2 rw - tmpfs tmpfs rw\n"
                    "38 25 0:34 / /tmp/sb/with\\040space rw - tmpfs tmpfs rw\n")  # fmt: skip
    assert mounts_under([Path("/tmp/sb")], str(info)) == ["/tmp/sb/root/a", "/tmp/sb/with space"]


def test_only_socirun_resume_leases_within_their_day_are_expected() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    expire = {"containerd.io/gc.expire": "2026-01-01T23:00:00Z"}
    assert is_resume_lease(LeaseInfo("a", {"io.socirun/purpose": "resume", **expire}), now)
    assert not is_resume_lease(LeaseInfo("b", {"io.socirun/purpose": "pull", **expire}), now)
    assert not is_resume_lease(LeaseInfo("c", {"io.socirun/purpose": "resume"}), now)
    far = {"io.socirun/purpose": "resume", "containerd.io/gc.expire": "2027-01-01T00:00:00Z"}
    assert not is_resume_lease(LeaseInfo("d", far), now)


def test_a_lease_row_with_ctrs_padding_parses_to_clean_labels() -> None:
    row = ("socirun-1-a0 2026-12-02T11:35:20Z containerd.io/gc.expire=2026-12-03T11:35:20Z,"
           "io.socirun/purpose=resume   ")  # fmt: skip
    lease = parse_lease_row(row)
    assert lease.id == "socirun-1-a0" and lease.labels["io.socirun/purpose"] == "resume"
    assert parse_lease_row("bare 2026-12-02T11:35:20Z").labels == {}


def test_leaks_subtract_a_baseline_never_below_zero() -> None:
    now, before = Leaks(leases=2, mounts=1), Leaks(leases=1, snapshots=3)
    assert now.minus(before) == Leaks(leases=1, mounts=1) and now.minus(before).total() == 2


def test_one_sentence_is_docker_shaped() -> None:
    assert one_sentence("socirun: layer x does not match its digest\n")
    assert not one_sentence("Traceback (most recent call last):\n  ...\nValueError: x\n")
    assert not one_sentence("socirun: a\nsocirun: b\n") and not one_sentence("")
