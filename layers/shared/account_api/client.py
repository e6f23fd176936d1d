"""A typed client for the eight operations of the Vonage Account API.

Also the Subaccounts API's operations (docs/subaccounts.md), with the same deadlines, errors and
redaction: a primary's credentials list its subaccounts and move money to them.

Design points (docs/client.md; the real API's undocumented rules: docs/vonage-api-facts.md):
- HTTP Basic auth on every operation, so the secret never sits in a URL (nor in access logs).
- Every call has connect and read timeouts and one overall deadline, retries included.
- Answers are read under the same deadline, through the last byte, and capped in size (the
  Account API's answers are a few hundred bytes; anything past MAX_ANSWER_BYTES is refused).
- Only GETs are retried (connection errors, 429 with a short Retry-After, 5xx), with capped
  exponential backoff and full jitter. POSTs, PATCHes and DELETEs are sent once: a top-up or a
  balance transfer must never be re-sent by a transport layer.
"""

from __future__ import annotations

import random
import re
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import requests
from pydantic import BaseModel, SecretStr, ValidationError
from requests.adapters import HTTPAdapter
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import NewConnectionError, ReadTimeoutError

from . import deadline as invocation
from . import errors
from .config import Timeouts
from .models import (
    AccountSettings,
    Balance,
    BalanceTransfer,
    SecretInfo,
    SenderRegistration,
    Subaccount,
    SubaccountCreated,
    SubaccountListing,
    TopUpResult,
)
from .wire import error_for, parse_body, sanitized

REST_BASE_URL = "https://rest.nexmo.com"
API_BASE_URL = "https://api.nexmo.com"
USER_AGENT = "account-ops/1.0 (+python-requests)"

SECRET_MIN_LENGTH = 8
SECRET_MAX_LENGTH = 25
MAX_URL_LENGTH = 2048
MAX_ANSWER_BYTES = 256 * 1024
# The Subaccounts API lists every subaccount (and every transfer of a window) in one unpaged answer:
# about 250 bytes each, so a primary with thousands of subaccounts answers megabytes.
MAX_LISTING_BYTES = 16 * 1024 * 1024
MAX_TRANSFER_EUR = 100_000.0
_PATH_SEGMENT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
EMAIL_PATTERN = r"^[^@\s<>\"']{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
_EMAIL = re.compile(EMAIL_PATTERN)
_URL = re.compile(r"^https?://[^\s/?#@\\]+(?:[/?#][^\s\\]*)?$", re.IGNORECASE)

ModelT = TypeVar("ModelT", bound=BaseModel)


@dataclass(frozen=True)
class ClientOptions:
    """Deadlines and retry policy. The defaults keep a whole call, retries included, well inside
    API Gateway's 29 s integration timeout."""

    connect_timeout: float = 3.05
    read_timeout: float = 5.0
    total_deadline: float = 20.0
    max_attempts: int = 3
    backoff_base: float = 0.2
    backoff_cap: float = 2.0
    max_retry_after: float = 5.0

    @classmethod
    def from_timeouts(cls, timeouts: Timeouts) -> ClientOptions:
        return cls(
            connect_timeout=timeouts.vonage_connect_timeout,
            read_timeout=timeouts.vonage_read_timeout,
            total_deadline=timeouts.vonage_deadline,
        )


def secret_rule_violation(secret: str) -> str | None:
    """Why a new API secret breaks Vonage's rules, or None when it meets them."""
    if not SECRET_MIN_LENGTH <= len(secret) <= SECRET_MAX_LENGTH:
        return f"must be {SECRET_MIN_LENGTH}-{SECRET_MAX_LENGTH} characters long"
    if not any(c.islower() for c in secret):
        return "must contain a lower case letter"
    if not any(c.isupper() for c in secret):
        return "must contain an upper case letter"
    if not any(c.isdigit() for c in secret):
        return "must contain a digit"
    return None


