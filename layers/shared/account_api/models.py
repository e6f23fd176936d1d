"""Pydantic models of the Account API's answers, with pythonic names and the wire names as aliases."""

from __future__ import annotations

import math
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator


class _WireModel(BaseModel):
    # Accept wire names and pythonic names; ignore fields Vonage may add later.
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)


class Balance(_WireModel):
    value: float = Field(description="The balance of the account, in EUR")
    auto_reload: bool = Field(alias="autoReload", description="Whether auto-reload is enabled")

    @field_validator("value")
    @classmethod
    def _finite_and_not_negative(cls, value: float) -> float:
        if math.isnan(value) or math.isinf(value):
            raise ValueError("balance is not a finite number")
        if value < 0:
            raise ValueError("balance is negative")
        return value


class TopUpResult(_WireModel):
    error_code: str = Field(alias="error-code")
    error_code_label: str = Field(default="", alias="error-code-label")


class AccountSettings(_WireModel):
    mo_callback_url: str | None = Field(default=None, alias="mo-callback-url")
    dr_callback_url: str | None = Field(default=None, alias="dr-callback-url")
    max_outbound_request: int | None = Field(default=None, alias="max-outbound-request")
    max_inbound_request: int | None = Field(default=None, alias="max-inbound-request")
    max_calls_per_second: int | None = Field(default=None, alias="max-calls-per-second")


class SenderRegistration(_WireModel):
    value: str
    provider: str = "email"
    name: str | None = None
    application_ids: list[str] = Field(default_factory=list)


class SecretInfo(_WireModel):
    id: str
    created_at: datetime


def _finite(value: float | None) -> float | None:
    if value is not None and (math.isnan(value) or math.isinf(value)):
        raise ValueError("not a finite number")
    return value


class Subaccount(_WireModel):
    """A subaccount (or the primary) as the Subaccounts API lists it. A subaccount that shares the
    primary's balance has `balance` and `credit_limit` null; one with credit has a negative
    `credit_limit` and may spend down to it, so a negative balance is low, not unreadable."""

    api_key: str = Field(min_length=1)
    name: str = ""
    primary_account_api_key: str = ""
    use_primary_account_balance: bool = False
    created_at: datetime | None = None
    suspended: bool = False
    balance: float | None = None
    credit_limit: float | None = None

    _check_balance = field_validator("balance", "credit_limit")(_finite)

    @property
    def shares_balance(self) -> bool:
        return self.use_primary_account_balance or self.balance is None

    @property
    def available(self) -> float:
        """What it can spend or give: down to its credit limit (the spec: |balance - credit_limit|)."""
        if self.balance is None:
            return 0.0
        return max(0.0, self.balance - min(0.0, self.credit_limit or 0.0))


class SubaccountCreated(Subaccount):
    secret: SecretStr | None = None  # the new subaccount's API secret: never logged, never answered


class SubaccountListing(BaseModel):
    """GET /{api_key}/subaccounts: the primary and every subaccount, balances included, in one call."""

    model_config = ConfigDict(frozen=True)

    primary: Subaccount
    subaccounts: list[Subaccount]


class BalanceTransfer(_WireModel):
    balance_transfer_id: str = Field(min_length=1)
    amount: float
    from_account: str = Field(alias="from")
    to_account: str = Field(alias="to")
    reference: str = ""
    created_at: datetime | None = None

    _check_amount = field_validator("amount")(_finite)


# What the stack's first deploy puts in the secret until the operator fills it in.
PLACEHOLDER = "REPLACE_ME"
# In a fleet subaccount's secret: the ARN of its primary's secret, whose credentials manage its
# API secrets (Vonage's secret operations take the primary's credentials and the subaccount's key).
PRIMARY_SECRET_FIELD = "primary_secret_arn"  # noqa: S105 - a field name, not a secret


class Credentials(BaseModel):
    """What the Vonage secret in Secrets Manager holds. Extra fields are kept so that rotation
    can carry them over untouched."""

    model_config = ConfigDict(extra="allow", frozen=True, hide_input_in_errors=True)

    api_key: str = Field(min_length=1)
    api_secret: SecretStr
    secret_id: str | None = None
    topup_trx: SecretStr | None = None

    @property
    def primary_secret_arn(self) -> str | None:
        value = (self.model_extra or {}).get(PRIMARY_SECRET_FIELD)
        return str(value) if value else None

    @property
    def is_placeholder(self) -> bool:
        """True until the operator put real credentials in (the first deploy's state, not an error)."""
        return PLACEHOLDER in (self.api_key, self.api_secret.get_secret_value())

    def to_secret_string(self) -> str:
        """The JSON stored in Secrets Manager, with the real values (never log this)."""
        import json

        data = self.model_dump()  # extra fields exactly as they were, a null included
        data["api_secret"] = self.api_secret.get_secret_value()
        for name in ("secret_id", "topup_trx"):  # our own optional fields: absent when unset
            if data.get(name) is None:
                data.pop(name, None)
        if self.topup_trx is not None:
            data["topup_trx"] = self.topup_trx.get_secret_value()
        return json.dumps(data, sort_keys=True)
