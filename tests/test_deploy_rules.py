"""Deploy-time rules over the template as CloudFormation receives it (after SAM's transform).

Each rule is a class of failure that `sam validate --lint`, cfn-lint and checkov all pass over, but a
first `sam deploy` into a fresh account (or its first alarm) would hit. Every rule runs on the
transformed template with the parameter values of each deployment we document, and is also shown
to catch the template as it was before the deploy review (tests/data/template-before-deploy-review.yaml).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest

from tests.cfn import OLD_TEMPLATE, Deployment, actions, refs, samconfig_parameters, transformed
from tests.conftest import ROOT

# -- the rules: each returns what is wrong ---------------------------------------------------------


def reserved_concurrency(d: Deployment) -> list[str]:
    """A fresh account's concurrency quota is 10 and 10 must stay unreserved: any reservation rolls back."""
    return [
        f"{name} reserves {fn['Properties']['ReservedConcurrentExecutions']}"
        for name, fn in d.of_type("AWS::Lambda::Function").items()
        if "ReservedConcurrentExecutions" in fn["Properties"]
    ]


def access_logs_without_the_account_role(d: Deployment) -> list[str]:
    """Access logs need API Gateway's account-level CloudWatch role: the stage must wait for it."""
    accounts = d.of_type("AWS::ApiGateway::Account")
    problems = []
    for name, stage in d.of_type("AWS::ApiGateway::Stage").items():
        if "AccessLogSetting" not in stage["Properties"]:
            continue
        depends = set(stage.get("DependsOn", [])) | refs(stage["Properties"])
        if not accounts or not set(accounts) & depends:
            problems.append(f"{name} logs access without an AWS::ApiGateway::Account it waits for")
    return problems


def alarms_that_cannot_notify(d: Deployment) -> list[str]:
    """CloudWatch cannot publish to a topic under the AWS-managed key alias/aws/sns."""
    problems = []
    for name, alarm in d.of_type("AWS::CloudWatch::Alarm").items():
        for action in alarm["Properties"].get("AlarmActions", []) + alarm["Properties"].get("OKActions", []):
            for topic in refs(action) & set(d.of_type("AWS::SNS::Topic")):
                key = d.resources[topic]["Properties"].get("KmsMasterKeyId")
                if key is None:
                    continue
                policy = json.dumps(d.resources.get(next(iter(refs(key)), ""), {}))
                if key == "alias/aws/sns" or "cloudwatch.amazonaws.com" not in policy:
                    problems.append(f"{name} notifies {topic}, encrypted with a key CloudWatch cannot use")
    return sorted(set(problems))


def rotate_now_without_invoke(d: Deployment) -> list[str]:
    """A caller of RotateSecret also needs lambda:InvokeFunction on the rotation function."""
    rotation_functions = {
        name
        for schedule in d.of_type("AWS::SecretsManager::RotationSchedule").values()
        for name in refs(schedule["Properties"]["RotationLambdaARN"])
    } or {"SecretRotationFunction"}
    problems = []
    for role in d.of_type("AWS::IAM::Role"):
        statements = d.role_statements(role)
        if any("secretsmanager:RotateSecret" in actions(s) for s in statements):
            invokes = [s for s in statements if "lambda:InvokeFunction" in actions(s)]
            if not any(rotation_functions & refs(s["Resource"]) for s in invokes):
                problems.append(f"{role} may RotateSecret but not invoke the rotation function")
    return problems


def stages_and_endpoint(d: Deployment) -> list[str]:
    """One stage (without OpenApiVersion SAM adds "Stage": no throttling, no access log); REGIONAL."""
    problems = [f"extra stage {n}" for n in d.of_type("AWS::ApiGateway::Stage") if n != "SettingsApiv1Stage"]
    for name, api in d.of_type("AWS::ApiGateway::RestApi").items():
        types = api["Properties"].get("EndpointConfiguration", {}).get("Types", ["EDGE"])
        if types != ["REGIONAL"]:
            problems.append(f"{name} endpoint {types}")
    return problems


def shared_metric_namespace(d: Deployment) -> list[str]:
    """Two stacks in one account must not alarm on each other's metrics."""
    problems = []
    for name, alarm in d.of_type("AWS::CloudWatch::Alarm").items():
        props = alarm["Properties"]
        spaces = [props.get("Namespace")] + [
            m["MetricStat"]["Metric"]["Namespace"] for m in props.get("Metrics", []) if "MetricStat" in m
        ]
        for space in spaces:
            if space and "AccountOps" in json.dumps(space) and "AWS::StackName" not in json.dumps(space):
                problems.append(f"{name} reads the literal namespace {space}")
    for name, fn in d.of_type("AWS::Lambda::Function").items():
        space = fn["Properties"]["Environment"]["Variables"].get("POWERTOOLS_METRICS_NAMESPACE")
        if "AWS::StackName" not in json.dumps(space):
            problems.append(f"{name} publishes to {space}")
    body = json.dumps(d.resources["Dashboard"]["Properties"]["DashboardBody"])
    if re.search(r'\[\\"AccountOps\\"', body):
        problems.append("the dashboard reads the literal namespace AccountOps")
    return problems