def callback_url_violation(url: str) -> str | None:
    """Why a callback URL is not acceptable to send, or None. An empty string (unset) is fine."""
    if url == "":
        return None
    if len(url) > MAX_URL_LENGTH:
        return f"must be at most {MAX_URL_LENGTH} characters"
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url) or not _URL.match(url):
        return "must be an absolute http(s) URL"
    return None


class AccountClient:
    """Client for the Vonage Account API. One instance per credential; safe to reuse across warm
    Lambda invocations (it keeps one HTTP connection pool)."""

    def __init__(
        self,
        *,
        api_key: str,
        api_secret: str | SecretStr,
        rest_base_url: str = REST_BASE_URL,
        api_base_url: str = API_BASE_URL,
        options: ClientOptions | None = None,
        session: requests.Session | None = None,
    ) -> None:
        if not api_key:
            raise errors.InvalidInputError("api_key", "must not be empty")
        self.api_key = api_key
        self._secret = api_secret if isinstance(api_secret, SecretStr) else SecretStr(api_secret)
        self.rest_base_url = rest_base_url.rstrip("/")
        self.api_base_url = api_base_url.rstrip("/")
        self.options = options or ClientOptions()
        self._session = session or _new_session()

    def __repr__(self) -> str:
        return f"AccountClient(api_key={self.api_key!r}, api_secret='**********')"

    def close(self) -> None:
        self._session.close()

    # -- the eight operations -------------------------------------------------------------------

    def get_account_balance(self) -> Balance:
        body = self._call("getAccountBalance", "GET", self.rest_base_url + "/account/get-balance")
        return self._model("getAccountBalance", Balance, body)

    def top_up_account_balance(self, trx: str | SecretStr) -> TopUpResult:
        """Send one top-up. Never retried: on a timeout or 5xx the outcome is unknown, and the
        caller decides (see `errors.outcome_unknown`)."""
        value = trx.get_secret_value() if isinstance(trx, SecretStr) else trx
        if not value or len(value) > 256 or not value.isprintable() or value.strip() != value:
            raise errors.InvalidInputError(
                "trx", "must be a non-empty printable reference", operation="topUpAccountBalance"
            )
        body = self._call("topUpAccountBalance", "POST", self.rest_base_url + "/account/top-up", form={"trx": value})
        return self._model("topUpAccountBalance", TopUpResult, body)

    def change_account_settings(
        self, mo_callback_url: str | None = None, dr_callback_url: str | None = None
    ) -> AccountSettings:
        """Change the default callback URLs; with no argument, read the current settings.
        An empty string unsets a URL."""
        form: dict[str, str] = {}
        for field, wire_name, value in (
            ("mo_callback_url", "moCallBackUrl", mo_callback_url),
            ("dr_callback_url", "drCallBackUrl", dr_callback_url),
        ):
            if value is None:
                continue
            violation = callback_url_violation(value)
            if violation:
                raise errors.InvalidInputError(field, violation, operation="changeAccountSettings")
            form[wire_name] = value
        body = self._call("changeAccountSettings", "POST", self.rest_base_url + "/account/settings", form=form)
        return self._model("changeAccountSettings", AccountSettings, body)

    def register_sender(
        self, value: str, name: str | None = None, application_ids: list[str] | None = None
    ) -> SenderRegistration:
        operation = "registerSender"
        if not isinstance(value, str) or not _EMAIL.match(value) or len(value) > 254:
            raise errors.InvalidInputError("value", "must be an email address", operation=operation)
        payload: dict[str, Any] = {"provider": "email", "value": value}
        if name is not None:
            if not name or len(name) > 256:
                raise errors.InvalidInputError("name", "must be 1-256 characters", operation=operation)
            payload["name"] = name
        if application_ids is not None:
            if not all(isinstance(i, str) and _PATH_SEGMENT.match(i) for i in application_ids):
                raise errors.InvalidInputError(
                    "application_ids", "must be a list of application ids", operation=operation
                )
            payload["application_ids"] = list(application_ids)
        body = self._call(operation, "POST", self.rest_base_url + "/account/register-sender", json_body=payload)
        return self._model(operation, SenderRegistration, body)

    def retrieve_api_secrets(self, api_key: str | None = None) -> list[SecretInfo]:
        operation = "retrieveAPISecrets"
        body = self._call(operation, "GET", self._secrets_url(operation, api_key))
        embedded = body.get("_embedded")
        items = embedded.get("secrets") if isinstance(embedded, dict) else None
        if not isinstance(items, list):
            raise errors.UnreadableResponseError(
                f"{operation}: answer has no _embedded.secrets list", operation=operation, status=200
            )
        return [self._model(operation, SecretInfo, item) for item in items]

    def create_api_secret(self, secret: str | SecretStr, api_key: str | None = None) -> SecretInfo:
        operation = "createAPISecret"
        value = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
        violation = secret_rule_violation(value)
        if violation:
            raise errors.InvalidInputError("secret", violation, operation=operation)
        body = self._call(operation, "POST", self._secrets_url(operation, api_key), json_body={"secret": value})
        return self._model(operation, SecretInfo, body)

    def retrieve_api_secret(self, secret_id: str, api_key: str | None = None) -> SecretInfo:
        operation = "retrieveAPISecret"
        url = self._secrets_url(operation, api_key, secret_id)
        return self._model(operation, SecretInfo, self._call(operation, "GET", url))

    def revoke_api_secret(self, secret_id: str, api_key: str | None = None) -> None:
        operation = "revokeAPISecret"
        self._call(operation, "DELETE", self._secrets_url(operation, api_key, secret_id))

    # -- the Subaccounts API (https://api.nexmo.com/accounts, the primary's credentials) --------

    def list_subaccounts(self) -> SubaccountListing:
        """The primary and all its subaccounts with their balances: one call, however many."""
        operation = "retrieveSubaccountsList"
        body = self._call(operation, "GET", self._subaccounts_url(operation), max_bytes=MAX_LISTING_BYTES)
        embedded = body.get("_embedded")
        primary = embedded.get("primary_account") if isinstance(embedded, dict) else None
        items = embedded.get("subaccounts") if isinstance(embedded, dict) else None
        if not isinstance(primary, dict) or not isinstance(items, list):
            raise errors.UnreadableResponseError(
                f"{operation}: answer has no _embedded.primary_account and subaccounts list",
                operation=operation,
                status=200,
            )
        return SubaccountListing(
            primary=self._model(operation, Subaccount, primary),
            subaccounts=[self._model(operation, Subaccount, item) for item in items],
        )

    def get_subaccount(self, subaccount_key: str) -> Subaccount:
        operation = "retrieveSubaccount"
        url = self._subaccounts_url(operation, subaccount_key)
        return self._model(operation, Subaccount, self._call(operation, "GET", url))

    def create_subaccount(
        self, name: str, *, secret: str | SecretStr | None = None, use_primary_account_balance: bool = True
    ) -> SubaccountCreated:
        """Sent once (a retry could create a second subaccount)."""
        operation = "createSubAccount"
        if not name or len(name) > 80 or not name.isprintable():
            raise errors.InvalidInputError("name", "must be 1-80 printable characters", operation=operation)
        payload: dict[str, Any] = {"name": name, "use_primary_account_balance": use_primary_account_balance}
        if secret is not None:
            value = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
            violation = secret_rule_violation(value)
            if violation:
                raise errors.InvalidInputError("secret", violation, operation=operation)
            payload["secret"] = value
        body = self._call(operation, "POST", self._subaccounts_url(operation), json_body=payload)
        return self._model(operation, SubaccountCreated, body)

    def modify_subaccount(
        self,
        subaccount_key: str,
        *,
        suspended: bool | None = None,
        use_primary_account_balance: bool | None = None,
        name: str | None = None,
    ) -> Subaccount:
        operation = "modifySubaccount"
        payload: dict[str, Any] = {
            k: v
            for k, v in (
                ("suspended", suspended),
                ("use_primary_account_balance", use_primary_account_balance),
                ("name", name),
            )
            if v is not None
        }
        if not payload:
            raise errors.InvalidInputError("body", "name at least one property to change", operation=operation)
        if name is not None and (not name or len(name) > 80 or not name.isprintable()):
            raise errors.InvalidInputError("name", "must be 1-80 printable characters", operation=operation)
        url = self._subaccounts_url(operation, subaccount_key)
        return self._model(operation, Subaccount, self._call(operation, "PATCH", url, json_body=payload))

    def transfer_balance(
        self, to: str, amount: float, reference: str, *, from_account: str | None = None
    ) -> BalanceTransfer:
        """Move money from the primary (or `from_account`) to a subaccount. Sent once, never retried:
        after a timeout, 5xx or reset the outcome is unknown, and `reference` is how the caller finds
        out (list_balance_transfers shows it)."""
        operation = "transferBalance"
        source = from_account or self.api_key
        for field, key in (("to", to), ("from", source)):
            if not _PATH_SEGMENT.match(key):
                raise errors.InvalidInputError(field, "must be letters, digits, '-' or '_'", operation=operation)
        if not (isinstance(amount, int | float) and 0 < amount <= MAX_TRANSFER_EUR) or amount != round(amount, 2):
            raise errors.InvalidInputError(
                "amount", f"must be more than 0 and at most {MAX_TRANSFER_EUR:.0f}, in cents", operation=operation
            )
        if not reference or len(reference) > 100 or not reference.isprintable():
            raise errors.InvalidInputError("reference", "must be 1-100 printable characters", operation=operation)
        payload = {"from": source, "to": to, "amount": amount, "reference": reference}
        body = self._call(operation, "POST", self._transfers_url(operation), json_body=payload)
        return self._model(operation, BalanceTransfer, body)

    def list_balance_transfers(
        self, start: datetime, end: datetime | None = None, *, subaccount: str | None = None
    ) -> list[BalanceTransfer]:
        """The balance transfers of a window (to now when `end` is None), each with its reference."""
        operation = "retrieveBalanceTransfers"
        params = {"start_date": _iso(start)}
        if end is not None:
            params["end_date"] = _iso(end)
        if subaccount is not None:
            if not _PATH_SEGMENT.match(subaccount):
                raise errors.InvalidInputError("subaccount", "must be letters, digits, '-' or '_'", operation=operation)
            params["subaccount"] = subaccount
        body = self._call(operation, "GET", self._transfers_url(operation), params=params, max_bytes=MAX_LISTING_BYTES)
        embedded = body.get("_embedded")
        items = embedded.get("balance_transfers") if isinstance(embedded, dict) else None
        if not isinstance(items, list):
            raise errors.UnreadableResponseError(
                f"{operation}: answer has no _embedded.balance_transfers list", operation=operation, status=200
            )
        return [self._model(operation, BalanceTransfer, item) for item in items]

    # -- plumbing ------------------------------------------------------------------------------

    def _subaccounts_url(self, operation: str, subaccount_key: str | None = None) -> str:
        url = f"{self._account_url(operation, self.api_key)}/subaccounts"
        if subaccount_key is not None:
            if not _PATH_SEGMENT.match(subaccount_key):
                raise errors.InvalidInputError(
                    "subaccount_key", "must be letters, digits, '-' or '_'", operation=operation
                )
            url += f"/{subaccount_key}"
        return url

    def _transfers_url(self, operation: str) -> str:
        return f"{self._account_url(operation, self.api_key)}/balance-transfers"

    def _account_url(self, operation: str, key: str) -> str:
        if not _PATH_SEGMENT.match(key):
            raise errors.InvalidInputError("api_key", "must be letters, digits, '-' or '_'", operation=operation)
        return f"{self.api_base_url}/accounts/{key}"

    def _secrets_url(self, operation: str, api_key: str | None, secret_id: str | None = None) -> str:
        url = f"{self._account_url(operation, api_key or self.api_key)}/secrets"
        if secret_id is not None:
            if not _PATH_SEGMENT.match(secret_id):
                raise errors.InvalidInputError("secret_id", "must be letters, digits, '-' or '_'", operation=operation)
            url += f"/{secret_id}"
        return url

    def _model(self, operation: str, model: type[ModelT], body: dict[str, Any]) -> ModelT:
        try:
            return model.model_validate(body)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors(include_input=False)
            )
            unreadable = errors.UnreadableResponseError(
                f"{operation}: unexpected answer ({problems})", operation=operation, status=200, body=body
            )
            raise sanitized(unreadable, [self._secret.get_secret_value()]) from None

    def _call(
        self,
        operation: str,
        method: str,
        url: str,
        *,
        form: dict[str, str] | None = None,
        json_body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        max_bytes: int = MAX_ANSWER_BYTES,
    ) -> dict[str, Any]:
        opts = self.options
        retryable = method == "GET"
        deadline = invocation.bound(opts.total_deadline)  # the invocation's deadline may come first
        attempt = 0
        while True:
            attempt += 1
            error = self._attempt(operation, method, url, form, json_body, deadline, params, max_bytes)
            if isinstance(error, dict):
                return error
            if not retryable or attempt >= opts.max_attempts or not _is_retryable(error):
                raise sanitized(error, self._sent_values(form, json_body))
            delay = self._delay(attempt, error)
            if delay is None or time.monotonic() + delay >= deadline:
                raise sanitized(error, self._sent_values(form, json_body))
            time.sleep(delay)

    def _delay(self, attempt: int, error: errors.AccountApiError) -> float | None:
        opts = self.options
        if isinstance(error, errors.RateLimitedError) and error.retry_after is not None:
            # A long Retry-After is handed to the caller instead of sleeping through a Lambda.
            return error.retry_after if error.retry_after <= opts.max_retry_after else None
        return random.uniform(0, min(opts.backoff_cap, opts.backoff_base * 2 ** (attempt - 1)))  # noqa: S311 - jitter, not crypto

    def _attempt(
        self,
        operation: str,
        method: str,
        url: str,
        form: dict[str, str] | None,
        json_body: dict[str, Any] | None,
        deadline: float,
        params: dict[str, str] | None = None,
        max_bytes: int = MAX_ANSWER_BYTES,
    ) -> dict[str, Any] | errors.AccountApiError:
        """One exchange: the parsed body on success, else the typed error (returned, not raised)."""
        opts = self.options
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return errors.ApiTimeoutError(f"{operation}: deadline passed", operation=operation, request_sent=False)
        # identity: a compressed answer could inflate past the cap in one read
        headers = {"Accept": "application/json", "Accept-Encoding": "identity", "User-Agent": USER_AGENT}
        if form is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            response = self._session.request(
                method,
                url,
                params=params,
                data=form,
                json=json_body,
                headers=headers,
                auth=(self.api_key, self._secret.get_secret_value()),
                timeout=(min(opts.connect_timeout, remaining), min(opts.read_timeout, remaining)),
                allow_redirects=False,
                stream=True,  # the body is read below, under the deadline and the size cap
            )
        except requests.ConnectTimeout:
            return errors.ApiTimeoutError(f"{operation}: connect timed out", operation=operation, request_sent=False)
        except requests.Timeout:
            return errors.ApiTimeoutError(f"{operation}: no answer in time", operation=operation, request_sent=True)
        except requests.RequestException as exc:
            sent = not _never_connected(exc)
            what = "connection lost" if sent else "could not connect"
            return errors.TransportError(
                f"{operation}: {what} ({type(exc).__name__})", operation=operation, request_sent=sent
            )
        try:
            content = _read_answer(response, deadline, max_bytes)
        except _AnswerTooLarge:
            return errors.UnreadableResponseError(
                f"{operation}: answer larger than {max_bytes} bytes",
                operation=operation,
                status=response.status_code,
            )
        except _AnswerTooSlow:
            return errors.ApiTimeoutError(
                f"{operation}: answer not complete in time", operation=operation, request_sent=True
            )
        except (requests.RequestException, Urllib3Error, OSError, ValueError) as exc:
            return errors.TransportError(
                f"{operation}: connection lost while reading ({type(exc).__name__})",
                operation=operation,
                request_sent=True,
            )
        finally:
            response.close()
        try:
            body = parse_body(content, response.headers.get("Content-Type", ""))
        except (ValueError, SyntaxError):
            if response.status_code >= 500:
                return errors.ServerError(
                    f"{operation}: HTTP {response.status_code}", operation=operation, status=response.status_code
                )
            return errors.UnreadableResponseError(
                f"{operation}: HTTP {response.status_code} with an unreadable body",
                operation=operation,
                status=response.status_code,
            )
        sent_values = self._sent_values(form, json_body)
        return error_for(operation, response.status_code, body, response.headers, sent=sent_values) or body

    def _sent_values(self, form: dict[str, str] | None, json_body: dict[str, Any] | None) -> list[str]:
        """What we sent that an answer must never repeat into a log, an alert or an API answer."""
        return [self._secret.get_secret_value(), *(form or {}).values(), *_strings(json_body)]


