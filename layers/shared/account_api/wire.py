"""Reading Account API bodies (JSON or XML, both error formats) and mapping failures to typed errors."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any
from xml.etree import ElementTree

from . import errors


def parse_body(content: bytes, content_type: str) -> dict[str, Any]:
    """Parse a JSON or XML body into a dict. Raises ValueError when it is neither."""
    text = content.strip()
    if not text:
        return {}
    if "xml" in content_type or text.startswith(b"<"):
        return _xml_to_dict(text)
    parsed = json.loads(text)
    if not isinstance(parsed, dict):
        raise ValueError("body is not a JSON object")
    return parsed


def _xml_to_dict(text: bytes) -> dict[str, Any]:
    root = ElementTree.fromstring(text)  # noqa: S314 - Vonage's answer, no DTDs are resolved by ElementTree
    result: dict[str, Any] = {}
    for child in root:
        result[child.tag] = child.text.strip() if child.text else ""
    return result


def _lower(body: Mapping[str, Any], *keys: str) -> str:
    return " ".join(str(body.get(key, "")) for key in keys).lower()


MAX_REASON_LENGTH = 200
REDACTED = "[redacted]"
# Control characters, line and paragraph separators, and the invisible format characters that
# reorder or hide text (bidi overrides and isolates, zero-width characters, the BOM).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2028\u2029\u2060-\u2069\ufeff]+")


def clean_text(text: str, redact: Sequence[str] = (), limit: int = MAX_REASON_LENGTH) -> str:
    """Words from outside (Vonage's, an operator's) made safe to repeat in logs, alerts and history:
    no value we sent (a URL, the top-up reference, the secret), no control, bidi or zero-width
    characters, no line breaks, at most `limit` characters."""
    for value in sorted((v for v in redact if v and len(v) >= 4), key=len, reverse=True):
        text = text.replace(value, REDACTED)
    text = " ".join(_CONTROL.sub(" ", text).split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _clean_body(value: Any, redact: Sequence[str]) -> Any:
    if isinstance(value, str):
        return clean_text(value, redact)
    if isinstance(value, dict):
        return {str(k)[:64]: _clean_body(v, redact) for k, v in list(value.items())[:50]}
    if isinstance(value, list):
        return [_clean_body(v, redact) for v in value[:50]]
    return value


MAX_MESSAGE_LENGTH = 400


def sanitized(error: errors.AccountApiError, redact: Sequence[str]) -> errors.AccountApiError:
    """The error as the client raises it: every text in it, whatever the far end sent (a body of
    an unexpected shape included), redacted, free of control characters and bounded."""
    error.message = clean_text(error.message, redact, limit=MAX_MESSAGE_LENGTH)
    error.args = (error.message,)
    error.body = _clean_body(error.body, redact)
    return error


SUBACCOUNT_OPERATIONS = frozenset(
    {
        "retrieveSubaccountsList",
        "retrieveSubaccount",
        "createSubAccount",
        "modifySubaccount",
        "transferBalance",
        "retrieveBalanceTransfers",
    }
)


def error_for(
    operation: str,
    status: int,
    body: dict[str, Any],
    headers: Mapping[str, str],
    *,
    sent: Sequence[str] = (),
) -> errors.AccountApiError | None:
    """The typed error an answer stands for, or None when it is a success.

    Both of the spec's error formats are understood: the `error-code`/`error-code-label` bodies of
    rest.nexmo.com and the `type/title/detail/instance` problem bodies of api.nexmo.com. A 200 whose
    body carries an `error-code` other than "200" is an error too.
    """
    code = str(body.get("error-code", "")).strip()
    if status < 300 and (not code or code == "200"):
        return None
    body = _clean_body(body, sent)  # everything the error carries is safe to log and alert
    code = clean_text(code, sent, limit=16)
    label = _lower(body, "error-code-label", "title", "detail", "type")
    message = f"{operation}: HTTP {status}"
    if code and code != str(status):
        message += f" error-code {code}"
    reason = str(body.get("error-code-label") or body.get("detail") or body.get("title") or "")
    if reason:
        message += f" ({reason})"
    kwargs: dict[str, Any] = {"operation": operation, "status": status, "body": body}

    if code == "420":
        return errors.TopUpRefusedError(message, **kwargs)
    if "auto-reload" in label or "auto reload" in label:
        return errors.AutoReloadNotEnabledError(message, **kwargs)
    if status == 401 or code == "401":
        return errors.AuthenticationError(message, **kwargs)
    if status == 400 and body.get("invalid_parameters") and operation == "createAPISecret":
        return errors.SecretRulesError(message, **kwargs)
    if status == 403:
        if operation in SUBACCOUNT_OPERATIONS or "unprovisioned" in label or "not provisioned" in label:
            return errors.SubaccountsNotEnabledError(message, **kwargs)
        if "maximum" in label:
            return errors.MaxSecretsError(message, **kwargs)
        if "last" in label and "secret" in label:
            return errors.LastSecretError(message, **kwargs)
        return errors.ForbiddenError(message, **kwargs)
    if status == 404:
        if "api key" in label or "api-key" in label:
            return errors.ApiKeyNotFoundError(message, **kwargs)
        if "invalid id" in label or "invalid-id" in label or "secret" in label:
            return errors.SecretNotFoundError(message, **kwargs)
        return errors.NotFoundError(message, **kwargs)
    if status == 429:
        return errors.RateLimitedError(message, retry_after=retry_after_seconds(headers.get("Retry-After")), **kwargs)
    if status >= 500:
        return errors.ServerError(message, **kwargs)
    return errors.InvalidRequestError(message, **kwargs)


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After in seconds (only the delta-seconds form; an HTTP date is ignored)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
