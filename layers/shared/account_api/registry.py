"""The fleet's account registry: one DynamoDB item per Vonage account, keyed by its api_key.

Data access and validation only. An item holds what the operator set for the account (each
setting absent means the stack's default) and where its credentials live (a Secrets Manager
secret under the stack's own prefix); never a credential. Every write is conditional on the
item's `version`, so two operators never overwrite each other's change unseen, and a retried
write whose answer was lost is recognised by its version, not applied twice. Removing an account
keeps its item (`removed_at`), so its history stays explained. docs/decisions/0004 says why the
registry is a table and not secret tags.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import aws_clients
from .models import Subaccount
from .observability import logger

API_KEY_PATTERN = r"^[A-Za-z0-9]{4,32}$"  # Vonage keys are 8 hex characters; room for the future
_PRINTABLE = re.compile(r"^[^\x00-\x1f\x7f]+$")


class RegistryError(Exception):
    """The registry refused a change, or holds an item it cannot read."""

    def __init__(self, message: str, *, kind: Literal["not_found", "exists", "conflict", "invalid"]) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind


class TopUpMode(StrEnum):
    LIVE = "live"  # top up when low
    DRY_RUN = "dry_run"  # decide and alert, never send
    OFF = "off"  # watch and alert on a low balance; top-ups are this account's owner's business


class SubaccountSettings(BaseModel):
    """What an operator sets for one subaccount of a primary; None means the primary's default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold_eur: float | None = Field(default=None, ge=-100_000, le=100_000)  # negative: spend into credit
    transfer_eur: float | None = Field(default=None, gt=0, le=10_000, multiple_of=0.01)
    transfer_cooldown_minutes: int | None = Field(default=None, ge=1, le=24 * 60)
    daily_transfer_cap: int | None = Field(default=None, ge=0, le=50)
    enabled: bool = True  # watched (with the rule "listed": only the subaccounts listed here)


class SubaccountDefaults(BaseModel):
    """The settings of a subaccount nobody configured."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold_eur: float = Field(default=5.0, ge=-100_000, le=100_000)
    transfer_eur: float = Field(default=20.0, gt=0, le=10_000, multiple_of=0.01)
    transfer_cooldown_minutes: int = Field(default=30, ge=1, le=24 * 60)
    daily_transfer_cap: int = Field(default=3, ge=0, le=50)


MAX_CONFIGURED_SUBACCOUNTS = 1000  # keeps the primary's registry item far below DynamoDB's 400 KB


class SubaccountsRule(BaseModel):
    """Marks a fleet account as a primary whose subaccounts each tick lists and funds: all of them,
    or only those listed in `accounts`; each with its own settings, or the defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    watch: Literal["all", "listed"] = "all"
    defaults: SubaccountDefaults = SubaccountDefaults()
    accounts: dict[str, SubaccountSettings] = Field(default_factory=dict, max_length=MAX_CONFIGURED_SUBACCOUNTS)

    @field_validator("accounts")
    @classmethod
    def _keys(cls, value: dict[str, SubaccountSettings]) -> dict[str, SubaccountSettings]:
        bad = [k for k in value if not re.match(API_KEY_PATTERN, k)]
        if bad:
            raise ValueError(f"not an api_key: {bad[0][:40]!r}")
        return value

    def settings_for(self, api_key: str) -> SubaccountDefaults | None:
        """The subaccount's effective settings, or None when it is not watched."""
        own = self.accounts.get(api_key)
        if own is None:
            return self.defaults if self.watch == "all" else None
        if not own.enabled:
            return None
        return self.defaults.model_copy(update=own.model_dump(exclude_none=True, exclude={"enabled"}))

    def with_account(self, api_key: str, settings: SubaccountSettings | None) -> SubaccountsRule:
        accounts = {k: v for k, v in self.accounts.items() if k != api_key}
        if settings is not None:
            accounts[api_key] = settings
        return self.model_copy(update={"accounts": dict(sorted(accounts.items()))})


class SubaccountState(StrEnum):
    OK = "ok"
    LOW = "low"
    SHARED = "shared_balance"  # spends the primary's balance: nothing of its own to fund
    SUSPENDED = "suspended"
    NOT_WATCHED = "not_watched"


