"""The layer's boto3 clients: shared and configured for Lambda, retried writes that recognise their
own earlier effect, no attempt past the invocation's deadline, and the standard tooling (botocore's
Stubber, moto's mock_aws) working on them as on any boto3 client."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
import requests
from botocore.exceptions import ConnectionClosedError
from botocore.stub import Stubber

from account_api import aws_clients, config, deadline
from account_api.balance import ScheduledRun, WatcherSettings, WatcherStore
from account_api.problems import ApiProblem
from account_api.settings import request_rotation
from local import aws_resources
from tests.conftest import load_event, load_handler, vonage_secret_value


@pytest.fixture
def timeouts(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Set timeout variables for one test; the clients are rebuilt with them."""

    def apply(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        config.timeouts.cache_clear()
        aws_clients.reset()

    yield apply
    config.timeouts.cache_clear()
    aws_clients.reset()


def test_one_client_per_service_configured_for_lambda(aws: None, timeouts: Any) -> None:
    timeouts(AWS_CONNECT_TIMEOUT_SECONDS="1.5", AWS_READ_TIMEOUT_SECONDS="4", AWS_MAX_ATTEMPTS="3")
    sm = aws_clients.client("secretsmanager")
    assert aws_clients.client("secretsmanager") is sm
    assert aws_clients.client("dynamodb") is not sm
    cfg = sm.meta.config
    assert (cfg.connect_timeout, cfg.read_timeout) == (1.5, 4.0)
    assert cfg.retries == {"mode": "standard", "total_max_attempts": 3}


def test_invalid_timeout_setting_is_refused_by_name(timeouts: Any) -> None:
    timeouts(AWS_READ_TIMEOUT_SECONDS="600")
    with pytest.raises(config.ConfigurationError, match="AWS_READ_TIMEOUT_SECONDS"):
        config.timeouts()


# -- a retried conditional write recognises its own earlier write ---------------------------------


def lose_first_answer(client: Any, operation: str) -> list[str]:
    """The first attempt of `operation` reaches the server and takes effect, but its answer is lost:
    botocore sees a closed connection and retries the same request."""
    attempts: list[str] = []

    def deliver_then_drop(request: Any, **kwargs: Any) -> None:
        if not kwargs["event_name"].endswith(operation):
            return
        attempts.append(operation)
        if len(attempts) == 1:
            requests.post(request.url, data=request.body, headers=dict(request.headers), timeout=5).raise_for_status()
            raise ConnectionClosedError(endpoint_url=request.url)

    client.meta.events.register_first("before-send", deliver_then_drop)
    return attempts


@pytest.fixture
def store(aws: None, timeouts: Any) -> WatcherStore:
    timeouts(AWS_MAX_ATTEMPTS="3")
    resources = aws_resources.create_resources(boto3.Session(), vonage_secret_value())
    settings = WatcherSettings(
        threshold=10,
        state_table=resources.tables["WatcherStateTable"],
        history_table=resources.tables["TopUpHistoryTable"],
        alert_topic_arn=resources.topic_arn,
    )
    return WatcherStore(settings)


def test_run_claim_retried_after_a_lost_answer_is_still_ours(store: WatcherStore) -> None:
    attempts = lose_first_answer(store.ddb, "PutItem")
    run = ScheduledRun(scheduled_time=datetime(2026, 11, 27, tzinfo=UTC))
    assert store.claim_run("acct", run.key, time.time()).state == "claimed"
    assert len(attempts) == 2  # the retry met its own first write, and recognised it
    assert store.claim_run("acct", run.key, time.time()).state == "in_progress"  # a real second delivery is not


def test_lease_retried_after_a_lost_answer_is_held_once(store: WatcherStore) -> None:
    attempts = lose_first_answer(store.ddb, "PutItem")
    now = time.time()
    run = ScheduledRun(scheduled_time=datetime(2026, 11, 27, tzinfo=UTC))
    assert store.take_lease("acct", run.key, now) is None  # taken: the top-up may be sent
    assert len(attempts) == 2
    lease = store.lease("acct")
    assert lease.topups_on(datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")) == 1 and lease.version == 1
    assert lease.take_of(run.key) is not None and lease.take_of(run.key).pending  # type: ignore[union-attr]
    assert store.take_lease("acct", run.key, now + 1) == "cooldown"


def test_alert_claim_retried_after_a_lost_answer_still_sends_once(store: WatcherStore) -> None:
    attempts = lose_first_answer(store.ddb, "UpdateItem")
    now = time.time()
    assert store.should_alert("acct", "low", now) is True
    assert len(attempts) == 2
    assert store.should_alert("acct", "low", now + 1) is False


# -- no attempt outlives the invocation -------------------------------------------------------------


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A loopback server that accepts connections and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


class ShortContext:
    def __init__(self, millis: int) -> None:
        self.millis = millis
        self.function_name = "settings-api"
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = 256
        self.invoked_function_arn = "arn:aws:lambda:eu-west-1:000000000000:function:settings-api"
        self.aws_request_id = "00000000-0000-0000-0000-000000000000"

    def get_remaining_time_in_millis(self) -> int:
        return self.millis


def test_aws_retries_stop_at_the_invocation_deadline(
    black_hole: str, timeouts: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five attempts of 0.6 s each would take 3 s and more; the invocation has 1.5 s. The settings
    API answers 504 as a problem, in time, instead of being cut off by API Gateway."""
    timeouts(AWS_CONNECT_TIMEOUT_SECONDS="0.1", AWS_READ_TIMEOUT_SECONDS="0.5", AWS_MAX_ATTEMPTS="5")
    monkeypatch.setenv("AWS_ENDPOINT_URL", black_hole)
    monkeypatch.setenv("VONAGE_SECRET_ARN", "arn:aws:secretsmanager:eu-west-1:000000000000:secret:account-ops/vonage")
    monkeypatch.setenv("STATE_TABLE", "state")
    monkeypatch.setenv("HISTORY_TABLE", "history")
    monkeypatch.setenv("ACCOUNTS_TABLE", "accounts")
    monkeypatch.setenv("ACCOUNT_SECRET_PREFIX", "account-ops/accounts/")
    app = load_handler("settings_api")
    started = time.monotonic()
    answer = app.lambda_handler(load_event("settings_get_balance.json"), ShortContext(2500))
    elapsed = time.monotonic() - started
    assert answer["statusCode"] == 504, answer
    assert answer["multiValueHeaders"]["Content-Type"] == ["application/problem+json"]
    assert elapsed < 1.6, f"took {elapsed:.2f} s with a 1.5 s deadline"
    assert deadline.remaining() is None  # cleared when the invocation ended


# -- the standard tooling works on our clients ------------------------------------------------------


def test_stubber_drives_the_rotate_now_conflict(aws: None) -> None:
    sm = aws_clients.client("secretsmanager")
    with Stubber(sm) as stub:
        stub.add_client_error(
            "rotate_secret",
            service_error_code="InvalidRequestException",
            service_message="A previous rotation isn't complete.",
            expected_params={"SecretId": "account-ops/vonage"},
        )
        with pytest.raises(ApiProblem) as refused:
            request_rotation("account-ops/vonage")
        stub.assert_no_pending_responses()
    assert refused.value.status == 409


def test_in_process_moto_works_on_the_shared_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    from moto import mock_aws

    from account_api.credentials import CredentialStore

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    aws_clients.reset()
    try:
        with mock_aws():
            arn = boto3.client("secretsmanager").create_secret(Name="v", SecretString=vonage_secret_value())["ARN"]
            assert CredentialStore(arn).get().api_key == "abcd1234"
    finally:
        aws_clients.reset()
