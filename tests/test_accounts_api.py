"""The settings API's /accounts routes: adding, changing and removing fleet accounts, and the
single-account routes for one of them. The handler is fed API Gateway events; Vonage is the
simulator (many accounts) over loopback, AWS is moto."""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import boto3
import pytest

from local import simulator as simmod
from local import webhooks
from tests.conftest import JsonLogs, LambdaContext, Sim, load_handler, vonage_secret_value
from tests.test_settings_api import call
from tests.test_settings_api import request as bodiless_request

PREFIX = "account-ops/accounts/"


def add(api: ModuleType, sim: Sim, key: str, *, secret: str | None = None, **body: Any) -> tuple[int, Any]:
    """The account in the simulator with `Secret-<key>1`, then POST /accounts with `secret`."""
    if key not in sim.public_state()["accounts"]:
        sim.add_account(key, f"Secret-{key}1", balance=body.pop("balance", 25.0))
    payload = {"api_key": key, "api_secret": secret or f"Secret-{key}1", "topup_trx": "trx-" + key, **body}
    status, _, answer = call(api, request("POST", "/accounts", payload))
    return status, answer


def request(method: str, path: str, body: Any = None) -> dict[str, Any]:
    event = bodiless_request(method, path, body)
    if body is not None:
        event["headers"] = {**(event.get("headers") or {}), "Content-Type": "application/json"}
        event["multiValueHeaders"] = {k: [v] for k, v in event["headers"].items()}
    return event


def secret_names() -> list[str]:
    listed = boto3.client("secretsmanager").list_secrets(IncludePlannedDeletion=True)["SecretList"]
    return sorted(s["Name"] for s in listed if s["Name"].startswith(PREFIX))


def test_adding_checks_the_credentials_once_then_stores_them_write_only(
    api: ModuleType, sim: Sim, json_logs: JsonLogs
) -> None:
    status, added = add(api, sim, "acme0001", settings={"name": "Acme", "threshold_eur": 20})
    assert status == 201, added
    assert added["api_key"] == "acme0001" and added["label"] == "Acme (acme0001)" and added["watched"] is True
    assert added["settings"]["threshold_eur"] == 20
    assert len(sim.requests("getAccountBalance", api_key="acme0001")) == 1  # the check: one balance read
    stored = boto3.client("secretsmanager").get_secret_value(SecretId=f"{PREFIX}acme0001")
    assert stored["ARN"] == added["secret_arn"]
    assert json.loads(stored["SecretString"]) == {
        "api_key": "acme0001",
        "api_secret": "Secret-acme00011",
        "topup_trx": "trx-acme0001",
    }
    status, _, listed = call(api, request("GET", "/accounts"))
    assert status == 200 and [a["api_key"] for a in listed["accounts"]] == ["acme0001"]
    status, _, shown = call(api, request("GET", "/accounts/acme0001"))
    assert status == 200 and shown["version"] == 1 and shown["rotation_enabled"] is False
    [logged] = [e for e in json_logs.entries() if e["message"] == "fleet account added"]
    assert logged["account"] == "acme0001" and logged["caller"].startswith("arn:aws:")  # who added it
    for text in (json.dumps(added), json.dumps(listed), json.dumps(shown), json_logs.text):
        assert "Secret-acme00011" not in text and "trx-acme0001" not in text


def test_wrong_credentials_are_refused_and_nothing_is_stored(api: ModuleType, sim: Sim, json_logs: JsonLogs) -> None:
    status, problem = add(api, sim, "acme0001", secret="Not-The-Secret1")
    assert status == 422, problem
    assert problem["title"] == "Vonage refused these credentials" and "nothing was stored" in problem["detail"]
    assert problem["invalid_params"] == [{"name": "api_secret", "reason": "Vonage refused it for this api_key"}]
    assert secret_names() == []
    assert call(api, request("GET", "/accounts"))[2] == {"accounts": []}
    assert "Not-The-Secret1" not in json.dumps(problem) + json_logs.text


def test_vonage_failing_during_the_check_stores_nothing(api: ModuleType, sim: Sim) -> None:
    sim.add_account("acme0001", "Secret-acme00011")
    sim.fault("getAccountBalance", status=503, api_key="acme0001", times=10)
    status, problem = add(api, sim, "acme0001")
    assert status == 502 and problem["status"] == 502, problem
    assert secret_names() == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"api_key": "no", "api_secret": "x"}, "api_key"),
        ({"api_key": "acme0001"}, "api_secret"),
        ({"api_key": "acme0001", "api_secret": "x", "settings": {"threshold_eur": -1}}, "settings.threshold_eur"),
        ({"api_key": "acme0001", "api_secret": "x", "settings": {"topup_mode": "often"}}, "settings.topup_mode"),
        ({"api_key": "acme0001", "api_secret": "x", "extra": 1}, "extra"),
    ],
)
def test_bad_input_is_a_problem_naming_the_field(api: ModuleType, body: dict[str, Any], field: str) -> None:
    status, headers, problem = call(api, request("POST", "/accounts", body))
    assert status == 422 and headers["Content-Type"] == "application/problem+json", problem
    assert field in [p["name"] for p in problem["invalid_params"]], problem
    assert secret_names() == []


