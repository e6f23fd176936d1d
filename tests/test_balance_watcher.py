"""The balance watcher against the simulator over loopback (balance lag, faults) and moto for
DynamoDB, SNS and Secrets Manager. Top-ups are counted where they land: the simulator's log."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from account_api import ClientOptions, VonageAccount
from account_api.balance import (
    Alerts,
    BalanceWatcher,
    ConfigurationError,
    Outcome,
    ScheduledRun,
    WatcherSettings,
    WatcherStore,
)
from account_api.credentials import CredentialStore
from local import aws_resources
from local import simulator as simmod
from tests.conftest import JsonLogs, LambdaContext, Sim, load_event, load_handler, vonage_secret_value

T0 = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)


class Stack:
    def __init__(
        self, sim: Sim, resources: aws_resources.LocalResources, alerts: Callable[[], list[dict[str, str]]]
    ) -> None:
        self.sim = sim
        self.resources = resources
        self.read_alerts = alerts
        self.env = {
            "VONAGE_SECRET_ARN": resources.secret_arn,
            "VONAGE_REST_BASE_URL": sim.url,
            "VONAGE_API_BASE_URL": sim.url,
            "BALANCE_THRESHOLD_EUR": "10",
            "TOPUP_COOLDOWN_MINUTES": "30",
            "ALERT_COOLDOWN_MINUTES": "360",
            "DAILY_TOPUP_CAP": "3",
            "DRY_RUN": "false",
            "STATE_TABLE": resources.tables["WatcherStateTable"],
            "HISTORY_TABLE": resources.tables["TopUpHistoryTable"],
            "ALERT_TOPIC_ARN": resources.topic_arn,
        }

    def watcher(self, **overrides: Any) -> BalanceWatcher:
        env = {**self.env, **{k: str(v) for k, v in overrides.items()}}
        settings = WatcherSettings.from_environment(env)
        account = VonageAccount(
            CredentialStore(self.resources.secret_arn),
            rest_base_url=self.sim.url,
            api_base_url=self.sim.url,
            options=ClientOptions(read_timeout=0.5, total_deadline=3.0, backoff_base=0.01),
        )
        return BalanceWatcher(settings, account, WatcherStore(settings), Alerts(settings.alert_topic_arn))

    def topups(self) -> int:
        return len(self.sim.requests("topUpAccountBalance"))

    def history(self) -> list[dict[str, Any]]:
        items = boto3.client("dynamodb").scan(TableName=self.resources.tables["TopUpHistoryTable"])["Items"]
        return sorted(({k: next(iter(v.values())) for k, v in i.items()} for i in items), key=lambda i: i["at"])


@pytest.fixture
def stack(aws: None, sim: Sim, atomic_dynamodb: None) -> Iterator[Stack]:
    session = boto3.Session()
    resources = aws_resources.create_resources(session, vonage_secret_value())
    yield Stack(sim, resources, aws_resources.sqs_messages_of_topic(session, resources.topic_arn))


def run_at(minutes: float) -> ScheduledRun:
    return ScheduledRun(scheduled_time=T0 + timedelta(minutes=minutes))


def ts(minutes: float) -> float:
    return (T0 + timedelta(minutes=minutes)).timestamp()


# -- through the handler and its events -----------------------------------------------------------


def test_handler_runs_from_its_event_and_publishes_metrics(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    for name, value in stack.env.items():
        monkeypatch.setenv(name, value)
    app = load_handler("balance_watcher")
    result = app.lambda_handler(load_event("balance_watcher_scheduled.json"), LambdaContext("balance-watcher"))
    assert result["outcome"] == "ok" and result["balance"] == simmod.DEFAULT_BALANCE
    out = capfd.readouterr().out
    assert '"BalanceEUR":[25.0]' in out and '"BalanceOk":[1.0]' in out and '"AutoReloadEnabled":[1.0]' in out
    duplicate = app.lambda_handler(load_event("balance_watcher_duplicate.json"), LambdaContext("balance-watcher"))
    assert duplicate["outcome"] == "duplicate"
    assert [h["outcome"] for h in stack.history()] == ["ok"]


def test_invalid_setting_fails_before_any_call_to_vonage(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {**stack.env, "BALANCE_THRESHOLD_EUR": "lots", "DAILY_TOPUP_CAP": "-1"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as failed:
        load_handler("balance_watcher")
    assert "BALANCE_THRESHOLD_EUR" in str(failed.value) and "DAILY_TOPUP_CAP" in str(failed.value)
    assert stack.sim.requests() == []


def test_event_without_scheduled_time_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="scheduledTime"):
        ScheduledRun.from_event({"executionId": "x"})
    assert (
        ScheduledRun.from_event({"time": "2026-11-26T08:00:00Z", "detail-type": "Scheduled Event"}).key
        == "2026-11-26T08:00:00Z"
    )


# -- decisions ------------------------------------------------------------------------------------


def test_low_balance_tops_up_once_and_notifies(stack: Stack) -> None:
    stack.sim.set(balance=4.0)
    result = stack.watcher().run(run_at(0), now=ts(0))
    assert result.outcome is Outcome.TOPUP_SUCCEEDED
    assert stack.topups() == 1
    assert [a["subject"] for a in stack.read_alerts()] == ["Vonage top-up sent"]
    assert stack.history()[0]["outcome"] == "topup_succeeded" and stack.history()[0]["balance"] == "4.0"


def test_twenty_concurrent_deliveries_of_one_run_send_one_top_up(stack: Stack) -> None:
    stack.sim.set(balance=1.0, topup_lag=3600)
    watcher = stack.watcher()
    results: list[Outcome] = []
    threads = [
        threading.Thread(target=lambda: results.append(watcher.run(run_at(0), now=ts(0)).outcome)) for _ in range(20)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stack.topups() == 1
    assert results.count(Outcome.TOPUP_SUCCEEDED) == 1 and results.count(Outcome.DUPLICATE) == 19


def test_twenty_concurrent_runs_inside_the_cooldown_send_one_top_up(stack: Stack) -> None:
    stack.sim.set(balance=1.0, topup_lag=3600)
    watcher = stack.watcher()
    results: list[Outcome] = []
    threads = [
        threading.Thread(target=lambda m=m: results.append(watcher.run(run_at(m), now=ts(m)).outcome))
        for m in range(20)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stack.topups() == 1
    assert results.count(Outcome.TOPUP_SUCCEEDED) == 1
    assert results.count(Outcome.SKIPPED_COOLDOWN) == 19


def test_a_simulated_hour_with_a_lagging_balance(stack: Stack) -> None:
    """5-minute runs; after each top-up the balance stays low for 8 minutes, then the credit shows,
    and usage drains it below the threshold again by the next run."""
    stack.sim.set(balance=2.0, topup_lag=3600)
    watcher = stack.watcher()
    sent_at: list[int] = []
    outcomes = []
    for minute in range(0, 125, 5):
        if sent_at and minute - sent_at[-1] == 10:  # credit visible 8 min after, seen at the next tick
            stack.sim.set(balance=30.0)
        elif sent_at and minute - sent_at[-1] > 10:
            stack.sim.set(balance=2.0)
        before = stack.topups()
        outcomes.append(watcher.run(run_at(minute), now=ts(minute)).outcome)
        if stack.topups() > before:
            sent_at.append(minute)
    assert sent_at == [0, 30, 60]  # never inside the 30-minute cooldown; daily cap of 3
    assert Outcome.SKIPPED_COOLDOWN in outcomes and Outcome.SKIPPED_DAILY_CAP in outcomes
    assert outcomes[-1] is Outcome.SKIPPED_DAILY_CAP
    subjects = [a["subject"] for a in stack.read_alerts()]
    assert subjects.count("Vonage top-up daily cap reached") == 1  # one alert per episode


def test_daily_cap_resets_the_next_day(stack: Stack) -> None:
    stack.sim.set(balance=1.0, topup_lag=3600)
    watcher = stack.watcher(DAILY_TOPUP_CAP=1)
    assert watcher.run(run_at(0), now=ts(0)).outcome is Outcome.TOPUP_SUCCEEDED
    assert watcher.run(run_at(60), now=ts(60)).outcome is Outcome.SKIPPED_DAILY_CAP
    assert watcher.run(run_at(24 * 60), now=ts(24 * 60)).outcome is Outcome.TOPUP_SUCCEEDED
    assert stack.topups() == 2


@pytest.mark.parametrize(
    "fault",
    [
        {"latency": 1.5, "after": True},
        {"status": 500, "after": True},
        {"reset": True, "after": True},
        {"body": "malformed", "after": True},
        {"body": "xml", "after": True},
        {"status": 429, "retry_after": 3600},
    ],
    ids=["timeout-after-sending", "500", "reset", "malformed-200", "html-200", "429-long-retry-after"],
)
def test_unknown_outcomes_keep_the_lease_and_alert(stack: Stack, fault: dict[str, Any]) -> None:
    stack.sim.set(balance=1.0, topup_lag=3600)
    stack.sim.fault("topUpAccountBalance", **fault)
    watcher = stack.watcher()
    result = watcher.run(run_at(0), now=ts(0))
    assert result.outcome is Outcome.TOPUP_UNKNOWN
    assert stack.topups() == 1
    assert [a["subject"] for a in stack.read_alerts()] == ["Vonage top-up outcome unknown"]
    # the next runs inside the cooldown do not send again
    assert watcher.run(run_at(5), now=ts(5)).outcome is Outcome.SKIPPED_COOLDOWN
    assert stack.topups() == 1


def test_unknown_top_up_is_confirmed_from_the_balance_later(stack: Stack) -> None:
    stack.sim.set(balance=1.0, topup_lag=3600)
    stack.sim.fault("topUpAccountBalance", status=503, after=True)
    watcher = stack.watcher()
    assert watcher.run(run_at(0), now=ts(0)).outcome is Outcome.TOPUP_UNKNOWN
    stack.sim.set(balance=21.0)  # the top-up had gone through
    assert watcher.run(run_at(10), now=ts(10)).outcome is Outcome.OK
    assert watcher.store.lease(simmod.DEFAULT_API_KEY).last_outcome == "confirmed_by_balance"
    assert [a["subject"] for a in stack.read_alerts()] == ["Vonage top-up outcome unknown", "Vonage balance recovered"]


def test_auto_reload_off_alerts_once_per_episode_then_recovers(stack: Stack) -> None:
    stack.sim.set(balance=3.0, auto_reload=False)
    watcher = stack.watcher()
    outcomes = [watcher.run(run_at(m), now=ts(m)).outcome for m in (0, 5, 10, 15)]
    assert outcomes == [Outcome.LOW_ALERTED] * 4
    assert stack.topups() == 0  # a top-up would be refused: none is sent
    assert [a["subject"] for a in stack.read_alerts()] == ["Vonage balance low: 3.00 EUR"]
    stack.sim.set(balance=50.0)
    assert watcher.run(run_at(20), now=ts(20)).outcome is Outcome.OK
    assert watcher.run(run_at(25), now=ts(25)).outcome is Outcome.OK
    assert [a["subject"] for a in stack.read_alerts()] == ["Vonage balance recovered"]  # exactly one notice


def test_alert_is_repeated_after_the_alert_cooldown(stack: Stack) -> None:
    stack.sim.set(balance=3.0, auto_reload=False)
    watcher = stack.watcher(ALERT_COOLDOWN_MINUTES=60)
    for minute in range(0, 65, 5):
        watcher.run(run_at(minute), now=ts(minute))
    assert len(stack.read_alerts()) == 2  # at 0 and at 60


def test_refused_top_up_is_recorded_and_notified(stack: Stack) -> None:
    stack.sim.set(balance=3.0, payment_refused=True)
    result = stack.watcher().run(run_at(0), now=ts(0))
    assert result.outcome is Outcome.TOPUP_REFUSED and result.detail == "topup failed"
    assert stack.topups() == 1
    assert [a["subject"] for a in stack.read_alerts()] == ["Vonage top-up refused"]
    assert stack.history()[-1]["outcome"] == "topup_refused"


def test_vonage_wording_is_bounded_and_never_echoes_what_we_sent(stack: Stack) -> None:
    """A refusal whose label repeats the top-up reference, with control characters and 5 KB of text:
    the alert, the history row and the logs get a bounded, single-line text with the trx redacted."""
    label = f"topup failed for trx {simmod.DEFAULT_TRX}\n\x1b[31mFAKE LOG LINE\r\n" + "A" * 5000
    stack.sim.set(balance=3.0)
    stack.sim.fault("topUpAccountBalance", status=401, problem={"error-code": "420", "error-code-label": label})
    result = stack.watcher().run(run_at(0), now=ts(0))
    assert result.outcome is Outcome.TOPUP_REFUSED
    [alert] = stack.read_alerts()
    for text in (result.detail, alert["message"], stack.history()[-1]["detail"]):
        assert simmod.DEFAULT_TRX not in text and "[redacted]" in text
        assert "\n" not in text and "\x1b" not in text and "\r" not in text
    assert len(result.detail) <= 200


def test_bad_credentials_one_refresh_then_a_clear_failure(stack: Stack) -> None:
    boto3.client("secretsmanager").put_secret_value(
        SecretId=stack.resources.secret_arn, SecretString=vonage_secret_value(api_secret="Wrong-Secret-1")
    )
    from account_api import AuthenticationError

    with pytest.raises(AuthenticationError) as failed:
        stack.watcher().run(run_at(0), now=ts(0))
    assert len(stack.sim.requests("getAccountBalance")) == 2
    assert stack.topups() == 0
    assert "Wrong-Secret-1" not in str(failed.value)


def test_dry_run_decides_and_alerts_but_sends_nothing(stack: Stack) -> None:
    stack.sim.set(balance=1.0)
    result = stack.watcher(DRY_RUN="true").run(run_at(0), now=ts(0))
    assert result.outcome is Outcome.DRY_RUN
    assert stack.topups() == 0
    assert [a["subject"] for a in stack.read_alerts()] == ["[dry run] Vonage balance low: 1.00 EUR"]


@pytest.mark.parametrize(
    "body", [{"value": -3, "autoReload": True}, {"autoReload": True}, {"value": "NaN", "autoReload": True}]
)
def test_invalid_balance_values_never_top_up(stack: Stack, body: dict[str, Any], json_logs: JsonLogs) -> None:
    account = stack.sim.state.accounts[simmod.DEFAULT_API_KEY]
    account.balance = body.get("value")  # type: ignore[assignment]
    if "value" not in body:
        stack.sim.fault("getAccountBalance", body="malformed", times=3)
    result = stack.watcher().run(run_at(0), now=ts(0))
    assert result.outcome is Outcome.INVALID_BALANCE
    assert stack.topups() == 0
    assert [a["subject"] for a in stack.read_alerts()] == ["Vonage balance unreadable"]
    assert any(e["level"] == "ERROR" for e in json_logs.entries())


def test_trx_from_its_own_secret(stack: Stack) -> None:
    sm = boto3.client("secretsmanager")
    sm.put_secret_value(SecretId=stack.resources.secret_arn, SecretString=vonage_secret_value(topup_trx=None))
    arn = sm.create_secret(Name="trx", SecretString=simmod.DEFAULT_TRX)["ARN"]
    stack.sim.set(balance=1.0)
    assert stack.watcher(TOPUP_TRX_SECRET_ARN=arn).run(run_at(0), now=ts(0)).outcome is Outcome.TOPUP_SUCCEEDED
    stack.sim.set(balance=1.0)
    result = stack.watcher().run(run_at(60), now=ts(60))
    assert (result.outcome, result.detail) == (Outcome.TOPUP_FAILED, "no topup_trx configured")


def test_no_secret_or_trx_in_any_log_line(
    stack: Stack, json_logs: JsonLogs, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    stack.sim.set(balance=1.0)
    watcher = stack.watcher()
    watcher.run(run_at(0), now=ts(0))
    stack.sim.fault("topUpAccountBalance", status=500, after=True)
    watcher.run(run_at(60), now=ts(60))
    alerts = stack.read_alerts()
    text = json_logs.text + capfd.readouterr().out + caplog.text + repr(alerts) + repr(stack.history())
    assert "sending one top-up" in text
    for secret in (simmod.DEFAULT_API_SECRET, simmod.DEFAULT_TRX):
        assert secret not in text


def test_settings_validation_messages() -> None:
    with pytest.raises(ConfigurationError) as failed:
        WatcherSettings.from_environment({"BALANCE_THRESHOLD_EUR": "0"})
    message = str(failed.value)
    for name in ("BALANCE_THRESHOLD_EUR", "STATE_TABLE", "HISTORY_TABLE", "ALERT_TOPIC_ARN"):
        assert name in message


def test_time_is_not_slept_through(stack: Stack) -> None:
    # A 429 with a one-hour Retry-After on the balance read is handed back, not slept.
    stack.sim.fault("getAccountBalance", status=429, retry_after=3600)
    from account_api import RateLimitedError

    with pytest.raises(RateLimitedError):
        stack.watcher().run(run_at(0), now=ts(0))
    assert len(stack.sim.requests("getAccountBalance")) == 1


def test_a_401_on_the_top_up_is_not_resent(stack: Stack) -> None:
    stack.sim.set(balance=1.0)
    stack.sim.fault(
        "topUpAccountBalance", status=401, problem={"error-code": "401", "error-code-label": "authentication failed"}
    )
    result = stack.watcher().run(run_at(0), now=ts(0))
    assert (result.outcome, result.detail) == (Outcome.TOPUP_FAILED, "AuthenticationError")
    assert stack.topups() == 1  # one request per decision, even though a 401 means Vonage did not act
    assert [a["subject"] for a in stack.read_alerts()] == ["Vonage top-up failed"]


def test_a_top_up_vonage_provably_did_not_act_on_gives_the_lease_back(stack: Stack) -> None:
    """A 401 (the cached secret was revoked by a rotation) proves Vonage did not act: the next run,
    well inside the 30-minute cooldown, tops up with the re-read secret, and the daily count holds
    only the top-up that was made."""
    stack.sim.set(balance=1.0, topup_lag=3600)
    stack.sim.fault(
        "topUpAccountBalance", status=401, problem={"error-code": "401", "error-code-label": "authentication failed"}
    )
    watcher = stack.watcher()
    assert watcher.run(run_at(0), now=ts(0)).outcome is Outcome.TOPUP_FAILED
    assert watcher.store.lease(simmod.DEFAULT_API_KEY).lease_until <= ts(0)
    assert watcher.run(run_at(5), now=ts(5)).outcome is Outcome.TOPUP_SUCCEEDED
    assert len(stack.sim.server.state.pending_credits) == 1
    assert watcher.store.lease(simmod.DEFAULT_API_KEY).topups_on(T0.strftime("%Y-%m-%d")) == 1
    # a refusal by the payment side is different: the lease is kept, a declined card is not retried
    stack.sim.set(payment_refused=True)
    assert watcher.run(run_at(60), now=ts(60)).outcome is Outcome.TOPUP_REFUSED
    assert watcher.run(run_at(65), now=ts(65)).outcome is Outcome.SKIPPED_COOLDOWN


# -- nothing lost after a failure: the decision is recorded before anything that can fail ---------


def fail_once(client: Any, operation: str, marker: bytes = b"") -> list[str]:
    """The next `operation` call (whose request holds `marker`) fails below HTTP (as a throttled or
    unreachable service would)."""
    from botocore.exceptions import EndpointConnectionError

    failures: list[str] = []

    def fail(request: Any, **kwargs: Any) -> None:
        if (
            kwargs["event_name"].endswith(operation)
            and marker in (request.body if isinstance(request.body, bytes) else str(request.body or "").encode())
            and not failures
        ):
            failures.append(operation)
            raise EndpointConnectionError(endpoint_url=request.url)

    client.meta.events.register_first("before-send", fail)
    return failures


def test_a_failed_alert_loses_no_outcome_and_its_retry_only_finishes(stack: Stack) -> None:
    from account_api import aws_clients

    stack.sim.set(balance=3.0)
    failed = fail_once(aws_clients.client("sns"), "Publish")
    with pytest.raises(Exception, match="Could not connect"):
        stack.watcher().run(run_at(0), now=ts(0))
    assert failed == ["Publish"]
    assert stack.topups() == 1
    # the outcome and its history row were recorded before the alert failed
    assert [h["outcome"] for h in stack.history()] == ["topup_succeeded"]
    # the retry (Lambda's, or the schedule's) finishes the bookkeeping: no new decision, no top-up
    result = stack.watcher().run(run_at(0), now=ts(1))
    assert result.outcome is Outcome.TOPUP_SUCCEEDED
    assert stack.topups() == 1
    assert [a["subject"] for a in stack.read_alerts()] == ["Vonage top-up sent"]
    assert [h["outcome"] for h in stack.history()] == ["topup_succeeded"]  # the same row, rewritten
    assert stack.watcher().run(run_at(0), now=ts(2)).outcome is Outcome.DUPLICATE  # now finished


def test_an_attempt_that_died_after_the_lease_never_sends_twice(stack: Stack) -> None:
    """The top-up was sent, then recording its outcome failed and the invocation died. Its retry
    finds the lease taken by this very run and still pending: UNKNOWN, alerted, nothing re-sent."""
    from account_api import aws_clients

    stack.sim.set(balance=3.0)
    fail_once(aws_clients.client("dynamodb"), "UpdateItem", b"takes.#r.outcome")  # recording the top-up's answer
    with pytest.raises(Exception, match="Could not connect"):
        stack.watcher().run(run_at(0), now=ts(0))
    assert stack.topups() == 1
    result = stack.watcher().run(run_at(0), now=ts(1))
    assert result.outcome is Outcome.TOPUP_UNKNOWN
    assert stack.topups() == 1
    assert stack.history()[-1]["outcome"] == "topup_unknown"
    assert [a["subject"] for a in stack.read_alerts()] == ["Vonage top-up outcome unknown"]  # as documented


def test_a_delivery_while_the_first_is_still_running_is_a_duplicate(stack: Stack) -> None:
    store = stack.watcher().store
    assert store.claim_run("acct", run_at(0).key, ts(0)).state == "claimed"
    assert store.claim_run("acct", run_at(0).key, ts(0.5)).state == "in_progress"
    # once the claiming invocation can no longer be running (its deadline passed), the run is taken over
    assert store.claim_run("acct", run_at(0).key, ts(5)).state == "claimed"


def test_the_first_deploys_placeholder_is_a_state_not_an_error(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], json_logs: JsonLogs
) -> None:
    """After the first deploy the secret holds REPLACE_ME: one metric and one log line a run, no
    exception (so no Lambda retries, nothing in the DLQ), no call to Vonage, nothing written."""
    boto3.client("secretsmanager").put_secret_value(
        SecretId=stack.resources.secret_arn, SecretString='{"api_key": "REPLACE_ME", "api_secret": "REPLACE_ME"}'
    )
    for name, value in stack.env.items():
        monkeypatch.setenv(name, value)
    app = load_handler("balance_watcher")
    result = app.lambda_handler(load_event("balance_watcher_scheduled.json"), LambdaContext("balance-watcher"))
    assert result["outcome"] == "not_configured"
    out = capfd.readouterr().out
    assert '"NotConfigured":[1.0]' in out
    assert [e["level"] for e in json_logs.entries() if "placeholder" in e["message"]] == ["WARNING"]
    assert stack.sim.requests() == [] and stack.history() == [] and stack.read_alerts() == []


def test_an_operators_pause_is_honoured_at_once_alerted_once_and_audited(stack: Stack) -> None:
    from account_api.settings import read_history
    from account_api.switch import TopUpSwitchChange, change_topup_switch, read_topup_switch

    table = stack.env["STATE_TABLE"]
    audit = {"history_table": stack.env["HISTORY_TABLE"], "account_key": simmod.DEFAULT_API_KEY}
    change_topup_switch(
        table, TopUpSwitchChange(paused=True, reason="card replaced"), "arn:aws:iam::1:user/ops", **audit
    )
    assert read_topup_switch(table).changedBy == "arn:aws:iam::1:user/ops"
    stack.sim.set(balance=3.0)
    watcher = stack.watcher()
    assert watcher.run(run_at(0), now=ts(0)).outcome is Outcome.SKIPPED_PAUSED
    assert watcher.run(run_at(5), now=ts(5)).outcome is Outcome.SKIPPED_PAUSED
    assert stack.topups() == 0
    [alert] = stack.read_alerts()  # one alert for the pause, not one per run
    assert "arn:aws:iam::1:user/ops" in alert["message"] and "card replaced" in alert["message"]
    change_topup_switch(table, TopUpSwitchChange(paused=False), "arn:aws:iam::1:user/ops", **audit)
    assert watcher.run(run_at(10), now=ts(10)).outcome is Outcome.TOPUP_SUCCEEDED
    history = read_history(watcher.account, stack.env["HISTORY_TABLE"], days=3650)
    # the switch's changes (now) are newer than the runs (T0): each is a row, with who changed it
    assert [d.outcome for d in history.decisions] == [
        "topups_resumed",
        "topups_paused",
        "topup_succeeded",
        "skipped_paused",
        "skipped_paused",
    ]
    assert history.decisions[1].changedBy == "arn:aws:iam::1:user/ops"
