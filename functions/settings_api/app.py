"""Settings API: read and change the account's callback URLs, behind API Gateway (AWS_IAM).

A thin adapter: each route parses its input, calls one function of account_api.settings and
shapes the answer. Errors become RFC 7807 problems in one place (account_api.problems).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.params import Path, Query
from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel

from account_api import deadline, http, switch
from account_api import settings as service
from account_api.accounts import (
    AccountChange,
    AccountList,
    AccountView,
    Fleet,
    FleetConfig,
    NewAccount,
    SubaccountChange,
    SubaccountsView,
    SubaccountView,
)
from account_api.callbacks import CallbackChecker
from account_api.credentials import VonageAccount
from account_api.observability import logger, metrics
from account_api.problems import PROBLEM_CONTENT_TYPE, Problem, problem, problem_for
from account_api.version import __version__

MAX_BODY_BYTES = 8 * 1024
ROUTES = {  # path pattern -> allowed methods; the first pattern that matches decides (405 answers)
    r"/settings": {"GET", "PUT"},
    r"/balance": {"GET"},
    r"/secrets": {"GET"},
    r"/secrets/rotate": {"POST"},
    r"/secrets/[^/]+": {"GET"},
    r"/senders": {"POST"},
    r"/rotation": {"GET"},
    r"/topups": {"GET", "PUT"},
    r"/history": {"GET"},
    r"/version": {"GET"},
    r"/accounts": {"GET", "POST"},
    r"/accounts/[^/]+": {"GET", "PUT", "DELETE"},
    r"/accounts/[^/]+/balance": {"GET"},
    r"/accounts/[^/]+/secrets": {"GET"},
    r"/accounts/[^/]+/settings": {"GET", "PUT"},
    r"/accounts/[^/]+/rotation": {"GET"},
    r"/accounts/[^/]+/secrets/rotate": {"POST"},
    r"/accounts/[^/]+/history": {"GET"},
    r"/accounts/[^/]+/subaccounts": {"GET"},
    r"/accounts/[^/]+/subaccounts/[^/]+": {"GET", "PUT"},
}

# Every status an operation can answer; each error is an RFC 7807 problem (account_api.problems).
_PROBLEM_TEXTS = {
    400: "Malformed JSON or body",
    404: "No such secret or account",
    405: "Method not allowed for this path (see the Allow header)",
    409: "A rotation is already in progress or not configured, the account exists or changed since it was read, "
    "or it is not a primary or not enabled for subaccounts at Vonage",
    413: "Body larger than 8 KiB",
    415: "Body is not application/json",
    422: "Invalid input (invalid_params names each field), a failed callback check, or Vonage refused it",
    502: "Vonage or an AWS service (Secrets Manager, DynamoDB) failed, or Vonage refused the stored credentials",
    503: "Vonage or AWS is rate limiting requests, or AWS is unreachable (see Retry-After)",
    504: "Vonage or AWS did not answer in time, or the request ran out of time",
}
UPSTREAM = (502, 503, 504)


def _answers(*statuses: int, success: tuple[int, str, type[BaseModel]]) -> dict[int, OpenAPIResponse]:
    """The documented answers of an operation: its success and its problems."""
    answers = {
        status: OpenAPIResponse(description=_PROBLEM_TEXTS[status], content={PROBLEM_CONTENT_TYPE: {"model": Problem}})
        for status in statuses
    }
    code, text, model = success
    answers[code] = OpenAPIResponse(description=text, content={"application/json": {"model": model}})
    return answers


app = APIGatewayRestResolver(enable_validation=True)
account = VonageAccount.from_environment()
checker = CallbackChecker()
tables = service.Tables.from_environment()
fleet = Fleet(FleetConfig.from_environment(), account)
_declared: dict[tuple[str, str], set[int]] = {}  # (METHOD, OpenAPI path) -> the statuses it documents


def _route(method: str, path: str, *statuses: int, success: tuple[int, str, type[BaseModel]]) -> Any:
    """Register a route with every answer it can give documented."""
    _declared[(method, path.replace("<", "{").replace(">", "}"))] = {success[0], *statuses}
    return app.route(path, method=method, responses=_answers(*statuses, success=success))


def _problem_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response[str]:
    return Response(status_code=status, content_type=PROBLEM_CONTENT_TYPE, body=json.dumps(body), headers=headers)


def _caller() -> str:
    identity = app.current_event.request_context.identity
    return identity.user_arn or identity.caller or "unknown"


@_route("GET", "/settings", *UPSTREAM, success=(200, "The callback URLs and limits", service.SettingsView))
def get_settings() -> service.SettingsView:
    return service.read_settings(account)


@_route(
    "PUT",
    "/settings",
    400,
    413,
    415,
    422,
    *UPSTREAM,
    success=(200, "Checked, then changed", service.SettingsChangeResult),
)
def put_settings(change: service.SettingsChangeRequest) -> service.SettingsChangeResult:
    return service.change_settings(account, change, checker, _caller())


@_route("GET", "/balance", *UPSTREAM, success=(200, "The balance", service.BalanceView))
def get_balance() -> service.BalanceView:
    return service.read_balance(account)


@_route("GET", "/secrets", *UPSTREAM, success=(200, "Ids and creation times", service.SecretsView))
def get_secrets() -> service.SecretsView:
    return service.list_secrets(account)


@_route("POST", "/secrets/rotate", 409, 413, 415, *UPSTREAM, success=(202, "Rotation started", service.RotationStarted))
def rotate_secret() -> Response[service.RotationStarted]:
    return Response(
        status_code=202, content_type="application/json", body=service.request_rotation(account.store.secret_arn)
    )


@_route("GET", "/secrets/<secret_id>", 404, 405, 422, *UPSTREAM, success=(200, "One secret", service.SecretView))
def get_secret(secret_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$")]) -> service.SecretView:
    return service.get_secret(account, secret_id)


@_route("GET", "/rotation", *UPSTREAM, success=(200, "Where the rotation stands", service.RotationState))
def get_rotation() -> service.RotationState:
    return service.rotation_state(account.store.secret_arn)


@_route("GET", "/topups", *UPSTREAM, success=(200, "Whether top-ups are paused, by whom and why", switch.TopUpSwitch))
def get_topups() -> switch.TopUpSwitch:
    return switch.read_topup_switch(tables.state_table)


@_route("PUT", "/topups", 400, 413, 415, 422, *UPSTREAM, success=(200, "The switch as set", switch.TopUpSwitch))
def put_topups(change: switch.TopUpSwitchChange) -> switch.TopUpSwitch:
    return switch.change_topup_switch(
        tables.state_table,
        change,
        _caller(),
        history_table=tables.history_table,
        account_key=account.credentials().api_key,
    )


@_route(
    "GET",
    "/history",
    422,
    *UPSTREAM,
    success=(200, "The watcher's decisions and switch changes, newest first, a page at a time", service.History),
)
def get_history(
    days: Annotated[int, Query(ge=1, le=90)] = 7,
    limit: Annotated[int, Query(ge=1, le=service.HISTORY_PAGE_MAX)] = service.HISTORY_PAGE_DEFAULT,
    cursor: Annotated[str | None, Query(pattern=service.CURSOR_PATTERN)] = None,
) -> service.History:
    return service.read_history(account, tables.history_table, days, limit=limit, cursor=cursor)


@_route("GET", "/version", success=(200, "The release of account-ops that answers", service.VersionView))
def get_version() -> service.VersionView:
    return service.VersionView(version=__version__)


@_route("POST", "/senders", 400, 413, 415, 422, *UPSTREAM, success=(201, "Sender registered", service.SenderView))
def post_sender(sender: service.SenderRequest) -> Response[service.SenderView]:
    return Response(status_code=201, content_type="application/json", body=service.register_sender(account, sender))


# -- the fleet: /accounts, and the single-account routes for one account of it ----------------------

ApiKey = Annotated[str, Path(pattern=r"^[A-Za-z0-9]{4,32}$")]


@_route("GET", "/accounts", 422, *UPSTREAM, success=(200, "The fleet's accounts (never a credential)", AccountList))
def list_accounts(removed: Annotated[bool, Query()] = False) -> AccountList:
    return fleet.list(removed_too=removed)


@_route(
    "POST",
    "/accounts",
    400,
    409,
    413,
    415,
    422,
    *UPSTREAM,
    success=(201, "Credentials checked with one balance read, stored, rotated and watched", AccountView),
)
def add_account(new: NewAccount) -> Response[AccountView]:
    return Response(status_code=201, content_type="application/json", body=fleet.add(new, _caller()))


@_route("GET", "/accounts/<api_key>", 404, 422, *UPSTREAM, success=(200, "One account", AccountView))
def show_account(api_key: ApiKey) -> AccountView:
    return fleet.show(api_key)


@_route("PUT", "/accounts/<api_key>", 400, 404, 409, 413, 415, 422, *UPSTREAM, success=(200, "Changed", AccountView))
def change_account(api_key: ApiKey, change: AccountChange) -> AccountView:
    return fleet.change(api_key, change, _caller())


@_route(
    "DELETE",
    "/accounts/<api_key>",
    404,
    422,
    *UPSTREAM,
    success=(200, "No longer watched or rotated; history kept; secret scheduled for deletion", AccountView),
)
def remove_account(api_key: ApiKey) -> AccountView:
    return fleet.remove(api_key, _caller())


@_route("GET", "/accounts/<api_key>/balance", 404, 422, *UPSTREAM, success=(200, "The balance", service.BalanceView))
def get_account_balance(api_key: ApiKey) -> service.BalanceView:
    return service.read_balance(fleet.vonage(api_key))


@_route(
    "GET",
    "/accounts/<api_key>/secrets",
    404,
    422,
    *UPSTREAM,
    success=(200, "Ids and creation times", service.SecretsView),
)
def get_account_secrets(api_key: ApiKey) -> service.SecretsView:
    return service.list_secrets(fleet.vonage(api_key))


@_route("GET", "/accounts/<api_key>/settings", 404, 422, *UPSTREAM, success=(200, "Callbacks", service.SettingsView))
def get_account_settings(api_key: ApiKey) -> service.SettingsView:
    return service.read_settings(fleet.vonage(api_key))


@_route(
    "PUT",
    "/accounts/<api_key>/settings",
    400,
    404,
    413,
    415,
    422,
    *UPSTREAM,
    success=(200, "Checked, then changed", service.SettingsChangeResult),
)
def put_account_settings(api_key: ApiKey, change: service.SettingsChangeRequest) -> service.SettingsChangeResult:
    return service.change_settings(fleet.vonage(api_key), change, checker, _caller())


@_route(
    "GET", "/accounts/<api_key>/rotation", 404, 422, *UPSTREAM, success=(200, "Its rotation", service.RotationState)
)
def get_account_rotation(api_key: ApiKey) -> service.RotationState:
    return service.rotation_state(fleet.registry.current(api_key).secret_arn)


@_route(
    "POST",
    "/accounts/<api_key>/secrets/rotate",
    404,
    409,
    413,
    415,
    422,
    *UPSTREAM,
    success=(202, "Rotation started", service.RotationStarted),
)
def rotate_account_secret(api_key: ApiKey) -> Response[service.RotationStarted]:
    started = service.request_rotation(fleet.registry.current(api_key).secret_arn)
    return Response(status_code=202, content_type="application/json", body=started)


@_route("GET", "/accounts/<api_key>/history", 404, 422, *UPSTREAM, success=(200, "Its decisions", service.History))
def get_account_history(
    api_key: ApiKey,
    days: Annotated[int, Query(ge=1, le=90)] = 7,
    limit: Annotated[int, Query(ge=1, le=service.HISTORY_PAGE_MAX)] = service.HISTORY_PAGE_DEFAULT,
    cursor: Annotated[str | None, Query(pattern=service.CURSOR_PATTERN)] = None,
) -> service.History:
    fleet.registry.current(api_key, removed_too=True)  # a removed account's item is kept: its history stays readable
    return service.read_history_of(api_key, tables.history_table, days, limit=limit, cursor=cursor)


@_route(
    "GET",
    "/accounts/<api_key>/subaccounts",
    404,
    422,
    *UPSTREAM,
    success=(200, "Its subaccounts: balances, shared or own, suspended, settings, last transfer", SubaccountsView),
)
def get_subaccounts(api_key: ApiKey) -> SubaccountsView:
    return fleet.subaccounts(api_key)


@_route(
    "GET",
    "/accounts/<api_key>/subaccounts/<subaccount>",
    404,
    409,
    422,
    *UPSTREAM,
    success=(200, "One subaccount", SubaccountView),
)
def get_subaccount(api_key: ApiKey, subaccount: ApiKey) -> SubaccountView:
    return fleet.subaccount(api_key, subaccount)


@_route(
    "PUT",
    "/accounts/<api_key>/subaccounts/<subaccount>",
    400,
    404,
    409,
    413,
    415,
    422,
    *UPSTREAM,
    success=(200, "Its settings changed (kept in the primary's rule)", SubaccountView),
)
def change_subaccount(api_key: ApiKey, subaccount: ApiKey, change: SubaccountChange) -> SubaccountView:
    return fleet.change_subaccount(api_key, subaccount, change, _caller())


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
    return _problem_response(404, problem(404, "Not found", f"No route {app.current_event.path}."))


def openapi_document() -> str:
    """The API's OpenAPI document, generated from the routes (committed as openapi.json)."""
    document = json.loads(_generated_document())
    # The resolver documents a 422 on every route; keep it only where a route declares its own.
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if 422 not in _declared[(method.upper(), path)]:
                operation["responses"].pop("422", None)
    schemas = document["components"]["schemas"]
    while unused := [n for n in schemas if f'"#/components/schemas/{n}"' not in json.dumps(document)]:
        for name in unused:
            del schemas[name]
    return json.dumps(document, indent=2)


