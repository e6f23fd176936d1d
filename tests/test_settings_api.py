"""The settings API handler, fed API Gateway events from events/, talking to the simulator over
loopback and to Secrets Manager through moto."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import boto3
import pytest

from local import simulator as simmod
from local import webhooks
from tests.conftest import ROOT, JsonLogs, LambdaContext, Sim, load_event, load_handler, vonage_secret_value


def call(api: ModuleType, event: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    response = api.lambda_handler(event, LambdaContext("settings-api"))
    headers = response.get("headers") or {}
    for name, values in (response.get("multiValueHeaders") or {}).items():
        headers.setdefault(name, values[0])
    return response["statusCode"], headers, json.loads(response["body"]) if response.get("body") else None


def with_body(event_name: str, body: Any) -> dict[str, Any]:
    event = load_event(event_name)
    event["body"] = body if isinstance(body, str) else json.dumps(body)
    return event


def request(method: str, path: str, body: Any = None) -> dict[str, Any]:
    event = load_event("settings_get_settings.json")
    event.update(
        httpMethod=method,
        path=path,
        resource=path,
        body=body if body is None or isinstance(body, str) else json.dumps(body),
    )
    event["requestContext"].update(httpMethod=method, resourcePath=path)
    return event


def test_get_settings(api: ModuleType, sim: Sim) -> None:
    status, headers, body = call(api, load_event("settings_get_settings.json"))
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert body["moCallbackUrl"] == "" and body["maxCallsPerSecond"] == 30
    assert sim.requests("changeAccountSettings")  # read with an empty POST


def test_put_settings_checks_then_changes(
    api: ModuleType, sim: Sim, hooks: webhooks.WebhookServer, caplog: pytest.LogCaptureFixture
) -> None:
    event = with_body(
        "settings_put_settings.json", {"moCallbackUrl": f"{hooks.url}/ok", "drCallbackUrl": f"{hooks.url}/ok"}
    )
    status, _, body = call(api, event)
    assert status == 200, body
    assert body["settings"]["moCallbackUrl"] == f"{hooks.url}/ok"
    assert body["checks"]["moCallbackUrl"]["ok"] is True and body["checks"]["drCallbackUrl"]["status"] == 200
    assert sim.account()["dr_callback_url"] == f"{hooks.url}/ok"


def test_change_is_logged_with_caller_and_old_and_new_values(
    api: ModuleType, sim: Sim, hooks: webhooks.WebhookServer, json_logs: JsonLogs
) -> None:
    call(api, with_body("settings_put_settings.json", {"drCallbackUrl": f"{hooks.url}/ok"}))
    [changed] = [entry for entry in json_logs.entries() if entry.get("message") == "account settings changed"]
    assert changed["caller"] == "arn:aws:iam::123456789012:user/ops-alice"
    assert changed["old"]["drCallbackUrl"] == "" and changed["new"]["drCallbackUrl"] == f"{hooks.url}/ok"
    assert changed["correlation_id"] == "c6af9ac6-7b61-11e6-9a41-93e8deadbeef"


def test_unset_needs_no_check(api: ModuleType, sim: Sim) -> None:
    sim.state.accounts[simmod.DEFAULT_API_KEY].dr_callback_url = "https://old.example.com/dr"
    status, _, body = call(api, load_event("settings_put_settings_unset.json"))
    assert status == 200
    assert body["settings"]["drCallbackUrl"] == "" and body["checks"] == {}


def test_a_dead_url_is_refused_before_vonage_sees_it(api: ModuleType, sim: Sim, hooks: webhooks.WebhookServer) -> None:
    event = with_body(
        "settings_put_settings.json", {"moCallbackUrl": f"{hooks.url}/ok", "drCallbackUrl": f"{hooks.url}/missing"}
    )
    status, headers, body = call(api, event)
    assert status == 422 and headers["Content-Type"] == "application/problem+json"
    assert body["title"] == "Callback URL check failed"
    assert body["invalid_params"] == [
        {"name": "drCallbackUrl", "reason": "status", "detail": "answered 404, expected 200"}
    ]
    assert body["checks"]["moCallbackUrl"]["ok"] is True
    assert len(sim.requests("changeAccountSettings")) == 0  # all or nothing
    assert sim.account()["mo_callback_url"] == ""


def test_an_internal_address_is_refused_as_blocked(api: ModuleType, sim: Sim) -> None:
    status, _, body = call(
        api, with_body("settings_put_settings.json", {"moCallbackUrl": "https://169.254.169.254/latest"})
    )
    assert status == 422
    assert body["invalid_params"][0]["reason"] == "ip_literal_not_allowed"
    status, _, body = call(api, with_body("settings_put_settings.json", {"moCallbackUrl": "https://localhost:443/x"}))
    assert status == 422 and body["invalid_params"][0]["name"] == "moCallbackUrl"
    assert sim.requests("changeAccountSettings") == []


def test_vonage_refusing_the_change_is_reported_with_its_reason(
    api: ModuleType, sim: Sim, hooks: webhooks.WebhookServer
) -> None:
    # Our check passes (first fetch answers 200) but Vonage's own fetch gets a 404.
    status, _, body = call(api, with_body("settings_put_settings.json", {"moCallbackUrl": f"{hooks.url}/once"}))
    assert status == 422
    assert body["title"] == "Vonage refused the request"
    assert "answered 404" in body["detail"]
    assert hooks.hits == ["/once", "/once"]
    assert sim.account()["mo_callback_url"] == ""


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ("{not json", 400, None),
        ({"moCallbackUrl": 42}, 422, "moCallbackUrl"),
        ({"moCallbackUrl": "https://hooks.example.com/x", "extra": 1}, 422, "extra"),
        ({}, 422, "body"),
        ({"drCallbackUrl": "not a url"}, 422, "drCallbackUrl"),
        ({"drCallbackUrl": "https://hooks.example.com/" + "a" * 2050}, 422, "drCallbackUrl"),
        ([1, 2], 422, "body"),
        ({"moCallbackUrl": "x" * 9000}, 413, None),
    ],
)
def test_bad_input_is_a_problem_naming_the_field(
    api: ModuleType, sim: Sim, body: Any, status: int, field: str | None
) -> None:
    got, headers, problem = call(api, with_body("settings_put_settings.json", body))
    assert got == status, problem
    assert headers["Content-Type"] == "application/problem+json"
    assert problem["status"] == status and problem["title"] and problem["detail"]
    if field:
        assert field in [p["name"] for p in problem["invalid_params"]]
    assert sim.requests("changeAccountSettings") == []


def test_get_balance(api: ModuleType, sim: Sim) -> None:
    sim.set(balance=7.25, auto_reload=False)
    status, _, body = call(api, load_event("settings_get_balance.json"))
    assert (status, body) == (200, {"value": 7.25, "currency": "EUR", "autoReload": False})


def test_secrets_are_ids_and_times_never_values(api: ModuleType, sim: Sim, vonage_secret: str) -> None:
    [current_id] = sim.account()["secret_ids"]
    boto3.client("secretsmanager").put_secret_value(
        SecretId=vonage_secret, SecretString=vonage_secret_value(secret_id=current_id)
    )
    status, _, body = call(api, load_event("settings_get_secrets.json"))
    assert status == 200
    assert body["secrets"][0]["id"] == current_id and body["secrets"][0]["current"] is True
    assert set(body["secrets"][0]) == {"id", "createdAt", "current"}
    event = load_event("settings_get_secret.json")
    event["path"] = f"/secrets/{current_id}"
    event["pathParameters"] = {"secret_id": current_id}
    status, _, one = call(api, event)
    assert status == 200 and one["id"] == current_id
    status, _, missing = call(api, request("GET", "/secrets/0000-not-ours"))
    assert status == 404 and missing["title"] == "Not Found"


def test_register_sender(api: ModuleType, sim: Sim) -> None:
    status, _, body = call(api, load_event("settings_post_sender.json"))
    assert status == 201
    assert body == {
        "value": "alerts@example.com",
        "provider": "email",
        "name": "alerts",
        "applicationIds": ["6ec9eb7de1d34e77ac2c0ad597c9554a"],
    }
    status, _, problem = call(api, with_body("settings_post_sender.json", {"value": "nope"}))
    assert status == 422 and problem["invalid_params"][0]["name"] == "value"


def test_rotate_answers_202_through_secrets_manager(api: ModuleType, vonage_secret: str) -> None:
    status, _, body = call(api, load_event("settings_post_rotate.json"))
    assert status == 202 and body["rotation"] == "started"
    versions = boto3.client("secretsmanager").list_secret_version_ids(SecretId=vonage_secret)["Versions"]
    assert body["versionId"] in {v["VersionId"] for v in versions}


def test_rotate_refused_by_secrets_manager_is_a_problem(api: ModuleType, vonage_secret: str) -> None:
    boto3.client("secretsmanager").delete_secret(SecretId=vonage_secret, ForceDeleteWithoutRecovery=True)
    status, headers, body = call(api, load_event("settings_post_rotate.json"))
    assert status == 502 and headers["Content-Type"] == "application/problem+json"
    assert body["title"] == "AWS resource missing" and "RotateSecret" in body["detail"]


def test_unknown_route_and_wrong_method(api: ModuleType) -> None:
    status, headers, body = call(api, request("GET", "/nope"))
    assert status == 404 and headers["Content-Type"] == "application/problem+json"
    status, headers, body = call(api, request("DELETE", "/settings"))
    assert status == 405 and headers["Allow"] == "GET, PUT"
    assert body["title"] == "Method not allowed"


def test_a_hostile_callback_cannot_hold_the_api_past_its_check_deadline(
    vonage_secret: str, sim: Sim, hooks: webhooks.WebhookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the whole handler: a URL whose server trickles its status line answers 422 timeout
    at the configured check deadline (1 s here), long before API Gateway's 29 s."""
    import time

    from account_api import config

    for name, value in {
        "VONAGE_SECRET_ARN": vonage_secret,
        "VONAGE_REST_BASE_URL": sim.url,
        "VONAGE_API_BASE_URL": sim.url,
        "UNSAFE_CALLBACK_ALLOW_HOSTS": "localhost",
        "CALLBACK_CHECK_TIMEOUT_SECONDS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    config.timeouts.cache_clear()
    try:
        api = load_handler("settings_api")
        started = time.monotonic()
        status, _, body = call(
            api, with_body("settings_put_settings.json", {"moCallbackUrl": f"{hooks.url}/trickle-status"})
        )
        assert time.monotonic() - started < 1.5
    finally:
        config.timeouts.cache_clear()
    assert status == 422 and body["invalid_params"][0]["reason"] == "timeout"
    assert sim.requests("changeAccountSettings") == []


def test_placeholder_credentials_answer_503_saying_what_to_do(api: ModuleType, sim: Sim, vonage_secret: str) -> None:
    boto3.client("secretsmanager").put_secret_value(
        SecretId=vonage_secret, SecretString='{"api_key": "REPLACE_ME", "api_secret": "REPLACE_ME"}'
    )
    status, headers, body = call(api, request("GET", "/balance"))
    assert (status, body["title"], headers["Retry-After"]) == (503, "Not configured", "300")
    assert "placeholder" in body["detail"] and sim.requests() == []


def test_rotation_state_topup_switch_and_history_routes(api: ModuleType, sim: Sim) -> None:
    status, _, state = call(api, request("GET", "/rotation"))
    assert status == 200 and state["state"] == "idle" and state["currentVersion"] and not state["rotationEnabled"]
    assert call(api, request("GET", "/topups"))[2] == {
        "paused": False,
        "reason": None,
        "changedBy": None,
        "changedAt": None,
    }
    status, _, switch = call(
        api,
        with_body("settings_put_settings.json", {"paused": True, "reason": "audit"})
        | {"httpMethod": "PUT", "path": "/topups"},
    )
    assert status == 200 and switch["paused"] and switch["reason"] == "audit"
    assert switch["changedBy"] == load_event("settings_put_settings.json")["requestContext"]["identity"]["userArn"]
    assert call(api, request("GET", "/topups"))[2]["paused"] is True
    status, _, history = call(api, request("GET", "/history") | {"queryStringParameters": {"days": "30"}})
    assert status == 200 and history["days"] == 30 and history["nextCursor"] is None
    [row] = history["decisions"]  # the pause, with who and why
    assert (row["outcome"], row["detail"], row["changedBy"]) == ("topups_paused", "audit", switch["changedBy"])
    status, _, problem = call(api, request("GET", "/history") | {"queryStringParameters": {"days": "365"}})
    assert status == 422 and problem["invalid_params"][0]["name"] == "query.days"


@pytest.mark.parametrize("path", ["/secrets/rotate", "/secrets/rotate/", "/secrets/rotate//"])
def test_get_on_the_rotate_route_is_405_not_a_secret_lookup(api: ModuleType, sim: Sim, path: str) -> None:
    status, headers, _body = call(api, request("GET", path))
    assert (status, headers["Allow"], headers["Content-Type"]) == (405, "POST", "application/problem+json")
    assert sim.requests() == []  # Vonage was never asked for a secret called "rotate"


def put_topups(api: ModuleType, body: Any) -> tuple[int, dict[str, str], Any]:
    return call(api, with_body("settings_put_topups.json", body))


@pytest.mark.parametrize("paused", ["yes", "1", 1, 0, "off", "true", None, [], {}])
def test_the_switch_that_moves_money_takes_only_a_json_boolean(api: ModuleType, paused: Any) -> None:
    status, _, problem = put_topups(api, {"paused": paused})
    assert status == 422 and problem["invalid_params"][0]["name"] == "paused"
    assert call(api, request("GET", "/topups"))[2]["paused"] is False  # nothing changed


def test_the_pause_reason_is_screened_and_every_change_is_a_history_row(api: ModuleType) -> None:
    hostile = "card\u202eDELIAF\u202c replaced\r\nFAKE: top-ups resumed\x1b[31m\u200b"
    status, _, switch = put_topups(api, {"paused": True, "reason": hostile})
    assert status == 200
    assert switch["reason"] == "card DELIAF replaced FAKE: top-ups resumed [31m"
    assert put_topups(api, {"paused": False})[0] == 200
    assert put_topups(api, {"paused": True, "reason": "x" * 201})[0] == 422  # capped, and not silently
    history = call(api, request("GET", "/history"))[2]["decisions"]
    assert [(d["outcome"], d["detail"]) for d in history] == [
        ("topups_resumed", None),
        ("topups_paused", "card DELIAF replaced FAKE: top-ups resumed [31m"),
    ]


def test_history_comes_in_pages_and_says_when_there_is_more(api: ModuleType, vonage_secret: str) -> None:
    """Seven days at a 5-minute schedule are 2,016 rows: the answer pages them instead of cutting."""
    from datetime import UTC, datetime, timedelta

    ddb = boto3.client("dynamodb")
    now = datetime.now(UTC).replace(microsecond=0)
    for minutes in range(0, 250 * 5, 5):
        at = (now - timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")
        ddb.put_item(
            TableName="TopUpHistoryTable",
            Item={
                "account": {"S": simmod.DEFAULT_API_KEY},
                "at": {"S": at},
                "scheduled_time": {"S": at},
                "outcome": {"S": "ok"},
            },
        )
    seen: list[str] = []
    query: dict[str, str] = {"days": "7", "limit": "100"}
    while True:
        status, _, page = call(api, request("GET", "/history") | {"queryStringParameters": query})
        assert status == 200 and len(page["decisions"]) <= 100
        seen += [d["scheduledTime"] for d in page["decisions"]]
        if not page["nextCursor"]:
            break
        query["cursor"] = page["nextCursor"]
    assert len(seen) == 250 and seen == sorted(seen, reverse=True) and len(set(seen)) == 250
    for cursor in ("bm90LWEtdGltZQ", "!!", "x" * 300):
        status, _, problem = call(api, request("GET", "/history") | {"queryStringParameters": {"cursor": cursor}})
        assert status == 422 and problem["invalid_params"][0]["name"].endswith("cursor"), problem


# Where a route's own AWS call meets the fault, the status it must answer. Elsewhere the route may
# not touch what is broken (GET /topups reads no secret), or meets it reading the credentials first
# (502, "credentials unavailable"): a success or a documented problem, never a 500.
EXACT = {
    ("no_tables", "GET /topups"): 502,
    ("no_tables", "PUT /topups"): 502,
    ("no_tables", "GET /history"): 502,
    ("no_secret", "GET /rotation"): 502,
    ("no_secret", "POST /secrets/rotate"): 502,
    ("no_secret", "GET /balance"): 502,
    ("unreachable", "GET /topups"): 503,
    ("unreachable", "GET /rotation"): 503,
    ("throttled", "GET /topups"): 503,
    ("throttled", "GET /rotation"): 503,
}


@pytest.mark.parametrize("break_aws", ["no_tables", "no_secret", "unreachable", "throttled"])
@pytest.mark.parametrize(
    "route",
    [
        ("GET", "/topups", None),
        ("PUT", "/topups", {"paused": True}),
        ("GET", "/history", None),
        ("GET", "/rotation", None),
        ("POST", "/secrets/rotate", None),
        ("GET", "/balance", None),
    ],
    ids=lambda r: f"{r[0]} {r[1]}",
)
def test_aws_failing_is_a_problem_never_a_500(
    api: ModuleType,
    vonage_secret: str,
    monkeypatch: pytest.MonkeyPatch,
    route: tuple[str, str, Any],
    break_aws: str,
    json_logs: JsonLogs,
) -> None:
    """A missing table or secret, an unreachable endpoint, throttling: each AWS call of each route
    answers a documented problem (Retry-After where waiting helps), never a 500."""
    from account_api import aws_clients

    if break_aws == "no_tables":
        for table in ("WatcherStateTable", "TopUpHistoryTable"):
            boto3.client("dynamodb").delete_table(TableName=table)
    elif break_aws == "no_secret":
        boto3.client("secretsmanager").delete_secret(SecretId=vonage_secret, ForceDeleteWithoutRecovery=True)
    elif break_aws == "unreachable":
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing listens
        aws_clients.reset()
    else:
        throttle = {"__type": "ThrottlingException", "message": "Rate exceeded"}
        from botocore.awsrequest import AWSResponse

        class Raw:
            def stream(self, **kwargs: Any) -> Iterator[bytes]:
                yield json.dumps(throttle).encode()

        for service in ("dynamodb", "secretsmanager"):
            aws_clients.client(service).meta.events.register_first(
                "before-send",
                lambda **kw: AWSResponse("http://x", 400, {"x-amzn-ErrorType": "ThrottlingException"}, Raw()),
            )
    method, path, body = route
    event = with_body("settings_put_topups.json", body) if method == "PUT" else request(method, path)
    answer_status, headers, problem = call(api, event)
    expected = EXACT.get((break_aws, f"{method} {path}"))
    if expected is not None:
        assert answer_status == expected, problem
    assert answer_status in {200, 202, 502, 503, 504}, problem
    if answer_status >= 500:
        assert headers["Content-Type"] == "application/problem+json", problem
    if answer_status == 503:
        assert int(headers["Retry-After"]) > 0
    assert "Traceback" not in json_logs.text


def test_an_unexpected_vonage_answer_reaches_no_answer_or_log_unredacted(
    api: ModuleType, sim: Sim, json_logs: JsonLogs, capfd: pytest.CaptureFixture[str]
) -> None:
    """A 200 whose body is not what the spec says, repeating our secret with control characters and
    3 KB of text: the 502 detail and the error log line are clean and bounded."""
    junk = f"{simmod.DEFAULT_API_SECRET}\r\n\x1b[2J\u202eFAKE LOG LINE " + "A" * 3000
    sim.fault("getAccountBalance", status=200, problem={"value": junk, "autoReload": junk, junk[:40]: junk}, times=5)
    status, _, problem = call(api, request("GET", "/balance"))
    assert status == 502
    logged = json_logs.text + capfd.readouterr().out
    for text in (json.dumps(problem), logged):
        assert simmod.DEFAULT_API_SECRET not in text
        assert "\x1b" not in text and "\u202e" not in text and "FAKE LOG LINE\n" not in text
    assert len(problem["detail"]) <= 500
    assert max(len(line) for line in logged.splitlines()) < 2000


def with_content_type(method: str, path: str, body: str, media_type: str | None) -> dict[str, Any]:
    event = request(method, path, body)
    for source in ("headers", "multiValueHeaders"):
        event[source] = {k: v for k, v in event[source].items() if k.lower() != "content-type"}
    if media_type is not None:
        event["headers"]["content-type"] = media_type
        event["multiValueHeaders"]["content-type"] = [media_type]
    return event


@pytest.mark.parametrize(
    "media_type",
    [
        "text/plain",
        "application/xml",
        "multipart/form-data; boundary=x",
        "application/merge-patch+json",
        "application/x-www-form-urlencoded",
        None,
    ],
)
def test_a_body_that_is_not_json_is_415(api: ModuleType, sim: Sim, media_type: str | None) -> None:
    event = with_content_type("PUT", "/settings", json.dumps({"moCallbackUrl": ""}), media_type)
    status, headers, body = call(api, event)
    assert (status, headers["Content-Type"]) == (415, "application/problem+json")
    assert body["invalid_params"][0]["name"] == "Content-Type"
    assert sim.requests() == []


@pytest.mark.parametrize("media_type", ["APPLICATION/JSON", "application/json; charset=UTF-8", "Application/Json"])
def test_json_is_json_in_any_case(api: ModuleType, media_type: str) -> None:
    event = with_content_type("PUT", "/settings", json.dumps({"moCallbackUrl": ""}), media_type)
    assert call(api, event)[0] == 200


def test_the_body_limit_counts_bytes_not_characters(api: ModuleType, sim: Sim) -> None:
    body = json.dumps({"moCallbackUrl": "https://hooks.example.com/" + "\u00e9" * 5000}, ensure_ascii=False)
    assert len(body) < 8192 < len(body.encode())
    status, _, problem = call(api, request("PUT", "/settings", body))
    assert status == 413 and "bytes" in problem["detail"]
    assert sim.requests() == []


@pytest.mark.parametrize(
    ("fault", "status", "title"),
    [
        ({"status": 500, "times": 3}, 502, "Upstream failure"),
        ({"status": 429, "retry_after": 60}, 503, "Vonage is rate limiting requests"),
        ({"latency": 2.5, "times": 3}, 504, "Vonage did not answer in time"),
        ({"body": "malformed"}, 502, "Upstream failure"),
    ],
)
def test_vonage_failures_map_to_problems_never_500(
    api: ModuleType, sim: Sim, fault: dict[str, Any], status: int, title: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from account_api import ClientOptions

    api.account.options = ClientOptions(read_timeout=0.5, total_deadline=2.0, backoff_base=0.01)
    sim.fault("getAccountBalance", **fault)
    got, headers, body = call(api, load_event("settings_get_balance.json"))
    assert (got, body["title"]) == (status, title)
    if status == 503:
        assert headers["Retry-After"] == "60"


def test_bad_credentials_are_a_502_after_one_refresh(api: ModuleType, sim: Sim, vonage_secret: str) -> None:
    boto3.client("secretsmanager").put_secret_value(
        SecretId=vonage_secret, SecretString=vonage_secret_value(api_secret="Wrong-Secret-1")
    )
    status, _, body = call(api, load_event("settings_get_balance.json"))
    assert (status, body["title"]) == (502, "Vonage rejected the stored credentials")
    assert len(sim.requests("getAccountBalance")) == 2


def test_no_secret_in_logs_or_answers(
    api: ModuleType,
    sim: Sim,
    hooks: webhooks.WebhookServer,
    json_logs: JsonLogs,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    answers = [
        call(api, load_event(name))
        for name in (
            "settings_get_settings.json",
            "settings_get_balance.json",
            "settings_get_secrets.json",
            "settings_post_rotate.json",
        )
    ]
    answers.append(call(api, with_body("settings_put_settings.json", {"moCallbackUrl": f"{hooks.url}/ok"})))
    sim.fault("getAccountBalance", status=500, times=3)
    answers.append(call(api, load_event("settings_get_balance.json")))
    text = json_logs.text + capfd.readouterr().out + caplog.text + json.dumps(answers)
    assert "account settings changed" in text
    for secret in (simmod.DEFAULT_API_SECRET, simmod.DEFAULT_TRX, "Authorization"):
        assert secret not in text


def test_every_route_has_an_event_file() -> None:
    names = {p.name for p in (ROOT / "events").glob("settings_*.json")}
    for route in (
        "get_settings",
        "put_settings",
        "get_balance",
        "get_secrets",
        "get_secret",
        "post_rotate",
        "post_sender",
    ):
        assert f"settings_{route}.json" in names


def test_openapi_document_is_current(api: ModuleType) -> None:
    committed = json.loads((ROOT / "functions" / "settings_api" / "openapi.json").read_text())
    assert committed == json.loads(api.openapi_document()), "run: make openapi"


def test_openapi_document_describes_the_api_as_it_answers() -> None:
    from openapi_spec_validator import validate

    document = json.loads((ROOT / "functions" / "settings_api" / "openapi.json").read_text())
    validate(document)
    statuses = {
        (method.upper(), path): sorted(int(s) for s in operation["responses"])
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    }
    upstream = [502, 503, 504]
    assert statuses == {
        ("GET", "/settings"): [200, *upstream],
        ("PUT", "/settings"): [200, 400, 413, 415, 422, *upstream],
        ("GET", "/balance"): [200, *upstream],
        ("GET", "/secrets"): [200, *upstream],
        ("POST", "/secrets/rotate"): [202, 409, 413, 415, 502, 503, 504],
        ("GET", "/secrets/{secret_id}"): [200, 404, 405, 422, *upstream],
        ("POST", "/senders"): [201, 400, 413, 415, 422, *upstream],
        ("GET", "/rotation"): [200, *upstream],
        ("GET", "/topups"): [200, *upstream],
        ("PUT", "/topups"): [200, 400, 413, 415, 422, *upstream],
        ("GET", "/history"): [200, 422, *upstream],
        ("GET", "/version"): [200],
        ("GET", "/accounts"): [200, 422, *upstream],
        ("POST", "/accounts"): [201, 400, 409, 413, 415, 422, *upstream],
        ("GET", "/accounts/{api_key}"): [200, 404, 422, *upstream],
        ("PUT", "/accounts/{api_key}"): [200, 400, 404, 409, 413, 415, 422, *upstream],
        ("DELETE", "/accounts/{api_key}"): [200, 404, 422, *upstream],
        ("GET", "/accounts/{api_key}/balance"): [200, 404, 422, *upstream],
        ("GET", "/accounts/{api_key}/secrets"): [200, 404, 422, *upstream],
        ("GET", "/accounts/{api_key}/settings"): [200, 404, 422, *upstream],
        ("PUT", "/accounts/{api_key}/settings"): [200, 400, 404, 413, 415, 422, *upstream],
        ("GET", "/accounts/{api_key}/rotation"): [200, 404, 422, *upstream],
        ("POST", "/accounts/{api_key}/secrets/rotate"): [202, 404, 409, 413, 415, 422, *upstream],
        ("GET", "/accounts/{api_key}/history"): [200, 404, 422, *upstream],
        # a primary not provisioned for the Subaccounts API: 200 with "enabled": false for the list,
        # 409 for one subaccount
        ("GET", "/accounts/{api_key}/subaccounts"): [200, 404, 422, *upstream],
        ("GET", "/accounts/{api_key}/subaccounts/{subaccount}"): [200, 404, 409, 422, *upstream],
        ("PUT", "/accounts/{api_key}/subaccounts/{subaccount}"): [200, 400, 404, 409, 413, 415, 422, *upstream],
    }
    for operations in document["paths"].values():
        for operation in operations.values():
            for status, answer in operation["responses"].items():
                if int(status) >= 400:
                    assert answer["content"] == {
                        "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
                    }
    assert document["components"]["securitySchemes"]["sigv4"]["x-amazon-apigateway-authtype"] == "awsSigv4"
    assert document["security"] == [{"sigv4": []}]
    assert document["servers"][0]["url"].endswith(".amazonaws.com/v1")
    schemas = document["components"]["schemas"]
    assert schemas["SettingsChangeRequest"]["minProperties"] == 1
    assert schemas["SettingsChangeRequest"]["properties"]["moCallbackUrl"]["pattern"].startswith("^(|")
    assert schemas["SenderRequest"]["properties"]["value"]["format"] == "email"


def test_every_log_line_and_the_api_report_the_release(api: ModuleType, json_logs: JsonLogs) -> None:
    from account_api.version import __version__

    status, _, body = call(api, request("GET", "/version"))
    assert (status, body) == (200, {"version": __version__})
    assert call(api, request("GET", "/secrets/not-a-secret-of-ours"))[0] == 404  # logged as refused
    assert json_logs.entries() and all(e["version"] == __version__ for e in json_logs.entries())
