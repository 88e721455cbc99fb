"""A prometheus_client collector over the scoreboard (extra ``prometheus``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from shm_counters import Scoreboard

from ._board import cumulative_buckets, response_ns
from ._core import UtilizationCore
from ._errors import ConfigError
from ._extras import require

__all__ = ["ProcessUtilizationCollector"]


def _le(bound: float) -> str:
    """A bucket bound as Prometheus spells it (``0.005``, ``1.0``, ``+Inf``)."""
    return "+Inf" if bound == float("inf") else repr(bound)


class ProcessUtilizationCollector:
    """Exposes every worker's row of a scoreboard to prometheus_client.

    ``source`` is the middleware (its scoreboard is looked up at each
    scrape, so it may be registered before the server has set up) or a
    :class:`shm_counters.Scoreboard`. Metrics, each labelled ``pid`` and
    ``worker`` (the row index):

    - ``process_utilization_busy_seconds_total`` (counter): seconds with at
      least one request in flight, settled at each request end, so
      ``rate()`` of it is the worker's exact utilization (0..1);
    - ``process_utilization_requests_total`` (counter): completed requests;
    - ``process_utilization_response_seconds_total`` (counter): sum of
      request durations (divide its rate by the requests rate for the mean);
    - ``process_utilization_in_flight`` (gauge): requests in flight now;
    - ``process_utilization_gc_seconds_total`` and
      ``process_utilization_gc_collections_total`` (counters), with
      ``track_gc=True``;
    - with the middleware as ``source``, ``process_utilization_shared``
      (gauge, no labels): 1 if the table is every worker's, 0 if this
      worker could not join its server's segment; and
      ``process_utilization_request_duration_seconds`` (histogram, no
      labels: every worker's requests, from the shared histogram).

    Example::

        from prometheus_client import REGISTRY
        from process_utilization import ProcessUtilization, ProcessUtilizationCollector

        app = ProcessUtilization(app)
        REGISTRY.register(ProcessUtilizationCollector(app))
    """

    def __init__(
        self,
        source: Scoreboard | UtilizationCore,
        *,
        namespace: str = "process_utilization",
    ) -> None:
        self._core = require(
            "prometheus_client.core",
            feature="ProcessUtilizationCollector",
            extra="prometheus",
        )
        if not isinstance(source, (Scoreboard, UtilizationCore)):
            raise ConfigError(
                f"ProcessUtilizationCollector takes the middleware or a Scoreboard, got {source!r}"
            )
        self.source = source
        self._ns = namespace

    def __repr__(self) -> str:
        return f"<ProcessUtilizationCollector {self.source!r}>"

    @property
    def scoreboard(self) -> Scoreboard:
        """The scoreboard read at this moment (the middleware's, opened on first use)."""
        source = self.source
        return source if isinstance(source, Scoreboard) else source.scoreboard

    def describe(self) -> list[Any]:
        """Nothing to describe ahead of time (rows come and go)."""
        return []

    def collect(self) -> Iterator[Any]:
        """One family per metric, one sample per live worker."""
        core = self._core
        ns = self._ns
        labels = ["pid", "worker"]
        busy = core.CounterMetricFamily(
            f"{ns}_busy_seconds",
            "Seconds with at least one request in flight (settled at request end).",
            labels=labels,
        )
        requests = core.CounterMetricFamily(f"{ns}_requests", "Requests completed.", labels=labels)
        response = core.CounterMetricFamily(
            f"{ns}_response_seconds", "Sum of request durations.", labels=labels
        )
        in_flight = core.GaugeMetricFamily(
            f"{ns}_in_flight", "Requests in flight now.", labels=labels
        )
        gc_seconds = core.CounterMetricFamily(
            f"{ns}_gc_seconds", "Seconds spent in garbage collection.", labels=labels
        )
        gc_collections = core.CounterMetricFamily(
            f"{ns}_gc_collections", "Garbage collections.", labels=labels
        )
        board = self.scoreboard
        for info in board.rows():
            v = info.values
            lv = [str(info.pid), str(info.index)]
            busy.add_metric(lv, v["busy_ns"] / 1e9)
            requests.add_metric(lv, v["requests"])
            response.add_metric(lv, response_ns(v) / 1e9)
            in_flight.add_metric(lv, max(0, v["entered"] - v["requests"]))
            gc_seconds.add_metric(lv, v["gc_ns"] / 1e9)
            gc_collections.add_metric(lv, v["gc_collections"])
        yield busy
        yield requests
        yield response
        yield in_flight
        yield gc_seconds
        yield gc_collections
        if isinstance(self.source, UtilizationCore):
            yield core.GaugeMetricFamily(
                f"{ns}_shared",
                "1 if the table is every worker's, 0 if it is this worker's only.",
                value=0 if self.source.unshared is not None else 1,
            )
            hist = self.source.latency
            if hist is not None:
                snap = hist.snapshot()
                yield core.HistogramMetricFamily(
                    f"{ns}_request_duration_seconds",
                    "Time from a request entering the application to its end, every worker.",
                    buckets=[(_le(le), n) for le, n in cumulative_buckets(snap)],
                    sum_value=snap.sum / 1e9,
                )
