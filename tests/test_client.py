"""The Account API client against the simulator over loopback: each operation, each typed error,
the exact request on the wire, deadlines and retries."""

from __future__ import annotations

import base64
import http.server
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import account_api
from account_api import AccountClient, errors
from local import simulator as simmod
from tests.conftest import Sim

KEY, SECRET, TRX = simmod.DEFAULT_API_KEY, simmod.DEFAULT_API_SECRET, simmod.DEFAULT_TRX


# -- a recording server, to see the exact request on the wire ---------------------------------


class Recorder(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict[str, Any]] = []
    answer: tuple[int, bytes] = (200, b"{}")

    def log_message(self, *args: Any) -> None:
        pass

    def _record(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        Recorder.seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body})
        status, payload = Recorder.answer
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_DELETE = _record


@pytest.fixture
def recorder() -> Iterator[AccountClient]:
    Recorder.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    yield AccountClient(api_key=KEY, api_secret=SECRET, rest_base_url=url, api_base_url=url)
    server.shutdown()
    server.server_close()


def _basic() -> str:
    return "Basic " + base64.b64encode(f"{KEY}:{SECRET}".encode()).decode()


@pytest.mark.parametrize(
    ("call", "answer", "method", "path", "content_type", "body"),
    [
        (
            lambda c: c.get_account_balance(),
            b'{"value": 1, "autoReload": true}',
            "GET",
            "/account/get-balance",
            None,
            b"",
        ),
        (
            lambda c: c.top_up_account_balance(TRX),
            b'{"error-code": "200"}',
            "POST",
            "/account/top-up",
            "application/x-www-form-urlencoded",
            f"trx={TRX}".encode(),
        ),
        (
            lambda c: c.change_account_settings(mo_callback_url="https://example.com/mo", dr_callback_url=""),
            b"{}",
            "POST",
            "/account/settings",
            "application/x-www-form-urlencoded",
            b"moCallBackUrl=https%3A%2F%2Fexample.com%2Fmo&drCallBackUrl=",
        ),
        (
            lambda c: c.register_sender("bob@example.com", name="bob", application_ids=["app1"]),
            b'{"value": "bob@example.com"}',
            "POST",
            "/account/register-sender",
            "application/json",
            b'{"provider": "email", "value": "bob@example.com", "name": "bob", "application_ids": ["app1"]}',
        ),
        (
            lambda c: c.retrieve_api_secrets(),
            b'{"_embedded": {"secrets": []}}',
            "GET",
            f"/accounts/{KEY}/secrets",
            None,
            b"",
        ),
        (
            lambda c: c.create_api_secret("NewSecret123"),
            b'{"id": "s1", "created_at": "2024-01-01T00:00:00Z"}',
            "POST",
            f"/accounts/{KEY}/secrets",
            "application/json",
            b'{"secret": "NewSecret123"}',
        ),
        (
            lambda c: c.retrieve_api_secret("s1", api_key="sub123"),
            b'{"id": "s1", "created_at": "2024-01-01T00:00:00Z"}',
            "GET",
            "/accounts/sub123/secrets/s1",
            None,
            b"",
        ),
        (lambda c: c.revoke_api_secret("s1"), b"", "DELETE", f"/accounts/{KEY}/secrets/s1", None, b""),
    ],
)
def test_exact_request_on_the_wire(
    recorder: AccountClient, call: Any, answer: bytes, method: str, path: str, content_type: str | None, body: bytes
) -> None:
    Recorder.answer = (200, answer)
    call(recorder)
    assert len(Recorder.seen) == 1
    seen = Recorder.seen[0]
    assert seen["method"] == method
    assert seen["path"] == path  # no query string: the secret is never in the URL
    assert SECRET not in seen["path"]
    assert seen["headers"]["Authorization"] == _basic()
    assert seen["headers"]["Accept"] == "application/json"
    assert seen["headers"].get("Content-Type") == content_type
    assert seen["body"] == body


def test_balance(client: AccountClient, sim: Sim) -> None:
    sim.set(balance=12.5, auto_reload=False)
    balance = client.get_account_balance()
    assert balance.value == 12.5
    assert balance.auto_reload is False


def test_top_up_credits_after_the_lag(client: AccountClient, sim: Sim) -> None:
    sim.set(balance=1.0, topup_lag=60)
    result = client.top_up_account_balance(TRX)
    assert result.error_code == "200"
    assert client.get_account_balance().value == 1.0  # Vonage's balance lags behind
    assert sim.public_state()["pending_topups"] == 1


