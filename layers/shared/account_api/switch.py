"""The operator's top-up switch: pause or resume top-ups at once, without a redeploy.

One item in the watcher's state table, per stack. The settings API changes it; every change is
also a row of the watcher's history (who, when, why), so the record of pauses is kept, not only
the latest state. The watcher reads it before every top-up and, while paused, sends none (one alert
per pause).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from . import aws_clients
from .observability import MetricUnit, logger, metrics
from .wire import clean_text

TOPUP_SWITCH_KEY = "control#topups"
AUDIT_TTL_DAYS = 365  # a switch change is kept in the history for a year


class TopUpSwitch(BaseModel):
    paused: bool
    reason: str | None = None
    changedBy: str | None = None
    changedAt: datetime | None = None


class TopUpSwitchChange(BaseModel):
    """Body of PUT /topups: pause or resume top-ups at once, with a reason for the record. Strict:
    this switch decides whether money moves, so only a JSON boolean is accepted ("yes", 1, "off"
    are refused, not guessed at)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    paused: StrictBool
    reason: str | None = Field(default=None, min_length=1, max_length=200)

    @field_validator("reason", mode="before")
    @classmethod
    def _screened(cls, value: object) -> object:
        """It reaches alerts, e-mail and logs: no control, bidi or zero-width characters."""
        return clean_text(value, limit=10_000) if isinstance(value, str) else value


def read_topup_switch(state_table: str) -> TopUpSwitch:
    item = (
        aws_clients.client("dynamodb")
        .get_item(TableName=state_table, Key={"pk": {"S": TOPUP_SWITCH_KEY}}, ConsistentRead=True)
        .get("Item")
    )
    return topup_switch_of(item)


def topup_switch_of(item: dict[str, Any] | None) -> TopUpSwitch:
    if not item:
        return TopUpSwitch(paused=False)
    return TopUpSwitch(
        paused=bool(item.get("paused", {}).get("BOOL", False)),
        reason=item.get("reason", {}).get("S"),
        changedBy=item.get("changed_by", {}).get("S"),
        changedAt=datetime.fromtimestamp(float(item["changed_at"]["N"]), UTC) if "changed_at" in item else None,
    )


def change_topup_switch(
    state_table: str, change: TopUpSwitchChange, caller: str, *, history_table: str, account_key: str
) -> TopUpSwitch:
    """Pause or resume top-ups; the watcher honours it at its next run. The history row is written
    first: an audit row of a change whose answer then says it failed is better than an unaudited
    change (a PUT is safe to repeat)."""
    now = time.time()
    at = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    row: dict[str, Any] = {
        "account": {"S": account_key},
        "at": {"S": at},
        "scheduled_time": {"S": at},
        "recorded_at": {"S": at},
        "outcome": {"S": "topups_paused" if change.paused else "topups_resumed"},
        "changed_by": {"S": caller},
        "expires_at": {"N": str(int(now) + AUDIT_TTL_DAYS * 86400)},
    }
    if change.reason:
        row["detail"] = {"S": change.reason}
    aws_clients.client("dynamodb").put_item(TableName=history_table, Item=row)
    item: dict[str, Any] = {
        "pk": {"S": TOPUP_SWITCH_KEY},
        "paused": {"BOOL": change.paused},
        "changed_by": {"S": caller},
        "changed_at": {"N": str(now)},
    }
    if change.reason:
        item["reason"] = {"S": change.reason}
    aws_clients.client("dynamodb").put_item(TableName=state_table, Item=item)
    metrics.add_metric(name="TopUpsPaused" if change.paused else "TopUpsResumed", unit=MetricUnit.Count, value=1)
    logger.info("top-ups paused" if change.paused else "top-ups resumed", caller=caller, reason=change.reason)
    return topup_switch_of(item)
