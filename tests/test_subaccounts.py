"""A primary in the fleet funds its subaccounts, against the simulator (the Subaccounts API, its
faults) and moto (the registry, leases, history, alerts): one listing a tick, a transfer only for
a low subaccount with its own balance, never twice for one need, whatever is lost or delivered twice."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

from account_api import errors
from account_api.fleet import TickMessage
from account_api.registry import AccountSettings, SubaccountDefaults, SubaccountSettings, SubaccountsRule, TopUpMode
from account_api.subaccounts import TRANSFER_SETTLE_SECONDS, FundingOutcome, transfer_reference
from local import aws_resources
from tests.conftest import JsonLogs, Sim, vonage_secret_value
from tests.test_fleet import Fleet, tick

PRIMARY = "prim0001"
TICK_MINUTES = 15  # the ticks below come this far apart (the stack's default schedule)


class Primary:
    """A primary of the fleet with subaccounts in the simulator, and its ticks."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.sim = fleet.sim
        self.t0 = time.time()
        self.read_alerts = aws_resources.sqs_messages_of_topic(boto3.Session(), fleet.resources.topic_arn)

    def add(self, balance: float = 100.0, rule: SubaccountsRule | None = None, **settings: Any) -> None:
        self.fleet.add(
            PRIMARY,
            balance=balance,
            settings=AccountSettings(name="Primary", subaccounts=rule or SubaccountsRule(), **settings),
        )

    def sub(self, key: str, balance: float | None = 2.0, **values: Any) -> None:
        body = {"api_key": key, "api_secret": f"Sub-{key}-Secret1", "parent": PRIMARY, "balance": balance, **values}
        self.sim.control("POST", "/_sim/subaccounts", body)

    def tick(self, n: int = 0) -> dict[str, Any]:
        """The primary's message of tick n, delivered once; its subaccounts' report."""
        result = self.fleet.watcher.evaluate(self.message(n), now=self.t0 + n * TICK_MINUTES * 60)
        assert result is not None and result.subaccounts is not None
        return result.subaccounts

    def message(self, n: int) -> TickMessage:
        return TickMessage(account=PRIMARY, scheduled_time=tick(n * TICK_MINUTES).key)

    def transfers(self, to: str | None = None) -> list[dict[str, Any]]:
        return [t for t in self.sim.public_state()["transfers"] if to is None or t["to"] == to]

    def calls(self, operation: str) -> int:
        return len(self.sim.requests(operation, api_key=PRIMARY))

    def outcome(self, report: dict[str, Any], key: str) -> str | None:
        found = [d["outcome"] for d in report["decisions"] if d["api_key"] == key]
        return found[0] if found else None

    def subjects(self) -> list[str]:
        return [a["subject"] for a in self.read_alerts()]


@pytest.fixture
def primary(aws: None, sim: Sim, atomic_dynamodb: None) -> Iterator[Primary]:
    resources = aws_resources.create_resources(boto3.Session(), vonage_secret_value())
    yield Primary(Fleet(sim, resources))


def delayed(seconds: float, action: Callable[[], Any]) -> threading.Timer:
    timer = threading.Timer(seconds, action)
    timer.start()
    return timer


# -- one tick ----------------------------------------------------------------------------------------


def test_one_listing_a_tick_and_a_transfer_only_for_a_low_subaccount_with_its_own_balance(
    primary: Primary, json_logs: JsonLogs
) -> None:
    primary.add()
    primary.sub("low00001", balance=2.0)
    primary.sub("good0002", balance=50.0)
    primary.sub("share003", balance=None)
    primary.sub("susp0004", balance=1.0, suspended=True)
    primary.sub("credit05", balance=-3.0, credit_limit=-50.0)  # in credit: low, not unreadable

    report = primary.tick()
    assert primary.calls("retrieveSubaccountsList") == 1
    assert report["counts"] == {"low": 2, "ok": 1, "shared_balance": 1, "suspended": 1}
    sent = {t["to"]: t for t in primary.transfers()}
    assert set(sent) == {"low00001", "credit05"}
    assert sent["low00001"]["amount"] == 20.0 and sent["low00001"]["from"] == PRIMARY
    assert sent["low00001"]["reference"] == transfer_reference(tick().key, "low00001")
    # the furthest below its threshold first
    assert [t["to"] for t in primary.transfers()] == ["credit05", "low00001"]
    assert primary.outcome(report, "low00001") == FundingOutcome.TRANSFER_SUCCEEDED
    assert [r["outcome"] for r in primary.fleet.history("low00001")] == ["transfer_succeeded"]
    assert primary.fleet.history("share003") == [] and primary.fleet.history("susp0004") == []
    assert "Sub-low00001-Secret1" not in json_logs.text and "Fleet-prim0001-Secret1" not in json_logs.text

    again = primary.fleet.watcher.evaluate(primary.message(0))  # the same tick delivered again
    assert again is not None and again.subaccounts is not None and again.subaccounts["duplicate"] is True
    assert primary.calls("retrieveSubaccountsList") == 1 and len(primary.transfers()) == 2


