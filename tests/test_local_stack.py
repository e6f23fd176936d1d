"""The embedded default: the whole system on one machine (simulator, moto's server, local API
Gateway, scheduler, rotation trigger), the demo's scenario, and `python -m local invoke`."""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from local import demo
from local.stack import LOCAL_IDENTITY, LocalStack, StackOptions, proxy_event
from tests.conftest import local_invoke


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
    assert len(checks) == 13
    assert any("exactly one top-up" in line for line in lines)


def test_invoke_without_a_running_stack_says_so(tmp_path: Path) -> None:
    completed = local_invoke("balance_watcher", "events/balance_watcher_scheduled.json", tmp_path / "none.json")
    assert completed.returncode == 2
    assert "make local" in completed.stderr


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
