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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from . import aws_clients, deadline, errors
from .config import ConfigurationError, model_from_environment
from .credentials import VonageAccount, read_credentials
from .observability import MetricUnit, logger, metrics
from .switch import TOPUP_SWITCH_KEY, TopUpSwitch, topup_switch_of


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
    NOT_CONFIGURED = "not_configured"
    SKIPPED_PAUSED = "skipped_paused"


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
    Outcome.NOT_CONFIGURED: "NotConfigured",
    Outcome.SKIPPED_PAUSED: "TopUpSkippedByPause",
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
        return model_from_environment(cls, names, env, "balance watcher settings")


class ScheduledRun(BaseModel):
    """One firing of the schedule. EventBridge Scheduler fills the target input's
    <aws.scheduler.*> placeholders; a classic EventBridge scheduled event carries `time`."""

    scheduled_time: datetime
    execution_id: str = ""
    attempt: int = 1
    dry_run: bool = False  # an event can force a dry run (the smoke test does), never turn one off

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
                dry_run=event.get("dryRun") is True,
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


class PendingAlert(BaseModel):
    """An alert decided by a run; recorded with the decision, sent after the bookkeeping."""

    subject: str
    message: str


class RunClaim(BaseModel):
    state: Literal["claimed", "in_progress", "decided", "finished"]
    token: str = ""
    record: dict[str, Any] = Field(default_factory=dict)


