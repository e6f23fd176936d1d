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

import contextlib
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
from local.fleet_poller import sqs_record
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
ENFORCED = ("secretsmanager:", "dynamodb:", "sns:", "sqs:SendMessage")  # calls moto authorises (of ours)
# SQS authorises a batch call as its single action (there is no sqs:SendMessageBatch in IAM); moto
# asks for the batch action's own name, so the policy moto enforces grants it beside the single one.
IAM_ACTION_OF = {"sqs:SendMessageBatch": "sqs:SendMessage"}
FLEET_KEY, FLEET_SECRET = "flt00001", "Fleet-Secret-01"  # a primary: it funds its subaccounts
SUB_KEY, SUB_SECRET = "sub00001", "Sub-Secret-0001"  # its subaccount in the fleet, rotated with its credentials
ADDED_KEY, ADDED_SECRET = "add00001", "Added-Secret-01"
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
        self.seen.append((IAM_ACTION_OF.get(action, action), _resource_of(service, params)))


def _resource_of(service: str, params: dict[str, Any]) -> str:
    if service == "dynamodb":
        arn = f"arn:aws:dynamodb:{REGION}:{CFN_ACCOUNT}:table/{params['TableName']}"
        return arn + (f"/index/{params['IndexName']}" if "IndexName" in params else "")
    if service == "secrets-manager":
        if "SecretId" not in params:  # CreateSecret: the ARN the new secret gets
            return f"arn:aws:secretsmanager:{REGION}:{CFN_ACCOUNT}:secret:{params['Name']}-AbCdEf"
        return str(params["SecretId"])
    if service == "sns":
        return str(params.get("TopicArn", "*"))
    if service == "sqs" and "QueueUrl" in params:  # https://sqs.<region>.amazonaws.com/<account>/<name>
        return f"arn:aws:sqs:{REGION}:{CFN_ACCOUNT}:{params['QueueUrl'].rstrip('/').rsplit('/', 1)[-1]}"
    return "*"


