"""Vonage credentials from Secrets Manager, cached, and a 401 answered by one refresh and one retry.

The current credentials come through the Powertools parameters cache (`get_secret`, 300 s, and
`force_fetch` after a 401) over the shared boto3 client. Rotation and the top-up reference read
named versions with plain boto3 (`read_credentials`): the parameters cache does not key on a
version stage.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import ValidationError

from . import aws_clients, errors
from .client import API_BASE_URL, REST_BASE_URL, AccountClient, ClientOptions
from .config import timeouts
from .deadline import DeadlineExceededError
from .models import Credentials

T = TypeVar("T")

CACHE_SECONDS = 300


class CredentialsUnavailableError(errors.AccountApiError):
    """The Vonage secret could not be read or does not hold usable credentials."""


class NotConfiguredError(CredentialsUnavailableError):
    """The secret still holds the first deploy's placeholder: a state to report, not to retry."""

    def __init__(self) -> None:
        super().__init__(
            "the Vonage secret still holds the placeholder: put the real api_key, api_secret and topup_trx into it",
            operation="configuration",
        )


def _unavailable(exc: BaseException) -> errors.AccountApiError:
    """What a failed read becomes. Names only the error's class: botocore's errors carry no secret
    value, but nothing of the answer is worth repeating either."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, DeadlineExceededError) or isinstance(cause, DeadlineExceededError):
        return DeadlineExceededError("getSecretValue")
    name = aws_clients.error_code(cause or exc) or aws_clients.error_code(exc) or type(cause or exc).__name__
    return CredentialsUnavailableError(f"could not read the Vonage secret ({name})", operation="getSecretValue")


def read_credentials(secret_arn: str, *, stage: str = "AWSCURRENT", version_id: str | None = None) -> Credentials:
    """Read one version of the Vonage secret with plain boto3 (no cache) and validate it."""
    kwargs: dict[str, Any] = {"SecretId": secret_arn}
    if version_id:
        kwargs["VersionId"] = version_id
    else:
        kwargs["VersionStage"] = stage
    try:
        response = aws_clients.client("secretsmanager").get_secret_value(**kwargs)
    except Exception as exc:
        raise _unavailable(exc) from None
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
    """The current credentials of one secret, through the Powertools parameters cache."""

    def __init__(self, secret_arn: str, *, max_age: int = CACHE_SECONDS) -> None:
        self.secret_arn = secret_arn
        self.max_age = max_age
        self._provider: Any = None
        self._lock = threading.Lock()

    def _secrets(self) -> Any:
        with self._lock:
            if self._provider is None:
                from aws_lambda_powertools.utilities.parameters import SecretsProvider

                self._provider = SecretsProvider(boto3_client=aws_clients.client("secretsmanager"))
            return self._provider

    def get(self, *, force: bool = False) -> Credentials:
        try:
            text = self._secrets().get(
                self.secret_arn, max_age=self.max_age, force_fetch=force, VersionStage="AWSCURRENT"
            )
        except Exception as exc:
            raise _unavailable(exc) from None
        return parse_credentials(text if isinstance(text, str) else "")


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
            options=options or ClientOptions.from_timeouts(timeouts()),
        )

    def through(self, secret_arn: str, *, max_age: int = CACHE_SECONDS) -> VonageAccount:
        """The same Vonage servers and options, through another secret (a fleet account's)."""
        return VonageAccount(
            CredentialStore(secret_arn, max_age=max_age),
            rest_base_url=self.rest_base_url,
            api_base_url=self.api_base_url,
            options=self.options,
        )

    def credentials(self, *, force: bool = False) -> Credentials:
        return self.store.get(force=force)

    def client(self, *, force_refresh: bool = False) -> AccountClient:
        creds = self.store.get(force=force_refresh)
        if creds.is_placeholder:
            raise NotConfiguredError
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