def subaccount_state(sub: Subaccount, settings: SubaccountDefaults | None) -> SubaccountState:
    if settings is None:
        return SubaccountState.NOT_WATCHED
    if sub.shares_balance:
        return SubaccountState.SHARED
    if sub.suspended:
        return SubaccountState.SUSPENDED
    return SubaccountState.LOW if (sub.balance or 0.0) < settings.threshold_eur else SubaccountState.OK


class AccountSettings(BaseModel):
    """What an operator sets for one account; None means the stack's default (its parameters)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(default=None, min_length=1, max_length=64)
    threshold_eur: float | None = Field(default=None, gt=0, le=100_000)
    critical_eur: float | None = Field(default=None, gt=0, le=100_000)  # counted and alarmed below this
    topup_mode: TopUpMode | None = None
    topup_cooldown_minutes: int | None = Field(default=None, ge=1, le=24 * 60)
    alert_cooldown_minutes: int | None = Field(default=None, ge=1, le=7 * 24 * 60)
    daily_topup_cap: int | None = Field(default=None, ge=0, le=50)
    enabled: bool = True
    subaccounts: SubaccountsRule | None = None  # set: a primary that funds its subaccounts

    @model_validator(mode="after")
    def _critical_below_threshold(self) -> AccountSettings:
        if self.critical_eur is not None and self.threshold_eur is not None and self.critical_eur >= self.threshold_eur:
            raise ValueError("critical_eur must be below threshold_eur")
        return self

    @field_validator("name")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and not _PRINTABLE.match(value):
            raise ValueError("must hold no control characters")
        return value


class FleetAccount(BaseModel):
    """One account of the fleet as the registry holds it."""

    model_config = ConfigDict(frozen=True)

    api_key: str = Field(pattern=API_KEY_PATTERN)
    secret_arn: str = Field(min_length=1)
    settings: AccountSettings = AccountSettings()
    version: int = Field(default=0, ge=0)
    created_at: str = ""
    removed_at: str | None = None
    # set: a subaccount of that fleet account, here for its secret's rotation (with the primary's
    # credentials); its balance is watched and funded through its primary's tick, not its own
    primary: str | None = Field(default=None, pattern=API_KEY_PATTERN)

    @property
    def watched(self) -> bool:
        return self.settings.enabled and self.removed_at is None and self.primary is None

    @property
    def is_primary(self) -> bool:
        return self.settings.subaccounts is not None

    @property
    def label(self) -> str:
        """How alerts and logs name it: its name and key (the key is an identifier, not a secret)."""
        return f"{self.settings.name} ({self.api_key})" if self.settings.name else self.api_key


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _to_item(account: FleetAccount) -> dict[str, Any]:
    item: dict[str, Any] = {
        "api_key": {"S": account.api_key},
        "secret_arn": {"S": account.secret_arn},
        "version": {"N": str(account.version)},
        "created_at": {"S": account.created_at},
        "settings": {"S": account.settings.model_dump_json(exclude_none=True)},
        "watched": {"BOOL": account.watched},
    }
    if account.removed_at:
        item["removed_at"] = {"S": account.removed_at}
    if account.primary:
        item["primary"] = {"S": account.primary}
    return item


def _from_item(item: dict[str, Any]) -> FleetAccount:
    try:
        return FleetAccount(
            api_key=item["api_key"]["S"],
            secret_arn=item["secret_arn"]["S"],
            settings=AccountSettings.model_validate_json(item.get("settings", {}).get("S") or "{}"),
            version=int(item.get("version", {}).get("N") or 0),
            created_at=item.get("created_at", {}).get("S", ""),
            removed_at=item.get("removed_at", {}).get("S"),
            primary=item.get("primary", {}).get("S"),
        )
    except (KeyError, ValueError, ValidationError):
        # an item written by hand or by a newer release: never guess, say which one
        raise RegistryError(
            f"the registry item for {item.get('api_key', {}).get('S', '?')!r} is not valid", kind="invalid"
        ) from None


class Registry:
    def __init__(self, table: str) -> None:
        self.table = table

    @property
    def ddb(self) -> Any:
        return aws_clients.client("dynamodb")

    def get(self, api_key: str) -> FleetAccount | None:
        item = self.ddb.get_item(TableName=self.table, Key={"api_key": {"S": api_key}}, ConsistentRead=True).get("Item")
        return _from_item(item) if item else None

    def accounts(self, *, watched_only: bool = False) -> list[FleetAccount]:
        """Every account, or the watched ones, by api_key; consistent, every page. An item it
        cannot read is an error that names it."""
        return sorted((_from_item(item) for item in self._items(watched_only)), key=lambda a: a.api_key)

    def watched_for_tick(self) -> list[FleetAccount]:
        """The watched accounts a tick decides. An unreadable item is logged and left out: one bad
        item must not cost every other account its tick."""
        found = []
        for item in self._items(watched_only=True):
            try:
                found.append(_from_item(item))
            except RegistryError as exc:
                logger.error("a registry item could not be read: that account is not evaluated", reason=exc.message)
        return sorted(found, key=lambda a: a.api_key)

    def _items(self, watched_only: bool) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {"TableName": self.table, "ConsistentRead": True}
        if watched_only:
            kwargs |= {"FilterExpression": "watched = :t", "ExpressionAttributeValues": {":t": {"BOOL": True}}}
        return [item for page in self.ddb.get_paginator("scan").paginate(**kwargs) for item in page.get("Items", [])]

    def add(
        self, api_key: str, secret_arn: str, settings: AccountSettings, *, primary: str | None = None
    ) -> FleetAccount:
        """A new account, or one removed before coming back (its history is kept under the key)."""
        existing = self.get(api_key)
        if existing is not None and existing.removed_at is None:
            if existing.secret_arn == secret_arn and existing.settings == settings and existing.primary == primary:
                return existing  # this very add, retried after its answer was lost
            raise RegistryError(f"the account {api_key} is already in the fleet", kind="exists")
        account = FleetAccount(
            api_key=api_key,
            secret_arn=secret_arn,
            settings=settings,
            version=(existing.version + 1) if existing else 1,
            created_at=_now(),
            primary=primary,
        )
        self._write(account, expected=existing)
        return account

    def update(self, api_key: str, settings: AccountSettings, *, expected_version: int | None = None) -> FleetAccount:
        current = self.current(api_key)
        if expected_version is not None and current.version != expected_version:
            if current.version == expected_version + 1 and current.settings == settings:
                return current  # this very change, retried
            raise RegistryError(
                f"the account {api_key} changed since it was read (version {current.version})", kind="conflict"
            )
        if current.settings == settings:
            return current
        account = current.model_copy(update={"settings": settings, "version": current.version + 1})
        self._write(account, expected=current)
        return account

    def remove(self, api_key: str) -> FleetAccount:
        """Stop watching it; keep the item (its history stays explained). Safe to repeat."""
        current = self.current(api_key, removed_too=True)
        if current.removed_at:
            return current
        account = current.model_copy(update={"removed_at": _now(), "version": current.version + 1})
        self._write(account, expected=current)
        return account

    def current(self, api_key: str, *, removed_too: bool = False) -> FleetAccount:
        """The account, or RegistryError not_found (also for a removed one, unless removed_too)."""
        current = self.get(api_key)
        if current is None or (current.removed_at is not None and not removed_too):
            raise RegistryError(f"no account {api_key} in the fleet", kind="not_found")
        return current

    def _write(self, account: FleetAccount, *, expected: FleetAccount | None) -> None:
        if expected is None:
            condition: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(api_key)"}
        else:
            condition = {
                "ConditionExpression": "version = :v",
                "ExpressionAttributeValues": {":v": {"N": str(expected.version)}},
            }
        try:
            self.ddb.put_item(TableName=self.table, Item=_to_item(account), **condition)
        except self.ddb.exceptions.ConditionalCheckFailedException:
            now = self.get(account.api_key)
            if now is not None and now == account:
                return  # our own write, whose answer was lost and which botocore sent again
            raise RegistryError(
                f"the account {account.api_key} changed while it was being written: read it and try again",
                kind="conflict",
            ) from None
