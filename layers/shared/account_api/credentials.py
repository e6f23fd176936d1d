"""Vonage credentials from Secrets Manager, cached, and a 401 answered by one refresh and one retry.

Our own small Secrets Manager client (account_api.aws), not boto3 nor the Powertools parameters
cache: rotation asks for version stages, and a cold start does not pay 0.3 s for boto3. It honours
AWS_ENDPOINT_URL, which is how the local stack reaches moto.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import ValidationError

from . import errors
from .client import API_BASE_URL, REST_BASE_URL, AccountClient, ClientOptions
from .models import Credentials

T = TypeVar("T")

CACHE_SECONDS = 300.0


class CredentialsUnavailableError(errors.AccountApiError):
    """The Vonage secret could not be read or does not hold usable credentials."""


def secrets_manager_client() -> Any:
    """One Secrets Manager client per process (it keeps a connection pool)."""
    global _SM_CLIENT
    with _SM_LOCK:
        if _SM_CLIENT is None:
            from .aws import SecretsManagerClient

            _SM_CLIENT = SecretsManagerClient()
        return _SM_CLIENT


_SM_CLIENT: Any = None
_SM_LOCK = threading.Lock()


def read_credentials(
    secret_arn: str, *, stage: str = "AWSCURRENT", version_id: str | None = None, sm: Any = None
) -> Credentials:
    """Read and validate the Vonage secret's JSON. Errors never quote the secret's content."""
    sm = sm or secrets_manager_client()
    kwargs: dict[str, Any] = {"SecretId": secret_arn}
    if version_id:
        kwargs["VersionId"] = version_id
    else:
        kwargs["VersionStage"] = stage
    try:
        response = sm.get_secret_value(**kwargs)
    except Exception as exc:  # botocore's errors carry no secret value
        raise CredentialsUnavailableError(
            f"could not read the Vonage secret ({type(exc).__name__})", operation="getSecretValue"
        ) from None
    return parse_credentials(response.get("SecretString") or "")


def parse_credentials(secret_string: str) -> Credentials:
    try:
        data = json.loads(secret_string)
    except ValueError:
        raise CredentialsUnavailableError("the Vonage secret is not JSON", operation="getSecretValue") from None
    if not isinstance(data, dict):
        raise CredentialsUnavailableError("the Vonage secret is not a JSON object", operation="getSecretValue")
    try:
        return Credentials.model_validate(data)
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors(include_input=False))
        raise CredentialsUnavailableError(
            f"the Vonage secret lacks valid fields: {fields}", operation="getSecretValue"
        ) from None


class CredentialStore:
    """Caches the current credentials of one secret for `ttl` seconds."""

    def __init__(self, secret_arn: str, *, ttl: float = CACHE_SECONDS, sm: Any = None) -> None:
        self.secret_arn = secret_arn
        self.ttl = ttl
        self._sm = sm
        self._lock = threading.Lock()
        self._cached: Credentials | None = None
        self._fetched_at = 0.0

    def get(self, *, force: bool = False) -> Credentials:
        with self._lock:
            fresh = self._cached is not None and time.monotonic() - self._fetched_at < self.ttl
            if force or not fresh:
                self._cached = read_credentials(self.secret_arn, sm=self._sm)
                self._fetched_at = time.monotonic()
            assert self._cached is not None
            return self._cached


class VonageAccount:
    """The Account API as seen through the stored credentials.

    `call(fn)` runs `fn` with a client for the current credentials; when Vonage answers 401 it
    re-reads the secret once (it may have been rotated since it was cached) and retries once.
    """

    def __init__(
        self,
        store: CredentialStore,
        *,
        rest_base_url: str = REST_BASE_URL,
        api_base_url: str = API_BASE_URL,
        options: ClientOptions | None = None,
    ) -> None:
        self.store = store
        self.rest_base_url = rest_base_url
        self.api_base_url = api_base_url
        self.options = options or ClientOptions()
        self._client: AccountClient | None = None
        self._client_for: Credentials | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_environment(cls, options: ClientOptions | None = None) -> VonageAccount:
        """VONAGE_SECRET_ARN names the secret; VONAGE_REST_BASE_URL / VONAGE_API_BASE_URL override
        the servers (the local stack points them at the simulator)."""
        arn = os.environ.get("VONAGE_SECRET_ARN", "")
        if not arn:
            raise CredentialsUnavailableError("VONAGE_SECRET_ARN is not set", operation="configuration")
        return cls(
            CredentialStore(arn),
            rest_base_url=os.environ.get("VONAGE_REST_BASE_URL") or REST_BASE_URL,
            api_base_url=os.environ.get("VONAGE_API_BASE_URL") or API_BASE_URL,
            options=options,
        )

    def credentials(self, *, force: bool = False) -> Credentials:
        return self.store.get(force=force)

    def client(self, *, force_refresh: bool = False) -> AccountClient:
        creds = self.store.get(force=force_refresh)
        with self._lock:
            if self._client is None or self._client_for != creds:
                if self._client is not None:
                    self._client.close()
                self._client = self.client_for(creds)
                self._client_for = creds
            return self._client

    def client_for(self, creds: Credentials, *, api_secret: str | None = None) -> AccountClient:
        """A client for given credentials (rotation tests a pending secret this way)."""
        return AccountClient(
            api_key=creds.api_key,
            api_secret=api_secret if api_secret is not None else creds.api_secret,
            rest_base_url=self.rest_base_url,
            api_base_url=self.api_base_url,
            options=self.options,
        )

    def call(self, fn: Callable[[AccountClient], T], *, retry_on_401: bool = True) -> T:
        """`retry_on_401=False` for a money-moving call: it is sent once per decision, even though
        a 401 means Vonage did not act; the secret is still re-read for the calls after it."""
        try:
            return fn(self.client())
        except errors.AuthenticationError:
            client = self.client(force_refresh=True)
            if not retry_on_401:
                raise
            return fn(client)
