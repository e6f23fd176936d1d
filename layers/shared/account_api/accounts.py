"""Adding, changing and removing the fleet's accounts (the settings API's /accounts routes).

Adding checks the credentials with one balance read before anything is stored (as a callback URL
is checked before Vonage sees it), then stores them in a secret of their own under the stack's
prefix, gives that secret the stack's rotation, and registers the account. Each step is safe to
repeat, so an add whose answer was lost is simply sent again. The api_secret and the top-up `trx`
are write-only: no answer, log line or error carries them.

Removing stops watching the account first (the registry keeps its item, so its history stays
explained), then schedules its secret's deletion with a recovery window; nothing is revoked at
Vonage.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from . import aws_clients, errors
from .client import AccountClient
from .config import model_from_environment
from .credentials import VonageAccount
from .models import PRIMARY_SECRET_FIELD, Subaccount
from .observability import logger
from .problems import ApiProblem
from .registry import (
    API_KEY_PATTERN,
    AccountSettings,
    FleetAccount,
    Registry,
    RegistryError,
    SubaccountDefaults,
    SubaccountSettings,
    SubaccountsRule,
    SubaccountState,
    subaccount_state,
)

RECOVERY_WINDOW_DAYS = 30  # Secrets Manager's default, and its longest
_PRINTABLE_ASCII = re.compile(r"^[\x21-\x7e]+$")


class FleetConfig(BaseModel):
    """What the settings API needs to manage the fleet; read and validated once."""

    model_config = ConfigDict(frozen=True)

    accounts_table: str = Field(min_length=1)
    secret_prefix: str = Field(min_length=1, pattern=r"^[A-Za-z0-9/_+=.@-]+/$")  # "<ServiceName>/accounts/"
    rotation_function_arn: str = ""  # empty: the stack's rotation is off, and so is the accounts'
    rotation_days: int = Field(default=30, ge=1, le=365)

    @classmethod
    def from_environment(cls, env: dict[str, str] | None = None) -> FleetConfig:
        names = {
            "accounts_table": "ACCOUNTS_TABLE",
            "secret_prefix": "ACCOUNT_SECRET_PREFIX",
            "rotation_function_arn": "ROTATION_FUNCTION_ARN",
            "rotation_days": "ROTATION_DAYS",
        }
        return model_from_environment(cls, names, env, "fleet settings")


class NewAccount(BaseModel):
    """POST /accounts: the credentials (write-only) and the account's settings."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    api_key: str = Field(pattern=API_KEY_PATTERN)
    api_secret: SecretStr = Field(min_length=1, max_length=128)
    topup_trx: SecretStr | None = Field(default=None, min_length=1, max_length=128)
    settings: AccountSettings = AccountSettings()
    primary: str | None = Field(
        default=None,
        pattern=API_KEY_PATTERN,
        description="A subaccount: its primary, a fleet account. Its secret is then rotated with the primary's "
        "credentials, and its balance is watched and funded through the primary's tick.",
    )

    @model_validator(mode="after")
    def _a_subaccount_is_no_primary(self) -> NewAccount:
        if self.primary is not None and self.settings.subaccounts is not None:
            raise ValueError("a subaccount (with primary) cannot have subaccounts of its own")
        if self.primary == self.api_key:
            raise ValueError("an account cannot be its own primary")
        return self

    @field_validator("api_secret", "topup_trx")
    @classmethod
    def _printable_ascii(cls, value: SecretStr | None) -> SecretStr | None:
        # what Vonage issues; HTTP Basic auth could not carry anything else (and the error must not echo it)
        if value is not None and not _PRINTABLE_ASCII.match(value.get_secret_value()):
            raise ValueError("must be printable ASCII characters without spaces")
        return value


class AccountChange(BaseModel):
    """PUT /accounts/{api_key}: the settings as they should be (absent ones: the stack's default)."""

    model_config = ConfigDict(extra="forbid")

    settings: AccountSettings
    expected_version: int | None = Field(
        default=None, ge=1, description="The version you read: refused with 409 if it changed since"
    )