def _generated_document() -> str:
    # Only `make openapi` and the tests need these models: kept off the cold start (about 50 ms).
    from aws_lambda_powertools.event_handler.openapi.models import APIKey, APIKeyIn, Server, ServerVariable

    return app.get_openapi_json_schema(
        title="account-ops settings API",
        version=__version__,
        description="Callback URLs, balance, API secrets and senders of the Vonage account. Every request is "
        "signed with AWS Signature Version 4 by a principal allowed execute-api:Invoke (AWS_IAM).",
        servers=[
            Server(
                url="https://{restApiId}.execute-api.{region}.amazonaws.com/v1",
                description="The stack's stage (the SettingsApiUrl output)",
                variables={
                    "restApiId": ServerVariable(default="abc123", description="The REST API's id"),
                    "region": ServerVariable(default="eu-west-1", description="The stack's region"),
                },
            )
        ],
        security_schemes={
            "sigv4": APIKey(
                name="Authorization",
                in_=APIKeyIn.header,
                description="AWS Signature Version 4 (service execute-api), e.g. `account-ops` or awscurl",
                openapi_extensions={"x-amazon-apigateway-authtype": "awsSigv4"},
            )
        },
        security=[{"sigv4": []}],
    )


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, log_event=False)
@metrics.log_metrics(capture_cold_start_metric=True)
@deadline.bounded(cap=deadline.API_GATEWAY_LIMIT_SECONDS)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    refusal = http.refuse_before_routing(event, ROUTES, MAX_BODY_BYTES)
    if refusal is not None:  # wrong method, media type or size: answered before any parsing
        return refusal
    return app.resolve(event, context)
