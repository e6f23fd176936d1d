"""account-ops: check, change and operate a deployed account-ops stack, or the local stack.

    account-ops status                       everything at a glance
    account-ops settings get | set --mo URL --dr URL
    account-ops rotate [--wait]              rotate the Vonage secret now, and follow it
    account-ops history [--days N]           the watcher's decisions
    account-ops pause-topups [--reason ...] | resume-topups
    account-ops smoke                        once after `sam deploy`: is everything wired?

--stack NAME (default account-ops), --region, --profile; --local for the local stack (make local).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from account_ops.target import Target, TargetError, default_state_file

Out = Callable[[str], None]


def _age(created: str) -> str:
    days = (datetime.now(UTC) - datetime.fromisoformat(created.replace("Z", "+00:00"))).days
    return "today" if days < 1 else f"{days} days old"


def _fail(answer: Any, what: str) -> str:
    body = answer.body if isinstance(answer.body, dict) else {}
    return f"{what}: HTTP {answer.status} {body.get('title', '')}: {body.get('detail', answer.body)}".rstrip(": ")


# -- the commands ------------------------------------------------------------------------------------


def status(target: Target, args: argparse.Namespace, out: Out) -> int:
    out(f"account-ops status: {target.name} ({target.region})")
    version = target.call("GET", "/version")
    out(f"  release        {version.body['version'] if version.ok else _fail(version, 'unknown')}")
    balance = target.call("GET", "/balance")
    if balance.ok:
        reload = "on" if balance.body["autoReload"] else "OFF (top-ups would be refused)"
        out(f"  balance        {balance.body['value']:.2f} {balance.body['currency']}, auto-reload {reload}")
    else:
        out(f"  balance        {_fail(balance, 'unavailable')}")
    switch = target.call("GET", "/topups")
    dry_run = target.parameters.get("DryRun", "?") == "true"
    if not switch.ok or not isinstance(switch.body, dict):  # never guess "live" about money
        mode = f"UNKNOWN: {_fail(switch, 'the top-up switch could not be read')}"
    elif switch.body.get("paused"):
        b = switch.body
        mode = f"PAUSED by {b.get('changedBy')} at {b.get('changedAt')}: {b.get('reason') or '-'}"
    else:
        mode = "dry run (decides and alerts, never tops up)" if dry_run else "live"
    out(f"  top-ups        {mode}")
    settings = target.call("GET", "/settings")
    if settings.ok:
        out(f"  inbound SMS    {settings.body.get('moCallbackUrl') or '(none)'}")
        out(f"  receipts       {settings.body.get('drCallbackUrl') or '(none)'}")
    secrets = target.call("GET", "/secrets")
    if secrets.ok:
        for secret in secrets.body["secrets"]:
            mark = " (current)" if secret["current"] else ""
            out(f"  secret         {secret['id']}{mark}, {_age(secret['createdAt'])}")
    rotation = target.call("GET", "/rotation")
    if rotation.ok:
        r = rotation.body
        out(
            f"  rotation       {'on' if r['rotationEnabled'] else 'off'}, {r['state'].replace('_', ' ')}; "
            f"last {r.get('lastRotatedAt') or '-'}, next {r.get('nextRotationAt') or '-'}"
        )
    history = target.call("GET", "/history", query={"days": "1"})
    if history.ok:
        decisions = history.body["decisions"][:5]
        out(f"  last runs      {', '.join(d['outcome'] for d in decisions) or '(none in the last day)'}")
    out(f"  alarms         {_alarm_summary(target)}")
    return 0 if balance.ok and switch.ok else 1


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


def _alarm_summary(target: Target) -> str:
    if target.local:
        return "none on the local stack"
    alarms = _stack_alarms(target)
    firing = [a["AlarmName"] for a in alarms if a["StateValue"] == "ALARM"]
    return f"{len(alarms)} alarms, {len(firing)} in ALARM" + (f": {', '.join(firing)}" if firing else "")


def settings_get(target: Target, args: argparse.Namespace, out: Out) -> int:
    answer = target.call("GET", "/settings")
    out(json.dumps(answer.body, indent=2) if answer.ok else _fail(answer, "settings"))
    return 0 if answer.ok else 1


def settings_set(target: Target, args: argparse.Namespace, out: Out) -> int:
    change = {k: v for k, v in (("moCallbackUrl", args.mo), ("drCallbackUrl", args.dr)) if v is not None}
    if not change:
        out("give --mo URL, --dr URL or both (an empty string unsets)")
        return 2
    answer = target.call("PUT", "/settings", change)
    checks = (answer.body or {}).get("checks", {}) if isinstance(answer.body, dict) else {}
    for name, check in checks.items():
        out(f"  check {name}: {'ok' if check['ok'] else check['reason']} ({check['detail']})")
    out("changed" if answer.ok else _fail(answer, "not changed"))
    return 0 if answer.ok else 1


def rotate(target: Target, args: argparse.Namespace, out: Out) -> int:
    started = target.call("POST", "/secrets/rotate")
    if not started.ok:
        out(_fail(started, "rotation not started"))
        return 1
    version = started.body.get("versionId")
    out(f"rotation started (version {version})")
    if not args.wait:
        return 0
    deadline, said = time.monotonic() + args.timeout, ""
    while time.monotonic() < deadline:
        state = target.call("GET", "/rotation")
        if not state.ok:
            out(_fail(state, "cannot read the rotation's state"))
            return 1
        s = state.body
        if s["state"] == "idle":
            if s["currentVersion"] == version:
                out(f"done: the new secret is AWSCURRENT (version {version})")
                return 0
            out(
                "failed: the rotation ended without making the new version current (see RotationFailedAlarm and the rotation function's log)"
            )
            return 1
        step = (
            "new secret created at Vonage, stored as AWSPENDING; testing"
            if s["pendingSecretCreated"]
            else "creating the new secret"
        )
        if step != said:
            out(f"  {step}")
            said = step
        time.sleep(args.interval)
    out(
        f"still in progress after {args.timeout:.0f} s: Secrets Manager keeps retrying; see the rotation function's log"
    )
    return 1


def history(target: Target, args: argparse.Namespace, out: Out) -> int:
    answer = target.call("GET", "/history", query={"days": str(args.days)})
    if not answer.ok:
        out(_fail(answer, "history"))
        return 1
    out(f"{'scheduled time':<22} {'outcome':<26} {'balance':>9}  detail")
    for d in answer.body["decisions"]:
        balance = f"{d['balance']:.2f}" if d.get("balance") is not None else "-"
        out(f"{d['scheduledTime']:<22} {d['outcome']:<26} {balance:>9}  {d.get('detail') or ''}")
    out(f"{len(answer.body['decisions'])} decisions in the last {args.days} days")
    return 0


def pause(target: Target, args: argparse.Namespace, out: Out) -> int:
    return _switch(target, {"paused": True, "reason": args.reason}, out)


def resume(target: Target, args: argparse.Namespace, out: Out) -> int:
    return _switch(target, {"paused": False, "reason": args.reason}, out)


def _switch(target: Target, change: dict[str, Any], out: Out) -> int:
    answer = target.call("PUT", "/topups", {k: v for k, v in change.items() if v is not None})
    if not answer.ok:
        out(_fail(answer, "not changed"))
        return 1
    b = answer.body
    out(
        f"top-ups {'paused' if b['paused'] else 'resumed'} by {b['changedBy']} ({b.get('reason') or 'no reason given'}); the watcher honours it at its next run"
    )
    return 0


def smoke(target: Target, args: argparse.Namespace, out: Out) -> int:
    """Once after `sam deploy`: every read route answers, the watcher runs (in dry run), every alarm
    has an action and the alert topic accepts CloudWatch."""
    results: list[tuple[str, bool, str]] = []
    for path in ("/version", "/settings", "/balance", "/secrets", "/rotation", "/topups", "/history"):
        answer = target.call("GET", path)
        results.append((f"GET {path}", answer.ok, "" if answer.ok else _fail(answer, "")))
    outcome = _watcher_once(target)
    results.append(("the watcher runs once, in dry run", outcome[0], outcome[1]))
    if target.local:
        results.append(("every alarm notifies someone", True, "skipped: the local stack has no alarms"))
    else:
        alarms = _stack_alarms(target)
        silent = [a["AlarmName"] for a in alarms if not a.get("AlarmActions")]
        results.append(
            ("every alarm notifies someone", bool(alarms) and not silent, f"{len(alarms)} alarms; silent: {silent}")
        )
    subscriptions = (
        target.client("sns")
        .list_subscriptions_by_topic(TopicArn=target.outputs["AlertTopicArn"])
        .get("Subscriptions", [])
    )
    confirmed = [x for x in subscriptions if str(x.get("SubscriptionArn", "")).startswith("arn:")]
    results.append(
        (
            "the alert topic has a confirmed subscription",
            bool(confirmed),
            f"{len(subscriptions)} subscriptions, none confirmed: subscribe (AlertEmail) and confirm the e-mail",
        )
    )
    attributes = target.client("sns").get_topic_attributes(TopicArn=target.outputs["AlertTopicArn"])["Attributes"]
    key = attributes.get("KmsMasterKeyId", "")
    results.append(("the alert topic accepts CloudWatch", key != "alias/aws/sns", f"key: {key or 'none'}"))
    for name, ok, detail in results:
        out(f"  [{'x' if ok else ' '}] {name}{(': ' + detail) if detail and not ok else ''}")
    passed = sum(ok for _, ok, _ in results)
    out(f"{passed} passed, {len(results) - passed} failed")
    return 0 if passed == len(results) else 1


def _watcher_once(target: Target) -> tuple[bool, str]:
    event = {
        "scheduledTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "executionId": "account-ops-smoke",
        "dryRun": True,
    }
    if target.local:  # the local stack's own invoke, in a fresh process
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
            json.dump(event, handle)
        done = subprocess.run(  # noqa: S603 - our own interpreter and module, with a file we wrote
            [sys.executable, "-m", "local", "invoke", "balance_watcher", "-e", handle.name],
            cwd=Path(__file__).resolve().parent.parent,  # the repository, where `local` lives
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        Path(handle.name).unlink()
        return done.returncode == 0, done.stdout.strip()[-200:] or done.stderr.strip()[-200:]
    function = target.outputs.get("BalanceWatcherFunctionName")
    if not function:
        return False, "the stack has no BalanceWatcherFunctionName output"
    answer = target.client("lambda").invoke(FunctionName=function, Payload=json.dumps(event).encode())
    payload = json.loads(answer["Payload"].read() or b"null")
    if answer.get("FunctionError"):
        return False, str(payload)[:200]
    return True, f"outcome {payload.get('outcome')}"


# -- arguments ---------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="account-ops", description=__doc__.split("\n\n")[0])
    root.add_argument("--stack", default="account-ops", help="the CloudFormation stack (default: account-ops)")
    root.add_argument("--region", help="the stack's region (default: the profile's or AWS_REGION)")
    root.add_argument("--profile", help="an AWS CLI profile (default: the standard credential chain)")
    root.add_argument("--local", action="store_true", help="the local stack started by `make local`")
    commands = root.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "status", help="balance, top-ups, callbacks, secrets, rotation, last runs, alarms"
    ).set_defaults(run=status)
    settings = commands.add_parser("settings", help="the callback URLs").add_subparsers(dest="action", required=True)
    settings.add_parser("get", help="show the callback URLs").set_defaults(run=settings_get)
    change = settings.add_parser("set", help="check, then change the callback URLs")
    change.add_argument("--mo", help='inbound SMS webhook URL ("" unsets)')
    change.add_argument("--dr", help='delivery receipt webhook URL ("" unsets)')
    change.set_defaults(run=settings_set)
    rotation = commands.add_parser("rotate", help="rotate the Vonage API secret now")
    rotation.add_argument("--wait", action="store_true", help="follow it until the new secret is current")
    rotation.add_argument("--timeout", type=float, default=300.0, help="seconds to follow it (default 300)")
    rotation.add_argument("--interval", type=float, default=2.0, help=argparse.SUPPRESS)
    rotation.set_defaults(run=rotate)
    decisions = commands.add_parser("history", help="the watcher's decisions")
    decisions.add_argument("--days", type=int, default=7, choices=range(1, 91), metavar="N", help="1-90 (default 7)")
    decisions.set_defaults(run=history)
    paused = commands.add_parser("pause-topups", help="stop top-ups at once (the watcher still alerts)")
    paused.add_argument("--reason", help="recorded with your identity")
    paused.set_defaults(run=pause)
    resumed = commands.add_parser("resume-topups", help="let the watcher top up again")
    resumed.add_argument("--reason", help="recorded with your identity")
    resumed.set_defaults(run=resume)
    commands.add_parser("smoke", help="once after `sam deploy`: is everything wired?").set_defaults(run=smoke)
    return root


def main(argv: list[str] | None = None, out: Out = print) -> int:
    args = parser().parse_args(argv)
    try:
        target = (
            Target.from_local(default_state_file())
            if args.local
            else Target.from_stack(args.stack, args.region, args.profile)
        )
        return int(args.run(target, args, out))
    except TargetError as exc:
        out(f"account-ops: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
