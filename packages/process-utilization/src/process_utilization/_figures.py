"""The one read path: a worker's figures, read the same way wherever they come from.

A worker's figures are a mapping of the row fields (``FIELDS``): a
scoreboard row's values as any process reads them, or a worker's own
(``Accounting.values()``). :func:`read_figures` turns them into a
:class:`Reading` at one instant (ns); the table shows it as
:class:`WorkerStats` (``worker_stats()``, :func:`worker_view`) and the middleware's own figures as
:class:`UtilizationStats` (``ProcessUtilization.stats()``, :func:`utilization_stats`), the seed's
names and meanings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "GcStats",
    "Reading",
    "UtilizationStats",
    "WorkerStats",
    "read_figures",
    "response_ns",
    "utilization_stats",
    "worker_view",
]


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """One worker's row, read at one moment, in seconds.

    ``busy_seconds_total``, ``requests_total`` and ``response_seconds_total``
    only grow while the worker lives; ``horizon_time``, ``requests``,
    ``active_time`` and ``response_time`` cover the worker's current horizon,
    as do the derived ``percentage_active``, ``requests_per_second`` and
    ``average_response_time``.
    """

    index: int
    pid: int
    in_flight: int
    requests_total: int
    busy_seconds_total: float
    response_seconds_total: float
    horizon_time: float
    requests: int
    active_time: float
    response_time: float
    gc_seconds: float
    gc_collections: int

    @property
    def percentage_active(self) -> float:
        """Per cent of the horizon with at least one request in flight."""
        if self.horizon_time <= 0:
            return 0.0
        return min(100.0, 100.0 * self.active_time / self.horizon_time)

    @property
    def requests_per_second(self) -> float:
        """Requests completed per second over the horizon."""
        if self.horizon_time <= 0:
            return 0.0
        return self.requests / self.horizon_time

    @property
    def average_response_time(self) -> float:
        """Mean duration of the requests completed since the horizon, in ms."""
        if self.requests == 0:
            return 0.0
        return 1000.0 * self.response_time / self.requests

    def to_dict(self) -> dict[str, Any]:
        """The fields and the derived figures, for JSON."""
        out = asdict(self)
        out["percentage_active"] = self.percentage_active
        out["requests_per_second"] = self.requests_per_second
        out["average_response_time"] = self.average_response_time
        return out


def response_ns(values: Mapping[str, int]) -> int:
    """The summed request durations of one row's ``values`` (see ``overlapped``).

    Example::

        response_ns(board.rows()[0].values) / 1e9  # seconds
    """
    return values["response_ns"] if values["overlapped"] else values["busy_ns"]


@dataclass(frozen=True, slots=True)
class Reading:
    """One worker's figures at one instant, in ns: what every reader derives its view from.

    ``busy_ns`` and ``active_ns`` include the part of a request still in
    flight (when the read allows it); ``horizon_ns`` is the time since the
    horizon began (0 before the first request), ``requests``, ``active_ns``
    and ``horizon_response_ns`` cover that horizon.
    """

    in_flight: int
    requests_total: int
    busy_ns: int
    response_ns: int
    horizon_ns: int
    requests: int
    active_ns: int
    horizon_response_ns: int
    gc_ns: int
    gc_collections: int


def read_figures(values: Mapping[str, int], now_ns: int, *, live: bool = True) -> Reading:
    """The one read path: a row's ``values`` (or a worker's own, same names) at ``now_ns``.

    ``live`` adds the unsettled part of a request in flight (``now -
    busy_since_ns``); a reader that caught a row half-way through a
    request's end passes false, so no busy time counts twice. Both the
    table (:func:`worker_stats`) and the middleware's own figures
    (``ProcessUtilization.stats()``) are read here.

    Example::

        read_figures(board.rows()[0].values, time.monotonic_ns()).busy_ns
    """
    busy = values["busy_ns"]
    requests_total = values["requests"]
    in_flight = max(0, values["entered"] - requests_total)
    since = values["busy_since_ns"]
    if live and in_flight and 0 < since < now_ns:
        busy += now_ns - since
    response = response_ns(values)
    horizon = values["horizon_ns"]
    if horizon and horizon <= now_ns:
        horizon_ns = now_ns - horizon
        requests = max(0, requests_total - values["horizon_requests"])
        active = min(horizon_ns, max(0, busy - values["horizon_busy_ns"]))
        horizon_response = max(0, response - values["horizon_response_ns"])
    else:
        horizon_ns = requests = active = horizon_response = 0
    return Reading(
        in_flight=in_flight,
        requests_total=requests_total,
        busy_ns=busy,
        response_ns=response,
        horizon_ns=horizon_ns,
        requests=requests,
        active_ns=active,
        horizon_response_ns=horizon_response,
        gc_ns=values["gc_ns"],
        gc_collections=values["gc_collections"],
    )


@dataclass(frozen=True, slots=True)
class GcStats:
    """Garbage-collector pauses seen since tracking began (``track_gc=True``)."""

    collections: int
    seconds: float


@dataclass(frozen=True, slots=True)
class UtilizationStats:
    """This process's figures at one moment (times in seconds, averages in ms).

    ``horizon`` is wall-clock time (``time.time()`` seconds, ``None`` before
    the first request); every duration is measured on the monotonic clock.
    """

    horizon: float | None
    horizon_time: float
    active_time: float
    idle_time: float
    requests: int
    total_requests: int
    in_flight: int
    percentage_active: float
    percentage_idle: float
    requests_per_second: float
    average_response_time: float
    busy_seconds_total: float
    gc_collections: int
    gc_seconds: float


def worker_view(index: int, pid: int, r: Reading) -> WorkerStats:
    """The table's view of a :class:`Reading` of row ``index``, owned by ``pid``."""
    return WorkerStats(
        index=index,
        pid=pid,
        in_flight=r.in_flight,
        requests_total=r.requests_total,
        busy_seconds_total=r.busy_ns / 1e9,
        response_seconds_total=r.response_ns / 1e9,
        horizon_time=r.horizon_ns / 1e9,
        requests=r.requests,
        active_time=r.active_ns / 1e9,
        response_time=r.horizon_response_ns / 1e9,
        gc_seconds=r.gc_ns / 1e9,
        gc_collections=r.gc_collections,
    )


def utilization_stats(r: Reading, horizon: float | None, total_requests: int) -> UtilizationStats:
    """The middleware's own view of a :class:`Reading` (the seed's attributes).

    ``horizon`` is the horizon's wall-clock time, ``total_requests`` the
    requests started (neither is in a row).
    """
    h, a, n = r.horizon_ns, r.active_ns, r.requests
    return UtilizationStats(
        horizon=horizon,
        horizon_time=h / 1e9,
        active_time=a / 1e9,
        idle_time=(h - a) / 1e9,
        requests=n,
        total_requests=total_requests,
        in_flight=r.in_flight,
        percentage_active=100 * a / h if h else 0.0,
        percentage_idle=100 * (h - a) / h if h else 100.0,
        requests_per_second=n / (h / 1e9) if h else 0.0,
        average_response_time=r.horizon_response_ns / n / 1e6 if n else 0.0,
        busy_seconds_total=r.busy_ns / 1e9,
        gc_collections=r.gc_collections,
        gc_seconds=r.gc_ns / 1e9,
    )
