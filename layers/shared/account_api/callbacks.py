"""The safe "does this callback URL answer 200?" check (SSRF-hardened, docs/callback-check.md).

The URL is chosen by an API caller and fetched from inside the AWS account, so the check must
never reach an internal address:
- parsed with urllib3's parser (the same family that sends requests), https only by default, an
  explicit port allow-list, no userinfo, no backslashes or control characters, no IP literals in
  any spelling (dotted, decimal, octal, hex, short forms, IPv6);
- the host is resolved once, every address must be globally routable (IPv4-mapped, NAT64, 6to4
  and Teredo forms are unwrapped first), and the connection goes to that pinned address while
  TLS still verifies the certificate against the hostname;
- redirects are never followed and the body is never read (the status is the answer); one
  wall-clock deadline covers the whole check: when it passes the socket is shut, whatever the far
  end is doing (trickling a status line, sending endless `100 Continue` answers or header lines).
  Interim answers and header lines are capped. No retries.

A local run needs loopback callbacks: `UNSAFE_CALLBACK_ALLOW_HOSTS` (comma-separated host names)
lets exactly those hosts use http, any port and loopback addresses. template.yaml never sets it.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from . import deadline as invocation

ALLOW_HOSTS_ENV = "UNSAFE_CALLBACK_ALLOW_HOSTS"
MAX_URL_LENGTH = 2048
USER_AGENT = "account-ops-callback-check/1.0"

Reason = Literal[
    "ok",
    "invalid_url",
    "scheme_not_allowed",
    "port_not_allowed",
    "userinfo_not_allowed",
    "ip_literal_not_allowed",
    "blocked_address",
    "dns_failure",
    "timeout",
    "tls_error",
    "connection_error",
    "redirect",
    "status",
]

Resolver = Callable[..., list[tuple[Any, ...]]]
Connector = Callable[[tuple[str, int], float], socket.socket]

_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
# Unwrapped before judging an IPv6 address: these embed an IPv4 address that is what gets reached.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
# Never public, whatever they embed: local-use NAT64 (RFC 8215) and the deprecated site-local range.
_NEVER_PUBLIC = (ipaddress.ip_network("64:ff9b:1::/48"), ipaddress.ip_network("fec0::/10"))
# A server may send `100 Continue` answers before its real one; more than this is hostile.
MAX_INTERIM_ANSWERS = 5
# http.client refuses more than 100 header lines; a callback answers with a handful.
MAX_HEADER_LINES = 50


class CallbackCheck(BaseModel):
    """Result of one check. `reason` is machine-readable; `detail` says it in words."""

    model_config = ConfigDict(frozen=True)

    url: str
    ok: bool
    reason: Reason
    status: int | None = None
    detail: str = ""


class CallbackPolicy(BaseModel):
    model_config = ConfigDict(frozen=True)

    allowed_ports: frozenset[int] = frozenset({443})
    timeout: float = Field(default=5.0, gt=0, le=20)
    method: Literal["GET", "HEAD"] = "GET"
    allow_hosts: frozenset[str] = frozenset()

    @classmethod
    def from_environment(cls) -> CallbackPolicy:
        from .config import timeouts

        raw = os.environ.get(ALLOW_HOSTS_ENV, "")
        hosts = frozenset(h.strip().lower().strip("[]") for h in raw.split(",") if h.strip())
        return cls(allow_hosts=hosts, timeout=timeouts().callback_check_timeout)


def is_public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True only for globally routable unicast addresses, after unwrapping embedded IPv4."""
    if isinstance(address, ipaddress.IPv6Address):
        if any(address in net for net in _NEVER_PUBLIC):
            return False
        embedded: ipaddress.IPv4Address | None = address.ipv4_mapped
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is None and address in _SIX_TO_FOUR:
            embedded = address.sixtofour
        if address.teredo is not None:
            return False
        if embedded is not None:
            return is_public_address(embedded)
    return bool(address.is_global) and not address.is_multicast and not address.is_reserved


