"""A primary account funds its subaccounts: one listing a tick, a balance transfer per need, reconciled.

A fleet account whose settings hold a `subaccounts` rule is a primary. Each of its ticks:
1. lists its subaccounts with their balances (one call, however many), and settles the transfers
   an earlier tick left unknown: each transfer carries its decision's id in its `reference`, so the
   transfer listing says whether it happened (found: done; not found once the listing is current:
   not done, and the need is decided again);
2. decides the primary's own balance, with what its low subaccounts need on top of its threshold,
   so the primary is topped up (its own rules) before it would fund them into the red;
3. funds its low subaccounts in a stated order (the furthest below its threshold first, then by
   api_key), each only while the primary stays at or above its own threshold after it.

A transfer moves money, so it follows the top-up's rules (account_api.balance): a lease per
subaccount taken by a conditional write, a cooldown, a daily cap, the POST sent once and never
retried. The subaccount is read again just before (one GET): one suspended or changed since the
listing is not funded. Shared-balance and suspended subaccounts are reported, never funded.
A tick's funding is claimed like a run, so a duplicate delivery lists nothing and sends nothing.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from . import aws_clients, deadline, errors
from .balance import Alerts, BalanceWatcher, RunResult, ScheduledRun
from .client import AccountClient
from .models import Subaccount, SubaccountListing
from .observability import MetricUnit, logger, metrics
from .registry import FleetAccount, SubaccountDefaults, SubaccountsRule, SubaccountState, subaccount_state
from .watcher_store import PENDING, Take, WatcherStore

# A transfer whose answer was lost may still be in flight at Vonage for the length of a request;
# the transfer listing is current for it only after this. Ticks come 5-60 minutes apart.
TRANSFER_SETTLE_SECONDS = 120
# The transfer listing is asked from this long before the lease was taken (clocks disagree).
LISTING_WINDOW_MARGIN_SECONDS = 300
# A funding run stops deciding transfers when less than this is left of the invocation.
DEADLINE_MARGIN_SECONDS = 10.0


class FundingOutcome(StrEnum):
    TRANSFER_SUCCEEDED = "transfer_succeeded"
    TRANSFER_CONFIRMED = "transfer_confirmed"  # its answer was lost; the listing shows its reference
    TRANSFER_NOT_DONE = "transfer_not_done"  # not in the current listing: the need is decided again
    TRANSFER_UNKNOWN = "transfer_unknown"  # not known yet: the lease is kept; the next tick settles it
    TRANSFER_FAILED = "transfer_failed"  # refused by Vonage: nothing moved
    WAITING_FOR_PRIMARY = "waiting_for_primary"  # the primary cannot cover it and stay above its threshold
    SKIPPED_COOLDOWN = "skipped_cooldown"
    SKIPPED_DAILY_CAP = "skipped_daily_cap"
    SKIPPED_CHANGED = "skipped_changed"  # suspended, shared or funded since the listing
    DRY_RUN = "dry_run"
    TRANSFERS_OFF = "transfers_off"
    DEFERRED = "deferred"  # the invocation ran out of time: the next tick decides


class SubaccountReport(BaseModel):
    """One subaccount as a tick saw it, and what was decided for it (if anything)."""

    api_key: str
    name: str = ""
    state: SubaccountState
    balance: float | None = None
    threshold_eur: float | None = None
    outcome: FundingOutcome | None = None
    amount: float | None = None
    detail: str = ""
    # the tick this decision belongs to, when an earlier one made it and died before recording it
    decided_at: str | None = None


class FundingReport(BaseModel):
    primary: str
    scheduled_time: str
    enabled: bool = True  # False: the primary is not provisioned for the Subaccounts API (403)
    duplicate: bool = False
    counts: dict[str, int] = Field(default_factory=dict)  # subaccounts by state
    decisions: list[SubaccountReport] = Field(default_factory=list)  # the ones a decision was made for
    reserve_eur: float = 0.0
    transfers_sent: int = 0


def transfer_reference(run_key: str, subaccount: str) -> str:
    """The decision's id, carried by the transfer: one decision per subaccount and tick."""
    return f"account-ops {run_key} {subaccount}"


