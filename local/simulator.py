"""A stateful simulator of the Vonage Account API, for tests and the local stack.

    python -m local.simulator --port 8700

Serves the paths of both API hosts (rest.nexmo.com and api.nexmo.com) from one process on loopback,
following the spec plus the real API's rules (docs/vonage-api-facts.md). `/_sim/...` is a control surface
for tests: state, fault injection and the log of requests received (never credentials).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ipaddress
import json
import re
import secrets
import socket
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_API_KEY = "abcd1234"
DEFAULT_API_SECRET = "Sim-Secret-0001"
DEFAULT_TRX = "8ef2447e69604f642ae59363aa5f781b"
DEFAULT_BALANCE = 25.0
DEFAULT_TOPUP_AMOUNT = 20.0
# The default account's first secret has the id of Vonage's own example, so events/ can name it.
DEFAULT_SECRET_ID = "ad6dc56f-07b5-46e1-a527-85530e625800"
MAX_SECRETS = 2

OPERATIONS: list[tuple[str, str, re.Pattern[str]]] = [
    ("GET", "getAccountBalance", re.compile(r"^/account/get-balance$")),
    ("POST", "topUpAccountBalance", re.compile(r"^/account/top-up$")),
    ("POST", "changeAccountSettings", re.compile(r"^/account/settings$")),
    ("POST", "registerSender", re.compile(r"^/account/register-sender$")),
    ("GET", "retrieveAPISecrets", re.compile(r"^/accounts/(?P<key>[^/]+)/secrets$")),
    ("POST", "createAPISecret", re.compile(r"^/accounts/(?P<key>[^/]+)/secrets$")),
    ("GET", "retrieveAPISecret", re.compile(r"^/accounts/(?P<key>[^/]+)/secrets/(?P<sid>[^/]+)$")),
    ("DELETE", "revokeAPISecret", re.compile(r"^/accounts/(?P<key>[^/]+)/secrets/(?P<sid>[^/]+)$")),
    # the Subaccounts API (same host, the primary's credentials)
    ("GET", "retrieveSubaccountsList", re.compile(r"^/accounts/(?P<key>[^/]+)/subaccounts$")),
    ("POST", "createSubAccount", re.compile(r"^/accounts/(?P<key>[^/]+)/subaccounts$")),
    ("GET", "retrieveSubaccount", re.compile(r"^/accounts/(?P<key>[^/]+)/subaccounts/(?P<sub>[^/]+)$")),
    ("PATCH", "modifySubaccount", re.compile(r"^/accounts/(?P<key>[^/]+)/subaccounts/(?P<sub>[^/]+)$")),
    ("GET", "retrieveBalanceTransfers", re.compile(r"^/accounts/(?P<key>[^/]+)/balance-transfers$")),
    ("POST", "transferBalance", re.compile(r"^/accounts/(?P<key>[^/]+)/balance-transfers$")),
]
SUBACCOUNT_OPERATIONS = {op for _, op, _ in OPERATIONS[8:]}

AUTH_FAILED = {"error-code": "401", "error-code-label": "authentication failed"}
NOT_AUTO_RELOAD = {"error-code": "401", "error-code-label": "not auto-reload enabled"}
TOPUP_FAILED = {"error-code": "420", "error-code-label": "topup failed"}


def _problem(kind: str, title: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": f"https://developer.nexmo.com/api-errors{kind}",
        "title": title,
        "detail": detail,
        "instance": uuid.uuid4().hex,
        **extra,
    }


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Secret:
    id: str
    value: str
    created_at: str


@dataclass
class Account:
    api_key: str
    secrets: list[Secret]
    balance: float
    auto_reload: bool
    trx: str
    parent: str | None = None
    mo_callback_url: str = ""
    dr_callback_url: str = ""
    payment_refused: bool = False
    latency: float = 0.0  # seconds before every answer to this account (a fleet's slow one)
    # the Subaccounts API: a subaccount's name, whether it spends the primary's balance, suspension,
    # credit (a negative limit it may spend down to); whether a primary is provisioned for the API
    name: str = ""
    use_primary_account_balance: bool = False
    suspended: bool = False
    credit_limit: float = 0.0
    created_at: str = field(default_factory=_now)
    subaccounts_enabled: bool = True

    def authenticates(self, secret: str) -> bool:
        return any(secrets.compare_digest(s.value, secret) for s in self.secrets)


@dataclass
class Fault:
    status: int | None = None
    latency: float = 0.0
    reset: bool = False
    body: str | None = None  # "malformed" | "xml" | "empty" | "trickle" | "huge"
    retry_after: int | None = None
    after: bool = False  # act first, then misbehave (the request took effect)
    times: int = 1
    skip: int = 0  # let this many matching calls through first
    problem: dict[str, Any] | None = None  # body to send with `status`
    api_key: str | None = None  # only requests made with this account's key (a fleet's one account)


@dataclass
class State:
    accounts: dict[str, Account] = field(default_factory=dict)
    faults: dict[str, list[Fault]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    topup_amount: float = DEFAULT_TOPUP_AMOUNT
    topup_lag: float = 0.0
    pending_credits: list[tuple[float, str, float]] = field(default_factory=list)
    callback_status: dict[str, int] = field(default_factory=dict)  # host -> status for non-loopback
    fetch_callbacks: bool = True  # really fetch loopback callback URLs (benchmarks turn it off)
    senders: list[dict[str, Any]] = field(default_factory=list)
    transfers: list[dict[str, Any]] = field(default_factory=list)  # balance transfers, oldest first
    lock: threading.RLock = field(default_factory=threading.RLock)

    def settle(self) -> None:
        """Credit top-ups whose lag has passed (Vonage's balance lags behind a top-up)."""
        now = time.monotonic()
        due = [p for p in self.pending_credits if p[0] <= now]
        self.pending_credits = [p for p in self.pending_credits if p[0] > now]
        for _, key, amount in due:
            if key in self.accounts:
                self.accounts[key].balance = round(self.accounts[key].balance + amount, 8)


def new_state(
    api_key: str = DEFAULT_API_KEY,
    api_secret: str = DEFAULT_API_SECRET,
    balance: float = DEFAULT_BALANCE,
    auto_reload: bool = True,
    trx: str = DEFAULT_TRX,
    topup_amount: float = DEFAULT_TOPUP_AMOUNT,
    topup_lag: float = 0.0,
) -> State:
    state = State(topup_amount=topup_amount, topup_lag=topup_lag)
    state.accounts[api_key] = Account(
        api_key=api_key,
        secrets=[Secret(DEFAULT_SECRET_ID if api_key == DEFAULT_API_KEY else str(uuid.uuid4()), api_secret, _now())],
        balance=balance,
        auto_reload=auto_reload,
        trx=trx,
    )
    return state


class SimulatorHandler(BaseHTTPRequestHandler):
    server: SimulatorServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body leave at once (no 40 ms delayed-ACK stalls)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        if self.server.verbose:
            # Only method and path (the query string may hold api_secret).
            print(
                f"simulator: {self.command} {urllib.parse.urlsplit(self.path).path} {args[1] if len(args) > 1 else ''}"
            )

    # -- plumbing -----------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(
        self, status: int, body: Any = None, *, xml_root: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        content_type = "application/json"
        if body is None:
            payload = b""
        elif isinstance(body, bytes):
            payload = body
        elif xml_root and self._wants_xml():
            payload = _to_xml(xml_root, body)
            content_type = "application/xml"
        else:
            payload = json.dumps(body).encode()
        self.send_response(status)
        if payload:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _wants_xml(self) -> bool:
        accept = self.headers.get("Accept", "")
        return "xml" in accept and "json" not in accept

    def _reset(self) -> None:
        # SO_LINGER 0 makes close() send an RST: the client sees a connection reset.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.close()

    def _dispatch(self) -> None:
        try:
            self._route()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a deadline, a test's fault)
            self.close_connection = True

    def _route(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path.startswith("/_sim/"):
            self._control(url.path, self._read_body())
            return
        body = self._read_body()
        for method, operation, pattern in OPERATIONS:
            match = pattern.match(url.path)
            if match and method == self.command:
                self._operation(operation, match.groupdict(), url.query, body)
                return
        if any(p.match(url.path) for _, _, p in OPERATIONS):
            self._send(
                405, _problem("#method-not-allowed", "Method Not Allowed", f"{self.command} is not allowed here")
            )
            return
        self._send(404, _problem("#not-found", "Not Found", "No such resource"))

    def _operation(self, operation: str, params: dict[str, str], query: str, body: bytes) -> None:
        state = self.server.state
        with state.lock:
            caller = (self._credentials(query) or ("", ""))[0]
            state.requests.append(
                {
                    "method": self.command,
                    "path": urllib.parse.urlsplit(self.path).path,
                    "operation": operation,
                    "api_key": caller,  # the account's identifier, never its secret
                    "time": time.time(),
                }
            )
            faults = state.faults.get(operation) or []
            fault = next((f for f in faults if f.api_key in (None, caller)), None)
            if fault and fault.skip > 0:
                fault.skip -= 1
                fault = None
            elif fault:
                fault.times -= 1
                if fault.times <= 0:
                    faults.remove(fault)
            account = state.accounts.get(caller)
            latency = account.latency if account else 0.0
        if latency:
            time.sleep(latency)
        if fault and not fault.after and self._misbehave(fault):
            return
        status, payload, root, headers = self._handle(operation, params, query, body)
        if fault and fault.after and self._misbehave(fault):
            return
        self._send(status, payload, xml_root=root, headers=headers)

    def _misbehave(self, fault: Fault) -> bool:
        """Apply a fault; True when it replaced the answer."""
        if fault.latency:
            time.sleep(fault.latency)
        if fault.reset:
            self._reset()
            return True
        if fault.body == "malformed":
            self._send(fault.status or 200, b'{"value": 12.5, "autoRel', headers={"Content-Type": "application/json"})
            return True
        if fault.body in ("trickle", "huge"):
            self._endless_body(fault.body)
            return True
        if fault.body == "xml":
            self._send(
                fault.status or 200,
                b"<html><body>Service unavailable</body></html>",
                headers={"Content-Type": "text/html"},
            )
            return True
        if fault.status:
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else None
            body = fault.problem or _problem("#fault", "Injected fault", f"HTTP {fault.status}")
            self._send(fault.status, body, headers=headers)
            return True
        return False

    def _endless_body(self, kind: str) -> None:
        """A body that never ends in time: one byte at a time, or 300 MB as fast as it goes (with no
        Content-Length, so only counting what arrives can stop it)."""
        size = 300 * 1024 * 1024 if kind == "huge" else 4096
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if kind == "trickle":
            self.send_header("Content-Length", str(size))
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        chunk, sent, until = (b" " * 65536 if kind == "huge" else b" "), 0, time.monotonic() + 30
        try:
            while sent < size and time.monotonic() < until:
                self.wfile.write(chunk)
                sent += len(chunk)
                if kind == "trickle":
                    self.wfile.flush()
                    time.sleep(0.05)
        except OSError:  # the client gave up, as it should
            return

    # -- the Account API -----------------------------------------------------------------------

    def _credentials(self, query: str) -> tuple[str, str] | None:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                key, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            return key, secret
        qs = urllib.parse.parse_qs(query)
        if "api_key" in qs and "api_secret" in qs:
            return qs["api_key"][0], qs["api_secret"][0]
        return None

    def _authenticated(self, query: str) -> Account | None:
        creds = self._credentials(query)
        if not creds:
            return None
        account = self.server.state.accounts.get(creds[0])
        return account if account and account.authenticates(creds[1]) else None

    def _handle(
        self, operation: str, params: dict[str, str], query: str, body: bytes
    ) -> tuple[int, Any, str | None, dict[str, str] | None]:
        state = self.server.state
        with state.lock:
            state.settle()
            account = self._authenticated(query)
            if operation == "getAccountBalance":
                if not account:
                    return 401, AUTH_FAILED, "accountBalance", None
                payer = self._payer(account)
                return 200, {"value": payer.balance, "autoReload": payer.auto_reload}, "accountBalance", None
            if operation == "topUpAccountBalance":
                return self._top_up(account, body)
            if operation == "registerSender":
                return self._register_sender(account, body)
            if operation in SUBACCOUNT_OPERATIONS:
                return self._subaccounts(operation, account, params, query, body)
            if operation.endswith(("Secret", "Secrets")):
                return self._secrets(operation, account, params, body)
        # Settings fetch callback URLs: done outside the lock, then applied under it.
        return self._settings(account, body)

    def _payer(self, account: Account) -> Account:
        """Whose balance an account spends: its primary's when it shares it."""
        parent = self.server.state.accounts.get(account.parent or "")
        return parent if parent is not None and account.use_primary_account_balance else account

    # -- the Subaccounts API -------------------------------------------------------------------

    def _subaccounts(
        self, operation: str, caller: Account | None, params: dict[str, str], query: str, body: bytes
    ) -> tuple[int, Any, str | None, dict[str, str] | None]:
        state = self.server.state
        if not caller:
            return (
                401,
                _problem("#unauthorized", "Invalid credentials supplied", "You did not provide correct credentials"),
                None,
                None,
            )
        key = params["key"]
        if key != caller.api_key:
            return (
                404,
                _problem(
                    "#invalid-api-key", "Invalid API Key", f"API key '{key}' does not exist, or you do not have access"
                ),
                None,
                None,
            )
        if caller.parent is not None or not caller.subaccounts_enabled:
            return (
                403,
                _problem(
                    "#unprovisioned",
                    "Authorisation error",
                    f"Account {key} is not provisioned to access Subaccount Provisioning API",
                ),
                None,
                None,
            )
        family = [a for a in state.accounts.values() if a.parent == key]
        if operation == "retrieveSubaccountsList":
            return (
                200,
                {
                    "_embedded": {
                        "primary_account": _subaccount_view(caller),
                        "subaccounts": [_subaccount_view(a) for a in family],
                    }
                },
                None,
                None,
            )
        if operation == "retrieveBalanceTransfers":
            return self._list_transfers(key, family, query)
        data = _json_object(body)
        if data is None:
            return 422, _invalid("body", "must be a JSON object"), None, None
        if operation == "createSubAccount":
            name = data.get("name")
            if not isinstance(name, str) or not 1 <= len(name) <= 80:
                return 422, _invalid("name", "Is required, at most 80 characters"), None, None
            shared = data.get("use_primary_account_balance", True)
            if not isinstance(shared, bool):
                return 422, _invalid("use_primary_account_balance", "Should be either 'true' or 'false'"), None, None
            secret = data.get("secret") if data.get("secret") is not None else "Sub" + secrets.token_hex(6) + "A1"
            if _secret_rule_problem(secret):
                return 422, _invalid("secret", str(_secret_rule_problem(secret))), None, None
            created = Account(
                api_key=secrets.token_hex(4),
                secrets=[Secret(str(uuid.uuid4()), str(secret), _now())],
                balance=0.0,
                auto_reload=False,
                trx="",
                parent=key,
                name=name,
                use_primary_account_balance=shared,
            )
            state.accounts[created.api_key] = created
            return 200, {**_subaccount_view(created), "secret": secret}, None, None
        if operation in ("retrieveSubaccount", "modifySubaccount"):
            sub = next((a for a in family if a.api_key == params["sub"]), None)
            if sub is None:
                return (
                    404,
                    _problem(
                        "#invalid-api-key",
                        "Invalid API Key",
                        f"API key '{params['sub']}' does not exist, or you do not have access",
                    ),
                    None,
                    None,
                )
            if operation == "modifySubaccount":
                for name, kind in (("suspended", bool), ("use_primary_account_balance", bool), ("name", str)):
                    if name in data and not isinstance(data[name], kind):
                        return 422, _invalid(name, f"must be a {kind.__name__}"), None, None
                if data.get("use_primary_account_balance") is True and not sub.use_primary_account_balance:
                    return (
                        422,
                        _invalid("use_primary_account_balance", "A subaccount cannot go back to the primary's balance"),
                        None,
                        None,
                    )
                for name in ("suspended", "use_primary_account_balance", "name"):
                    if name in data:
                        setattr(sub, name, data[name])
            return 200, _subaccount_view(sub), None, None
        return self._transfer(caller, family, data)

    def _transfer(
        self, primary: Account, family: list[Account], data: dict[str, Any]
    ) -> tuple[int, Any, str | None, dict[str, str] | None]:
        state = self.server.state
        members = {a.api_key: a for a in [primary, *family]}
        source, target = members.get(str(data.get("from"))), members.get(str(data.get("to")))
        amount = data.get("amount")
        for name, account in (("from", source), ("to", target)):
            if account is None:
                return 422, _invalid(name, "must be the primary account or one of its subaccounts"), None, None
        assert source is not None and target is not None
        if source is target or primary not in (source, target):
            return (
                422,
                _invalid("to", "a transfer is between the primary account and one of its subaccounts"),
                None,
                None,
            )
        if isinstance(amount, bool) or not isinstance(amount, int | float) or not 0 < amount <= 1_000_000:
            return 422, _invalid("amount", "must be a positive number"), None, None
        for name, account in (("from", source), ("to", target)):
            if account.use_primary_account_balance:
                return 422, _invalid(name, "the subaccount uses the primary account's balance"), None, None
            if account.suspended:
                return 422, _invalid(name, "the subaccount is suspended"), None, None
        if amount > max(0.0, source.balance - min(0.0, source.credit_limit)):
            return 422, _invalid("amount", "exceeds the balance available for transfer"), None, None
        source.balance = round(source.balance - amount, 8)
        target.balance = round(target.balance + amount, 8)
        transfer = {
            "balance_transfer_id": str(uuid.uuid4()),
            "amount": amount,
            "from": source.api_key,
            "to": target.api_key,
            "reference": str(data.get("reference") or ""),
            "created_at": _now(),
        }
        state.transfers.append(transfer)
        return 200, transfer, None, None

    def _list_transfers(
        self, key: str, family: list[Account], query: str
    ) -> tuple[int, Any, str | None, dict[str, str] | None]:
        qs = urllib.parse.parse_qs(query)
        try:
            start = _parse_time(qs["start_date"][0])
            end = _parse_time(qs["end_date"][0]) if "end_date" in qs else None
        except (KeyError, ValueError):
            return 422, _invalid("start_date", "Is required, an ISO 8601 time"), None, None
        members = {key, *(a.api_key for a in family)}
        wanted = set(qs.get("subaccount", []))
        found = [
            t
            for t in self.server.state.transfers
            if {t["from"], t["to"]} <= members
            and start <= _parse_time(t["created_at"])
            and (end is None or _parse_time(t["created_at"]) <= end)
            and (not wanted or t["from"] in wanted or t["to"] in wanted)
        ]
        return 200, {"_embedded": {"balance_transfers": found}}, None, None

    def _top_up(self, account: Account | None, body: bytes) -> tuple[int, Any, str | None, dict[str, str] | None]:
        state = self.server.state
        if not account:
            return 401, AUTH_FAILED, "response", None
        if not account.auto_reload:
            return 401, NOT_AUTO_RELOAD, "response", None
        trx = urllib.parse.parse_qs(body.decode(errors="replace")).get("trx", [""])[0]
        if not secrets.compare_digest(trx, account.trx) or account.payment_refused:
            return 401, TOPUP_FAILED, "response", None
        state.pending_credits.append((time.monotonic() + state.topup_lag, account.api_key, state.topup_amount))
        state.settle()
        return 200, {"error-code": "200", "error-code-label": "success"}, "response", None

    def _settings(self, account: Account | None, body: bytes) -> tuple[int, Any, str | None, dict[str, str] | None]:
        if not account:
            return 401, AUTH_FAILED, "account-settings", None
        form = urllib.parse.parse_qs(body.decode(errors="replace"), keep_blank_values=True)
        fields = {"moCallBackUrl": "mo_callback_url", "drCallBackUrl": "dr_callback_url"}
        changes = {attr: form[wire][0] for wire, attr in fields.items() if wire in form}
        to_fetch = {wire: form[wire][0] for wire in fields if wire in form and form[wire][0]}
        with ThreadPoolExecutor(max_workers=2) as pool:  # both URLs at once, like a real fetcher
            problems = dict(zip(to_fetch, pool.map(self._callback_problem, to_fetch.values()), strict=True))
        for wire, problem in problems.items():
            if problem:
                return 400, {"error-code": "400", "error-code-label": f"{wire}: {problem}"}, "account-settings", None
        with self.server.state.lock:
            for attr, value in changes.items():
                setattr(account, attr, value)
            return (
                200,
                {
                    "mo-callback-url": account.mo_callback_url,
                    "dr-callback-url": account.dr_callback_url,
                    "max-outbound-request": 30,
                    "max-inbound-request": 30,
                    "max-calls-per-second": 30,
                },
                "account-settings",
                None,
            )

    def _callback_problem(self, url: str) -> str | None:
        """Like Vonage: the URL must answer 200. Only loopback URLs are really fetched; any other
        host answers what /_sim/callbacks says (200 by default), so nothing leaves the machine."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return "not a valid URL"
        host = parts.hostname
        if not _is_loopback(host) or not self.server.state.fetch_callbacks:
            status = self.server.state.callback_status.get(host, 200)
            return None if status == 200 else f"callback URL answered {status}, expected 200"
        try:
            with _LOOPBACK_OPENER.open(urllib.request.Request(url, method="GET"), timeout=3) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (OSError, ValueError):
            return "callback URL did not answer"
        return None if status == 200 else f"callback URL answered {status}, expected 200"

    def _register_sender(
        self, account: Account | None, body: bytes
    ) -> tuple[int, Any, str | None, dict[str, str] | None]:
        if not account:
            return (
                401,
                _problem("#unauthorized", "Unauthorized", "You did not provide correct credentials."),
                None,
                None,
            )
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            data = None
        invalid = []
        if not isinstance(data, dict):
            invalid.append({"name": "body", "reason": "must be a JSON object"})
            data = {}
        if data.get("provider") != "email":
            invalid.append({"name": "provider", "reason": "must be 'email'"})
        if not isinstance(data.get("value"), str) or "@" not in data.get("value", ""):
            invalid.append({"name": "value", "reason": "must be an email address"})
        ids = data.get("application_ids", [])
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            invalid.append({"name": "application_ids", "reason": "must be an array of strings"})
        if invalid:
            return (
                400,
                _problem("#validation", "Bad Request", "The request failed validation", invalid_parameters=invalid),
                None,
                None,
            )
        record = {"value": data["value"], "provider": "email", "application_ids": ids}
        if isinstance(data.get("name"), str):
            record["name"] = data["name"]
        self.server.state.senders.append(record)
        return 200, record, None, None

    def _secrets(
        self, operation: str, caller: Account | None, params: dict[str, str], body: bytes
    ) -> tuple[int, Any, str | None, dict[str, str] | None]:
        if not caller:
            return (
                401,
                _problem("#unauthorized", "Unauthorized", "You did not provide correct credentials."),
                None,
                None,
            )
        key = params["key"]
        target = self.server.state.accounts.get(key)
        if target is None:
            return 404, _problem("#invalid-api-key", "Invalid API Key", f"API key '{key}' not found"), None, None
        if target is not caller and target.parent != caller.api_key:
            return (
                403,
                _problem("#forbidden", "Forbidden", "You may only manage your own or your subaccounts' secrets"),
                None,
                None,
            )

        def info(secret: Secret) -> dict[str, Any]:
            return {
                "_links": {"self": {"href": f"/accounts/{key}/secrets/{secret.id}"}},
                "id": secret.id,
                "created_at": secret.created_at,
            }

        if operation == "retrieveAPISecrets":
            return (
                200,
                {
                    "_links": {"self": {"href": f"/accounts/{key}/secrets"}},
                    "_embedded": {"secrets": [info(s) for s in target.secrets]},
                },
                None,
                None,
            )
        if operation == "createAPISecret":
            try:
                value = json.loads(body or b"{}").get("secret")
            except (ValueError, AttributeError):
                value = None
            reason = _secret_rule_problem(value)
            if reason:
                return (
                    400,
                    _problem(
                        "/account/secret-management#validation",
                        "Bad Request",
                        "The request failed due to secret validation errors",
                        invalid_parameters=[{"name": "secret", "reason": reason}],
                    ),
                    None,
                    None,
                )
            if len(target.secrets) >= MAX_SECRETS:
                return (
                    403,
                    _problem(
                        "/account/secret-management#add-excess-secret",
                        "Maxmimum number of secrets already met",
                        f"Account reached maximum number [{MAX_SECRETS}] of allowed secrets",
                    ),
                    None,
                    None,
                )
            secret = Secret(str(uuid.uuid4()), str(value), _now())
            target.secrets.append(secret)
            return 201, info(secret), None, None
        sid = params["sid"]
        found = next((s for s in target.secrets if s.id == sid), None)
        if found is None:
            return 404, _problem("#invalid-id", "Invalid ID", f"ID '{sid}' could not be found"), None, None
        if operation == "retrieveAPISecret":
            return 200, info(found), None, None
        if len(target.secrets) == 1:
            return (
                403,
                _problem(
                    "/account/secret-management#delete-last-secret",
                    "Secret Deletion Forbidden",
                    "Can not delete the last secret. The account must always have at least 1 secret active at any time",
                ),
                None,
                None,
            )
        target.secrets.remove(found)
        return 204, None, None, None

    # -- control surface -----------------------------------------------------------------------

    def _control(self, path: str, body: bytes) -> None:
        state = self.server.state
        try:
            data = json.loads(body) if body else {}
        except ValueError:
            self._send(400, {"error": "body must be JSON"})
            return
        with state.lock:
            state.settle()
            if path == "/_sim/requests":
                if self.command == "DELETE":
                    state.requests.clear()
                self._send(200, {"requests": list(state.requests)})
            elif path == "/_sim/state" and self.command == "GET":
                self._send(200, _public_state(state))
            elif path == "/_sim/state":
                account = state.accounts[data.get("api_key") or next(iter(state.accounts))]
                for name in (
                    "balance",
                    "auto_reload",
                    "payment_refused",
                    "trx",
                    "latency",
                    "suspended",
                    "use_primary_account_balance",
                    "credit_limit",
                    "subaccounts_enabled",
                    "name",
                ):
                    if name in data:
                        setattr(account, name, data[name])
                for name in ("topup_amount", "topup_lag"):
                    if name in data:
                        setattr(state, name, float(data[name]))
                if "fetch_callbacks" in data:
                    state.fetch_callbacks = bool(data["fetch_callbacks"])
                if data.get("drop_pending"):
                    state.pending_credits.clear()
                self._send(200, _public_state(state))
            elif path == "/_sim/faults" and self.command == "DELETE":
                state.faults.clear()
                self._send(200, {"faults": {}})
            elif path == "/_sim/faults":
                operation = data.pop("operation")
                state.faults.setdefault(operation, []).append(Fault(**data))
                self._send(200, {"faults": {k: len(v) for k, v in state.faults.items()}})
            elif path == "/_sim/callbacks":
                state.callback_status.update({str(k): int(v) for k, v in data.items()})
                self._send(200, {"callbacks": state.callback_status})
            elif path == "/_sim/accounts":
                # Another account of the fleet: its own key, secret, balance, settings and latency.
                if data.get("api_key") in state.accounts:
                    self._send(409, {"error": f"account {data.get('api_key')} exists"})
                    return
                account = Account(
                    api_key=data["api_key"],
                    secrets=[Secret(str(uuid.uuid4()), data["api_secret"], _now())],
                    balance=float(data.get("balance", DEFAULT_BALANCE)),
                    auto_reload=bool(data.get("auto_reload", True)),
                    trx=str(data.get("trx", DEFAULT_TRX)),
                    latency=float(data.get("latency", 0.0)),
                )
                state.accounts[account.api_key] = account
                self._send(201, {"api_key": account.api_key, "secret_id": account.secrets[0].id})
            elif path == "/_sim/subaccounts":
                # A subaccount of `parent` (default: the first account): its own balance unless it
                # shares the primary's (`balance` null or `use_primary_account_balance`).
                shared = bool(data.get("use_primary_account_balance", data.get("balance", 0.0) is None))
                sub = add_subaccount(
                    state,
                    data.get("parent") or next(iter(state.accounts)),
                    data["api_key"],
                    data["api_secret"],
                    balance=float(data.get("balance") or 0.0),
                    shared=shared,
                    suspended=bool(data.get("suspended", False)),
                    credit_limit=float(data.get("credit_limit", 0.0)),
                    name=str(data.get("name") or ""),
                )
                self._send(201, {"api_key": sub.api_key, "secret_id": sub.secrets[0].id})
            elif path == "/_sim/secrets":
                # Test-only: add a secret behind the API's back (e.g. an unknown second secret).
                account = state.accounts[data.get("api_key") or next(iter(state.accounts))]
                secret = Secret(str(uuid.uuid4()), data["secret"], _now())
                account.secrets.append(secret)
                self._send(201, {"id": secret.id})
            else:
                self._send(404, {"error": f"no control endpoint {path}"})


def add_subaccount(
    state: State,
    parent: str,
    api_key: str,
    api_secret: str,
    *,
    balance: float = 0.0,
    shared: bool = False,
    suspended: bool = False,
    credit_limit: float = 0.0,
    name: str = "",
) -> Account:
    """A subaccount of `parent` (the control surface's and the benchmark's way to make many)."""
    sub = Account(
        api_key=api_key,
        secrets=[Secret(str(uuid.uuid4()), api_secret, _now())],
        balance=0.0 if shared else balance,
        auto_reload=False,
        trx="",
        parent=parent,
        name=name or f"subaccount {api_key}",
        use_primary_account_balance=shared,
        suspended=suspended,
        credit_limit=0.0 if shared else credit_limit,
    )
    state.accounts[api_key] = sub
    return sub


def _subaccount_view(account: Account) -> dict[str, Any]:
    """An account as the Subaccounts API shows it; a shared balance is null."""
    shared = account.use_primary_account_balance
    return {
        "api_key": account.api_key,
        "name": account.name,
        "primary_account_api_key": account.parent or account.api_key,
        "use_primary_account_balance": shared,
        "created_at": account.created_at,
        "suspended": account.suspended,
        "balance": None if shared else account.balance,
        "credit_limit": None if shared else account.credit_limit,
    }


def _invalid(name: str, reason: str) -> dict[str, Any]:
    return _problem(
        "/subaccounts#validation",
        "Bad Request",
        "The request failed due to validation errors",
        invalid_parameters=[{"name": name, "reason": reason}],
    )


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _public_state(state: State) -> dict[str, Any]:
    """The state without secret values (ids only)."""
    return {
        "accounts": {
            key: {
                "balance": a.balance,
                "auto_reload": a.auto_reload,
                "secret_ids": [s.id for s in a.secrets],
                "parent": a.parent,
                "mo_callback_url": a.mo_callback_url,
                "dr_callback_url": a.dr_callback_url,
                "latency": a.latency,
                "suspended": a.suspended,
                "use_primary_account_balance": a.use_primary_account_balance,
                "credit_limit": a.credit_limit,
                "subaccounts_enabled": a.subaccounts_enabled,
            }
            for key, a in state.accounts.items()
        },
        "transfers": list(state.transfers),
        "pending_topups": len(state.pending_credits),
        "topup_amount": state.topup_amount,
        "topup_lag": state.topup_lag,
        "senders": list(state.senders),
    }


def _secret_rule_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return "Is required"
    if not 8 <= len(value) <= 25:
        return "Must be between 8 and 25 characters"
    if not (any(c.islower() for c in value) and any(c.isupper() for c in value) and any(c.isdigit() for c in value)):
        return "Does not meet complexity requirements"
    return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_LOOPBACK_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def _to_xml(root: str, body: dict[str, Any]) -> bytes:
    from xml.sax.saxutils import escape

    items = "".join(f"<{k}>{escape(str(v).lower() if isinstance(v, bool) else str(v))}</{k}>" for k, v in body.items())
    return f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><{root}>{items}</{root}>'.encode()


class SimulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: State, verbose: bool = False) -> None:
        super().__init__(address, SimulatorHandler)
        self.state = state
        self.verbose = verbose

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


def start(state: State | None = None, host: str = "127.0.0.1", port: int = 0, verbose: bool = False) -> SimulatorServer:
    """Start a simulator in a background thread; stop it with `server.shutdown()`."""
    server = SimulatorServer((host, port), state or new_state(), verbose=verbose)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="vonage-simulator", daemon=True
    ).start()
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m local.simulator", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8700)
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--api-secret", default=DEFAULT_API_SECRET)
    parser.add_argument("--balance", type=float, default=DEFAULT_BALANCE)
    parser.add_argument("--auto-reload", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--trx", default=DEFAULT_TRX)
    parser.add_argument("--topup-amount", type=float, default=DEFAULT_TOPUP_AMOUNT)
    parser.add_argument("--topup-lag", type=float, default=0.0, help="seconds before a top-up shows in the balance")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    state = new_state(
        args.api_key, args.api_secret, args.balance, args.auto_reload, args.trx, args.topup_amount, args.topup_lag
    )
    server = SimulatorServer((args.host, args.port), state, verbose=not args.quiet)
    print(
        f"Vonage Account API simulator on {server.url}\n"
        f"  account: api_key={args.api_key} api_secret={args.api_secret} (simulator-only values)\n"
        f"  balance={args.balance} auto_reload={args.auto_reload} trx={args.trx}\n"
        f"  top-up adds {args.topup_amount} after {args.topup_lag}s; control surface under {server.url}/_sim/",
        flush=True,
    )
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    server.server_close()


if __name__ == "__main__":
    main()
