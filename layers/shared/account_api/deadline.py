"""One wall-clock deadline per invocation, which every outbound call respects.

Each call has its own timeouts too, but a chain of calls (a Secrets Manager read, two callback
checks, two Vonage calls, a retry after a 401) could add up past the function's timeout or API
Gateway's 29 s. The handler sets the invocation's deadline from the Lambda context; the Vonage
client and the callback check never wait past it, and an AWS call attempt is not started unless
it can finish before it (see account_api.aws_clients).

A module-level value rather than a context variable: Lambda runs one invocation at a time per
process, and the callback check's worker threads must see it too.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from .errors import ApiTimeoutError

# Left for the handler to shape and return its answer after the last call gave up.
DEFAULT_MARGIN_SECONDS = 1.0
# API Gateway's REST integration timeout: the settings API must answer before it.
API_GATEWAY_LIMIT_SECONDS = 29.0

_deadline: float | None = None
R = TypeVar("R")


class _Context(Protocol):
    def get_remaining_time_in_millis(self) -> int: ...


class DeadlineExceededError(ApiTimeoutError):
    """The invocation's deadline leaves no time for this call: it was not sent."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what}: not started, the invocation's deadline is too close", operation=what, request_sent=False
        )


def start(context: _Context | None, *, cap: float | None = None, margin: float = DEFAULT_MARGIN_SECONDS) -> float:
    """Set this invocation's deadline: the context's remaining time (at most `cap`) less `margin`.
    Returns the seconds granted."""
    global _deadline
    seconds = context.get_remaining_time_in_millis() / 1000 if context is not None else 900.0
    if cap is not None:
        seconds = min(seconds, cap)
    seconds = max(0.0, seconds - margin)
    _deadline = time.monotonic() + seconds
    return seconds


def clear() -> None:
    global _deadline
    _deadline = None


def remaining() -> float | None:
    """Seconds left before the invocation's deadline, or None outside an invocation."""
    return None if _deadline is None else _deadline - time.monotonic()


def bound(seconds: float) -> float:
    """`seconds` from now, or less when the invocation's deadline comes first (as a monotonic time)."""
    own = time.monotonic() + seconds
    return own if _deadline is None else min(own, _deadline)


def bounded(
    *, cap: float | None = None, margin: float = DEFAULT_MARGIN_SECONDS
) -> Callable[[Callable[[Any, Any], R]], Callable[[Any, Any], R]]:
    """Decorate a Lambda handler: the invocation's deadline is set on entry and cleared on exit."""

    def decorate(handler: Callable[[Any, Any], R]) -> Callable[[Any, Any], R]:
        @functools.wraps(handler)
        def wrapper(event: Any, context: Any) -> R:
            start(context, cap=cap, margin=margin)
            try:
                return handler(event, context)
            finally:
                clear()

        return wrapper

    return decorate
