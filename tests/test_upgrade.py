"""A stack on 1.1.0 updated to this release loses nothing: its secret, its history, its lease and its
pause are today's code's too, and its account is the fleet's first account with no action from
the operator.

The state is the one 1.1.0's own code wrote (tests/data/state-1.1.0.json, made by
tests/tools/state_1_1_0.py from commit eaf7381), loaded into moto as CloudFormation's update
leaves it: the two 1.1.0 tables with their items, the secret, and the new resources (the registry
table, the fleet's queues) empty.
"""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import boto3
import pytest

from account_api.balance import ScheduledRun
from local import aws_resources
from tests.conftest import ROOT, LambdaContext, Sim, load_handler
from tests.test_accounts_api import request
from tests.test_settings_api import call

STATE = json.loads((ROOT / "tests" / "data" / "state-1.1.0.json").read_text())
KEY = STATE["secret"]["value"]["api_key"]


class Upgraded:
    def __init__(self, sim: Sim, monkeypatch: pytest.MonkeyPatch) -> None:
        session = boto3.Session()
        self.resources = aws_resources.create_resources(session, json.dumps(STATE["secret"]["value"]))
        ddb = session.client("dynamodb")
        for logical, items in STATE["tables"].items():
            for item in items:
                ddb.put_item(TableName=self.resources.tables[logical], Item=item)
        sim.set(balance=2.0)  # as 1.1.0 left it: low, and top-ups paused
        env = {
            "VONAGE_SECRET_ARN": self.resources.secret_arn,
            "VONAGE_REST_BASE_URL": sim.url,
            "VONAGE_API_BASE_URL": sim.url,
            "BALANCE_THRESHOLD_EUR": "10",
            "DRY_RUN": "false",
            "STATE_TABLE": self.resources.tables["WatcherStateTable"],
            "HISTORY_TABLE": self.resources.tables["TopUpHistoryTable"],
            "ALERT_TOPIC_ARN": session.client("sns").create_topic(Name="AlertTopic")["TopicArn"],
            "ACCOUNTS_TABLE": self.resources.tables["AccountsTable"],
            "ACCOUNT_SECRET_PREFIX": "account-ops/accounts/",
            "FLEET_QUEUE_URL": self.resources.queues["FleetQueue"],
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        self.watcher: ModuleType = load_handler("balance_watcher")
        self.api: ModuleType = load_handler("settings_api")

    def tick(self, when: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.watcher.lambda_handler({"scheduledTime": when}, LambdaContext("watcher"))
        return answer

    def get(self, path: str) -> Any:
        status, _, body = call(self.api, request("GET", path))
        assert status == 200, (path, body)
        return body


@pytest.fixture
def upgraded(aws: None, sim: Sim, monkeypatch: pytest.MonkeyPatch) -> Upgraded:
    return Upgraded(sim, monkeypatch)


def test_the_fixture_is_what_1_1_0_wrote() -> None:
    assert STATE["written_by"].startswith("account-ops 1.1.0 (commit eaf7381)")
    assert STATE["outcomes"] == ["topup_succeeded", "skipped_paused"]
    pks = {i["pk"]["S"] for i in STATE["tables"]["WatcherStateTable"]}
    assert {f"lease#{KEY}", "control#topups", f"run#{KEY}#2026-11-30T09:00:00Z"} <= pks


def test_the_pause_the_history_and_the_secret_survive_the_upgrade(upgraded: Upgraded, sim: Sim) -> None:
    answer = upgraded.tick("2026-11-30T09:10:00Z")
    assert answer["outcome"] == "skipped_paused" and answer["fleet_dispatched"] == 0
    assert sim.requests("topUpAccountBalance") == []
    switch = upgraded.get("/topups")
    assert switch["paused"] is True and switch["reason"] == "card replaced"
    assert switch["changedBy"] == "arn:aws:iam::123456789012:user/operator"
    # the table itself: the API's window counts back from today, and the fixture's days pass
    rows = boto3.client("dynamodb").query(
        TableName=upgraded.resources.tables["TopUpHistoryTable"],
        KeyConditionExpression="account = :a",
        ExpressionAttributeValues={":a": {"S": KEY}},
    )["Items"]
    outcomes = [(r["scheduled_time"]["S"], r["outcome"]["S"]) for r in rows]
    assert ("2026-11-30T09:00:00Z", "topup_succeeded") in outcomes
    assert ("2026-11-30T09:05:00Z", "skipped_paused") in outcomes
    assert ("2026-11-30T09:10:00Z", "skipped_paused") in outcomes
    assert upgraded.get("/balance")["value"] == 2.0  # through the secret 1.1.0 used, untouched
    stored = boto3.client("secretsmanager").get_secret_value(SecretId=upgraded.resources.secret_arn)
    assert json.loads(stored["SecretString"]) == STATE["secret"]["value"]
    # the fleet: the stack's account is its first, with nothing to migrate; no registry item for it
    assert upgraded.get("/accounts") == {"accounts": []}
    # a run 1.1.0 already decided is still recognised as decided
    assert upgraded.tick("2026-11-30T09:05:00Z")["outcome"] == "duplicate"


def test_the_lease_1_1_0_took_still_holds_a_second_top_up_back(upgraded: Upgraded, sim: Sim) -> None:
    status, _, body = call(upgraded.api, request("PUT", "/topups", {"paused": False, "reason": "card ok"}))
    assert status == 200 and body["paused"] is False
    [lease] = [i for i in STATE["tables"]["WatcherStateTable"] if i["pk"]["S"] == f"lease#{KEY}"]
    until = float(lease["lease_until"]["N"])
    watcher = upgraded.watcher.tick.stack_watcher  # the handler's own watcher, on a clock we choose
    held = watcher.run(ScheduledRun.from_event({"scheduledTime": "2026-11-30T09:15:00Z"}), now=until - 60)
    assert held.outcome == "skipped_cooldown" and sim.requests("topUpAccountBalance") == []
    after = watcher.run(ScheduledRun.from_event({"scheduledTime": "2026-11-30T09:20:00Z"}), now=until + 60)
    assert after.outcome == "topup_succeeded" and len(sim.requests("topUpAccountBalance")) == 1
