"""The one place that maps domain errors to HTTP answers (RFC 7807 application/problem+json).

Titles and details come from our own words and Vonage's labels, never from a credential.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from . import errors
from .deadline import DeadlineExceededError

PROBLEM_CONTENT_TYPE = "application/problem+json"


class InvalidParam(BaseModel):
    name: str = Field(description="The field, header or parameter at fault")
    reason: str = Field(description="Why it was refused")
    detail: str | None = None


class Problem(BaseModel):
    """RFC 7807 problem details, as every error of the settings API is answered."""

    model_config = ConfigDict(extra="allow", title="Problem")

    type: str = Field(default="about:blank")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str
    invalid_params: list[InvalidParam] | None = Field(default=None, description="The fields at fault (400, 415, 422)")


class ApiProblem(Exception):
    """An HTTP answer decided by the service layer (bad input it found, a conflict...)."""

    def __init__(self, status: int, title: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.extra = extra


def problem(status: int, title: str, detail: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    body.update(extra)
    return body


def problem_for(exc: Exception) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, problem body, extra headers) for any exception a route may raise."""
    headers: dict[str, str] = {}
    if isinstance(exc, ApiProblem):
        return exc.status, problem(exc.status, exc.title, exc.detail, **exc.extra), headers
    if isinstance(exc, errors.InvalidInputError):
        return (
            422,
            problem(
                422,
                "Invalid input",
                str(exc),
                invalid_params=[{"name": exc.field, "reason": exc.field_reason}],
            ),
            headers,
        )
    from .registry import RegistryError

    if isinstance(exc, RegistryError):
        status, title = {
            "not_found": (404, "No such account"),
            "exists": (409, "Account already in the fleet"),
            "conflict": (409, "The account changed since it was read"),
            "invalid": (502, "The account registry holds an item it cannot read"),
        }[exc.kind]
        return status, problem(status, title, exc.message), headers
    from .credentials import NotConfiguredError

    if isinstance(exc, NotConfiguredError):
        headers["Retry-After"] = "300"
        return (
            503,
            problem(
                503,
                "Not configured",
                "The Vonage secret still holds the placeholder. Put the real api_key, api_secret and topup_trx "
                "into it (README, Deploy), then try again.",
            ),
            headers,
        )
    if isinstance(exc, errors.RateLimitedError):
        retry = int(exc.retry_after) if exc.retry_after is not None else 30
        headers["Retry-After"] = str(max(1, retry))
        return 503, problem(503, "Vonage is rate limiting requests", "Try again later.", retry_after=retry), headers
    if isinstance(exc, errors.AuthenticationError):
        return (
            502,
            problem(
                502,
                "Vonage rejected the stored credentials",
                "The API key and secret in Secrets Manager were refused, also after re-reading them.",
            ),
            headers,
        )
    if isinstance(exc, errors.SubaccountsNotEnabledError):
        return (
            409,
            problem(
                409,
                "Subaccounts not enabled",
                "Vonage answered that this account is not provisioned for the Subaccounts API (restricted "
                "availability): ask Vonage to enable it.",
            ),
            headers,
        )
    if isinstance(exc, errors.NotFoundError) and exc.operation in ("retrieveSubaccount", "modifySubaccount"):
        return 404, problem(404, "No such subaccount", "Vonage lists no such subaccount of this primary."), headers
    if isinstance(exc, errors.SecretNotFoundError):
        return 404, problem(404, "Not Found", "No API secret with that id."), headers
    if isinstance(exc, errors.InvalidRequestError):
        return 422, problem(422, "Vonage refused the request", exc.reason, vonage_status=exc.status), headers
    if isinstance(exc, DeadlineExceededError):
        return (
            504,
            problem(504, "Out of time", "The request could not finish within the gateway's time limit; try again."),
            headers,
        )
    if isinstance(exc, errors.ApiTimeoutError):
        return 504, problem(504, "Vonage did not answer in time", f"{exc.operation} timed out."), headers
    if isinstance(exc, errors.AccountApiError):
        # Credentials unavailable, 5xx, unreadable answers, transport failures, unexpected 4xx.
        return 502, problem(502, "Upstream failure", _upstream_detail(exc)), headers
    aws = _aws_problem(exc)
    if aws is not None:
        return aws
    return 500, problem(500, "Internal error", "The request failed; see the function's logs."), headers


# Error codes with which AWS services say "slow down" (DynamoDB, Secrets Manager, SNS, STS).
_THROTTLED = {
    "ThrottlingException",
    "Throttling",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "LimitExceededException",
}
AWS_RETRY_AFTER_SECONDS = 5


def _aws_problem(exc: Exception) -> tuple[int, dict[str, Any], dict[str, str]] | None:
    """An AWS call that failed (botocore's errors, after its own retries): never a 500. Names the
    operation and the error code only: AWS's messages name resources, never a secret value, but
    nothing more than the code is needed to act."""
    from botocore import exceptions as aws

    retry = {"Retry-After": str(AWS_RETRY_AFTER_SECONDS)}
    if isinstance(exc, aws.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", "")) or "unknown"
        operation = exc.operation_name or "AWS"
        if code in _THROTTLED:
            return 503, problem(503, "AWS is throttling requests", f"{operation} was throttled; try again."), retry
        if code == "ResourceNotFoundException":
            detail = f"{operation}: a table or secret of the stack is missing ({code}); see docs/runbook.md."
            return 502, problem(502, "AWS resource missing", detail), {}
        return 502, problem(502, "AWS request failed", f"{operation} failed ({code})."), {}
    if isinstance(exc, aws.ConnectTimeoutError | aws.ReadTimeoutError):
        return 504, problem(504, "AWS did not answer in time", f"{type(exc).__name__}; try again."), {}
    if isinstance(exc, aws.ConnectionError | aws.HTTPClientError):
        return 503, problem(503, "AWS unreachable", f"{type(exc).__name__}; try again."), retry
    if isinstance(exc, aws.BotoCoreError):
        return 502, problem(502, "AWS request failed", f"{type(exc).__name__}."), {}
    return None


def _upstream_detail(exc: errors.AccountApiError) -> str:
    from .credentials import CredentialsUnavailableError

    if isinstance(exc, CredentialsUnavailableError):
        return f"Vonage credentials unavailable: {exc.message}"
    status = f" (HTTP {exc.status})" if exc.status else ""
    return f"{exc.operation or 'Vonage'} failed{status}: {exc.reason}"
