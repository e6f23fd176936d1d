"""boto3 clients for Secrets Manager, DynamoDB, SNS and SQS: created lazily, once per process, shared.

boto3 comes with the Lambda runtime (the layer does not ship it). Every client has the same
botocore `Config`: connect and read timeouts, the standard retry mode (throttling, 5xx and
connection errors, with jittered backoff), and a bounded number of attempts. Credentials and
endpoints come from the default chains, so AWS_ENDPOINT_URL points the local stack and the tests
at moto, and profiles, SSO or container credentials work wherever the code runs.

On top of botocore's own bounds, no attempt is started unless it can finish before the
invocation's deadline (account_api.deadline): a call chain can never outlive the function.
"""

from __future__ import annotations

import threading
from typing import Any

from . import deadline
from .config import timeouts

_clients: dict[str, Any] = {}
_session: Any = None
_lock = threading.Lock()


def botocore_config() -> Any:
    from botocore.config import Config

    t = timeouts()
    return Config(
        connect_timeout=t.aws_connect_timeout,
        read_timeout=t.aws_read_timeout,
        retries={"mode": "standard", "total_max_attempts": t.aws_max_attempts},
        max_pool_connections=4,
        user_agent_extra="account-ops",
    )


def attempt_worst_case_seconds() -> float:
    """The longest one attempt can take: connecting plus waiting for the answer."""
    t = timeouts()
    return t.aws_connect_timeout + t.aws_read_timeout


def client(service: str) -> Any:
    """The process's client for `service` ("secretsmanager", "dynamodb", "sns", "sqs")."""
    global _session
    with _lock:
        existing = _clients.get(service)
        if existing is None:
            if _session is None:  # one session: its loaded endpoint and model data serve every client
                import boto3

                _session = boto3.session.Session()
            existing = _session.client(service, config=botocore_config())
            existing.meta.events.register("before-send", _refuse_past_deadline)
            _clients[service] = existing
        return existing


def reset() -> None:
    """Forget every client (tests and the local stack: a client belongs to one endpoint)."""
    global _session
    with _lock:
        _clients.clear()
        _session = None


def _refuse_past_deadline(request: Any, **kwargs: Any) -> None:
    """botocore's before-send hook, run before every attempt, retries included. Raising here stops
    the call without sending (botocore does not retry our own exception)."""
    left = deadline.remaining()
    if left is not None and left < attempt_worst_case_seconds():
        operation = str(kwargs.get("event_name", "before-send.aws")).split(".")[-1]
        raise deadline.DeadlineExceededError(operation)


def error_code(exc: BaseException) -> str:
    """botocore's error code (`response["Error"]["Code"]`) of an exception, or ""."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""
