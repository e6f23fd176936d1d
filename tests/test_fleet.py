"""The fleet's tick, against the simulator (many accounts, each with its own faults and latency)
and moto (the registry table, SQS, Secrets Manager, the watcher's tables): each account decided
exactly once per tick, one account's failure never failing another's, and no second top-up,
whatever is delivered twice or dies half-way."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from account_api import ClientOptions, VonageAccount
from account_api.balance import Alerts, BalanceWatcher, Outcome, ScheduledRun, WatcherSettings, WatcherStore
from account_api.credentials import CredentialStore
from account_api.fleet import (
    DispatchError,
    FleetSettings,
    FleetWatcher,
    Tick,
    TickMessage,
    account_settings,
    dispatch,
)
from account_api.observability import metrics
from account_api.registry import AccountSettings, FleetAccount, Registry, RegistryError, TopUpMode
from local import aws_resources
from local import simulator as simmod
from tests.conftest import JsonLogs, LambdaContext, Sim, vonage_secret_value

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
REGISTRY_TABLE = "AccountsTable"


def tick(minutes: float = 0) -> ScheduledRun:
    return ScheduledRun(scheduled_time=T0 + timedelta(minutes=minutes), execution_id=f"tick-{minutes}")


class Fleet:
    """The stack's account plus registry accounts, a queue, and a poller that hands SQS batches to
    the watcher as Lambda's event source mapping does (deleting what succeeded)."""

    def __init__(self, sim: Sim, resources: aws_resources.LocalResources) -> None:
        self.sim = sim
        self.resources = resources
        self.sqs = boto3.client("sqs")
        self.queue_url = self.sqs.create_queue(QueueName="fleet", Attributes={"VisibilityTimeout": "0"})["QueueUrl"]
        assert resources.tables["AccountsTable"] == REGISTRY_TABLE  # as the template declares it
        self.registry = Registry(REGISTRY_TABLE)
        self.settings = WatcherSettings.from_environment(
            {
                "BALANCE_THRESHOLD_EUR": "10",
                "STATE_TABLE": resources.tables["WatcherStateTable"],
                "HISTORY_TABLE": resources.tables["TopUpHistoryTable"],
                "ALERT_TOPIC_ARN": resources.topic_arn,
            }
        )
        options = ClientOptions(read_timeout=1.0, total_deadline=3.0, backoff_base=0.01)
        stack_account = VonageAccount(
            CredentialStore(resources.secret_arn), rest_base_url=sim.url, api_base_url=sim.url, options=options
        )
        stack_watcher = BalanceWatcher(
            self.settings, stack_account, WatcherStore(self.settings), Alerts(self.settings.alert_topic_arn)
        )
        self.tick = Tick(stack_watcher, FleetSettings(accounts_table=REGISTRY_TABLE, queue_url=self.queue_url))
        assert self.tick.fleet_watcher is not None
        self.watcher = self.tick.fleet_watcher

    def scheduled(self, run: ScheduledRun) -> dict[str, Any]:
        """The watcher function's scheduled run: the fleet's messages sent, the stack's account decided."""
        return self.tick.scheduled({"scheduledTime": run.key, "executionId": run.execution_id})

    def add(self, key: str, balance: float = 25.0, settings: AccountSettings | None = None, **sim: Any) -> FleetAccount:
        secret = f"Fleet-{key}-Secret1"
        self.sim.add_account(key, secret, balance=balance, **sim)
        arn = boto3.client("secretsmanager").create_secret(
            Name=f"account-ops/accounts/{key}",
            SecretString=vonage_secret_value(api_key=key, api_secret=secret, topup_trx=simmod.DEFAULT_TRX),
        )["ARN"]
        return self.registry.add(key, arn, settings or AccountSettings(name=f"customer {key}"))

    def receive(self) -> list[dict[str, Any]]:
        """Every message waiting, as SQS event records (up to ten a batch, as the mapping takes them)."""
        records = []
        while True:
            got = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10).get("Messages", [])
            if not got:
                return records
            for m in got:
                records.append(
                    {
                        "messageId": m["MessageId"],
                        "receiptHandle": m["ReceiptHandle"],
                        "body": m["Body"],
                        "attributes": {"ApproximateReceiveCount": "1"},
                        "messageAttributes": {},
                        "eventSource": "aws:sqs",
                        "eventSourceARN": "arn:aws:sqs:eu-west-1:000000000000:fleet",
                        "awsRegion": "eu-west-1",
                    }
                )
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"])

    def process(self, records: list[dict[str, Any]]) -> list[str]:
        """Batches of ten, as the event source mapping sends them; the failed message ids."""
        failed = []
        for start in range(0, len(records), 10):
            answer = self.watcher.process_sqs_batch({"Records": records[start : start + 10]}, LambdaContext("watcher"))
            failed += [f["itemIdentifier"] for f in answer["batchItemFailures"]]
        return failed

    def history(self, key: str) -> list[dict[str, Any]]:
        items = boto3.client("dynamodb").scan(TableName=self.resources.tables["TopUpHistoryTable"])["Items"]
        return [{k: next(iter(v.values())) for k, v in i.items()} for i in items if i["account"]["S"] == key]

    def topups(self, key: str) -> int:
        return len(self.sim.requests("topUpAccountBalance", api_key=key))

    def balance_reads(self, key: str) -> int:
        return len(self.sim.requests("getAccountBalance", api_key=key))