def deleted_with_the_stack(d: Deployment) -> list[str]:
    """`sam delete` would destroy the secret at once (no recovery window) and the top-up history."""
    return [
        f"{name} is not retained"
        for name in ("VonageSecret", "TopUpHistoryTable")
        if d.resources[name].get("DeletionPolicy") != "Retain"
        or d.resources[name].get("UpdateReplacePolicy") != "Retain"
    ]


def flapping_critical_alarm(d: Deployment) -> list[str]:
    """BalanceCritical's period must hold at least one reading whatever the schedule's timing."""
    alarm = d.resources["BalanceCriticalAlarm"]["Properties"]
    [schedule] = d.of_type("AWS::Scheduler::Schedule").values()
    match = re.fullmatch(r"rate\((\d+) minutes?\)", schedule["Properties"]["ScheduleExpression"])
    interval = int(match.group(1)) * 60 if match else 0
    if not interval or int(alarm["Period"]) < 2 * interval:
        return [f"period {alarm['Period']} s for a schedule every {interval} s"]
    return []


def small_things(d: Deployment) -> list[str]:
    problems = []
    describes = any("secretsmanager:DescribeSecret" in actions(s) for s in d.role_statements("SettingsApiFunctionRole"))
    if describes and "describe_secret" not in (ROOT / "layers/shared/account_api/settings.py").read_text():
        problems.append("the settings role may DescribeSecret, which it never calls")
    for s in d.role_statements("SecretRotationFunctionRole"):
        tagging = {"secretsmanager:TagResource", "secretsmanager:UntagResource"} & set(actions(s))
        if tagging and "aws:TagKeys" not in json.dumps(s.get("Condition", {})):
            problems.append("the rotation role may tag the secret with any key")
    for name in ("TopUpTrxSecretArn", "PrimarySecretArn"):
        if "AllowedPattern" not in d.template["Parameters"][name]:
            problems.append(f"{name} takes any string")
    for schedule in d.of_type("AWS::Scheduler::Schedule").values():
        # at most 64 characters, and unique per stack: not from the stack name (up to 128), nor
        # SAM's default (the logical id, the same in every stack of this template)
        name = schedule["Properties"].get("Name")
        if not isinstance(name, dict) or "AWS::StackId" not in refs(name) or "AWS::StackName" in refs(name):
            problems.append(f"the schedule's name {name} is too long or not unique per stack")
    for name, fn in d.of_type("AWS::Lambda::Function").items():
        if any(v.startswith("POWERTOOLS_TRACER_") for v in fn["Properties"]["Environment"]["Variables"]):
            problems.append(f"{name} sets Tracer variables without a Tracer")
    return problems


RULES: list[Callable[[Deployment], list[str]]] = [
    reserved_concurrency,
    access_logs_without_the_account_role,
    alarms_that_cannot_notify,
    rotate_now_without_invoke,
    stages_and_endpoint,
    shared_metric_namespace,
    deleted_with_the_stack,
    flapping_critical_alarm,
    small_things,
]
# Every deployment we document: the defaults, both samconfig environments, each access-log mode,
# every watch interval.
DEPLOYMENTS = {
    "defaults": {},
    "samconfig default": samconfig_parameters("default"),
    "samconfig prod": samconfig_parameters("prod"),
    "access logs, own account role": {"ApiAccessLogs": "on-and-manage-account-role"},
    **{f"every {m} minutes": {"WatchIntervalMinutes": m} for m in ("10", "15", "30", "60")},
}


@pytest.mark.parametrize("rule", RULES, ids=[r.__name__ for r in RULES])
@pytest.mark.parametrize("deployment", list(DEPLOYMENTS))
def test_the_template_keeps_the_rule(rule: Callable[[Deployment], list[str]], deployment: str) -> None:
    assert rule(Deployment(transformed(), DEPLOYMENTS[deployment])) == []


@pytest.mark.parametrize("rule", RULES, ids=[r.__name__ for r in RULES])
def test_the_rule_catches_the_template_before_the_review(rule: Callable[[Deployment], list[str]]) -> None:
    overrides = {"ApiAccessLogs": "on"} if rule is access_logs_without_the_account_role else {}
    assert rule(Deployment(transformed(OLD_TEMPLATE), overrides)) != []


def test_access_logs_on_an_account_that_has_the_role_is_an_explicit_choice() -> None:
    """ "on" trusts the operator that the region already has the role: the parameter says so."""
    assert "already has that role" in transformed()["Parameters"]["ApiAccessLogs"]["Description"]
    d = Deployment(transformed(), {"ApiAccessLogs": "on"})
    assert "ApiGatewayAccountSetting" not in d.resources
    assert "AccessLogSetting" in d.resources["SettingsApiv1Stage"]["Properties"]


def test_the_go_live_steps_follow_config_as_code() -> None:
    """samconfig.toml pins DryRun and EnableRotation: a switch passed with --parameter-overrides
    would flip back on the next plain `sam deploy`, so no step of ours says to."""
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        text = doc.read_text()
        assert not re.search(r"--parameter-overrides[^\n`]*(DryRun|EnableRotation)", text), doc
    assert samconfig_parameters("default")["DryRun"] == "true"
    assert samconfig_parameters("default")["EnableRotation"] == "false"
