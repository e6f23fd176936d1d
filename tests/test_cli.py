"""The operator's CLI, every command against the local stack, and against "deployed" stacks in
moto's CloudFormation whose outputs point at the local stack's API (or at a scripted API that
answers what a broken deployment would). Every failure is one line on stderr with its exit code."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest

from account_ops import cli, output
from account_ops.errors import CliError
from account_ops.target import Target, default_state_file
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
    """The command against the local stack; stdout and stderr together (run_split keeps them apart)."""
    code, out, err = run_split(stack, monkeypatch, "--local", *argv)
    return code, out + err


def run_split(stack: LocalStack, monkeypatch: pytest.MonkeyPatch, *argv: str) -> tuple[int, str, str]:
    monkeypatch.setenv("ACCOUNT_OPS_LOCAL_STATE", str(stack.options.state_file))
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), stdout=out, stderr=err)
    assert "Traceback" not in out.getvalue() + err.getvalue()
    return code, out.getvalue(), err.getvalue()


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


# -- every failure: one line on stderr, a documented exit code, never a traceback ----------------------

CLEAN_AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION")


def process(*argv: str, env: dict[str, str] | None = None, cwd: Path = ROOT, **popen: Any) -> Any:
    """The installed console script in its own process, as an operator's shell runs it."""
    base = {k: v for k, v in os.environ.items() if k not in CLEAN_AWS_ENV and not k.startswith("AWS_")}
    base.update({"AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull})
    base["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    base.update(env or {})
    command = [str(Path(sys.executable).parent / "account-ops"), *argv]
    if popen:
        return subprocess.Popen(command, env=base, cwd=cwd, text=True, **popen)
    return subprocess.run(command, env=base, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def one_error_line(done: Any, code: int, *expected: str) -> None:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("account-ops: "), done.stderr
    for text in expected:
        assert text in lines[0], (text, lines[0])


KEYS = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"}


def test_an_unknown_profile_is_one_line_and_exit_4(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("[profile ops]\nregion = eu-west-1\n")
    done = process("status", "--profile", "nope", env={"AWS_CONFIG_FILE": str(config)})
    one_error_line(done, 4, "no profile 'nope'", "profiles there: ops")
    assert done.stdout == ""


def test_no_credentials_says_how_to_get_some() -> None:
    one_error_line(process("status", "--region", "eu-west-1"), 4, "no AWS credentials found", "aws sso login")


def test_no_region_and_an_unknown_region_are_usage_errors() -> None:
    one_error_line(process("status", env=KEYS), 2, "no region", "--config-env", "AWS_REGION")
    one_error_line(process("status", "--region", "eu-wst-1", env=KEYS), 2, "unknown region 'eu-wst-1'")


def test_no_network_is_exit_5() -> None:
    env = {**KEYS, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}  # nothing listens on the discard port
    one_error_line(process("status", "--region", "eu-west-1", env=env), 5, "AWS did not answer", "network")


def test_a_wrong_stack_lists_the_account_ops_stacks_that_exist(stacks: dict[str, str]) -> None:
    env = {**KEYS, "AWS_ENDPOINT_URL": stacks["moto"]}
    one_error_line(
        process("status", "--stack", "account-ops-staging", "--region", "eu-west-1", env=env),
        3,
        "no stack 'account-ops-staging' in eu-west-1",
        "account-ops stacks there: account-ops-prod, account-ops-stub",
    )
    # AWS_REGION, which this botocore does not read itself, is honoured
    one_error_line(
        process("status", env={**env, "AWS_REGION": "us-east-2"}), 3, "in us-east-2", "no account-ops stack there"
    )
    one_error_line(
        process("status", "--stack", "not-ours", "--region", "eu-west-1", env=env), 3, "no SettingsApiUrl output"
    )


def test_config_env_takes_the_stack_and_region_from_samconfig(stacks: dict[str, str]) -> None:
    env = {**KEYS, "AWS_ENDPOINT_URL": stacks["moto"]}
    done = process("--config-env", "prod", "status", "--output", "json", env=env)
    assert done.returncode == 0, done.stderr
    status = output.Status.model_validate_json(done.stdout)
    assert (status.stack, status.region, status.topups.state) == ("account-ops-prod", "eu-west-1", "live")
    one_error_line(
        process("status", "--config-env", "staging", env=env), 2, "no environment 'staging'", "default, prod"
    )


def test_the_stack_path_reads_the_outputs_and_options_come_after_the_command(stacks: dict[str, str]) -> None:
    env = {**KEYS, "AWS_ENDPOINT_URL": stacks["moto"]}
    done = process("history", "--days", "2", "--stack", "account-ops-prod", "--region", "eu-west-1", env=env)
    assert done.returncode == 0 and "decisions in the last 2 days" in done.stdout, done.stderr


def test_an_api_answer_that_is_not_json_is_unknown_not_a_crash(stacks: dict[str, str]) -> None:
    env = {**KEYS, "AWS_ENDPOINT_URL": stacks["moto"]}
    where = ("--stack", "account-ops-stub", "--region", "eu-west-1")
    done = process("status", *where, env=env)
    one_error_line(done, 1, "could not be read", "not the JSON the API documents")
    assert "balance        UNKNOWN" in done.stdout and "top-ups        UNKNOWN" in done.stdout
    one_error_line(process("history", *where, env=env), 1, "history: HTTP 200 but the answer is not the JSON")
    one_error_line(process("settings", "get", *where, env=env), 1, "settings: HTTP 200")


def test_smoke_reports_a_watcher_it_cannot_invoke_as_a_failed_check(stacks: dict[str, str]) -> None:
    env = {**KEYS, "AWS_ENDPOINT_URL": stacks["moto"]}
    done = process("smoke", "--stack", "account-ops-prod", "--region", "eu-west-1", env=env)
    one_error_line(done, 1, "smoke:", "the watcher runs once")
    assert "[ ] the watcher runs once, in dry run: AWS: ResourceNotFoundException" in done.stdout, done.stdout
    assert "[x] GET /balance" in done.stdout


def test_ctrl_c_while_following_a_rotation_says_it_goes_on(stacks: dict[str, str]) -> None:
    env = {**KEYS, "AWS_ENDPOINT_URL": stacks["moto"]}
    running = process(
        "rotate", "--wait", "--stack", "account-ops-stub", "--region", "eu-west-1", env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert running.stdout.readline().startswith("rotation started (version v-stub)")
    running.send_signal(signal.SIGINT)
    _, err = running.communicate(timeout=30)
    assert running.returncode == 130
    [line] = err.splitlines()
    assert "interrupted: the rotation (version v-stub) goes on in Secrets Manager" in line
    assert "account-ops status" in line


def test_a_stale_local_state_file_says_the_stack_is_not_running(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    env = {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "ALERT_TOPIC_ARN": "arn:aws:sns:eu-west-1:000000000000:alerts",
        "VONAGE_SECRET_ARN": "arn:aws:secretsmanager:eu-west-1:000000000000:secret:v-AbCdEf",
    }
    state.write_text(json.dumps({"env": env, "api_url": "http://127.0.0.1:9/v1"}))
    done = process("--local", "status", env={"ACCOUNT_OPS_LOCAL_STATE": str(state)})
    one_error_line(done, 3, f"the local stack in {state} does not answer", "make local")
    state.write_text("{not json")
    one_error_line(process("--local", "status", env={"ACCOUNT_OPS_LOCAL_STATE": str(state)}), 3, "delete it")
    missing = tmp_path / "none.json"
    one_error_line(process("--local", "status", env={"ACCOUNT_OPS_LOCAL_STATE": str(missing)}), 3, "make local")


def test_local_finds_the_repositorys_state_file_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ACCOUNT_OPS_LOCAL_STATE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_state_file() == ROOT / ".local-stack.json"
    (tmp_path / ".local-stack.json").write_text("{}")
    assert default_state_file() == tmp_path / ".local-stack.json"


def test_a_reader_that_goes_away_ends_it_quietly(stack: LocalStack) -> None:
    running = process(
        "--local", "status", env={"ACCOUNT_OPS_LOCAL_STATE": str(stack.options.state_file)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    running.stdout.close()  # `| head -0`: the reader is gone before the first line
    err = running.stderr.read()
    assert running.wait(timeout=60) == 141 and err == "", err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["rotate", "--timeout", "-5"], "argument --timeout: '-5': give a number of seconds above 0"),
        (["history", "--days", "0"], "argument --days: '0': give a whole number of days from 1 to 90"),
        (["settings", "set"], "settings set: give --mo URL, --dr URL or both"),
        (["status", "--output", "yaml"], "argument --output: invalid choice: 'yaml'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "give a command"),
    ],
)
def test_usage_mistakes_are_one_line_and_exit_2(argv: list[str], expected: str) -> None:
    done = process(*argv, "--local")
    one_error_line(done, 2, expected)
    assert "1, 2, 3" not in done.stderr  # never the list of 90 allowed values


def test_help_lists_the_exit_codes_and_each_command_has_a_description_and_an_example() -> None:
    done = process("--help")
    assert done.returncode == 0
    for code in ("0 ", "1 ", "2 ", "3 ", "4 ", "5 ", "130 "):
        assert f"\n  {code}" in done.stdout, code
    for command in (["status"], ["settings", "get"], ["settings", "set"], ["rotate"], ["history"], ["smoke"]):
        page = process(*command, "--help").stdout
        assert "example:\n  account-ops " in page and "exit codes:" in page, command
        assert cli.COMMANDS[" ".join(command)][1].split(".")[0] in page.replace("\n", " "), command
    assert process("--version").stdout.strip() == "account-ops 1.1.0"


def test_json_output_of_every_command_follows_its_schema(stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """--output json is the contract with scripts: each command's JSON validates against its model,
    and the committed schema (docs/cli-output.schema.json) is what the models generate."""
    assert (ROOT / "docs" / "cli-output.schema.json").read_text() == output.schema(), "run `make cli-schema`"
    hooks = stack.hooks.url
    commands: list[list[str]] = [
        ["status"],
        ["settings", "get"],
        ["settings", "set", "--mo", f"{hooks}/ok"],
        ["rotate"],
        ["history", "--days", "1"],
        ["pause-topups", "--reason", "json"],
        ["resume-topups"],
        ["smoke"],
    ]
    for command in commands:
        name = " ".join(command[:2]) if command[0] == "settings" else command[0]
        code, out, err = run_split(stack, monkeypatch, *command, "--local", "--output", "json")
        assert code == 0, (command, err)
        output.BY_COMMAND[name].model_validate_json(out)
        assert out.lstrip().startswith("{") and "account-ops status" not in out
    code, out, _ = run_split(
        stack, monkeypatch, "settings", "set", "--dr", f"{hooks}/missing", "--local", "--output", "json"
    )
    refused = output.SettingsChange.model_validate_json(out)
    assert code == 1 and not refused.changed and refused.checks["drCallbackUrl"]["ok"] is False


def test_a_second_rotation_while_one_is_in_progress_is_refused_as_by_secrets_manager(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault = urllib.request.Request(
        f"{stack.sim.url}/_sim/faults",
        data=json.dumps({"operation": "createAPISecret", "status": 500, "times": 1}).encode(),
        method="POST",
    )
    urllib.request.urlopen(fault, timeout=5).close()
    code, out, err = run_split(stack, monkeypatch, "rotate", "--local")
    assert code == 1 and "rotation not started" in err, (out, err)
    code, out, err = run_split(stack, monkeypatch, "rotate", "--local")
    assert code == 1 and "HTTP 409" in err and "already in progress" in err, err
    assert stack.retry_rotation()  # as Secrets Manager reattempts it
    code, out, err = run_split(stack, monkeypatch, "rotate", "--local", "--wait", "--timeout", "30")
    assert code == 0 and "done" in out, err


# -- "deployed" stacks in moto's CloudFormation ---------------------------------------------------------


class ScriptedApi(BaseHTTPRequestHandler):
    """What a broken deployment or a slow rotation answers: a proxy's HTML page for every read, and
    a rotation that never ends."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.startswith("/v1/rotation"):
            state = {"rotationEnabled": True, "state": "in_progress", "pendingSecretCreated": False}
            self._send(200, json.dumps(state).encode(), "application/json")
        else:
            self._send(200, b"<html><body>502 upstream unavailable</body></html>", "text/html")

    def do_POST(self) -> None:
        self._send(202, b'{"rotation": "started", "versionId": "v-stub"}', "application/json")


@pytest.fixture(scope="module")
def stacks(stack: LocalStack) -> Iterator[dict[str, str]]:
    """account-ops-prod: outputs pointing at the local stack's API, with a watcher function that does
    not exist; account-ops-stub: outputs pointing at the scripted API; not-ours: no API output."""
    scripted = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedApi)
    threading.Thread(target=scripted.serve_forever, daemon=True).start()
    cloudformation = boto3.client("cloudformation", endpoint_url=stack.moto_url, region_name="eu-west-1")

    def create(name: str, outputs: dict[str, str]) -> None:
        template = {
            "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
            "Outputs": {k: {"Value": v} for k, v in outputs.items()},
        }
        cloudformation.create_stack(StackName=name, TemplateBody=json.dumps(template))

    common = {"AlertTopicArn": stack.resources.topic_arn, "BalanceWatcherFunctionName": "no-such-function"}
    create("account-ops-prod", {"SettingsApiUrl": stack.api_url, **common})
    create("account-ops-stub", {"SettingsApiUrl": f"http://127.0.0.1:{scripted.server_address[1]}/v1", **common})
    create("not-ours", {"Something": "else"})
    yield {"moto": stack.moto_url}
    scripted.shutdown()
    for name in ("account-ops-prod", "account-ops-stub", "not-ours"):
        cloudformation.delete_stack(StackName=name)


def test_the_error_lines_never_carry_a_traceback_even_for_our_own_bugs(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(target: Target, args: Any) -> Any:
        raise RuntimeError("a bug\nover two lines")

    monkeypatch.setattr(cli, "status", broken)  # a bug of ours, injected: the last-resort line
    code, _, err = run_split(stack, monkeypatch, "status", "--local")
    assert code == 1 and err == "account-ops: internal error (RuntimeError: a bug over two lines); please report it\n"
    with pytest.raises(CliError):
        cli.Parser(prog="x").parse_args(["--nope"])


# -- the fleet ---------------------------------------------------------------------------------------


def add_in_simulator(stack: LocalStack, key: str, secret: str, balance: float = 25.0) -> None:
    request = urllib.request.Request(
        f"{stack.sim.url}/_sim/accounts",
        data=json.dumps({"api_key": key, "api_secret": secret, "balance": balance}).encode(),
        method="POST",
    )
    urllib.request.urlopen(request, timeout=5).close()


def test_accounts_add_list_set_show_remove_and_one_account_commands(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_in_simulator(stack, "cli00001", "Cli-Secret-0001", balance=31.0)
    monkeypatch.delenv(cli.API_SECRET_VARIABLE, raising=False)
    code, text = run(stack, monkeypatch, "accounts", "add", "cli00001")
    assert code == 2 and cli.API_SECRET_VARIABLE in text  # never a secret on the command line
    monkeypatch.setenv(cli.API_SECRET_VARIABLE, "Wrong-Secret-01")
    code, out, err = run_split(stack, monkeypatch, "--local", "accounts", "add", "cli00001")
    assert code == 1 and "Vonage refused these credentials" in err and err.count("\n") == 1, err
    monkeypatch.setenv(cli.API_SECRET_VARIABLE, "Cli-Secret-0001")
    code, text = run(stack, monkeypatch, "accounts", "add", "cli00001", "--name", "Acme", "--threshold", "20")
    assert code == 0 and "added (credentials checked, stored, rotated): Acme (cli00001)" in text, text
    assert "Cli-Secret-0001" not in text
    code, out, _ = run_split(stack, monkeypatch, "--local", "accounts", "list", "--output", "json")
    listed = output.Accounts.model_validate_json(out)
    assert code == 0 and [a.api_key for a in listed.accounts] == ["cli00001"]
    assert listed.accounts[0].settings["threshold_eur"] == 20 and "Cli-Secret-0001" not in out
    code, text = run(stack, monkeypatch, "accounts", "set", "cli00001", "--topup-mode", "off")
    assert code == 0 and "changed" in text, text
    code, out, _ = run_split(stack, monkeypatch, "--local", "accounts", "show", "cli00001", "--output", "json")
    shown = output.Account.model_validate_json(out)
    given = {k: v for k, v in shown.settings.items() if v is not None}  # None: the stack's default
    assert given == {"name": "Acme", "threshold_eur": 20.0, "topup_mode": "off", "enabled": True}
    assert shown.version == 2
    # the commands that act on one account take --account
    code, out, _ = run_split(stack, monkeypatch, "--local", "settings", "get", "--account", "cli00001")
    assert code == 0 and json.loads(out)["moCallbackUrl"] == ""
    code, text = run(stack, monkeypatch, "status", "--account", "cli00001")
    assert code == 0, text
    for expected in (
        "account        Acme (cli00001), of the fleet",
        "balance        31.00 EUR",
        "top-ups        off for this account",
        "  secret         ",  # which one is current is known from its first rotation on
    ):
        assert expected in text, (expected, text)
    code, text = run(stack, monkeypatch, "rotate", "--account", "cli00001", "--wait", "--timeout", "60")
    assert code == 0 and "done: the new secret is AWSCURRENT" in text, text
    code, text = run(stack, monkeypatch, "status", "--account", "cli00001")
    assert "(current)" in text and "rotation       on, idle" in text, text  # its secret id known from now on
    code, text = run(stack, monkeypatch, "status")
    assert code == 0 and "fleet          the stack's own account and 1 more" in text, text
    code, out, err = run_split(stack, monkeypatch, "--local", "status", "--account", "nope0001")
    assert code == 1 and "No such account" in err and err.count("\n") == 1, err
    code, text = run(stack, monkeypatch, "history", "--account", "cli00001", "--days", "1")
    assert code == 0 and "decisions in the last 1 days" in text
    code, out, err = run_split(stack, monkeypatch, "--local", "history", "--account", "nope0001")
    assert code == 1 and "No such account" in err and err.count("\n") == 1
    code, text = run(stack, monkeypatch, "accounts", "remove", "cli00001")
    assert code == 0 and "removed (history kept)" in text and "scheduled for deletion" in text, text
    code, out, _ = run_split(stack, monkeypatch, "--local", "accounts", "list", "--output", "json")
    assert output.Accounts.model_validate_json(out).count == 0
    code, out, _ = run_split(stack, monkeypatch, "--local", "accounts", "list", "--removed")
    assert "cli00001     removed" in out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["accounts", "show", "no!"], "argument api_key: 'no!' is not a Vonage api_key"),
        (["accounts", "set", "abcd1234", "--topup-mode", "often"], "argument --topup-mode: invalid choice"),
        (["accounts", "set", "abcd1234", "--threshold", "-1"], "give an amount above 0"),
        (["accounts", "set", "abcd1234", "--daily-cap", "51"], "from 0 to 50"),
        (["accounts"], "the following arguments are required: ACTION"),
        (["rotate", "--account", "x"], "is not a Vonage api_key"),
    ],
)
def test_accounts_usage_mistakes_are_one_line_and_exit_2(argv: list[str], expected: str) -> None:
    one_error_line(process(*argv, "--local"), 2, expected)


def sim_control(stack: LocalStack, path: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(f"{stack.sim.url}{path}", data=json.dumps(body).encode(), method="POST")
    urllib.request.urlopen(request, timeout=5).close()


def test_a_primary_shows_its_subaccounts_and_status_shows_the_tree(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_in_simulator(stack, "prim0009", "Prim-Secret-009", balance=80.0)
    for key, balance, extra in (("subcli01", 2.0, {}), ("subcli02", None, {}), ("subcli03", 9.0, {"suspended": True})):
        body = {"api_key": key, "api_secret": f"Sub-{key}-Secret1", "parent": "prim0009", "balance": balance, **extra}
        sim_control(stack, "/_sim/subaccounts", body)
    monkeypatch.setenv(cli.API_SECRET_VARIABLE, "Prim-Secret-009")
    assert run(stack, monkeypatch, "accounts", "add", "prim0009", "--name", "Partner")[0] == 0
    code, text = run(stack, monkeypatch, "accounts", "set", "prim0009", "--subaccounts", "all")
    assert code == 0 and "changed" in text, text
    code, text = run(stack, monkeypatch, "accounts", "subaccount", "prim0009", "subcli01", "--threshold", "30")
    assert code == 0 and "threshold 30.0 EUR, transfer 20.0 EUR" in text, text
    code, text = run(stack, monkeypatch, "accounts", "show", "prim0009")
    assert code == 0 and "subaccounts (3):" in text, text
    assert re.search(r"subcli01\s+low\s+2\.00\s+30\.0\s+20\.0", text), text
    assert re.search(r"subcli02\s+shared_balance\s+shared", text), text
    code, out, _ = run_split(stack, monkeypatch, "--local", "accounts", "show", "prim0009", "--output", "json")
    shown = output.Account.model_validate_json(out)
    assert shown.subaccounts is not None and len(shown.subaccounts["subaccounts"]) == 3

    code, text = run(stack, monkeypatch, "status")
    assert "subaccounts    prim0009: 3 (1 low, 1 shared balance, 1 suspended)" in text, text
    assert "subcli01" in text and "subcli02" not in text  # the fleet's tree: only what needs a look
    code, out, _ = run_split(stack, monkeypatch, "--local", "status", "--account", "prim0009", "--output", "json")
    [node] = output.Status.model_validate_json(out).primaries or []
    assert [s.api_key for s in node.subaccounts] == ["subcli01", "subcli02", "subcli03"]

    monkeypatch.setenv(cli.API_SECRET_VARIABLE, "Sub-subcli01-Secret1")
    code, text = run(stack, monkeypatch, "accounts", "add", "subcli01", "--primary", "prim0009")
    assert code == 0, text
    code, out, err = run_split(stack, monkeypatch, "--local", "accounts", "subaccount", "prim0009", "nosuch01")
    assert code == 1 and "No such subaccount" in err and err.count("\n") == 1, err
    code, out, _ = run_split(
        stack, monkeypatch, "--local", "accounts", "subaccount", "prim0009", "subcli03", "--disable", "--output", "json"
    )
    changed = output.SubaccountChange.model_validate_json(out)
    assert code == 0 and changed.done and changed.subaccount and changed.subaccount["state"] == "not_watched"
    for key in ("subcli01", "prim0009"):
        assert run(stack, monkeypatch, "accounts", "remove", key)[0] == 0


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["accounts", "subaccount", "abcd1234"], "the following arguments are required: subaccount"),
        (["accounts", "subaccount", "abcd1234", "bbbb2222", "--transfer", "0"], "give an amount above 0"),
        (["accounts", "subaccount", "abcd1234", "bbbb2222", "--cooldown", "0"], "from 1 to 1440"),
        (["accounts", "set", "abcd1234", "--subaccounts", "some"], "argument --subaccounts: invalid choice"),
    ],
)
def test_subaccount_usage_mistakes_are_one_line_and_exit_2(argv: list[str], expected: str) -> None:
    one_error_line(process(*argv, "--local"), 2, expected)
