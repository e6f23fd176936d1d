"""account_api: the Account API layer shared by the three functions.

Names are loaded on first use (PEP 562) so that a handler pays at cold start only for what its
path needs: the settings API never imports the rotation logic, the rotation never imports the
callback check.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .callbacks import CallbackCheck, check_callback_url
    from .client import AccountClient, ClientOptions
    from .credentials import CredentialStore, CredentialsUnavailableError, VonageAccount
    from .errors import (
        AccountApiError,
        ApiKeyNotFoundError,
        ApiTimeoutError,
        AuthenticationError,
        AutoReloadNotEnabledError,
        ForbiddenError,
        InvalidInputError,
        InvalidRequestError,
        LastSecretError,
        MaxSecretsError,
        NotFoundError,
        RateLimitedError,
        SecretNotFoundError,
        SecretRulesError,
        ServerError,
        TopUpRefusedError,
        TransportError,
        UnreadableResponseError,
    )
    from .models import AccountSettings, Balance, Credentials, SecretInfo, SenderRegistration, TopUpResult

__all__ = [
    "AccountApiError",
    "AccountClient",
    "AccountSettings",
    "ApiKeyNotFoundError",
    "ApiTimeoutError",
    "AuthenticationError",
    "AutoReloadNotEnabledError",
    "Balance",
    "CallbackCheck",
    "ClientOptions",
    "CredentialStore",
    "Credentials",
    "CredentialsUnavailableError",
    "ForbiddenError",
    "InvalidInputError",
    "InvalidRequestError",
    "LastSecretError",
    "MaxSecretsError",
    "NotFoundError",
    "RateLimitedError",
    "SecretInfo",
    "SecretNotFoundError",
    "SecretRulesError",
    "SenderRegistration",
    "ServerError",
    "TopUpRefusedError",
    "TopUpResult",
    "TransportError",
    "UnreadableResponseError",
    "VonageAccount",
    "check_callback_url",
]

# Where each name lives; everything else in __all__ is an error class from .errors.
_MODULES = {
    "CallbackCheck": "callbacks",
    "check_callback_url": "callbacks",
    "AccountClient": "client",
    "ClientOptions": "client",
    "CredentialStore": "credentials",
    "CredentialsUnavailableError": "credentials",
    "VonageAccount": "credentials",
    "AccountSettings": "models",
    "Balance": "models",
    "Credentials": "models",
    "SecretInfo": "models",
    "SenderRegistration": "models",
    "TopUpResult": "models",
}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'account_api' has no attribute {name!r}")
    module = _MODULES.get(name, "errors")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
