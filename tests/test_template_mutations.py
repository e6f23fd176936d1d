"""The template against what the code really does, and a mutation test that proves the checks bite.

The catalogue: each function's real handler runs through scenarios that reach every metric an
alarm watches (a normal run, a refused and an unknown top-up, the placeholder, a rotation and a
failed rotation step, the API), with the environment the transformed template gives it; every EMF
blob it prints and every AWS call it makes (with the ARN it acts on) is recorded. The contract:
- every alarm watches a metric some function publishes: the same namespace, metric name and
  dimension set, with the values the template gives that function (its POWERTOOLS_SERVICE_NAME and
  POWERTOOLS_METRICS_NAMESPACE); an alarm on an AWS metric names a function, queue or API the
  stack has;
- every AWS call is allowed by the function's role, resolved as CloudFormation resolves it.
It holds for every documented deployment, each transformed with its own parameter values.

The mutation test breaks template.yaml on purpose, one line at a time (the breakages a review found
passing every test, and more of the same kinds), and requires the deploy rules or the contract to
fail for each. A check that never fails proves nothing.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from account_api import aws_clients
from local import aws_resources, rotation_trigger
from local import simulator as simmod
from local.fleet_poller import sqs_record
from local.stack import proxy_event
from tests.cfn import ACCOUNT, REGION, Deployment, Names, allowed, transformed
from tests.conftest import ROOT, LambdaContext, Sim, load_handler, vonage_secret_value
from tests.test_deploy_rules import DEPLOYMENTS, RULES

pytestmark = pytest.mark.slow

FUNCTIONS = {
    "settings_api": "SettingsApiFunction",
    "balance_watcher": "BalanceWatcherFunction",
    "secret_rotation": "SecretRotationFunction",
}
IAM_PREFIX = {"secrets-manager": "secretsmanager"}
IAM_ACTION_OF = {"sqs:SendMessageBatch": "sqs:SendMessage"}  # SQS authorises a batch as its single action
ROTATION_ARN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:rotation"
Emission = tuple[str, frozenset[str]]  # a metric name and its dimension names


class Observed:
    """What each function published (metric names with their dimension names) and called."""

    def __init__(self) -> None:
        self.emitted: dict[str, set[Emission]] = {f: set() for f in FUNCTIONS}
        self.calls: dict[str, set[tuple[str, str]]] = {f: set() for f in FUNCTIONS}
        self.known: dict[str, str] = {}


def _emissions(stdout: str) -> set[Emission]:
    found: set[Emission] = set()
    for line in stdout.splitlines():
        if '"_aws"' not in line:
            continue
        blob = json.loads(line)
        for directive in blob["_aws"]["CloudWatchMetrics"]:
            for dimensions in directive["Dimensions"]:
                for metric in directive["Metrics"]:
                    found.add((metric["Name"], frozenset(dimensions)))
    return found


def _resource_of(service: str, params: dict[str, Any]) -> str:
    if service == "dynamodb":
        return f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{params['TableName']}"
    if service == "secrets-manager":
        if "SecretId" not in params:  # CreateSecret: the ARN the new secret gets
            return f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{params['Name']}-AbCdEf"
        return str(params["SecretId"])
    if service == "sqs" and "QueueUrl" in params:
        return f"arn:aws:sqs:{REGION}:{ACCOUNT}:{params['QueueUrl'].rstrip('/').rsplit('/', 1)[-1]}"
    return str(params.get("TopicArn", "*"))


@pytest.fixture(scope="module")
def observed(moto_server: str) -> Iterator[Observed]:
    """Run every function's scenarios once, recording its EMF and its AWS calls."""
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST"), timeout=10).close()
    sim = Sim(simmod.start())
    result = Observed()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ENDPOINT_URL", moto_server)
        patch.setenv("AWS_MAX_ATTEMPTS", "1")
        aws_clients.reset()
        resources = aws_resources.create_resources(boto3.Session(), vonage_secret_value())
        result.known = {
            **resources.tables,
            **{q: q for q in resources.queues},
            "VonageSecret": resources.secret_arn,
            "AlertTopic": "AlertTopic",
        }
        names = Names(Deployment(transformed()), known=result.known)
        # the rotation function as the template names it too: the settings API gives a new fleet
        # account's secret that rotation
        undo = rotation_trigger.install(
            {ROTATION_ARN: lambda event: None, names.attribute("SecretRotationFunction", "Arn"): lambda event: None}
        )
        try:
            for function, scenarios in SCENARIOS.items():
                resource = names.d.resources[FUNCTIONS[function]]
                for name, value in names.resolve(resource["Properties"]["Environment"]["Variables"]).items():
                    patch.setenv(name, str(value))
                patch.setenv("VONAGE_REST_BASE_URL", sim.url)
                patch.setenv("VONAGE_API_BASE_URL", sim.url)
                patch.setenv("DRY_RUN", "false")
                aws_clients.reset()
                real_client = aws_clients.client
                seen = result.calls[function]

                def record(event_name: str, params: dict[str, Any], __seen: Any = seen, **kwargs: Any) -> None:
                    _, service, operation = event_name.split(".", 2)
                    action = f"{IAM_PREFIX.get(service, service)}:{operation}"
                    __seen.add((IAM_ACTION_OF.get(action, action), _resource_of(service, params)))

                watched: set[int] = set()

                def watching(service: str, __real: Any = real_client, __watched: set[int] = watched) -> Any:
                    client = __real(service)
                    if id(client) not in __watched:
                        __watched.add(id(client))
                        client.meta.events.register("before-parameter-build", record)
                    return client

                patch.setattr(aws_clients, "client", watching)
                out = io.StringIO()
                with contextlib.redirect_stdout(out):
                    scenarios(load_handler(function), sim, resources)
                result.emitted[function] = _emissions(out.getvalue())
                patch.setattr(aws_clients, "client", real_client)
        finally:
            undo()
            aws_clients.reset()
            sim.server.shutdown()
            sim.server.server_close()
    yield result


