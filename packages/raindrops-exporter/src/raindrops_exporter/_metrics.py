"""The exporter's Prometheus families and its JSON, from one :class:`Reading`.

The raindrops families (``raindrops_calling``, ``raindrops_writing``,
``raindrops_shared``, ``raindrops_listeners_available``, the listener gauges
and the overflow counters) come from raindrops-core's own builder, the one
the in-band ``?format=prometheus`` renders with: same names, same help,
one more label (``server``). The process-utilization families keep the names
of ``process_utilization.ProcessUtilizationCollector``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Mapping
from typing import Any

from linux_inet_diag import escape_name
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from raindrops_core import RaindropsCollector

from ._exporter import Exporter, Reading, ServerReading

__all__ = ["ExporterCollector", "reading_json", "render_json"]


def _le(bound: float) -> str:
    return "+Inf" if bound == math.inf else repr(bound)


def _labelled(server: ServerReading) -> tuple[tuple[str], Any]:
    """The server's label (its names, escaped) and snapshot (the families escape listeners)."""
    snap = server.snapshot()
    return (escape_name(server.server),), type(snap)(
        snap.calling, snap.writing, snap.listeners, None, snap.unavailable
    )


def reading_families(reading: Reading, *, per_worker: bool = False) -> list[Metric]:
    """Every metric family of one reading (see the package README for the list).

    Example::

        names = [m.name for m in reading_families(Exporter().read())]
    """
    out: list[Metric] = list(
        RaindropsCollector.families(
            [_labelled(s) for s in reading.servers],
            labels=("server",),
            overflows=reading.overflows,
        )
    )
    lab = ["server"]
    workers = GaugeMetricFamily(
        "raindrops_workers", "Live workers (a row in the server's scoreboards).", labels=lab
    )
    busy = GaugeMetricFamily(
        "raindrops_workers_busy", "Workers with a request in flight or being written.", labels=lab
    )
    reclaimed = CounterMetricFamily(
        "raindrops_workers_reclaimed",
        "Workers that died without releasing their row (restarts after a crash or kill).",
        labels=lab,
    )
    wl = ["server", "worker", "pid"] if per_worker else lab
    busy_s = CounterMetricFamily(
        "process_utilization_busy_seconds",
        "Seconds with at least one request in flight (settled at request end).",
        labels=wl,
        unit="seconds",
    )
    requests = CounterMetricFamily("process_utilization_requests", "Requests completed.", labels=wl)
    response = CounterMetricFamily(
        "process_utilization_response_seconds",
        "Sum of request durations.",
        labels=wl,
        unit="seconds",
    )
    in_flight = GaugeMetricFamily(
        "process_utilization_in_flight", "Requests in flight now.", labels=wl
    )
    latency = HistogramMetricFamily(
        "process_utilization_request_duration_seconds",
        "Time from a request entering the application to its end, every worker.",
        labels=lab,
        unit="seconds",
    )
    for s in reading.servers:
        label = [escape_name(s.server)]
        workers.add_metric(label, len(s.worker_pids))
        busy.add_metric(label, len(s.busy_pids))
        if s.reclaimed is not None:
            reclaimed.add_metric(label, s.reclaimed)
        if per_worker:
            for w in s.workers:
                lv = [*label, str(w.index), str(w.pid)]
                busy_s.add_metric(lv, w.busy_seconds_total)
                requests.add_metric(lv, w.requests_total)
                response.add_metric(lv, w.response_seconds_total)
                in_flight.add_metric(lv, w.in_flight)
        elif s.workers or s.requests_total:
            busy_s.add_metric(label, s.busy_seconds_total)
            requests.add_metric(label, s.requests_total)
            response.add_metric(label, s.response_seconds_total)
            in_flight.add_metric(label, s.in_flight)
        if s.latency is not None:
            latency.add_metric(
                label,
                buckets=[(_le(le), n) for le, n in s.latency.buckets],
                sum_value=s.latency.sum_seconds,
            )
    out += [workers, busy, reclaimed, busy_s, requests, response, in_flight, latency]
    out.append(
        GaugeMetricFamily(
            "raindrops_exporter_servers", "Servers found and shown.", value=len(reading.servers)
        )
    )
    return out