class _LeaseSettings(BaseModel):
    """The transfer lease's rules, in the shape WatcherStore reads (its 'top-up' is our transfer)."""

    model_config = ConfigDict(frozen=True)

    state_table: str
    history_table: str
    history_ttl_days: int
    topup_cooldown_minutes: int
    alert_cooldown_minutes: int
    daily_topup_cap: int


class _Candidate(BaseModel):
    sub: Subaccount
    settings: SubaccountDefaults
    lease_version: int


class SubaccountFunder:
    """The subaccount half of a primary's tick (the primary's own half is its BalanceWatcher)."""

    def __init__(self, primary: FleetAccount, watcher: BalanceWatcher) -> None:
        if primary.settings.subaccounts is None:
            raise ValueError(f"{primary.api_key} is not a primary (no subaccounts rule)")
        self.primary = primary
        self.rule: SubaccountsRule = primary.settings.subaccounts
        self.watcher = watcher
        self.store = watcher.store
        self.alerts = Alerts(watcher.settings.alert_topic_arn, primary.label)

    # -- the tick ----------------------------------------------------------------------------------

    def run(self, run: ScheduledRun, now: float | None = None) -> tuple[RunResult, FundingReport]:
        now = time.time() if now is None else now
        key = self.primary.api_key
        report = FundingReport(primary=key, scheduled_time=run.key)
        # open transfers settled this tick: closed only once their history rows are written, so a
        # run that dies in between leaves them open and the next one records them
        self._closing: set[str] = set()
        # decisions of earlier ticks found recorded on their lease but not in the history: written
        # for their own tick, whatever this tick decides
        self._late: list[SubaccountReport] = []
        claim = self.store.claim_run(f"{key}/subaccounts", run.key, now)
        if claim.state != "claimed":  # another delivery of this tick funds (or funded) them
            return self.watcher.run(run, now), report.model_copy(update={"duplicate": True})
        try:
            try:
                listing = self.watcher.account.call(lambda c: c.list_subaccounts())
            except errors.SubaccountsNotEnabledError as exc:
                result = self.watcher.run(run, now)
                self._not_enabled(run, now, exc)
                self.store.mark_finished(f"{key}/subaccounts", run.key)
                return result, report.model_copy(update={"enabled": False})
            except Exception as exc:
                logger.error("the subaccount listing failed: no transfer this attempt", error=type(exc).__name__)
                metrics.add_metric(name="SubaccountListingFailed", unit=MetricUnit.Count, value=1)
                self.watcher.run(run, now)  # the primary's own balance is still decided
                raise
            client = self.watcher.account.client()
            rows, settled = self._settle_open_transfers(run, now, client)
            rows, candidates = self._classify(listing, now, rows, settled)
            reserve = 0.0 if self.watcher.settings.topups_off else sum(c.settings.transfer_eur for c in candidates)
            result = self.watcher.run(run, now, reserve=reserve)
            decisions, sent = self._fund(run, now, listing, candidates, client)
        except Exception:
            self.store.release_claim(f"{key}/subaccounts", run.key, claim.token)  # the retry lists again
            raise
        by_key = {r.api_key: r for r in rows} | {d.api_key: d for d in decisions}
        report = report.model_copy(
            update={
                "counts": _count(by_key.values()),
                "decisions": [r for r in by_key.values() if r.outcome is not None],
                "reserve_eur": reserve,
                "transfers_sent": sent,
            }
        )
        for row in [*report.decisions, *self._late]:  # a late fact wins over a retry's skip of its tick
            self.store.record_history(
                row.api_key,
                row.decided_at or run.key,
                {"outcome": str(row.outcome), "balance": row.balance, "detail": row.detail},
                now,
            )
        for sub in sorted(self._closing):
            self._close(sub)
        self.store.mark_finished(f"{key}/subaccounts", run.key)
        logger.info(
            "subaccounts decided",
            primary=key,
            subaccounts=len(listing.subaccounts),
            counts=report.counts,
            transfers_sent=sent,
            reserve_eur=reserve,
        )
        return result, report

    # -- step 1: settle what earlier ticks left unknown, and read the need ---------------------------

    def _settle_open_transfers(
        self, run: ScheduledRun, now: float, client: AccountClient
    ) -> tuple[list[SubaccountReport], set[str]]:
        """Each open transfer (a lease taken, its outcome not known) settled by its reference. Returns
        what was settled, and the subaccounts whose transfer is still unknown (not funded again)."""
        open_transfers = self._open_transfers()
        if not open_transfers:
            return [], set()
        pending: dict[str, tuple[str, Take]] = {}
        for sub, run_key in open_transfers.items():
            take = self._leases(sub).lease(self._lease_key(sub)).take_of(run_key)
            if take is None or not take.pending:
                # a lease never taken (nothing was sent), or a take whose outcome was recorded by a
                # run that died before its history row: that row is written now, for its own tick
                self._closing.add(sub)
                if take is not None and take.outcome in set(FundingOutcome):
                    self._late.append(
                        SubaccountReport(
                            api_key=sub,
                            state=SubaccountState.LOW,
                            outcome=FundingOutcome(take.outcome),
                            detail=take.detail,
                            decided_at=run_key,
                        )
                    )
                continue
            pending[sub] = (run_key, take)
        if not pending:
            return [], set()
        start = min(t.at for _, t in pending.values()) - LISTING_WINDOW_MARGIN_SECONDS
        try:
            references = {t.reference for t in client.list_balance_transfers(_utc(start))}
        except errors.AccountApiError as exc:
            # stays unknown: the lease holds, so nothing is sent twice; this is when to alert
            logger.error("the transfer listing failed: open transfers stay unknown", error=type(exc).__name__)
            why = f"the transfer listing failed ({type(exc).__name__})"
            return [self._unknown_alert(run, now, sub, why) for sub in pending], set(pending)
        settled = {sub: self._settle(now, sub, run_key, take, references) for sub, (run_key, take) in pending.items()}
        return [r for r in settled.values() if r is not None], {sub for sub, r in settled.items() if r is None}

    def _settle(self, now: float, sub: str, run_key: str, take: Take, references: set[str]) -> SubaccountReport | None:
        leases = self._leases(sub)
        if transfer_reference(run_key, sub) in references:
            leases.record_take(
                self._lease_key(sub),
                run_key,
                FundingOutcome.TRANSFER_CONFIRMED,
                "found by its reference",
                give_back=False,
            )
            self._closing.add(sub)
            logger.info("an unknown transfer was found by its reference: done", subaccount=sub, decided_at=run_key)
            return SubaccountReport(
                api_key=sub,
                state=SubaccountState.LOW,
                outcome=FundingOutcome.TRANSFER_CONFIRMED,
                detail=f"decided at {run_key}",
            )
        if now - take.at < TRANSFER_SETTLE_SECONDS:
            return None  # possibly still in flight: not yet
        leases.record_take(
            self._lease_key(sub),
            run_key,
            FundingOutcome.TRANSFER_NOT_DONE,
            "not in the transfer listing",
            give_back=True,
        )
        self._closing.add(sub)
        logger.info("an unknown transfer is not in the listing: not done, decided again", subaccount=sub)
        return SubaccountReport(
            api_key=sub,
            state=SubaccountState.LOW,
            outcome=FundingOutcome.TRANSFER_NOT_DONE,
            detail=f"decided at {run_key}",
        )

    def _classify(
        self, listing: SubaccountListing, now: float, settled: list[SubaccountReport], still_open: set[str]
    ) -> tuple[list[SubaccountReport], list[_Candidate]]:
        rows: dict[str, SubaccountReport] = {}
        candidates: list[_Candidate] = []
        for sub in listing.subaccounts:
            settings = self.rule.settings_for(sub.api_key)
            row = SubaccountReport(
                api_key=sub.api_key,
                name=sub.name,
                state=subaccount_state(sub, settings),
                balance=sub.balance,
                threshold_eur=settings.threshold_eur if settings else None,
            )
            rows[sub.api_key] = row
            if row.state is not SubaccountState.LOW or settings is None:
                continue
            if sub.api_key in still_open:
                continue  # its open transfer is not settled: its lease holds
            lease = self._leases(sub.api_key, settings).lease(self._lease_key(sub.api_key))
            today = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")
            if lease.lease_until > now:
                rows[sub.api_key] = row.model_copy(update={"outcome": FundingOutcome.SKIPPED_COOLDOWN})
            elif lease.topups_on(today) >= settings.daily_transfer_cap:
                rows[sub.api_key] = row.model_copy(update={"outcome": FundingOutcome.SKIPPED_DAILY_CAP})
            else:
                candidates.append(_Candidate(sub=sub, settings=settings, lease_version=lease.version))
        for row in settled:  # what settling found, with what the listing says now
            listed = rows.get(row.api_key)
            rows[row.api_key] = (
                row if listed is None else listed.model_copy(update={"outcome": row.outcome, "detail": row.detail})
            )
        # the stated order: the furthest below its threshold first, then by api_key
        candidates.sort(key=lambda c: ((c.sub.balance or 0.0) - c.settings.threshold_eur, c.sub.api_key))
        return list(rows.values()), candidates

    # -- step 3: fund, in order, while the primary can --------------------------------------------

    def _fund(
        self,
        run: ScheduledRun,
        now: float,
        listing: SubaccountListing,
        candidates: list[_Candidate],
        client: AccountClient,
    ) -> tuple[list[SubaccountReport], int]:
        settings = self.watcher.settings
        balance = listing.primary.balance or 0.0
        available = listing.primary.available
        decisions: list[SubaccountReport] = []
        sent = 0
        for candidate in candidates:
            sub, amount = candidate.sub, candidate.settings.transfer_eur
            row = SubaccountReport(
                api_key=sub.api_key,
                name=sub.name,
                state=SubaccountState.LOW,
                balance=sub.balance,
                threshold_eur=candidate.settings.threshold_eur,
                amount=amount,
            )
            remaining = deadline.remaining()
            if remaining is not None and remaining < DEADLINE_MARGIN_SECONDS:
                decisions.append(row.model_copy(update={"outcome": FundingOutcome.DEFERRED}))
                continue
            if settings.topups_off:
                decisions.append(
                    self._low_alerted(run, now, row, FundingOutcome.TRANSFERS_OFF, "transfers are off for this primary")
                )
                continue
            if amount > available or balance - amount < settings.threshold:
                detail = (
                    f"the primary's balance {balance:.2f} EUR less {amount:.2f} EUR would be below its threshold "
                    f"of {settings.threshold:.2f} EUR"
                )
                decisions.append(self._low_alerted(run, now, row, FundingOutcome.WAITING_FOR_PRIMARY, detail))
                continue
            if settings.dry_run or run.dry_run:
                decisions.append(
                    self._low_alerted(run, now, row, FundingOutcome.DRY_RUN, f"would transfer {amount:.2f} EUR")
                )
                continue
            outcome, detail = self._transfer(run, now, candidate, client)
            decisions.append(row.model_copy(update={"outcome": outcome, "detail": detail}))
            if outcome in (
                FundingOutcome.TRANSFER_SUCCEEDED,
                FundingOutcome.TRANSFER_CONFIRMED,
                FundingOutcome.TRANSFER_UNKNOWN,
            ):
                sent += 1
                balance, available = balance - amount, available - amount  # an unknown one counts as spent
        return decisions, sent

    def _transfer(
        self, run: ScheduledRun, now: float, candidate: _Candidate, client: AccountClient
    ) -> tuple[FundingOutcome, str]:
        sub, amount = candidate.sub, candidate.settings.transfer_eur
        leases = self._leases(sub.api_key, candidate.settings)
        lease_key = self._lease_key(sub.api_key)
        fresh = client.get_subaccount(sub.api_key)  # suspended, shared or funded since the listing?
        if fresh.suspended or fresh.shares_balance or (fresh.balance or 0.0) >= candidate.settings.threshold_eur:
            why = (
                "suspended" if fresh.suspended else "shares the primary's balance" if fresh.shares_balance else "funded"
            )
            logger.info("subaccount changed since the listing: not funded", subaccount=sub.api_key, why=why)
            return FundingOutcome.SKIPPED_CHANGED, f"{why} since the listing"
        self._note_open(sub.api_key, run.key)  # first: a transfer sent is always found again
        refusal = leases.take_lease(lease_key, run.key, now, seen_version=candidate.lease_version)
        if refusal is not None:
            self._closing.add(sub.api_key)
            return (FundingOutcome.SKIPPED_DAILY_CAP if refusal == "cap" else FundingOutcome.SKIPPED_COOLDOWN), ""
        reference = transfer_reference(run.key, sub.api_key)
        metrics.add_metric(name="SubaccountTransferSent", unit=MetricUnit.Count, value=1)
        logger.info("sending one balance transfer", subaccount=sub.api_key, amount=amount, reference=reference)
        try:
            self.watcher.account.call(lambda c: c.transfer_balance(sub.api_key, amount, reference), retry_on_401=False)
        except errors.AccountApiError as exc:
            if not errors.outcome_unknown(exc):  # refused: nothing moved; the lease is given back
                leases.record_take(lease_key, run.key, FundingOutcome.TRANSFER_FAILED, exc.reason[:200], give_back=True)
                self._closing.add(sub.api_key)
                self._alert_once(
                    run,
                    now,
                    sub.api_key,
                    "transfer_failed",
                    "Subaccount transfer refused",
                    f"Vonage refused a transfer of {amount:.2f} EUR to subaccount {sub.api_key}: {exc.reason}.",
                )
                return FundingOutcome.TRANSFER_FAILED, exc.reason[:200]
            return self._after_lost_answer(run, now, sub.api_key, client, exc)
        leases.record_take(lease_key, run.key, FundingOutcome.TRANSFER_SUCCEEDED, "", give_back=False)
        self._closing.add(sub.api_key)
        return FundingOutcome.TRANSFER_SUCCEEDED, ""

    def _after_lost_answer(
        self, run: ScheduledRun, now: float, sub: str, client: AccountClient, exc: errors.AccountApiError
    ) -> tuple[FundingOutcome, str]:
        """The answer was lost: the listing may already show the reference (found means done). Not
        found now proves nothing (it may be in flight): the lease is kept and the next tick settles it."""
        logger.error("balance transfer did not report success", subaccount=sub, error=type(exc).__name__)
        try:
            references = {
                t.reference
                for t in client.list_balance_transfers(_utc(now - LISTING_WINDOW_MARGIN_SECONDS), subaccount=sub)
            }
        except errors.AccountApiError:
            references = set()
        take = self._leases(sub).lease(self._lease_key(sub)).take_of(run.key) or Take(PENDING, at=now)
        row = self._settle(now, sub, run.key, take, references)
        if row is not None and row.outcome is FundingOutcome.TRANSFER_CONFIRMED:
            return FundingOutcome.TRANSFER_CONFIRMED, "its answer was lost; found by its reference"
        metrics.add_metric(name="SubaccountTransferUnknown", unit=MetricUnit.Count, value=1)
        return FundingOutcome.TRANSFER_UNKNOWN, f"{type(exc).__name__}; the next tick settles it by its reference"

    # -- alerts ----------------------------------------------------------------------------------

    def _low_alerted(
        self, run: ScheduledRun, now: float, row: SubaccountReport, outcome: FundingOutcome, detail: str
    ) -> SubaccountReport:
        self._alert_once(
            run,
            now,
            row.api_key,
            str(outcome),
            f"Subaccount {row.api_key} low: {row.balance or 0:.2f} EUR",
            f"Subaccount {row.api_key} ({row.name}) has {row.balance or 0:.2f} EUR, below its threshold of "
            f"{row.threshold_eur or 0:.2f} EUR. Not funded: {detail}.",
        )
        return row.model_copy(update={"outcome": outcome, "detail": detail})

    def _unknown_alert(self, run: ScheduledRun, now: float, sub: str, why: str) -> SubaccountReport:
        metrics.add_metric(name="SubaccountTransferUnknown", unit=MetricUnit.Count, value=1)
        self._alert_once(
            run,
            now,
            sub,
            "transfer_unknown",
            "Subaccount transfer outcome unknown",
            f"A balance transfer to subaccount {sub} may or may not have happened, and {why}. It is not sent "
            "again: its lease is kept until a transfer listing settles it by its reference.",
        )
        return SubaccountReport(
            api_key=sub, state=SubaccountState.LOW, outcome=FundingOutcome.TRANSFER_UNKNOWN, detail=why
        )

    def _not_enabled(self, run: ScheduledRun, now: float, exc: errors.AccountApiError) -> None:
        logger.warning("subaccounts are not enabled for this primary at Vonage (403)", primary=self.primary.api_key)
        metrics.add_metric(name="SubaccountsNotEnabled", unit=MetricUnit.Count, value=1)
        self._alert_once(
            run,
            now,
            self.primary.api_key,
            "subaccounts_not_enabled",
            "Subaccounts not enabled",
            f"Vonage answered that this account is not provisioned for the Subaccounts API ({exc.reason}). Its "
            "subaccounts are not watched until Vonage enables it, or until its subaccounts rule is removed.",
        )

    def _alert_once(self, run: ScheduledRun, now: float, sub: str, kind: str, subject: str, message: str) -> None:
        if self.store.should_alert(self._lease_key(sub), kind, now, token=run.key):
            self.alerts.send(subject, message)

    # -- state: leases and the open transfers ------------------------------------------------------

    def _lease_key(self, sub: str) -> str:
        return f"{self.primary.api_key}/{sub}"

    def _leases(self, sub: str, settings: SubaccountDefaults | None = None) -> WatcherStore:
        s = settings or self.rule.settings_for(sub) or self.rule.defaults
        w = self.watcher.settings
        return WatcherStore(
            _LeaseSettings(
                state_table=w.state_table,
                history_table=w.history_table,
                history_ttl_days=w.history_ttl_days,
                topup_cooldown_minutes=s.transfer_cooldown_minutes,
                alert_cooldown_minutes=w.alert_cooldown_minutes,
                daily_topup_cap=s.daily_transfer_cap,
            )
        )

    @property
    def _open_pk(self) -> dict[str, Any]:
        return {"pk": {"S": f"transfers#{self.primary.api_key}"}}

    def _open_transfers(self) -> dict[str, str]:
        """Subaccount -> the tick whose transfer is not settled (one item for the primary: a tick
        reads it once, not a lease per subaccount)."""
        item = (
            aws_clients.client("dynamodb")
            .get_item(TableName=self.watcher.settings.state_table, Key=self._open_pk, ConsistentRead=True)
            .get("Item")
            or {}
        )
        return {k: v["S"] for k, v in item.get("open", {}).get("M", {}).items()}

    def _note_open(self, sub: str, run_key: str) -> None:
        ddb = aws_clients.client("dynamodb")
        table = self.watcher.settings.state_table
        ddb.update_item(  # the map first exists, then the entry is set (one expression cannot do both)
            TableName=table,
            Key=self._open_pk,
            UpdateExpression="SET #open = if_not_exists(#open, :empty)",
            ExpressionAttributeNames={"#open": "open"},
            ExpressionAttributeValues={":empty": {"M": {}}},
        )
        ddb.update_item(
            TableName=table,
            Key=self._open_pk,
            UpdateExpression="SET #open.#sub = :run",
            ExpressionAttributeNames={"#open": "open", "#sub": sub},
            ExpressionAttributeValues={":run": {"S": run_key}},
        )

    def _close(self, sub: str) -> None:
        aws_clients.client("dynamodb").update_item(
            TableName=self.watcher.settings.state_table,
            Key=self._open_pk,
            UpdateExpression="REMOVE #open.#sub",
            ExpressionAttributeNames={"#open": "open", "#sub": sub},
        )


def _count(rows: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[str(row.state)] = counts.get(str(row.state), 0) + 1
    return dict(sorted(counts.items()))


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC).replace(microsecond=0)
