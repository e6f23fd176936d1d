"""The settings API's logic: callback URLs read and changed safely, balance, secrets, senders.

Each function takes and returns pydantic models; the handler only parses events and shapes answers.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from . import aws_clients
from .callbacks import CallbackCheck, CallbackChecker
from .client import EMAIL_PATTERN, MAX_URL_LENGTH, callback_url_violation
from .config import model_from_environment
from .credentials import VonageAccount
from .models import AccountSettings
from .observability import MetricUnit, logger, metrics
from .problems import ApiProblem


class _ApiModel(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=False, frozen=True)


# The shapes the validators below enforce, stated in the OpenAPI document (ECMA-262 regexes).
CALLBACK_URL_PATTERN = r"^(|[Hh][Tt][Tt][Pp][Ss]?://[^\x00-\x20\x7f/?#@\\]+([/?#][^\x00-\x20\x7f\\]*)?)$"
APPLICATION_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class SettingsChangeRequest(_ApiModel):
    """Body of PUT /settings: either URL or both; an empty string unsets that URL."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra={"minProperties": 1})

    mo_callback_url: str | None = Field(
        default=None,
        alias="moCallbackUrl",
        max_length=MAX_URL_LENGTH,
        description='Inbound SMS webhook: an absolute http(s) URL that answers 200 (checked first), or "" to unset',
        json_schema_extra={"pattern": CALLBACK_URL_PATTERN},
    )
    dr_callback_url: str | None = Field(
        default=None,
        alias="drCallbackUrl",
        max_length=MAX_URL_LENGTH,
        description='Delivery receipt webhook: an absolute http(s) URL that answers 200 (checked first), or "" to unset',
        json_schema_extra={"pattern": CALLBACK_URL_PATTERN},
    )

    @field_validator("mo_callback_url", "dr_callback_url")
    @classmethod
    def _url_shaped(cls, value: str | None) -> str | None:
        if value is not None:
            violation = callback_url_violation(value)
            if violation:
                raise ValueError(violation)
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if self.mo_callback_url is None and self.dr_callback_url is None:
            raise ValueError("give moCallbackUrl, drCallbackUrl or both")
        return self

    def changes(self) -> dict[str, str]:
        """API field name -> new value, for the fields given."""
        given = {"moCallbackUrl": self.mo_callback_url, "drCallbackUrl": self.dr_callback_url}
        return {name: value for name, value in given.items() if value is not None}


class SettingsView(BaseModel):
    moCallbackUrl: str | None = None
    drCallbackUrl: str | None = None
    maxOutboundRequest: int | None = None
    maxInboundRequest: int | None = None
    maxCallsPerSecond: int | None = None

    @classmethod
    def of(cls, settings: AccountSettings) -> SettingsView:
        return cls(
            moCallbackUrl=settings.mo_callback_url,
            drCallbackUrl=settings.dr_callback_url,
            maxOutboundRequest=settings.max_outbound_request,
            maxInboundRequest=settings.max_inbound_request,
            maxCallsPerSecond=settings.max_calls_per_second,
        )


class SettingsChangeResult(BaseModel):
    settings: SettingsView
    checks: dict[str, CallbackCheck]


class BalanceView(BaseModel):
    value: float
    currency: str = "EUR"
    autoReload: bool


class SecretView(BaseModel):
    id: str
    createdAt: datetime
    current: bool = Field(description="Whether this is the secret stored as AWSCURRENT")


class SecretsView(BaseModel):
    secrets: list[SecretView]


class SenderRequest(_ApiModel):
    value: str = Field(
        min_length=3,
        max_length=254,
        description="Email address of the sender",
        json_schema_extra={"format": "email", "pattern": EMAIL_PATTERN},
    )
    name: str | None = Field(default=None, min_length=1, max_length=256)
    applicationIds: list[Annotated[str, Field(pattern=APPLICATION_ID_PATTERN)]] | None = Field(
        default=None, max_length=50
    )


class SenderView(BaseModel):
    value: str
    provider: str
    name: str | None = None
    applicationIds: list[str]


class RotationStarted(BaseModel):
    rotation: str = "started"
    versionId: str | None = None


def read_settings(account: VonageAccount) -> SettingsView:
    return SettingsView.of(account.call(lambda c: c.change_account_settings()))


