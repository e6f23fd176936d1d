"""Least privilege, proven by running: each function's real handler, under its own role as the
transformed template defines it, through its scenarios, against moto's server enforcing IAM.

1. Everything each function does is allowed by its role.
2. Dropping any one granted action makes some scenario fail: no grant is unneeded.

moto checks actions, not resource ARNs or conditions: for the run, every statement's Resource
becomes "*" and conditions are dropped. So every AWS call the handlers make is recorded with the
ARN it acts on, and judged against the role's statements with their Resources resolved as
CloudFormation would resolve them (tests/cfn.py, Names): a grant on a table name instead of its
ARN, on an index instead of the table, or on the wrong resource fails. Each function also runs
with the environment the transformed template gives it, not one written for the test. Lambda,
Scheduler and SQS-destination grants are used by AWS services, not by our code (and moto cannot
check them): they are checked statically.
"""

from __future__ import annotations

import itertools
import json
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import boto3
import pytest

from account_api import aws_clients
from local import aws_resources, rotation_trigger, webhooks
from local.stack import proxy_event
from tests.cfn import ACCOUNT as CFN_ACCOUNT
from tests.cfn import REGION, Deployment, Names, actions, allowed, refs, transformed
from tests.conftest import LambdaContext, Sim, load_handler, vonage_secret_value

pytestmark = pytest.mark.slow

ACCOUNT = "123456789012"
ROTATION_ARN = f"arn:aws:lambda:eu-west-1:{ACCOUNT}:function:rotation"
ROLES = {
    "settings_api": "SettingsApiFunctionRole",
    "balance_watcher": "BalanceWatcherFunctionRole",
    "secret_rotation": "SecretRotationFunctionRole",
}
ENFORCED = ("secretsmanager:", "dynamodb:", "sns:")  # services whose calls moto authorises
FUNCTIONS = {
    "settings_api": "SettingsApiFunction",
    "balance_watcher": "BalanceWatcherFunction",
    "secret_rotation": "SecretRotationFunction",
}
IAM_PREFIX = {"secrets-manager": "secretsmanager", "dynamodb": "dynamodb", "sns": "sns", "sqs": "sqs"}
# What the tests point at the simulator, the webhook receivers and moto: nothing else is overridden.
TEST_ONLY = ("VONAGE_REST_BASE_URL", "VONAGE_API_BASE_URL", "UNSAFE_CALLBACK_ALLOW_HOSTS", "AWS_ENDPOINT_URL")
_runs = itertools.count(1)


class Calls:
    """Every AWS call the handlers make, as (IAM action, the ARN it acts on), from botocore's
    before-parameter-build event on the layer's shared clients."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def watch(self, client: Any) -> Any:
        client.meta.events.register("before-parameter-build", self._record)
        return client

    def _record(self, event_name: str, params: dict[str, Any], **kwargs: Any) -> None:
        _, service, operation = event_name.split(".", 2)
        action = f"{IAM_PREFIX.get(service, service)}:{operation}"
        self.seen.append((action, _resource_of(service, params)))


def _resource_of(service: str, params: dict[str, Any]) -> str:
    if service == "dynamodb":
        arn = f"arn:aws:dynamodb:{REGION}:{CFN_ACCOUNT}:table/{params['TableName']}"
        return arn + (f"/index/{params['IndexName']}" if "IndexName" in params else "")
    if service == "secrets-manager":
        return str(params["SecretId"])
    if service == "sns":
        return str(params.get("TopicArn", "*"))
    return "*"


def moto_policy(statements: list[dict[str, Any]], without: str | None = None) -> str:
    """The role's statements as moto can enforce them: actions kept (less `without`), any resource."""
    kept = []
    for statement in statements:
        names = [a for a in actions(statement) if a.startswith(ENFORCED) and a != without]
        if names:
            kept.append({"Effect": "Allow", "Action": names, "Resource": "*"})
    return json.dumps(
        {"Version": "2012-10-17", "Statement": kept or [{"Effect": "Deny", "Action": "*", "Resource": "*"}]}
    )


def set_auth(moto_server: str, count: str) -> None:
    request = urllib.request.Request(
        f"{moto_server}/moto-api/reset-auth", data=count.encode(), method="POST", headers={"Content-Type": "text/plain"}
    )
    urllib.request.urlopen(request, timeout=10).close()


