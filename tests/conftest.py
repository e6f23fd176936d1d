"""Shared fixtures: the Vonage simulator over loopback, moto for AWS, and a guard that refuses every
connection to an address that is not loopback, so no test can send a packet off this machine."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Lambda-like environment for everything imported by the tests.
os.environ.setdefault("AWS_DEFAULT_REGION", "eu-west-1")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "1")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "AccountOps")
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "account-ops")
os.environ.pop("AWS_ENDPOINT_URL", None)
# A test's boto3 call that fails on purpose (a rotation with an injected fault) must not be re-sent.
os.environ["AWS_MAX_ATTEMPTS"] = "1"
# The tests' own boto3 calls (setting secrets up) would log secret strings at DEBUG.
for _name in ("botocore", "boto3"):
    __import__("logging").getLogger(_name).setLevel(30)

from local import simulator as sim_module  # noqa: E402
from local.stack import LambdaContext  # noqa: E402, F401 - the context the tests hand to handlers

# -- no packet leaves loopback ----------------------------------------------------------------

BLOCKED_CONNECTS: list[Any] = []
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _allowed(sock: socket.socket, address: Any) -> bool:
    if sock.family == socket.AF_UNIX:
        return True
    host = address[0] if isinstance(address, tuple) else address
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _guarded_connect(self: socket.socket, address: Any) -> None:
    if not _allowed(self, address):
        BLOCKED_CONNECTS.append(address)
        raise ConnectionRefusedError(f"test guard: refused a connection to non-loopback {address!r}")
    _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    if not _allowed(self, address):
        BLOCKED_CONNECTS.append(address)
        return 111  # ECONNREFUSED
    return _real_connect_ex(self, address)


_real_getaddrinfo = socket.getaddrinfo
BLOCKED_LOOKUPS: list[str] = []


def _guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    """Only loopback names and IP literals resolve: no DNS query ever leaves the machine."""
    name = host.decode() if isinstance(host, bytes) else str(host)
    try:
        ipaddress.ip_address(name.strip("[]").split("%")[0])
    except ValueError:
        if name not in ("localhost", "localhost.localdomain"):
            BLOCKED_LOOKUPS.append(name)
            raise socket.gaierror(socket.EAI_NONAME, f"test guard: no DNS for {name!r}") from None
    return _real_getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _guarded_getaddrinfo
socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def _no_connection_left_loopback() -> Iterator[None]:
    before = len(BLOCKED_CONNECTS)
    yield
    assert BLOCKED_CONNECTS[before:] == [], "a test tried to connect to a non-loopback address"


# -- the Vonage simulator ---------------------------------------------------------------------


class Sim:
    """A running simulator plus helpers for its /_sim/ control surface."""

    def __init__(self, server: sim_module.SimulatorServer) -> None:
        self.server = server
        self.url = server.url
        self.state = server.state

    def control(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read() or b"null")

    def fault(self, operation: str, **fault: Any) -> None:
        self.control("POST", "/_sim/faults", {"operation": operation, **fault})

    def requests(self, operation: str | None = None, api_key: str | None = None) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = self.control("GET", "/_sim/requests")["requests"]
        return [
            e
            for e in entries
            if (operation is None or e["operation"] == operation) and (api_key is None or e["api_key"] == api_key)
        ]

    def add_account(self, api_key: str, api_secret: str, **values: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.control(
            "POST", "/_sim/accounts", {"api_key": api_key, "api_secret": api_secret, **values}
        )
        return result

    def set(self, **values: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.control("POST", "/_sim/state", values)
        return result

    def public_state(self) -> dict[str, Any]:
        result: dict[str, Any] = self.control("GET", "/_sim/state")
        return result

    def account(self, api_key: str = sim_module.DEFAULT_API_KEY) -> dict[str, Any]:
        result: dict[str, Any] = self.public_state()["accounts"][api_key]
        return result


@pytest.fixture
def sim() -> Iterator[Sim]:
    server = sim_module.start()
    try:
        yield Sim(server)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def fast_options() -> Any:
    from account_api import ClientOptions

    return ClientOptions(connect_timeout=1.0, read_timeout=1.0, total_deadline=4.0, backoff_base=0.01, backoff_cap=0.05)


@pytest.fixture
def client(sim: Sim, fast_options: Any) -> Any:
    from account_api import AccountClient

    c = AccountClient(
        api_key=sim_module.DEFAULT_API_KEY,
        api_secret=sim_module.DEFAULT_API_SECRET,
        rest_base_url=sim.url,
        api_base_url=sim.url,
        options=fast_options,
    )
    yield c
    c.close()


# -- AWS through moto -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto's server on loopback: boto3 (the tests) and the layer's own AWS client both reach it
    over HTTP through AWS_ENDPOINT_URL, as the local stack does."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from account_api import aws_clients

    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST"), timeout=10).close()
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    aws_clients.reset()  # a client belongs to one endpoint
    yield
    aws_clients.reset()


def vonage_secret_value(**overrides: Any) -> str:
    data = {
        "api_key": sim_module.DEFAULT_API_KEY,
        "api_secret": sim_module.DEFAULT_API_SECRET,
        "topup_trx": sim_module.DEFAULT_TRX,
    }
    data.update(overrides)
    return json.dumps({k: v for k, v in data.items() if v is not None})


@pytest.fixture
def vonage_secret(aws: None, sim: Sim, monkeypatch: pytest.MonkeyPatch) -> str:
    """The Vonage secret in moto's Secrets Manager, with the simulator's account in it."""
    import boto3

    from local import aws_resources

    sm = boto3.client("secretsmanager")
    arn: str = sm.create_secret(Name="account-ops/vonage", SecretString=vonage_secret_value())["ARN"]
    tables = aws_resources.create_tables(boto3.Session())  # the watcher's tables, which the API also uses
    monkeypatch.setenv("STATE_TABLE", tables["WatcherStateTable"])
    monkeypatch.setenv("HISTORY_TABLE", tables["TopUpHistoryTable"])
    monkeypatch.setenv("ACCOUNTS_TABLE", tables["AccountsTable"])
    monkeypatch.setenv("ACCOUNT_SECRET_PREFIX", "account-ops/accounts/")
    return arn


def load_handler(function: str) -> ModuleType:
    """Import functions/<function>/app.py fresh, as Lambda would (its folder is the code root)."""
    from local.stack import load_function

    return load_function(function)


def local_invoke(function: str, event: str, state_file: Path) -> Any:
    """`python -m local invoke FUNCTION -e EVENT` in a fresh process, against the stack whose state
    file is given; everything else comes from that file."""
    import subprocess
    import sys

    env = {**os.environ, "ACCOUNT_OPS_LOCAL_STATE": str(state_file)}
    for name in ("AWS_ENDPOINT_URL", "VONAGE_SECRET_ARN"):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "local", "invoke", function, "-e", event],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def load_event(name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((ROOT / "events" / name).read_text())
    return result


class JsonLogs:
    """The JSON lines the Powertools Logger writes (its handler's stream is redirected here)."""

    def __init__(self) -> None:
        import io

        self.buffer = io.StringIO()

    @property
    def text(self) -> str:
        return self.buffer.getvalue()

    def entries(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines() if line.startswith("{")]


@pytest.fixture
def api(vonage_secret: str, sim: Sim, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The settings API's handler, fresh, pointed at the simulator and moto."""
    monkeypatch.setenv("VONAGE_SECRET_ARN", vonage_secret)
    monkeypatch.setenv("VONAGE_REST_BASE_URL", sim.url)
    monkeypatch.setenv("VONAGE_API_BASE_URL", sim.url)
    monkeypatch.setenv("UNSAFE_CALLBACK_ALLOW_HOSTS", "localhost")
    return load_handler("settings_api")


@pytest.fixture
def hooks() -> Iterator[Any]:
    """The webhook receivers: /ok answers 200, /missing 404."""
    from local import webhooks

    server = webhooks.start()
    yield server
    server.close()


@pytest.fixture
def json_logs() -> Iterator[JsonLogs]:
    from account_api.observability import logger

    logs = JsonLogs()
    handler = logger.registered_handler
    previous = handler.setStream(logs.buffer)  # type: ignore[attr-defined]
    yield logs
    handler.setStream(previous)  # type: ignore[attr-defined]


@pytest.fixture
def atomic_dynamodb(monkeypatch: pytest.MonkeyPatch) -> None:
    """DynamoDB applies a conditional write atomically per item; moto checks and writes without a
    lock, so concurrent tests serialise its item writes to behave like the real service."""
    from moto.dynamodb.models import DynamoDBBackend

    lock = threading.RLock()
    for name in ("put_item", "update_item", "delete_item", "get_item"):
        original = getattr(DynamoDBBackend, name)

        def locked(self: Any, *args: Any, __original: Any = original, **kwargs: Any) -> Any:
            with lock:
                return __original(self, *args, **kwargs)

        monkeypatch.setattr(DynamoDBBackend, name, locked)
