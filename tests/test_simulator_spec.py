"""Every answer the simulator gives for the eight operations validates against the reference spec,
except the real-API behaviours the spec does not document, which are listed here on purpose."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import requests
import yaml

from local import simulator as simmod
from tests.conftest import Sim

# A copy of ../shared/reference/vonage-account-api.yml, kept in the repo so tests run anywhere.
SPEC_PATH = Path(__file__).resolve().parent / "data" / "vonage-account-api.yml"

# Real API answers the spec does not document (docs/vonage-api-facts.md).
UNDOCUMENTED = {
    ("createAPISecret", 403): "a third secret is refused with 403 (the spec says 400)",
    ("changeAccountSettings", 400): "a callback URL that does not answer 200 is refused",
    ("registerSender", 400): "an invalid sender body is refused with a problem body",
    ("registerSender", 401): "bad credentials on register-sender",
}

PATHS = {
    "getAccountBalance": ("/account/get-balance", "get"),
    "topUpAccountBalance": ("/account/top-up", "post"),
    "changeAccountSettings": ("/account/settings", "post"),
    "registerSender": ("/account/register-sender", "post"),
    "retrieveAPISecrets": ("/accounts/{api_key}/secrets", "get"),
    "createAPISecret": ("/accounts/{api_key}/secrets", "post"),
    "retrieveAPISecret": ("/accounts/{api_key}/secrets/{secret_id}", "get"),
    "revokeAPISecret": ("/accounts/{api_key}/secrets/{secret_id}", "delete"),
}


def _spec() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text())
    return loaded


def _resolve(node: Any, spec: dict[str, Any]) -> Any:
    """Inline $refs, and read the spec's look-alike oneOf lists as anyOf (docs/vonage-api-facts.md)."""
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = spec
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part]
            return _resolve(target, spec)
        return {("anyOf" if k == "oneOf" else k): _resolve(v, spec) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, spec) for v in node]
    return node


def _schema_for(spec: dict[str, Any], operation: str, status: int) -> tuple[bool, dict[str, Any] | None]:
    path, method = PATHS[operation]
    responses = _resolve(spec["paths"][path][method]["responses"], spec)
    response = responses.get(str(status))
    if response is None:
        return False, None
    content = response.get("content", {}).get("application/json")
    return True, (content or {}).get("schema")


def _exercise(sim: Sim) -> list[tuple[str, int, requests.Response]]:
    """Drive every operation through its successes and its documented failures."""
    good = (simmod.DEFAULT_API_KEY, simmod.DEFAULT_API_SECRET)
    bad = (simmod.DEFAULT_API_KEY, "Wrong-Secret-1")
    key = simmod.DEFAULT_API_KEY
    u = sim.url
    s = requests.Session()
    calls: list[tuple[str, requests.Response]] = []

    def call(operation: str, method: str, path: str, auth: tuple[str, str] = good, **kw: Any) -> requests.Response:
        response = s.request(method, u + path, auth=auth, headers={"Accept": "application/json"}, timeout=5, **kw)
        calls.append((operation, response))
        return response

    call("getAccountBalance", "GET", "/account/get-balance")
    call("getAccountBalance", "GET", "/account/get-balance", auth=bad)
    call("topUpAccountBalance", "POST", "/account/top-up", data={"trx": simmod.DEFAULT_TRX})
    call("topUpAccountBalance", "POST", "/account/top-up", data={"trx": "wrong"})
    call("topUpAccountBalance", "POST", "/account/top-up", auth=bad, data={"trx": simmod.DEFAULT_TRX})
    sim.set(auto_reload=False)
    call("topUpAccountBalance", "POST", "/account/top-up", data={"trx": simmod.DEFAULT_TRX})
    call("changeAccountSettings", "POST", "/account/settings")
    call("changeAccountSettings", "POST", "/account/settings", data={"moCallBackUrl": "https://example.com/mo"})
    call("changeAccountSettings", "POST", "/account/settings", auth=bad)
    sim.control("POST", "/_sim/callbacks", {"dead.example.com": 500})
    call("changeAccountSettings", "POST", "/account/settings", data={"drCallBackUrl": "https://dead.example.com/"})
    call("registerSender", "POST", "/account/register-sender", json={"provider": "email", "value": "a@example.com"})
    call("registerSender", "POST", "/account/register-sender", json={"provider": "email", "value": "nope"})
    call("registerSender", "POST", "/account/register-sender", auth=bad, json={"provider": "email", "value": "a@b.co"})
    call("retrieveAPISecrets", "GET", f"/accounts/{key}/secrets")
    call("retrieveAPISecrets", "GET", f"/accounts/{key}/secrets", auth=bad)
    call("retrieveAPISecrets", "GET", "/accounts/unknown1/secrets")
    created = call("createAPISecret", "POST", f"/accounts/{key}/secrets", json={"secret": "Second-Secret-2"}).json()
    call("createAPISecret", "POST", f"/accounts/{key}/secrets", json={"secret": "weak"})
    call("createAPISecret", "POST", f"/accounts/{key}/secrets", json={"secret": "Third-Secret-33"})
    call("createAPISecret", "POST", f"/accounts/{key}/secrets", auth=bad, json={"secret": "Third-Secret-33"})
    call("createAPISecret", "POST", "/accounts/unknown1/secrets", json={"secret": "Third-Secret-33"})
    call("retrieveAPISecret", "GET", f"/accounts/{key}/secrets/{created['id']}")
    call("retrieveAPISecret", "GET", f"/accounts/{key}/secrets/nope")
    call("retrieveAPISecret", "GET", "/accounts/unknown1/secrets/nope")
    call("retrieveAPISecret", "GET", f"/accounts/{key}/secrets/nope", auth=bad)
    call("revokeAPISecret", "DELETE", f"/accounts/{key}/secrets/{created['id']}")
    remaining = s.get(u + f"/accounts/{key}/secrets", auth=good, timeout=5).json()["_embedded"]["secrets"][0]["id"]
    call("revokeAPISecret", "DELETE", f"/accounts/{key}/secrets/{remaining}")
    call("revokeAPISecret", "DELETE", f"/accounts/{key}/secrets/nope")
    call("revokeAPISecret", "DELETE", f"/accounts/{key}/secrets/nope", auth=bad)
    return [(op, r.status_code, r) for op, r in calls]


