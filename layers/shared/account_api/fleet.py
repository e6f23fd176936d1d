"""The fleet's tick: a dispatcher fans one message per account out on SQS; the watcher decides
each account from its message, one at a time, with that account's settings and credentials.

Exactly-once per account and tick does not come from the queue (SQS delivers at least once, the
Scheduler may fire a tick twice, a dispatcher that died half-way is retried and sends again): it
comes from the watcher's run claim, keyed by the account's api_key and the tick's scheduled time
(account_api.watcher_store). Every message is safe to deliver again; the dispatcher never needs
to know what it sent before.

The stack's own account (its secret, its parameters, its metrics and alarms) is the fleet's first
account. The scheduled run that dispatches decides it itself, as 1.1.0 did, after the messages
are sent: a stack updated from 1.1.0 keeps its secret, lease, history and pause, with nothing to
migrate, and no other account waits for it. A registry account is re-read when its message is
evaluated, so one removed or disabled after dispatch is not evaluated.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import aws_clients
from .balance import Alerts, BalanceWatcher, RunResult, ScheduledRun, WatcherSettings, WatcherStore
from .config import ConfigurationError, model_from_environment
from .credentials import VonageAccount
from .observability import logger, metrics
from .registry import FleetAccount, Registry, TopUpMode
from .subaccounts import SubaccountFunder

SQS_BATCH_LIMIT = 10  # SendMessageBatch takes at most ten entries
SEND_ATTEMPTS = 3  # entries SQS refused are sent again this many times before the tick fails
# A fleet account's secret is read at most once an hour per warm process, not once a tick: at
# 1,000 accounts the reads would cost $0.04 an account a month. A rotated secret is still seen at
# once: a 401 re-reads it (VonageAccount.call).
FLEET_CREDENTIALS_CACHE_SECONDS = 3600


class DispatchError(Exception):
    """Some accounts' messages could not be sent: the tick fails, and its retry sends them all again
    (the accounts already decided answer `duplicate`)."""


class FleetSettings(BaseModel):
    """Where the fleet lives; both empty means no fleet (the stack's account alone, as in 1.1.0)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    accounts_table: str = ""
    queue_url: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.accounts_table and self.queue_url)

    @classmethod
    def from_environment(cls, env: dict[str, str] | None = None) -> FleetSettings:
        names = {"accounts_table": "ACCOUNTS_TABLE", "queue_url": "FLEET_QUEUE_URL"}
        return model_from_environment(cls, names, env, "fleet settings")


class TickMessage(BaseModel):
    """One account's share of one tick."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    account: str = Field(min_length=1, max_length=64)  # a registry account's api_key
    scheduled_time: str = Field(min_length=1)
    execution_id: str = ""
    dry_run: bool = False

    def run(self) -> ScheduledRun:
        return ScheduledRun.from_event(
            {"scheduledTime": self.scheduled_time, "executionId": self.execution_id, "dryRun": self.dry_run}
        )


class DispatchResult(BaseModel):
    scheduled_time: str
    accounts: int  # messages sent: one per watched registry account


def tick_messages(run: ScheduledRun, accounts: Iterable[FleetAccount]) -> list[TickMessage]:
    return [
        TickMessage(account=a.api_key, scheduled_time=run.key, execution_id=run.execution_id, dry_run=run.dry_run)
        for a in accounts
        if a.watched
    ]


def dispatch(run: ScheduledRun, registry: Registry, queue_url: str) -> DispatchResult:
    """Send one message per watched account, in batches of ten; entries SQS refuses are sent again.
    Raises DispatchError when some are still refused, so the whole tick is retried."""
    messages = tick_messages(run, registry.watched_for_tick())
    sqs = aws_clients.client("sqs")
    for start in range(0, len(messages), SQS_BATCH_LIMIT):
        pending = {str(i): m for i, m in enumerate(messages[start : start + SQS_BATCH_LIMIT])}
        for _ in range(SEND_ATTEMPTS):
            answer = sqs.send_message_batch(
                QueueUrl=queue_url,
                Entries=[{"Id": i, "MessageBody": m.model_dump_json()} for i, m in pending.items()],
            )
            pending = {f["Id"]: pending[f["Id"]] for f in answer.get("Failed", [])}
            if not pending:
                break
        if pending:
            raise DispatchError(
                f"{len(pending)} account messages of the tick {run.key} were refused by SQS: the tick is retried"
            )
    logger.info("tick dispatched", scheduled_time=run.key, accounts=len(messages))
    # one metric for the whole fleet, whatever its size (an account not evaluated: the DLQ's alarm)
    metrics.add_metric(name="FleetAccountsDispatched", unit=MetricUnit.Count, value=len(messages))
    return DispatchResult(scheduled_time=run.key, accounts=len(messages))


def balance_state(balance: float | None, settings: WatcherSettings) -> str:
    """How the log line and the "needing attention" query name a fleet account's balance."""
    if balance is None:
        return "unknown"
    if balance < settings.critical:
        return "critical"
    return "low" if balance < settings.threshold else "ok"