class AccountView(BaseModel):
    """An account as the API shows it: never a credential."""

    api_key: str
    label: str
    watched: bool
    settings: AccountSettings
    version: int
    created_at: str
    removed_at: str | None = None
    secret_arn: str
    primary: str | None = None  # a subaccount: its primary
    rotation_enabled: bool | None = None
    secret_deletion_date: str | None = None

    @classmethod
    def of(cls, account: FleetAccount, **extra: Any) -> AccountView:
        return cls(
            api_key=account.api_key,
            label=account.label,
            watched=account.watched,
            settings=account.settings,
            version=account.version,
            created_at=account.created_at,
            removed_at=account.removed_at,
            secret_arn=account.secret_arn,
            primary=account.primary,
            **extra,
        )


class AccountList(BaseModel):
    accounts: list[AccountView]


# -- a primary's subaccounts -------------------------------------------------------------------------

TRANSFER_LOOKBACK_DAYS = 30  # how far back "last transfer" looks (one transfer listing)
OUR_REFERENCE_PREFIX = "account-ops "  # account_api.subaccounts.transfer_reference


class TransferView(BaseModel):
    amount: float
    created_at: str | None
    reference: str
    by_account_ops: bool  # its reference is one of our decisions' (else an operator's, or another tool's)


class SubaccountView(BaseModel):
    """A subaccount as Vonage lists it, with what the primary's rule makes of it."""

    api_key: str
    name: str
    state: SubaccountState
    shares_balance: bool
    suspended: bool
    balance: float | None
    credit_limit: float | None
    settings: SubaccountDefaults | None = Field(description="In effect; null when not watched")
    configured: SubaccountSettings | None = Field(description="What is set for it; null: the defaults")
    in_fleet: bool = Field(description="Its own secret is in the fleet, rotated with the primary's credentials")
    last_transfer: TransferView | None = None


class SubaccountsView(BaseModel):
    primary: str
    enabled: bool = Field(description="False: Vonage has not provisioned this account for the Subaccounts API")
    detail: str = ""
    primary_balance: float | None = None
    rule: SubaccountsRule | None = Field(description="Null: not a primary (its subaccounts are not watched)")
    version: int
    subaccounts: list[SubaccountView]


class SubaccountChange(BaseModel):
    """PUT /accounts/{primary}/subaccounts/{api_key}: one subaccount's settings, as they should be."""

    model_config = ConfigDict(extra="forbid")

    settings: SubaccountSettings
    expected_version: int | None = Field(
        default=None, ge=1, description="The primary's version you read: refused with 409 if it changed since"
    )