def _settings(app: Any, sim: Sim, resources: aws_resources.LocalResources) -> None:
    sim.add_account("add00001", "Added-Secret-01")
    for method, path, body in (
        ("GET", "/balance", None),
        ("PUT", "/topups", {"paused": False}),
        ("GET", "/history", None),
        ("POST", "/accounts", {"api_key": "add00001", "api_secret": "Added-Secret-01"}),
        ("GET", "/accounts/add00001/balance", None),
        ("DELETE", "/accounts/add00001", None),
    ):
        data = json.dumps(body).encode() if body else b""
        app.lambda_handler(
            proxy_event(method, "/v1" + path, {"Content-Type": "application/json"}, data, "127.0.0.1"),
            LambdaContext("settings_api"),
        )


def _watcher(app: Any, sim: Sim, resources: aws_resources.LocalResources) -> None:
    """A normal run, a refused top-up, an unknown one, then the first deploy's placeholder."""
    runs = iter(range(10))

    def tick() -> None:
        nonlocal app
        minute = next(runs) * 60  # an hour apart: past every cooldown
        app.lambda_handler({"scheduledTime": f"2026-12-01T{minute // 60:02d}:00:00Z"}, LambdaContext("watcher"))

    tick()
    sim.set(balance=1.0, payment_refused=True)
    tick()
    # the lease runs on the wall clock: free it, as the cooldown's end would
    lease = {"pk": {"S": f"lease#{simmod.DEFAULT_API_KEY}"}}
    boto3.client("dynamodb").delete_item(TableName=resources.tables["WatcherStateTable"], Key=lease)
    sim.set(payment_refused=False)
    sim.fault("topUpAccountBalance", status=500, after=True)
    tick()
    boto3.client("secretsmanager").put_secret_value(
        SecretId=resources.secret_arn, SecretString='{"api_key": "REPLACE_ME", "api_secret": "REPLACE_ME"}'
    )
    app = load_handler("balance_watcher")  # a new process: no credentials cached
    tick()
    # the fleet: a tick's messages for two registry accounts, one of them refused by Vonage
    sm, ddb, sqs = (boto3.client(s) for s in ("secretsmanager", "dynamodb", "sqs"))
    sm.put_secret_value(SecretId=resources.secret_arn, SecretString=vonage_secret_value())
    for key, secret in (("flt00001", "Fleet-Secret-01"), ("flt00002", "Wrong-Secret-02")):
        # flt00001 below the stack's critical level (BalanceCriticalEur, 2): FleetAccountsCritical
        sim.add_account(key, "Fleet-Secret-01" if key == "flt00001" else "Fleet-Secret-02", balance=1.0)
        arn = sm.create_secret(
            Name=f"account-ops/accounts/{key}", SecretString=vonage_secret_value(api_key=key, api_secret=secret)
        )["ARN"]
        ddb.put_item(
            TableName=resources.tables["AccountsTable"],
            Item={
                "api_key": {"S": key},
                "secret_arn": {"S": arn},
                "version": {"N": "1"},
                "created_at": {"S": "2026-12-01T00:00:00Z"},
                "settings": {"S": "{}"},
                "watched": {"BOOL": True},
            },
        )
    app = load_handler("balance_watcher")
    tick()
    got = sqs.receive_message(QueueUrl=resources.queues["FleetQueue"], MaxNumberOfMessages=10)["Messages"]
    records = [sqs_record(m, "arn:aws:sqs:eu-west-1:123456789012:FleetQueue", "eu-west-1") for m in got]
    app.lambda_handler({"Records": records}, LambdaContext("watcher"))


