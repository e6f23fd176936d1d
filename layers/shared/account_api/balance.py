"""The balance watcher's logic: read the balance, publish it, decide, and top up at most once per need.

Money moves here, and everything around it is at-least-once (Scheduler retries, Lambda async
retries, duplicate deliveries) while Vonage's balance lags behind a top-up. So:
- a run is identified by its schedule's scheduled time; a second delivery does nothing;
- a top-up needs a lease per account in DynamoDB, taken by a conditional write, with a cooldown
  longer than the balance lag and a daily cap;
- the top-up POST is sent once and never retried; a timeout, 5xx, reset or unreadable answer after
  sending is UNKNOWN: the lease is kept, an alert goes out, later runs confirm from the balance.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from . import aws_clients, errors
from .credentials import VonageAccount, read_credentials
from .observability import MetricUnit, logger, metrics


class ConfigurationError(ValueError):
    """A watcher setting is missing or invalid; raised before any call to Vonage."""


class Outcome(StrEnum):
    OK = "ok"
    LOW_ALERTED = "low_alerted"
    TOPUP_SUCCEEDED = "topup_succeeded"
    TOPUP_REFUSED = "topup_refused"
    TOPUP_UNKNOWN = "topup_unknown"
    TOPUP_FAILED = "topup_failed"
    SKIPPED_COOLDOWN = "skipped_cooldown"
    SKIPPED_DAILY_CAP = "skipped_daily_cap"
    DRY_RUN = "dry_run"
    DUPLICATE = "duplicate"
    INVALID_BALANCE = "invalid_balance"


# CloudWatch metric per outcome (the dashboard and alarms use these names).
OUTCOME_METRICS = {
    Outcome.OK: "BalanceOk",
    Outcome.LOW_ALERTED: "LowBalanceAlerted",
    Outcome.TOPUP_SUCCEEDED: "TopUpSucceeded",
    Outcome.TOPUP_REFUSED: "TopUpRefused",
    Outcome.TOPUP_UNKNOWN: "TopUpOutcomeUnknown",
    Outcome.TOPUP_FAILED: "TopUpFailed",
    Outcome.SKIPPED_COOLDOWN: "TopUpSkippedByCooldown",
    Outcome.SKIPPED_DAILY_CAP: "TopUpSkippedByDailyCap",
    Outcome.DRY_RUN: "TopUpSkippedByDryRun",
    Outcome.DUPLICATE: "DuplicateRun",
    Outcome.INVALID_BALANCE: "InvalidBalance",
}


class WatcherSettings(BaseModel):
    """Validated once from the environment (template parameters become these variables)."""

    model_config = ConfigDict(frozen=True)

    threshold: float = Field(gt=0, description="BALANCE_THRESHOLD_EUR")
    topup_cooldown_minutes: int = Field(default=30, ge=1, le=24 * 60)
    alert_cooldown_minutes: int = Field(default=360, ge=1, le=7 * 24 * 60)
    daily_topup_cap: int = Field(default=3, ge=0, le=50)
    dry_run: bool = False
    state_table: str = Field(min_length=1)
    history_table: str = Field(min_length=1)
    alert_topic_arn: str = Field(min_length=1)
    history_ttl_days: int = Field(default=90, ge=1, le=3650)
    topup_trx_secret_arn: str | None = None

    @field_validator("topup_trx_secret_arn")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value or None

    @classmethod
    def from_environment(cls, env: dict[str, str] | None = None) -> WatcherSettings:
        env = dict(os.environ if env is None else env)
        names = {
            "threshold": "BALANCE_THRESHOLD_EUR",
            "topup_cooldown_minutes": "TOPUP_COOLDOWN_MINUTES",
            "alert_cooldown_minutes": "ALERT_COOLDOWN_MINUTES",
            "daily_topup_cap": "DAILY_TOPUP_CAP",
            "dry_run": "DRY_RUN",
            "state_table": "STATE_TABLE",
            "history_table": "HISTORY_TABLE",
            "alert_topic_arn": "ALERT_TOPIC_ARN",
            "history_ttl_days": "HISTORY_TTL_DAYS",
            "topup_trx_secret_arn": "TOPUP_TRX_SECRET_ARN",
        }
        raw = {field: env[var] for field, var in names.items() if var in env}
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{names.get(str(e['loc'][0]), e['loc'][0]) if e['loc'] else 'settings'}: {e['msg']}"
                for e in exc.errors(include_input=False)
            )
            raise ConfigurationError(f"invalid balance watcher settings: {problems}") from None


class ScheduledRun(BaseModel):
    """One firing of the schedule. EventBridge Scheduler fills the target input's
    <aws.scheduler.*> placeholders; a classic EventBridge scheduled event carries `time`."""

    scheduled_time: datetime
    execution_id: str = ""
    attempt: int = 1

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> ScheduledRun:
        when = event.get("scheduledTime") or event.get("time")
        if not isinstance(when, str) or not when:
            raise ConfigurationError("the event has no scheduledTime: configure the schedule's input (see events/)")
        try:
            return cls(
                scheduled_time=datetime.fromisoformat(when.replace("Z", "+00:00")),
                execution_id=str(event.get("executionId") or event.get("id") or ""),
                attempt=int(event.get("attemptNumber") or 1),
            )
        except (ValueError, ValidationError):
            raise ConfigurationError("the event's scheduledTime is not an ISO 8601 time") from None

    @property
    def key(self) -> str:
        return self.scheduled_time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class RunResult(BaseModel):
    outcome: Outcome
    scheduled_time: str
    balance: float | None = None
    auto_reload: bool | None = None
    detail: str = ""


class WatcherStore:
    """DynamoDB state: run claims, the top-up lease per account, alert state, and history."""

    def __init__(self, settings: WatcherSettings) -> None:
        self.settings = settings

    @property
    def ddb(self) -> Any:
        return aws_clients.client("dynamodb")

    def _write_once(self, method: str, token_attribute: str, token: str, **kwargs: Any) -> bool:
        """A conditional write that is True when it took effect. botocore retries a write whose
        answer was lost, and the retry then fails its own condition: the item carries a token
        unique to this write, read back from the failure, so our own earlier write still counts."""
        try:
            getattr(self.ddb, method)(ReturnValuesOnConditionCheckFailure="ALL_OLD", **kwargs)
        except self.ddb.exceptions.ConditionalCheckFailedException as exc:
            existing = exc.response.get("Item") or {}
            return bool(existing.get(token_attribute, {}).get("S") == token)
        return True

    def claim_run(self, account_key: str, run: ScheduledRun, now: float) -> bool:
        """True for the first delivery of this scheduled run, False for a duplicate."""
        token = uuid.uuid4().hex
        return self._write_once(
            "put_item",
            "claim_token",
            token,
            TableName=self.settings.state_table,
            Item={
                "pk": {"S": f"run#{account_key}#{run.key}"},
                "claimed_at": {"N": str(int(now))},
                "expires_at": {"N": str(int(now) + 2 * 86400)},
                "claim_token": {"S": token},
            },
            ConditionExpression="attribute_not_exists(pk)",
        )

    def lease(self, account_key: str) -> dict[str, Any]:
        item = self.ddb.get_item(
            TableName=self.settings.state_table, Key={"pk": {"S": f"lease#{account_key}"}}, ConsistentRead=True
        ).get("Item")
        return _plain(item or {})

    def take_lease(self, account_key: str, now: float) -> Outcome | None:
        """Take the top-up lease, or say why not (cooldown, daily cap). Optimistic: the write is
        conditional on the version read, so of concurrent runs exactly one wins."""
        current = self.lease(account_key)
        today = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")
        if float(current.get("lease_until", 0)) > now:
            return Outcome.SKIPPED_COOLDOWN
        count = int(current.get("topups_today", 0)) if current.get("day") == today else 0
        if count >= self.settings.daily_topup_cap:
            return Outcome.SKIPPED_DAILY_CAP
        version = int(current.get("version", 0))
        token = uuid.uuid4().hex
        item = {
            "pk": {"S": f"lease#{account_key}"},
            "lease_until": {"N": str(now + self.settings.topup_cooldown_minutes * 60)},
            "day": {"S": today},
            "topups_today": {"N": str(count + 1)},
            "version": {"N": str(version + 1)},
            "last_outcome": {"S": "pending"},
            "taken_at": {"N": str(now)},
            "lease_token": {"S": token},
        }
        condition = "attribute_not_exists(pk)" if not current else "version = :v"
        values = {} if not current else {":v": {"N": str(version)}}
        kwargs: dict[str, Any] = {
            "TableName": self.settings.state_table,
            "Item": item,
            "ConditionExpression": condition,
        }
        if values:
            kwargs["ExpressionAttributeValues"] = values
        if not self._write_once("put_item", "lease_token", token, **kwargs):
            return Outcome.SKIPPED_COOLDOWN  # another run took it a moment ago
        return None

    def record_lease_outcome(self, account_key: str, outcome: Outcome | str) -> None:
        self.ddb.update_item(
            TableName=self.settings.state_table,
            Key={"pk": {"S": f"lease#{account_key}"}},
            UpdateExpression="SET last_outcome = :o",
            ExpressionAttributeValues={":o": {"S": str(outcome)}},
        )

    def should_alert(self, account_key: str, kind: str, now: float) -> bool:
        """One alert per kind and episode (re-sent after the alert cooldown); concurrent runs
        race on a conditional write and only the winner sends."""
        cutoff = now - self.settings.alert_cooldown_minutes * 60
        token = uuid.uuid4().hex
        return self._write_once(
            "update_item",
            f"token_{kind}",
            token,
            TableName=self.settings.state_table,
            Key={"pk": {"S": f"alert#{account_key}"}},
            UpdateExpression="SET #k = :now, #t = :token",
            ConditionExpression="attribute_not_exists(#k) OR #k <= :cutoff",
            ExpressionAttributeNames={"#k": f"sent_{kind}", "#t": f"token_{kind}"},
            ExpressionAttributeValues={":now": {"N": str(now)}, ":cutoff": {"N": str(cutoff)}, ":token": {"S": token}},
        )

    def note_alert(self, account_key: str, kind: str, now: float) -> None:
        """Record an alert that is always sent (top-up refused or unknown): it opens an episode."""
        self.ddb.update_item(
            TableName=self.settings.state_table,
            Key={"pk": {"S": f"alert#{account_key}"}},
            UpdateExpression="SET #k = :now",
            ExpressionAttributeNames={"#k": f"sent_{kind}"},
            ExpressionAttributeValues={":now": {"N": str(now)}},
        )

    def end_episode(self, account_key: str) -> bool:
        """Clear the alert state; True when an episode was open (a recovery notice is owed)."""
        response = self.ddb.delete_item(
            TableName=self.settings.state_table, Key={"pk": {"S": f"alert#{account_key}"}}, ReturnValues="ALL_OLD"
        )
        return bool(response.get("Attributes"))

    def record_history(self, account_key: str, run: ScheduledRun, result: RunResult, now: float) -> None:
        item: dict[str, Any] = {
            "account": {"S": account_key},
            "at": {"S": f"{datetime.fromtimestamp(now, UTC).isoformat()}#{run.key}"},
            "scheduled_time": {"S": run.key},
            "outcome": {"S": str(result.outcome)},
            "expires_at": {"N": str(int(now) + self.settings.history_ttl_days * 86400)},
        }
        if result.balance is not None:
            item["balance"] = {"N": repr(result.balance)}
        if result.detail:
            item["detail"] = {"S": result.detail[:500]}
        self.ddb.put_item(TableName=self.settings.history_table, Item=item)


def _plain(item: dict[str, Any]) -> dict[str, Any]:
    return {key: next(iter(value.values())) for key, value in item.items()}


class Alerts:
    def __init__(self, topic_arn: str) -> None:
        self.topic_arn = topic_arn

    def send(self, subject: str, message: str) -> None:
        # botocore retries a failed Publish: a duplicate alert is acceptable, a lost one is not.
        aws_clients.client("sns").publish(TopicArn=self.topic_arn, Subject=subject[:100], Message=message)
        logger.info("alert sent", subject=subject)


class BalanceWatcher:
    def __init__(self, settings: WatcherSettings, account: VonageAccount, store: WatcherStore, alerts: Alerts) -> None:
        self.settings = settings
        self.account = account
        self.store = store
        self.alerts = alerts

    @classmethod
    def from_environment(cls) -> BalanceWatcher:
        settings = WatcherSettings.from_environment()
        return cls(settings, VonageAccount.from_environment(), WatcherStore(settings), Alerts(settings.alert_topic_arn))

    def run(self, run: ScheduledRun, now: float | None = None) -> RunResult:
        now = time.time() if now is None else now
        key = self.account.credentials().api_key
        try:
            balance = self.account.call(lambda c: c.get_account_balance())
        except errors.UnreadableResponseError as exc:
            return self._finish(key, run, now, self._invalid_balance(key, run, now, exc))
        if not self.store.claim_run(key, run, now):
            logger.info("duplicate delivery of a scheduled run: nothing to do", scheduled_time=run.key)
            result = RunResult(outcome=Outcome.DUPLICATE, scheduled_time=run.key, balance=balance.value)
            metrics.add_metric(name=OUTCOME_METRICS[Outcome.DUPLICATE], unit=MetricUnit.Count, value=1)
            return result
        metrics.add_metric(name="BalanceEUR", unit=MetricUnit.NoUnit, value=balance.value)
        metrics.add_metric(name="AutoReloadEnabled", unit=MetricUnit.Count, value=1 if balance.auto_reload else 0)
        base = {"scheduled_time": run.key, "balance": balance.value, "auto_reload": balance.auto_reload}

        if balance.value >= self.settings.threshold:
            self._recovered(key, balance.value)
            return self._finish(key, run, now, RunResult(outcome=Outcome.OK, **base))
        if not balance.auto_reload:
            self._alert_once(
                key,
                "low",
                now,
                f"Vonage balance low: {balance.value:.2f} EUR",
                f"The balance is {balance.value:.2f} EUR, below the threshold of {self.settings.threshold:.2f} EUR, "
                "and auto-reload is off, so a top-up would be refused. Add credit in the Vonage dashboard.",
            )
            return self._finish(key, run, now, RunResult(outcome=Outcome.LOW_ALERTED, **base))
        if self.settings.dry_run:
            self._alert_once(
                key,
                "dry_run",
                now,
                f"[dry run] Vonage balance low: {balance.value:.2f} EUR",
                f"The balance is {balance.value:.2f} EUR, below {self.settings.threshold:.2f} EUR. A top-up would be "
                "sent now, but DRY_RUN is on.",
            )
            return self._finish(key, run, now, RunResult(outcome=Outcome.DRY_RUN, **base))
        refusal = self.store.take_lease(key, now)
        if refusal is Outcome.SKIPPED_DAILY_CAP:
            self._alert_once(
                key,
                "cap",
                now,
                "Vonage top-up daily cap reached",
                f"The balance is {balance.value:.2f} EUR, below {self.settings.threshold:.2f} EUR, but "
                f"{self.settings.daily_topup_cap} top-ups were already sent today. No more top-ups until tomorrow (UTC).",
            )
        if refusal is not None:
            return self._finish(key, run, now, RunResult(outcome=refusal, **base))
        return self._finish(key, run, now, self._top_up(key, base, now))

    def _top_up(self, key: str, base: dict[str, Any], now: float) -> RunResult:
        trx = self._trx()
        if trx is None:
            self.store.record_lease_outcome(key, Outcome.TOPUP_FAILED)
            self.alerts.send(
                "Vonage top-up not possible", "No top-up reference (topup_trx) is configured in the secret."
            )
            return RunResult(outcome=Outcome.TOPUP_FAILED, detail="no topup_trx configured", **base)
        metrics.add_metric(name="TopUpSent", unit=MetricUnit.Count, value=1)
        logger.info("sending one top-up", balance=base["balance"])
        try:
            self.account.call(lambda c: c.top_up_account_balance(trx), retry_on_401=False)
        except (errors.AutoReloadNotEnabledError, errors.TopUpRefusedError) as exc:
            self.store.record_lease_outcome(key, Outcome.TOPUP_REFUSED)
            self.store.note_alert(key, "topup", now)
            self.alerts.send("Vonage top-up refused", f"Vonage refused the top-up: {exc.reason}.")
            return RunResult(outcome=Outcome.TOPUP_REFUSED, detail=exc.reason, **base)
        except errors.AccountApiError as exc:
            unknown = errors.outcome_unknown(exc)
            outcome = Outcome.TOPUP_UNKNOWN if unknown else Outcome.TOPUP_FAILED
            self.store.record_lease_outcome(key, outcome)
            self.store.note_alert(key, "topup", now)
            logger.error(
                "top-up did not report success", outcome=str(outcome), error=type(exc).__name__, reason=exc.message
            )
            self.alerts.send(
                "Vonage top-up outcome unknown" if unknown else "Vonage top-up failed",
                f"The top-up request {'may have been processed' if unknown else 'was not processed'} "
                f"({type(exc).__name__}). It is not retried; the lease is kept for "
                f"{self.settings.topup_cooldown_minutes} minutes and later runs confirm from the balance.",
            )
            return RunResult(outcome=outcome, detail=type(exc).__name__, **base)
        self.store.record_lease_outcome(key, Outcome.TOPUP_SUCCEEDED)
        self.alerts.send(
            "Vonage top-up sent",
            f"The balance was {base['balance']:.2f} EUR, below {self.settings.threshold:.2f} EUR: one top-up was "
            "sent and accepted. The balance shows it within minutes.",
        )
        return RunResult(outcome=Outcome.TOPUP_SUCCEEDED, **base)

    def _trx(self) -> SecretStr | None:
        if self.settings.topup_trx_secret_arn:
            response = aws_clients.client("secretsmanager").get_secret_value(
                SecretId=self.settings.topup_trx_secret_arn
            )
            text = str(response.get("SecretString") or "").strip()
            if text.startswith("{"):
                text = str(json.loads(text).get("topup_trx") or "")
            return SecretStr(text) if text else None
        trx = self.account.credentials().topup_trx
        if trx is None:
            trx = read_credentials(self.account.store.secret_arn).topup_trx  # maybe added since cached
        return trx

    def _invalid_balance(
        self, key: str, run: ScheduledRun, now: float, exc: errors.UnreadableResponseError
    ) -> RunResult:
        logger.error("balance unreadable or invalid: no top-up", reason=exc.message)
        self._alert_once(
            key,
            "invalid_balance",
            now,
            "Vonage balance unreadable",
            f"The balance answer could not be used ({exc.message}). No top-up is sent until it reads correctly.",
        )
        return RunResult(outcome=Outcome.INVALID_BALANCE, scheduled_time=run.key, detail=exc.message)

    def _alert_once(self, key: str, kind: str, now: float, subject: str, message: str) -> None:
        if self.store.should_alert(key, kind, now):
            self.alerts.send(subject, message)
        else:
            logger.info("alert suppressed by the alert cooldown", kind=kind)

    def _recovered(self, key: str, value: float) -> None:
        lease = self.store.lease(key)
        if lease.get("last_outcome") == Outcome.TOPUP_UNKNOWN:
            self.store.record_lease_outcome(key, "confirmed_by_balance")
            logger.info("balance back above the threshold after an UNKNOWN top-up", balance=value)
        if self.store.end_episode(key):
            self.alerts.send(
                "Vonage balance recovered",
                f"The balance is {value:.2f} EUR, at or above the threshold of {self.settings.threshold:.2f} EUR.",
            )

    def _finish(self, key: str, run: ScheduledRun, now: float, result: RunResult) -> RunResult:
        metrics.add_metric(name=OUTCOME_METRICS[result.outcome], unit=MetricUnit.Count, value=1)
        self.store.record_history(key, run, result, now)
        logger.info(
            "balance check decided", outcome=str(result.outcome), balance=result.balance, scheduled_time=run.key
        )
        return result