def change_settings(
    account: VonageAccount, change: SettingsChangeRequest, checker: CallbackChecker, caller: str
) -> SettingsChangeResult:
    """Check every new URL (at once); only when all pass, send the change to Vonage in one call."""
    new = change.changes()
    to_check = {name: url for name, url in new.items() if url}
    checks = dict(zip(to_check, checker.check_all(list(to_check.values())), strict=True))
    failed = {name: check for name, check in checks.items() if not check.ok}
    if failed:
        metrics.add_metric(name="CallbackCheckFailed", unit=MetricUnit.Count, value=1)
        raise ApiProblem(
            422,
            "Callback URL check failed",
            "; ".join(f"{name}: {check.reason} ({check.detail})" for name, check in failed.items()),
            invalid_params=[
                {"name": name, "reason": check.reason, "detail": check.detail} for name, check in failed.items()
            ],
            checks={name: check.model_dump() for name, check in checks.items()},
        )
    before = account.call(lambda c: c.change_account_settings())
    after = account.call(
        lambda c: c.change_account_settings(
            mo_callback_url=change.mo_callback_url, dr_callback_url=change.dr_callback_url
        )
    )
    metrics.add_metric(name="SettingsChanged", unit=MetricUnit.Count, value=1)
    logger.info(
        "account settings changed",
        caller=caller,
        old={"moCallbackUrl": before.mo_callback_url, "drCallbackUrl": before.dr_callback_url},
        new={"moCallbackUrl": after.mo_callback_url, "drCallbackUrl": after.dr_callback_url},
    )
    return SettingsChangeResult(settings=SettingsView.of(after), checks=checks)


def read_balance(account: VonageAccount) -> BalanceView:
    balance = account.call(lambda c: c.get_account_balance())
    return BalanceView(value=balance.value, autoReload=balance.auto_reload)


def list_secrets(account: VonageAccount) -> SecretsView:
    current = account.credentials(force=True).secret_id  # fresh: a rotation may have just finished
    secrets = account.call(lambda c: c.retrieve_api_secrets())
    return SecretsView(secrets=[SecretView(id=s.id, createdAt=s.created_at, current=s.id == current) for s in secrets])


def get_secret(account: VonageAccount, secret_id: str) -> SecretView:
    secret = account.call(lambda c: c.retrieve_api_secret(secret_id))
    current = account.credentials(force=True).secret_id
    return SecretView(id=secret.id, createdAt=secret.created_at, current=secret.id == current)


def register_sender(account: VonageAccount, request: SenderRequest) -> SenderView:
    sender = account.call(lambda c: c.register_sender(request.value, request.name, request.applicationIds))
    return SenderView(
        value=sender.value, provider=sender.provider, name=sender.name, applicationIds=sender.application_ids
    )


def request_rotation(secret_arn: str) -> RotationStarted:
    """Ask Secrets Manager to rotate now, through the configured rotation function, so Secrets
    Manager and Vonage never drift apart. A rotation already running is a 409."""
    from botocore.exceptions import ClientError

    try:
        response = aws_clients.client("secretsmanager").rotate_secret(SecretId=secret_arn)
    except ClientError as exc:  # any other failure is answered by problems.problem_for (502/503/504)
        if aws_clients.error_code(exc) == "InvalidRequestException":
            raise ApiProblem(
                409, "Rotation not possible now", "A rotation is already in progress or rotation is not configured."
            ) from None
        raise
    logger.info("rotation requested", version_id=response.get("VersionId"))
    return RotationStarted(versionId=response.get("VersionId"))


# -- rotation state, the top-up switch, the watcher's history -------------------------------------


class Tables(BaseModel):
    """The watcher's tables, which the API reads (history) and writes (the top-up switch)."""

    model_config = ConfigDict(frozen=True)

    state_table: str = Field(min_length=1)
    history_table: str = Field(min_length=1)

    @classmethod
    def from_environment(cls) -> Tables:
        names = {"state_table": "STATE_TABLE", "history_table": "HISTORY_TABLE"}
        return model_from_environment(cls, names, None, "settings API tables")


class RotationState(BaseModel):
    rotationEnabled: bool
    state: Literal["idle", "in_progress"]
    currentVersion: str | None = None
    pendingVersion: str | None = None
    pendingSecretCreated: bool = Field(
        default=False, description="createSecret has created the new Vonage secret and stored it as AWSPENDING"
    )
    lastRotatedAt: datetime | None = None
    nextRotationAt: datetime | None = None