def test_an_account_already_in_the_fleet_is_a_conflict(api: ModuleType, sim: Sim) -> None:
    assert add(api, sim, "acme0001")[0] == 201
    status, problem = add(api, sim, "acme0001")
    assert status == 409 and "already in the fleet" in problem["detail"]


def test_an_add_that_died_after_storing_the_secret_completes_when_sent_again(api: ModuleType, sim: Sim) -> None:
    from account_api import aws_clients

    def die(**_: Any) -> None:
        raise RuntimeError("the function died here")

    sim.add_account("acme0001", "Secret-acme00011")
    ddb = aws_clients.client("dynamodb")
    ddb.meta.events.register("before-send.dynamodb.PutItem", die)
    with pytest.raises(RuntimeError):  # Lambda's runtime, not a problem answer: the process died
        api.fleet.add(api.NewAccount(api_key="acme0001", api_secret="Secret-acme00011"))
    ddb.meta.events.unregister("before-send.dynamodb.PutItem", die)
    assert secret_names() == [f"{PREFIX}acme0001"]
    status, added = add(api, sim, "acme0001")
    assert status == 201 and added["version"] == 1, added


def test_changing_an_account_is_refused_when_it_changed_since_it_was_read(api: ModuleType, sim: Sim) -> None:
    add(api, sim, "acme0001")
    change = {"settings": {"name": "Acme", "topup_mode": "off"}, "expected_version": 1}
    status, _, changed = call(api, request("PUT", "/accounts/acme0001", change))
    assert status == 200 and changed["version"] == 2 and changed["settings"]["topup_mode"] == "off"
    status, _, stale = call(api, request("PUT", "/accounts/acme0001", {**change, "settings": {"name": "Other"}}))
    assert status == 409 and stale["title"] == "The account changed since it was read"
    status, _, bad = call(api, request("PUT", "/accounts/acme0001", {"settings": {"daily_topup_cap": 99}}))
    assert status == 422 and bad["invalid_params"][0]["name"] == "settings.daily_topup_cap"
    status, _, missing = call(api, request("PUT", "/accounts/nope0001", {"settings": {}}))
    assert status == 404 and missing["title"] == "No such account"


def test_removing_stops_watching_keeps_history_and_schedules_the_secrets_deletion(api: ModuleType, sim: Sim) -> None:
    add(api, sim, "acme0001")
    status, _, removed = call(api, request("DELETE", "/accounts/acme0001"))
    assert status == 200 and removed["watched"] is False and removed["removed_at"], removed
    assert removed["secret_deletion_date"]
    described = boto3.client("secretsmanager").describe_secret(SecretId=f"{PREFIX}acme0001")
    assert described.get("DeletedDate")  # scheduled, within its recovery window: not gone
    assert call(api, request("DELETE", "/accounts/acme0001"))[0] == 200  # a removal sent again
    assert call(api, request("GET", "/accounts/acme0001"))[0] == 404
    assert call(api, request("GET", "/accounts"))[2] == {"accounts": []}
    with_removed = request("GET", "/accounts")
    with_removed.update(
        queryStringParameters={"removed": "true"}, multiValueQueryStringParameters={"removed": ["true"]}
    )
    assert [a["api_key"] for a in call(api, with_removed)[2]["accounts"]] == ["acme0001"]  # its item is kept
    assert call(api, request("GET", "/accounts/acme0001/history"))[0] == 200  # its history stays readable
    assert sim.requests("revokeAPISecret") == []  # nothing revoked at Vonage
    # and it can come back: its secret restored, with the credentials given now
    status, back = add(api, sim, "acme0001")
    assert status == 201 and back["watched"] is True and back["version"] == 3, back
    assert not boto3.client("secretsmanager").describe_secret(SecretId=f"{PREFIX}acme0001").get("DeletedDate")


def test_the_single_account_routes_act_on_one_account_of_the_fleet(
    api: ModuleType, sim: Sim, hooks: webhooks.WebhookServer
) -> None:
    add(api, sim, "acme0001", balance=42.5)
    status, _, balance = call(api, request("GET", "/accounts/acme0001/balance"))
    assert status == 200 and balance["value"] == 42.5
    assert call(api, request("GET", "/balance"))[2]["value"] == simmod.DEFAULT_BALANCE  # the stack's account
    change = {"moCallbackUrl": f"{hooks.url}/ok"}
    status, _, changed = call(api, request("PUT", "/accounts/acme0001/settings", change))
    assert status == 200 and changed["checks"]["moCallbackUrl"]["ok"] is True, changed
    assert sim.account("acme0001")["mo_callback_url"] == f"{hooks.url}/ok"
    assert sim.account()["mo_callback_url"] == ""  # the stack's own account untouched
    internal = {"drCallbackUrl": "https://169.254.169.254/latest"}
    status, _, refused = call(api, request("PUT", "/accounts/acme0001/settings", internal))
    assert status == 422 and sim.account("acme0001")["dr_callback_url"] == "", refused
    status, _, secrets = call(api, request("GET", "/accounts/acme0001/secrets"))
    assert status == 200 and [s["id"] for s in secrets["secrets"]] == sim.account("acme0001")["secret_ids"]
    status, _, state = call(api, request("GET", "/accounts/acme0001/rotation"))
    assert status == 200 and state["rotationEnabled"] is False
    for path in ("/accounts/nope0001/balance", "/accounts/nope0001/settings", "/accounts/nope0001/history"):
        status, headers, problem = call(api, request("GET", path))
        assert status == 404 and headers["Content-Type"] == "application/problem+json", path
    status, _, problem = call(api, request("GET", "/accounts/no!/balance"))
    assert status == 422 and problem["invalid_params"][0]["name"] == "path.api_key"