class World:
    """The stack's AWS resources in moto, an administrator, and the three roles."""

    def __init__(self, moto_server: str, sim: Sim, hooks: webhooks.WebhookServer) -> None:
        self.url, self.sim, self.hooks = moto_server, sim, hooks
        self.deployment = Deployment(transformed())
        bootstrap = boto3.Session(region_name="eu-west-1", aws_access_key_id="boot", aws_secret_access_key="boot")
        iam = bootstrap.client("iam", endpoint_url=moto_server)
        iam.create_user(UserName="admin")
        everything = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=json.dumps(everything))
        key = iam.create_access_key(UserName="admin")["AccessKey"]
        self.admin = boto3.Session(
            region_name="eu-west-1", aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"]
        )
        [first_id] = sim.account()["secret_ids"]
        self.resources = aws_resources.create_resources(bootstrap, vonage_secret_value(secret_id=first_id))
        self.read_alerts = aws_resources.sqs_messages_of_topic(self.admin, self.resources.topic_arn)
        trust = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}],
        }
        for role in ROLES.values():
            iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(trust))
            self.grant(role)
        self.sm = self.admin.client("secretsmanager")
        self.sm.rotate_secret(  # configure rotation (the trigger is a no-op: steps are run by the tests)
            SecretId=self.resources.secret_arn,
            RotationLambdaARN=ROTATION_ARN,
            RotationRules={"AutomaticallyAfterDays": 30},
            RotateImmediately=False,
        )
        # the names moto gave the template's resources: every reference resolves to these
        known = {**self.resources.tables, "VonageSecret": self.resources.secret_arn, "AlertTopic": "AlertTopic"}
        self.names = Names(self.deployment, known=known)
        self.test_only = {
            "VONAGE_REST_BASE_URL": sim.url,
            "VONAGE_API_BASE_URL": sim.url,
            "UNSAFE_CALLBACK_ALLOW_HOSTS": "localhost",
            "AWS_ENDPOINT_URL": moto_server,
        }
        self.calls = Calls()
        self.failures: list[Any] = []

    def env(self, function: str) -> dict[str, str]:
        """The function's environment as the transformed template sets it, plus the test's endpoints.
        DRY_RUN is the operator's go-live switch: the scenarios run live."""
        resource = self.deployment.resources[FUNCTIONS[function]]
        variables = self.names.resolve(resource["Properties"]["Environment"]["Variables"])
        return {**{k: str(v) for k, v in variables.items()}, "DRY_RUN": "false", **self.test_only}

    def statements(self, role: str) -> list[dict[str, Any]]:
        return self.deployment.role_statements(role)

    def grant(self, role: str, without: str | None = None) -> None:
        iam = self.admin.client("iam", endpoint_url=self.url)
        iam.put_role_policy(
            RoleName=role, PolicyName="policy", PolicyDocument=moto_policy(self.statements(role), without)
        )

    def assume(self, role: str) -> dict[str, str]:
        creds = self.admin.client("sts", endpoint_url=self.url).assume_role(
            RoleArn=f"arn:aws:iam::{ACCOUNT}:role/{role}", RoleSessionName="least-privilege"
        )["Credentials"]
        return {
            "AWS_ACCESS_KEY_ID": creds["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": creds["SecretAccessKey"],
            "AWS_SESSION_TOKEN": creds["SessionToken"],
        }


@pytest.fixture
def world(
    aws: None, moto_server: str, sim: Sim, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str], tuple[World, Callable[[], ModuleType]]]]:
    hooks = webhooks.start()
    undo = rotation_trigger.install({ROTATION_ARN: lambda event: None})
    built = World(moto_server, sim, hooks)
    set_auth(moto_server, "0")  # from here on, every AWS call is authorised by its caller's policy

    real_client = aws_clients.client
    watched: set[int] = set()

    def watch_once(service: str) -> Any:
        client = real_client(service)
        if id(client) not in watched:
            watched.add(id(client))
            built.calls.watch(client)
        return client

    monkeypatch.setattr(aws_clients, "client", watch_once)

    def as_function(function: str) -> tuple[World, Callable[[], ModuleType]]:
        for name, value in {**built.env(function), **built.assume(ROLES[function])}.items():
            monkeypatch.setenv(name, value)

        def cold_start() -> ModuleType:  # a fresh process: no credentials cached from an earlier run
            aws_clients.reset()
            watched.clear()
            return load_handler(function)

        return built, cold_start

    try:
        yield as_function
    finally:
        set_auth(moto_server, "inf")
        aws_clients.reset()
        undo()
        hooks.close()


