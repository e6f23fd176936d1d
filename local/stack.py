"""The whole system on one machine, no AWS account and no Docker.

- the Vonage simulator (one account: balance, auto-reload on, a known trx);
- moto's server on loopback, with the Vonage secret, and the tables and topic of template.yaml;
- a local API Gateway that turns HTTP requests into REST API proxy events for the settings
  handler (IAM auth replaced by a loudly logged local identity);
- a scheduler firing the balance watcher with EventBridge Scheduler-shaped events;
- Secrets Manager's rotation trigger calling the rotation handler (local/rotation_trigger.py);
- webhook receivers on loopback (200 and 404) for callback URLs.

The handlers run unchanged: only environment variables differ from a deployment.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import os
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "layers" / "shared") not in sys.path:  # the layer, as Lambda puts it on the path
    sys.path.insert(0, str(ROOT / "layers" / "shared"))

from local import aws_resources, rotation_trigger, webhooks  # noqa: E402
from local import simulator as simmod  # noqa: E402
from local.fleet_poller import FleetPoller  # noqa: E402

STATE_FILE = Path(os.environ.get("ACCOUNT_OPS_LOCAL_STATE") or ROOT / ".local-stack.json")
REGION = "eu-west-1"
ROTATION_ARN = f"arn:aws:lambda:{REGION}:000000000000:function:account-ops-secret-rotation"
LOCAL_IDENTITY = "arn:aws:iam::000000000000:user/local-developer"
FUNCTIONS = ("settings_api", "balance_watcher", "secret_rotation")
FLEET_SECRET_PREFIX = "account-ops/accounts/"  # the template's ${ServiceName}/accounts/
FLEET_BATCH_SIZE = 5  # the template's FleetAccounts event: BatchSize
PRIMARY_KEY = "prim0001"  # the local stack's primary (python -m local up --subaccounts N)


@dataclass
class StackOptions:
    api_port: int = 3000
    simulator_port: int = 8700
    moto_port: int = 5001
    webhook_port: int = 8701
    tick_seconds: float = 10.0
    balance: float = 25.0
    topup_lag: float = 5.0
    threshold: float = 10.0
    topup_cooldown_minutes: int = 1
    accounts: int = 0  # fleet accounts added at start (simulator and registry), besides the stack's own
    subaccounts: int = 0  # > 0: a primary (PRIMARY_KEY) in the fleet with this many subaccounts it funds
    fleet_concurrency: int = 5  # the event source mapping's MaximumConcurrency (template: FleetMaxConcurrency)
    state_file: Path | None = STATE_FILE
    quiet: bool = False

    @classmethod
    def on_free_ports(cls, **overrides: Any) -> StackOptions:
        """For the demo, tests and benchmarks: every server on a free port, no state file."""
        values: dict[str, Any] = {
            "api_port": 0,
            "simulator_port": 0,
            "moto_port": 0,
            "webhook_port": 0,
            "state_file": None,
            "quiet": True,
        }
        return cls(**{**values, **overrides})


def load_function(name: str) -> ModuleType:
    """Import functions/<name>/app.py as Lambda would (its folder is the code root)."""
    module_name = f"local_{name}_app"
    spec = importlib.util.spec_from_file_location(module_name, ROOT / "functions" / name / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def subaccount_key(i: int) -> str:
    return f"sub{i:05d}"


class LambdaContext:
    def __init__(self, function: str) -> None:
        self.function_name = f"account-ops-{function.replace('_', '-')}"
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = 256
        self.invoked_function_arn = f"arn:aws:lambda:{REGION}:000000000000:function:{self.function_name}"
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = "local"

    def get_remaining_time_in_millis(self) -> int:
        return 29_000


def proxy_event(method: str, raw_path: str, headers: dict[str, str], body: bytes, source_ip: str) -> dict[str, Any]:
    """A REST API (v1) proxy event, as API Gateway builds it for `ANY /{proxy+}` on stage v1."""
    url = urllib.parse.urlsplit(raw_path)
    path = url.path[3:] if url.path.startswith("/v1/") else url.path
    query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
    request_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": method,
        "headers": dict(headers),
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": {k: v[-1] for k, v in query.items()} or None,
        "multiValueQueryStringParameters": query or None,
        "pathParameters": {"proxy": path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "resourceId": "local",
            "resourcePath": "/{proxy+}",
            "httpMethod": method,
            "extendedRequestId": request_id,
            "requestTime": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "path": "/v1" + path,
            "accountId": "000000000000",
            "protocol": "HTTP/1.1",
            "stage": "v1",
            "domainPrefix": "local",
            "requestTimeEpoch": int(now.timestamp() * 1000),
            "requestId": request_id,
            "identity": {
                "accountId": "000000000000",
                "caller": "LOCAL",
                "sourceIp": source_ip,
                "userArn": LOCAL_IDENTITY,
                "user": "LOCAL",
                "userAgent": headers.get("User-Agent", ""),
                "accessKey": None,
                "cognitoIdentityPoolId": None,
                "cognitoIdentityId": None,
                "cognitoAuthenticationType": None,
                "cognitoAuthenticationProvider": None,
                "principalOrgId": None,
            },
            "domainName": "127.0.0.1",
            "apiId": "local",
        },
        **_body_fields(body),
    }


def _body_fields(body: bytes) -> dict[str, Any]:
    """Text bodies as text; anything that is not UTF-8 base64-encoded, as API Gateway passes it."""
    if not body:
        return {"body": None, "isBase64Encoded": False}
    try:
        return {"body": body.decode("utf-8"), "isBase64Encoded": False}
    except UnicodeDecodeError:
        return {"body": base64.b64encode(body).decode("ascii"), "isBase64Encoded": True}


class ApiGatewayServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: Any, log: Any) -> None:
        super().__init__(address, _ApiGatewayHandler)
        self.lambda_handler = handler
        self.log = log


class _ApiGatewayHandler(BaseHTTPRequestHandler):
    server: ApiGatewayServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body leave at once (no 40 ms delayed-ACK stalls)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def _proxy(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        event = proxy_event(self.command, self.path, dict(self.headers.items()), body, self.client_address[0])
        try:
            response = self.server.lambda_handler(event, LambdaContext("settings_api"))
        except Exception as exc:  # what API Gateway answers when the integration fails
            self.server.log(f"api: {self.command} {event['path']} -> 502 (handler raised {type(exc).__name__})")
            response = {
                "statusCode": 502,
                "headers": {"Content-Type": "application/json"},
                "body": json.dumps({"message": "Internal server error"}),
            }
        payload = (response.get("body") or "").encode()
        self.send_response(int(response["statusCode"]))
        headers = dict(response.get("headers") or {})
        for name, values in (response.get("multiValueHeaders") or {}).items():
            headers.setdefault(name, values[-1])
        for name, value in headers.items():
            if name.lower() != "content-length":
                self.send_header(name, str(value))
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        self.server.log(
            f"api: {self.command} {event['path']} as {LOCAL_IDENTITY} (local identity, no IAM) -> {response['statusCode']}"
        )

    def __getattr__(self, name: str) -> Any:
        # every method reaches the handler, which answers 405 (with Allow) for what a path does not allow
        if name.startswith("do_"):
            return self._proxy
        raise AttributeError(name)


@dataclass
class LocalStack:
    options: StackOptions = field(default_factory=StackOptions)
    env: dict[str, str] = field(default_factory=dict)
    handlers: dict[str, ModuleType] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _scheduler_thread: threading.Thread | None = None
    _cleanup: list[Any] = field(default_factory=list)
    _saved_env: dict[str, str | None] = field(default_factory=dict)
    ticks: int = 0

    def log(self, line: str) -> None:
        if not self.options.quiet:
            print(line, flush=True)

    # -- start and stop ------------------------------------------------------------------------

    def start(self) -> LocalStack:
        o = self.options
        self.sim = simmod.start(simmod.new_state(balance=o.balance, topup_lag=o.topup_lag), port=o.simulator_port)
        self._cleanup.append(self._stop_server(self.sim))
        self.hooks = webhooks.start(port=o.webhook_port)
        self._cleanup.append(self.hooks.close)

        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log of moto's server

        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=o.moto_port, verbose=False)
        self.moto.start()
        self._cleanup.append(self.moto.stop)
        host, port = self.moto.get_host_and_port()
        self.moto_url = f"http://{host}:{port}"
        # moto's backends live in this process: a new stack starts from nothing
        urllib.request.urlopen(
            urllib.request.Request(f"{self.moto_url}/moto-api/reset", method="POST"), timeout=10
        ).close()

        self._apply_env(
            {
                "AWS_ENDPOINT_URL": self.moto_url,
                "AWS_DEFAULT_REGION": REGION,
                "AWS_REGION": REGION,
                "AWS_ACCESS_KEY_ID": "local",
                "AWS_SECRET_ACCESS_KEY": "local",
                "AWS_LAMBDA_FUNCTION_NAME": "",
                "POWERTOOLS_TRACE_DISABLED": "true",
                "POWERTOOLS_METRICS_NAMESPACE": "AccountOps",
                "POWERTOOLS_SERVICE_NAME": "account-ops",
            }
        )
        import boto3

        session = boto3.Session(region_name=REGION)
        [first_id] = [s.id for s in self.sim.state.accounts[simmod.DEFAULT_API_KEY].secrets]
        secret = json.dumps(
            {
                "api_key": simmod.DEFAULT_API_KEY,
                "api_secret": simmod.DEFAULT_API_SECRET,
                "secret_id": first_id,
                "topup_trx": simmod.DEFAULT_TRX,
            }
        )
        self.resources = aws_resources.create_resources(session, secret)
        # a failed fleet message comes back after a second, not the template's six minutes
        sqs = session.client("sqs")
        for url in self.resources.queues.values():
            sqs.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": "1"})
        self._apply_env(
            {
                "VONAGE_SECRET_ARN": self.resources.secret_arn,
                "VONAGE_REST_BASE_URL": self.sim.url,
                "VONAGE_API_BASE_URL": self.sim.url,
                "UNSAFE_CALLBACK_ALLOW_HOSTS": "localhost",
                "BALANCE_THRESHOLD_EUR": str(o.threshold),
                "TOPUP_COOLDOWN_MINUTES": str(o.topup_cooldown_minutes),
                "ALERT_COOLDOWN_MINUTES": "360",
                "DAILY_TOPUP_CAP": "10",
                "DRY_RUN": "false",
                "STATE_TABLE": self.resources.tables["WatcherStateTable"],
                "HISTORY_TABLE": self.resources.tables["TopUpHistoryTable"],
                "ALERT_TOPIC_ARN": self.resources.topic_arn,
                "ACCOUNTS_TABLE": self.resources.tables["AccountsTable"],
                "ACCOUNT_SECRET_PREFIX": FLEET_SECRET_PREFIX,
                "ROTATION_FUNCTION_ARN": ROTATION_ARN,
                "ROTATION_DAYS": "30",
                "FLEET_QUEUE_URL": self.resources.queues["FleetQueue"],
            }
        )
        self.read_alerts = aws_resources.sqs_messages_of_topic(session, self.resources.topic_arn)
        from account_api import aws_clients

        aws_clients.reset()  # clients are built for this stack's endpoint
        self.handlers = {name: load_function(name) for name in FUNCTIONS}

        rotate = self.handlers["secret_rotation"].lambda_handler
        self._cleanup.append(
            rotation_trigger.install(
                {ROTATION_ARN: lambda e: rotate(e, LambdaContext("secret_rotation"))}, refuse_while_pending=True
            )
        )
        # Configure rotation like the template's RotationSchedule, without rotating now.
        session.client("secretsmanager").rotate_secret(
            SecretId=self.resources.secret_arn,
            RotationLambdaARN=ROTATION_ARN,
            RotationRules={"AutomaticallyAfterDays": 30},
            RotateImmediately=False,
        )
        rotation_trigger.clear_configuration_test(session.client("secretsmanager"), self.resources.secret_arn)

        self.api = ApiGatewayServer(("127.0.0.1", o.api_port), self.handlers["settings_api"].lambda_handler, self.log)
        threading.Thread(target=self.api.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        self._cleanup.append(self._stop_server(self.api))
        self.api_url = f"http://127.0.0.1:{self.api.server_address[1]}/v1"
        watcher = self.handlers["balance_watcher"].lambda_handler
        self.fleet_poller = FleetPoller(
            sqs,
            self.resources.queues["FleetQueue"],
            lambda event: watcher(event, LambdaContext("balance_watcher")),
            concurrency=o.fleet_concurrency,
            batch_size=FLEET_BATCH_SIZE,
        )
        for i in range(o.accounts):
            self.add_fleet_account(f"fleet{i + 1:03d}", balance=o.balance)
        if o.subaccounts:
            self.add_primary(o.subaccounts)
        self._scheduler_thread = threading.Thread(target=self._scheduler, name="scheduler", daemon=True)
        self._scheduler_thread.start()
        self._write_state()
        return self

    def add_fleet_account(
        self, api_key: str, *, balance: float, api_secret: str | None = None, settings: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """An account in the simulator, then in the fleet through the settings API's POST /accounts
        (its credentials checked, stored under the prefix, rotated), as an operator adds one."""
        secret = api_secret or f"Fleet-{api_key}-Secret1"
        simmod_request = urllib.request.Request(
            f"{self.sim.url}/_sim/accounts",
            data=json.dumps({"api_key": api_key, "api_secret": secret, "balance": balance}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        urllib.request.urlopen(simmod_request, timeout=10).close()
        body = {"api_key": api_key, "api_secret": secret, "topup_trx": simmod.DEFAULT_TRX, "settings": settings or {}}
        return self._post_account(body)

    def _post_account(self, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.api_url}/accounts",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            added: dict[str, Any] = json.loads(answer.read())
        return added

    def add_primary(self, subaccounts: int) -> None:
        """A primary in the fleet with `subaccounts` subaccounts at Vonage: each has its own balance,
        except every fourth, which shares the primary's; the first is also in the fleet, so its
        secret is rotated with the primary's credentials."""
        self.add_fleet_account(
            PRIMARY_KEY, balance=self.options.balance, settings={"name": "primary", "subaccounts": {}}
        )
        with self.sim.state.lock:
            for i in range(1, subaccounts + 1):
                simmod.add_subaccount(
                    self.sim.state,
                    PRIMARY_KEY,
                    subaccount_key(i),
                    f"Sub-{subaccount_key(i)}-Secret1",
                    balance=25.0,
                    shared=i % 4 == 0,
                    name=f"department {i}",
                )
        self._post_account({"api_key": subaccount_key(1), "api_secret": "Sub-sub00001-Secret1", "primary": PRIMARY_KEY})

    def stop(self) -> None:
        self._stop.set()
        # a tick in flight finishes before its AWS and Vonage stand-ins go away under it
        if self._scheduler_thread is not None and self._scheduler_thread is not threading.current_thread():
            self._scheduler_thread.join(timeout=60)
        for undo in reversed(self._cleanup):
            with contextlib.suppress(Exception):
                undo()
        self._cleanup.clear()
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        from account_api import aws_clients

        aws_clients.reset()
        if self.options.state_file and self.options.state_file.exists():
            self.options.state_file.unlink()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @staticmethod
    def _stop_server(server: Any) -> Any:
        def stop() -> None:
            server.shutdown()
            server.server_close()

        return stop

    def _apply_env(self, values: dict[str, str]) -> None:
        for name, value in values.items():
            self._saved_env.setdefault(name, os.environ.get(name))
            os.environ[name] = value
        self.env.update(values)

    def _write_state(self) -> None:
        if self.options.state_file:
            state = {"env": self.env, "api_url": self.api_url, "webhook_url": self.hooks.url}
            self.options.state_file.write_text(json.dumps(state, indent=2))

    # -- EventBridge Scheduler -----------------------------------------------------------------

    def tick(self, scheduled: datetime | None = None) -> dict[str, Any]:
        """One schedule firing, with the input the template's ScheduleV2 sends."""
        scheduled = scheduled or datetime.now(UTC).replace(microsecond=0)
        event = {
            "scheduledTime": scheduled.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "executionId": str(uuid.uuid4()),
            "attemptNumber": "1",
            "scheduleArn": f"arn:aws:scheduler:{REGION}:000000000000:schedule/default/account-ops-balance-watcher",
        }
        self.ticks += 1
        result: dict[str, Any] = self.handlers["balance_watcher"].lambda_handler(
            event, LambdaContext("balance_watcher")
        )
        self.log(
            f"scheduler: balance watcher at {event['scheduledTime']} -> {result['outcome']} (balance {result.get('balance')})"
        )
        if result.get("fleet_dispatched"):
            # the event source mapping: batches of the queue to the watcher, `fleet_concurrency` at once
            polled = self.fleet_poller.drain()
            result["fleet_failed"] = polled.failed
            self.log(
                f"fleet: {result['fleet_dispatched']} account messages, {polled.batches} batches, "
                f"{polled.failed} failed (retried, then the dead-letter queue)"
            )
        return result

    def _scheduler(self) -> None:
        period = self.options.tick_seconds
        while not self._stop.wait(period - (time.time() % period)):
            try:
                self.tick(datetime.fromtimestamp(round(time.time() / period) * period, UTC))
            except Exception as exc:  # an async invocation that failed: Lambda would retry; here, log
                self.log(f"scheduler: balance watcher failed: {type(exc).__name__}: {exc}")
            try:
                self.retry_rotation()
            except Exception as exc:
                self.log(f"rotation: the reattempt failed again: {type(exc).__name__}: {exc}")

    def retry_rotation(self) -> bool:
        """Reattempt a rotation that did not complete, with its token, as Secrets Manager does (until
        then RotateSecret answers "a previous rotation isn't complete": the API's 409)."""
        import boto3

        sm = boto3.client("secretsmanager", region_name=REGION)
        rotate = self.handlers["secret_rotation"].lambda_handler
        done = rotation_trigger.reattempt(
            sm, self.resources.secret_arn, lambda e: rotate(e, LambdaContext("secret_rotation"))
        )
        if done:
            self.log("rotation: a rotation that had not completed was reattempted and completed")
        return done

    # -- what runs where -----------------------------------------------------------------------

    def _subaccounts_line(self) -> str:
        if not self.options.subaccounts:
            return "none (python -m local up --subaccounts N: a primary that funds N subaccounts)"
        return (
            f"{PRIMARY_KEY} funds {self.options.subaccounts} subaccounts ({subaccount_key(1)}...); drain one with "
            f'curl -s -X POST {self.sim.url}/_sim/state -d \'{{"api_key": "{subaccount_key(1)}", "balance": 1}}\''
        )

    def banner(self) -> str:
        api = self.api_url
        return f"""
account-ops local stack
  WARNING: IAM authorisation is replaced by the fixed local identity below. Local use only.
  settings API (API Gateway)   {api}      IAM auth replaced by the local identity {LOCAL_IDENTITY}
  Vonage simulator             {self.sim.url}   control surface {self.sim.url}/_sim/state
  AWS (moto server)            {self.moto_url}   secret {self.resources.secret_arn}
  balance watcher              every {self.options.tick_seconds:g} s (threshold {self.options.threshold:g} EUR, top-up lag {self.options.topup_lag:g} s)
  fleet                        {self.options.accounts} accounts besides the stack's own, {self.options.fleet_concurrency} batches at once (python -m local up --accounts N)
  subaccounts                  {self._subaccounts_line()}
  webhook receivers            {self.hooks.url}/ok (answers 200)   {self.hooks.url}/missing (answers 404)

Try:
  curl -s {api}/settings
  curl -s {api}/balance
  curl -s -X PUT {api}/settings -H 'Content-Type: application/json' -d '{{"moCallbackUrl": "{self.hooks.url}/ok"}}'
  curl -s -X PUT {api}/settings -H 'Content-Type: application/json' -d '{{"drCallbackUrl": "{self.hooks.url}/missing"}}'
  curl -s -X PUT {api}/settings -H 'Content-Type: application/json' -d '{{"drCallbackUrl": "https://169.254.169.254/latest"}}'
  curl -s -X POST {self.sim.url}/_sim/state -d '{{"balance": 3}}'      # drain: watch one top-up
  curl -s -X POST {api}/secrets/rotate && curl -s {api}/secrets
  curl -s {api}/accounts                                              # the fleet
  curl -s {api}/accounts/{PRIMARY_KEY}/subaccounts                            # a primary's subaccounts (--subaccounts N)
  .venv/bin/python -m local invoke balance_watcher -e events/balance_watcher_scheduled.json
Ctrl-C stops everything.
"""
