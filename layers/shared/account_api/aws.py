"""A small AWS client for the few calls the functions make (Secrets Manager, DynamoDB, SNS).

Why not boto3: importing boto3 and building a client costs about 0.3 s of every cold start, more
than the rest of a function. These services speak simple protocols (JSON over POST, or a form
for SNS), signed with Signature Version 4, which needs only hashlib and hmac, and `requests` is
loaded anyway for Vonage. The method names and arguments are boto3's (`get_secret_value(SecretId=...)`),
errors carry boto3's `response["Error"]["Code"]`, and `client.exceptions.<Code>` works, so code
and tests can use either. AWS_ENDPOINT_URL is honoured as boto3 does (the local stack points it at
moto's server). Credentials come from the environment, where Lambda puts them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from xml.etree import ElementTree

import requests

CONNECT_TIMEOUT = 2.0
READ_TIMEOUT = 5.0
# Reads are retried on throttling, 5xx and connection errors; writes are sent once.
IDEMPOTENT = {"GetSecretValue", "DescribeSecret", "ListSecretVersionIds", "GetItem", "Query", "Scan"}
RETRYABLE_CODES = {
    "ThrottlingException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "InternalServiceError",
    "InternalFailure",
    "ServiceUnavailable",
}


class AwsError(Exception):
    """An AWS error answer, shaped like botocore's ClientError (`response["Error"]["Code"]`)."""

    code = "AwsError"

    def __init__(self, code: str, message: str, status: int, operation: str) -> None:
        super().__init__(f"{operation}: {code} (HTTP {status}): {message[:200]}")
        self.code = code
        self.operation_name = operation
        self.response = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}


_ERROR_CLASSES: dict[str, type[AwsError]] = {}


class _Exceptions:
    """`client.exceptions.ConditionalCheckFailedException` and friends, made on first use and
    shared by every client, so an `except` names the same class whichever client raised."""

    def __getattr__(self, code: str) -> type[AwsError]:
        if code.startswith("_"):
            raise AttributeError(code)
        return self.by_code(code)

    @staticmethod
    def by_code(code: str) -> type[AwsError]:
        if code not in _ERROR_CLASSES:
            _ERROR_CLASSES[code] = type(code, (AwsError,), {"code": code})
        return _ERROR_CLASSES[code]


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def sign_v4(
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes,
    *,
    service: str,
    region: str,
    access_key: str,
    secret_key: str,
    session_token: str | None = None,
    now: datetime | None = None,
) -> dict[str, str]:
    """Headers with AWS Signature Version 4 added (the header form of the signature)."""
    now = now or datetime.now(UTC)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    parts = urllib.parse.urlsplit(url)
    signed = {k.lower(): " ".join(str(v).split()) for k, v in headers.items()}
    signed["host"] = parts.netloc
    signed["x-amz-date"] = amz_date
    if session_token:
        signed["x-amz-security-token"] = session_token
    names = ";".join(sorted(signed))
    query = "&".join(
        f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
        for k, v in sorted(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    )
    canonical = "\n".join(
        [
            method,
            urllib.parse.quote(parts.path or "/", safe="/-_.~"),
            query,
            "".join(f"{k}:{signed[k]}\n" for k in sorted(signed)),
            names,
            hashlib.sha256(body).hexdigest(),
        ]
    )
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(f"AWS4{secret_key}".encode(), day), region), service), "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    result = dict(headers)
    result["X-Amz-Date"] = amz_date
    if session_token:
        result["X-Amz-Security-Token"] = session_token
    result["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={names}, Signature={signature}"
    )
    return result