def account_settings(stack: WatcherSettings, account: FleetAccount) -> WatcherSettings:
    """The stack's parameters, overridden by what the registry sets for this account. The stack's
    dry run wins over an account's "live": a stack deployed as a dry run never moves money."""
    s = account.settings
    return stack.model_copy(
        update={
            "threshold": s.threshold_eur if s.threshold_eur is not None else stack.threshold,
            "critical": s.critical_eur if s.critical_eur is not None else stack.critical,
            "topup_cooldown_minutes": s.topup_cooldown_minutes or stack.topup_cooldown_minutes,
            "alert_cooldown_minutes": s.alert_cooldown_minutes or stack.alert_cooldown_minutes,
            "daily_topup_cap": s.daily_topup_cap if s.daily_topup_cap is not None else stack.daily_topup_cap,
            "dry_run": stack.dry_run or s.topup_mode == TopUpMode.DRY_RUN,
            "topups_off": s.topup_mode == TopUpMode.OFF,
            "account_label": account.label,
            "topup_trx_secret_arn": None,  # the stack's separate trx secret is the stack account's own
        }
    )


class FleetWatcher:
    """Evaluates tick messages: the stack's account with the stack's watcher, a registry account
    with a watcher of its own (its settings, its secret), kept while its registry item is unchanged."""

    def __init__(
        self,
        stack_watcher: BalanceWatcher,
        registry: Registry,
        vonage_account: Callable[[str], VonageAccount],
    ) -> None:
        self.stack_watcher = stack_watcher
        self.registry = registry
        self.vonage_account = vonage_account  # secret ARN -> the Account API through that secret
        self._watchers: dict[str, tuple[int, BalanceWatcher]] = {}

    @classmethod
    def for_stack(cls, stack_watcher: BalanceWatcher, registry_table: str) -> FleetWatcher:
        def vonage_account(secret_arn: str) -> VonageAccount:
            return stack_watcher.account.through(secret_arn, max_age=FLEET_CREDENTIALS_CACHE_SECONDS)

        return cls(stack_watcher, Registry(registry_table), vonage_account)

    def evaluate(self, message: TickMessage, now: float | None = None) -> RunResult | None:
        """The account's decision for the tick; None when it is no longer watched."""
        run = message.run()
        account = self.registry.get(message.account)
        if account is None or not account.watched:
            logger.info(
                "account removed or disabled since the tick was dispatched: not evaluated", account=message.account
            )
            return None
        # the thread's own keys: a batch's accounts are decided at the same time, in threads
        logger.thread_safe_append_keys(account=account.api_key, scheduled_time=run.key)
        try:
            watcher = self._watcher(account)
            if account.is_primary:  # its subaccounts listed, and funded, in the same tick
                result, funding = SubaccountFunder(account, watcher).run(run, now)
                result = result.model_copy(update={"subaccounts": funding.model_dump(mode="json")})
            else:
                result = watcher.run(run, now)
            state = balance_state(result.balance, watcher.settings)
            if state == "critical":  # one count for the fleet, never a metric of the account's own
                metrics.add_metric(name="FleetAccountsCritical", unit=MetricUnit.Count, value=1)
            logger.info(
                "fleet account decided", outcome=str(result.outcome), balance=result.balance, balance_state=state
            )
        finally:
            logger.thread_safe_remove_keys(["account", "scheduled_time"])
        return result

    def _watcher(self, account: FleetAccount) -> BalanceWatcher:
        cached = self._watchers.get(account.api_key)
        if cached is not None and cached[0] == account.version:
            return cached[1]
        settings = account_settings(self.stack_watcher.settings, account)
        watcher = BalanceWatcher(
            settings,
            self.vonage_account(account.secret_arn),
            WatcherStore(settings),
            Alerts(settings.alert_topic_arn, account.label),
        )
        self._watchers[account.api_key] = (account.version, watcher)
        return watcher

    def process_sqs_batch(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        """An SQS batch with partial failures: a record that fails (wrong credentials, Vonage 5xx, a
        deadline) is reported alone and comes back after the visibility timeout, then goes to the
        dead-letter queue; the other records of the batch are done. The batch's accounts are
        decided at the same time, each in a thread (their calls wait on the network, not the CPU):
        a batch takes as long as its slowest account, not the sum of them."""
        # Imported here, not with the module: 0.05-0.1 s (python -X importtime) a scheduled run's cold
        # start never needs
        import asyncio

        from aws_lambda_powertools.utilities.batch import (
            AsyncBatchProcessor,
            EventType,
            async_process_partial_response,
        )

        processor = AsyncBatchProcessor(event_type=EventType.SQS)

        async def record_handler(record: Any) -> dict[str, Any] | None:
            return await asyncio.to_thread(decide, record)

        def decide(record: Any) -> dict[str, Any] | None:
            try:
                message = TickMessage.model_validate(json.loads(record.body))
            except (ValueError, ValidationError):
                # not ours: failing it would only send it round again until the dead-letter queue
                logger.error("a queue message that is not a tick message was dropped", message_id=record.message_id)
                return None
            try:
                result = self.evaluate(message)
            except Exception as exc:
                # the account's line for the "needing attention" query, and one count for the fleet
                logger.warning(
                    "fleet account failed", account=message.account, outcome="failed", error=type(exc).__name__
                )
                metrics.add_metric(name="FleetAccountsFailed", unit=MetricUnit.Count, value=1)
                raise
            return result.model_dump(mode="json") if result else None

        answer = async_process_partial_response(
            event=event, record_handler=record_handler, processor=processor, context=context
        )
        return dict(answer)  # {"batchItemFailures": [{"itemIdentifier": ...}]}: what Lambda reads


def is_sqs_batch(event: dict[str, Any]) -> bool:
    records = event.get("Records")
    return isinstance(records, list) and bool(records) and records[0].get("eventSource") == "aws:sqs"


class Tick:
    """What the watcher function does with each event it gets: a scheduled run dispatches the fleet's
    messages, then decides the stack's own account; an SQS batch decides registry accounts."""

    def __init__(self, stack_watcher: BalanceWatcher, fleet: FleetSettings) -> None:
        self.stack_watcher = stack_watcher
        self.fleet = fleet
        self.fleet_watcher = FleetWatcher.for_stack(stack_watcher, fleet.accounts_table) if fleet.enabled else None

    @classmethod
    def from_environment(cls) -> Tick:
        return cls(BalanceWatcher.from_environment(), FleetSettings.from_environment())

    def scheduled(self, event: dict[str, Any]) -> dict[str, Any]:
        run = ScheduledRun.from_event(event)
        logger.append_keys(scheduled_time=run.key)
        dispatched = None
        # An event that forces a dry run is the smoke test: it checks the deployment on the stack's
        # account and never claims the fleet's accounts' tick.
        if self.fleet_watcher is not None and not run.dry_run:
            # first, so that no registry account waits for the stack account's Vonage calls
            dispatched = dispatch(run, self.fleet_watcher.registry, self.fleet.queue_url).accounts
        answer = self.stack_watcher.run(run).model_dump(mode="json")
        if dispatched is not None:
            answer["fleet_dispatched"] = dispatched
        return answer

    def sqs_batch(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        if self.fleet_watcher is None:
            raise ConfigurationError("an SQS batch arrived but ACCOUNTS_TABLE / FLEET_QUEUE_URL are not set")
        logger.remove_keys(["scheduled_time"])  # a warm process's last scheduled run is not this batch's
        return self.fleet_watcher.process_sqs_batch(event, context)
