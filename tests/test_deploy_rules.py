"""Deploy-time rules over the template as CloudFormation receives it (after SAM's transform).

Each rule is a class of failure that `sam validate --lint`, cfn-lint and checkov all pass over, but a
first `sam deploy` into a fresh account (or its first alarm) would hit. Every rule runs on the
transformed template with the parameter values of each deployment we document, and is also shown
to catch the template as it was before the deploy review (tests/data/template-before-deploy-review.yaml).
"""

from __future__ import annotations

import json
import re
import tomllib
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


ADOPTABLE = {
    "VonageSecret": "ExistingVonageSecretArn",
    "TopUpHistoryTable": "ExistingHistoryTableName",
    "AccountsTable": "ExistingAccountsTableName",
}


def kept_but_never_blocking_a_retry(d: Deployment) -> list[str]:
    """`sam delete` must not destroy the secret at once (no recovery window) or the top-up history;
    but a first create that fails must not leave them behind (every retry would then fail with
    "already exists"), and a later deploy must be able to adopt the kept ones."""
    problems = []
    for name, parameter in ADOPTABLE.items():
        if name not in d.template["Resources"]:  # an older template, before the fleet
            continue
        resource = d.template["Resources"][name]
        if resource.get("DeletionPolicy") != "RetainExceptOnCreate" or resource.get("UpdateReplacePolicy") != "Retain":
            problems.append(f"{name}: DeletionPolicy {resource.get('DeletionPolicy')}, not RetainExceptOnCreate")
        if parameter not in d.template.get("Parameters", {}) or "Condition" not in resource:
            problems.append(f"{name} cannot be adopted by a new stack (no {parameter})")
    return problems


def flapping_critical_alarm(d: Deployment) -> list[str]:
    """BalanceCritical's period must hold at least one reading whatever the schedule's timing."""
    alarm = d.resources["BalanceCriticalAlarm"]["Properties"]
    [schedule] = d.of_type("AWS::Scheduler::Schedule").values()
    match = re.fullmatch(r"rate\((\d+) minutes?\)", schedule["Properties"]["ScheduleExpression"])
    interval = int(match.group(1)) * 60 if match else 0
    periods = (
        [alarm["Period"]]
        if "Period" in alarm
        else [m["MetricStat"]["Period"] for m in alarm["Metrics"] if "MetricStat" in m]
    )
    if not interval or min(int(p) for p in periods) < 2 * interval:
        return [f"period {periods} s for a schedule every {interval} s"]
    return []


def invoke_permissions(d: Deployment) -> list[str]:
    """Each permission lets one AWS service invoke one of our functions, for this account and its
    own resource only (confused deputy), and a resource that makes AWS invoke a function at
    creation waits for the permission."""
    problems = []
    functions = set(d.of_type("AWS::Lambda::Function"))
    for name, permission in d.of_type("AWS::Lambda::Permission").items():
        props = permission["Properties"]
        if props.get("Action") != "lambda:InvokeFunction":
            problems.append(f"{name} grants {props.get('Action')}, not lambda:InvokeFunction")
        if not str(props.get("Principal", "")).endswith(".amazonaws.com"):
            problems.append(f"{name} is for {props.get('Principal')}, not a service")
        if not refs(props.get("FunctionName")) & functions:
            problems.append(f"{name} names no function of the stack")
        if "SourceArn" not in props:  # which of the service's resources may invoke (its ARN names the account)
            problems.append(f"{name} has no SourceArn condition: any {props.get('Principal')} resource may invoke")
    for name, schedule in d.of_type("AWS::SecretsManager::RotationSchedule").items():
        target = refs(schedule["Properties"].get("RotationLambdaARN"))
        secret = refs(schedule["Properties"].get("SecretId"))
        needed = {  # the permission for this schedule's secret (the fleet's secrets have their own)
            p
            for p, r in d.of_type("AWS::Lambda::Permission").items()
            if refs(r["Properties"]["FunctionName"]) & target and refs(r["Properties"].get("SourceArn")) & secret
        }
        depends = schedule.get("DependsOn", [])
        if not needed or not needed <= set([depends] if isinstance(depends, str) else depends):
            problems.append(f"{name} does not wait for the permission that lets Secrets Manager invoke {target}")
    return problems


NAMED = {
    "AWS::SecretsManager::Secret": "Name",
    "AWS::DynamoDB::Table": "TableName",
    "AWS::SNS::Topic": "TopicName",
    "AWS::SQS::Queue": "QueueName",
    "AWS::Lambda::Function": "FunctionName",
    "AWS::IAM::Role": "RoleName",
    "AWS::Logs::LogGroup": "LogGroupName",
    "AWS::CloudWatch::Alarm": "AlarmName",
    "AWS::CloudWatch::Dashboard": "DashboardName",
    "AWS::ApiGateway::RestApi": "Name",
    "AWS::Lambda::LayerVersion": "LayerName",
}