class WatcherStore:
    """DynamoDB state: run claims, the top-up lease per account, alert state, and history."""

    def __init__(self, settings: WatcherSettings) -> None:
        self.settings = settings

    @property
    def ddb(self) -> Any:
        return aws_clients.client("dynamodb")

    def _write_once(self, method: str, token_attribute: str, token: str, **kwargs: Any) -> tuple[bool, dict[str, Any]]:
        """A conditional write: (whether it took effect, the item found when it did not). botocore
        retries a write whose answer was lost, and the retry then fails its own condition: the item
        carries a token unique to this write, read back from the failure, so our own earlier write
        still counts."""
        try:
            getattr(self.ddb, method)(ReturnValuesOnConditionCheckFailure="ALL_OLD", **kwargs)
        except self.ddb.exceptions.ConditionalCheckFailedException as exc:
            existing = exc.response.get("Item") or {}
            return bool(existing.get(token_attribute, {}).get("S") == token), _plain(existing)
        return True, {}

    def claim_run(self, account_key: str, run: ScheduledRun, now: float) -> RunClaim:
        """Claim this scheduled run, or say what an earlier delivery left of it. A claim that
        decided nothing and whose invocation can no longer be running is taken over (stale)."""
        token = uuid.uuid4().hex
        # "in progress" only while the claiming invocation can still be running
        in_progress_until = now + max(1.0, deadline.remaining() or 60.0) + 1
        took, existing = self._write_once(
            "put_item",
            "claim_token",
            token,
            TableName=self.settings.state_table,
            Item={
                "pk": {"S": self._run_pk(account_key, run)},
                "claimed_at": {"N": str(now)},
                "in_progress_until": {"N": str(in_progress_until)},
                "expires_at": {"N": str(int(now) + 2 * 86400)},
                "claim_token": {"S": token},
            },
            ConditionExpression="attribute_not_exists(pk) OR (attribute_not_exists(outcome) AND in_progress_until < :now)",
            ExpressionAttributeValues={":now": {"N": str(now)}},
        )
        if took:
            return RunClaim(state="claimed", token=token)
        if existing.get("finished"):
            return RunClaim(state="finished")
        if "outcome" in existing:
            return RunClaim(state="decided", record=existing)
        return RunClaim(state="in_progress")

    def record_decision(
        self, account_key: str, run: ScheduledRun, result: RunResult, alerts: list[PendingAlert]
    ) -> None:
        """The decision, before anything that could fail after it: a retry finishes from here."""
        self.ddb.update_item(
            TableName=self.settings.state_table,
            Key={"pk": {"S": self._run_pk(account_key, run)}},
            UpdateExpression="SET outcome = :o, #r = :r, alerts = :a",
            ExpressionAttributeNames={"#r": "result"},
            ExpressionAttributeValues={
                ":o": {"S": str(result.outcome)},
                ":r": {"S": result.model_dump_json()},
                ":a": {"S": json.dumps([a.model_dump() for a in alerts])},
            },
        )

    def mark_finished(self, account_key: str, run: ScheduledRun) -> None:
        self.ddb.update_item(
            TableName=self.settings.state_table,
            Key={"pk": {"S": self._run_pk(account_key, run)}},
            UpdateExpression="SET finished = :t",
            ExpressionAttributeValues={":t": {"BOOL": True}},
        )

    def release_claim(self, account_key: str, run: ScheduledRun, token: str) -> None:
        """Give back a claim that decided nothing (the invocation failed): its retry decides."""
        try:
            self.ddb.delete_item(
                TableName=self.settings.state_table,
                Key={"pk": {"S": self._run_pk(account_key, run)}},
                ConditionExpression="claim_token = :t AND attribute_not_exists(outcome)",
                ExpressionAttributeValues={":t": {"S": token}},
            )
        except Exception as exc:  # the claim then lapses when its invocation's deadline passes
            logger.warning("could not release the run claim", error=type(exc).__name__)

    @staticmethod
    def _run_pk(account_key: str, run: ScheduledRun) -> str:
        return f"run#{account_key}#{run.key}"

    def topup_switch(self) -> TopUpSwitch:

        item = self.ddb.get_item(
            TableName=self.settings.state_table, Key={"pk": {"S": TOPUP_SWITCH_KEY}}, ConsistentRead=True
        ).get("Item")
        return topup_switch_of(item)

    def lease(self, account_key: str) -> dict[str, Any]:
        item = self.ddb.get_item(
            TableName=self.settings.state_table, Key={"pk": {"S": f"lease#{account_key}"}}, ConsistentRead=True
        ).get("Item")
        return _plain(item or {})

    def take_lease(self, account_key: str, run: ScheduledRun, now: float) -> Outcome | None:
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
            "run": {"S": run.key},  # which run took it: a retry of that run must never send again
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
        if not self._write_once("put_item", "lease_token", token, **kwargs)[0]:
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
        )[0]

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
            "at": {"S": run.key},  # one row per scheduled run: a retry rewrites it, never adds one
            "recorded_at": {"S": datetime.fromtimestamp(now, UTC).isoformat()},
            "scheduled_time": {"S": run.key},
            "outcome": {"S": str(result.outcome)},
            "expires_at": {"N": str(int(now) + self.settings.history_ttl_days * 86400)},
        }
        if result.balance is not None:
            item["balance"] = {"N": repr(result.balance)}
        if result.detail:
            item["detail"] = {"S": result.detail[:500]}
        if result.auto_reload is not None:
            item["auto_reload"] = {"BOOL": result.auto_reload}
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
    """One scheduled run: claim it, decide, record the decision, then the bookkeeping and alerts.

    The decision (outcome and the alerts it owes) is recorded before anything after it can fail,
    so a retry of a run that decided but did not finish only finishes the bookkeeping: it never
    decides again and never sends a second top-up. Alerts go last: a failed Publish cannot erase
    the outcome, its metric or its history row.
    """

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
        credentials = self.account.credentials()
        if credentials.is_placeholder:  # the first deploy's state: say so once a run, never retry
            logger.warning("not configured: the Vonage secret still holds the placeholder (README, Deploy)")
            metrics.add_metric(name=OUTCOME_METRICS[Outcome.NOT_CONFIGURED], unit=MetricUnit.Count, value=1)
            return RunResult(outcome=Outcome.NOT_CONFIGURED, scheduled_time=run.key, detail="placeholder credentials")
        key = credentials.api_key
        claim = self.store.claim_run(key, run, now)
        if claim.state in ("finished", "in_progress"):
            logger.info(
                "duplicate delivery of a scheduled run: nothing to do", scheduled_time=run.key, state=claim.state
            )
            metrics.add_metric(name=OUTCOME_METRICS[Outcome.DUPLICATE], unit=MetricUnit.Count, value=1)
            return RunResult(outcome=Outcome.DUPLICATE, scheduled_time=run.key)
        if claim.state == "decided":
            logger.info("finishing a run that decided but did not finish", scheduled_time=run.key)
            result = RunResult.model_validate_json(str(claim.record["result"]))
            pending = [PendingAlert.model_validate(a) for a in json.loads(str(claim.record.get("alerts") or "[]"))]
            return self._complete(key, run, now, result, pending)
        alerts: list[PendingAlert] = []
        try:
            result = self._decide(key, run, now, alerts)
            self.store.record_decision(key, run, result, alerts)
        except Exception:
            self.store.release_claim(key, run, claim.token)  # nothing decided: the retry decides
            raise
        return self._complete(key, run, now, result, alerts)

    # -- the decision ------------------------------------------------------------------------------

    def _decide(self, key: str, run: ScheduledRun, now: float, alerts: list[PendingAlert]) -> RunResult:
        lease = self.store.lease(key)  # read once: for an attempt that died mid top-up, and for recovery
        died = self._died_mid_top_up(key, run, lease)
        if died is not None:
            return died
        try:
            balance = self.account.call(lambda c: c.get_account_balance())
        except errors.UnreadableResponseError as exc:
            return self._invalid_balance(key, run, now, exc, alerts)
        metrics.add_metric(name="BalanceEUR", unit=MetricUnit.NoUnit, value=balance.value)
        metrics.add_metric(name="AutoReloadEnabled", unit=MetricUnit.Count, value=1 if balance.auto_reload else 0)
        base = {"scheduled_time": run.key, "balance": balance.value, "auto_reload": balance.auto_reload}

        if balance.value >= self.settings.threshold:
            self._recovered(key, balance.value, alerts, lease)
            return RunResult(outcome=Outcome.OK, **base)
        if not balance.auto_reload:
            self._alert_once(
                key,
                "low",
                now,
                alerts,
                f"Vonage balance low: {balance.value:.2f} EUR",
                f"The balance is {balance.value:.2f} EUR, below the threshold of {self.settings.threshold:.2f} EUR, "
                "and auto-reload is off, so a top-up would be refused. Add credit in the Vonage dashboard.",
            )
            return RunResult(outcome=Outcome.LOW_ALERTED, **base)
        if self.settings.dry_run or run.dry_run:
            self._alert_once(
                key,
                "dry_run",
                now,
                alerts,
                f"[dry run] Vonage balance low: {balance.value:.2f} EUR",
                f"The balance is {balance.value:.2f} EUR, below {self.settings.threshold:.2f} EUR. A top-up would be "
                "sent now, but DRY_RUN is on.",
            )
            return RunResult(outcome=Outcome.DRY_RUN, **base)
        switch = self.store.topup_switch()
        if switch.paused:  # an operator's switch, honoured at once; one alert per pause
            self._alert_once(
                key,
                f"paused_{int(switch.changedAt.timestamp()) if switch.changedAt else 0}",
                now,
                alerts,
                f"Vonage top-ups paused: balance {balance.value:.2f} EUR",
                f"The balance is {balance.value:.2f} EUR, below {self.settings.threshold:.2f} EUR, but top-ups were "
                f"paused by {switch.changedBy or 'an operator'} ({switch.reason or 'no reason given'}). "
                "Resume with `account-ops resume-topups`.",
            )
            return RunResult(outcome=Outcome.SKIPPED_PAUSED, **base)
        refusal = self.store.take_lease(key, run, now)
        if refusal is Outcome.SKIPPED_DAILY_CAP:
            self._alert_once(
                key,
                "cap",
                now,
                alerts,
                "Vonage top-up daily cap reached",
                f"The balance is {balance.value:.2f} EUR, below {self.settings.threshold:.2f} EUR, but "
                f"{self.settings.daily_topup_cap} top-ups were already sent today. No more top-ups until tomorrow (UTC).",
            )
        if refusal is not None:
            return RunResult(outcome=refusal, **base)
        return self._top_up(key, base, now, alerts)

    def _died_mid_top_up(self, key: str, run: ScheduledRun, lease: dict[str, Any]) -> RunResult | None:
        """An earlier attempt of this run took the lease and died before recording what happened:
        the top-up may have been sent. Never send again: report UNKNOWN, let the balance confirm."""
        if lease.get("run") != run.key or lease.get("last_outcome") != "pending":
            return None
        logger.error("an earlier attempt of this run died after taking the top-up lease", scheduled_time=run.key)
        self.store.record_lease_outcome(key, Outcome.TOPUP_UNKNOWN)
        return RunResult(
            outcome=Outcome.TOPUP_UNKNOWN, scheduled_time=run.key, detail="earlier attempt died mid top-up"
        )

    def _top_up(self, key: str, base: dict[str, Any], now: float, alerts: list[PendingAlert]) -> RunResult:
        trx = self._trx()
        if trx is None:
            self.store.record_lease_outcome(key, Outcome.TOPUP_FAILED)
            alerts.append(
                PendingAlert(
                    subject="Vonage top-up not possible",
                    message="No top-up reference (topup_trx) is configured in the secret.",
                )
            )
            return RunResult(outcome=Outcome.TOPUP_FAILED, detail="no topup_trx configured", **base)
        metrics.add_metric(name="TopUpSent", unit=MetricUnit.Count, value=1)
        logger.info("sending one top-up", balance=base["balance"])
        try:
            self.account.call(lambda c: c.top_up_account_balance(trx), retry_on_401=False)
        except (errors.AutoReloadNotEnabledError, errors.TopUpRefusedError) as exc:
            self.store.record_lease_outcome(key, Outcome.TOPUP_REFUSED)
            self.store.note_alert(key, "topup", now)
            alerts.append(
                PendingAlert(subject="Vonage top-up refused", message=f"Vonage refused the top-up: {exc.reason}.")
            )
            return RunResult(outcome=Outcome.TOPUP_REFUSED, detail=exc.reason, **base)
        except errors.AccountApiError as exc:
            unknown = errors.outcome_unknown(exc)
            outcome = Outcome.TOPUP_UNKNOWN if unknown else Outcome.TOPUP_FAILED
            self.store.record_lease_outcome(key, outcome)
            self.store.note_alert(key, "topup", now)
            logger.error(
                "top-up did not report success", outcome=str(outcome), error=type(exc).__name__, reason=exc.message
            )
            alerts.append(
                PendingAlert(
                    subject="Vonage top-up outcome unknown" if unknown else "Vonage top-up failed",
                    message=f"The top-up request {'may have been processed' if unknown else 'was not processed'} "
                    f"({type(exc).__name__}). It is not retried; the lease is kept for "
                    f"{self.settings.topup_cooldown_minutes} minutes and later runs confirm from the balance.",
                )
            )
            return RunResult(outcome=outcome, detail=type(exc).__name__, **base)
        self.store.record_lease_outcome(key, Outcome.TOPUP_SUCCEEDED)
        alerts.append(
            PendingAlert(
                subject="Vonage top-up sent",
                message=f"The balance was {base['balance']:.2f} EUR, below {self.settings.threshold:.2f} EUR: one "
                "top-up was sent and accepted. The balance shows it within minutes.",
            )
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
        self, key: str, run: ScheduledRun, now: float, exc: errors.UnreadableResponseError, alerts: list[PendingAlert]
    ) -> RunResult:
        logger.error("balance unreadable or invalid: no top-up", reason=exc.message)
        self._alert_once(
            key,
            "invalid_balance",
            now,
            alerts,
            "Vonage balance unreadable",
            f"The balance answer could not be used ({exc.message}). No top-up is sent until it reads correctly.",
        )
        return RunResult(outcome=Outcome.INVALID_BALANCE, scheduled_time=run.key, detail=exc.message)

    def _alert_once(
        self, key: str, kind: str, now: float, alerts: list[PendingAlert], subject: str, message: str
    ) -> None:
        if self.store.should_alert(key, kind, now):
            alerts.append(PendingAlert(subject=subject, message=message))
        else:
            logger.info("alert suppressed by the alert cooldown", kind=kind)

    def _recovered(self, key: str, value: float, alerts: list[PendingAlert], lease: dict[str, Any]) -> None:
        if lease.get("last_outcome") == Outcome.TOPUP_UNKNOWN:
            self.store.record_lease_outcome(key, "confirmed_by_balance")
            logger.info("balance back above the threshold after an UNKNOWN top-up", balance=value)
        if self.store.end_episode(key):
            alerts.append(
                PendingAlert(
                    subject="Vonage balance recovered",
                    message=f"The balance is {value:.2f} EUR, at or above the threshold of "
                    f"{self.settings.threshold:.2f} EUR.",
                )
            )

    # -- after the decision --------------------------------------------------------------------------

    def _complete(
        self, key: str, run: ScheduledRun, now: float, result: RunResult, alerts: list[PendingAlert]
    ) -> RunResult:
        """Metric, history row, alerts, finished: in that order, each safe to repeat."""
        metrics.add_metric(name=OUTCOME_METRICS[result.outcome], unit=MetricUnit.Count, value=1)
        self.store.record_history(key, run, result, now)
        logger.info(
            "balance check decided", outcome=str(result.outcome), balance=result.balance, scheduled_time=run.key
        )
        for alert in alerts:
            self.alerts.send(alert.subject, alert.message)
        self.store.mark_finished(key, run)
        return result
