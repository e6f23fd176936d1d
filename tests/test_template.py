"""What must hold in template.yaml and samconfig.toml, read from the files themselves."""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

import pytest

from local.aws_resources import load_template, resources_of_type
from tests.conftest import ROOT

TEMPLATE = load_template()
RESOURCES: dict[str, dict[str, Any]] = TEMPLATE["Resources"]
FUNCTIONS = resources_of_type(TEMPLATE, "AWS::Serverless::Function")
GLOBALS = TEMPLATE["Globals"]["Function"]
DEPLOY_DOC = (ROOT / "docs" / "deploy.md").read_text()
RUNBOOK = (ROOT / "docs" / "runbook.md").read_text()


def function_property(name: str, prop: str) -> Any:
    return FUNCTIONS[name]["Properties"].get(prop, GLOBALS.get(prop))


def test_the_three_functions_exist() -> None:
    assert set(FUNCTIONS) == {"SettingsApiFunction", "BalanceWatcherFunction", "SecretRotationFunction"}
    for name in FUNCTIONS:
        assert (ROOT / function_property(name, "CodeUri") / "app.py").exists()
        assert function_property(name, "Handler") == "app.lambda_handler"


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_every_function_is_arm64_python313_with_the_layer(name: str) -> None:
    assert function_property(name, "Architectures") == ["arm64"]
    assert function_property(name, "Runtime") == "python3.13"
    assert {"Ref": "AccountApiLayer"} in function_property(name, "Layers")
    assert function_property(name, "Tracing") == "Active"


def test_the_layer_builds_bytecode_for_arm64() -> None:
    layer = RESOURCES["AccountApiLayer"]
    assert layer["Metadata"] == {"BuildMethod": "makefile", "BuildArchitecture": "arm64"}
    assert layer["Properties"]["CompatibleRuntimes"] == ["python3.13"]
    makefile = (ROOT / "layers/shared/Makefile").read_text()
    assert "build-AccountApiLayer:" in makefile and "--invalidation-mode unchecked-hash" in makefile
    assert "manylinux2014_aarch64" in makefile and "boto3 botocore" in makefile


def test_api_is_iam_authorised_without_data_tracing() -> None:
    [api] = resources_of_type(TEMPLATE, "AWS::Serverless::Api").values()
    props = api["Properties"]
    assert props["Auth"]["DefaultAuthorizer"] == "AWS_IAM"
    for setting in props.get("MethodSettings", []):
        assert setting.get("DataTraceEnabled", False) is False
        assert setting["ThrottlingRateLimit"] and setting["ThrottlingBurstLimit"]
    condition, access_log, off = props["AccessLogSetting"]["If"]
    assert (condition, off) == ("AccessLogsOn", {"Ref": "AWS::NoValue"})
    fmt = access_log["Format"]
    assert "$context.requestId" in fmt and "header" not in fmt.lower() and "body" not in fmt.lower()


def test_tables_expire_items_and_protect_history() -> None:
    tables = resources_of_type(TEMPLATE, "AWS::DynamoDB::Table")
    assert set(tables) == {"WatcherStateTable", "TopUpHistoryTable", "AccountsTable"}
    for name in ("WatcherStateTable", "TopUpHistoryTable"):
        assert tables[name]["Properties"]["TimeToLiveSpecification"]["Enabled"] is True
    # the registry's items never expire: a removed account's item explains its history
    assert "TimeToLiveSpecification" not in tables["AccountsTable"]["Properties"]
    for name in ("TopUpHistoryTable", "AccountsTable"):
        props = tables[name]["Properties"]
        assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True, name
        assert tables[name]["DeletionPolicy"] == "RetainExceptOnCreate", name


def test_schedule_has_retries_a_dlq_and_the_scheduled_time() -> None:
    watcher = FUNCTIONS["BalanceWatcherFunction"]["Properties"]
    [schedule] = [e["Properties"] for e in watcher["Events"].values() if e["Type"] == "ScheduleV2"]
    assert schedule["RetryPolicy"]["MaximumRetryAttempts"] >= 1
    assert schedule["DeadLetterConfig"]["Arn"]
    assert "<aws.scheduler.scheduled-time>" in schedule["Input"]
    assert watcher["EventInvokeConfig"]["DestinationConfig"]["OnFailure"]["Type"] == "SQS"


def test_rotation_has_no_vpc_and_never_rotates_at_deploy() -> None:
    assert "VpcConfig" not in FUNCTIONS["SecretRotationFunction"]["Properties"]
    assert "VpcConfig" not in GLOBALS
    [schedule] = resources_of_type(TEMPLATE, "AWS::SecretsManager::RotationSchedule").values()
    assert schedule["Properties"]["RotateImmediatelyOnUpdate"] is False
    assert schedule["Condition"] == "RotationEnabled"
    assert TEMPLATE["Parameters"]["EnableRotation"]["Default"] == "false"
    permission = RESOURCES["SecretRotationPermission"]["Properties"]
    assert permission["Principal"] == "secretsmanager.amazonaws.com"


