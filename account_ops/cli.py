"""account-ops: check, change and operate a deployed account-ops stack, or the local stack."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn, TextIO

from botocore import exceptions as boto

from account_ops import output as o
from account_ops.errors import EXIT_CODES_HELP, CliError, Exit, aws_failure, one_line
from account_ops.target import REPOSITORY, ApiAnswer, Target, default_state_file


@dataclass
class Result:
    """What a command did: the model (stdout, as a table or JSON), its text lines, and the one line
    for stderr when the answer was no."""

    model: o.Output
    lines: list[str]
    code: Exit = Exit.OK
    error: str | None = None


def _problem(answer: ApiAnswer, what: str) -> str:
    """One line for an API answer that was not what the command needed."""
    if answer.ok:
        return f"{what}: HTTP {answer.status} but the answer is not the JSON the API documents: {answer.body!r}"
    body = answer.body if isinstance(answer.body, dict) else {}
    detail = body.get("detail") if body else answer.body
    return one_line(f"{what}: HTTP {answer.status} {body.get('title', '')}: {detail or ''}".rstrip(": "))


def _age(created: str) -> str:
    days = (datetime.now(UTC) - datetime.fromisoformat(created.replace("Z", "+00:00"))).days
    return "today" if days < 1 else f"{days} days old"


# -- the commands ------------------------------------------------------------------------------------


def status(target: Target, args: argparse.Namespace) -> Result:
    problems: list[str] = []

    def read(path: str, what: str, query: dict[str, str] | None = None) -> dict[str, Any] | None:
        answer = target.call("GET", path, query=query)
        if answer.json_ok:
            return dict(answer.body)
        problems.append(_problem(answer, what))
        return None

    version = read("/version", "release")
    one = read(f"/accounts/{args.account}", f"account {args.account}") if args.account else None
    if args.account and one is None:  # an unknown account: nothing else of it can be read
        raise CliError(Exit.FAILED, problems[0])
    fleet = None if args.account else read("/accounts", "the fleet's accounts")
    balance = read(_of(args, "/balance"), "balance")
    switch = read("/topups", "the top-up switch")  # the whole fleet's
    settings = read(_of(args, "/settings"), "callback URLs")
    secrets = read(_of(args, "/secrets"), "secrets")
    rotation = read(_of(args, "/rotation"), "rotation")
    history = read(_of(args, "/history"), "last runs", {"days": "1", "limit": "5"})
    primaries = _primaries(target, one, fleet, problems)
    try:
        alarms = None if target.local else _alarms(target)
    except CliError as exc:
        problems.append(str(exc))
        alarms = None
    if switch is None:  # never guess "live" about money
        topups = o.TopUps(state="unknown")
    elif switch.get("paused"):
        topups = o.TopUps(
            state="paused",
            changedBy=switch.get("changedBy"),
            changedAt=switch.get("changedAt"),
            reason=switch.get("reason"),
        )
    else:
        mode = (one or {}).get("settings", {}).get("topup_mode")
        dry = target.parameters.get("DryRun") == "true" or mode == "dry_run"
        state = "off" if mode == "off" else "dry_run" if dry else "live"
        topups = o.TopUps(state=state, changedBy=switch.get("changedBy"))
    model = o.Status(
        stack=target.name,
        region=target.region,
        account=one.get("label") if one else None,
        fleet=len(fleet["accounts"]) if fleet and isinstance(fleet.get("accounts"), list) else None,
        release=version.get("version") if version else None,
        balance=o.Balance(**{k: balance[k] for k in ("value", "currency", "autoReload")}) if balance else None,
        topups=topups,
        callbacks={k: settings.get(k) for k in ("moCallbackUrl", "drCallbackUrl")} if settings else None,
        secrets=[o.Secret(id=s["id"], current=s["current"], createdAt=s["createdAt"]) for s in secrets["secrets"]]
        if secrets
        else None,
        rotation=rotation,
        lastRuns=[d["outcome"] for d in history["decisions"]] if history else None,
        alarms=alarms,
        problems=problems,
        primaries=primaries,
    )
    unknown = [p for p in (balance, switch) if p is None]
    return Result(
        model,
        _status_lines(model, local=target.local),
        Exit.FAILED if unknown else Exit.OK,
        f"{len(problems)} part(s) could not be read: {problems[0]}" if unknown else None,
    )


def _primaries(
    target: Target, one: dict[str, Any] | None, fleet: dict[str, Any] | None, problems: list[str]
) -> list[o.PrimaryNode] | None:
    """The tree: each primary (the one account with --account) and its subaccounts, one listing each."""
    accounts = [one] if one else (fleet or {}).get("accounts") or []
    keys = [a["api_key"] for a in accounts if isinstance(a, dict) and (a.get("settings") or {}).get("subaccounts")]
    if not keys:
        return None
    nodes = []
    for key in keys:
        answer = target.call("GET", f"/accounts/{key}/subaccounts")
        if not answer.json_ok:
            problems.append(_problem(answer, f"subaccounts of {key}"))
            continue
        rows = [r for r in answer.body.get("subaccounts") or [] if isinstance(r, dict)]
        counts: dict[str, int] = {}
        for r in rows:
            counts[str(r.get("state"))] = counts.get(str(r.get("state")), 0) + 1
        shown = rows if one else [r for r in rows if r.get("state") in ("low", "suspended")]
        nodes.append(
            o.PrimaryNode(
                primary=key,
                enabled=bool(answer.body.get("enabled")),
                counts=dict(sorted(counts.items())),
                subaccounts=[
                    o.SubaccountLine(
                        api_key=str(r.get("api_key")),
                        name=str(r.get("name") or ""),
                        state=str(r.get("state")),
                        balance=r.get("balance"),
                        lastTransfer=r.get("last_transfer"),
                    )
                    for r in shown
                ],
            )
        )
    return nodes


def _tree_lines(nodes: list[o.PrimaryNode]) -> list[str]:
    lines = []
    for node in nodes:
        if not node.enabled:
            lines.append(f"  subaccounts    {node.primary}: NOT ENABLED at Vonage (the Subaccounts API answers 403)")
            continue
        counts = ", ".join(f"{n} {state.replace('_', ' ')}" for state, n in node.counts.items()) or "none"
        lines.append(f"  subaccounts    {node.primary}: {sum(node.counts.values())} ({counts})")
        for i, sub in enumerate(node.subaccounts):
            branch = "\u2514" if i == len(node.subaccounts) - 1 else "\u251c"
            balance = f"{sub.balance:.2f} EUR" if sub.balance is not None else "shared"
            last = sub.lastTransfer
            moved = f", last transfer {last['amount']:.2f} at {last.get('created_at') or '-'}" if last else ""
            lines.append(
                f"    {branch} {sub.api_key:<10} {balance:>12}  {sub.state.replace('_', ' ')}{moved}  {sub.name}"
            )
    return lines


def _status_lines(s: o.Status, *, local: bool) -> list[str]:
    def or_unknown(value: str | None) -> str:
        return value if value is not None else "UNKNOWN (see below)"

    t = s.topups
    mode = {
        "live": "live",
        "dry_run": "dry run (decides and alerts, never tops up)",
        "off": "off for this account (its top-up mode): watched and alerted, never topped up",
        "paused": f"PAUSED by {t.changedBy} at {t.changedAt}: {t.reason or '-'}",
        "unknown": "UNKNOWN: the top-up switch could not be read",
    }[t.state]
    lines = [f"account-ops status: {s.stack} ({s.region})", f"  release        {or_unknown(s.release)}"]
    if s.account:
        lines.append(f"  account        {s.account}, of the fleet")
    elif s.fleet is not None:
        lines.append(f"  fleet          the stack's own account and {s.fleet} more (account-ops accounts list)")
    if s.balance:
        reload = "on" if s.balance.autoReload else "OFF (top-ups would be refused)"
        lines.append(f"  balance        {s.balance.value:.2f} {s.balance.currency}, auto-reload {reload}")
    else:
        lines.append("  balance        UNKNOWN (see below)")
    lines.append(f"  top-ups        {mode}")
    if s.callbacks is not None:
        lines.append(f"  inbound SMS    {s.callbacks['moCallbackUrl'] or '(none)'}")
        lines.append(f"  receipts       {s.callbacks['drCallbackUrl'] or '(none)'}")
    for secret in s.secrets or []:
        mark = " (current)" if secret.current else ""
        lines.append(f"  secret         {secret.id}{mark}, {_age(secret.createdAt)}")
    if s.rotation:
        r = s.rotation
        lines.append(
            f"  rotation       {'on' if r['rotationEnabled'] else 'off'}, {r['state'].replace('_', ' ')}; "
            f"last {r.get('lastRotatedAt') or '-'}, next {r.get('nextRotationAt') or '-'}"
        )
    if s.lastRuns is not None:
        lines.append(f"  last runs      {', '.join(s.lastRuns) or '(none in the last day)'}")
    lines += _tree_lines(s.primaries or [])
    if s.alarms is not None:
        firing = f": {', '.join(s.alarms.inAlarm)}" if s.alarms.inAlarm else ""
        lines.append(f"  alarms         {s.alarms.count} alarms, {len(s.alarms.inAlarm)} in ALARM{firing}")
    elif local:
        lines.append("  alarms         none on the local stack")
    lines += [f"  unreadable     {p}" for p in s.problems]
    return lines


def _stack_alarms(target: Target) -> list[dict[str, Any]]:
    """This stack's alarms, from its own resources (a name prefix would also match another stack's,
    `account-ops-prod-...` for `account-ops`)."""
    names: list[str] = []
    pages = target.client("cloudformation").get_paginator("list_stack_resources").paginate(StackName=target.name)
    for page in pages:
        names += [
            r["PhysicalResourceId"]
            for r in page["StackResourceSummaries"]
            if r["ResourceType"] == "AWS::CloudWatch::Alarm" and r.get("PhysicalResourceId")
        ]
    alarms: list[dict[str, Any]] = []
    cloudwatch = target.client("cloudwatch")
    for start in range(0, len(names), 100):  # DescribeAlarms takes at most 100 names
        answer = cloudwatch.describe_alarms(AlarmNames=names[start : start + 100])
        alarms += answer["MetricAlarms"] + answer.get("CompositeAlarms", [])
    return alarms


def _alarms(target: Target) -> o.Alarms:
    try:
        alarms = _stack_alarms(target)
    except (boto.BotoCoreError, boto.ClientError) as exc:
        raise aws_failure(exc, "alarms") from None
    return o.Alarms(count=len(alarms), inAlarm=[a["AlarmName"] for a in alarms if a["StateValue"] == "ALARM"])


def _of(args: argparse.Namespace, path: str) -> str:
    """A single-account route, for one account of the fleet with --account KEY."""
    account = getattr(args, "account", None)
    return f"/accounts/{account}{path}" if account else path


def settings_get(target: Target, args: argparse.Namespace) -> Result:
    answer = target.call("GET", _of(args, "/settings"))
    if not answer.json_ok:
        return Result(o.Settings(), [], Exit.FAILED, _problem(answer, "settings"))
    model = o.Settings.model_validate(answer.body)
    return Result(model, json.dumps(answer.body, indent=2).splitlines())


def settings_set(target: Target, args: argparse.Namespace) -> Result:
    change = {k: v for k, v in (("moCallbackUrl", args.mo), ("drCallbackUrl", args.dr)) if v is not None}
    answer = target.call("PUT", _of(args, "/settings"), change)
    body = answer.body if isinstance(answer.body, dict) else {}
    checks = body.get("checks") or {}
    lines = [
        f"  check {name}: {'ok' if check.get('ok') else check.get('reason')} ({check.get('detail')})"
        for name, check in checks.items()
        if isinstance(check, dict)
    ]
    if answer.json_ok:
        settings = {k: v for k, v in body.items() if k != "checks"}
        return Result(
            o.SettingsChange(changed=True, checks=checks, settings=settings, problem=None), [*lines, "changed"]
        )
    return Result(
        o.SettingsChange(changed=False, checks=checks, settings=None, problem=body or {"detail": answer.body}),
        lines,
        Exit.FAILED,
        _problem(answer, "not changed"),
    )


def rotate(target: Target, args: argparse.Namespace, say: Callable[[str], None]) -> Result:
    started = target.call("POST", _of(args, "/secrets/rotate"))
    if not started.json_ok:
        return Result(
            o.Rotation(state="failed", versionId=None), [], Exit.FAILED, _problem(started, "rotation not started")
        )
    version = started.body.get("versionId")
    first = f"rotation started (version {version})"
    if not args.wait:
        return Result(o.Rotation(state="started", versionId=version), [first])
    follow = "follow it with `account-ops status` (its rotation line) or the rotation function's log"
    try:
        say(first)
        deadline, said = time.monotonic() + args.timeout, ""
        while time.monotonic() < deadline:
            state = target.call("GET", _of(args, "/rotation"))
            if not state.json_ok:
                return Result(
                    o.Rotation(state="still_in_progress", versionId=version),
                    [],
                    Exit.FAILED,
                    _problem(state, f"cannot read the rotation's state; it goes on: {follow}"),
                )
            s = state.body
            if s.get("state") == "idle":
                if s.get("currentVersion") == version:
                    return Result(
                        o.Rotation(state="done", versionId=version),
                        [f"done: the new secret is AWSCURRENT (version {version})"],
                    )
                return Result(
                    o.Rotation(state="failed", versionId=version),
                    [],
                    Exit.FAILED,
                    "failed: the rotation ended without making the new version current "
                    "(see RotationFailedAlarm and the rotation function's log)",
                )
            step = (
                "new secret created at Vonage, stored as AWSPENDING; testing"
                if s.get("pendingSecretCreated")
                else "creating the new secret"
            )
            if step != said:
                say(f"  {step}")
                said = step
            time.sleep(args.interval)
    except KeyboardInterrupt:
        raise CliError(
            Exit.INTERRUPTED,
            f"interrupted: the rotation (version {version}) goes on in Secrets Manager without this command; {follow}",
        ) from None
    return Result(
        o.Rotation(state="still_in_progress", versionId=version),
        [],
        Exit.FAILED,
        f"still in progress after {args.timeout:g} s: Secrets Manager keeps retrying; {follow}",
    )


def history(target: Target, args: argparse.Namespace) -> Result:
    decisions: list[dict[str, Any]] = []
    query = {"days": str(args.days), "limit": "500"}
    while True:  # every page: nothing cut without saying so
        answer = target.call("GET", _of(args, "/history"), query=query)
        if not answer.json_ok or not isinstance(answer.body.get("decisions"), list):
            return Result(
                o.History(days=args.days, count=0, decisions=[]), [], Exit.FAILED, _problem(answer, "history")
            )
        decisions += answer.body["decisions"]
        if not answer.body.get("nextCursor"):
            break
        query["cursor"] = answer.body["nextCursor"]
    lines = [f"{'scheduled time':<22} {'outcome':<26} {'balance':>9}  detail"]
    for d in decisions:
        balance = f"{d['balance']:.2f}" if isinstance(d.get("balance"), int | float) else "-"
        lines.append(
            f"{d.get('scheduledTime', '-'):<22} {d.get('outcome', '-'):<26} {balance:>9}  {d.get('detail') or ''}"
        )
    lines.append(f"{len(decisions)} decisions in the last {args.days} days")
    return Result(o.History(days=args.days, count=len(decisions), decisions=decisions), lines)


def accounts_list(target: Target, args: argparse.Namespace) -> Result:
    answer = target.call("GET", "/accounts", query={"removed": "true"} if args.removed else None)
    if not answer.json_ok or not isinstance(answer.body.get("accounts"), list):
        return Result(o.Accounts(count=0, accounts=[]), [], Exit.FAILED, _problem(answer, "accounts"))
    accounts = [o.Account.model_validate(a) for a in answer.body["accounts"]]
    lines = [f"{'api_key':<12} {'watched':<8} {'top-ups':<8} {'threshold':>9}  name"]
    for a in accounts:
        mode = a.settings.get("topup_mode") or "stack's"
        threshold = a.settings.get("threshold_eur")
        watched = "removed" if getattr(a, "removed_at", None) else ("yes" if a.watched else "no")
        lines.append(
            f"{a.api_key:<12} {watched:<8} {mode:<8} {threshold if threshold is not None else 'stack':>9}  "
            f"{a.settings.get('name') or ''}"
        )
    lines.append(f"{len(accounts)} accounts besides the stack's own")
    return Result(o.Accounts(count=len(accounts), accounts=accounts), lines)


def accounts_show(target: Target, args: argparse.Namespace) -> Result:
    answer = target.call("GET", f"/accounts/{args.api_key}")
    if not answer.json_ok:
        return Result(
            o.Account(api_key=args.api_key, label="", watched=False, settings={}, version=0),
            [],
            Exit.FAILED,
            _problem(answer, f"account {args.api_key}"),
        )
    account = o.Account.model_validate(answer.body)
    lines = json.dumps(answer.body, indent=2).splitlines()
    if not (answer.body.get("settings") or {}).get("subaccounts"):
        return Result(account, lines)
    listed = target.call("GET", f"/accounts/{args.api_key}/subaccounts")
    if not listed.json_ok:
        return Result(account, lines, Exit.FAILED, _problem(listed, f"subaccounts of {args.api_key}"))
    account = account.model_copy(update={"subaccounts": listed.body})
    rows = [r for r in listed.body.get("subaccounts") or [] if isinstance(r, dict)]
    if not listed.body.get("enabled"):
        lines.append(f"subaccounts: NOT ENABLED at Vonage ({listed.body.get('detail') or 'the API answers 403'})")
        return Result(account, lines)
    lines.append(f"subaccounts ({len(rows)}):")
    lines.append(f"  {'api_key':<10} {'state':<15} {'balance':>10} {'threshold':>9} {'transfer':>8}  name")
    for r in rows:
        settings = r.get("settings") or {}
        balance = f"{r['balance']:.2f}" if isinstance(r.get("balance"), int | float) else "shared"
        threshold = settings.get("threshold_eur", "-")
        amount = settings.get("transfer_eur", "-")
        lines.append(
            f"  {r.get('api_key', ''):<10} {r.get('state', ''):<15} {balance:>10} {threshold!s:>9} {amount!s:>8}  {r.get('name') or ''}"
        )
    return Result(account, lines)


def _settings_of(args: argparse.Namespace) -> dict[str, Any]:
    given = {
        "name": args.name,
        "threshold_eur": args.threshold,
        "critical_eur": args.critical,
        "topup_mode": args.topup_mode,
        "daily_topup_cap": args.daily_cap,
    }
    return {k: v for k, v in given.items() if v is not None}


def _account_change(answer: ApiAnswer, what: str, done: str) -> Result:
    if answer.json_ok:
        account = o.Account.model_validate(answer.body)
        return Result(o.AccountChange(done=True, account=account, problem=None), [f"{done}: {account.label}"])
    body = answer.body if isinstance(answer.body, dict) else {"detail": answer.body}
    return Result(o.AccountChange(done=False, account=None, problem=body), [], Exit.FAILED, _problem(answer, what))


def accounts_add(target: Target, args: argparse.Namespace) -> Result:
    secret = os.environ.get(API_SECRET_VARIABLE, "")
    if not secret:
        raise CliError(
            Exit.USAGE,
            f"accounts add: put the account's api_secret in the environment variable {API_SECRET_VARIABLE} "
            "(never on the command line, where ps and shell history would keep it)",
        )
    body: dict[str, Any] = {"api_key": args.api_key, "api_secret": secret, "settings": _settings_of(args)}
    if os.environ.get(TOPUP_TRX_VARIABLE):
        body["topup_trx"] = os.environ[TOPUP_TRX_VARIABLE]
    if args.primary:
        body["primary"] = args.primary
    answer = target.call("POST", "/accounts", body)
    return _account_change(answer, f"account {args.api_key} not added", "added (credentials checked, stored, rotated)")


def accounts_set(target: Target, args: argparse.Namespace) -> Result:
    current = target.call("GET", f"/accounts/{args.api_key}")
    if not current.json_ok:
        return _account_change(current, f"account {args.api_key}", "")
    settings = {**current.body.get("settings", {}), **_settings_of(args)}
    if args.enabled is not None:
        settings["enabled"] = args.enabled
    if args.subaccounts == "none":
        settings.pop("subaccounts", None)
    elif args.subaccounts:  # the watch rule changes; per-subaccount settings are kept
        settings["subaccounts"] = {**(settings.get("subaccounts") or {}), "watch": args.subaccounts}
    change = {"settings": settings, "expected_version": current.body.get("version")}
    answer = target.call("PUT", f"/accounts/{args.api_key}", change)
    return _account_change(answer, f"account {args.api_key} not changed", "changed")


def accounts_subaccount(target: Target, args: argparse.Namespace) -> Result:
    path = f"/accounts/{args.primary}/subaccounts/{args.subaccount}"
    current = target.call("GET", f"/accounts/{args.primary}")
    if not current.json_ok:
        return Result(
            o.SubaccountChange(done=False, subaccount=None, problem=None),
            [],
            Exit.FAILED,
            _problem(current, f"account {args.primary}"),
        )
    rule = (current.body.get("settings") or {}).get("subaccounts") or {}
    settings = {k: v for k, v in ((rule.get("accounts") or {}).get(args.subaccount) or {}).items() if v is not None}
    given = {
        "threshold_eur": args.threshold,
        "transfer_eur": args.transfer,
        "transfer_cooldown_minutes": args.cooldown,
        "daily_transfer_cap": args.daily_cap,
        "enabled": args.enabled,
    }
    settings |= {k: v for k, v in given.items() if v is not None}
    answer = target.call("PUT", path, {"settings": settings, "expected_version": current.body.get("version")})
    if answer.json_ok:
        effective = answer.body.get("settings") or {}
        line = f"changed: {args.subaccount} of {args.primary}, " + (
            f"threshold {effective.get('threshold_eur')} EUR, transfer {effective.get('transfer_eur')} EUR"
            if effective
            else "not watched"
        )
        return Result(o.SubaccountChange(done=True, subaccount=answer.body, problem=None), [line])
    body = answer.body if isinstance(answer.body, dict) else {"detail": answer.body}
    return Result(
        o.SubaccountChange(done=False, subaccount=None, problem=body),
        [],
        Exit.FAILED,
        _problem(answer, f"subaccount {args.subaccount} not changed"),
    )


def accounts_remove(target: Target, args: argparse.Namespace) -> Result:
    answer = target.call("DELETE", f"/accounts/{args.api_key}")
    result = _account_change(answer, f"account {args.api_key} not removed", "removed (history kept)")
    if answer.json_ok and answer.body.get("secret_deletion_date"):
        result.lines.append(
            f"its secret is scheduled for deletion on {answer.body['secret_deletion_date']} "
            "(restore it with `aws secretsmanager restore-secret` until then); nothing was revoked at Vonage"
        )
    return result


def pause(target: Target, args: argparse.Namespace) -> Result:
    return _switch(target, {"paused": True, "reason": args.reason})


def resume(target: Target, args: argparse.Namespace) -> Result:
    return _switch(target, {"paused": False, "reason": args.reason})


def _switch(target: Target, change: dict[str, Any]) -> Result:
    answer = target.call("PUT", "/topups", {k: v for k, v in change.items() if v is not None})
    if not answer.json_ok:
        return Result(o.TopUpSwitch(paused=bool(change["paused"])), [], Exit.FAILED, _problem(answer, "not changed"))
    b = answer.body
    model = o.TopUpSwitch(
        paused=bool(b.get("paused")), changedBy=b.get("changedBy"), changedAt=b.get("changedAt"), reason=b.get("reason")
    )
    return Result(
        model,
        [
            f"top-ups {'paused' if model.paused else 'resumed'} by {model.changedBy} "
            f"({model.reason or 'no reason given'}); the watcher honours it at its next run"
        ],
    )


def smoke(target: Target, args: argparse.Namespace) -> Result:
    """Once after `sam deploy`: every read route answers, the watcher runs (in dry run), every alarm
    has an action and the alert topic reaches someone. Each check that cannot run fails, with why."""
    checks: list[o.Check] = []

    def check(name: str, run: Callable[[], tuple[bool, str]]) -> None:
        try:
            ok, detail = run()
        except CliError as exc:
            ok, detail = False, str(exc)
        except (boto.BotoCoreError, boto.ClientError) as exc:
            ok, detail = False, str(aws_failure(exc, "AWS"))
        checks.append(o.Check(name=name, ok=ok, detail=detail))

    for path in ("/version", "/settings", "/balance", "/secrets", "/rotation", "/topups", "/history"):

        def route(path: str = path) -> tuple[bool, str]:
            answer = target.call("GET", path)
            return answer.json_ok, "" if answer.json_ok else _problem(answer, "")

        check(f"GET {path}", route)
    check("the watcher runs once, in dry run", lambda: _watcher_once(target))
    check("every alarm notifies someone", lambda: _alarms_notify(target))
    check("the alert topic has a confirmed subscription", lambda: _subscribed(target))
    check("the alert topic accepts CloudWatch", lambda: _topic_accepts_cloudwatch(target))
    passed = sum(c.ok for c in checks)
    lines = [f"  [{'x' if c.ok else ' '}] {c.name}{(': ' + c.detail) if c.detail and not c.ok else ''}" for c in checks]
    lines.append(f"{passed} passed, {len(checks) - passed} failed")
    failed = [c.name for c in checks if not c.ok]
    return Result(
        o.Smoke(passed=passed, failed=len(failed), checks=checks),
        lines,
        Exit.FAILED if failed else Exit.OK,
        f"smoke: {len(failed)} check(s) failed: {', '.join(failed)}" if failed else None,
    )


def _alarms_notify(target: Target) -> tuple[bool, str]:
    if target.local:
        return True, "skipped: the local stack has no alarms"
    alarms = _stack_alarms(target)
    silent = [a["AlarmName"] for a in alarms if not a.get("AlarmActions")]
    return bool(alarms) and not silent, f"{len(alarms)} alarms; silent: {silent}"


def _subscribed(target: Target) -> tuple[bool, str]:
    sns = target.client("sns")
    subscriptions = sns.list_subscriptions_by_topic(TopicArn=target.outputs["AlertTopicArn"]).get("Subscriptions", [])
    confirmed = [x for x in subscriptions if str(x.get("SubscriptionArn", "")).startswith("arn:")]
    return bool(confirmed), f"{len(subscriptions)} subscriptions, none confirmed: subscribe (AlertEmail) and confirm"


def _topic_accepts_cloudwatch(target: Target) -> tuple[bool, str]:
    attributes = target.client("sns").get_topic_attributes(TopicArn=target.outputs["AlertTopicArn"])["Attributes"]
    key = attributes.get("KmsMasterKeyId", "")
    return key != "alias/aws/sns", f"key: {key or 'none'}"


def _watcher_once(target: Target) -> tuple[bool, str]:
    event = {
        "scheduledTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "executionId": "account-ops-smoke",
        "dryRun": True,
    }
    if target.local:  # the local stack's own invoke, in a fresh process
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
            json.dump(event, handle)
        try:
            done = subprocess.run(  # noqa: S603 - our own interpreter and module, with a file we wrote
                [sys.executable, "-m", "local", "invoke", "balance_watcher", "-e", handle.name],
                cwd=REPOSITORY,  # where `local` lives
                env={**os.environ, "ACCOUNT_OPS_LOCAL_STATE": str(target.state_file)},
                capture_output=True,
                text=True,
                check=False,
                timeout=120,
            )
        finally:
            Path(handle.name).unlink()
        return done.returncode == 0, one_line(done.stdout.strip()[-200:] or done.stderr.strip()[-200:])
    function = target.outputs.get("BalanceWatcherFunctionName")
    if not function:
        return False, "the stack has no BalanceWatcherFunctionName output"
    answer = target.client("lambda").invoke(FunctionName=function, Payload=json.dumps(event).encode())
    raw = answer["Payload"].read() or b"null"
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = raw.decode(errors="replace")
    if answer.get("FunctionError"):
        return False, one_line(payload, 200)
    outcome = payload.get("outcome") if isinstance(payload, dict) else None
    return (
        outcome is not None,
        f"outcome {outcome}" if outcome else f"no outcome in its answer: {one_line(payload, 200)}",
    )


# -- arguments ---------------------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line on stderr (exit 2), not a usage block."""

    def error(self, message: str) -> NoReturn:
        raise CliError(Exit.USAGE, f"{message} (see `{self.prog} --help`)")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds above 0 (at most 86400)")
    return value


