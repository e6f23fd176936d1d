"""The balance watcher's logic: read the balance, publish it, decide, and top up at most once per need.

Money moves here, and everything around it is at-least-once (Scheduler retries, Lambda async
retries, duplicate deliveries) while Vonage's balance lags behind a top-up. So:
- a run is identified by its schedule's scheduled time; a second delivery does nothing;
- a run first reads (lease, alert state, balance, switch) and decides, writing nothing; it records
  the decision; only then does it act (take the lease, top up, claim and send alerts). A retry of a
  run that recorded its decision carries that decision out and never decides again;
- a top-up needs a lease per account in DynamoDB, taken by a conditional write, with a cooldown
  longer than the balance lag and a daily cap. The lease remembers which runs took it, so a run
  that took it never sends again, whatever happened after;
- the top-up POST is sent once and never retried; a timeout, 5xx, reset or unreadable answer after
  sending is UNKNOWN: the lease is kept, an alert goes out, later runs confirm from the balance. A
  failure that proves Vonage did not act (a 401, another 4xx, a connection never made) gives the
  lease back, so the next run can top up.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from . import aws_clients, errors
from .config import ConfigurationError, model_from_environment
from .credentials import VonageAccount, read_credentials
from .models import Balance
from .observability import MetricUnit, logger, metrics
from .watcher_store import Lease, Take, WatcherStore

__all__ = ["BalanceWatcher", "Outcome", "RunResult", "ScheduledRun", "WatcherSettings", "WatcherStore"]


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
    # below this a fleet account counts as critical (the stack's own account has its alarm on BalanceEUR)
    critical: float = Field(default=0.0, ge=0, description="BALANCE_CRITICAL_EUR")
    topup_cooldown_minutes: int = Field(default=30, ge=1, le=24 * 60)
    alert_cooldown_minutes: int = Field(default=360, ge=1, le=7 * 24 * 60)
    daily_topup_cap: int = Field(default=3, ge=0, le=50)
    dry_run: bool = False
    state_table: str = Field(min_length=1)
    history_table: str = Field(min_length=1)
    alert_topic_arn: str = Field(min_length=1)
    history_ttl_days: int = Field(default=90, ge=1, le=3650)
    topup_trx_secret_arn: str | None = None
    # A fleet account (account_api.fleet): named in its alerts; its balance goes to the log, never
    # to a metric of its own (a metric per account would cost $0.30 a month each); "off" watches
    # and alerts but never tops up.
    account_label: str | None = None
    topups_off: bool = False

    @field_validator("topup_trx_secret_arn")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value or None

    @classmethod
    def from_environment(cls, env: dict[str, str] | None = None) -> WatcherSettings:
        env = dict(os.environ if env is None else env)
        names = {
            "threshold": "BALANCE_THRESHOLD_EUR",
            "critical": "BALANCE_CRITICAL_EUR",
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
    subaccounts: dict[str, Any] | None = None  # a primary's tick: what its subaccounts came to


class PendingAlert(BaseModel):
    """An alert a decision owes. `kind` gates it: one per kind and episode, claimed when it is sent
    with the run's scheduled time as token, so a retry of the run recognises its own claim and sends
    it again rather than losing it. `opens_episode`: always sent, and starts an episode."""

    subject: str
    message: str
    kind: str | None = None
    opens_episode: bool = False


class TopUpPlan(BaseModel):
    """A decision to top up, recorded before the lease is taken."""

    lease_version: int  # the lease as the decision saw it: a take by anyone since means the need was met
    done: bool = False


class Decision(BaseModel):
    """What a run decided, recorded before any of its effects. Until a planned top-up is done, the
    recorded result is the worst it can come to (UNKNOWN): that is what a retry reports if it cannot
    learn more."""

    result: RunResult
    alerts: list[PendingAlert] = Field(default_factory=list)
    top_up: TopUpPlan | None = None
    end_episode: bool = False
    confirm_unknown: bool = False

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Decision:
        if "decision" in record:
            return cls.model_validate_json(str(record["decision"]))
        # recorded by 1.1.0: the final result and the alerts it owed
        alerts = [PendingAlert.model_validate(a) for a in json.loads(str(record.get("alerts") or "[]"))]
        return cls(result=RunResult.model_validate_json(str(record["result"])), alerts=alerts)


class Alerts:
    def __init__(self, topic_arn: str, account_label: str | None = None) -> None:
        self.topic_arn = topic_arn
        self.account_label = account_label  # a fleet account's alerts name it

    def send(self, subject: str, message: str) -> None:
        if self.account_label:
            subject, message = f"[{self.account_label}] {subject}", f"Account {self.account_label}: {message}"
        # botocore retries a failed Publish: a duplicate alert is acceptable, a lost one is not.
        aws_clients.client("sns").publish(TopicArn=self.topic_arn, Subject=subject[:100], Message=message)
        logger.info("alert sent", subject=subject)


class BalanceWatcher:
    """One scheduled run: claim it, read and decide, record the decision, carry it out, finish.

    Nothing is written before the decision is recorded, so a run that failed before that has
    nothing to undo and its retry decides. A retry of a run that recorded its decision only carries
    it out: it never decides again, and never sends a second top-up. Alerts go last: a failed
    Publish cannot erase the outcome, its metric or its history row.
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

    def run(self, run: ScheduledRun, now: float | None = None, *, reserve: float = 0.0) -> RunResult:
        """`reserve`: money the account is about to give away this tick (a primary's transfers to
        its subaccounts), so a top-up is due when the balance less the reserve is below the threshold."""
        now = time.time() if now is None else now
        credentials = self.account.credentials()
        if credentials.is_placeholder:  # the first deploy's state: say so once a run, never retry
            logger.warning("not configured: the Vonage secret still holds the placeholder (README, Deploy)")
            metrics.add_metric(name=OUTCOME_METRICS[Outcome.NOT_CONFIGURED], unit=MetricUnit.Count, value=1)
            return RunResult(outcome=Outcome.NOT_CONFIGURED, scheduled_time=run.key, detail="placeholder credentials")
        key = credentials.api_key
        claim = self.store.claim_run(key, run.key, now)
        if claim.state in ("finished", "in_progress"):
            logger.info(
                "duplicate delivery of a scheduled run: nothing to do", scheduled_time=run.key, state=claim.state
            )
            metrics.add_metric(name=OUTCOME_METRICS[Outcome.DUPLICATE], unit=MetricUnit.Count, value=1)
            return RunResult(outcome=Outcome.DUPLICATE, scheduled_time=run.key)
        if claim.state == "decided":
            logger.info("carrying out the decision an earlier attempt recorded", scheduled_time=run.key)
            decision = Decision.from_record(claim.record)
        else:
            try:
                decision = self._decide(key, run, now, reserve)
                self._record(key, run, decision)
            except Exception:
                self.store.release_claim(key, run.key, claim.token)  # nothing decided: the retry decides
                raise
        if decision.top_up is not None and not decision.top_up.done:
            decision = self._top_up(key, run, now, decision)
            self._record(key, run, decision)
        return self._finish(key, run, now, decision)

    def _record(self, key: str, run: ScheduledRun, decision: Decision) -> None:
        self.store.record_decision(key, run.key, str(decision.result.outcome), decision.model_dump_json())

    # -- the decision: reads only -----------------------------------------------------------------

    def _decide(self, key: str, run: ScheduledRun, now: float, reserve: float = 0.0) -> Decision:
        lease = self.store.lease(key)
        if lease.take_of(run.key) is not None:  # an attempt of this run took the lease: carry that out
            return self._top_up_decision(RunResult(outcome=Outcome.TOPUP_UNKNOWN, scheduled_time=run.key), lease)
        try:
            balance = self.account.call(lambda c: c.get_account_balance())
        except errors.UnreadableResponseError as exc:
            logger.error("balance unreadable or invalid: no top-up", reason=exc.message)
            return Decision(
                result=RunResult(outcome=Outcome.INVALID_BALANCE, scheduled_time=run.key, detail=exc.message),
                alerts=[
                    PendingAlert(
                        kind="invalid_balance",
                        subject="Vonage balance unreadable",
                        message=f"The balance answer could not be used ({exc.message}). No top-up is sent until "
                        "it reads correctly.",
                    )
                ],
            )
        if self.settings.account_label is None:  # the stack's own account: its alarms read these
            metrics.add_metric(name="BalanceEUR", unit=MetricUnit.NoUnit, value=balance.value)
            metrics.add_metric(name="AutoReloadEnabled", unit=MetricUnit.Count, value=1 if balance.auto_reload else 0)
        return self._decide_on(key, run, now, balance, lease, reserve)

    def _decide_on(
        self, key: str, run: ScheduledRun, now: float, balance: Balance, lease: Lease, reserve: float = 0.0
    ) -> Decision:
        result = RunResult(
            outcome=Outcome.OK, scheduled_time=run.key, balance=balance.value, auto_reload=balance.auto_reload
        )
        value, threshold = f"{balance.value:.2f}", f"{self.settings.threshold:.2f}"
        if reserve > 0:  # the threshold the balance must meet, with what the subaccounts need on top
            threshold = f"{self.settings.threshold + reserve:.2f} ({threshold} plus {reserve:.2f} for subaccounts)"

        def low(outcome: Outcome, kind: str, subject: str, message: str, detail: str = "") -> Decision:
            alert = PendingAlert(kind=kind, subject=subject, message=message)
            return Decision(result=result.model_copy(update={"outcome": outcome, "detail": detail}), alerts=[alert])

        if balance.value >= self.settings.threshold + reserve:
            episode_open = bool(self.store.open_alerts(key))
            recovered = PendingAlert(
                subject="Vonage balance recovered",
                message=f"The balance is {value} EUR, at or above the threshold of {threshold} EUR.",
            )
            return Decision(
                result=result,
                alerts=[recovered] if episode_open else [],
                end_episode=episode_open,
                confirm_unknown=lease.last_outcome == Outcome.TOPUP_UNKNOWN,
            )
        if self.settings.topups_off:
            return low(
                Outcome.LOW_ALERTED,
                "low",
                f"Vonage balance low: {value} EUR",
                f"The balance is {value} EUR, below the threshold of {threshold} EUR. Top-ups are off for this "
                "account: add credit in the Vonage dashboard.",
            )
        if not balance.auto_reload:
            return low(
                Outcome.LOW_ALERTED,
                "low",
                f"Vonage balance low: {value} EUR",
                f"The balance is {value} EUR, below the threshold of {threshold} EUR, and auto-reload is off, so "
                "a top-up would be refused. Add credit in the Vonage dashboard.",
            )
        if self.settings.dry_run or run.dry_run:
            return low(
                Outcome.DRY_RUN,
                "dry_run",
                f"[dry run] Vonage balance low: {value} EUR",
                f"The balance is {value} EUR, below {threshold} EUR. A top-up would be sent now, but DRY_RUN is on.",
            )
        switch = self.store.topup_switch()
        if switch.paused:  # an operator's switch, honoured at once; one alert per pause
            return low(
                Outcome.SKIPPED_PAUSED,
                f"paused_{int(switch.changedAt.timestamp()) if switch.changedAt else 0}",
                f"Vonage top-ups paused: balance {value} EUR",
                f"The balance is {value} EUR, below {threshold} EUR, but top-ups were paused by "
                f"{switch.changedBy or 'an operator'} ({switch.reason or 'no reason given'}). "
                "Resume with `account-ops resume-topups`.",
            )
        if lease.lease_until > now:
            return Decision(result=result.model_copy(update={"outcome": Outcome.SKIPPED_COOLDOWN}))
        if lease.topups_on(datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")) >= self.settings.daily_topup_cap:
            return self._cap_reached(result)
        if self._trx() is None:
            return low(
                Outcome.TOPUP_FAILED,
                "no_trx",
                "Vonage top-up not possible",
                "No top-up reference (topup_trx) is configured in the secret.",
                _NO_TRX,
            )
        return self._top_up_decision(result, lease)

    def _cap_reached(self, result: RunResult) -> Decision:
        return Decision(
            result=result.model_copy(update={"outcome": Outcome.SKIPPED_DAILY_CAP}),
            alerts=[
                PendingAlert(
                    kind="cap",
                    subject="Vonage top-up daily cap reached",
                    message=f"The balance is {result.balance or 0:.2f} EUR, below {self.settings.threshold:.2f} EUR, "
                    f"but {self.settings.daily_topup_cap} top-ups were already sent today. No more top-ups until "
                    "tomorrow (UTC).",
                )
            ],
        )

    def _top_up_decision(self, result: RunResult, lease: Lease) -> Decision:
        """Top up: recorded as the worst it can come to, until the top-up's answer is recorded."""
        unknown = result.model_copy(update={"outcome": Outcome.TOPUP_UNKNOWN, "detail": _STOPPED})
        return Decision(
            result=unknown, alerts=self._top_up_alerts(unknown), top_up=TopUpPlan(lease_version=lease.version)
        )

    # -- carrying out a top-up ----------------------------------------------------------------------

    def _top_up(self, key: str, run: ScheduledRun, now: float, decision: Decision) -> Decision:
        """Take the lease and send the top-up once; or, for a retry, learn from the lease what an
        earlier attempt of this run did. Never sends for a run whose take is on the lease."""
        plan = decision.top_up or TopUpPlan(lease_version=0)
        base = decision.result
        lease = self.store.lease(key)
        take = lease.take_of(run.key)
        if take is not None:
            return self._from_take(key, run, decision, take)
        refusal = self.store.take_lease(key, run.key, now, seen_version=plan.lease_version)
        if refusal == "cap":
            return self._cap_reached(base).model_copy(update={"top_up": TopUpPlan(lease_version=0, done=True)})
        if refusal == "cooldown":
            skipped = base.model_copy(update={"outcome": Outcome.SKIPPED_COOLDOWN, "detail": ""})
            return Decision(result=skipped, top_up=TopUpPlan(lease_version=0, done=True))
        trx = self._trx()
        if trx is None:  # removed since the decision: nothing sent
            return self._top_up_done(key, run, base, Outcome.TOPUP_FAILED, _NO_TRX, give_back=True)
        metrics.add_metric(name="TopUpSent", unit=MetricUnit.Count, value=1)
        logger.info("sending one top-up", balance=base.balance)
        try:
            self.account.call(lambda c: c.top_up_account_balance(trx), retry_on_401=False)
        except (errors.AutoReloadNotEnabledError, errors.TopUpRefusedError) as exc:
            # Refused by the payment side: keep the lease, so a declined card is not retried every tick.
            return self._top_up_done(key, run, base, Outcome.TOPUP_REFUSED, exc.reason, give_back=False)
        except errors.AccountApiError as exc:
            unknown = errors.outcome_unknown(exc)
            outcome = Outcome.TOPUP_UNKNOWN if unknown else Outcome.TOPUP_FAILED
            logger.error(
                "top-up did not report success", outcome=str(outcome), error=type(exc).__name__, reason=exc.message
            )
            return self._top_up_done(key, run, base, outcome, type(exc).__name__, give_back=not unknown)
        return self._top_up_done(key, run, base, Outcome.TOPUP_SUCCEEDED, "", give_back=False)

    def _top_up_done(
        self, key: str, run: ScheduledRun, base: RunResult, outcome: Outcome, detail: str, *, give_back: bool
    ) -> Decision:
        self.store.record_take(key, run.key, str(outcome), detail, give_back=give_back)
        result = base.model_copy(update={"outcome": outcome, "detail": detail})
        return Decision(result=result, alerts=self._top_up_alerts(result), top_up=TopUpPlan(lease_version=0, done=True))

    def _from_take(self, key: str, run: ScheduledRun, decision: Decision, take: Take) -> Decision:
        if take.pending:  # an earlier attempt took the lease and stopped: the top-up may have been sent
            logger.error("an earlier attempt of this run stopped after taking the top-up lease", scheduled_time=run.key)
            return self._top_up_done(key, run, decision.result, Outcome.TOPUP_UNKNOWN, _STOPPED, give_back=False)
        result = decision.result.model_copy(update={"outcome": Outcome(take.outcome), "detail": take.detail})
        return Decision(result=result, alerts=self._top_up_alerts(result), top_up=TopUpPlan(lease_version=0, done=True))

    def _top_up_alerts(self, result: RunResult) -> list[PendingAlert]:
        threshold = f"{self.settings.threshold:.2f}"
        cooldown = self.settings.topup_cooldown_minutes
        if result.outcome is Outcome.TOPUP_SUCCEEDED:
            return [
                PendingAlert(
                    subject="Vonage top-up sent",
                    message=f"The balance was {result.balance or 0:.2f} EUR, below {threshold} EUR: one top-up was "
                    "sent and accepted. The balance shows it within minutes.",
                )
            ]
        if result.outcome is Outcome.TOPUP_REFUSED:
            subject, message = "Vonage top-up refused", f"Vonage refused the top-up: {result.detail}."
        elif result.outcome is Outcome.TOPUP_UNKNOWN:
            subject = "Vonage top-up outcome unknown"
            message = (
                f"The top-up request may have been processed ({result.detail}). It is not retried; the lease is "
                f"kept for {cooldown} minutes and later runs confirm from the balance."
            )
        else:
            subject = "Vonage top-up failed"
            message = (
                f"The top-up request was not processed ({result.detail}). It is not retried by this run; the "
                "lease is given back, so the next run can top up."
            )
        return [PendingAlert(subject=subject, message=message, opens_episode=True)]

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

    # -- after the decision: each step safe to repeat -----------------------------------------------

    def _finish(self, key: str, run: ScheduledRun, now: float, decision: Decision) -> RunResult:
        """Metric, history row, alerts, end of episode, finished: in that order."""
        result = decision.result
        metrics.add_metric(name=OUTCOME_METRICS[result.outcome], unit=MetricUnit.Count, value=1)
        self.store.record_history(key, run.key, result.model_dump(), now)
        logger.info(
            "balance check decided", outcome=str(result.outcome), balance=result.balance, scheduled_time=run.key
        )
        if decision.confirm_unknown:
            self.store.confirm_unknown(key)
            logger.info("balance back above the threshold after an UNKNOWN top-up", balance=result.balance)
        for alert in decision.alerts:
            if alert.kind and not self.store.should_alert(key, alert.kind, now, token=run.key):
                logger.info("alert suppressed by the alert cooldown", kind=alert.kind)
                continue
            if alert.opens_episode:
                self.store.note_alert(key, "topup", now)
            self.alerts.send(alert.subject, alert.message)
        if decision.end_episode:
            self.store.end_episode(key)
        self.store.mark_finished(key, run.key)
        return result


_STOPPED = "an attempt stopped during the top-up"
_NO_TRX = "no topup_trx configured"
