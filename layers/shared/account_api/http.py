"""What the settings API refuses before routing: a method the path does not allow (405), a body
that is not JSON (415) or too large (413). Answered as RFC 7807 problems, before any parsing, so no
such request can reach a route, Vonage or the 5xx alarm."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any

from .problems import PROBLEM_CONTENT_TYPE, problem

JSON_MEDIA_TYPE = "application/json"
_METHODS_WITH_BODY = {"POST", "PUT", "PATCH"}


def refuse_before_routing(
    event: dict[str, Any], routes: Mapping[str, set[str]], max_body_bytes: int
) -> dict[str, Any] | None:
    """A proxy answer refusing the request, or None to route it. Normalises a JSON Content-Type
    (media types are case-insensitive) so the resolver sees `application/json`."""
    method = str(event.get("httpMethod") or "").upper()
    path = str(event.get("path") or "")
    if len(path) > 1 and path.endswith("/"):  # /secrets/rotate/ is /secrets/rotate, for us and the resolver
        path = path.rstrip("/") or "/"
        event["path"] = path
    for pattern, methods in routes.items():
        if re.fullmatch(pattern, path):
            if method not in methods:
                allowed = ", ".join(sorted(methods))
                return answer(405, "Method not allowed", f"{path} allows {allowed}.", {"Allow": allowed})
            break
    body = body_bytes(event)
    if body is None:
        return answer(400, "Malformed body", "The body is marked base64 but does not decode.")
    if len(body) > max_body_bytes:
        return answer(413, "Body too large", f"The body must be at most {max_body_bytes} bytes (UTF-8).")
    if body and method in _METHODS_WITH_BODY:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            return answer(400, "Malformed body", "The body is not UTF-8 (JSON must be).")
        media_type = content_type(event).split(";", 1)[0].strip().lower()
        if media_type != JSON_MEDIA_TYPE:
            shown = media_type or "none"
            return answer(
                415,
                "Unsupported media type",
                f"The body must be JSON (Content-Type: {JSON_MEDIA_TYPE}); got {shown[:100]}.",
                {"Accept-Post": JSON_MEDIA_TYPE, "Accept-Patch": JSON_MEDIA_TYPE},
                invalid_params=[{"name": "Content-Type", "reason": f"must be {JSON_MEDIA_TYPE}"}],
            )
        _set_header(event, "Content-Type", JSON_MEDIA_TYPE)
    return None


def body_bytes(event: Mapping[str, Any]) -> bytes | None:
    """The body as the client sent it (bytes, not characters), or None when it cannot be decoded."""
    raw = event.get("body") or ""
    if event.get("isBase64Encoded"):
        try:
            return base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            return None
    return str(raw).encode("utf-8", "surrogatepass")


def content_type(event: Mapping[str, Any]) -> str:
    for source in ("headers", "multiValueHeaders"):
        for name, value in (event.get(source) or {}).items():
            if name.lower() == "content-type":
                return str(value[-1] if isinstance(value, list) and value else value or "")
    return ""


def _set_header(event: dict[str, Any], header: str, value: str) -> None:
    for source, wrap in (("headers", False), ("multiValueHeaders", True)):
        headers = event.get(source)
        if not isinstance(headers, dict):
            continue
        for name in [n for n in headers if n.lower() == header.lower()]:
            del headers[name]
        headers[header] = [value] if wrap else value


def answer(
    status: int, title: str, detail: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> dict[str, Any]:
    """A REST API proxy answer carrying a problem."""
    return {
        "statusCode": status,
        "headers": {"Content-Type": PROBLEM_CONTENT_TYPE, **(headers or {})},
        "body": json.dumps(problem(status, title, detail, **extra)),
    }
