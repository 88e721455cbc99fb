"""The Watcher and LastDataRecv engines, framework-neutral (raindrops-wsgi/-asgi serve them).

:class:`WatcherEngine` samples listener statistics every ``delay`` seconds
and keeps, per listener and for ``active`` and ``queued``, exact running
statistics (:class:`AggregateStats`: count, min, max, mean, population
standard deviation, outliers, a log2 histogram, the current value, when the
maximum was first and last reached, the last reset) and a bounded ring of
recent samples.  :class:`WatcherCore` turns HTTP requests into answers;
:class:`LastDataRecvCore` records ``tcpi_last_data_recv`` into a histogram
shared by all workers and reports it.

Example::

    from raindrops_core.watcher import WatcherEngine

    engine = WatcherEngine(["0.0.0.0:8080"], delay=1.0)
    engine.sample()
    print(engine.report("0.0.0.0:8080").queued)
"""

from __future__ import annotations

from ._watch_agg import (
    DEFAULT_DELAY,
    DEFAULT_HISTORY,
    LOG2_BUCKETS,
    Aggregate,
    AggregateStats,
    AsyncFetch,
    Fetch,
    ListenerReport,
    Sample,
    StatsLike,
    Subscription,
    WatcherEngine,
)
from ._watch_http import (
    DEFAULT_LAST_DATA_RECV_PATH,
    LAST_DATA_RECV_SEGMENT_ENV,
    LastDataRecvCore,
    TailPlan,
    WatcherCore,
    last_data_recv_ms,
    set_defer_accept,
)
from ._watch_render import (
    format_number,
    histogram_text,
    http_date,
    iso8601,
    listener_url,
    tail_line,
)

__all__ = [
    "DEFAULT_DELAY",
    "DEFAULT_HISTORY",
    "DEFAULT_LAST_DATA_RECV_PATH",
    "LAST_DATA_RECV_SEGMENT_ENV",
    "LOG2_BUCKETS",
    "Aggregate",
    "AggregateStats",
    "AsyncFetch",
    "Fetch",
    "LastDataRecvCore",
    "ListenerReport",
    "Sample",
    "StatsLike",
    "Subscription",
    "TailPlan",
    "WatcherCore",
    "WatcherEngine",
    "format_number",
    "histogram_text",
    "http_date",
    "iso8601",
    "last_data_recv_ms",
    "listener_url",
    "set_defer_accept",
    "tail_line",
]
