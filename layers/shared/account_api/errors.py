"""Typed errors of the Account API client.

Every error carries the HTTP status and the parsed body Vonage answered with, so callers can act on
the class and still show Vonage's own reason. Messages never contain a credential or the top-up
reference: they are built from the operation name and Vonage's labels only.
"""

from __future__ import annotations

from typing import Any


class AccountApiError(Exception):
    """Base class: something went wrong talking to the Vonage Account API."""

    def __init__(
        self,
        message: str,
        *,
        operation: str = "",
        status: int | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.operation = operation
        self.status = status
        self.body = body or {}

    @property
    def reason(self) -> str:
        """Vonage's own words for the failure, when it gave any."""
        body = self.body
        for key in ("detail", "error-code-label", "title"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return value
        return self.message


class InvalidInputError(AccountApiError, ValueError):
    """Refused before sending: a parameter breaks the API's rules."""

    def __init__(self, field: str, reason: str, *, operation: str = "") -> None:
        super().__init__(f"{field}: {reason}", operation=operation)
        self.field = field
        self.field_reason = reason


class AuthenticationError(AccountApiError):
    """401: the API key and secret were not accepted."""


class AutoReloadNotEnabledError(AccountApiError):
    """Top-up refused because auto-reload is off on the account."""


class TopUpRefusedError(AccountApiError):
    """Top-up refused by the payment side (error-code 420, "topup failed")."""


class SecretRulesError(AccountApiError):
    """400: the new secret breaks Vonage's rules; `invalid_parameters` lists why."""

    @property
    def invalid_parameters(self) -> list[dict[str, Any]]:
        params = self.body.get("invalid_parameters")
        return [p for p in params if isinstance(p, dict)] if isinstance(params, list) else []


class InvalidRequestError(AccountApiError):
    """Another 4xx refusal of the request's content (for example a callback URL Vonage rejects)."""


class ForbiddenError(AccountApiError):
    """403 for a reason other than the secret limits."""


class MaxSecretsError(ForbiddenError):
    """403: the account already holds the maximum number of API secrets (two)."""


class SubaccountsNotEnabledError(ForbiddenError):
    """403 from the Subaccounts API: the account is not provisioned for it (restricted availability
    at Vonage). A state to report, not a failure to retry."""


class LastSecretError(ForbiddenError):
    """403: the secret is the account's last one and cannot be revoked."""


class NotFoundError(AccountApiError):
    """404."""


class ApiKeyNotFoundError(NotFoundError):
    """404: the API key in the path is unknown."""


class SecretNotFoundError(NotFoundError):
    """404: the secret id is unknown."""


class RateLimitedError(AccountApiError):
    """429: too many requests; `retry_after` is the server's hint in seconds, if any."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerError(AccountApiError):
    """5xx from Vonage."""


class TransportError(AccountApiError):
    """The exchange failed below HTTP. `request_sent` is False only when the request provably
    never left (the connection was never established); otherwise the server may have acted."""

    def __init__(self, message: str, *, request_sent: bool, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.request_sent = request_sent


class ApiTimeoutError(TransportError):
    """A deadline passed before the answer arrived."""


class UnreadableResponseError(AccountApiError):
    """The answer could not be parsed into what the operation returns."""


def outcome_unknown(error: AccountApiError) -> bool:
    """True when a non-idempotent call may have taken effect although it did not report success."""
    if isinstance(error, TransportError):
        return error.request_sent
    return isinstance(error, ServerError | UnreadableResponseError | RateLimitedError)
