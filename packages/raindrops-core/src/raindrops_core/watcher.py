"""The Watcher's engine and records, framework-neutral (raindrops-wsgi/-asgi serve them).

:class:`WatcherEngine` samples listener statistics every ``delay`` seconds
and keeps, per listener and for ``active`` and ``queued``, the Ruby Watcher's
running statistics (:class:`AggregateStats`: count, min, max, mean, the
``aggregate`` gem's sample standard deviation, outliers, its log2 histogram,
the current value, when the maximum was first and last reached, the last
reset) and a bounded ring of recent samples; the helpers below spell
numbers, dates and lines as the Ruby original does.  The apps' defaults
(:data:`FIRST_SAMPLE_WAIT`, :data:`UNPROBED_TAIL_SECONDS`, LastDataRecv's
path and environment variable) and :func:`set_defer_accept` for gunicorn's
config are here too.  What adapters are made of (``WatcherCore``,
``TailPlan``, ``LastDataRecvCore``, ...) is in :mod:`raindrops_core.adapter`.

Example::

    from raindrops_core.watcher import WatcherEngine

    engine = WatcherEngine(["0.0.0.0:8080"], delay=1.0)
    engine.sample()
    print(engine.report("0.0.0.0:8080").queued)
"""

from __future__ import annotations

from ._ldr import DEFAULT_LAST_DATA_RECV_PATH, LAST_DATA_RECV_SEGMENT_ENV, set_defer_accept
from ._watch_engine import (
    ABSENT_ROUNDS,
    DEFAULT_DELAY,
    DEFAULT_HISTORY,
    MAX_LISTENERS,
    MAX_TAIL_STREAMS,
    Subscription,
    WatcherEngine,
)
from ._watch_http import FIRST_SAMPLE_WAIT, UNPROBED_TAIL_SECONDS
from ._watch_render import (
    PAGE_SCRIPT,
    format_number,
    histogram_text,
    http_date,
    iso8601,
    listener_url,
    ruby_round,
    tail_line,
)
from ._watch_stats import (
    LOG2_BUCKETS,
    Aggregate,
    AggregateStats,
    ListenerReport,
    Sample,
    StatsLike,
    sample_std_dev,
)

__all__ = [
    "ABSENT_ROUNDS",
    "DEFAULT_DELAY",
    "DEFAULT_HISTORY",
    "DEFAULT_LAST_DATA_RECV_PATH",
    "FIRST_SAMPLE_WAIT",
    "LAST_DATA_RECV_SEGMENT_ENV",
    "LOG2_BUCKETS",
    "MAX_LISTENERS",
    "MAX_TAIL_STREAMS",
    "PAGE_SCRIPT",
    "UNPROBED_TAIL_SECONDS",
    "Aggregate",
    "AggregateStats",
    "ListenerReport",
    "Sample",
    "StatsLike",
    "Subscription",
    "WatcherEngine",
    "format_number",
    "histogram_text",
    "http_date",
    "iso8601",
    "listener_url",
    "ruby_round",
    "sample_std_dev",
    "set_defer_accept",
    "tail_line",
]
