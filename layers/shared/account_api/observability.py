"""One Logger and one Metrics per process, shared by the layer and the handlers.

No Powertools Tracer: the functions run with X-Ray active tracing (Lambda's own segments), and
leaving the X-Ray SDK out keeps the layer small, the cold start short, and every secret out of
traces by construction (nothing of ours is recorded there).
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

from aws_lambda_powertools.logging import Logger
from aws_lambda_powertools.metrics import Metrics, MetricUnit

from .version import __version__


class _Metrics(Metrics):
    """Powertools' Metrics, whose add_metric the fleet's worker threads may call at once: its own
    reads a metric's values, appends and stores them back, so two threads adding the same new
    metric could lose a count."""

    _lock = threading.Lock()

    def add_metric(self, *args: Any, **kwargs: Any) -> None:
        with self._lock:
            super().add_metric(*args, **kwargs)


logger = Logger()
logger.append_keys(version=__version__)  # every log line says which release wrote it
metrics: Metrics = _Metrics()

# An invocation that decided nothing worth a metric (a GET on the settings API) is normal; API
# Gateway counts requests itself. Powertools would warn about the empty flush every time.
warnings.filterwarnings("ignore", message="No application metrics to publish")

__all__ = ["MetricUnit", "logger", "metrics"]