class _AnswerTooLarge(Exception):
    pass


class _AnswerTooSlow(Exception):
    pass


def _read_answer(response: requests.Response, deadline: float, max_bytes: int = MAX_ANSWER_BYTES) -> bytes:
    """The body, read one socket read at a time until the deadline and at most `max_bytes`.
    At the deadline the socket is shut, so a read blocked on a trickle returns at once."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _AnswerTooLarge
    connection = getattr(response.raw, "_connection", None)  # urllib3's, while the body is unread
    sock = getattr(connection, "sock", None)
    fired = threading.Event()

    def shut() -> None:
        fired.set()
        if isinstance(sock, socket.socket):
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass

    watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), shut)
    watchdog.daemon = True
    watchdog.start()
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            if fired.is_set() or time.monotonic() >= deadline:
                raise _AnswerTooSlow
            try:
                chunk = response.raw.read1(16384)
            except ReadTimeoutError:
                raise _AnswerTooSlow from None
            except (Urllib3Error, OSError):
                if fired.is_set():
                    raise _AnswerTooSlow from None
                raise
            if not chunk:
                if fired.is_set():
                    raise _AnswerTooSlow
                return b"".join(chunks)
            size += len(chunk)
            if size > max_bytes:
                raise _AnswerTooLarge
            chunks.append(chunk)
    finally:
        watchdog.cancel()


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("a transfer window needs timezone-aware times")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _new_session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no proxies or .netrc credentials picked up from the environment
    adapter = HTTPAdapter(max_retries=0, pool_connections=4, pool_maxsize=8)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def _strings(value: Any) -> list[str]:
    """Every string in a JSON value (what we sent, to be redacted from Vonage's answer)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _never_connected(exc: BaseException) -> bool:
    """True when the failure happened while connecting, so the request never left."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, NewConnectionError):
            return True
        reason = getattr(current, "reason", None)
        nested = current.args[0] if current.args and isinstance(current.args[0], BaseException) else None
        current = reason if isinstance(reason, BaseException) else nested or current.__cause__ or current.__context__
    return False


def _is_retryable(error: errors.AccountApiError) -> bool:
    return isinstance(error, errors.TransportError | errors.ServerError | errors.RateLimitedError)