@pytest.fixture
def fleet(aws: None, sim: Sim, atomic_dynamodb: None) -> Iterator[Fleet]:
    resources = aws_resources.create_resources(boto3.Session(), vonage_secret_value())
    yield Fleet(sim, resources)


def message_accounts(records: list[dict[str, Any]]) -> list[str]:
    return sorted(json.loads(r["body"])["account"] for r in records)


# -- the tick ---------------------------------------------------------------------------------------


def test_one_tick_decides_every_account_once_and_a_failing_one_fails_alone(fleet: Fleet) -> None:
    fleet.add("good0001")
    fleet.add("low00002", balance=3.0)
    fleet.add("slow0003", latency=0.3)
    fleet.add("wrong004")
    fleet.sim.control("POST", "/_sim/state", {"api_key": "wrong004", "balance": 1.0})
    boto3.client("secretsmanager").put_secret_value(  # the operator's typo: Vonage answers 401
        SecretId="account-ops/accounts/wrong004",
        SecretString=vonage_secret_value(api_key="wrong004", api_secret="Not-The-Secret9", topup_trx="x"),
    )
    fleet.add("fail0005")
    fleet.sim.fault("getAccountBalance", status=503, api_key="fail0005", times=20)

    answer = fleet.scheduled(tick())
    assert answer["fleet_dispatched"] == 5 and answer["outcome"] == "ok"  # and the stack's account decided
    records = fleet.receive()
    assert message_accounts(records) == sorted(["good0001", "low00002", "slow0003", "wrong004", "fail0005"])
    failed = fleet.process(records)

    by_id = {r["messageId"]: json.loads(r["body"])["account"] for r in records}
    assert sorted(by_id[i] for i in failed) == ["fail0005", "wrong004"]
    for key, outcome in (("good0001", "ok"), ("low00002", "topup_succeeded"), ("slow0003", "ok")):
        assert [r["outcome"] for r in fleet.history(key)] == [outcome], key
    assert fleet.topups("low00002") == 1
    assert fleet.topups("wrong004") == 0 and fleet.history("wrong004") == []
    assert [r["outcome"] for r in fleet.history(simmod.DEFAULT_API_KEY)] == ["ok"]


