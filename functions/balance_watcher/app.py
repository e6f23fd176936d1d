"""Balance watcher: on each schedule tick, send each fleet account's message, then read the stack
account's balance, publish it, and top up when low; on each SQS batch, decide those accounts.

A thin adapter: tell the two events apart and hand each to account_api.fleet.Tick. Settings are
validated at start, so a bad one fails before any call to Vonage.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from account_api import deadline
from account_api.fleet import Tick, is_sqs_batch
from account_api.observability import logger, metrics

tick = Tick.from_environment()


@logger.inject_lambda_context(correlation_id_path="executionId", log_event=False)
@metrics.log_metrics(capture_cold_start_metric=True)
@deadline.bounded()
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if is_sqs_batch(event):
        return tick.sqs_batch(event, context)
    return tick.scheduled(event)