def _rotation(app: Any, sim: Sim, resources: aws_resources.LocalResources) -> None:
    """A step for a token that is no version of the secret: refused, RotationFailed published."""
    sm = boto3.client("secretsmanager")
    sm.rotate_secret(
        SecretId=resources.secret_arn, RotationLambdaARN=ROTATION_ARN, RotationRules={"AutomaticallyAfterDays": 30}
    )
    with contextlib.suppress(Exception):
        event = {"Step": "testSecret", "SecretId": resources.secret_arn, "ClientRequestToken": "no-such-version-0001"}
        app.lambda_handler(event, LambdaContext("rotation"))


SCENARIOS: dict[str, Callable[[Any, Sim, aws_resources.LocalResources], None]] = {
    "settings_api": _settings,
    "balance_watcher": _watcher,
    "secret_rotation": _rotation,
}


# -- the contract -------------------------------------------------------------------------------------


def contract(d: Deployment, seen: Observed) -> list[str]:
    names = Names(d, known=seen.known)
    return _alarms(d, names, seen) + _grants(d, names, seen)


def _metric_specs(alarm: dict[str, Any]) -> list[dict[str, Any]]:
    if "MetricName" in alarm:
        return [{k: alarm.get(k) for k in ("Namespace", "MetricName", "Dimensions")}]
    return [m["MetricStat"]["Metric"] for m in alarm.get("Metrics", []) if "MetricStat" in m]


def _alarms(d: Deployment, names: Names, seen: Observed) -> list[str]:
    problems = []
    environments = {
        function: names.resolve(d.resources[logical]["Properties"]["Environment"]["Variables"])
        for function, logical in FUNCTIONS.items()
        if logical in d.resources
    }
    stack_names = {
        "FunctionName": {names.name(n) for n in d.of_type("AWS::Lambda::Function")},
        "QueueName": {names.name(n) for n in d.of_type("AWS::SQS::Queue")},
        "ApiName": {
            str(names.resolve(r["Properties"].get("Name"))) for r in d.of_type("AWS::ApiGateway::RestApi").values()
        },
        "Stage": {
            str(names.resolve(r["Properties"].get("StageName"))) for r in d.of_type("AWS::ApiGateway::Stage").values()
        },
    }
    for alarm_name, alarm in d.of_type("AWS::CloudWatch::Alarm").items():
        for spec in _metric_specs(names.resolve(alarm["Properties"])):
            namespace, metric = spec["Namespace"], spec["MetricName"]
            dimensions = {x["Name"]: str(x["Value"]) for x in spec.get("Dimensions") or []}
            if namespace.startswith("AWS/"):
                for key, value in dimensions.items():
                    if key in stack_names and value not in stack_names[key]:
                        problems.append(
                            f"{alarm_name}: {key} {value!r} is none of the stack's {sorted(stack_names[key])}"
                        )
                continue
            publishers = [
                function
                for function, env in environments.items()
                if env.get("POWERTOOLS_METRICS_NAMESPACE") == namespace
                and (metric, frozenset(dimensions)) in seen.emitted[function]
                and dimensions.get("service", env.get("POWERTOOLS_SERVICE_NAME")) == env.get("POWERTOOLS_SERVICE_NAME")
            ]
            if not publishers:
                problems.append(f"{alarm_name} watches {namespace} {metric} {dimensions}, which no function publishes")
    return problems