def _statements() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for name, function in FUNCTIONS.items():
        for policy in function["Properties"].get("Policies", []):
            assert isinstance(policy, dict) and "Statement" in policy, f"{name}: only inline statements"
            for statement in policy["Statement"]:
                if "If" in statement:  # a conditional statement (!If): check both branches
                    found += [(name, s) for s in statement["If"][1:] if isinstance(s, dict) and "Effect" in s]
                else:
                    found.append((name, statement))
    return found


def test_no_iam_statement_grants_star() -> None:
    statements = _statements()
    assert len(statements) >= 8
    lines = (ROOT / "template.yaml").read_text().splitlines()
    for name, statement in statements:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert all("*" not in action for action in actions), f"{name}: {actions}"
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        if "*" in resources:  # only where the service allows nothing narrower, and said so in a comment
            assert any(statement.get("Sid", "?") in line and "#" in line for line in lines), name


def test_every_log_group_has_retention() -> None:
    groups = resources_of_type(TEMPLATE, "AWS::Logs::LogGroup")
    assert len(groups) == 4  # three functions and the API's access log (when on)
    for group in groups.values():
        assert group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    for name, function in FUNCTIONS.items():  # each function logs to its own group, with retention
        assert function["Properties"]["LoggingConfig"]["LogGroup"]["Ref"] in groups, name


def test_alarms_cover_what_operators_need() -> None:
    alarms = resources_of_type(TEMPLATE, "AWS::CloudWatch::Alarm")
    expected = {
        "BalanceCriticalAlarm",
        "TopUpNeedsAttentionAlarm",
        "RotationFailedAlarm",
        "WatcherDeadLetterAlarm",
        "Api5xxAlarm",
        "SettingsApiFunctionErrorsAlarm",
        "BalanceWatcherFunctionErrorsAlarm",
        "SecretRotationFunctionErrorsAlarm",
        "VonageNotConfiguredAlarm",
        "FleetAccountNotEvaluatedAlarm",
        "FleetAccountsFailingAlarm",
        "FleetAccountCriticalAlarm",
    }
    assert set(alarms) == expected
    for alarm in alarms.values():
        assert alarm["Properties"]["AlarmActions"] == [{"Ref": "AlertTopic"}]


def test_dashboard_body_is_json_with_the_widgets() -> None:
    body_template, variables = RESOURCES["Dashboard"]["Properties"]["DashboardBody"]["Sub"]
    rendered = re.sub(r"\$\{[^}]+\}", "1", body_template)
    widgets = json.loads(rendered)["widgets"]
    titles = {w["properties"]["title"] for w in widgets}
    assert {
        "Vonage balance (EUR)",
        "Top-ups by outcome",
        "Settings API requests by status",
        "Settings API latency (ms)",
        "Rotation outcomes",
        "Cold starts",
        "Duration p99 (ms)",
    } <= titles
    assert variables["ApiName"] == {"Sub": "${AWS::StackName}-settings"}


def test_metric_names_in_alarms_are_the_ones_the_code_publishes() -> None:
    code = "".join(p.read_text() for p in (ROOT / "layers/shared/account_api").glob("*.py"))
    for alarm in resources_of_type(TEMPLATE, "AWS::CloudWatch::Alarm").values():
        props = alarm["Properties"]
        names = [props.get("MetricName")] + [
            m["MetricStat"]["Metric"]["MetricName"] for m in props.get("Metrics", []) if "MetricStat" in m
        ]
        namespaces = [props.get("Namespace")] + [
            m["MetricStat"]["Metric"]["Namespace"] for m in props.get("Metrics", []) if "MetricStat" in m
        ]
        for name, namespace in zip(names, namespaces, strict=True):
            if namespace == {"Sub": "AccountOps/${AWS::StackName}"}:
                assert f'"{name}"' in code, name


def test_no_callback_allowance_in_the_template() -> None:
    assert "UNSAFE_CALLBACK_ALLOW_HOSTS" not in (ROOT / "template.yaml").read_text()


def test_samconfig_has_a_safe_default_and_prod() -> None:
    config = tomllib.loads((ROOT / "samconfig.toml").read_text())
    for env in ("default", "prod"):
        assert config[env]["deploy"]["parameters"]["capabilities"] == "CAPABILITY_IAM"
        assert "parameter_overrides" in config[env]["deploy"]["parameters"]
    assert 'DryRun="true"' in config["default"]["deploy"]["parameters"]["parameter_overrides"]
    assert 'DryRun="false"' in config["prod"]["deploy"]["parameters"]["parameter_overrides"]
    assert (
        config["default"]["global"]["parameters"]["stack_name"] != config["prod"]["global"]["parameters"]["stack_name"]
    )


def test_readme_parameter_table_names_only_real_parameters() -> None:
    section = re.split(r"\n##+ ", DEPLOY_DOC.split("## Parameters", 1)[1], maxsplit=1)[0]
    named = re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE)
    assert set(named) == set(TEMPLATE["Parameters"]), "every parameter documented, and only real ones"


def test_readme_alarm_table_names_only_real_alarms() -> None:
    section = re.split(r"\n##+ ", RUNBOOK.split("## Alarms", 1)[1], maxsplit=1)[0]
    named = set(re.findall(r"^\| `(\w+Alarm)` \|", section, flags=re.MULTILINE))
    assert named == set(resources_of_type(TEMPLATE, "AWS::CloudWatch::Alarm"))