def test_every_simulator_answer_matches_the_spec(sim: Sim) -> None:
    spec = _spec()
    exchanges = _exercise(sim)
    seen_statuses: set[tuple[str, int]] = set()
    for operation, status, response in exchanges:
        seen_statuses.add((operation, status))
        documented, schema = _schema_for(spec, operation, status)
        if not documented:
            assert (operation, status) in UNDOCUMENTED, f"{operation} answered an undocumented {status}"
            continue
        if schema is None:
            continue  # the spec documents the status without a body schema (e.g. 204, settings 401)
        body = json.loads(response.content)
        jsonschema.validate(body, schema, cls=jsonschema.Draft4Validator)
    # every operation was exercised, and every documented failure code was produced
    assert {op for op, _ in seen_statuses} == set(PATHS)
    for operation, (path, method) in PATHS.items():
        for code in _resolve(spec["paths"][path][method]["responses"], spec):
            if (operation, int(code)) == ("createAPISecret", 400):
                assert (operation, 400) in seen_statuses  # rule violations still answer 400
            assert (operation, int(code)) in seen_statuses, f"{operation} {code} never produced"


def test_xml_answers_where_the_spec_lists_xml(sim: Sim) -> None:
    response = requests.get(
        sim.url + "/account/get-balance",
        auth=(simmod.DEFAULT_API_KEY, simmod.DEFAULT_API_SECRET),
        headers={"Accept": "application/xml"},
        timeout=5,
    )
    assert response.headers["Content-Type"] == "application/xml"
    assert (
        response.text.startswith("<?xml")
        and "<accountBalance><value>25.0</value><autoReload>true</autoReload>" in response.text
    )


@pytest.mark.parametrize("operation", sorted(PATHS))
def test_spec_knows_the_operation(operation: str) -> None:
    path, method = PATHS[operation]
    assert _spec()["paths"][path][method]["operationId"].lower() == operation.lower()


