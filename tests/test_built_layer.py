"""The layer as `sam build` makes it holds every module the functions import.

The layer Makefile deletes what the runtime provides (boto3) and what no function uses (parts of
Powertools, pydantic.v1). If it ever deleted something a function needs, Lambda would fail at
import or, worse, on the first request down a rare path. So each function's real handler runs
through its scenarios in a fresh process that sees only its code, the layer built by that same
Makefile for this machine, the runtime's boto3 and the standard library (`python -S`), against the
local fakes. Then every module it loaded from the layer must also be in the arm64 build in
.aws-sam/build (by file, since arm64 extension modules cannot load here)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from local import lambda_runtime, rotation_trigger
from local.stack import LocalStack, StackOptions, proxy_event

pytestmark = pytest.mark.slow

CHILD = """
import json, sys
sys.path[:0] = {paths!r}
class Context:
    function_name = {name!r}; function_version = "$LATEST"; memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:eu-west-1:000000000000:function:" + {name!r}
    aws_request_id = "00000000-0000-0000-0000-000000000000"
    def get_remaining_time_in_millis(self): return 29000
import app
answers = [app.lambda_handler(event, Context()) for event in json.load(open({events!r}))]
layer = {layer!r}
used = sorted({{module.__name__ for module in list(sys.modules.values())
               if (getattr(module, "__file__", None) or "").startswith(layer)}})
print("RESULT " + json.dumps({{"answers": answers, "used": used}}))
"""


@pytest.fixture(scope="module")
def layout() -> tuple[Path, Path]:
    return lambda_runtime.prepare()


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with LocalStack(StackOptions.on_free_ports(tick_seconds=86400)) as running:
        yield running


def api_event(stack: LocalStack, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else b""
    return proxy_event(method, "/v1" + path, {"Content-Type": "application/json"}, data, "127.0.0.1")


def scenarios(stack: LocalStack) -> dict[str, list[dict[str, Any]]]:
    sm = boto3.client("secretsmanager")
    arn = stack.resources.secret_arn
    token = rotation_trigger.stage_configuration_test(sm, arn)
    steps = [{"Step": s, "SecretId": arn, "ClientRequestToken": token} for s in rotation_trigger.STEPS]
    return {
        "settings_api": [
            api_event(stack, "GET", "/settings"),
            api_event(stack, "GET", "/balance"),
            api_event(stack, "GET", "/secrets"),
            api_event(stack, "PUT", "/settings", {"moCallbackUrl": f"{stack.hooks.url}/ok"}),
            api_event(stack, "PUT", "/settings", {"moCallbackUrl": "not a url"}),
            api_event(stack, "POST", "/senders", {"value": "ops@example.com"}),
        ],
        "balance_watcher": [{"scheduledTime": "2026-01-01T00:00:00Z", "executionId": "layer-test"}],
        "secret_rotation": steps,
    }


def run_in_lambda_layout(function: str, events: list[dict[str, Any]], stack: LocalStack, layout: Any, tmp: Path) -> Any:
    layer, runtime = layout
    code = lambda_runtime.ROOT / "functions" / function
    event_file = tmp / f"{function}.json"
    event_file.write_text(json.dumps(events))
    child = CHILD.format(
        paths=[str(code), str(layer), str(runtime)], name=function, events=str(event_file), layer=str(layer)
    )
    env = lambda_runtime.lambda_env(
        {**stack.env, "POWERTOOLS_SERVICE_NAME": function, "POWERTOOLS_TRACE_DISABLED": "1"}
    )
    completed = subprocess.run(
        [lambda_runtime.base_python(), "-S", "-c", child],
        check=False,
        env=env,
        cwd=code,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    [line] = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(line[7:])


def module_files(build: Path, name: str) -> list[Path]:
    base = build.joinpath(*name.split("."))
    candidates = [base.with_suffix(".py"), base / "__init__.py", *base.parent.glob(f"{base.name}.*.so")]
    return [path for path in candidates if path.exists()]


def test_every_function_runs_from_the_built_layer(stack: LocalStack, layout: Any, tmp_path: Path) -> None:
    used: set[str] = set()
    results = {
        name: run_in_lambda_layout(name, events, stack, layout, tmp_path) for name, events in scenarios(stack).items()
    }
    assert [a["statusCode"] for a in results["settings_api"]["answers"]] == [200, 200, 200, 200, 422, 201]
    assert results["balance_watcher"]["answers"][0]["outcome"] == "ok"
    assert results["secret_rotation"]["answers"] == [None, None, None, None]
    for result in results.values():
        used.update(result["used"])
    assert "boto3" not in used and "botocore" not in used  # the runtime's, not the layer's
    assert {"account_api.aws_clients", "aws_lambda_powertools.utilities.parameters.secrets", "pydantic_core"} <= used

    arm64 = lambda_runtime.BUILD / "AccountApiLayer" / "python"
    if not arm64.exists():
        pytest.fail("no .aws-sam/build: run `make build` (make test does it first)")
    missing = sorted(name for name in used if not module_files(arm64, name))
    assert missing == [], f"the arm64 layer lacks modules the functions import: {missing}"