class _Refused(Exception):
    def __init__(self, reason: Reason, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.reason: Reason = reason
        self.detail = detail
        self.status = status


def _looks_like_ip_literal(host: str) -> bool:
    """IP literals in every spelling getaddrinfo accepts: 127.0.0.1, 2130706433, 0x7f.1, 0177.0.0.1, ::1."""
    if ":" in host:
        return True
    labels = host.rstrip(".").split(".")
    return all(_NUMERIC_LABEL.match(label) for label in labels) or bool(_NUMERIC_LABEL.match(labels[-1]))


def _authority(url: str) -> str:
    """The authority part of an absolute URL: between `//` and the first `/`, `?` or `#`."""
    rest = url.split("//", 1)[1] if "//" in url else ""
    return re.split(r"[/?#]", rest, maxsplit=1)[0]


def _validate_url(url: str, policy: CallbackPolicy) -> tuple[str, str, int, str]:
    """(scheme, host, port, request target) of an acceptable URL, else _Refused."""
    from urllib3.exceptions import LocationParseError
    from urllib3.util import parse_url

    if not url or len(url) > MAX_URL_LENGTH:
        raise _Refused("invalid_url", f"must be 1-{MAX_URL_LENGTH} characters")
    if any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in url) or "\\" in url:
        raise _Refused("invalid_url", "contains whitespace, control, non-ASCII characters or a backslash")
    try:
        parsed = parse_url(url)
    except LocationParseError:
        raise _Refused("invalid_url", "cannot be parsed as a URL") from None
    scheme = (parsed.scheme or "").lower()
    host = (parsed.host or "").lower().strip("[]")
    if scheme and scheme not in ("https", "http"):
        raise _Refused("scheme_not_allowed", "only https URLs are allowed")
    if not scheme or not host:
        raise _Refused("invalid_url", "must be an absolute URL with a host")
    if parsed.auth is not None or "@" in _authority(url):
        raise _Refused("userinfo_not_allowed", "must not contain a user name or password")
    allowed_host = host in policy.allow_hosts
    if scheme != "https" and not (allowed_host and scheme == "http"):
        raise _Refused("scheme_not_allowed", "only https URLs are allowed")
    port = parsed.port or (443 if scheme == "https" else 80)
    if not allowed_host and port not in policy.allowed_ports:
        raise _Refused("port_not_allowed", f"port {port} is not allowed (allowed: {sorted(policy.allowed_ports)})")
    if not allowed_host:
        if _looks_like_ip_literal(host):
            raise _Refused("ip_literal_not_allowed", "use a host name, not an IP address")
        labels = host.rstrip(".").split(".")
        if len(host) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
            raise _Refused("invalid_url", "host is not a valid DNS name")
    # "example.com." is "example.com": the certificate, SNI and Host header name it without the dot.
    return scheme, host.rstrip("."), port, parsed.request_uri or "/"


