"""The balance watcher's state in DynamoDB: run claims, the top-up lease, alert claims, history.

Data access only: the decisions live in account_api.balance. Every write here is safe to repeat,
because each can be repeated (botocore retries a write whose answer was lost; Lambda and the
Scheduler retry a whole run):
- conditional writes carry a token unique to the writer, read back from a failed condition, so a
  retry recognises its own earlier write;
- the lease remembers which scheduled runs took it (`takes`), so a retry of a run that took it
  never takes it again, whatever happened in between;
- a take's outcome moves only from "pending" to a final value, once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from . import aws_clients, deadline
from .observability import logger
from .switch import TOPUP_SWITCH_KEY, TopUpSwitch, topup_switch_of

PENDING = "pending"
# How long the lease remembers a run's take: far longer than any retry of that run can come
# (the Scheduler's and Lambda's retry windows are 10 minutes each in template.yaml).
TAKE_MEMORY_SECONDS = 2 * 86400


class StoreSettings(Protocol):
    @property
    def state_table(self) -> str: ...
    @property
    def history_table(self) -> str: ...
    @property
    def history_ttl_days(self) -> int: ...
    @property
    def topup_cooldown_minutes(self) -> int: ...
    @property
    def alert_cooldown_minutes(self) -> int: ...
    @property
    def daily_topup_cap(self) -> int: ...


@dataclass
class RunClaim:
    state: Literal["claimed", "in_progress", "decided", "finished"]
    token: str = ""
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class Take:
    """One scheduled run's take of the lease, and what its top-up came to."""

    outcome: str
    detail: str = ""
    at: float = 0.0  # when the lease was taken

    @property
    def pending(self) -> bool:
        return self.outcome == PENDING


@dataclass
class Lease:
    """The top-up lease of one account, as read."""

    item: dict[str, Any] = field(default_factory=dict)

    @property
    def exists(self) -> bool:
        return bool(self.item)

    @property
    def version(self) -> int:
        return int(self.item.get("version", {}).get("N", "0"))

    @property
    def lease_until(self) -> float:
        return float(self.item.get("lease_until", {}).get("N", "0"))

    @property
    def last_outcome(self) -> str:
        return str(self.item.get("last_outcome", {}).get("S", ""))

    def topups_on(self, day: str) -> int:
        return int(self.item.get("topups_today", {}).get("N", "0")) if self.item.get("day", {}).get("S") == day else 0

    def take_of(self, run_key: str) -> Take | None:
        """The take of this scheduled run, if it took the lease (1.1.0 recorded only the last run)."""
        entry = self.item.get("takes", {}).get("M", {}).get(run_key)
        if entry is not None:
            values = entry.get("M", {})
            return Take(
                values.get("outcome", {}).get("S", PENDING),
                values.get("detail", {}).get("S", ""),
                float(values.get("at", {}).get("N", "0")),
            )
        if self.item.get("run", {}).get("S") == run_key:
            return Take(self.last_outcome or PENDING)
        return None

    def pending_takes(self) -> dict[str, Take]:
        """Every take whose outcome is not known yet, by run."""
        takes = {run: self.take_of(run) for run in self.item.get("takes", {}).get("M", {})}
        return {run: take for run, take in takes.items() if take is not None and take.pending}

    def recent_takes(self, now: float) -> dict[str, Any]:
        takes: dict[str, Any] = self.item.get("takes", {}).get("M", {})
        return {
            k: v
            for k, v in takes.items()
            if float(v.get("M", {}).get("at", {}).get("N", "0")) > now - TAKE_MEMORY_SECONDS
        }


