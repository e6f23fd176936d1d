"""The embedded default: the whole system on one machine (simulator, moto's server, local API
Gateway, scheduler, rotation trigger), the demo's scenario, and `python -m local invoke`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from local import demo
from local.stack import LOCAL_IDENTITY, LocalStack, StackOptions, proxy_event
from tests.conftest import ROOT, local_invoke


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    state = tmp_path_factory.mktemp("local") / "state.json"
    options = StackOptions.on_free_ports(tick_seconds=1.0, topup_lag=2.0, state_file=state)
    with LocalStack(options) as running:
        yield running


def test_the_demo_scenario_passes(stack: LocalStack) -> None:
    lines: list[str] = []
    checks = demo.run(stack, say=lines.append)
    failed = [(name, detail) for name, ok, detail in checks if not ok]
    assert failed == []
    assert len(checks) == 24
    assert any("exactly one top-up" in line for line in lines)
    assert any("the broken one fails alone" in line for line in lines)
    assert any("exactly one transfer to the drained subaccount" in line for line in lines)


def local_command(*args: str, state_file: Path) -> subprocess.CompletedProcess[str]:
    """`python -m local ARGS` in a fresh process, as an operator runs it."""
    env = {**os.environ, "ACCOUNT_OPS_LOCAL_STATE": str(state_file)}
    return subprocess.run(
        [sys.executable, "-m", "local", *args],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_invoke_without_a_running_stack_says_so(tmp_path: Path) -> None:
    completed = local_invoke("balance_watcher", "events/balance_watcher_scheduled.json", tmp_path / "none.json")
    assert completed.returncode == 3
    assert "no local stack is running" in completed.stderr and "make local" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_invoke_with_a_stale_state_file_says_none_is_running(tmp_path: Path) -> None:
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps({"api_url": "http://127.0.0.1:9", "env": {}}))  # port 9: nothing answers
    completed = local_invoke("balance_watcher", "events/balance_watcher_scheduled.json", stale)
    assert (completed.returncode, "Traceback" in completed.stderr) == (3, False)
    assert "no local stack is running" in completed.stderr


def test_invoke_with_a_missing_event_file_says_which(stack: LocalStack) -> None:
    assert stack.options.state_file is not None
    completed = local_invoke("balance_watcher", "events/no_such_event.json", stack.options.state_file)
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines() == [
        "no event file 'events/no_such_event.json': the samples are in events/ (docs/local-stack.md lists them)"
    ]


def test_up_refuses_while_a_stack_runs_and_says_how_to_run_a_second(stack: LocalStack) -> None:
    assert stack.options.state_file is not None
    completed = local_command("up", state_file=stack.options.state_file)
    assert completed.returncode == 3
    (line,) = completed.stderr.strip().splitlines()
    assert f"a local stack is already running (its API: {stack.api_url}" in line
    assert "ACCOUNT_OPS_LOCAL_STATE=" in line
    for flag in ("--port", "--simulator-port", "--moto-port", "--webhook-port"):
        assert flag in line, flag


def test_up_with_a_port_taken_names_it_and_every_port_flag(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        completed = local_command("up", "--simulator-port", str(taken), state_file=tmp_path / "none.json")
    assert completed.returncode == 3
    (line,) = completed.stderr.strip().splitlines()
    assert line.startswith("port(s) taken: ") and f"{taken} (--simulator-port, the Vonage simulator)" in line
    for flag in ("--port", "--simulator-port", "--moto-port", "--webhook-port"):
        assert flag in line.split("for example:")[1], flag


def test_local_api_gateway_serves_every_route(stack: LocalStack) -> None:
    def call(method: str, path: str, body: object = None) -> tuple[int, str, dict[str, object]]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            stack.api_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.headers["Content-Type"], json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers["Content-Type"], json.loads(exc.read())

    status, _, secrets = call("GET", "/secrets")
    assert status == 200
    current = secrets["secrets"][0]["id"]  # type: ignore[index]
    assert call("GET", f"/secrets/{current}")[0] == 200
    assert call("POST", "/senders", {"value": "ops@example.com"})[0] == 201
    status, content_type, problem = call("DELETE", "/balance")
    assert (status, content_type, problem["title"]) == (405, "application/problem+json", "Method not allowed")
    assert call("PUT", "/settings", {"moCallbackUrl": 1})[0] == 422


def test_proxy_events_are_shaped_like_api_gateway() -> None:
    event = proxy_event(
        "PUT", "/v1/settings?dry=1&a=b&a=c", {"Content-Type": "application/json"}, b'{"x": 1}', "127.0.0.1"
    )
    assert event["path"] == "/settings" and event["resource"] == "/{proxy+}"
    assert event["pathParameters"] == {"proxy": "settings"}
    assert event["queryStringParameters"] == {"dry": "1", "a": "c"}
    assert event["multiValueQueryStringParameters"] == {"dry": ["1"], "a": ["b", "c"]}
    assert event["requestContext"]["identity"]["userArn"] == LOCAL_IDENTITY
    assert event["requestContext"]["stage"] == "v1" and event["body"] == '{"x": 1}'


def test_the_stack_puts_the_environment_back(tmp_path: Path) -> None:
    before = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "VONAGE_SECRET_ARN", "STATE_TABLE")}
    options = StackOptions.on_free_ports(tick_seconds=60, state_file=tmp_path / "s.json")
    with LocalStack(options) as running:
        assert os.environ["AWS_ENDPOINT_URL"] == running.moto_url
        assert (tmp_path / "s.json").exists()
    assert {k: os.environ.get(k) for k in before} == before
    assert not (tmp_path / "s.json").exists()