class _AwsClient:
    service = ""  # signing name and endpoint prefix
    env_name = ""  # AWS_ENDPOINT_URL_<env_name>

    def __init__(
        self, *, region: str | None = None, endpoint: str | None = None, session: requests.Session | None = None
    ) -> None:
        self.region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        suffix = "amazonaws.com.cn" if self.region.startswith("cn-") else "amazonaws.com"
        self.endpoint = (
            endpoint
            or os.environ.get(f"AWS_ENDPOINT_URL_{self.env_name}")
            or os.environ.get("AWS_ENDPOINT_URL")
            or f"https://{self.service}.{self.region}.{suffix}"
        ).rstrip("/")
        self._session = session or requests.Session()
        self._session.trust_env = False
        self.exceptions = _Exceptions()

    def _send(self, operation: str, body: bytes, headers: dict[str, str]) -> requests.Response:
        attempts = 3 if operation in IDEMPOTENT else 1
        for attempt in range(1, attempts + 1):
            signed = sign_v4(
                "POST",
                self.endpoint + "/",
                headers,
                body,
                service=self.service,
                region=self.region,
                access_key=os.environ.get("AWS_ACCESS_KEY_ID", ""),
                secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
                session_token=os.environ.get("AWS_SESSION_TOKEN") or None,
            )
            try:
                response = self._session.post(
                    self.endpoint + "/",
                    data=body,
                    headers=signed,
                    timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
                    allow_redirects=False,
                )
            except requests.RequestException as exc:
                if attempt == attempts:
                    raise self.exceptions.by_code("ConnectionError")(
                        "ConnectionError", type(exc).__name__, 0, operation
                    ) from None
            else:
                if response.status_code < 500 or attempt == attempts:
                    return response
            time.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    def _raise(self, operation: str, code: str, message: str, status: int) -> None:
        raise self.exceptions.by_code(code or "UnknownError")(code or "UnknownError", message, status, operation)


class _JsonProtocolClient(_AwsClient):
    target_prefix = ""
    content_type = "application/x-amz-json-1.1"

    def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(params).encode()
        headers = {"Content-Type": self.content_type, "X-Amz-Target": f"{self.target_prefix}.{operation}"}
        for attempt in range(3):
            response = self._send(operation, body, headers)
            if response.status_code < 300:
                result: dict[str, Any] = response.json() if response.content else {}
                return result
            try:
                error = response.json()
            except ValueError:
                error = {}
            code = (
                str(error.get("__type", "")).rsplit("#", 1)[-1]
                or str(response.headers.get("x-amzn-ErrorType", "")).split(":")[0]
            )
            if code in RETRYABLE_CODES and operation in IDEMPOTENT and attempt < 2:
                time.sleep(0.1 * 2**attempt)
                continue
            self._raise(operation, code, str(error.get("message") or error.get("Message") or ""), response.status_code)
        raise AssertionError("unreachable")

    def __getattr__(self, name: str) -> Callable[..., dict[str, Any]]:
        if name.startswith("_"):
            raise AttributeError(name)
        operation = "".join(part.capitalize() for part in name.split("_"))
        return lambda **params: self.call(operation, params)


class SecretsManagerClient(_JsonProtocolClient):
    service = "secretsmanager"
    env_name = "SECRETS_MANAGER"
    target_prefix = "secretsmanager"


class DynamoDBClient(_JsonProtocolClient):
    service = "dynamodb"
    env_name = "DYNAMODB"
    target_prefix = "DynamoDB_20120810"
    content_type = "application/x-amz-json-1.0"


class SnsClient(_AwsClient):
    service = "sns"
    env_name = "SNS"

    def publish(self, **params: str) -> dict[str, Any]:
        form = {"Action": "Publish", "Version": "2010-03-31", **params}
        body = urllib.parse.urlencode(form).encode()
        response = self._send("Publish", body, {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
        root = ElementTree.fromstring(response.content)  # noqa: S314 - AWS's answer; no DTDs are resolved
        if response.status_code >= 300:
            code = root.findtext(".//{*}Code") or ""
            self._raise("Publish", code, root.findtext(".//{*}Message") or "", response.status_code)
        return {"MessageId": root.findtext(".//{*}MessageId") or ""}