# -- each function's scenarios: True when everything it had to do worked ---------------------------


def api(method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else b""
    return proxy_event(method, "/v1" + path, {"Content-Type": "application/json"}, data, "127.0.0.1")


def settings_scenarios(world: World, cold_start: Callable[[], ModuleType]) -> bool:
    app = cold_start()
    if rotation_trigger.pending_token(world.sm, world.resources.secret_arn):
        # a rotation left pending by the last "rotate now": cancel it, as an operator would
        world.sm.cancel_rotate_secret(SecretId=world.resources.secret_arn)
    [secret_id] = world.sim.account()["secret_ids"][:1]
    requests = [
        api("GET", "/settings"),
        api("GET", "/balance"),
        api("GET", "/secrets"),
        api("GET", f"/secrets/{secret_id}"),
        api("PUT", "/settings", {"moCallbackUrl": f"{world.hooks.url}/ok"}),
        api("POST", "/senders", {"value": "ops@example.com"}),
        api("GET", "/rotation"),
        api("GET", "/topups"),
        api("PUT", "/topups", {"paused": False, "reason": "least privilege"}),
        api("GET", "/history"),
        api("POST", "/secrets/rotate"),
    ]
    answers = [app.lambda_handler(event, LambdaContext("settings_api")) for event in requests]
    failed = [
        (e["httpMethod"], e["path"], a["statusCode"], a["body"][:200])
        for e, a in zip(requests, answers, strict=True)
        if not 200 <= a["statusCode"] < 300
    ]
    world.failures = failed
    return not failed


def watcher_scenarios(world: World, cold_start: Callable[[], ModuleType]) -> bool:
    app = cold_start()
    ddb = world.admin.client("dynamodb")
    ddb.delete_item(
        TableName=world.resources.tables["WatcherStateTable"], Key={"pk": {"S": "lease#abcd1234"}}
    )  # a free lease
    outcomes = []
    # a normal run; low, with one top-up and its alert; low with auto-reload off, which opens an
    # episode; recovered, which ends it
    for balance, auto_reload in ((25.0, True), (3.0, True), (3.0, False), (25.0, True)):
        world.sim.set(balance=balance, auto_reload=auto_reload)
        when = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=5 * next(_runs))  # a new run each time
        event = {"scheduledTime": when.strftime("%Y-%m-%dT%H:%M:%SZ"), "executionId": "least-privilege"}
        try:
            outcomes.append(app.lambda_handler(event, LambdaContext("balance_watcher"))["outcome"])
        except Exception:
            return False
    subjects = [a["subject"] for a in world.read_alerts()]
    return (
        outcomes == ["ok", "topup_succeeded", "low_alerted", "ok"]
        and any("top-up sent" in s for s in subjects)
        and "Vonage balance recovered" in subjects
    )


def rotation_scenarios(world: World, cold_start: Callable[[], ModuleType]) -> bool:
    app = cold_start()
    arn = world.resources.secret_arn
    if rotation_trigger.pending_token(world.sm, arn):
        world.sm.cancel_rotate_secret(SecretId=arn)
    world.sm.rotate_secret(SecretId=arn, RotationLambdaARN=ROTATION_ARN, RotationRules={"AutomaticallyAfterDays": 30})
    token = rotation_trigger.pending_token(world.sm, arn)
    before = world.sm.get_secret_value(SecretId=arn, VersionStage="AWSCURRENT")["VersionId"]
    try:
        for step in rotation_trigger.STEPS:
            app.lambda_handler({"Step": step, "SecretId": arn, "ClientRequestToken": token}, LambdaContext("rotation"))
    except Exception:
        return False
    return world.sm.get_secret_value(SecretId=arn, VersionStage="AWSCURRENT")["VersionId"] == token != before


SCENARIOS = {
    "settings_api": settings_scenarios,
    "balance_watcher": watcher_scenarios,
    "secret_rotation": rotation_scenarios,
}