def test_the_registry_names_only_secrets_under_the_stacks_prefix(api: ModuleType, sim: Sim) -> None:
    """Two stacks in one AWS account never see each other's fleet: names come from the prefix."""
    assert api.fleet.config.secret_prefix == PREFIX
    add(api, sim, "acme0001")
    boto3.client("secretsmanager").create_secret(
        Name="other-stack/accounts/acme0002", SecretString=vonage_secret_value()
    )
    assert [a["api_key"] for a in call(api, request("GET", "/accounts"))[2]["accounts"]] == ["acme0001"]
    assert all(s.startswith(PREFIX) for s in secret_names())
    assert LambdaContext  # the handler is driven as Lambda drives it


def test_a_secret_that_is_not_printable_ascii_is_refused_without_echoing_it(api: ModuleType) -> None:
    body = {"api_key": "acme0001", "api_secret": "Sécret-ñ-1"}
    status, _, problem = call(api, request("POST", "/accounts", body))
    assert status == 422 and problem["invalid_params"][0]["name"] == "api_secret", problem
    assert "Sécret" not in json.dumps(problem)


class ProcessDied(BaseException):
    """The function's process died right after a call took effect: nothing of ours runs after it."""


def test_an_add_interrupted_at_any_aws_call_completes_when_sent_again(
    sim: Sim, vonage_secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fault matrix of an add, generated from its own calls: each AWS call fails before it
    takes effect, or the process dies right after it; the add sent again completes (or says it is
    done), with exactly the credentials given, one secret, and the account watched."""
    from botocore.exceptions import EndpointConnectionError

    from account_api import aws_clients
    from local import rotation_trigger

    rotation_arn = "arn:aws:lambda:eu-west-1:123456789012:function:rotation"
    undo = rotation_trigger.install({rotation_arn: lambda event: None})
    monkeypatch.setenv("ROTATION_FUNCTION_ARN", rotation_arn)
    for name, value in (("VONAGE_SECRET_ARN", vonage_secret), ("VONAGE_REST_BASE_URL", sim.url)):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("VONAGE_API_BASE_URL", sim.url)
    handler = load_handler("settings_api")
    fault: dict[str, Any] = {"at": -1, "mode": "", "seen": []}

    def before_send(event_name: str, **_: Any) -> None:
        fault["seen"].append(event_name.split(".", 2)[2])
        if len(fault["seen"]) - 1 == fault["at"] and fault["mode"] == "fails":
            raise EndpointConnectionError(endpoint_url="https://injected.invalid")  # never reached AWS

    def after_call(**_: Any) -> None:
        if len(fault["seen"]) - 1 == fault["at"] and fault["mode"] == "dies_after":
            raise ProcessDied

    for service in ("secretsmanager", "dynamodb"):
        events = aws_clients.client(service).meta.events
        events.register("before-send", before_send)
        events.register("after-call", after_call)

    def add_once(key: str) -> int:
        secret = f"Secret-{key}1"
        status, _, _ = call(handler, request("POST", "/accounts", {"api_key": key, "api_secret": secret}))
        return status

    try:
        sim.add_account("clean000", "Secret-clean0001")
        assert add_once("clean000") == 201
        calls = list(fault["seen"])
        assert {"CreateSecret", "RotateSecret", "PutItem"} <= set(calls), calls
        for index, operation in enumerate(calls):
            for mode in ("fails", "dies_after"):
                key = f"m{index:02d}{mode[0]}0000"
                sim.add_account(key, f"Secret-{key}1")
                fault.update(at=index, mode=mode, seen=[])
                try:
                    first = add_once(key)
                except ProcessDied:
                    first = 0
                fault.update(at=-1, mode="", seen=[])
                case = (index, operation, mode, first)
                assert first != 500, case
                again = add_once(key)
                assert again in (201, 409), case  # 409: the first attempt had finished
                stored = boto3.client("secretsmanager").get_secret_value(SecretId=f"{PREFIX}{key}")
                assert json.loads(stored["SecretString"])["api_secret"] == f"Secret-{key}1", case
                status, _, shown = call(handler, request("GET", f"/accounts/{key}"))
                assert status == 200 and shown["watched"] and shown["rotation_enabled"], case
        assert len([n for n in secret_names() if n.startswith(f"{PREFIX}m")]) == 2 * len(calls)
    finally:
        undo()
