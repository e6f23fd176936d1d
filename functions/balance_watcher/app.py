"""Balance watcher: on each schedule tick, read the balance, publish it, and top up when low.

A thin adapter: parse the Scheduler event, run one decision of account_api.balance, return its
summary. Settings are validated at start, so a bad one fails before any call to Vonage.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from account_api import deadline
from account_api.balance import BalanceWatcher, ScheduledRun
from account_api.observability import logger, metrics

watcher = BalanceWatcher.from_environment()


@logger.inject_lambda_context(correlation_id_path="executionId", log_event=False)
@metrics.log_metrics(capture_cold_start_metric=True)
@deadline.bounded()
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    run = ScheduledRun.from_event(event)
    logger.append_keys(scheduled_time=run.key)
    return watcher.run(run).model_dump(mode="json")
