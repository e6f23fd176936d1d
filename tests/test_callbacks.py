"""The callback check: SSRF suite against a canary on loopback, and the positive cases under the
explicit local allowance. Name resolution is stubbed (hostnames resolve to the address under test)
and every connect is guarded (conftest), so no packet goes anywhere but loopback."""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from account_api.callbacks import CallbackChecker, CallbackPolicy, check_callback_url, is_public_address
from local import webhooks

# Hostnames of the suite and the address each resolves to (the stub resolver's table).
STUB_DNS = {
    "private10.hostile.example": ["10.0.0.5"],
    "private172.hostile.example": ["172.16.3.4"],
    "private192.hostile.example": ["192.168.1.20"],
    "metadata.hostile.example": ["169.254.169.254"],
    "metadata6.hostile.example": ["fd00:ec2::254"],
    "linklocal6.hostile.example": ["fe80::1"],
    "cgnat.hostile.example": ["100.64.0.7"],
    "zero.hostile.example": ["0.0.0.0"],
    "unspecified6.hostile.example": ["::"],
    "multicast.hostile.example": ["224.0.0.251"],
    "loopback.hostile.example": ["127.0.0.1"],
    "loopback6.hostile.example": ["::1"],
    "mapped.hostile.example": ["::ffff:127.0.0.1"],
    "mapped10.hostile.example": ["::ffff:10.0.0.1"],
    "nat64.hostile.example": ["64:ff9b::a9fe:a9fe"],
    "sixtofour.hostile.example": ["2002:7f00:1::1"],
    "teredo.hostile.example": ["2001:0:4136:e378:8000:63bf:3fff:fdd2"],
    "mixed.hostile.example": ["93.184.216.34", "10.1.2.3"],
    "ula.hostile.example": ["fc00::5"],
    "benchmark.hostile.example": ["198.18.0.1"],
    "broadcast.hostile.example": ["255.255.255.255"],
    "localhost": ["127.0.0.1", "::1"],
}


def stub_resolver(table: dict[str, list[str]]) -> Any:
    calls: list[str] = []

    def resolve(host: str, port: int, *args: Any) -> list[tuple[Any, ...]]:
        calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "stub: unknown name")
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in table[host]
        ]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


def refusing_connector() -> Any:
    attempts: list[tuple[str, int]] = []

    def connect(address: tuple[str, int], timeout: float) -> socket.socket:
        attempts.append(address)
        raise ConnectionRefusedError("stub connector: nothing is reachable")

    connect.attempts = attempts  # type: ignore[attr-defined]
    return connect


@pytest.fixture
def canary() -> Iterator[webhooks.WebhookServer]:
    server = webhooks.start()
    yield server
    server.close()


def hostile_urls(port: int) -> list[tuple[str, str]]:
    return [
        # loopback in all spellings, pointed at the canary's port
        (f"http://127.0.0.1:{port}/", "scheme_not_allowed"),
        (f"https://127.0.0.1:{port}/", "port_not_allowed"),
        ("https://127.0.0.1/", "ip_literal_not_allowed"),
        ("https://127.1/", "ip_literal_not_allowed"),
        ("https://127.000.000.001/", "ip_literal_not_allowed"),
        ("https://2130706433/", "ip_literal_not_allowed"),
        ("https://017700000001/", "ip_literal_not_allowed"),
        ("https://0x7f000001/", "ip_literal_not_allowed"),
        ("https://0x7f.0x0.0x0.0x1/", "ip_literal_not_allowed"),
        ("https://0177.0.0.1/", "ip_literal_not_allowed"),
        ("https://0/", "ip_literal_not_allowed"),
        ("https://[::1]/", "ip_literal_not_allowed"),
        ("https://[0:0:0:0:0:0:0:1]/", "ip_literal_not_allowed"),
        ("https://[::ffff:127.0.0.1]/", "ip_literal_not_allowed"),
        ("https://[::ffff:7f00:1]/", "ip_literal_not_allowed"),
        ("https://169.254.169.254/latest/meta-data/", "ip_literal_not_allowed"),  # hostile: refused before any connect
        ("https://[fd00:ec2::254]/", "ip_literal_not_allowed"),
        ("https://10.0.0.1/", "ip_literal_not_allowed"),  # hostile: refused before any connect
        ("https://localhost/", "blocked_address"),
        (f"https://localhost:{port}/", "port_not_allowed"),
        # hostnames resolving to internal addresses (stubbed DNS)
        *[(f"https://{host}/hook", "blocked_address") for host in STUB_DNS if host.endswith("hostile.example")],
        ("https://mixed.hostile.example/hook", "blocked_address"),
        # userinfo tricks, backslashes, control characters
        ("https://user:pass@hooks.example.com/", "userinfo_not_allowed"),
        ("https://hooks.example.com@127.0.0.1/", "userinfo_not_allowed"),
        ("https://hooks.example.com\\@127.0.0.1/", "invalid_url"),
        ("https://hooks.example.com\\.127.0.0.1/", "invalid_url"),
        ("https://hooks.example.com/\r\nHost: 127.0.0.1", "invalid_url"),
        ("https://hooks.example.com/\x00", "invalid_url"),
        ("https://hooks.exam ple.com/", "invalid_url"),
        ("https://hóoks.example.com/", "invalid_url"),
        # non-https schemes, other ports
        ("http://hooks.example.com/", "scheme_not_allowed"),
        ("file:///etc/passwd", "scheme_not_allowed"),
        ("gopher://hooks.example.com:70/", "scheme_not_allowed"),
        ("ftp://hooks.example.com/", "scheme_not_allowed"),
        ("dict://hooks.example.com:11211/", "scheme_not_allowed"),
        ("https://hooks.example.com:22/", "port_not_allowed"),
        ("https://hooks.example.com:8443/", "port_not_allowed"),
        ("//hooks.example.com/", "invalid_url"),
        ("not a url", "invalid_url"),
        ("https://" + "a" * 2100 + ".example.com/", "invalid_url"),
    ]