def moto_policy(statements: list[dict[str, Any]], without: str | None = None) -> str:
    """The role's statements as moto can enforce them: actions kept (less `without`), any resource."""
    kept = []
    for statement in statements:
        names = [a for a in actions(statement) if a.startswith(ENFORCED) and a != without]
        names += [batch for batch, single in IAM_ACTION_OF.items() if single in names]
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
        known = {
            **self.resources.tables,
            **{q: q for q in self.resources.queues},
            "VonageSecret": self.resources.secret_arn,
            "AlertTopic": "AlertTopic",
        }
        self.names = Names(self.deployment, known=known)
        # the rotation function as the template names it (the settings API gives new fleet secrets
        # its rotation); Secrets Manager's invocations of it are no-ops, as above
        self.rotation_function_arn = self.names.attribute("SecretRotationFunction", "Arn")
        self.undo_trigger = rotation_trigger.install({self.rotation_function_arn: lambda event: None})
        # one fleet account, in the simulator and in the registry, with its secret under the prefix
        sim.add_account(FLEET_KEY, FLEET_SECRET, balance=500.0)  # covers its transfers
        self.fleet_secret_arn = bootstrap.client("secretsmanager").create_secret(
            Name=f"account-ops/accounts/{FLEET_KEY}",
            SecretString=vonage_secret_value(api_key=FLEET_KEY, api_secret=FLEET_SECRET, topup_trx="fleet-trx"),
        )["ARN"]

        def register(api_key: str, secret_arn: str, settings: str, **more: dict[str, Any]) -> None:
            """A registry item as the settings API writes it."""
            bootstrap.client("dynamodb").put_item(
                TableName=self.resources.tables["AccountsTable"],
                Item={
                    "api_key": {"S": api_key},
                    "secret_arn": {"S": secret_arn},
                    "version": {"N": "1"},
                    "created_at": {"S": "2026-12-01T00:00:00Z"},
                    "settings": {"S": settings},
                    **more,
                },
            )

        register(FLEET_KEY, self.fleet_secret_arn, '{"name": "fleet", "subaccounts": {}}', watched={"BOOL": True})
        # its subaccount, with a secret of its own that names the primary's (as POST /accounts stores it)
        sim.control(
            "POST",
            "/_sim/subaccounts",
            {"api_key": SUB_KEY, "api_secret": SUB_SECRET, "parent": FLEET_KEY, "balance": 25.0},
        )
        self.sub_secret_arn = bootstrap.client("secretsmanager").create_secret(
            Name=f"account-ops/accounts/{SUB_KEY}",
            SecretString=json.dumps(
                {"api_key": SUB_KEY, "api_secret": SUB_SECRET, "primary_secret_arn": self.fleet_secret_arn}
            ),
        )["ARN"]
        register(
            SUB_KEY, self.sub_secret_arn, '{"name": "subaccount"}', watched={"BOOL": False}, primary={"S": FLEET_KEY}
        )
        # an account the settings API adds and removes (the simulator knows it)
        sim.add_account(ADDED_KEY, ADDED_SECRET, balance=30.0)
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
        built.undo_trigger()
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
    # a run that failed half-way may have left the added account in the fleet: each run adds it anew
    # (its secret exists from the second run on, scheduled for deletion: the add restores it)
    world.admin.client("dynamodb").delete_item(
        TableName=world.resources.tables["AccountsTable"], Key={"api_key": {"S": ADDED_KEY}}
    )
    with contextlib.suppress(Exception):  # as the last complete run left it: scheduled for deletion
        world.sm.delete_secret(SecretId=f"account-ops/accounts/{ADDED_KEY}", RecoveryWindowInDays=30)
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
        # the fleet: an account added (its credentials checked, stored, given rotation), read,
        # changed and removed (its secret scheduled for deletion); the next run adds it back
        api("POST", "/accounts", {"api_key": ADDED_KEY, "api_secret": ADDED_SECRET}),
        api("GET", "/accounts"),
        api("GET", f"/accounts/{ADDED_KEY}"),
        api("PUT", f"/accounts/{ADDED_KEY}", {"settings": {"name": "least privilege"}}),
        api("GET", f"/accounts/{ADDED_KEY}/balance"),
        api("GET", f"/accounts/{ADDED_KEY}/rotation"),
        api("GET", f"/accounts/{ADDED_KEY}/history"),
        api("DELETE", f"/accounts/{ADDED_KEY}"),
        # a primary's subaccounts: listed with their last transfers, one read and one configured
        api("GET", f"/accounts/{FLEET_KEY}/subaccounts"),
        api("GET", f"/accounts/{FLEET_KEY}/subaccounts/{SUB_KEY}"),
        api("PUT", f"/accounts/{FLEET_KEY}/subaccounts/{SUB_KEY}", {"settings": {"threshold_eur": 4.0}}),
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
    sqs = world.admin.client("sqs", endpoint_url=world.url)
    queue = world.resources.queues["FleetQueue"]
    while left := sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", []):
        for m in left:  # what a run that failed half-way left behind (PurgeQueue: once a minute)
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
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
        except Exception as exc:
            world.failures = [repr(exc)]
            return False
    subjects = [a["subject"] for a in world.read_alerts()]
    # the fleet account is a primary: a new subaccount of it, low, is funded by one of the ticks below
    low = f"low{next(_runs):05d}"
    world.sim.control(
        "POST", "/_sim/subaccounts", {"api_key": low, "api_secret": "Low-Secret-1", "parent": FLEET_KEY, "balance": 1.0}
    )
    # each tick sent the fleet account's message; the event source mapping hands them over
    got = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
    records = [sqs_record(m, f"arn:aws:sqs:{REGION}:{ACCOUNT}:FleetQueue", REGION) for m in got]
    try:
        answer = app.lambda_handler({"Records": records}, LambdaContext("balance_watcher")) if records else None
    except Exception as exc:
        world.failures = [repr(exc)]
        return False
    for m in got:
        sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
    transfers = [t for t in world.sim.public_state()["transfers"] if t["to"] == low]
    world.failures = [
        outcomes,
        len(records),
        answer,
        len(world.sim.requests("getAccountBalance", api_key=FLEET_KEY)),
        f"{len(transfers)} transfer(s) to {low}",
    ]
    return (
        len(transfers) == 1
        and outcomes == ["ok", "topup_succeeded", "low_alerted", "ok"]
        and any("top-up sent" in s for s in subjects)
        and "Vonage balance recovered" in subjects
        and len(records) == 4  # one per tick
        and answer == {"batchItemFailures": []}
        and len(world.sim.requests("getAccountBalance", api_key=FLEET_KEY)) >= 1
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
    if world.sm.get_secret_value(SecretId=arn, VersionStage="AWSCURRENT")["VersionId"] != token or token == before:
        return False
    # and a fleet account's secret, created at run time under the stack's prefix
    fleet = world.fleet_secret_arn
    if rotation_trigger.pending_token(world.sm, fleet):
        world.sm.cancel_rotate_secret(SecretId=fleet)
    world.sm.rotate_secret(SecretId=fleet, RotationLambdaARN=ROTATION_ARN, RotationRules={"AutomaticallyAfterDays": 30})
    token = rotation_trigger.pending_token(world.sm, fleet)
    try:
        for step in rotation_trigger.STEPS:
            app.lambda_handler(
                {"Step": step, "SecretId": fleet, "ClientRequestToken": token}, LambdaContext("rotation")
            )
    except Exception:
        return False
    if world.sm.get_secret_value(SecretId=fleet, VersionStage="AWSCURRENT")["VersionId"] != token:
        return False
    # and a subaccount's, rotated with its primary's credentials (read from the primary's secret)
    sub = world.sub_secret_arn
    if rotation_trigger.pending_token(world.sm, sub):
        world.sm.cancel_rotate_secret(SecretId=sub)
    world.sm.rotate_secret(SecretId=sub, RotationLambdaARN=ROTATION_ARN, RotationRules={"AutomaticallyAfterDays": 30})
    token = rotation_trigger.pending_token(world.sm, sub)
    try:
        for step in rotation_trigger.STEPS:
            app.lambda_handler({"Step": step, "SecretId": sub, "ClientRequestToken": token}, LambdaContext("rotation"))
    except Exception:
        return False
    return world.sm.get_secret_value(SecretId=sub, VersionStage="AWSCURRENT")["VersionId"] == token


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

    # the fleet's secrets, created at run time: only under this stack's own prefix, "${ServiceName}/accounts/*"
    names = Names(d)
    prefix = f"arn:aws:secretsmanager:{REGION}:{CFN_ACCOUNT}:secret:account-ops/accounts/*"
    fleet = {"AWS", "ServiceName"}  # what refs() finds in that !Sub
    for role in ROLES.values():
        for statement in d.role_statements(role):
            targets = names.resolve(statement["Resource"])
            for target in targets if isinstance(targets, list) else [targets]:
                if "accounts/" in str(target):
                    assert target == prefix, (role, target)

    assert resources_of("SettingsApiFunctionRole") == {
        "secretsmanager:GetSecretValue": {"VonageSecret"} | fleet,
        "secretsmanager:DescribeSecret": {"VonageSecret"} | fleet,
        "secretsmanager:RotateSecret": {"VonageSecret"} | fleet,
        "secretsmanager:CreateSecret": fleet,
        "secretsmanager:PutSecretValue": fleet,
        "secretsmanager:RestoreSecret": fleet,
        "secretsmanager:DeleteSecret": fleet,
        "lambda:InvokeFunction": {"SecretRotationFunction"},
        "dynamodb:GetItem": {"WatcherStateTable", "AccountsTable"},
        "dynamodb:PutItem": {"WatcherStateTable", "TopUpHistoryTable", "AccountsTable"},
        "dynamodb:Scan": {"AccountsTable"},
        "dynamodb:Query": {"TopUpHistoryTable"},
    }
    watcher = resources_of("BalanceWatcherFunctionRole")
    assert watcher["secretsmanager:GetSecretValue"] == {"VonageSecret"} | fleet
    for action in ("dynamodb:UpdateItem", "dynamodb:DeleteItem"):
        assert watcher[action] == {"WatcherStateTable"}, action
    assert watcher["dynamodb:GetItem"] == {"WatcherStateTable", "AccountsTable"}
    assert watcher["dynamodb:Scan"] == {"AccountsTable"}
    assert watcher["dynamodb:PutItem"] == {"WatcherStateTable", "TopUpHistoryTable"}
    assert watcher["sns:Publish"] == {"AlertTopic"}
    # Lambda's on-failure destination, and the fleet's messages
    assert watcher["sqs:SendMessage"] == {"WatcherDeadLetterQueue", "FleetQueue"}
    # the SQS event source mapping's grants, on the fleet queue alone (not SAM's managed policy on every queue)
    for action in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes"):
        assert watcher[action] == {"FleetQueue"}, action
    rotation = resources_of("SecretRotationFunctionRole")
    assert set(rotation) == {
        "secretsmanager:DescribeSecret",
        "secretsmanager:GetSecretValue",
        "secretsmanager:PutSecretValue",
        "secretsmanager:UpdateSecretVersionStage",
        "secretsmanager:TagResource",
        "secretsmanager:UntagResource",
    }
    assert all(r == {"VonageSecret"} | fleet for r in rotation.values())
    [tagging] = [
        s for s in d.role_statements("SecretRotationFunctionRole") if "secretsmanager:TagResource" in actions(s)
    ]
    assert tagging["Condition"] == {"ForAllValues:StringEquals": {"aws:TagKeys": ["account-ops:rotation-intent"]}}


def test_with_a_separate_trx_secret_the_watcher_may_read_that_one_too() -> None:
    arn = f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:trx-AbCdEf"
    d = Deployment(transformed(), {"TopUpTrxSecretArn": arn})
    [read] = [s for s in d.role_statements("BalanceWatcherFunctionRole") if s.get("Sid") == "ReadVonageCredentials"]
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
