"""The settings API's subaccount routes and a subaccount in the fleet: its primary's listing with
balances and last transfers, per-subaccount settings kept in the primary's rule, and a subaccount's
own secret rotated with the primary's credentials. API Gateway events in, the simulator and moto out."""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import boto3
import pytest

from account_api.rotation import RotationEvent, RotationSettings, Rotator
from local import rotation_trigger
from tests.conftest import JsonLogs, Sim
from tests.test_accounts_api import PREFIX, add, request
from tests.test_settings_api import call

PRIMARY = "prim0001"
ROTATION_ARN = "arn:aws:lambda:eu-west-1:123456789012:function:secret-rotation"


@pytest.fixture
def family(api: ModuleType, sim: Sim) -> ModuleType:
    """A primary in the fleet (all its subaccounts watched) with three subaccounts at Vonage."""
    status, added = add(api, sim, PRIMARY, balance=100.0, settings={"name": "Primary", "subaccounts": {}})
    assert status == 201, added
    for key, balance, extra in (("own00001", 2.0, {}), ("shared02", None, {}), ("susp0003", 1.0, {"suspended": True})):
        body = {"api_key": key, "api_secret": f"Secret-{key}1", "parent": PRIMARY, "balance": balance, **extra}
        sim.control("POST", "/_sim/subaccounts", body)
    return api


def test_the_primarys_subaccounts_with_balances_states_and_last_transfer(family: ModuleType, sim: Sim) -> None:
    sim.control("DELETE", "/_sim/requests")
    from account_api.client import AccountClient

    AccountClient(api_key=PRIMARY, api_secret=f"Secret-{PRIMARY}1", api_base_url=sim.url).transfer_balance(
        "own00001", 5.0, "by hand"
    )
    status, _, view = call(family, request("GET", f"/accounts/{PRIMARY}/subaccounts"))
    assert status == 200, view
    assert view["enabled"] is True and view["primary_balance"] == 95.0 and view["rule"]["watch"] == "all"
    subs = {s["api_key"]: s for s in view["subaccounts"]}
    assert subs["own00001"]["state"] == "ok" and subs["own00001"]["balance"] == 7.0
    assert subs["own00001"]["last_transfer"]["amount"] == 5.0
    assert subs["own00001"]["last_transfer"]["by_account_ops"] is False
    assert subs["shared02"]["state"] == "shared_balance" and subs["shared02"]["balance"] is None
    assert subs["susp0003"]["state"] == "suspended" and subs["susp0003"]["settings"]["transfer_eur"] == 20.0
    assert len(sim.requests("retrieveSubaccountsList", api_key=PRIMARY)) == 1  # one listing, however many


def test_per_subaccount_settings_live_in_the_primarys_rule(family: ModuleType, sim: Sim) -> None:
    path = f"/accounts/{PRIMARY}/subaccounts/own00001"
    version = call(family, request("GET", f"/accounts/{PRIMARY}"))[2]["version"]
    status, _, changed = call(
        family,
        request("PUT", path, {"settings": {"threshold_eur": 50, "transfer_eur": 75.5}, "expected_version": version}),
    )
    assert status == 200, changed
    configured = {k: v for k, v in changed["configured"].items() if v is not None}
    assert configured == {"threshold_eur": 50.0, "transfer_eur": 75.5, "enabled": True}
    assert changed["settings"]["transfer_eur"] == 75.5 and changed["state"] == "low"
    status, _, stale = call(family, request("PUT", path, {"settings": {}, "expected_version": version}))
    assert status == 409, stale  # the primary changed since that version was read
    status, _, shown = call(family, request("GET", path))
    assert status == 200 and shown["configured"]["threshold_eur"] == 50.0
    status, _, unknown = call(family, request("PUT", f"/accounts/{PRIMARY}/subaccounts/nosuch01", {"settings": {}}))
    assert status == 404 and unknown["title"] == "No such subaccount", unknown
    status, _, bad = call(family, request("PUT", path, {"settings": {"transfer_eur": -1}}))
    assert status == 422 and bad["invalid_params"][0]["name"] == "settings.transfer_eur", bad


