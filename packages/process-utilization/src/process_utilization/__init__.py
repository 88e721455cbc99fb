"""Busy/idle accounting per worker process, for WSGI and ASGI servers.

A port of Rack::ProcessUtilization, correct when requests overlap
(threaded and async workers), with every worker's figures shared on a
shared-memory scoreboard so any worker, a CLI or Prometheus sees them all.

Example::

    from process_utilization import ProcessUtilization

    app = ProcessUtilization(app, stats_path="/_utilization")

See :class:`ProcessUtilization` (WSGI), :mod:`process_utilization.asgi`
(ASGI), :func:`worker_stats` and :class:`ProcessUtilizationCollector`.
"""

from __future__ import annotations

import logging

from ._board import (
    DEFAULT_LATENCY_BUCKETS,
    DEFAULT_SLOTS,
    FIELDS,
    LATENCY_NAME,
    LATENCY_SUFFIX,
    SEGMENT_ENV,
    SEGMENT_NAME,
    WorkerStats,
    cumulative_buckets,
    latency_edges,
    open_scoreboard,
    render_json,
    render_text,
    response_ns,
    worker_stats,
)
from ._core import UtilizationCore
from ._errors import ConfigError, MissingExtraError, ProcessUtilizationError
from ._figures import GcStats, UtilizationStats
from ._prometheus import ProcessUtilizationCollector
from ._statsd import StatsdClient
from ._wsgi import ProcessUtilization

__all__ = [
    "DEFAULT_LATENCY_BUCKETS",
    "DEFAULT_SLOTS",
    "FIELDS",
    "LATENCY_NAME",
    "LATENCY_SUFFIX",
    "SEGMENT_ENV",
    "SEGMENT_NAME",
    "ConfigError",
    "GcStats",
    "MissingExtraError",
    "ProcessUtilization",
    "ProcessUtilizationCollector",
    "ProcessUtilizationError",
    "StatsdClient",
    "UtilizationCore",
    "UtilizationStats",
    "WorkerStats",
    "cumulative_buckets",
    "latency_edges",
    "open_scoreboard",
    "render_json",
    "render_text",
    "response_ns",
    "worker_stats",
]

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
