"""What each command prints with `--output json`: one pydantic model per command.

The shapes are a contract with operators' scripts: `docs/cli-output.schema.json` is generated from
these models and a test fails when they change without it (`make cli-schema` regenerates it).
Parts that are settings API answers are passed through as that API documents them
(docs/settings-api.md), so the two never disagree.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class Output(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Balance(Output):
    value: float
    currency: str
    autoReload: bool


class TopUps(Output):
    state: Literal["live", "dry_run", "off", "paused", "unknown"]  # off: a fleet account's own topup_mode
    changedBy: str | None = None
    changedAt: str | None = None
    reason: str | None = None


class Secret(Output):
    id: str
    current: bool
    createdAt: str


class Alarms(Output):
    count: int
    inAlarm: list[str]


class SubaccountLine(Output):
    api_key: str
    name: str
    state: str  # ok, low, shared_balance, suspended, not_watched
    balance: float | None
    lastTransfer: dict[str, Any] | None = None  # GET /accounts/{primary}/subaccounts's last_transfer


class PrimaryNode(Output):
    """A primary of the fleet and its subaccounts: all of them with --account, else the ones that
    need a look (low or suspended)."""

    primary: str
    enabled: bool  # False: Vonage has not provisioned it for the Subaccounts API
    counts: dict[str, int]  # subaccounts by state
    subaccounts: list[SubaccountLine]


class Status(Output):
    stack: str
    region: str
    account: str | None = None  # with --account: that fleet account's label; None: the stack's own
    fleet: int | None = None  # accounts besides the stack's own (without --account), None if unreadable
    release: str | None
    balance: Balance | None
    topups: TopUps
    callbacks: dict[str, str | None] | None
    secrets: list[Secret] | None
    rotation: dict[str, Any] | None  # GET /rotation
    lastRuns: list[str] | None  # outcomes, newest first
    alarms: Alarms | None  # None on the local stack, or when they could not be read
    problems: list[str]  # each part that could not be read, and why
    primaries: list[PrimaryNode] | None = None  # the fleet's primaries and their subaccounts (the tree)


class SettingsChange(Output):
    changed: bool
    checks: dict[str, Any]  # PUT /settings's check results, by field
    settings: dict[str, Any] | None  # the callback URLs after the change
    problem: dict[str, Any] | None  # the API's problem answer when not changed


class Rotation(Output):
    state: Literal["started", "done", "failed", "still_in_progress"]
    versionId: str | None


class History(Output):
    days: int
    count: int
    decisions: list[dict[str, Any]]  # GET /history's decisions, newest first, every page


class TopUpSwitch(Output):
    paused: bool
    changedBy: str | None = None
    changedAt: str | None = None
    reason: str | None = None


class Check(Output):
    name: str
    ok: bool
    detail: str


class Smoke(Output):
    passed: int
    failed: int
    checks: list[Check]


class Account(Output):
    model_config = ConfigDict(extra="allow")  # GET /accounts/{api_key}'s body, whole (never a credential)
    api_key: str
    label: str
    watched: bool
    settings: dict[str, Any]
    version: int
    subaccounts: dict[str, Any] | None = None  # a primary's: GET /accounts/{api_key}/subaccounts, whole


class SubaccountChange(Output):
    done: bool
    subaccount: dict[str, Any] | None  # PUT /accounts/{primary}/subaccounts/{api_key}'s answer
    problem: dict[str, Any] | None


class Accounts(Output):
    count: int
    accounts: list[Account]


class AccountChange(Output):
    done: bool
    account: Account | None  # as the API answers after the change
    problem: dict[str, Any] | None  # the API's problem answer when refused


class Version(Output):
    cli: str


BY_COMMAND: dict[str, type[Output]] = {
    "status": Status,
    "settings get": Output,  # GET /settings, as the API answers it (replaced below)
    "settings set": SettingsChange,
    "rotate": Rotation,
    "history": History,
    "pause-topups": TopUpSwitch,
    "resume-topups": TopUpSwitch,
    "smoke": Smoke,
    "accounts list": Accounts,
    "accounts show": Account,
    "accounts add": AccountChange,
    "accounts set": AccountChange,
    "accounts remove": AccountChange,
    "accounts subaccount": SubaccountChange,
}


class Settings(Output):
    model_config = ConfigDict(extra="allow")  # GET /settings's body, whole
    moCallbackUrl: str | None = None
    drCallbackUrl: str | None = None


BY_COMMAND["settings get"] = Settings


def schema() -> str:
    """The committed contract: every command's JSON Schema, in one document."""
    return json.dumps({name: model.model_json_schema() for name, model in BY_COMMAND.items()}, indent=2) + "\n"