class CallbackChecker:
    """Runs checks under a policy. `resolver` and `connector` are injectable so tests can stub
    name resolution and record connection attempts without any packet leaving loopback."""

    def __init__(
        self,
        policy: CallbackPolicy | None = None,
        *,
        resolver: Resolver | None = None,
        connector: Connector | None = None,
    ) -> None:
        self.policy = policy or CallbackPolicy.from_environment()
        self._resolve = resolver or socket.getaddrinfo
        self._connect = connector or socket.create_connection

    def check(self, url: str) -> CallbackCheck:
        deadline = invocation.bound(self.policy.timeout)  # the invocation's deadline may come first
        try:
            status = self._check(url, deadline)
        except _Refused as refused:
            return CallbackCheck(url=url, ok=False, reason=refused.reason, status=refused.status, detail=refused.detail)
        return CallbackCheck(url=url, ok=True, reason="ok", status=status, detail="answered 200")

    def check_all(self, urls: Sequence[str]) -> list[CallbackCheck]:
        """Check several URLs at once: the wall time is that of the slowest, not the sum."""
        if len(urls) <= 1:
            return [self.check(url) for url in urls]
        with ThreadPoolExecutor(max_workers=len(urls), thread_name_prefix="callback-check") as pool:
            return list(pool.map(self.check, urls))

    def _check(self, url: str, deadline: float) -> int:
        scheme, host, port, target = _validate_url(url, self.policy)
        address = self._pinned_address(host, port, deadline)
        sock = self._open(address, port, deadline)
        watchdog = _Watchdog(sock, deadline)
        try:
            if scheme == "https":
                sock = watchdog.sock = self._tls(sock, host)
            status = self._exchange(sock, host, port, scheme, target, watchdog)
            if watchdog.fired:  # http.client takes a shut socket's EOF for the end of the headers
                raise _Refused("timeout", "no complete answer in time")
            return status
        except _Refused:
            if watchdog.fired:
                raise _Refused("timeout", "no complete answer in time") from None
            raise
        finally:
            watchdog.cancel()
            sock.close()

    def _pinned_address(self, host: str, port: int, deadline: float) -> str:
        """Resolve once (under the deadline) and check every address; return the one to connect to."""
        # getaddrinfo has no timeout of its own: run it aside and stop waiting at the deadline.
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="callback-dns")
        try:
            future = pool.submit(self._resolve, host, port, 0, socket.SOCK_STREAM)
            infos = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            raise _Refused("timeout", "name resolution took too long") from None
        except (OSError, UnicodeError) as exc:
            raise _Refused("dns_failure", f"cannot resolve host ({type(exc).__name__})") from None
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        addresses = []
        for info in infos:
            try:
                addresses.append(ipaddress.ip_address(str(info[4][0]).split("%")[0]))
            except ValueError:
                raise _Refused("dns_failure", "resolver returned an unusable address") from None
        if not addresses:
            raise _Refused("dns_failure", "host has no address")
        allowed_host = host in self.policy.allow_hosts
        for address in addresses:
            if is_public_address(address) or (allowed_host and address.is_loopback):
                continue
            raise _Refused("blocked_address", "host resolves to a non-public address")
        return str(addresses[0])

    def _open(self, address: str, port: int, deadline: float) -> socket.socket:
        try:
            sock = self._connect((address, port), _remaining(deadline))
        except TimeoutError:
            raise _Refused("timeout", "connecting took too long") from None
        except OSError as exc:
            raise _Refused("connection_error", f"cannot connect ({type(exc).__name__})") from None
        sock.settimeout(_remaining(deadline))
        return sock

    @staticmethod
    def _tls(sock: socket.socket, host: str) -> socket.socket:
        context = ssl.create_default_context()  # verifies the chain and the hostname
        try:
            return context.wrap_socket(sock, server_hostname=host)
        except ssl.SSLError as exc:
            raise _Refused("tls_error", f"TLS failed ({exc.reason or type(exc).__name__})") from None
        except TimeoutError:
            raise _Refused("timeout", "TLS handshake took too long") from None
        except OSError as exc:
            raise _Refused("connection_error", f"connection lost during TLS ({type(exc).__name__})") from None

    def _exchange(
        self, sock: socket.socket, host: str, port: int, scheme: str, target: str, watchdog: _Watchdog
    ) -> int:
        default_port = 443 if scheme == "https" else 80
        host_header = host if port == default_port else f"{host}:{port}"
        if ":" in host:
            host_header = f"[{host}]" if port == default_port else f"[{host}]:{port}"
        request = (
            f"{self.policy.method} {target} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: {USER_AGENT}\r\n"
            "Accept: */*\r\nConnection: close\r\n\r\n"
        )
        try:
            sock.sendall(request.encode("ascii"))
            response = _CappedResponse(sock, method=self.policy.method)
            response.begin()  # status line and headers only: the body is never read
            status = response.status
        except TimeoutError:
            raise _Refused("timeout", "no complete answer in time") from None
        except _Refused:
            raise
        except (http.client.HTTPException, OSError, ValueError) as exc:
            raise _Refused("connection_error", f"unreadable answer ({type(exc).__name__})") from None
        if 300 <= status < 400:
            raise _Refused("redirect", f"answered {status} (redirects are not followed)", status)
        if status != 200:
            raise _Refused("status", f"answered {status}, expected 200", status)
        return status


class _Watchdog:
    """Shuts the socket when the deadline passes, so no far end can stretch the check: a blocked
    read then returns at once, whatever was being read."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.fired = False
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        try:
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)  # the plain socket's, also under TLS
        except OSError:
            pass

    def cancel(self) -> None:
        self._timer.cancel()


class _CappedResponse(http.client.HTTPResponse):
    """http.client's response reader with caps on interim answers and header lines."""

    _interim = 0

    def _read_status(self) -> tuple[str, int, str]:
        version, status, reason = super()._read_status()  # type: ignore[misc]
        if status == http.client.CONTINUE:
            self._interim += 1
            if self._interim > MAX_INTERIM_ANSWERS:
                raise _Refused("connection_error", f"more than {MAX_INTERIM_ANSWERS} interim answers")
        return version, status, reason

    def begin(self) -> None:
        super().begin()
        if len(self.headers) > MAX_HEADER_LINES:
            raise _Refused("connection_error", f"more than {MAX_HEADER_LINES} header lines")


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    return remaining


def check_callback_url(url: str, policy: CallbackPolicy | None = None) -> CallbackCheck:
    """Check one URL under the given policy (default: from the environment)."""
    return CallbackChecker(policy).check(url)