def test_a_fleet_of_accounts_each_with_its_own_state_faults_and_latency(sim: Sim) -> None:
    """Fleet tests need one account to fail or be slow alone."""
    import time

    from account_api.client import AccountClient
    from account_api.errors import AccountApiError

    sim.add_account("fleet0001", "Fleet-Secret-1", balance=3.0)
    sim.add_account("fleet0002", "Fleet-Secret-2", balance=40.0, latency=0.3)
    with pytest.raises(urllib.error.HTTPError) as again:
        sim.add_account("fleet0001", "Other-Secret-1")
    assert again.value.code == 409
    sim.fault("getAccountBalance", status=503, api_key="fleet0001", times=5)

    def client(key: str, secret: str) -> AccountClient:
        return AccountClient(api_key=key, api_secret=secret, rest_base_url=sim.url, api_base_url=sim.url)

    with pytest.raises(AccountApiError):
        client("fleet0001", "Fleet-Secret-1").get_account_balance()
    started = time.monotonic()
    assert client("fleet0002", "Fleet-Secret-2").get_account_balance().value == 40.0
    assert time.monotonic() - started >= 0.3
    assert client(simmod.DEFAULT_API_KEY, simmod.DEFAULT_API_SECRET).get_account_balance().value == 25.0
    with pytest.raises(AccountApiError):
        client("fleet0002", "Fleet-Secret-1").get_account_balance()  # one account's secret is not another's
    assert {e["api_key"] for e in sim.requests("getAccountBalance")} >= {
        "fleet0001",
        "fleet0002",
        simmod.DEFAULT_API_KEY,
    }
    assert all("Fleet-Secret" not in json.dumps(e) for e in sim.requests())


# -- the Subaccounts API ----------------------------------------------------------------------------

# A copy of ../shared/reference/vonage-subaccounts-api.yml, kept in the repo so tests run anywhere.
SUBACCOUNTS_SPEC_PATH = Path(__file__).resolve().parent / "data" / "vonage-subaccounts-api.yml"
SUBACCOUNT_PATHS = {
    "retrieveSubaccountsList": ("/{api_key}/subaccounts", "get"),
    "createSubAccount": ("/{api_key}/subaccounts", "post"),
    "retrieveSubaccount": ("/{api_key}/subaccounts/{subaccount_key}", "get"),
    "modifySubaccount": ("/{api_key}/subaccounts/{subaccount_key}", "patch"),
    "retrieveBalanceTransfers": ("/{api_key}/balance-transfers", "get"),
    "transferBalance": ("/{api_key}/balance-transfers", "post"),
}
SUBACCOUNTS_UNDOCUMENTED = {
    ("retrieveBalanceTransfers", 422): "a listing without a start_date (our client always sends one)",
}


def _exercise_subaccounts(sim: Sim) -> list[tuple[str, int, requests.Response]]:
    good = (simmod.DEFAULT_API_KEY, simmod.DEFAULT_API_SECRET)
    bad = (simmod.DEFAULT_API_KEY, "Wrong-Secret-1")
    key = simmod.DEFAULT_API_KEY
    base = sim.url + f"/accounts/{key}"
    s = requests.Session()
    calls: list[tuple[str, requests.Response]] = []

    def call(operation: str, method: str, path: str, auth: tuple[str, str] = good, **kw: Any) -> requests.Response:
        url = path if path.startswith("http") else base + path
        response = s.request(method, url, auth=auth, headers={"Accept": "application/json"}, timeout=5, **kw)
        calls.append((operation, response))
        return response

    sim.control("POST", "/_sim/subaccounts", {"api_key": "own00001", "api_secret": "Own-Secret-01", "balance": 5.0})
    sim.control("POST", "/_sim/subaccounts", {"api_key": "shared01", "api_secret": "Shared-Secret-1", "balance": None})
    other = sim.url + "/accounts/unknown1"
    for op, method, path, body in (
        ("retrieveSubaccountsList", "GET", "/subaccounts", None),
        ("createSubAccount", "POST", "/subaccounts", {"name": "Department B", "use_primary_account_balance": False}),
        ("retrieveSubaccount", "GET", "/subaccounts/own00001", None),
        ("modifySubaccount", "PATCH", "/subaccounts/own00001", {"name": "Department A"}),
        (
            "transferBalance",
            "POST",
            "/balance-transfers",
            {"from": key, "to": "own00001", "amount": 5, "reference": "r1"},
        ),
        ("retrieveBalanceTransfers", "GET", "/balance-transfers?start_date=2020-01-01T00:00:00Z", None),
    ):
        call(op, method, path, json=body)
        call(op, method, path, auth=bad, json=body)
        call(op, method, other + path, json=body)
    call("retrieveSubaccount", "GET", "/subaccounts/nosuch01")
    call("modifySubaccount", "PATCH", "/subaccounts/own00001", json={"suspended": "yes"})
    call("createSubAccount", "POST", "/subaccounts", json={"name": ""})
    call("transferBalance", "POST", "/balance-transfers", json={"from": key, "to": "shared01", "amount": 1})
    call("transferBalance", "POST", "/balance-transfers", json={"from": key, "to": "own00001", "amount": 1e6})
    call("retrieveBalanceTransfers", "GET", "/balance-transfers")
    sim.set(subaccounts_enabled=False)
    for op, method, path in (
        ("retrieveSubaccountsList", "GET", "/subaccounts"),
        ("createSubAccount", "POST", "/subaccounts"),
        ("retrieveSubaccount", "GET", "/subaccounts/own00001"),
        ("modifySubaccount", "PATCH", "/subaccounts/own00001"),
        ("transferBalance", "POST", "/balance-transfers"),
        ("retrieveBalanceTransfers", "GET", "/balance-transfers?start_date=2020-01-01T00:00:00Z"),
    ):
        call(op, method, path, json={"name": "x"})
    return [(op, r.status_code, r) for op, r in calls]