def _grants(d: Deployment, names: Names, seen: Observed) -> list[str]:
    problems = []
    for function, logical in FUNCTIONS.items():
        role = d.resources[logical]["Properties"]["Role"]["Fn::GetAtt"][0]
        statements = d.role_statements(role)
        for action, recorded in sorted(seen.calls[function]):
            # the scenarios ran with the default ServiceName: a fleet secret's name follows the
            # deployment's own (its ACCOUNT_SECRET_PREFIX)
            resource = recorded.replace(":secret:account-ops/accounts/", f":secret:{d.params['ServiceName']}/accounts/")
            if not allowed(statements, names, action, resource):
                problems.append(f"{role} would deny {action} on {resource}")
    return problems


def test_the_catalogue_reaches_every_alarmed_metric(observed: Observed) -> None:
    watcher = {m for m, _ in observed.emitted["balance_watcher"]}
    assert {"BalanceEUR", "TopUpRefused", "TopUpOutcomeUnknown", "NotConfigured"} <= watcher
    assert "RotationFailed" in {m for m, _ in observed.emitted["secret_rotation"]}
    assert all(observed.calls.values())


@pytest.mark.parametrize("deployment", list(DEPLOYMENTS))
def test_every_documented_deployment_keeps_the_contract(observed: Observed, deployment: str) -> None:
    parameters = DEPLOYMENTS[deployment]
    assert contract(Deployment(transformed(parameters=parameters), parameters), observed) == []


# -- breaking the template on purpose ---------------------------------------------------------------


def _in_block(start: str, old: str, new: str) -> Callable[[str], str]:
    """Replace the first `old` after the line `start` (a resource or a statement)."""

    def mutate(text: str) -> str:
        head, found, tail = text.partition(start)
        assert found, start
        assert old in tail, (start, old)
        return head + found + tail.replace(old, new, 1)

    return mutate