def test_ssrf_suite_never_reaches_the_canary(canary: webhooks.WebhookServer) -> None:
    resolver = stub_resolver(STUB_DNS)
    connector = refusing_connector()
    checker = CallbackChecker(CallbackPolicy(timeout=2), resolver=resolver, connector=connector)
    urls = hostile_urls(canary.server_address[1])
    assert len(urls) >= 40
    for url, reason in urls:
        result = checker.check(url)
        assert (result.ok, result.reason) == (False, reason), url
        assert result.detail
    assert canary.hits == []
    assert connector.attempts == []  # every refusal came before any connection


def test_default_resolution_of_localhost_is_blocked(canary: webhooks.WebhookServer) -> None:
    result = check_callback_url("https://localhost/hook", CallbackPolicy(timeout=2))
    assert result.reason == "blocked_address"
    assert canary.hits == []


def test_dns_answer_that_changes_between_lookups_is_resolved_once() -> None:
    answers = iter([["127.0.0.1"], ["93.184.216.34"]])

    def rebinding(host: str, port: int, *args: Any) -> list[tuple[Any, ...]]:
        return stub_resolver({host: next(answers)})(host, port)

    checker = CallbackChecker(CallbackPolicy(timeout=2), resolver=rebinding, connector=refusing_connector())
    assert checker.check("https://rebind.hostile.example/").reason == "blocked_address"
    # the other order: the public answer is pinned, the later internal answer is never used
    answers2 = iter([["93.184.216.34"], ["127.0.0.1"]])
    lookups: list[str] = []

    def rebinding2(host: str, port: int, *args: Any) -> list[tuple[Any, ...]]:
        lookups.append(host)
        return stub_resolver({host: next(answers2)})(host, port)

    connector = refusing_connector()
    result = CallbackChecker(CallbackPolicy(timeout=2), resolver=rebinding2, connector=connector).check(
        "https://rebind.hostile.example/"
    )
    assert lookups == ["rebind.hostile.example"]
    assert connector.attempts == [("93.184.216.34", 443)]  # pinned to the checked address
    assert result.reason == "connection_error"


def test_redirect_to_an_internal_address_is_not_followed(canary: webhooks.WebhookServer) -> None:
    checker = CallbackChecker(CallbackPolicy(timeout=2, allow_hosts=frozenset({"localhost"})))
    hostile = "http://169.254.169.254/latest/meta-data/"  # never fetched: redirects are not followed
    result = checker.check(f"{canary.url}/redirect?to={hostile}")
    assert (result.ok, result.reason, result.status) == (False, "redirect", 302)
    assert canary.hits == [f"/redirect?to={hostile}"]


# blocked addresses: only classified here, never connected to
BLOCKED_ADDRESSES = [
    "127.0.0.1",
    "10.1.1.1",
    "172.31.255.255",
    "192.168.0.1",
    "169.254.169.254",
    "100.127.0.1",
    "0.0.0.0",
    "224.0.0.1",
    "::1",
    "fe80::1",
    "fd00:ec2::254",
    "::ffff:192.168.0.1",
    "64:ff9b::7f00:1",
    "2002:a00:1::1",
    "::",
    "64:ff9b:1::808:808",  # local-use NAT64 (RFC 8215): never public, even around a public IPv4
    "fec0::1",  # deprecated site-local
]


@pytest.mark.parametrize("address", BLOCKED_ADDRESSES)
def test_internal_addresses_are_not_public(address: str) -> None:
    import ipaddress

    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "::ffff:93.184.216.34"])
def test_public_addresses_are_public(address: str) -> None:
    import ipaddress

    assert is_public_address(ipaddress.ip_address(address))


# -- positive cases, under the explicit local allowance -------------------------------------------

ALLOW_LOCAL = CallbackPolicy(timeout=1.0, allow_hosts=frozenset({"localhost"}))


def test_a_url_that_answers_200_passes(hooks: webhooks.WebhookServer) -> None:
    result = CallbackChecker(ALLOW_LOCAL).check(f"{hooks.url}/ok")
    assert (result.ok, result.reason, result.status) == (True, "ok", 200)
    assert hooks.hits == ["/ok"]