def test_a_tick_and_its_messages_delivered_twice_decide_each_account_once(fleet: Fleet) -> None:
    fleet.add("low00001", balance=3.0)
    fleet.add("good0002")
    fleet.scheduled(tick())
    assert fleet.scheduled(tick())["outcome"] == "duplicate"  # the Scheduler fired the tick twice
    records = fleet.receive()
    assert len(records) == 4
    assert fleet.process(records + records) == []  # and SQS delivered every message twice more
    assert fleet.topups("low00001") == 1
    for key in ("low00001", "good0002", simmod.DEFAULT_API_KEY):
        assert len(fleet.history(key)) == 1, key
        assert fleet.balance_reads(key) == 1, key


def test_concurrent_deliveries_of_one_message_send_one_top_up(fleet: Fleet) -> None:
    fleet.add("low00001", balance=3.0)
    message = TickMessage(account="low00001", scheduled_time=tick().key)
    outcomes: list[str] = []

    def deliver() -> None:
        result = fleet.watcher.evaluate(message)
        outcomes.append(str(result.outcome) if result else "none")

    threads = [threading.Thread(target=deliver) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fleet.topups("low00001") == 1
    assert outcomes.count("duplicate") == 9


def test_a_dispatcher_that_dies_half_way_is_retried_and_no_account_is_decided_twice(fleet: Fleet) -> None:
    for i in range(24):
        fleet.add(f"acct{i:04d}", balance=3.0 if i % 5 == 0 else 25.0)
    sqs = boto3.client("sqs")
    from account_api import aws_clients

    calls = {"n": 0}

    def die_on_the_second_batch(**_: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("the dispatcher's process died here")

    aws_clients.client("sqs").meta.events.register("before-send.sqs.SendMessageBatch", die_on_the_second_batch)
    with pytest.raises(RuntimeError):
        fleet.scheduled(tick())
    first = fleet.receive()
    assert len(first) == 10  # the first batch went out
    assert fleet.process(first) == []
    assert fleet.history(simmod.DEFAULT_API_KEY) == []  # the stack's account comes after the messages
    fleet.scheduled(tick())  # the Scheduler's retry sends the whole tick again
    second = fleet.receive()
    assert len(second) == 24
    assert len(fleet.history(simmod.DEFAULT_API_KEY)) == 1
    assert fleet.process(second) == []
    for i in range(24):
        key = f"acct{i:04d}"
        assert len(fleet.history(key)) == 1, key
        assert fleet.topups(key) == (1 if i % 5 == 0 else 0), key
    assert (
        sqs.get_queue_attributes(QueueUrl=fleet.queue_url, AttributeNames=["ApproximateNumberOfMessages"])[
            "Attributes"
        ]["ApproximateNumberOfMessages"]
        == "0"
    )


def test_entries_sqs_refuses_are_sent_again_and_a_tick_that_cannot_be_sent_fails(fleet: Fleet) -> None:
    fleet.add("acct0001")
    from account_api import aws_clients

    refusals = {"left": 1}

    def refuse_one_entry(parsed: dict[str, Any], **_: Any) -> None:
        if refusals["left"] > 0 and parsed.get("Successful"):
            refusals["left"] -= 1
            refused = parsed["Successful"].pop()
            parsed.setdefault("Failed", []).append(
                {"Id": refused["Id"], "SenderFault": False, "Code": "InternalError", "Message": "try again"}
            )

    aws_clients.client("sqs").meta.events.register("after-call.sqs.SendMessageBatch", refuse_one_entry)
    dispatch(tick(), fleet.registry, fleet.queue_url)
    assert len(fleet.receive()) >= 2  # both accounts arrive (the refused entry, sent again)
    refusals["left"] = 100
    with pytest.raises(DispatchError, match="the tick is retried"):
        dispatch(tick(1), fleet.registry, fleet.queue_url)


def test_an_account_removed_after_dispatch_is_not_evaluated(fleet: Fleet) -> None:
    fleet.add("gone0001", balance=3.0)
    dispatch(tick(), fleet.registry, fleet.queue_url)
    fleet.registry.remove("gone0001")
    assert fleet.process(fleet.receive()) == []
    assert fleet.balance_reads("gone0001") == 0 and fleet.topups("gone0001") == 0
    dispatch(tick(1), fleet.registry, fleet.queue_url)
    assert message_accounts(fleet.receive()) == []  # and no longer dispatched


def test_a_message_that_is_not_a_tick_is_dropped_not_sent_round(fleet: Fleet) -> None:
    record = {
        "messageId": "m1",
        "receiptHandle": "r",
        "body": '{"hello": 1}',
        "attributes": {},
        "messageAttributes": {},
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:eu-west-1:000000000000:fleet",
        "awsRegion": "eu-west-1",
    }
    assert fleet.process([record]) == []
    assert fleet.sim.requests() == []


# -- per-account settings, alerts and metrics -------------------------------------------------------


def test_each_account_runs_with_its_own_settings_and_its_alerts_name_it(fleet: Fleet, json_logs: JsonLogs) -> None:
    read_alerts = aws_resources.sqs_messages_of_topic(boto3.Session(), fleet.resources.topic_arn)
    fleet.add("off00001", balance=3.0, settings=AccountSettings(name="Acme", topup_mode=TopUpMode.OFF))
    fleet.add("dry00002", balance=3.0, settings=AccountSettings(topup_mode=TopUpMode.DRY_RUN))
    fleet.add("high0003", balance=30.0, settings=AccountSettings(threshold_eur=50))
    metrics.clear_metrics()
    fleet.scheduled(tick())
    assert fleet.process(fleet.receive()) == []
    assert [r["outcome"] for r in fleet.history("off00001")] == [Outcome.LOW_ALERTED]
    assert [r["outcome"] for r in fleet.history("dry00002")] == [Outcome.DRY_RUN]
    assert fleet.history("high0003")[0]["outcome"] in (Outcome.TOPUP_SUCCEEDED, Outcome.TOPUP_UNKNOWN)
    assert fleet.topups("off00001") == fleet.topups("dry00002") == 0 and fleet.topups("high0003") == 1
    subjects = [a["subject"] for a in read_alerts()]
    assert any(s.startswith("[Acme (off00001)] Vonage balance low") for s in subjects), subjects
    assert any(s.startswith("[dry00002] [dry run]") for s in subjects), subjects
    # one BalanceEUR value, the stack's account's (its alarms read it); a fleet account's balance is
    # in its log line, never in a metric of its own; the outcome counts add up across accounts
    assert metrics.metric_set["BalanceEUR"]["Value"] == [simmod.DEFAULT_BALANCE]
    assert metrics.metric_set["BalanceOk"]["Value"] == [1.0]
    assert len(metrics.metric_set["LowBalanceAlerted"]["Value"]) == 1
    assert metrics.metric_set["FleetAccountsDispatched"]["Value"] == [3.0]
    assert all(set(d) <= {"service"} for d in [metrics.dimension_set]), metrics.dimension_set
    decided = {e.get("account"): e for e in json_logs.entries() if e["message"] == "fleet account decided"}
    assert decided["off00001"]["balance"] == 3.0 and decided["off00001"]["outcome"] == "low_alerted"
    assert "Fleet-off00001-Secret1" not in json_logs.text
    metrics.clear_metrics()


def test_the_stacks_dry_run_wins_over_an_accounts_live_mode(fleet: Fleet) -> None:
    account = FleetAccount(api_key="abcd1234", secret_arn="arn", settings=AccountSettings(topup_mode=TopUpMode.LIVE))
    assert account_settings(fleet.settings.model_copy(update={"dry_run": True}), account).dry_run is True
    assert account_settings(fleet.settings, account).dry_run is False
    assert account_settings(fleet.settings, account).threshold == fleet.settings.threshold


# -- the registry -----------------------------------------------------------------------------------


def test_the_registry_refuses_lost_updates_and_recognises_its_own_retries(fleet: Fleet) -> None:
    registry = fleet.registry
    added = registry.add("abcd0001", "arn:one", AccountSettings(name="one"))
    assert registry.add("abcd0001", "arn:one", AccountSettings(name="one")) == added  # a retried add
    with pytest.raises(RegistryError) as exists:
        registry.add("abcd0001", "arn:other", AccountSettings())
    assert exists.value.kind == "exists"
    changed = registry.update("abcd0001", AccountSettings(name="one", threshold_eur=20), expected_version=1)
    assert changed.version == 2
    assert registry.update("abcd0001", AccountSettings(name="one", threshold_eur=20), expected_version=1) == changed
    with pytest.raises(RegistryError) as stale:
        registry.update("abcd0001", AccountSettings(name="two"), expected_version=1)
    assert stale.value.kind == "conflict"
    removed = registry.remove("abcd0001")
    assert removed.removed_at and registry.remove("abcd0001") == removed
    assert [a.api_key for a in registry.accounts()] == ["abcd0001"]  # kept, so its history stays explained
    assert registry.accounts(watched_only=True) == []
    with pytest.raises(RegistryError) as gone:
        registry.update("abcd0001", AccountSettings())
    assert gone.value.kind == "not_found"
    back = registry.add("abcd0001", "arn:one", AccountSettings(name="back"))
    assert back.watched and back.version == removed.version + 1


def test_the_registry_says_which_item_it_cannot_read(fleet: Fleet) -> None:
    boto3.client("dynamodb").put_item(
        TableName=REGISTRY_TABLE, Item={"api_key": {"S": "bad00001"}, "settings": {"S": '{"threshold_eur": -1}'}}
    )
    with pytest.raises(RegistryError, match="bad00001") as invalid:
        fleet.registry.accounts()
    assert invalid.value.kind == "invalid"
    # and one bad item never costs the other accounts their tick
    fleet.add("good0001")
    boto3.client("dynamodb").update_item(
        TableName=REGISTRY_TABLE,
        Key={"api_key": {"S": "bad00001"}},
        UpdateExpression="SET watched = :t",
        ExpressionAttributeValues={":t": {"BOOL": True}},
    )
    assert dispatch(tick(), fleet.registry, fleet.queue_url).accounts == 1
    assert message_accounts(fleet.receive()) == ["good0001"]


@pytest.mark.parametrize(
    "settings",
    [{"threshold_eur": 0}, {"daily_topup_cap": 51}, {"name": "a\nb"}, {"topup_mode": "sometimes"}, {"unknown": 1}],
)
def test_account_settings_are_validated(settings: dict[str, Any]) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        AccountSettings.model_validate(settings)


# -- the local event source mapping ----------------------------------------------------------------


def test_the_poller_bounds_concurrency_and_leaves_failed_messages_for_the_dead_letter_queue(aws: None) -> None:
    from local.fleet_poller import FleetPoller

    sqs = boto3.client("sqs")
    dead = sqs.create_queue(QueueName="fleet-dead")["QueueUrl"]
    dead_arn = sqs.get_queue_attributes(QueueUrl=dead, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue = sqs.create_queue(
        QueueName="fleet-poll",
        Attributes={
            "VisibilityTimeout": "1",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dead_arn, "maxReceiveCount": "2"}),
        },
    )["QueueUrl"]
    for start in range(0, 40, 10):
        sqs.send_message_batch(
            QueueUrl=queue, Entries=[{"Id": str(i), "MessageBody": f"m{start + i}"} for i in range(10)]
        )
    lock, in_flight, peak, seen = threading.Lock(), [0], [0], []

    def handler(event: dict[str, Any]) -> dict[str, Any]:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        import time

        time.sleep(0.05)
        with lock:
            in_flight[0] -= 1
            seen.extend(r["body"] for r in event["Records"])
        failures = [{"itemIdentifier": r["messageId"]} for r in event["Records"] if r["body"] == "m7"]
        return {"batchItemFailures": failures}

    import time

    poller = FleetPoller(sqs, queue, handler, concurrency=3)
    stats = poller.drain()
    assert peak[0] <= 3 and stats.peak_in_flight <= 3
    assert sorted(seen, key=lambda b: int(b[1:])) == [f"m{i}" for i in range(40)] and stats.failed == 1
    # after its visibility timeout the failed one comes back, fails again, then leaves for the DLQ
    # (polled up to a deadline, not slept a fixed time: a loaded machine serves moto slowly)
    moved: list[dict[str, Any]] = []
    deadline = time.monotonic() + 15
    while not moved and time.monotonic() < deadline:
        time.sleep(0.3)
        poller.drain()
        moved = sqs.receive_message(QueueUrl=dead, MaxNumberOfMessages=10).get("Messages", [])
    assert [m["Body"] for m in moved] == ["m7"]
    assert seen.count("m7") == 2 and len(seen) == 41
    with pytest.raises(ValueError):
        FleetPoller(sqs, queue, handler, concurrency=0)


def test_a_fleet_accounts_rotated_secret_is_seen_through_the_long_credentials_cache(fleet: Fleet) -> None:
    """The watcher keeps a fleet account's secret for an hour (FLEET_CREDENTIALS_CACHE_SECONDS);
    a rotation in between is seen at the first 401, and the decision is not lost."""
    from account_api import AccountClient

    fleet.add("rot00001")
    fleet.scheduled(tick())
    assert fleet.process(fleet.receive()) == []  # the secret is now cached in the watcher
    urls = {"rest_base_url": fleet.sim.url, "api_base_url": fleet.sim.url}
    old = AccountClient(api_key="rot00001", api_secret="Fleet-rot00001-Secret1", **urls)
    [old_id] = [s.id for s in old.retrieve_api_secrets()]
    old.create_api_secret("Rotated-Secret-2")
    boto3.client("secretsmanager").put_secret_value(
        SecretId="account-ops/accounts/rot00001",
        SecretString=vonage_secret_value(api_key="rot00001", api_secret="Rotated-Secret-2", topup_trx="x"),
    )
    AccountClient(api_key="rot00001", api_secret="Rotated-Secret-2", **urls).revoke_api_secret(old_id)
    fleet.scheduled(tick(5))
    assert fleet.process(fleet.receive()) == []
    assert [r["outcome"] for r in fleet.history("rot00001")] == ["ok", "ok"]


def test_a_batchs_accounts_are_decided_at_the_same_time(fleet: Fleet) -> None:
    """Each balance read of a batch of five reaches Vonage before any of them is answered: a slow
    account holds the others of its batch back by nothing (not the sum of their latencies)."""
    keys = [f"slow{i:04d}" for i in range(5)]
    for key in keys:
        fleet.add(key, latency=0.6)  # under the client's 1 s read timeout
    dispatch(tick(), fleet.registry, fleet.queue_url)
    records = fleet.receive()
    answer = fleet.watcher.process_sqs_batch({"Records": records}, LambdaContext("watcher"))
    assert answer == {"batchItemFailures": []}
    arrivals = [r["time"] for r in fleet.sim.requests("getAccountBalance") if r["api_key"] in keys]
    assert len(arrivals) == 5
    assert max(arrivals) - min(arrivals) < 0.6  # the last one asked before the first was answered
    for key in keys:
        assert [r["outcome"] for r in fleet.history(key)] == ["ok"], key


def test_metrics_added_from_many_threads_at_once_are_all_counted() -> None:
    metrics.clear_metrics()
    threads = [
        threading.Thread(target=lambda: metrics.add_metric(name="ThreadedCount", unit="Count", value=1))
        for _ in range(50)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(metrics.metric_set["ThreadedCount"]["Value"]) == 50
    metrics.clear_metrics()


class ProcessDied(BaseException):
    """The watcher's process died right after a call took effect: no except clause runs."""


def test_a_watcher_killed_after_taking_a_fleet_accounts_lease_never_tops_up_twice(fleet: Fleet) -> None:
    import time

    from account_api import aws_clients

    fleet.add("kill0001", balance=3.0)
    fleet.add("calm0002", balance=3.0)
    dispatch(tick(), fleet.registry, fleet.queue_url)
    records = fleet.receive()

    sent: dict[str, Any] = {}

    def remember(params: dict[str, Any], **_: Any) -> None:
        sent["pk"] = params.get("Item", {}).get("pk", {}).get("S")

    def die_after_the_lease(**_: Any) -> None:  # the lease is written: then the process dies
        if sent.get("pk") == "lease#kill0001":
            raise ProcessDied

    ddb = aws_clients.client("dynamodb")
    ddb.meta.events.register("before-parameter-build.dynamodb.PutItem", remember)
    ddb.meta.events.register("after-call.dynamodb.PutItem", die_after_the_lease)
    [killed] = [r for r in records if json.loads(r["body"])["account"] == "kill0001"]
    with pytest.raises(ProcessDied):
        fleet.watcher.evaluate(TickMessage.model_validate_json(killed["body"]))
    aws_clients.reset()  # a new process: new clients, no hook, nothing cached
    assert fleet.topups("kill0001") == 0

    # SQS hands the message back after its visibility timeout (360 s): a new watcher decides it,
    # and the other account of the tick is decided as usual
    # and the other account of the tick is decided as usual. The killed one's lease says a top-up
    # may have been under way: never a second one blind; unknown, recorded and alerted
    later = time.time() + 400
    revived = FleetWatcher.for_stack(fleet.watcher.stack_watcher, REGISTRY_TABLE)
    outcomes = {}
    for record in records:
        message = TickMessage.model_validate_json(record["body"])
        result = revived.evaluate(message, now=later)
        assert result is not None
        outcomes[message.account] = str(result.outcome)
    assert outcomes == {"kill0001": "topup_unknown", "calm0002": "topup_succeeded"}
    assert fleet.topups("kill0001") == 0 and fleet.topups("calm0002") == 1
    assert [r["outcome"] for r in fleet.history("kill0001")] == ["topup_unknown"]
    for record in records:  # a third delivery changes nothing
        result = revived.evaluate(TickMessage.model_validate_json(record["body"]), now=later + 10)
        assert result is not None and str(result.outcome) == "duplicate"
    # once the lease's cooldown is over, a later tick tops the still-low account up, once
    after_cooldown = later + fleet.settings.topup_cooldown_minutes * 60 + 60
    for minutes in (60, 65):
        message = TickMessage(account="kill0001", scheduled_time=tick(minutes).key)
        revived.evaluate(message, now=after_cooldown + minutes)
    assert fleet.topups("kill0001") == 1


def test_an_account_below_its_critical_level_is_counted_and_logged_never_a_metric_of_its_own(
    fleet: Fleet, json_logs: JsonLogs
) -> None:
    fleet.add("crit0001", balance=1.5, settings=AccountSettings(critical_eur=2, topup_mode=TopUpMode.OFF))
    fleet.add("lowx0002", balance=8.0, settings=AccountSettings(critical_eur=2, topup_mode=TopUpMode.OFF))
    fleet.add("fine0003", balance=25.0)
    dispatch(tick(), fleet.registry, fleet.queue_url)
    metrics.clear_metrics()
    assert fleet.process(fleet.receive()) == []
    assert metrics.metric_set["FleetAccountsCritical"]["Value"] == [1.0]
    decided = {e.get("account"): e for e in json_logs.entries() if e["message"] == "fleet account decided"}
    states = {k: decided[k]["balance_state"] for k in ("crit0001", "lowx0002", "fine0003")}
    assert states == {"crit0001": "critical", "lowx0002": "low", "fine0003": "ok"}
    metrics.clear_metrics()
    with pytest.raises(ValueError, match="below threshold_eur"):
        AccountSettings(threshold_eur=5, critical_eur=5)