class WatcherStore:
    def __init__(self, settings: StoreSettings) -> None:
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
            return bool(existing.get(token_attribute, {}).get("S") == token), existing
        return True, {}

    def _get(self, pk: str) -> dict[str, Any]:
        item: dict[str, Any] = (
            self.ddb.get_item(TableName=self.settings.state_table, Key={"pk": {"S": pk}}, ConsistentRead=True).get(
                "Item"
            )
            or {}
        )
        return item

    # -- the run: claimed, decided, finished --------------------------------------------------------

    def claim_run(self, account_key: str, run_key: str, now: float) -> RunClaim:
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
                "pk": {"S": _run_pk(account_key, run_key)},
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
            return RunClaim(state="decided", record={k: next(iter(v.values())) for k, v in existing.items()})
        return RunClaim(state="in_progress")

    def record_decision(self, account_key: str, run_key: str, outcome: str, decision_json: str) -> None:
        """The decision, before any of its effects: a retry carries it out instead of deciding again."""
        self.ddb.update_item(
            TableName=self.settings.state_table,
            Key={"pk": {"S": _run_pk(account_key, run_key)}},
            UpdateExpression="SET outcome = :o, decision = :d",
            ExpressionAttributeValues={":o": {"S": outcome}, ":d": {"S": decision_json}},
        )

    def mark_finished(self, account_key: str, run_key: str) -> None:
        self.ddb.update_item(
            TableName=self.settings.state_table,
            Key={"pk": {"S": _run_pk(account_key, run_key)}},
            UpdateExpression="SET finished = :t",
            ExpressionAttributeValues={":t": {"BOOL": True}},
        )

    def release_claim(self, account_key: str, run_key: str, token: str) -> None:
        """Give back a claim that decided nothing (the invocation failed): its retry decides."""
        try:
            self.ddb.delete_item(
                TableName=self.settings.state_table,
                Key={"pk": {"S": _run_pk(account_key, run_key)}},
                ConditionExpression="claim_token = :t AND attribute_not_exists(outcome)",
                ExpressionAttributeValues={":t": {"S": token}},
            )
        except Exception as exc:  # the claim then lapses when its invocation's deadline passes
            logger.warning("could not release the run claim", error=type(exc).__name__)

    # -- the operator's switch ----------------------------------------------------------------------

    def topup_switch(self) -> TopUpSwitch:
        return topup_switch_of(self._get(TOPUP_SWITCH_KEY) or None)

    # -- the top-up lease ---------------------------------------------------------------------------

    def lease(self, account_key: str) -> Lease:
        return Lease(self._get(f"lease#{account_key}"))

    def take_lease(
        self, account_key: str, run_key: str, now: float, *, seen_version: int | None = None
    ) -> Literal["cooldown", "cap"] | None:
        """Take the top-up lease for this run, or say why not. Conditional on the version read (or,
        with `seen_version`, the version the decision saw: a take by anyone since then means the
        need was met), so of concurrent runs exactly one wins."""
        current = self.lease(account_key)
        if seen_version is not None and current.version != seen_version:
            return "cooldown"
        if current.lease_until > now:
            return "cooldown"
        today = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")
        count = current.topups_on(today)
        if count >= self.settings.daily_topup_cap:
            return "cap"
        token = uuid.uuid4().hex
        takes = current.recent_takes(now)
        takes[run_key] = {"M": {"outcome": {"S": PENDING}, "at": {"N": str(now)}}}
        item = {
            "pk": {"S": f"lease#{account_key}"},
            "lease_until": {"N": str(now + self.settings.topup_cooldown_minutes * 60)},
            "day": {"S": today},
            "topups_today": {"N": str(count + 1)},
            "version": {"N": str(current.version + 1)},
            "last_outcome": {"S": PENDING},
            "taken_at": {"N": str(now)},
            "lease_token": {"S": token},
            "run": {"S": run_key},
            "takes": {"M": takes},
        }
        kwargs: dict[str, Any] = {"TableName": self.settings.state_table, "Item": item}
        if current.exists:
            kwargs["ConditionExpression"] = "version = :v"
            kwargs["ExpressionAttributeValues"] = {":v": {"N": str(current.version)}}
        else:
            kwargs["ConditionExpression"] = "attribute_not_exists(pk)"
        if not self._write_once("put_item", "lease_token", token, **kwargs)[0]:
            return "cooldown"  # another run took it a moment ago
        return None

    def record_take(self, account_key: str, run_key: str, outcome: str, detail: str, *, give_back: bool) -> None:
        """What this run's top-up came to, once (pending -> final). `give_back` when Vonage provably
        did not act: the cooldown ends and the take does not count towards the daily cap, unless
        another run has taken the lease since."""
        values: dict[str, Any] = {":o": {"S": outcome}, ":d": {"S": detail}, ":pending": {"S": PENDING}}
        names = {"#r": run_key}
        recorded = "SET takes.#r.outcome = :o, takes.#r.detail = :d, last_outcome = :o"
        condition = "takes.#r.outcome = :pending"
        attempts = [(recorded, condition, values, names)]
        if give_back:
            attempts.insert(
                0,
                (
                    f"{recorded}, lease_until = taken_at, topups_today = topups_today - :one",
                    f"{condition} AND #run = :r",
                    {**values, ":one": {"N": "1"}, ":r": {"S": run_key}},
                    {**names, "#run": "run"},
                ),
            )
        for expression, condition_expression, attribute_values, attribute_names in attempts:
            try:
                self.ddb.update_item(
                    TableName=self.settings.state_table,
                    Key={"pk": {"S": f"lease#{account_key}"}},
                    UpdateExpression=expression,
                    ConditionExpression=condition_expression,
                    ExpressionAttributeNames=attribute_names,
                    ExpressionAttributeValues=attribute_values,
                )
                return
            except self.ddb.exceptions.ConditionalCheckFailedException:
                continue  # another run holds the lease now, or this was recorded already (a retried write)

    def confirm_unknown(self, account_key: str) -> None:
        """The balance came back above the threshold after an UNKNOWN top-up: say it was confirmed."""
        try:
            self.ddb.update_item(
                TableName=self.settings.state_table,
                Key={"pk": {"S": f"lease#{account_key}"}},
                UpdateExpression="SET last_outcome = :c",
                ConditionExpression="last_outcome = :u",
                ExpressionAttributeValues={":c": {"S": "confirmed_by_balance"}, ":u": {"S": "topup_unknown"}},
            )
        except self.ddb.exceptions.ConditionalCheckFailedException:
            pass  # already confirmed, or a newer top-up since

    # -- alerts ---------------------------------------------------------------------------------------

    def open_alerts(self, account_key: str) -> dict[str, Any]:
        """The alert state of the account's current episode ({} when none is open)."""
        return {k: v for k, v in self._get(f"alert#{account_key}").items() if k != "pk"}

    def should_alert(self, account_key: str, kind: str, now: float, *, token: str | None = None) -> bool:
        """One alert per kind and episode (re-sent after the alert cooldown); concurrent runs race on
        a conditional write and only the winner sends. The token is the scheduled run's: a retry of
        the same run recognises its own claim and sends (a lost alert is worse than a duplicate)."""
        cutoff = now - self.settings.alert_cooldown_minutes * 60
        token = token or uuid.uuid4().hex
        return self._write_once(
            "update_item",
            f"token_{kind}",
            token,
            TableName=self.settings.state_table,
            Key={"pk": {"S": f"alert#{account_key}"}},
            UpdateExpression="SET #k = :now, #t = :token",
            ConditionExpression="attribute_not_exists(#k) OR #k <= :cutoff OR #t = :token",
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

    def end_episode(self, account_key: str) -> None:
        self.ddb.delete_item(TableName=self.settings.state_table, Key={"pk": {"S": f"alert#{account_key}"}})

    # -- history --------------------------------------------------------------------------------------

    def record_history(self, account_key: str, run_key: str, row: dict[str, Any], now: float) -> None:
        """One row per scheduled run: a retry rewrites it, never adds one."""
        item: dict[str, Any] = {
            "account": {"S": account_key},
            "at": {"S": run_key},
            "recorded_at": {"S": datetime.fromtimestamp(now, UTC).isoformat()},
            "scheduled_time": {"S": run_key},
            "outcome": {"S": str(row["outcome"])},
            "expires_at": {"N": str(int(now) + self.settings.history_ttl_days * 86400)},
        }
        if row.get("balance") is not None:
            item["balance"] = {"N": repr(float(row["balance"]))}
        if row.get("detail"):
            item["detail"] = {"S": str(row["detail"])[:500]}
        if row.get("auto_reload") is not None:
            item["auto_reload"] = {"BOOL": bool(row["auto_reload"])}
        self.ddb.put_item(TableName=self.settings.history_table, Item=item)


def _run_pk(account_key: str, run_key: str) -> str:
    return f"run#{account_key}#{run_key}"