def test_twenty_concurrent_deliveries_of_one_tick_send_one_transfer(primary: Primary) -> None:
    primary.add()
    primary.sub("low00001")
    reports: list[dict[str, Any]] = []

    def deliver() -> None:
        result = primary.fleet.watcher.evaluate(primary.message(0))
        assert result is not None and result.subaccounts is not None
        reports.append(result.subaccounts)

    threads = [threading.Thread(target=deliver) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(reports) == 20 and sum(not r["duplicate"] for r in reports) == 1
    assert len(primary.transfers()) == 1 and primary.calls("retrieveSubaccountsList") == 1


def test_the_rule_watches_listed_subaccounts_with_their_own_settings(primary: Primary) -> None:
    rule = SubaccountsRule(
        watch="listed",
        defaults=SubaccountDefaults(threshold_eur=5.0, transfer_eur=20.0),
        accounts={
            "big00001": SubaccountSettings(threshold_eur=50.0, transfer_eur=75.5),
            "off00002": SubaccountSettings(enabled=False),
        },
    )
    primary.add(balance=500.0, rule=rule)
    primary.sub("big00001", balance=30.0)  # above the default, below its own threshold
    primary.sub("off00002", balance=0.0)
    primary.sub("other003", balance=0.0)  # not listed
    report = primary.tick()
    assert [(t["to"], t["amount"]) for t in primary.transfers()] == [("big00001", 75.5)]
    assert report["counts"] == {"low": 1, "not_watched": 2}


# -- the primary pays ----------------------------------------------------------------------------------


def test_a_primary_too_low_to_fund_is_topped_up_first_and_funds_at_the_next_tick(primary: Primary) -> None:
    primary.add(balance=25.0)  # the stack's threshold is 10: 25 - 20 would leave 5
    primary.sub("low00001")
    report = primary.tick()
    assert primary.transfers() == []
    assert primary.outcome(report, "low00001") == FundingOutcome.WAITING_FOR_PRIMARY
    assert report["reserve_eur"] == 20.0
    assert primary.fleet.topups(PRIMARY) == 1  # 25 < 10 + 20: the primary's own top-up, by its rules
    assert any("Subaccount low00001 low" in s for s in primary.subjects())

    report = primary.tick(1)  # the top-up shows in the primary's balance now: 45 - 20 = 25
    assert [t["to"] for t in primary.transfers()] == ["low00001"]
    assert primary.fleet.topups(PRIMARY) == 1


def test_a_primary_that_cannot_be_topped_up_alerts_and_never_funds_into_the_red(primary: Primary) -> None:
    primary.add(balance=25.0, topup_mode=TopUpMode.OFF)
    primary.sub("low00001")
    primary.sub("low00002", balance=1.0)
    report = primary.tick()
    assert primary.transfers() == [] and primary.fleet.topups(PRIMARY) == 0
    assert primary.outcome(report, "low00001") == FundingOutcome.TRANSFERS_OFF
    assert primary.sim.account(PRIMARY)["balance"] == 25.0


def test_several_low_subaccounts_are_funded_in_order_while_the_primary_stays_above_its_threshold(
    primary: Primary,
) -> None:
    primary.add(balance=55.0)  # room for two transfers of 20 above the threshold of 10
    for key, balance in (("aaaa0001", 4.0), ("bbbb0002", 0.5), ("cccc0003", 3.0)):
        primary.sub(key, balance=balance)
    report = primary.tick()
    assert [t["to"] for t in primary.transfers()] == ["bbbb0002", "cccc0003"]
    assert primary.outcome(report, "aaaa0001") == FundingOutcome.WAITING_FOR_PRIMARY
    assert primary.fleet.topups(PRIMARY) == 1  # 55 < 10 + 60: topped up for the one that waits
    assert primary.sim.account(PRIMARY)["balance"] == 55.0 + 20.0 - 40.0


# -- a transfer's answer lost ----------------------------------------------------------------------------


@pytest.mark.parametrize("fault", [{"reset": True, "after": True}, {"status": 503, "after": True}])
def test_a_transfer_whose_answer_is_lost_is_found_by_its_reference_and_not_sent_again(
    primary: Primary, fault: dict[str, Any]
) -> None:
    primary.add()
    primary.sub("low00001")
    primary.sim.fault("transferBalance", **fault)
    report = primary.tick()
    assert primary.outcome(report, "low00001") == FundingOutcome.TRANSFER_CONFIRMED
    assert len(primary.transfers()) == 1
    for n in (1, 2, 3):  # later ticks, the cooldown over too: the need was met
        primary.tick(n)
    assert len(primary.transfers()) == 1
    assert not any("unknown" in s for s in primary.subjects())


def test_a_transfer_lost_before_vonage_acted_is_decided_again_by_the_next_tick_once(primary: Primary) -> None:
    primary.add()
    primary.sub("low00001")
    primary.sim.fault("transferBalance", reset=True)  # the connection dies before Vonage acts
    report = primary.tick()
    assert primary.outcome(report, "low00001") == FundingOutcome.TRANSFER_UNKNOWN
    assert primary.transfers() == []
    # the same tick again, at once: its lease holds, so nothing is sent while it is unknown
    primary.fleet.watcher.evaluate(primary.message(0))
    assert primary.sim.requests("transferBalance") and len(primary.sim.requests("transferBalance")) == 1

    assert TICK_MINUTES * 60 > TRANSFER_SETTLE_SECONDS  # the next tick's listing is current
    report = primary.tick(1)
    decided = [r["outcome"] for r in primary.fleet.history("low00001")]
    assert decided == ["transfer_unknown", "transfer_succeeded"], decided
    assert [t["reference"] for t in primary.transfers()] == [transfer_reference(tick(TICK_MINUTES).key, "low00001")]
    primary.tick(2)
    assert len(primary.transfers()) == 1


def test_an_unknown_transfer_whose_listing_fails_stays_unknown_and_alerts(primary: Primary) -> None:
    primary.add()
    primary.sub("low00001")
    primary.sim.fault("transferBalance", status=503)
    primary.sim.fault("retrieveBalanceTransfers", status=503, times=3)  # the immediate look fails too
    assert primary.outcome(primary.tick(), "low00001") == FundingOutcome.TRANSFER_UNKNOWN
    primary.sim.fault("retrieveBalanceTransfers", status=503, times=3)
    report = primary.tick(1)
    assert primary.outcome(report, "low00001") == FundingOutcome.TRANSFER_UNKNOWN
    assert primary.transfers() == [] and len(primary.sim.requests("transferBalance")) == 1
    assert "Subaccount transfer outcome unknown" in " ".join(primary.subjects())
    primary.tick(2)  # the listing answers again: not found, so decided again, once
    assert len(primary.transfers()) == 1


# -- what changes under a tick ---------------------------------------------------------------------------


def test_the_listing_failing_sends_nothing_and_the_redelivery_funds(primary: Primary) -> None:
    primary.add()
    primary.sub("low00001")
    primary.sim.fault("retrieveSubaccountsList", status=503, times=10)
    with pytest.raises(errors.ServerError):
        primary.tick()
    assert primary.transfers() == []
    assert primary.fleet.balance_reads(PRIMARY) == 1  # the primary's own balance was still decided
    primary.sim.control("DELETE", "/_sim/faults")
    primary.tick()  # SQS delivers the message again
    assert len(primary.transfers()) == 1


def test_a_subaccount_suspended_between_the_listing_and_the_transfer_is_not_funded(primary: Primary) -> None:
    primary.add()
    primary.sub("low00001")
    # the listing is computed, then its answer takes a while: the subaccount is suspended meanwhile
    primary.sim.fault("retrieveSubaccountsList", latency=0.6, after=True)
    timer = delayed(0.2, lambda: primary.sim.set(api_key="low00001", suspended=True))
    report = primary.tick()
    timer.join()
    assert primary.outcome(report, "low00001") == FundingOutcome.SKIPPED_CHANGED
    assert primary.transfers() == [] and primary.sim.requests("transferBalance") == []


def test_a_subaccount_suspended_just_before_the_transfer_is_refused_and_nothing_moves(primary: Primary) -> None:
    primary.add()
    primary.sub("low00001")
    primary.sim.fault("retrieveSubaccount", latency=0.6, after=True)
    timer = delayed(0.2, lambda: primary.sim.set(api_key="low00001", suspended=True))
    report = primary.tick()
    timer.join()
    assert primary.outcome(report, "low00001") == FundingOutcome.TRANSFER_FAILED
    assert primary.transfers() == [] and primary.sim.account(PRIMARY)["balance"] == 100.0
    assert "Subaccount transfer refused" in " ".join(primary.subjects())
    primary.sim.set(api_key="low00001", suspended=False)
    primary.tick(1)  # refused means not done: the lease was given back
    assert len(primary.transfers()) == 1


def test_a_primary_not_provisioned_is_a_state_reported_once_not_a_failure(primary: Primary) -> None:
    primary.add()
    primary.sub("low00001")
    primary.sim.set(api_key=PRIMARY, subaccounts_enabled=False)
    first, second = primary.tick(), primary.tick(1)
    assert first["enabled"] is False and second["enabled"] is False
    assert primary.transfers() == []
    assert [s for s in primary.subjects() if "Subaccounts not enabled" in s] == [
        "[Primary (prim0001)] Subaccounts not enabled"
    ]
    assert primary.fleet.balance_reads(PRIMARY) == 2  # the primary itself is still watched