def test_top_up_refusals_are_typed(client: AccountClient, sim: Sim) -> None:
    with pytest.raises(errors.TopUpRefusedError) as refused:
        client.top_up_account_balance("wrong-trx")
    assert refused.value.status == 401
    assert refused.value.body["error-code"] == "420"
    sim.set(auto_reload=False)
    with pytest.raises(errors.AutoReloadNotEnabledError) as off:
        client.top_up_account_balance(TRX)
    assert "not auto-reload enabled" in str(off.value)
    assert TRX not in str(off.value) and TRX not in repr(off.value.body)


def test_settings_read_change_and_unset(client: AccountClient, sim: Sim) -> None:
    settings = client.change_account_settings()
    assert settings.mo_callback_url == "" and settings.max_calls_per_second == 30
    changed = client.change_account_settings(mo_callback_url="https://hooks.example.com/mo")
    assert changed.mo_callback_url == "https://hooks.example.com/mo"
    assert client.change_account_settings().mo_callback_url == "https://hooks.example.com/mo"
    assert client.change_account_settings(mo_callback_url="").mo_callback_url == ""


def test_settings_refused_by_vonage(client: AccountClient, sim: Sim) -> None:
    sim.control("POST", "/_sim/callbacks", {"dead.example.com": 404})
    with pytest.raises(errors.InvalidRequestError) as refused:
        client.change_account_settings(dr_callback_url="https://dead.example.com/dr")
    assert "answered 404" in refused.value.reason
    assert sim.account()["dr_callback_url"] == ""


def test_register_sender(client: AccountClient, sim: Sim) -> None:
    sender = client.register_sender("alice@example.com", name="alerts", application_ids=["abc123"])
    assert sender.value == "alice@example.com" and sender.application_ids == ["abc123"]
    assert sim.public_state()["senders"][0]["name"] == "alerts"


def test_secret_lifecycle_and_limits(client: AccountClient, sim: Sim) -> None:
    [first] = client.retrieve_api_secrets()
    created = client.create_api_secret("Another-Secret-9")
    assert {s.id for s in client.retrieve_api_secrets()} == {first.id, created.id}
    assert client.retrieve_api_secret(created.id).created_at == created.created_at
    with pytest.raises(errors.MaxSecretsError) as maxed:
        client.create_api_secret("Third-Secret-99")
    assert maxed.value.status == 403
    client.revoke_api_secret(created.id)
    with pytest.raises(errors.LastSecretError):
        client.revoke_api_secret(first.id)
    with pytest.raises(errors.SecretNotFoundError):
        client.retrieve_api_secret(created.id)
    with pytest.raises(errors.ApiKeyNotFoundError):
        client.retrieve_api_secrets(api_key="nosuchkey")


def test_subaccount_secrets_with_primary_credentials(client: AccountClient, sim: Sim) -> None:
    sim.control("POST", "/_sim/subaccounts", {"api_key": "sub123", "api_secret": "Sub-Secret-01"})
    assert len(client.retrieve_api_secrets(api_key="sub123")) == 1
    created = client.create_api_secret("Sub-Secret-02", api_key="sub123")
    assert created.id in sim.account("sub123")["secret_ids"]


def test_secret_rules_checked_before_sending(client: AccountClient, sim: Sim) -> None:
    for bad, why in [
        ("Short1a", "8-25"),
        ("alllowercase1", "upper"),
        ("ALLUPPER123", "lower"),
        ("NoDigitsHere", "digit"),
        ("A1" + "a" * 24, "8-25"),
    ]:
        with pytest.raises(errors.InvalidInputError) as refused:
            client.create_api_secret(bad)
        assert refused.value.field == "secret" and why in str(refused.value)
        assert bad not in str(refused.value)
    assert sim.requests("createAPISecret") == []


def test_secret_rules_from_vonage_are_typed(recorder: AccountClient) -> None:
    Recorder.answer = (
        400,
        b'{"type": "t", "title": "Bad Request", "detail": "d", "instance": "i", '
        b'"invalid_parameters": [{"name": "secret", "reason": "Does not meet complexity requirements"}]}',
    )
    with pytest.raises(errors.SecretRulesError) as refused:
        recorder.create_api_secret("Valid-Looking-1")
    assert refused.value.invalid_parameters == [{"name": "secret", "reason": "Does not meet complexity requirements"}]


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.change_account_settings(mo_callback_url="not a url"), "mo_callback_url"),
        (lambda c: c.change_account_settings(dr_callback_url="ftp://example.com/x"), "dr_callback_url"),
        (lambda c: c.change_account_settings(dr_callback_url="https://example.com/" + "a" * 2100), "dr_callback_url"),
        (lambda c: c.register_sender("not-an-email"), "value"),
        (lambda c: c.register_sender("a@example.com", application_ids=["../x"]), "application_ids"),
        (lambda c: c.retrieve_api_secret("../../etc"), "secret_id"),
        (lambda c: c.retrieve_api_secrets(api_key="a/b"), "api_key"),
        (lambda c: c.top_up_account_balance(""), "trx"),
    ],
)
def test_bad_input_refused_without_calling_vonage(client: AccountClient, sim: Sim, call: Any, field: str) -> None:
    with pytest.raises(errors.InvalidInputError) as refused:
        call(client)
    assert refused.value.field == field
    assert sim.requests() == []