class ExporterCollector:
    """A prometheus_client collector reading every server at each scrape.

    Register it in a ``CollectorRegistry`` (the exporter's HTTP server does);
    ``per_worker`` labels the process-utilization counters by ``worker`` (the
    row index) and ``pid`` instead of summing them per server.

    Example::

        from prometheus_client import CollectorRegistry, generate_latest

        registry = CollectorRegistry(auto_describe=False)
        registry.register(ExporterCollector(Exporter()))
        print(generate_latest(registry).decode())
    """

    def __init__(self, exporter: Exporter, *, per_worker: bool = False) -> None:
        self.exporter = exporter
        self.per_worker = per_worker

    def __repr__(self) -> str:
        return f"<ExporterCollector {self.exporter!r} per_worker={self.per_worker}>"

    def describe(self) -> list[Metric]:
        """Nothing ahead of time: servers come and go."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Read every server now and yield the families, then this scrape's duration."""
        started = time.perf_counter()
        reading = self.exporter.read()
        yield from reading_families(reading, per_worker=self.per_worker)
        yield GaugeMetricFamily(
            "raindrops_exporter_scrape_duration_seconds",
            "Seconds this scrape took to read every server and build its families.",
            value=time.perf_counter() - started,
            unit="seconds",
        )


def _listeners(server: ServerReading) -> dict[str, Any]:
    return {
        name: {"active": s.active, "queued": s.queued, "backlog": s.backlog}
        for name, s in server.listeners.items()
    }


def _latency(server: ServerReading) -> dict[str, Any] | None:
    if server.latency is None:
        return None
    return {
        "count": server.latency.count,
        "sum_seconds": server.latency.sum_seconds,
        "buckets": [[_le(le), n] for le, n in server.latency.buckets],
    }


def server_json(server: ServerReading) -> dict[str, Any]:
    """One server as a JSON object (see :func:`reading_json`)."""
    return {
        "server": server.server,
        "calling": server.calling,
        "writing": server.writing,
        "listeners": _listeners(server),
        "workers": len(server.worker_pids),
        "workers_busy": len(server.busy_pids),
        "worker_pids": list(server.worker_pids),
        "workers_reclaimed": server.reclaimed,
        "in_flight": server.in_flight,
        "requests_total": server.requests_total,
        "busy_seconds_total": server.busy_seconds_total,
        "response_seconds_total": server.response_seconds_total,
        "request_duration_seconds": _latency(server),
        "worker_table": [w.to_dict() for w in server.workers],
        "segments": dict(server.segments),
        "unavailable": dict(server.unavailable),
    }


def reading_json(reading: Reading) -> dict[str, Any]:
    """A reading as one JSON-ready object: ``{"time", "servers": [...], ...}``.

    Example::

        doc = reading_json(Exporter().read())
        doc["servers"][0]["calling"]
    """
    over = reading.overflows
    return {
        "time": reading.time,
        "servers": [server_json(s) for s in reading.servers],
        "listen_overflows": None
        if over is None
        else {"listen_overflows": over.listen_overflows, "listen_drops": over.listen_drops},
        "read_seconds": reading.duration,
        "unavailable": dict(reading.unavailable),
    }


def render_json(doc: Mapping[str, Any]) -> bytes:
    """JSON text of a document, ASCII only (every outside name quoted and escaped).

    Example::

        >>> render_json({"server": "/tmp/\\x1b.sock"})
        b'{"server": "/tmp/\\\\u001b.sock"}\\n'
    """
    return (json.dumps(doc, ensure_ascii=True, allow_nan=False) + "\n").encode("ascii")