def _whole(low: int, high: int, unit: str) -> Callable[[str], int]:
    """An argparse type: a whole number of `unit` from low to high."""

    def parse(text: str) -> int:
        if not text.isdigit() or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of {unit} from {low} to {high}")
        return int(text)

    return parse


_days = _whole(1, 90, "days")
_minutes = _whole(1, 24 * 60, "minutes")
_topups_a_day = _whole(0, 50, "top-ups")
_transfers_a_day = _whole(0, 50, "transfers")


API_SECRET_VARIABLE = "ACCOUNT_OPS_API_SECRET"  # noqa: S105 - a variable name, not a secret
TOPUP_TRX_VARIABLE = "ACCOUNT_OPS_TOPUP_TRX"
TOPUP_MODES = ("live", "dry_run", "off")


def _api_key(text: str) -> str:
    if not (4 <= len(text) <= 32 and text.isalnum() and text.isascii()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a Vonage api_key (4 to 32 letters and digits)")
    return text


def _amount(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an amount in EUR") from None


def _euros(text: str) -> float:
    value = _amount(text)
    if not 0 < value <= 100_000:
        raise argparse.ArgumentTypeError(f"{text!r}: give an amount above 0 (at most 100000)")
    return value


def _signed_euros(text: str) -> float:
    """A threshold a subaccount in credit may have below zero."""
    value = _amount(text)
    if not -100_000 <= value <= 100_000:
        raise argparse.ArgumentTypeError(f"{text!r}: give an amount from -100000 to 100000")
    return value


def _account_settings(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", help="how alerts and logs name it")
    parser.add_argument("--threshold", type=_euros, metavar="EUR", help="top up below this (default: the stack's)")
    parser.add_argument(
        "--critical", type=_euros, metavar="EUR", help="critical below this (default: BalanceCriticalEur)"
    )
    parser.add_argument("--topup-mode", choices=TOPUP_MODES, help="live, dry_run or off (default: the stack's)")
    parser.add_argument(
        "--daily-cap", type=_topups_a_day, metavar="N", help="top-ups a day at most (default: the stack's)"
    )


def _one_account(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--account", type=_api_key, metavar="KEY", help="one account of the fleet (default: the stack's own)"
    )
    return parser


def _common(parser: argparse.ArgumentParser) -> None:
    """The options every command takes, before or after its name (AWS CLI style)."""
    keep = argparse.SUPPRESS  # unset unless given, so a subcommand's parse never resets the root's
    group = parser.add_argument_group("where")
    group.add_argument("--stack", help="the CloudFormation stack (default: account-ops)", default=keep)
    group.add_argument(
        "--region", help="the stack's region (default: AWS_REGION, AWS_DEFAULT_REGION, the profile's)", default=keep
    )
    group.add_argument("--profile", help="an AWS CLI profile (default: the standard credential chain)", default=keep)
    group.add_argument(
        "--config-env",
        metavar="NAME",
        help="take --stack and --region from this environment of samconfig.toml (default, prod)",
        default=keep,
    )
    group.add_argument("--local", action="store_true", help="the local stack started by `make local`", default=keep)
    group.add_argument(
        "--output", choices=("table", "json"), help="table for people (default), json for scripts", default=keep
    )


COMMANDS: dict[str, tuple[str, str, str]] = {
    # name: (help, description, example)
    "status": (
        "balance, top-ups, callbacks, secrets, rotation, last runs, alarms",
        "Everything at a glance. Exit 1 when the balance or the top-up switch cannot be read: a part "
        "that could not be read is shown as UNKNOWN, never guessed.",
        "account-ops status --config-env prod --output json",
    ),
    "settings get": (
        "show the callback URLs",
        "The account's default inbound-SMS and delivery-receipt callback URLs, as JSON.",
        "account-ops settings get",
    ),
    "settings set": (
        "check, then change the callback URLs",
        'Each new URL must answer HTTP 200 before Vonage sees it. "" unsets a URL.',
        "account-ops settings set --mo https://hooks.example.com/inbound",
    ),
    "rotate": (
        "rotate the Vonage API secret now",
        "Starts a rotation through Secrets Manager (the rotation function's four steps). With --wait, "
        "follows it until the new secret is AWSCURRENT; Ctrl-C stops following, not the rotation.",
        "account-ops rotate --wait --timeout 600",
    ),
    "history": (
        "the watcher's decisions",
        "Every decision of the balance watcher in the last N days, newest first (every page).",
        "account-ops history --days 30 --output json | jq '.decisions[] | select(.outcome != \"ok\")'",
    ),
    "pause-topups": (
        "stop top-ups at once (the watcher still alerts)",
        "Recorded with your IAM identity and reason; the watcher honours it at its next run.",
        'account-ops pause-topups --reason "card replaced"',
    ),
    "resume-topups": (
        "let the watcher top up again",
        "Recorded with your IAM identity and reason.",
        "account-ops resume-topups",
    ),
    "accounts list": (
        "the fleet's accounts",
        "Every account the stack watches besides its own, with its settings (never a credential).",
        "account-ops accounts list --output json | jq -r '.accounts[].api_key'",
    ),
    "accounts show": (
        "one account of the fleet (a primary: and its subaccounts)",
        "Its settings, version, secret ARN and rotation, as GET /accounts/{api_key} answers; for a primary, "
        "every subaccount with its balance, state and settings (GET /accounts/{api_key}/subaccounts).",
        "account-ops accounts show abcd1234",
    ),
    "accounts add": (
        "add a Vonage account to the fleet",
        f"The api_secret comes from the environment variable {API_SECRET_VARIABLE} (and the top-up "
        f"reference, if any, from {TOPUP_TRX_VARIABLE}), never from the command line. The credentials "
        "are checked with one balance read first: wrong ones are refused and nothing is stored.",
        f"read -rs {API_SECRET_VARIABLE} && export {API_SECRET_VARIABLE} && "
        "account-ops accounts add abcd1234 --name Acme --threshold 20",
    ),
    "accounts set": (
        "change one account's settings",
        "Only the options given change; refused if someone changed the account since it was read.",
        "account-ops accounts set abcd1234 --topup-mode off",
    ),
    "accounts subaccount": (
        "change one subaccount's settings (kept in its primary's rule)",
        "Only the options given change; the others keep their value (or the primary's defaults). "
        "Refused if someone changed the primary since it was read.",
        "account-ops accounts subaccount abcd1234 bbbb2222 --threshold 10 --transfer 30",
    ),
    "accounts remove": (
        "stop watching and rotating one account",
        "Its history is kept; its secret is scheduled for deletion with a 30-day recovery window; "
        "nothing is revoked at Vonage.",
        "account-ops accounts remove abcd1234",
    ),
    "smoke": (
        "once after `sam deploy`: is everything wired?",
        "Every read route answers, the watcher runs once in dry run, every alarm has an action, and the "
        "alert topic has a confirmed subscription and accepts CloudWatch. Exit 1 when a check fails.",
        "account-ops smoke --config-env prod",
    ),
}


def _command(commands: Any, name: str, run: Callable[..., Result]) -> argparse.ArgumentParser:
    short, description, example = COMMANDS[name]
    parser: argparse.ArgumentParser = commands.add_parser(
        name.rsplit(maxsplit=1)[-1],
        help=short,
        description=description,
        epilog=f"example:\n  {example}\n\n{EXIT_CODES_HELP}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(parser)
    parser.set_defaults(run=run, command_name=name)
    return parser


def parser() -> argparse.ArgumentParser:
    root = Parser(
        prog="account-ops",
        description="Check, change and operate a deployed account-ops stack, or the local stack.",
        epilog=EXIT_CODES_HELP + "\n\nEvery command takes the options above, before or after its name.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    root.add_argument("--version", action="store_true", help="print the CLI's version and exit")
    _common(root)
    commands = root.add_subparsers(dest="command", metavar="COMMAND")
    _one_account(_command(commands, "status", status))
    settings = commands.add_parser("settings", help="the callback URLs (get, set)", description="The callback URLs.")
    _common(settings)
    actions = settings.add_subparsers(dest="action", metavar="ACTION", required=True)
    _one_account(_command(actions, "settings get", settings_get))
    change = _one_account(_command(actions, "settings set", settings_set))
    change.add_argument("--mo", help='inbound SMS webhook URL ("" unsets)')
    change.add_argument("--dr", help='delivery receipt webhook URL ("" unsets)')
    rotation = _one_account(_command(commands, "rotate", rotate))
    rotation.add_argument("--wait", action="store_true", help="follow it until the new secret is current")
    rotation.add_argument("--timeout", type=_positive, default=300.0, help="seconds to follow it (default 300)")
    rotation.add_argument("--interval", type=_positive, default=2.0, help=argparse.SUPPRESS)
    decisions = _one_account(_command(commands, "history", history))
    decisions.add_argument("--days", type=_days, default=7, metavar="N", help="1 to 90 (default 7)")
    _command(commands, "pause-topups", pause).add_argument("--reason", help="recorded with your identity")
    _command(commands, "resume-topups", resume).add_argument("--reason", help="recorded with your identity")
    _command(commands, "smoke", smoke)
    fleet = commands.add_parser(
        "accounts", help="the fleet: list, show, add, set, subaccount, remove", description="The fleet's accounts."
    )
    _common(fleet)
    verbs = fleet.add_subparsers(dest="action", metavar="ACTION", required=True)
    _command(verbs, "accounts list", accounts_list).add_argument(
        "--removed", action="store_true", help="removed accounts too (their history is kept)"
    )
    _command(verbs, "accounts show", accounts_show).add_argument("api_key", type=_api_key)
    added = _command(verbs, "accounts add", accounts_add)
    added.add_argument("api_key", type=_api_key)
    _account_settings(added)
    changed = _command(verbs, "accounts set", accounts_set)
    changed.add_argument("api_key", type=_api_key)
    _account_settings(changed)
    switch = changed.add_mutually_exclusive_group()
    switch.add_argument("--enable", dest="enabled", action="store_const", const=True, help="watch it again")
    switch.add_argument("--disable", dest="enabled", action="store_const", const=False, help="stop watching it")
    changed.add_argument(
        "--subaccounts",
        choices=("all", "listed", "none"),
        help="make it a primary that watches all its subaccounts, or only those set with `accounts subaccount`; "
        "none: no longer a primary",
    )
    added.add_argument(
        "--primary",
        type=_api_key,
        metavar="KEY",
        help="a subaccount: its primary (its secret is rotated with the primary's credentials)",
    )
    sub = _command(verbs, "accounts subaccount", accounts_subaccount)
    sub.add_argument("primary", type=_api_key)
    sub.add_argument("subaccount", type=_api_key)
    sub.add_argument(
        "--threshold", type=_signed_euros, metavar="EUR", help="fund it below this (default: the primary's rule)"
    )
    sub.add_argument("--transfer", type=_euros, metavar="EUR", help="the amount of one transfer")
    sub.add_argument("--cooldown", type=_minutes, metavar="MIN", help="minutes between transfers at least")
    sub.add_argument("--daily-cap", type=_transfers_a_day, metavar="N", help="transfers a day at most")
    watch = sub.add_mutually_exclusive_group()
    watch.add_argument("--enable", dest="enabled", action="store_const", const=True, help="watch it")
    watch.add_argument("--disable", dest="enabled", action="store_const", const=False, help="stop watching it")
    _command(verbs, "accounts remove", accounts_remove).add_argument("api_key", type=_api_key)
    return root


def _samconfig_environment(name: str) -> tuple[str | None, str | None]:
    """stack_name and region of one samconfig.toml environment (the current folder's, else the
    repository's): the same names `sam deploy --config-env NAME` uses."""
    path = next((p for p in (Path.cwd() / "samconfig.toml", REPOSITORY / "samconfig.toml") if p.exists()), None)
    if path is None:
        raise CliError(Exit.USAGE, "--config-env: no samconfig.toml here or in the repository")
    try:
        config = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise CliError(Exit.USAGE, f"--config-env: {path} is not valid TOML ({one_line(exc)})") from None
    environments = sorted(k for k, v in config.items() if isinstance(v, dict))
    if name not in environments:
        raise CliError(
            Exit.USAGE, f"--config-env: no environment {name!r} in {path} (there: {', '.join(environments)})"
        )
    merged: dict[str, Any] = {}
    for command in ("global", "deploy"):  # deploy's own values win, as in SAM
        merged.update(config[name].get(command, {}).get("parameters", {}))
    return merged.get("stack_name"), merged.get("region")


def _target(args: argparse.Namespace) -> Target:
    if getattr(args, "local", False):
        return Target.from_local(default_state_file())
    stack, region = None, None
    if getattr(args, "config_env", None):
        stack, region = _samconfig_environment(args.config_env)
    return Target.from_stack(
        getattr(args, "stack", None) or stack or "account-ops",
        getattr(args, "region", None) or region,
        getattr(args, "profile", None),
    )


def _version() -> str:
    try:
        return metadata.version("account-ops")
    except metadata.PackageNotFoundError:  # run from the tree without `pip install -e .`
        return tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]["version"]


def main(argv: list[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    out, err = stdout or sys.stdout, stderr or sys.stderr

    def say(line: str) -> None:  # progress while a command runs: the table's lines only
        if getattr(args, "output", "table") != "json":
            print(line, file=out, flush=True)

    args = argparse.Namespace()
    try:
        args = parser().parse_args(argv)
        if args.version:
            print(f"account-ops {_version()}", file=out)
            return Exit.OK
        if not args.command:
            raise CliError(
                Exit.USAGE,
                "give a command: status, settings, rotate, history, pause-topups, "
                "resume-topups, smoke or accounts (see `account-ops --help`)",
            )
        if args.command_name == "settings set" and args.mo is None and args.dr is None:
            raise CliError(Exit.USAGE, 'settings set: give --mo URL, --dr URL or both ("" unsets)')
        target = _target(args)
        run: Callable[..., Result] = args.run
        result = run(target, args, say) if run is rotate else run(target, args)
        if getattr(args, "output", "table") == "json":
            print(result.model.model_dump_json(indent=2), file=out, flush=True)
        else:
            for line in result.lines:
                print(line, file=out, flush=True)
        if result.error:
            print(f"account-ops: {result.error}", file=err)
        return int(result.code)
    except CliError as exc:
        print(f"account-ops: {exc}", file=err)
        return int(exc.code)
    except KeyboardInterrupt:
        print("account-ops: interrupted", file=err)
        return Exit.INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly; stdout is pointed at /dev/null so that
        # Python's own flush at exit does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return Exit.BROKEN_PIPE
    except Exception as exc:  # a bug of ours: still one line, and a code that says it failed
        print(f"account-ops: internal error ({type(exc).__name__}: {one_line(exc)}); please report it", file=err)
        return Exit.FAILED


if __name__ == "__main__":
    sys.exit(main())