def rotation_state(secret_arn: str) -> RotationState:
    """Where the rotation stands, from Secrets Manager's own record (no secret value is returned)."""
    from .credentials import read_credentials

    sm = aws_clients.client("secretsmanager")
    described = sm.describe_secret(SecretId=secret_arn)
    versions: dict[str, list[str]] = described.get("VersionIdsToStages", {})
    current = next((v for v, stages in versions.items() if "AWSCURRENT" in stages), None)
    pending = next((v for v, stages in versions.items() if "AWSPENDING" in stages and "AWSCURRENT" not in stages), None)
    created = False
    if pending:
        try:
            extra = read_credentials(secret_arn, version_id=pending).model_extra or {}
            created = extra.get("rotation_token") == pending
        except Exception:  # a pending version without a value yet: createSecret has not stored it
            created = False
    return RotationState(
        rotationEnabled=bool(described.get("RotationEnabled")),
        state="in_progress" if pending else "idle",
        currentVersion=current,
        pendingVersion=pending,
        pendingSecretCreated=created,
        lastRotatedAt=described.get("LastRotatedDate"),
        nextRotationAt=described.get("NextRotationDate"),
    )


class Decision(BaseModel):
    """A row of the history: a watcher's decision, or a change of the top-up switch (`changedBy`)."""

    scheduledTime: str
    recordedAt: str | None = None
    outcome: str
    balance: float | None = None
    autoReload: bool | None = None
    detail: str | None = None
    changedBy: str | None = None


class History(BaseModel):
    account: str
    days: int
    decisions: list[Decision]
    nextCursor: str | None = Field(
        default=None, description="Pass as `cursor` for the next (older) page; null on the last page"
    )


HISTORY_PAGE_DEFAULT = 100
HISTORY_PAGE_MAX = 500
CURSOR_PATTERN = r"^[A-Za-z0-9_-]{1,200}={0,2}$"


def read_history(
    account: VonageAccount,
    history_table: str,
    days: int,
    *,
    limit: int = HISTORY_PAGE_DEFAULT,
    cursor: str | None = None,
) -> History:
    """The watcher's decisions (and switch changes) of the last `days` days, newest first, a page
    at a time: `nextCursor` says there is more, so nothing is cut without saying so."""
    return read_history_of(account.credentials().api_key, history_table, days, limit=limit, cursor=cursor)


def read_history_of(
    key: str, history_table: str, days: int, *, limit: int = HISTORY_PAGE_DEFAULT, cursor: str | None = None
) -> History:
    """read_history for an api_key: a fleet account's, also after it was removed."""
    since = (datetime.now(UTC) - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")
    query: dict[str, Any] = {
        "TableName": history_table,
        "KeyConditionExpression": "account = :a AND #at >= :since",
        "ExpressionAttributeNames": {"#at": "at"},
        "ExpressionAttributeValues": {":a": {"S": key}, ":since": {"S": since}},
        "ScanIndexForward": False,
        "Limit": limit,
    }
    if cursor:
        query["ExclusiveStartKey"] = {"account": {"S": key}, "at": {"S": _cursor_position(cursor)}}
    answer = aws_clients.client("dynamodb").query(**query)
    last = answer.get("LastEvaluatedKey")
    return History(
        account=key,
        days=days,
        decisions=[
            Decision(
                scheduledTime=item["scheduled_time"]["S"],
                recordedAt=item.get("recorded_at", {}).get("S"),
                outcome=item["outcome"]["S"],
                balance=float(item["balance"]["N"]) if "balance" in item else None,
                autoReload=item["auto_reload"]["BOOL"] if "auto_reload" in item else None,
                detail=item.get("detail", {}).get("S"),
                changedBy=item.get("changed_by", {}).get("S"),
            )
            for item in answer.get("Items", [])
        ],
        nextCursor=base64.urlsafe_b64encode(last["at"]["S"].encode()).decode() if last else None,
    )


def _cursor_position(cursor: str) -> str:
    """The row a page starts after, from the opaque cursor the previous page gave."""
    try:
        position = base64.urlsafe_b64decode(cursor.encode()).decode()
        datetime.fromisoformat(position.replace("Z", "+00:00"))
    except ValueError:
        raise ApiProblem(
            422,
            "Invalid cursor",
            "cursor: not one that a previous page returned",
            invalid_params=[{"name": "cursor", "reason": "not one that a previous page returned"}],
        ) from None
    return position


class VersionView(BaseModel):
    version: str