def test_a_url_that_answers_404_fails_with_the_status(hooks: webhooks.WebhookServer) -> None:
    result = CallbackChecker(ALLOW_LOCAL).check(f"{hooks.url}/missing")
    assert (result.ok, result.reason, result.status) == (False, "status", 404)


def test_allowance_does_not_extend_to_other_hosts(hooks: webhooks.WebhookServer) -> None:
    port = hooks.server_address[1]
    result = CallbackChecker(ALLOW_LOCAL).check(f"http://127.0.0.1:{port}/ok")
    assert result.reason == "scheme_not_allowed"
    assert hooks.hits == []


def test_deadline_on_a_stalled_endpoint(hooks: webhooks.WebhookServer) -> None:
    result = CallbackChecker(ALLOW_LOCAL).check(f"{hooks.url}/stall")
    assert (result.ok, result.reason) == (False, "timeout")


@pytest.mark.parametrize("path", sorted(webhooks.HOSTILE))
def test_no_far_end_can_stretch_the_deadline(hooks: webhooks.WebhookServer, path: str) -> None:
    """The deadline is a wall: trickled bytes, endless interim answers, header lines or trailers
    all end with the check at the deadline (1 s here), not when the server tires."""
    import time

    started = time.monotonic()
    result = CallbackChecker(ALLOW_LOCAL).check(f"{hooks.url}{path}")
    elapsed = time.monotonic() - started
    if path in ("/endless-trailers", "/trickle-chunk"):  # the status arrived: the body is never read
        assert (result.ok, result.status) == (True, 200)
    elif path == "/continue-flood":  # cut off by count, long before the deadline
        assert (result.ok, result.reason) == (False, "connection_error")
    else:
        assert (result.ok, result.reason) == (False, "timeout"), result
    assert elapsed < 1.3, f"{path} held the check for {elapsed:.2f} s"


def test_an_interim_answer_flood_is_cut_off_by_count(hooks: webhooks.WebhookServer) -> None:
    result = CallbackChecker(CallbackPolicy(timeout=5.0, allow_hosts=frozenset({"localhost"}))).check(
        f"{hooks.url}/continue-flood"
    )
    assert (result.reason, result.detail) == ("connection_error", "more than 5 interim answers")


def test_never_ending_and_oversized_bodies_are_read_only_up_to_the_cap(hooks: webhooks.WebhookServer) -> None:
    checker = CallbackChecker(ALLOW_LOCAL)
    for path in ("/endless", "/big"):
        result = checker.check(f"{hooks.url}{path}")
        assert (result.ok, result.status) == (True, 200), path


def test_both_urls_are_checked_at_the_same_time(hooks: webhooks.WebhookServer) -> None:
    checker = CallbackChecker(ALLOW_LOCAL)
    results = checker.check_all([f"{hooks.url}/slow?ms=300", f"{hooks.url}/slow?ms=300"])
    assert [r.ok for r in results] == [True, True]
    assert hooks.max_in_flight == 2  # overlapping, not one after the other


def _self_signed_cert(directory: Path) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_path), str(key_path)


def test_an_untrusted_certificate_is_a_tls_error(tmp_path: Path) -> None:
    cert, key = _self_signed_cert(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), webhooks.WebhookHandler)
    server.stop = threading.Event()  # type: ignore[attr-defined]
    server.enter = lambda path: None  # type: ignore[attr-defined]
    server.leave = lambda: None  # type: ignore[attr-defined]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        result = CallbackChecker(ALLOW_LOCAL).check(f"https://localhost:{server.server_address[1]}/ok")
        assert (result.ok, result.reason) == (False, "tls_error")
    finally:
        server.shutdown()
        server.server_close()


def test_policy_reads_the_allowance_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNSAFE_CALLBACK_ALLOW_HOSTS", " localhost , 127.0.0.1 ")
    assert CallbackPolicy.from_environment().allow_hosts == frozenset({"localhost", "127.0.0.1"})
    monkeypatch.delenv("UNSAFE_CALLBACK_ALLOW_HOSTS")
    assert CallbackPolicy.from_environment().allow_hosts == frozenset()


def test_an_at_sign_in_the_query_is_not_userinfo() -> None:
    from account_api.callbacks import _validate_url

    policy = CallbackPolicy()
    assert _validate_url("https://hooks.example.com/?email=a@b.c", policy)[1] == "hooks.example.com"
    assert _validate_url("https://hooks.example.com#a@b", policy)[1] == "hooks.example.com"
    for url in ("https://user@hooks.example.com/", "https://a:b@hooks.example.com/?x=1"):
        with pytest.raises(Exception, match="user name or password"):
            _validate_url(url, policy)


def test_a_trailing_dot_host_is_checked_as_the_same_name() -> None:
    """TLS, SNI and the Host header name the host without its trailing dot."""
    from account_api.callbacks import _validate_url

    assert _validate_url("https://hooks.example.com./in", CallbackPolicy())[1:] == ("hooks.example.com", 443, "/in")