def test_bad_credentials(sim: Sim, fast_options: Any) -> None:
    bad = AccountClient(
        api_key=KEY, api_secret="Wrong-Secret-1", rest_base_url=sim.url, api_base_url=sim.url, options=fast_options
    )
    for call in (
        bad.get_account_balance,
        bad.retrieve_api_secrets,
        lambda: bad.top_up_account_balance(TRX),
        bad.change_account_settings,
        lambda: bad.register_sender("a@example.com"),
    ):
        with pytest.raises(errors.AuthenticationError) as failed:
            call()
        assert failed.value.status == 401
        assert "Wrong-Secret-1" not in str(failed.value)


def test_query_parameter_credentials_also_accepted_by_the_simulator(sim: Sim) -> None:
    import urllib.request

    url = f"{sim.url}/account/get-balance?api_key={KEY}&api_secret={SECRET}"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
    assert all("api_secret" not in str(entry) for entry in sim.requests())


@pytest.mark.parametrize(
    ("status", "body", "error_type"),
    [
        (401, b'{"error-code": "401", "error-code-label": "authentication failed"}', errors.AuthenticationError),
        (
            401,
            b'<?xml version="1.0"?><response><error-code>401</error-code><error-code-label>not auto-reload enabled'
            b"</error-code-label></response>",
            errors.AutoReloadNotEnabledError,
        ),
        (
            401,
            b"<response><error-code>420</error-code><error-code-label>topup failed</error-code-label></response>",
            errors.TopUpRefusedError,
        ),
        (200, b'{"error-code": "420", "error-code-label": "topup failed"}', errors.TopUpRefusedError),
        (200, b'{"error-code": "401", "error-code-label": "authentication failed"}', errors.AuthenticationError),
        (
            401,
            b'{"type": "https://developer.nexmo.com/api-errors#unauthorized", "title": "Unauthorized", '
            b'"detail": "You did not provide correct credentials.", "instance": "x"}',
            errors.AuthenticationError,
        ),
        (
            403,
            b'{"title": "Secret Deletion Forbidden", "detail": "Can not delete the last secret."}',
            errors.LastSecretError,
        ),
        (403, b'{"detail": "Account reached maximum number [2]"}', errors.MaxSecretsError),
        (403, b'{"title": "Forbidden"}', errors.ForbiddenError),
        (404, b'{"title": "Invalid API Key", "detail": "API key \'x\' not found"}', errors.ApiKeyNotFoundError),
        (404, b'{"title": "Invalid ID", "detail": "ID \'y\' could not be found"}', errors.SecretNotFoundError),
        (429, b"", errors.RateLimitedError),
        (500, b"<html>oops</html>", errors.ServerError),
        (200, b'{"value": 12.5, "autoRel', errors.UnreadableResponseError),
        (200, b"<html>not the API</html>", errors.UnreadableResponseError),
        (200, b'{"value": "lots", "autoReload": true}', errors.UnreadableResponseError),
        (200, b'{"value": -3, "autoReload": true}', errors.UnreadableResponseError),
        (200, b'{"value": NaN, "autoReload": true}', errors.UnreadableResponseError),
        (200, b'{"autoReload": true}', errors.UnreadableResponseError),
    ],
)
def test_every_error_format_is_typed(recorder: AccountClient, status: int, body: bytes, error_type: type) -> None:
    Recorder.answer = (status, body)
    operation = "POST" if error_type in (errors.TopUpRefusedError, errors.AutoReloadNotEnabledError) else "GET"
    with pytest.raises(error_type) as raised:
        if operation == "POST":
            recorder.top_up_account_balance(TRX)
        else:
            recorder.get_account_balance()
    assert type(raised.value) is error_type
    assert isinstance(raised.value, account_api.AccountApiError)
    assert SECRET not in str(raised.value) and TRX not in str(raised.value)


def test_xml_answers_are_understood(sim: Sim, recorder: AccountClient) -> None:
    Recorder.answer = (
        200,
        b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><accountBalance><value>10.171275</value>'
        b"<autoReload>false</autoReload></accountBalance>",
    )
    balance = recorder.get_account_balance()
    assert balance.value == pytest.approx(10.171275) and balance.auto_reload is False


def test_read_deadline_on_a_stalled_route(client: AccountClient, sim: Sim) -> None:
    sim.fault("getAccountBalance", latency=3.0, times=5)
    with pytest.raises(errors.ApiTimeoutError) as timed_out:
        client.get_account_balance()
    assert timed_out.value.request_sent is True


