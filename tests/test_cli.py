"""The operator's CLI, every command against the local stack (the same code paths as against a
deployed stack, but for finding the API: CloudFormation outputs there, the state file here)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest

from account_ops import cli
from account_ops.target import Target, TargetError
from local import aws_resources
from local.stack import LocalStack, StackOptions
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    state = tmp_path_factory.mktemp("cli") / "state.json"
    with LocalStack(StackOptions.on_free_ports(tick_seconds=86400, state_file=state)) as running:
        yield running


def set_balance(stack: LocalStack, value: float) -> None:
    request = urllib.request.Request(
        f"{stack.sim.url}/_sim/state", data=json.dumps({"balance": value}).encode(), method="POST"
    )
    urllib.request.urlopen(request, timeout=5).close()


def run(stack: LocalStack, monkeypatch: pytest.MonkeyPatch, *argv: str) -> tuple[int, str]:
    monkeypatch.setenv("ACCOUNT_OPS_LOCAL_STATE", str(stack.options.state_file))
    lines: list[str] = []
    code = cli.main(["--local", *argv], out=lines.append)
    return code, "\n".join(lines)


def test_status_shows_everything_at_a_glance(stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> None:
    stack.tick()
    code, text = run(stack, monkeypatch, "status")
    assert code == 0, text
    for expected in (
        "release        1.1.0",
        "balance        25.00 EUR, auto-reload on",
        "top-ups        live",
        "(current)",
        "rotation       on, idle",
        "last runs      ok",
        "none on the local stack",
    ):
        assert expected in text, (expected, text)


def test_settings_set_shows_the_checks_and_get_shows_the_change(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, text = run(stack, monkeypatch, "settings", "set", "--dr", f"{stack.hooks.url}/missing")
    assert code == 1 and "check drCallbackUrl: status (answered 404, expected 200)" in text
    code, text = run(stack, monkeypatch, "settings", "set", "--mo", f"{stack.hooks.url}/ok")
    assert code == 0 and "check moCallbackUrl: ok" in text and "changed" in text
    code, text = run(stack, monkeypatch, "settings", "get")
    assert code == 0 and json.loads(text)["moCallbackUrl"] == f"{stack.hooks.url}/ok"


def test_rotate_and_wait_follows_it_until_the_new_secret_is_current(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = json.loads(
        boto3.client("secretsmanager").get_secret_value(SecretId=stack.resources.secret_arn, VersionStage="AWSCURRENT")[
            "SecretString"
        ]
    )["secret_id"]
    code, text = run(stack, monkeypatch, "rotate", "--wait", "--timeout", "30")
    assert code == 0 and "rotation started" in text and "done: the new secret is AWSCURRENT" in text, text
    code, text = run(stack, monkeypatch, "status")
    assert before not in [line.split()[1] for line in text.splitlines() if "(current)" in line]


def test_pause_and_resume_are_honoured_and_show_in_history(stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> None:
    code, text = run(stack, monkeypatch, "pause-topups", "--reason", "card replaced")
    assert code == 0 and "top-ups paused by arn:aws:iam::000000000000:user/local-developer (card replaced)" in text
    shown = run(stack, monkeypatch, "status")[1]
    assert "top-ups        PAUSED by" in shown and "live" not in shown
    set_balance(stack, 3.0)
    now = datetime.now(UTC).replace(microsecond=0)
    assert stack.tick(now - timedelta(minutes=10))["outcome"] == "skipped_paused"
    assert run(stack, monkeypatch, "resume-topups")[0] == 0
    assert stack.tick(now - timedelta(minutes=5))["outcome"] == "topup_succeeded"
    code, text = run(stack, monkeypatch, "history", "--days", "2")
    assert (
        code == 0 and "topup_succeeded" in text and "skipped_paused" in text and "decisions in the last 2 days" in text
    )


def test_status_never_says_live_when_the_switch_cannot_be_read(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    from local import aws_resources

    table = stack.resources.tables["WatcherStateTable"]
    ddb = boto3.client("dynamodb", endpoint_url=stack.moto_url)
    ddb.delete_table(TableName=table)
    try:
        code, text = run(stack, monkeypatch, "status")
    finally:  # the state table back, empty, for the module's other tests
        props = aws_resources.resources_of_type(aws_resources.load_template(), "AWS::DynamoDB::Table")[table]
        ddb.create_table(
            TableName=table,
            AttributeDefinitions=props["Properties"]["AttributeDefinitions"],
            KeySchema=props["Properties"]["KeySchema"],
            BillingMode="PAY_PER_REQUEST",
        )
    assert code == 1, text
    assert "top-ups        UNKNOWN" in text and "502" in text and "live" not in text


def test_smoke_checks_every_read_route_the_watcher_and_the_topic(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, text = run(stack, monkeypatch, "smoke")
    assert code == 0, text
    assert "11 passed, 0 failed" in text and "[x] the watcher runs once, in dry run" in text


def test_without_a_running_local_stack_it_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCOUNT_OPS_LOCAL_STATE", str(tmp_path / "none.json"))
    lines: list[str] = []
    assert cli.main(["--local", "status"], out=lines.append) == 2
    assert "start it with `make local`" in lines[0]
    with pytest.raises(TargetError, match="no region"):
        monkeypatch.delenv("AWS_REGION", raising=False)
        monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
        Target.from_stack("account-ops", None, None)


def test_the_console_script_is_installed() -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "account-ops"), "--help"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0 and "pause-topups" in done.stdout


def test_the_alarms_are_this_stacks_own_not_every_name_with_its_prefix(stack: LocalStack) -> None:
    """`account-ops` and `account-ops-prod` side by side in CloudWatch: `account-ops` sees its own
    two alarms, from its stack's resources, not the four its name is a prefix of. moto's
    CloudFormation has no AWS::CloudWatch::Alarm, so the stack's resource list comes through
    botocore's Stubber; CloudWatch is moto's."""
    from botocore.stub import Stubber

    session = boto3.Session(region_name="eu-west-1")
    cloudwatch = session.client("cloudwatch", endpoint_url=stack.moto_url)
    for name in ("account-ops-One", "account-ops-Two", "account-ops-prod-One", "account-ops-prod-Two"):
        cloudwatch.put_metric_alarm(
            AlarmName=name,
            Namespace="AccountOps",
            MetricName="BalanceEUR",
            Statistic="Minimum",
            Period=300,
            EvaluationPeriods=1,
            Threshold=1,
            ComparisonOperator="LessThanThreshold",
        )
    cloudformation = session.client("cloudformation")
    stubber = Stubber(cloudformation)
    summaries = [
        {
            "LogicalResourceId": logical,
            "PhysicalResourceId": physical,
            "ResourceType": kind,
            "ResourceStatus": "CREATE_COMPLETE",
            "LastUpdatedTimestamp": datetime.now(UTC),
        }
        for logical, physical, kind in (
            ("One", "account-ops-One", "AWS::CloudWatch::Alarm"),
            ("Two", "account-ops-Two", "AWS::CloudWatch::Alarm"),
            ("AlertTopic", "arn:aws:sns:eu-west-1:123456789012:AlertTopic", "AWS::SNS::Topic"),
        )
    ]
    stubber.add_response("list_stack_resources", {"StackResourceSummaries": summaries}, {"StackName": "account-ops"})

    class StackTarget(Target):
        def client(self, service: str) -> object:
            return cloudformation if service == "cloudformation" else cloudwatch

    with stubber:
        alarms = cli._stack_alarms(StackTarget("account-ops", "http://unused", "eu-west-1", session, {}, {}))
    assert sorted(a["AlarmName"] for a in alarms) == ["account-ops-One", "account-ops-Two"]


def test_smoke_fails_while_nobody_is_subscribed_to_the_alerts(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    sns = boto3.client("sns", endpoint_url=stack.moto_url)
    subscriptions = sns.list_subscriptions_by_topic(TopicArn=stack.resources.topic_arn)["Subscriptions"]
    for subscription in subscriptions:
        sns.unsubscribe(SubscriptionArn=subscription["SubscriptionArn"])
    try:
        code, text = run(stack, monkeypatch, "smoke")
    finally:
        stack.read_alerts = aws_resources.sqs_messages_of_topic(boto3.Session(), stack.resources.topic_arn)
    assert code == 1 and "[ ] the alert topic has a confirmed subscription" in text, text
