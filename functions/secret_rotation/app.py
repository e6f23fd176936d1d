"""Rotation function of the Vonage secret in Secrets Manager (createSecret, setSecret,
testSecret, finishSecret). A thin adapter over account_api.rotation."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from account_api import deadline
from account_api.observability import logger, metrics
from account_api.rotation import RotationEvent, Rotator

rotator = Rotator.from_environment()


@logger.inject_lambda_context(correlation_id_path="ClientRequestToken", log_event=False)
@metrics.log_metrics(capture_cold_start_metric=True)
@deadline.bounded()
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> None:
    rotator.handle(RotationEvent.model_validate(event))
