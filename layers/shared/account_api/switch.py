"""The operator's top-up switch: pause or resume top-ups at once, without a redeploy.

One item in the watcher's state table, per stack. The settings API changes it (recording who, when
and why); the watcher reads it before every top-up and, while paused, sends none (one alert per
pause).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from . import aws_clients
from .observability import MetricUnit, logger, metrics

TOPUP_SWITCH_KEY = "control#topups"


class TopUpSwitch(BaseModel):
    paused: bool
    reason: str | None = None
    changedBy: str | None = None
    changedAt: datetime | None = None


class TopUpSwitchChange(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    """Body of PUT /topups: pause or resume top-ups at once, with a reason for the record."""

    paused: bool
    reason: str | None = Field(default=None, min_length=1, max_length=200)


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


def change_topup_switch(state_table: str, change: TopUpSwitchChange, caller: str) -> TopUpSwitch:
    """Pause or resume top-ups; the watcher honours it at its next run. Audited: who, when, why."""
    now = time.time()
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