def test_every_subaccounts_answer_matches_the_subaccounts_spec(sim: Sim) -> None:
    spec: dict[str, Any] = yaml.safe_load(SUBACCOUNTS_SPEC_PATH.read_text())
    seen: set[tuple[str, int]] = set()
    for operation, status, response in _exercise_subaccounts(sim):
        seen.add((operation, status))
        path, method = SUBACCOUNT_PATHS[operation]
        responses = _resolve(spec["paths"][path][method]["responses"], spec)
        if str(status) not in responses:
            assert (operation, status) in SUBACCOUNTS_UNDOCUMENTED, f"{operation} answered an undocumented {status}"
            continue
        schema = _nullable_where_described(
            (responses[str(status)].get("content", {}).get("application/json") or {}).get("schema")
        )
        assert schema is not None
        # the spec's schemas declare no required fields for successes: require what the client reads
        jsonschema.validate(json.loads(response.content), schema, cls=jsonschema.Draft4Validator)
    for operation, (path, method) in SUBACCOUNT_PATHS.items():
        assert _spec_operation_id(spec, path, method).lower() == operation.lower()
        for code in spec["paths"][path][method]["responses"]:
            assert (operation, int(code)) in seen, f"{operation} {code} never produced"


def _nullable_where_described(node: Any) -> Any:
    """The spec says `balance` and `credit_limit` are null for a shared balance but declares them
    `type: number` without `nullable`: read a field whose description says null as nullable
    (docs/vonage-api-facts.md)."""
    if isinstance(node, dict):
        out = {k: _nullable_where_described(v) for k, v in node.items()}
        if isinstance(out.get("type"), str) and "null" in str(out.get("description", "")).lower():
            out["type"] = [out["type"], "null"]
        return out
    if isinstance(node, list):
        return [_nullable_where_described(v) for v in node]
    return node


def _spec_operation_id(spec: dict[str, Any], path: str, method: str) -> str:
    return str(spec["paths"][path][method]["operationId"])


def test_the_subaccount_listing_carries_what_the_watcher_reads(sim: Sim) -> None:
    """Shared balances are null, credit is a negative limit, suspension is shown (the spec's fields)."""
    sim.control("POST", "/_sim/subaccounts", {"api_key": "own00001", "api_secret": "Own-Secret-01", "balance": 5.0})
    sim.control(
        "POST",
        "/_sim/subaccounts",
        {"api_key": "credit01", "api_secret": "Credit-Secret1", "balance": -3.0, "credit_limit": -50.0},
    )
    sim.control("POST", "/_sim/subaccounts", {"api_key": "shared01", "api_secret": "Shared-Secret-1", "balance": None})
    sim.set(api_key="own00001", suspended=True)
    answer = requests.get(
        sim.url + f"/accounts/{simmod.DEFAULT_API_KEY}/subaccounts",
        auth=(simmod.DEFAULT_API_KEY, simmod.DEFAULT_API_SECRET),
        timeout=5,
    ).json()["_embedded"]
    assert answer["primary_account"]["api_key"] == simmod.DEFAULT_API_KEY
    subs = {s["api_key"]: s for s in answer["subaccounts"]}
    assert subs["shared01"]["balance"] is None and subs["shared01"]["use_primary_account_balance"] is True
    assert subs["credit01"]["balance"] == -3.0 and subs["credit01"]["credit_limit"] == -50.0
    assert subs["own00001"]["suspended"] is True and subs["own00001"]["balance"] == 5.0