class Fleet:
    """The fleet as the settings API manages it; `template` gives the Vonage servers and options."""

    def __init__(self, config: FleetConfig, template: VonageAccount) -> None:
        self.config = config
        self.template = template
        self.registry = Registry(config.accounts_table)

    @property
    def _sm(self) -> Any:
        return aws_clients.client("secretsmanager")

    def list(self, *, removed_too: bool = False) -> AccountList:
        accounts = self.registry.accounts()
        return AccountList(accounts=[AccountView.of(a) for a in accounts if removed_too or a.removed_at is None])

    def show(self, api_key: str) -> AccountView:
        account = self.registry.current(api_key)
        described = self._sm.describe_secret(SecretId=account.secret_arn)
        return AccountView.of(account, rotation_enabled=bool(described.get("RotationEnabled")))

    def vonage(self, api_key: str) -> VonageAccount:
        """The Account API through this account's own secret (for its balance, callbacks, history)."""
        return self.template.through(self.registry.current(api_key).secret_arn)

    def add(self, new: NewAccount, caller: str = "unknown") -> AccountView:
        existing = self.registry.get(new.api_key)
        if existing is not None and existing.removed_at is None:
            # also an add retried after its answer was lost: it is done, and GET shows it; new
            # credentials for an account of the fleet come by rotation, never by a second add
            raise RegistryError(f"the account {new.api_key} is already in the fleet", kind="exists")
        self._check_credentials(new)
        primary_arn = self._check_primary(new) if new.primary else None
        arn = self._store_credentials(new, primary_arn)
        rotation = self._configure_rotation(arn)
        account = self.registry.add(new.api_key, arn, new.settings, primary=new.primary)
        logger.info("fleet account added", account=new.api_key, rotation=rotation, caller=caller)
        return AccountView.of(account, rotation_enabled=rotation)

    def change(self, api_key: str, change: AccountChange, caller: str = "unknown") -> AccountView:
        account = self.registry.update(api_key, change.settings, expected_version=change.expected_version)
        logger.info("fleet account changed", account=api_key, version=account.version, caller=caller)
        return AccountView.of(account)

    def remove(self, api_key: str, caller: str = "unknown") -> AccountView:
        account = self.registry.remove(api_key)  # first: a removal that dies here has stopped the watching
        deletion = self._schedule_secret_deletion(account.secret_arn)
        logger.info("fleet account removed", account=api_key, secret_deletion_date=deletion, caller=caller)
        return AccountView.of(account, secret_deletion_date=deletion)

    # -- a primary's subaccounts ------------------------------------------------------------------

    def subaccounts(self, api_key: str) -> SubaccountsView:
        """Every subaccount with its balance (one listing) and its last transfer (one transfer
        listing); a primary Vonage has not provisioned is a state, not an error."""
        primary = self.registry.current(api_key)
        vonage = self.template.through(primary.secret_arn)
        rule = primary.settings.subaccounts
        view = SubaccountsView(primary=api_key, enabled=True, rule=rule, version=primary.version, subaccounts=[])
        try:
            listing = vonage.call(lambda c: c.list_subaccounts())
        except errors.SubaccountsNotEnabledError as exc:
            return view.model_copy(update={"enabled": False, "detail": exc.reason})
        since = datetime.now(UTC) - timedelta(days=TRANSFER_LOOKBACK_DAYS)
        last: dict[str, TransferView] = {}
        for t in sorted(vonage.call(lambda c: c.list_balance_transfers(since)), key=lambda t: str(t.created_at)):
            last[t.to_account] = TransferView(
                amount=t.amount,
                created_at=t.created_at.strftime("%Y-%m-%dT%H:%M:%SZ") if t.created_at else None,
                reference=t.reference,
                by_account_ops=t.reference.startswith(OUR_REFERENCE_PREFIX),
            )
        in_fleet = {a.api_key for a in self.registry.accounts() if a.primary == api_key and a.removed_at is None}
        rows = [
            self._subaccount_view(rule, sub, sub.api_key in in_fleet, last.get(sub.api_key))
            for sub in listing.subaccounts
        ]
        return view.model_copy(update={"primary_balance": listing.primary.balance, "subaccounts": rows})

    def subaccount(self, api_key: str, sub_key: str) -> SubaccountView:
        primary = self.registry.current(api_key)
        sub = self.template.through(primary.secret_arn).call(lambda c: c.get_subaccount(sub_key))
        member = self.registry.get(sub_key)
        in_fleet = member is not None and member.primary == api_key and member.removed_at is None
        return self._subaccount_view(primary.settings.subaccounts, sub, in_fleet, None)

    def change_subaccount(
        self, api_key: str, sub_key: str, change: SubaccountChange, caller: str = "unknown"
    ) -> SubaccountView:
        """One subaccount's settings, kept in its primary's registry item (the rule)."""
        primary = self.registry.current(api_key)
        rule = primary.settings.subaccounts
        if rule is None:
            raise ApiProblem(
                409,
                "Not a primary",
                f"{api_key} has no subaccounts rule: set settings.subaccounts (PUT /accounts/{api_key}) first.",
            )
        sub = self.template.through(primary.secret_arn).call(lambda c: c.get_subaccount(sub_key))  # it exists
        settings = primary.settings.model_copy(update={"subaccounts": rule.with_account(sub_key, change.settings)})
        changed = self.registry.update(api_key, settings, expected_version=change.expected_version)
        logger.info(
            "subaccount settings changed", account=api_key, subaccount=sub_key, version=changed.version, caller=caller
        )
        member = self.registry.get(sub_key)
        in_fleet = member is not None and member.primary == api_key and member.removed_at is None
        return self._subaccount_view(changed.settings.subaccounts, sub, in_fleet, None)

    @staticmethod
    def _subaccount_view(
        rule: SubaccountsRule | None, sub: Subaccount, in_fleet: bool, last: TransferView | None
    ) -> SubaccountView:
        effective = rule.settings_for(sub.api_key) if rule else None
        return SubaccountView(
            api_key=sub.api_key,
            name=sub.name,
            state=subaccount_state(sub, effective),
            shares_balance=sub.shares_balance,
            suspended=sub.suspended,
            balance=sub.balance,
            credit_limit=sub.credit_limit,
            settings=effective,
            configured=rule.accounts.get(sub.api_key) if rule else None,
            in_fleet=in_fleet,
            last_transfer=last,
        )

    # -- the steps of an add and a remove, each safe to repeat -----------------------------------

    def _check_credentials(self, new: NewAccount) -> None:
        client = AccountClient(
            api_key=new.api_key,
            api_secret=new.api_secret,
            rest_base_url=self.template.rest_base_url,
            api_base_url=self.template.api_base_url,
            options=self.template.options,
        )
        try:
            client.get_account_balance()
        except errors.AuthenticationError:
            raise ApiProblem(
                422,
                "Vonage refused these credentials",
                "A balance read with this api_key and api_secret was answered 401: nothing was stored.",
                invalid_params=[{"name": "api_secret", "reason": "Vonage refused it for this api_key"}],
            ) from None
        finally:
            client.close()

    def _check_primary(self, new: NewAccount) -> str:
        """The primary is a fleet account and Vonage lists this account as its subaccount: the
        primary's secret ARN (its credentials will manage this account's secrets)."""
        primary = self.registry.get(new.primary or "")
        if primary is None or primary.removed_at is not None or primary.primary is not None:
            raise ApiProblem(
                422,
                "No such primary",
                f"{new.primary} is not a primary account of the fleet: add it first.",
                invalid_params=[{"name": "primary", "reason": "must be an account of the fleet"}],
            )
        try:
            self.template.through(primary.secret_arn).call(lambda c: c.get_subaccount(new.api_key))
        except errors.SubaccountsNotEnabledError:
            raise ApiProblem(
                422,
                "Subaccounts not enabled",
                f"Vonage says {new.primary} is not provisioned for the Subaccounts API: nothing was stored.",
                invalid_params=[{"name": "primary", "reason": "not enabled for subaccounts at Vonage"}],
            ) from None
        except errors.NotFoundError:
            raise ApiProblem(
                422,
                "Not a subaccount of this primary",
                f"Vonage does not list {new.api_key} as a subaccount of {new.primary}: nothing was stored.",
                invalid_params=[{"name": "api_key", "reason": f"not a subaccount of {new.primary}"}],
            ) from None
        return primary.secret_arn

    def _store_credentials(self, new: NewAccount, primary_secret_arn: str | None = None) -> str:
        value: dict[str, str] = {"api_key": new.api_key, "api_secret": new.api_secret.get_secret_value()}
        if new.topup_trx is not None:
            value["topup_trx"] = new.topup_trx.get_secret_value()
        if primary_secret_arn is not None:
            value[PRIMARY_SECRET_FIELD] = primary_secret_arn
        name = f"{self.config.secret_prefix}{new.api_key}"
        sm = self._sm
        try:
            created = sm.create_secret(
                Name=name,
                SecretString=json.dumps(value),
                Description=f"Vonage API credentials of the fleet account {new.api_key} (account-ops)",
            )
            return str(created["ARN"])
        except (sm.exceptions.ResourceExistsException, sm.exceptions.InvalidRequestException):
            # an add retried, or an account removed and added again: its secret is reused (Secrets
            # Manager answers InvalidRequest for a name whose secret is scheduled for deletion)
            pass
        described = sm.describe_secret(SecretId=name)
        if described.get("DeletedDate"):
            sm.restore_secret(SecretId=name)
        sm.put_secret_value(SecretId=name, SecretString=json.dumps(value))
        return str(described["ARN"])

    def _configure_rotation(self, secret_arn: str) -> bool:
        if not self.config.rotation_function_arn:
            return False
        # RotateImmediately=false: the schedule is set and the configuration tested; no new secret
        # is created at Vonage until the first scheduled rotation (or a rotate-now)
        self._sm.rotate_secret(
            SecretId=secret_arn,
            RotationLambdaARN=self.config.rotation_function_arn,
            RotationRules={"AutomaticallyAfterDays": self.config.rotation_days},
            RotateImmediately=False,
        )
        return True

    def _schedule_secret_deletion(self, secret_arn: str) -> str | None:
        sm = self._sm
        try:
            answer = sm.delete_secret(SecretId=secret_arn, RecoveryWindowInDays=RECOVERY_WINDOW_DAYS)
        except sm.exceptions.InvalidRequestException:  # already scheduled: this removal, repeated
            answer = sm.describe_secret(SecretId=secret_arn)
        except sm.exceptions.ResourceNotFoundException:
            return None
        deleted = answer.get("DeletionDate") or answer.get("DeletedDate")
        return deleted.strftime("%Y-%m-%dT%H:%M:%SZ") if deleted else None