def names_two_stacks_share(d: Deployment) -> list[str]:
    """A resource named by the template must take its name from the stack (its name, its id, or
    ServiceName, which each samconfig environment sets apart): a fixed name collides in a second
    stack of the same account and region."""
    problems = []
    for name, resource in d.resources.items():
        key = NAMED.get(resource["Type"])
        value = resource.get("Properties", {}).get(key) if key else None
        if value is None:
            continue
        text = json.dumps(value)
        from_the_stack = "ServiceName" in refs(value) or "AWS::StackName" in text or "AWS::StackId" in text
        resolved_by_sam = d.params.get("ServiceName", "\0") in text  # SAM substitutes some Subs itself
        if not from_the_stack and not resolved_by_sam:
            problems.append(f"{name} has the fixed name {value!r}")
    return problems


def alarms_reach_the_runbook(d: Deployment) -> list[str]:
    """An alarm's description arrives in operators' e-mail: it points at the runbook, which
    explains that alarm. A dead-letter alarm fires on each new failure (NumberOfMessagesSent), not
    once until drained; except on a queue that a redrive policy feeds: SQS does not count the
    messages its redrive moves in NumberOfMessagesSent, so that alarm would never fire, and it
    watches the messages waiting there instead."""
    problems = []
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    redrive_targets = {
        json.dumps(q["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]).split('"')[3]
        for q in d.of_type("AWS::SQS::Queue").values()
        if "RedrivePolicy" in q.get("Properties", {})
    }
    for name, alarm in d.of_type("AWS::CloudWatch::Alarm").items():
        props = alarm["Properties"]
        if "docs/runbook.md" not in json.dumps(props.get("AlarmDescription", "")) or f"`{name}`" not in runbook:
            problems.append(f"{name} does not point at a runbook entry")
        if props.get("Namespace") != "AWS/SQS":
            continue
        queue = json.dumps(props.get("Dimensions", [{}])[0].get("Value")).split('"')[3]
        wanted = "ApproximateNumberOfMessagesVisible" if queue in redrive_targets else "NumberOfMessagesSent"
        if props.get("MetricName") != wanted:
            problems.append(f"{name} watches {props.get('MetricName')} of {queue}: it needs {wanted}")
    return problems


SECRET_ARN_PARAMETERS = ("TopUpTrxSecretArn", "PrimarySecretArn", "ExistingVonageSecretArn")


def secret_arn_parameters(d: Deployment) -> list[str]:
    """A secret ARN parameter takes the complete ARN (IAM matches nothing on a partial one), or empty."""
    good = ("", "arn:aws:secretsmanager:eu-west-1:123456789012:secret:account-ops/trx-AbC123")
    bad = ("account-ops/trx", "arn:aws:secretsmanager:eu-west-1:123456789012:secret:account-ops/trx")
    problems = []
    for name in SECRET_ARN_PARAMETERS:
        pattern = d.template["Parameters"].get(name, {}).get("AllowedPattern")
        if (
            pattern is None
            or not all(re.fullmatch(pattern, v) for v in good)
            or any(re.fullmatch(pattern, v) for v in bad)
        ):
            problems.append(f"{name} accepts a partial ARN or a name")
    return problems


def small_things(d: Deployment) -> list[str]:
    problems = []
    describes = any("secretsmanager:DescribeSecret" in actions(s) for s in d.role_statements("SettingsApiFunctionRole"))
    if describes and "describe_secret" not in (ROOT / "layers/shared/account_api/settings.py").read_text():
        problems.append("the settings role may DescribeSecret, which it never calls")
    for s in d.role_statements("SecretRotationFunctionRole"):
        tagging = {"secretsmanager:TagResource", "secretsmanager:UntagResource"} & set(actions(s))
        if tagging and "aws:TagKeys" not in json.dumps(s.get("Condition", {})):
            problems.append("the rotation role may tag the secret with any key")
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


def fleet_fan_out(d: Deployment) -> list[str]:
    """The fleet's queue as Lambda's event source mapping needs it: partial batch responses (one
    account's failure never fails the batch), a concurrency bound that fits a reservation, a
    visibility timeout of at least six times the function's timeout (else a message comes back
    while it is still being decided), and a redrive to a dead-letter queue. The rotation function
    may be invoked by Secrets Manager for the secrets the settings API creates, under that prefix."""
    problems = []
    queues = d.of_type("AWS::SQS::Queue")
    functions = d.of_type("AWS::Lambda::Function")
    for name, mapping in d.of_type("AWS::Lambda::EventSourceMapping").items():
        props = mapping["Properties"]
        [queue] = refs(props["EventSourceArn"]) & set(queues)
        [function] = refs(props["FunctionName"]) & set(functions)
        if "ReportBatchItemFailures" not in (props.get("FunctionResponseTypes") or []):
            problems.append(f"{name}: no partial batch responses, one failing account fails its whole batch")
        bound = d.value((props.get("ScalingConfig") or {}).get("MaximumConcurrency"))
        if bound is None:
            problems.append(f"{name}: no MaximumConcurrency, the fleet's tick is not bounded")
        reserved = d.value(functions[function]["Properties"].get("ReservedConcurrentExecutions"))
        if str(reserved).isdigit() and bound is not None and int(bound) >= int(reserved):
            problems.append(f"{name}: MaximumConcurrency {bound} leaves no room in a reservation of {reserved}")
        timeout = int(d.value(functions[function]["Properties"].get("Timeout", 3)))
        visibility = int(d.value(queues[queue]["Properties"].get("VisibilityTimeout", 30)))
        if visibility < 6 * timeout:
            problems.append(f"{queue}: visibility timeout {visibility} s is under six times {function}'s {timeout} s")
        if "RedrivePolicy" not in queues[queue]["Properties"]:
            problems.append(f"{queue}: no dead-letter queue, a message that always fails is retried for ever")
    settings = functions.get("SettingsApiFunction", {}).get("Properties", {})
    prefix = (settings.get("Environment") or {}).get("Variables", {}).get("ACCOUNT_SECRET_PREFIX")
    if prefix is not None:
        found = re.search(r"\$\{ServiceName\}(/[^\"]*)", json.dumps(prefix))
        wanted = (found.group(1) if found else json.dumps(prefix)) + "*"  # "/accounts/*"
        sources = [
            json.dumps(p["Properties"].get("SourceArn"))
            for p in d.of_type("AWS::Lambda::Permission").values()
            if "SecretRotationFunction" in refs(p["Properties"]["FunctionName"])
        ]
        if not any(wanted in s for s in sources):
            problems.append(f"Secrets Manager may not invoke the rotation for secrets under {wanted}")
    return problems


RULES: list[Callable[[Deployment], list[str]]] = [
    reserved_concurrency,
    access_logs_without_the_account_role,
    alarms_that_cannot_notify,
    rotate_now_without_invoke,
    stages_and_endpoint,
    shared_metric_namespace,
    kept_but_never_blocking_a_retry,
    flapping_critical_alarm,
    small_things,
    invoke_permissions,
    names_two_stacks_share,
    alarms_reach_the_runbook,
    secret_arn_parameters,
    fleet_fan_out,
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
    # transformed with the deployment's own values: SAM resolves some of them at transform time
    parameters = DEPLOYMENTS[deployment]
    assert rule(Deployment(transformed(parameters=parameters), parameters)) == []


# Rules for failures that template did not have: tests/test_template_mutations.py breaks the
# current template on purpose for each of them instead.
NEWER_THAN_THE_REVIEW = {
    invoke_permissions,
    names_two_stacks_share,
    alarms_reach_the_runbook,
    secret_arn_parameters,
    fleet_fan_out,
}
OLDER_RULES = [r for r in RULES if r not in NEWER_THAN_THE_REVIEW]


@pytest.mark.parametrize("rule", OLDER_RULES, ids=[r.__name__ for r in OLDER_RULES])
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


def test_samconfig_names_the_region_and_sync_never_fights_deploy() -> None:
    """Every environment pins its region (sam and `account-ops --config-env` go to the same place),
    follows logs with `sam logs`, and a `sam sync` of the development stack passes deploy's own
    parameters: otherwise each would set the other's values back."""
    config = tomllib.loads((ROOT / "samconfig.toml").read_text())
    for env in ("default", "prod"):
        assert config[env]["global"]["parameters"]["region"], env
        assert config[env]["logs"]["parameters"]["tail"] is True, env
    sync = config["default"]["sync"]["parameters"]
    assert sync["parameter_overrides"] == config["default"]["deploy"]["parameters"]["parameter_overrides"]
    assert "sync" not in config["prod"]  # a sync skips change sets: never for the live stack


def test_the_service_name_parameter_says_what_it_names() -> None:
    """Its description must name every use and claim none it does not have (it once claimed the
    metric namespace, which is per stack)."""
    text = (ROOT / "template.yaml").read_text()
    description = re.search(r"\n  ServiceName:\n(?:    .*\n)*?    Description: (.*)\n", text)
    assert description
    uses = {
        "log": "POWERTOOLS_SERVICE_NAME: !Ref ServiceName" in text,
        "secret": "Name: !Sub ${ServiceName}/vonage" in text,
        "layer": "LayerName: !Sub ${ServiceName}-" in text,
    }
    for word, used in uses.items():
        assert (word in description.group(1)) == used, word
    namespaced_by_service = re.search(r"Namespace: !Sub [^\n]*\$\{ServiceName\}", text)
    assert bool(namespaced_by_service) == ("namespace" in description.group(1).lower()), description.group(1)