def test_an_account_without_a_rule_is_no_primary_and_an_unprovisioned_one_is_a_state(api: ModuleType, sim: Sim) -> None:
    assert add(api, sim, "plain001")[0] == 201
    sim.set(api_key="plain001", subaccounts_enabled=False)
    status, _, view = call(api, request("GET", "/accounts/plain001/subaccounts"))
    assert status == 200 and view["enabled"] is False and view["rule"] is None, view
    assert "not provisioned" in view["detail"]
    status, _, refused = call(api, request("PUT", "/accounts/plain001/subaccounts/sub00001", {"settings": {}}))
    assert status == 409 and refused["title"] == "Not a primary", refused
    status, _, refused = call(api, request("GET", "/accounts/plain001/subaccounts/sub00001"))
    assert status == 409 and refused["title"] == "Subaccounts not enabled", refused


def test_a_subaccount_added_to_the_fleet_is_rotated_with_the_primarys_credentials(
    family: ModuleType, sim: Sim, json_logs: JsonLogs
) -> None:
    status, added = add(family, sim, "own00001", primary=PRIMARY)
    assert status == 201, added
    assert added["primary"] == PRIMARY and added["watched"] is False  # funded through its primary's tick
    stored = json.loads(boto3.client("secretsmanager").get_secret_value(SecretId=f"{PREFIX}own00001")["SecretString"])
    primary_arn = call(family, request("GET", f"/accounts/{PRIMARY}"))[2]["secret_arn"]
    assert stored["primary_secret_arn"] == primary_arn

    rotator = Rotator(RotationSettings(rest_base_url=sim.url, api_base_url=sim.url))  # no stack-wide primary
    undo = rotation_trigger.install({ROTATION_ARN: lambda e: rotator.handle(RotationEvent.model_validate(e))})
    sm = boto3.client("secretsmanager")
    try:
        sm.rotate_secret(
            SecretId=added["secret_arn"], RotationLambdaARN=ROTATION_ARN, RotationRules={"AutomaticallyAfterDays": 30}
        )
    finally:
        undo()
    created = sim.requests("createAPISecret")
    assert [(e["api_key"], e["path"]) for e in created] == [(PRIMARY, "/accounts/own00001/secrets")]
    current = json.loads(sm.get_secret_value(SecretId=added["secret_arn"])["SecretString"])
    assert current["secret_id"] in sim.account("own00001")["secret_ids"]
    assert current["primary_secret_arn"] == primary_arn  # carried over for the next rotation
    assert len(sim.account(PRIMARY)["secret_ids"]) == 1  # the primary's own secrets untouched
    status, _, view = call(family, request("GET", f"/accounts/{PRIMARY}/subaccounts"))
    assert {s["api_key"]: s["in_fleet"] for s in view["subaccounts"]}["own00001"] is True
    assert current["api_secret"] not in json_logs.text


@pytest.mark.parametrize(
    ("key", "body", "title"),
    [
        ("stray001", {"primary": PRIMARY}, "Not a subaccount of this primary"),
        ("own00001", {"primary": "nosuch01"}, "No such primary"),
    ],
)
def test_a_subaccount_that_is_not_one_is_refused_and_nothing_is_stored(
    family: ModuleType, sim: Sim, key: str, body: dict[str, Any], title: str
) -> None:
    status, problem = add(family, sim, key, **body)
    assert status == 422 and problem["title"] == title, problem
    assert f"{PREFIX}{key}" not in [s["Name"] for s in boto3.client("secretsmanager").list_secrets()["SecretList"]]


def test_a_subaccount_cannot_be_a_primary(family: ModuleType, sim: Sim) -> None:
    status, problem = add(family, sim, "own00001", primary=PRIMARY, settings={"subaccounts": {}})
    assert status == 422 and "cannot have subaccounts" in json.dumps(problem), problem
