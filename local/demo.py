"""The scripted tour of `make demo`: every step must behave, or the demo exits non-zero."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from local.stack import LocalStack

Check = tuple[str, bool, str]


def http(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def run(stack: LocalStack, say: Callable[[str], None] = print) -> list[Check]:
    api, sim, hooks = stack.api_url, stack.sim.url, stack.hooks.url
    checks: list[Check] = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append((name, ok, detail))
        say(f"  {'ok ' if ok else 'FAIL'} {name}: {detail}")

    say("1. read settings and balance")
    status, settings = http("GET", f"{api}/settings")
    check("GET /settings", status == 200 and "moCallbackUrl" in settings, f"{status} {settings}")
    status, balance = http("GET", f"{api}/balance")
    check("GET /balance", status == 200 and balance["value"] >= stack.options.threshold, f"{status} {balance}")

    say("2. set good callback URLs")
    good = {"moCallbackUrl": f"{hooks}/ok", "drCallbackUrl": f"{hooks}/ok"}
    status, body = http("PUT", f"{api}/settings", good)
    accepted = status == 200 and body["settings"]["drCallbackUrl"] == good["drCallbackUrl"]
    check("PUT good URLs", accepted and all(c["ok"] for c in body["checks"].values()), f"{status}, both checks passed")

    say("3. try a dead URL and an internal address")
    status, body = http("PUT", f"{api}/settings", {"drCallbackUrl": f"{hooks}/missing"})
    reason = (body.get("invalid_params") or [{}])[0].get("reason")
    check("PUT dead URL refused", status == 422 and reason == "status", f"{status} {reason}: {body.get('detail')}")
    status, body = http("PUT", f"{api}/settings", {"drCallbackUrl": "https://169.254.169.254/latest/meta-data/"})
    reason = (body.get("invalid_params") or [{}])[0].get("reason")
    blocked = status == 422 and reason in ("ip_literal_not_allowed", "blocked_address")
    check("PUT internal address refused", blocked, f"{status} {reason}: {body.get('detail')}")
    _, settings = http("GET", f"{api}/settings")
    check(
        "settings unchanged by refusals", settings["drCallbackUrl"] == good["drCallbackUrl"], settings["drCallbackUrl"]
    )

    say("4. drain the balance: exactly one top-up, then the balance recovers after the lag")
    http("DELETE", f"{sim}/_sim/requests")
    http("POST", f"{sim}/_sim/state", {"balance": 3.0})

    def topups() -> int:
        return len(
            [r for r in http("GET", f"{sim}/_sim/requests")[1]["requests"] if r["operation"] == "topUpAccountBalance"]
        )

    check("a top-up is sent", wait_for(lambda: topups() >= 1, 4 * stack.options.tick_seconds + 5), f"{topups()} sent")
    recovered = wait_for(
        lambda: http("GET", f"{api}/balance")[1]["value"] >= stack.options.threshold,
        stack.options.topup_lag + 4 * stack.options.tick_seconds + 5,
    )
    _, balance = http("GET", f"{api}/balance")
    check("balance recovered", recovered, f"{balance['value']} EUR")
    ticks = stack.ticks
    wait_for(lambda: stack.ticks >= ticks + 2, 4 * stack.options.tick_seconds + 5)
    check("exactly one top-up", topups() == 1, f"{topups()} top-up request(s) over {stack.ticks} scheduler runs")

    say("5. rotate the secret")
    _, before = http("GET", f"{api}/secrets")
    status, started = http("POST", f"{api}/secrets/rotate")
    check("POST /secrets/rotate", status == 202, f"{status} {started}")
    _, after = http("GET", f"{api}/secrets")
    old = next(s["id"] for s in before["secrets"] if s["current"])
    new = next((s["id"] for s in after["secrets"] if s["current"]), None)
    check("new secret is current", new is not None and new != old, f"{old[:8]}... -> {str(new)[:8]}...")
    check("new secret works", _new_secret_works(stack), "authenticated get-balance with the rotated value")
    status, balance = http("GET", f"{api}/balance")
    check("API still answers", status == 200, f"{status} {balance}")

    _fleet(stack, check, say)
    _subaccounts(stack, check, say)
    return checks


def _fleet(stack: LocalStack, check: Callable[[str, bool, str], None], say: Callable[[str], None]) -> None:
    """One stack, many accounts: added through the API, decided on the queue, each on its own."""
    import boto3

    api, sim = stack.api_url, stack.sim.url
    say("6. a fleet: three more accounts, one low, one whose credentials are changed behind our back")
    accounts = {"demo0001": 25.0, "demo0002": 3.0, "demo0003": 25.0}
    for key, balance in accounts.items():
        http(
            "POST",
            f"{sim}/_sim/accounts",
            {"api_key": key, "api_secret": f"Demo-Secret-{key}", "balance": balance, "trx": "demo-trx"},
        )
    status, refused = http("POST", f"{api}/accounts", {"api_key": "demo0001", "api_secret": "Wrong-Secret-1"})
    stored = boto3.client("secretsmanager").list_secrets(Filters=[{"Key": "name", "Values": ["account-ops/accounts/"]}])
    check(
        "wrong credentials refused, nothing stored",
        status == 422 and not stored["SecretList"],
        f"{status} {refused.get('title')}",
    )
    http("DELETE", f"{sim}/_sim/requests")
    added = []
    for key in accounts:
        status, body = http(
            "POST", f"{api}/accounts", {"api_key": key, "api_secret": f"Demo-Secret-{key}", "topup_trx": "demo-trx"}
        )
        added.append(status == 201 and body.get("rotation_enabled") is True)
    check("three accounts added", all(added), "credentials checked, stored under account-ops/accounts/, rotation set")
    # someone changes demo0003's secret by hand: Vonage will refuse it (401) on every tick
    boto3.client("secretsmanager").put_secret_value(
        SecretId="account-ops/accounts/demo0003",
        SecretString=json.dumps({"api_key": "demo0003", "api_secret": "Typo-Secret-3"}),
    )

    def requests(operation: str, key: str) -> int:
        return len(_sent(sim, operation, key))

    dead = stack.resources.queues["FleetDeadLetterQueue"]
    sqs = boto3.client("sqs")

    def dead_letters() -> int:
        attributes = sqs.get_queue_attributes(QueueUrl=dead, AttributeNames=["ApproximateNumberOfMessages"])
        return int(attributes["Attributes"]["ApproximateNumberOfMessages"])

    ticks = stack.ticks
    wait_for(lambda: requests("topUpAccountBalance", "demo0002") >= 1 and dead_letters() >= 1, 30)
    wait_for(lambda: stack.ticks >= ticks + 4, 10)
    check(
        "the low account topped up once",
        requests("topUpAccountBalance", "demo0002") == 1 and "topup_succeeded" in _outcomes(api, "demo0002"),
        "1 top-up for demo0002, accepted",
    )
    _, decided = http("GET", f"{api}/accounts/demo0001/history")
    check(
        "the others decided on every tick",
        len(decided["decisions"]) >= 3,
        f"demo0001: {len(decided['decisions'])} decisions over {stack.ticks - ticks} ticks",
    )
    check(
        "the broken one fails alone, then its messages go to the dead-letter queue",
        requests("topUpAccountBalance", "demo0003") == 0 and dead_letters() >= 1,
        f"{dead_letters()} message(s) for FleetAccountNotEvaluatedAlarm",
    )
    status, listed = http("GET", f"{api}/accounts")
    check(
        "GET /accounts",
        status == 200 and len(listed["accounts"]) == 3,
        ", ".join(a["api_key"] for a in listed["accounts"]),
    )
    status, removed = http("DELETE", f"{api}/accounts/demo0003")
    check(
        "remove the broken one",
        status == 200 and removed["secret_deletion_date"] is not None,
        f"watching stopped, history kept, secret deletion scheduled for {removed.get('secret_deletion_date')}",
    )


def _subaccounts(stack: LocalStack, check: Callable[[str, bool, str], None], say: Callable[[str], None]) -> None:
    """A primary funds its subaccounts from one listing a tick; it tops itself up before a transfer
    would take it below its own threshold."""
    api, sim = stack.api_url, stack.sim.url
    say("7. a primary with subaccounts: drain one, the primary pays for it and is topped up first")
    primary = "demoprim"
    http(
        "POST",
        f"{sim}/_sim/accounts",
        {"api_key": primary, "api_secret": "Demo-Secret-prim", "balance": 25.0, "trx": "demo-trx"},
    )
    subaccounts: dict[str, dict[str, Any]] = {  # own, shared with the primary, suspended (low: never funded)
        "demosub1": {"balance": 25.0},
        "demosub2": {"balance": None},
        "demosub3": {"balance": 1.0, "suspended": True},
    }
    for key, fields in subaccounts.items():
        http(
            "POST",
            f"{sim}/_sim/subaccounts",
            {"api_key": key, "api_secret": f"Demo-{key}-S1", "parent": primary, **fields},
        )
    added, _ = http(
        "POST",
        f"{api}/accounts",
        {
            "api_key": primary,
            "api_secret": "Demo-Secret-prim",
            "topup_trx": "demo-trx",
            "settings": {"threshold_eur": 10.0, "subaccounts": {"watch": "all"}},
        },
    )
    status, view = http("GET", f"{api}/accounts/{primary}/subaccounts")
    states = {s["api_key"]: s["state"] for s in view.get("subaccounts", [])}
    check(
        "a primary added: its subaccounts listed in one call",
        added == 201
        and status == 200
        and states == {"demosub1": "ok", "demosub2": "shared_balance", "demosub3": "suspended"},
        ", ".join(f"{k} {v}" for k, v in states.items()),
    )

    def transfers() -> list[dict[str, Any]]:
        listed = http("GET", f"{sim}/_sim/state")[1].get("transfers", [])
        return [t for t in listed if t["from"] == primary]

    http("DELETE", f"{sim}/_sim/requests")
    # demosub1 runs dry: a 20 EUR transfer would leave the primary at 5, below its threshold of 10
    http("POST", f"{sim}/_sim/state", {"api_key": "demosub1", "balance": 1.0})
    funded = wait_for(lambda: len(transfers()) >= 1, stack.options.topup_lag + 8 * stack.options.tick_seconds + 10)
    topped, paid = _sent(sim, "topUpAccountBalance", primary), _sent(sim, "transferBalance", primary)
    check(
        "the primary topped up before it pays",
        len(topped) == 1 and "topup_succeeded" in _outcomes(api, primary) and bool(paid) and topped[0] < paid[0],
        f"{len(topped)} top-up for {primary}, then the transfer {max(paid or topped) - topped[0]:.1f} s later"
        if topped
        else "no top-up",
    )
    ticks = stack.ticks
    wait_for(lambda: stack.ticks >= ticks + 3, 4 * stack.options.tick_seconds + 5)
    moved = transfers()
    check(
        "exactly one transfer to the drained subaccount",
        funded and len(moved) == 1 and moved[0]["to"] == "demosub1",
        ", ".join(f"{t['amount']} EUR {t['from']} -> {t['to']} ({t['reference']})" for t in moved)
        + f" over {stack.ticks} scheduler runs",
    )
    _, view = http("GET", f"{api}/accounts/{primary}/subaccounts")
    listed = {s["api_key"]: s for s in view.get("subaccounts", [])}
    last = (listed.get("demosub1") or {}).get("last_transfer") or {}
    check(
        "the shared and the suspended one never funded; the transfer is on record",
        len(moved) == 1 and last.get("by_account_ops") is True and listed["demosub1"]["balance"] >= 5.0,
        f"demosub1 at {listed.get('demosub1', {}).get('balance')} EUR, last transfer {last.get('reference')}, "
        f"primary at {view.get('primary_balance')} EUR",
    )


def _sent(sim: str, operation: str, key: str) -> list[float]:
    """When the simulator received `key`'s requests of this operation."""
    entries = http("GET", f"{sim}/_sim/requests")[1]["requests"]
    return [r["time"] for r in entries if r["operation"] == operation and r["api_key"] == key]


def _outcomes(api: str, key: str) -> set[str]:
    return {d["outcome"] for d in http("GET", f"{api}/accounts/{key}/history")[1].get("decisions", [])}


def _new_secret_works(stack: LocalStack) -> bool:
    import boto3

    from account_api import AccountClient

    value = json.loads(
        boto3.client("secretsmanager").get_secret_value(SecretId=stack.resources.secret_arn, VersionStage="AWSCURRENT")[
            "SecretString"
        ]
    )
    client = AccountClient(api_key=value["api_key"], api_secret=value["api_secret"], rest_base_url=stack.sim.url)
    return value["api_secret"] != "Sim-Secret-0001" and client.get_account_balance().value >= 0
