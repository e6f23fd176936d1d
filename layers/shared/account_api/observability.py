"""One Logger and one Metrics per process, shared by the layer and the handlers.

No Powertools Tracer: the functions run with X-Ray active tracing (Lambda's own segments), and
leaving the X-Ray SDK out keeps the layer small, the cold start short, and every secret out of
traces by construction (nothing of ours is recorded there).
"""

from __future__ import annotations

from aws_lambda_powertools.logging import Logger
from aws_lambda_powertools.metrics import Metrics, MetricUnit

logger = Logger()
metrics = Metrics()

__all__ = ["MetricUnit", "logger", "metrics"]