MUTATIONS: dict[str, Callable[[str], str]] = {
    # the eight breakages that passed every test before
    "history grant names the table, not its ARN": _in_block(
        "Sid: ReadHistory", "Resource: !If", 'Resource: !Sub "${TopUpHistoryTable}"\n              Unused: !If'
    ),
    "critical alarm on a dimension no one publishes": _in_block(
        "BalanceCriticalAlarm:", "Value: balance-watcher", "Value: balance_watcher"
    ),
    "watcher's service name changed": _in_block(
        "BalanceWatcherFunction:", "POWERTOOLS_SERVICE_NAME: balance-watcher", "POWERTOOLS_SERVICE_NAME: watcher"
    ),
    "rotation schedule does not wait for its permission": _in_block(
        "VonageSecretRotationSchedule:", "    DependsOn: SecretRotationPermission\n", ""
    ),
    "5xx alarm on another API's name": _in_block("Api5xxAlarm:", "-settings", "-setting"),
    "secret with a fixed name": _in_block(
        "VonageSecret:", "Name: !Sub ${ServiceName}/vonage", "Name: account-ops/vonage"
    ),
    "rotation permission for the wrong action": _in_block(
        "SecretRotationPermission:", "Action: lambda:InvokeFunction", "Action: lambda:GetFunction"
    ),
    "state-table grant on its indexes only": _in_block(
        "Sid: LeaseAndRunClaims",
        "Resource: !GetAtt WatcherStateTable.Arn",
        'Resource: !Sub "${WatcherStateTable.Arn}/index/*"',
    ),
    # more of the same kinds
    "secret deleted with a failed first create's retry blocked": _in_block(
        "VonageSecret:", "DeletionPolicy: RetainExceptOnCreate", "DeletionPolicy: Retain"
    ),
    "dead-letter alarm that fires once until drained": _in_block(
        "WatcherDeadLetterAlarm:", "MetricName: NumberOfMessagesSent", "MetricName: ApproximateNumberOfMessagesVisible"
    ),
    "rotation alarm on a metric name no one publishes": _in_block(
        "RotationFailedAlarm:", "MetricName: RotationFailed", "MetricName: RotationFailures"
    ),
    "rotation permission for any source": _in_block("SecretRotationPermission:", "      SourceArn:", "      Unused:"),
    "trx secret parameter takes a partial ARN": _in_block("TopUpTrxSecretArn:", "+-[A-Za-z0-9]{6}$", "+$"),
    "switch changes not allowed into the history": _in_block(
        "Sid: AuditSwitchChanges", "Action: [dynamodb:PutItem]", "Action: [dynamodb:GetItem]"
    ),
    "watcher alarm in a namespace shared by every stack": _in_block(
        "TopUpNeedsAttentionAlarm:", "Namespace: !Sub AccountOps/${AWS::StackName}", "Namespace: AccountOps"
    ),
    # the fleet
    "fleet registry deleted with the stack": _in_block(
        "  AccountsTable:", "DeletionPolicy: RetainExceptOnCreate", "DeletionPolicy: Delete"
    ),
    "fleet secrets read under another prefix": _in_block(
        "Sid: FleetAccountCredentials", "${ServiceName}/accounts/*", "${ServiceName}/account/*"
    ),
    "fleet queue's visibility under six watcher timeouts": _in_block(
        "FleetQueue:", "VisibilityTimeout: 360", "VisibilityTimeout: 60"
    ),
    "fleet batches without partial failures": _in_block(
        "FleetEventSource:", "      FunctionResponseTypes: [ReportBatchItemFailures]\n", ""
    ),
    "fleet dead-letter alarm that never fires": _in_block(
        "FleetAccountNotEvaluatedAlarm:",
        "MetricName: ApproximateNumberOfMessagesVisible",
        "MetricName: NumberOfMessagesSent",
    ),
    "fleet critical alarm on a metric no one publishes": _in_block(
        "FleetAccountCriticalAlarm:", "MetricName: FleetAccountsCritical", "MetricName: FleetAccountCritical"
    ),
    "fleet failures alarm on a metric no one publishes": _in_block(
        "FleetAccountsFailingAlarm:", "MetricName: FleetAccountsFailed", "MetricName: FleetAccountFailures"
    ),
    "fleet secrets' rotation invocable for the stack's secret only": _in_block(
        "FleetSecretRotationPermission:",
        "SourceArn: !Sub arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:${ServiceName}/accounts/*",
        "SourceArn: !Ref VonageSecret",
    ),
    "dispatcher may send to the watcher's dead-letter queue only": _in_block(
        "Sid: FleetDispatch", "Resource: !GetAtt FleetQueue.Arn", "Resource: !GetAtt WatcherDeadLetterQueue.Arn"
    ),
    "settings API creates fleet secrets outside its prefix grant": _in_block(
        "SettingsApiFunction:",
        "ACCOUNT_SECRET_PREFIX: !Sub ${ServiceName}/accounts/",
        "ACCOUNT_SECRET_PREFIX: !Sub ${ServiceName}/fleet/",
    ),
    "alert topic publish grant on another topic": _in_block(
        "BalanceWatcherFunction:",
        "Resource: !Ref AlertTopic",
        'Resource: !Sub "arn:aws:sns:${AWS::Region}:${AWS::AccountId}:alerts"',
    ),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_each_breakage_of_the_template_is_caught(observed: Observed, mutation: str, tmp_path: Path) -> None:
    original = (ROOT / "template.yaml").read_text()
    broken = MUTATIONS[mutation](original)
    assert broken != original, "the mutation no longer applies: update it with the template"
    path = tmp_path / "template.yaml"
    path.write_text(broken)
    # prod: every resource exists there (the rotation schedule too); one transform per mutant
    parameters = DEPLOYMENTS["samconfig prod"]
    d = Deployment(transformed(path, parameters), parameters)
    caught = [problem for rule in RULES for problem in rule(d)] + contract(d, observed)
    assert caught, f"nothing caught: {mutation}"
