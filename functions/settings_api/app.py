"""Settings API: read and change the account's callback URLs, behind API Gateway (AWS_IAM).

A thin adapter: each route parses its input, calls one function of account_api.settings and
shapes the answer. Errors become RFC 7807 problems in one place (account_api.problems).
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.params import Path
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from account_api import deadline
from account_api import settings as service
from account_api.callbacks import CallbackChecker
from account_api.credentials import VonageAccount
from account_api.observability import logger, metrics
from account_api.problems import PROBLEM_CONTENT_TYPE, problem, problem_for

MAX_BODY_BYTES = 8 * 1024
ROUTES = {  # path pattern -> allowed methods (for 405 answers)
    r"/settings": {"GET", "PUT"},
    r"/balance": {"GET"},
    r"/secrets": {"GET"},
    r"/secrets/rotate": {"POST"},
    r"/secrets/[^/]+": {"GET"},
    r"/senders": {"POST"},
}

app = APIGatewayRestResolver(enable_validation=True)
account = VonageAccount.from_environment()
checker = CallbackChecker()


def _problem_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response[str]:
    return Response(status_code=status, content_type=PROBLEM_CONTENT_TYPE, body=json.dumps(body), headers=headers)


def _caller() -> str:
    identity = app.current_event.request_context.identity
    return identity.user_arn or identity.caller or "unknown"


@app.get("/settings")
def get_settings() -> service.SettingsView:
    return service.read_settings(account)


@app.put("/settings")
def put_settings(change: service.SettingsChangeRequest) -> service.SettingsChangeResult:
    return service.change_settings(account, change, checker, _caller())


@app.get("/balance")
def get_balance() -> service.BalanceView:
    return service.read_balance(account)


@app.get("/secrets")
def get_secrets() -> service.SecretsView:
    return service.list_secrets(account)


@app.post("/secrets/rotate")
def rotate_secret() -> Response[service.RotationStarted]:
    return Response(
        status_code=202, content_type="application/json", body=service.request_rotation(account.store.secret_arn)
    )


@app.get("/secrets/<secret_id>")
def get_secret(secret_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$")]) -> service.SecretView:
    return service.get_secret(account, secret_id)


@app.post("/senders")
def post_sender(sender: service.SenderRequest) -> Response[service.SenderView]:
    return Response(status_code=201, content_type="application/json", body=service.register_sender(account, sender))


@app.exception_handler(RequestValidationError)
def _invalid_request(exc: RequestValidationError) -> Response[str]:
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        return _problem_response(400, problem(400, "Malformed JSON", "The body is not valid JSON."))
    params = [
        {"name": ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body", "reason": e.get("msg", "invalid")}
        for e in errors
    ]
    detail = "; ".join(f"{p['name']}: {p['reason']}" for p in params)
    return _problem_response(422, problem(422, "Invalid request", detail, invalid_params=params))


@app.exception_handler(Exception)
def _failed(exc: Exception) -> Response[str]:
    status, body, headers = problem_for(exc)
    if status >= 500:
        logger.error("request failed", status=status, error=type(exc).__name__, reason=body["detail"])
    else:
        logger.info("request refused", status=status, error=type(exc).__name__)
    return _problem_response(status, body, headers)


@app.not_found
def _not_found(exc: NotFoundError) -> Response[str]:
    path = app.current_event.path
    for pattern, methods in ROUTES.items():
        if re.fullmatch(pattern, path) and app.current_event.http_method not in methods:
            return _problem_response(
                405,
                problem(405, "Method not allowed", f"{path} allows {', '.join(sorted(methods))}."),
                {"Allow": ", ".join(sorted(methods))},
            )
    return _problem_response(404, problem(404, "Not found", f"No route {path}."))


def openapi_document() -> str:
    """The API's OpenAPI document, generated from the routes (committed as openapi.json)."""
    return app.get_openapi_json_schema(
        title="account-ops settings API",
        version="1.0.0",
        description="Callback URLs, balance, API secrets and senders of the Vonage account (AWS_IAM auth).",
    )


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, log_event=False)
@metrics.log_metrics(capture_cold_start_metric=True)
@deadline.bounded(cap=deadline.API_GATEWAY_LIMIT_SECONDS)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if len(event.get("body") or "") > MAX_BODY_BYTES:  # before any parsing
        body = problem(413, "Body too large", f"The body must be at most {MAX_BODY_BYTES} bytes.")
        return {"statusCode": 413, "headers": {"Content-Type": PROBLEM_CONTENT_TYPE}, "body": json.dumps(body)}
    return app.resolve(event, context)
