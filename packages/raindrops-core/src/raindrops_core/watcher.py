"""The Watcher and LastDataRecv engines, framework-neutral (raindrops-wsgi/-asgi serve them).

:class:`WatcherEngine` samples listener statistics every ``delay`` seconds
and keeps, per listener and for ``active`` and ``queued``, the Ruby Watcher's
running statistics (:class:`AggregateStats`: count, min, max, mean, the
``aggregate`` gem's sample standard deviation, outliers, its log2 histogram,
the current value, when the maximum was first and last reached, the last
reset) and a bounded ring of recent samples.  :class:`WatcherCore` turns HTTP requests into answers;
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
    ABSENT_ROUNDS,
    DEFAULT_DELAY,
    DEFAULT_HISTORY,
    LOG2_BUCKETS,
    MAX_LISTENERS,
    MAX_TAIL_STREAMS,
    Aggregate,
    AggregateStats,
    AsyncFetch,
    Fetch,
    ListenerReport,
    Sample,
    StatsLike,
    Subscription,
    WatcherEngine,
    sample_std_dev,
)
from ._watch_http import (
    DEFAULT_LAST_DATA_RECV_PATH,
    FIRST_SAMPLE_WAIT,
    LAST_DATA_RECV_SEGMENT_ENV,
    UNPROBED_TAIL_SECONDS,
    LastDataRecvCore,
    TailPlan,
    WatcherCore,
    client_gone_probe,
    cross_origin_refusal,
    last_data_recv_ms,
    set_defer_accept,
)
from ._watch_render import (
    format_number,
    histogram_text,
    http_date,
    iso8601,
    listener_url,
    ruby_round,
    tail_line,
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
    "UNPROBED_TAIL_SECONDS",
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
    "client_gone_probe",
    "cross_origin_refusal",
    "format_number",
    "histogram_text",
    "http_date",
    "iso8601",
    "last_data_recv_ms",
    "listener_url",
    "ruby_round",
    "sample_std_dev",
    "set_defer_accept",
    "tail_line",
]