@pytest.mark.parametrize("function", list(ROLES))
def test_each_function_runs_under_its_role_and_needs_every_grant(
    world: Callable[[str], tuple[World, Callable[[], ModuleType]]], function: str
) -> None:
    built, cold_start = world(function)
    role, scenarios = ROLES[function], SCENARIOS[function]
    assert scenarios(built, cold_start), f"{function} cannot do its job under {role}: {built.failures}"
    # every call, by its ARN, against the statements as CloudFormation resolves them
    statements = built.statements(role)
    denied = sorted({(a, r) for a, r in built.calls.seen if not allowed(statements, built.names, a, r)})
    assert built.calls.seen and denied == [], f"{role} would deny on AWS: {denied}"
    granted = sorted({a for s in built.statements(role) for a in actions(s) if a.startswith(ENFORCED)})
    assert granted, role
    unneeded = []
    for action in granted:
        built.grant(role, without=action)
        try:
            if scenarios(built, cold_start):
                unneeded.append(action)
        finally:
            built.grant(role)
    assert unneeded == [], f"{role} grants actions no scenario needs"


# -- what moto cannot check: resources, conditions, and the grants AWS services use -----------------


def test_every_statement_names_its_intended_resource() -> None:
    d = Deployment(transformed())

    def resources_of(role: str) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for statement in d.role_statements(role):
            for action in actions(statement):
                found.setdefault(action, set()).update(refs(statement["Resource"]))
        return found

    assert resources_of("SettingsApiFunctionRole") == {
        "secretsmanager:GetSecretValue": {"VonageSecret"},
        "secretsmanager:DescribeSecret": {"VonageSecret"},
        "secretsmanager:RotateSecret": {"VonageSecret"},
        "lambda:InvokeFunction": {"SecretRotationFunction"},
        "dynamodb:GetItem": {"WatcherStateTable"},
        "dynamodb:PutItem": {"WatcherStateTable", "TopUpHistoryTable"},
        "dynamodb:Query": {"TopUpHistoryTable"},
    }
    watcher = resources_of("BalanceWatcherFunctionRole")
    assert watcher["secretsmanager:GetSecretValue"] == {"VonageSecret"}
    for action in ("dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"):
        assert watcher[action] == {"WatcherStateTable"}, action
    assert watcher["dynamodb:PutItem"] == {"WatcherStateTable", "TopUpHistoryTable"}
    assert watcher["sns:Publish"] == {"AlertTopic"}
    assert watcher["sqs:SendMessage"] == {"WatcherDeadLetterQueue"}  # Lambda's on-failure destination
    rotation = resources_of("SecretRotationFunctionRole")
    assert set(rotation) == {
        "secretsmanager:DescribeSecret",
        "secretsmanager:GetSecretValue",
        "secretsmanager:PutSecretValue",
        "secretsmanager:UpdateSecretVersionStage",
        "secretsmanager:TagResource",
        "secretsmanager:UntagResource",
    }
    assert all(r == {"VonageSecret"} for r in rotation.values())
    [tagging] = [
        s for s in d.role_statements("SecretRotationFunctionRole") if "secretsmanager:TagResource" in actions(s)
    ]
    assert tagging["Condition"] == {"ForAllValues:StringEquals": {"aws:TagKeys": ["account-ops:rotation-intent"]}}


def test_with_a_separate_trx_secret_the_watcher_may_read_that_one_too() -> None:
    arn = f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:trx-AbCdEf"
    d = Deployment(transformed(), {"TopUpTrxSecretArn": arn})
    [read] = [
        s for s in d.role_statements("BalanceWatcherFunctionRole") if "secretsmanager:GetSecretValue" in actions(s)
    ]
    assert read["Resource"] == [{"Ref": "VonageSecret"}, arn]


def test_the_grants_aws_services_use_name_one_function_each() -> None:
    d = Deployment(transformed())
    [scheduler_role] = [
        r
        for r in d.of_type("AWS::IAM::Role").values()
        if "scheduler.amazonaws.com" in json.dumps(r["Properties"]["AssumeRolePolicyDocument"])
    ]
    grants = {
        tuple(actions(s)): refs(s["Resource"])
        for p in scheduler_role["Properties"]["Policies"]
        for s in p["PolicyDocument"]["Statement"]
    }
    assert grants == {
        ("lambda:InvokeFunction",): {"BalanceWatcherFunction"},
        ("sqs:SendMessage",): {"WatcherDeadLetterQueue"},
    }
    permission = d.resources["SecretRotationPermission"]["Properties"]
    assert permission["Principal"] == "secretsmanager.amazonaws.com"
    assert refs(permission["FunctionName"]) == {"SecretRotationFunction"}
    assert permission["SourceAccount"] == {"Ref": "AWS::AccountId"}