def test_get_retried_on_503_then_succeeds(client: AccountClient, sim: Sim) -> None:
    sim.fault("getAccountBalance", status=503, times=2)
    assert client.get_account_balance().value == simmod.DEFAULT_BALANCE
    assert len(sim.requests("getAccountBalance")) == 3


def test_get_retried_after_a_reset_and_a_short_retry_after(client: AccountClient, sim: Sim) -> None:
    sim.fault("retrieveAPISecrets", reset=True)
    sim.fault("retrieveAPISecrets", status=429, retry_after=0)
    assert len(client.retrieve_api_secrets()) == 1
    assert len(sim.requests("retrieveAPISecrets")) == 3


def test_long_retry_after_is_handed_back_not_slept(client: AccountClient, sim: Sim) -> None:
    sim.fault("getAccountBalance", status=429, retry_after=120)
    with pytest.raises(errors.RateLimitedError) as limited:
        client.get_account_balance()
    assert limited.value.retry_after == 120
    assert len(sim.requests("getAccountBalance")) == 1


def test_retries_give_up_after_max_attempts(client: AccountClient, sim: Sim) -> None:
    sim.fault("getAccountBalance", status=500, times=10)
    with pytest.raises(errors.ServerError):
        client.get_account_balance()
    assert len(sim.requests("getAccountBalance")) == client.options.max_attempts


@pytest.mark.parametrize(
    ("operation", "call"),
    [
        ("topUpAccountBalance", lambda c: c.top_up_account_balance(TRX)),
        ("createAPISecret", lambda c: c.create_api_secret("Brand-New-Secret-1")),
        ("revokeAPISecret", lambda c: c.revoke_api_secret("00000000-0000-0000-0000-000000000000")),
        ("changeAccountSettings", lambda c: c.change_account_settings()),
    ],
)
@pytest.mark.parametrize("fault", [{"reset": True}, {"status": 503}, {"latency": 2.0, "after": True}])
def test_post_and_delete_are_sent_exactly_once(
    client: AccountClient, sim: Sim, operation: str, call: Any, fault: dict[str, Any]
) -> None:
    sim.fault(operation, **fault)
    with pytest.raises(errors.AccountApiError) as failed:
        call(client)
    assert errors.outcome_unknown(failed.value)
    assert len(sim.requests(operation)) == 1


def test_connection_refused_is_known_not_sent(fast_options: Any) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dead = AccountClient(api_key=KEY, api_secret=SECRET, rest_base_url=f"http://127.0.0.1:{port}", options=fast_options)
    with pytest.raises(errors.TransportError) as failed:
        dead.top_up_account_balance(TRX)
    assert failed.value.request_sent is False
    assert not errors.outcome_unknown(failed.value)


def test_no_secret_in_logs_or_reprs_at_debug(client: AccountClient, sim: Sim, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("urllib3").setLevel(logging.DEBUG)
    client.get_account_balance()
    client.top_up_account_balance(TRX)
    client.change_account_settings()
    client.create_api_secret("Logged-Never-77")
    sim.fault("getAccountBalance", status=500, times=3)
    with pytest.raises(errors.ServerError) as failed:
        client.get_account_balance()
    text = caplog.text + repr(client) + str(failed.value) + repr(failed.value)
    assert caplog.records, "the capture saw nothing: the check would prove nothing"
    encoded = base64.b64encode(f"{KEY}:{SECRET}".encode()).decode()
    for secret in (SECRET, TRX, "Logged-Never-77", encoded, "Authorization"):
        assert secret not in text


# -- the deadline holds through the last byte, and answers are capped -----------------------------


def test_a_trickled_answer_ends_at_the_deadline(sim: Sim) -> None:
    """One byte every 50 ms for a 4 KiB body would take 200 s; the deadline is 1 s, retries included."""
    import time

    from account_api import AccountClient, ApiTimeoutError, ClientOptions

    sim.fault("getAccountBalance", body="trickle", times=3)
    client = AccountClient(
        api_key=simmod.DEFAULT_API_KEY,
        api_secret=simmod.DEFAULT_API_SECRET,
        rest_base_url=sim.url,
        api_base_url=sim.url,
        options=ClientOptions(read_timeout=1.0, total_deadline=1.0),
    )
    started = time.monotonic()
    with pytest.raises(ApiTimeoutError):
        client.get_account_balance()
    assert time.monotonic() - started < 1.3


def test_an_oversized_answer_is_refused_without_reading_it(sim: Sim, client: Any) -> None:
    import resource
    import time

    from account_api import UnreadableResponseError

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sim.fault("changeAccountSettings", body="huge")
    started = time.monotonic()
    with pytest.raises(UnreadableResponseError, match="larger than"):
        client.change_account_settings()
    assert time.monotonic() - started < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50 * 1024  # KiB: not 300 MB
