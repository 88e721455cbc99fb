"""The cross-worker scoreboard: what each worker publishes and how it is read.

Each worker owns one row of a :class:`shm_counters.Scoreboard`. All values
are unsigned 64-bit integers, so times are integer nanoseconds of the
middleware's clock (``time.monotonic`` by default, which on Linux is one
clock for every process of the machine, so a reader in another process can
compare its own clock with a worker's timestamps).

Row fields (in the order readers load them):

``requests`` / ``entered``
    requests completed, and requests that entered the application, since
    the worker began; ``entered - requests`` is the number in flight now
    (two +1 steps instead of a +1 and a -1 per request; ``requests`` is
    loaded first, so a reader never sees more completed than entered);
``busy_ns``
    cumulative nanoseconds with at least one request in flight, *settled*
    at every request end (a monotonic counter: Prometheus ``rate()`` of it
    is exact);
``overlapped`` / ``response_ns``
    ``response_ns`` is the sum of the durations of the completed requests,
    written per request only once ``overlapped`` is 1 (the worker has had
    two requests in flight at once): until then every request's duration
    equals the busy time it settled, so the sum is ``busy_ns`` and the
    per-request path saves a write (one-request-at-a-time workers such as
    gunicorn ``sync`` never write it). :func:`response_ns` picks the one;
``busy_since_ns``
    clock time of the last settlement while requests are in flight, so a
    reader adds the unsettled part (``now - busy_since_ns``) for a live view;
``horizon_ns`` / ``horizon_busy_ns`` / ``horizon_requests`` /
``horizon_response_ns``
    the clock time of the worker's horizon and the cumulative counters at
    that moment (written only when the horizon resets, never per request),
    from which the horizon statistics are derived;
``gc_ns`` / ``gc_collections``
    garbage-collector pauses, when ``track_gc`` is on.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from shm_counters import HistogramSnapshot, Scoreboard

from ._errors import ConfigError
from ._figures import WorkerStats, read_figures, response_ns, worker_view
from ._options import check_slots

__all__ = [
    "ANONYMOUS",
    "DEFAULT_LATENCY_BUCKETS",
    "DEFAULT_SLOTS",
    "FIELDS",
    "LATENCY_NAME",
    "LATENCY_SUFFIX",
    "SEGMENT_ENV",
    "SEGMENT_NAME",
    "WorkerStats",
    "check_segment",
    "cumulative_buckets",
    "latency_edges",
    "open_scoreboard",
    "render_json",
    "render_text",
    "response_ns",
    "worker_stats",
]

#: The fields of every row, in order.
FIELDS: tuple[str, ...] = (
    "requests",
    "entered",
    "busy_ns",
    "overlapped",
    "response_ns",
    "busy_since_ns",
    "horizon_ns",
    "horizon_busy_ns",
    "horizon_requests",
    "horizon_response_ns",
    "gc_ns",
    "gc_collections",
)

#: Environment variable naming the segment file (or ``anonymous``).
SEGMENT_ENV = "PROCESS_UTILIZATION_SEGMENT"

#: The default segment's name in the server's directory (``shm_counters.server_segment``).
SEGMENT_NAME = "utilization"

#: Rows in a scoreboard the middleware creates itself.
DEFAULT_SLOTS = 64

#: ``segment="anonymous"``: anonymous shared memory, shared only across fork().
ANONYMOUS = "anonymous"

#: The request-duration histogram's upper bounds (seconds) unless told:
#: prometheus_client's default buckets.
DEFAULT_LATENCY_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
#: The default histogram's name in the server's directory.
LATENCY_NAME = "latency"
#: The histogram beside an explicit ``segment=PATH``: ``PATH + LATENCY_SUFFIX``.
LATENCY_SUFFIX = ".latency"

_MAX_SECONDS = 2**62 / 1e9


def latency_edges(buckets: Sequence[float] | None) -> tuple[int, ...] | None:
    """The histogram edges (ns) for upper bounds in seconds; ``None`` for ``None``.

    A request of ``d`` ns counts in bucket ``le=b`` when ``d <= b`` (as
    Prometheus' ``le`` reads), so each edge is ``b`` in ns plus one; the
    first edge is 0, and a request longer than the last bound counts in
    ``+Inf`` only. Raises :class:`ConfigError` for anything but a
    non-empty, strictly increasing sequence of positive finite seconds.

    Example::

        latency_edges([0.1, 1.0])  # (0, 100000001, 1000000001)
    """
    if buckets is None:
        return None
    allowed = "a non-empty, strictly increasing list of positive seconds like [0.1, 0.5, 1.0]"
    if isinstance(buckets, (str, bytes)) or not isinstance(buckets, Sequence) or not buckets:
        raise ConfigError(f"latency_buckets must be {allowed} or None, got {buckets!r}")
    edges = [0]
    for b in buckets:
        if (
            isinstance(b, bool)
            or not isinstance(b, (int, float))
            or not math.isfinite(b)
            or not 0 < b <= _MAX_SECONDS
        ):
            raise ConfigError(f"latency_buckets must be {allowed}, got {buckets!r} ({b!r})")
        edge = round(b * 1e9) + 1
        if edge <= edges[-1]:
            raise ConfigError(f"latency_buckets must be {allowed}, got {buckets!r}")
        edges.append(edge)
    return tuple(edges)


def cumulative_buckets(snapshot: HistogramSnapshot) -> list[tuple[float, int]]:
    """Prometheus' view of a latency histogram: ``[(le_seconds, count <= le), ..., (inf, count)]``.

    Example::

        cumulative_buckets(mw.latency.snapshot())  # [(0.005, 3), ..., (inf, 9)]
    """
    out: list[tuple[float, int]] = []
    running = snapshot.outliers_low
    for _, high, count in snapshot.buckets:
        running += count
        out.append(((high - 1) / 1e9, running))
    out.append((math.inf, snapshot.count))
    return out


def check_segment(segment: object) -> str | None:
    """The segment chosen: a path, ``"anonymous"``, or ``None`` (the default); rejects the rest.

    ``None`` falls back to ``$PROCESS_UTILIZATION_SEGMENT`` (unset or empty:
    ``None``, the server's own segment, found by the middleware). A segment
    is an absolute path or ``"anonymous"`` (memory shared across fork()
    only): a relative path would make a file in whatever directory the
    server runs in.

    Example::

        check_segment("/dev/shm/myapp-utilization")  # '/dev/shm/myapp-utilization'
        check_segment("anonymous")  # 'anonymous'
    """
    where = "segment"
    if segment is None:
        segment = os.environ.get(SEGMENT_ENV) or None
        where = f"${SEGMENT_ENV}"
        if segment is None:
            return None
    if not isinstance(segment, (str, os.PathLike)):
        raise ConfigError(f"{where} must be an absolute path or {ANONYMOUS!r}, got {segment!r}")
    text = os.fspath(segment)
    if not isinstance(text, str):
        raise ConfigError(f"{where} must be an absolute path or {ANONYMOUS!r}, got {segment!r}")
    if text == ANONYMOUS:
        return ANONYMOUS
    if not os.path.isabs(text):
        raise ConfigError(
            f"{where} {text!r} is not an absolute path; give one like "
            f"'/dev/shm/myapp-utilization', or {ANONYMOUS!r}"
        )
    return text


def open_scoreboard(
    segment: str | None = None, *, slots: int = DEFAULT_SLOTS, create: bool = True
) -> Scoreboard:
    """Open (or create) a scoreboard with the rows this package writes.

    ``segment=None`` (or ``"anonymous"``) gives anonymous shared memory,
    inherited by forked workers; a path (typically under ``/dev/shm``) is
    shared by any process that opens it, spawned workers and the CLI
    included. Creating needs an absolute path (a relative one would land in
    the current directory); ``create=False`` opens any path.

    Example::

        board = open_scoreboard("/dev/shm/myapp-utilization")
        for worker in worker_stats(board):
            print(worker.pid, worker.percentage_active)
    """
    check_slots(slots)
    if segment == ANONYMOUS:
        segment = None
    elif create and segment is not None:
        segment = check_segment(segment)
    return Scoreboard(slots, FIELDS, path=segment, create=create)


def worker_stats(
    scoreboard: Scoreboard, *, clock: Callable[[], float] = time.monotonic
) -> list[WorkerStats]:
    """Every live worker's figures, read from ``scoreboard`` now.

    ``clock`` must be the clock the workers' middleware uses (both default
    to ``time.monotonic``). Workers that have not served a request yet are
    listed with zero figures. ``busy_seconds_total`` and ``active_time``
    include the part of a request still in flight.

    The rows are read twice: a row whose ``requests`` did not change in
    between was not half-way through a request's end while read, so its
    in-flight part is added; otherwise its settled figures are shown
    alone (never a request's busy time twice).

    Example::

        for w in worker_stats(board):
            print(f"{w.pid}: {w.percentage_active:.1f}% busy")
    """
    now_ns = round(clock() * 1e9)
    first = {info.index: info for info in scoreboard.rows()}
    out: list[WorkerStats] = []
    for info in scoreboard.rows():
        before = first.get(info.index)
        steady = (
            before is not None
            and before.pid == info.pid
            and before.values["requests"] == info.values["requests"]
        )
        values = before.values if steady and before is not None else info.values
        out.append(worker_view(info.index, info.pid, read_figures(values, now_ns, live=steady)))
    return out


_COLUMNS = (
    ("worker", 6),
    ("pid", 8),
    ("in_flight", 9),
    ("requests", 9),
    ("busy_s", 10),
    ("req/s", 8),
    ("avg_ms", 8),
    ("util%", 6),
)


def _line(cells: Sequence[str]) -> str:
    return "  ".join(c.rjust(w) for c, (_, w) in zip(cells, _COLUMNS, strict=True)).rstrip()


def render_text(workers: Iterable[WorkerStats]) -> str:
    """A plain-text table, one worker a line, then a ``total`` line.

    ``requests`` and ``busy_s`` are totals since each worker began;
    ``req/s``, ``avg_ms`` and ``util%`` cover each worker's horizon (as the
    seed's ``requests_per_second``, ``average_response_time`` and
    ``percentage_active`` do). The ``total`` line sums ``req/s`` and pools
    ``avg_ms`` and ``util%`` over every worker's horizon.

    Example output::

        worker       pid  in_flight   requests      busy_s     req/s    avg_ms   util%
             0     4242          1        120       3.210      12.3      26.7    45.6
         total                   1        120       3.210      12.3      26.7    45.6
    """
    rows = list(workers)
    lines = [_line([name for name, _ in _COLUMNS])]
    for w in rows:
        lines.append(
            _line(
                [
                    str(w.index),
                    str(w.pid),
                    str(w.in_flight),
                    str(w.requests_total),
                    f"{w.busy_seconds_total:.3f}",
                    f"{w.requests_per_second:.1f}",
                    f"{w.average_response_time:.1f}",
                    f"{w.percentage_active:.1f}",
                ]
            )
        )
    total = _total(rows)
    lines.append(
        _line(
            [
                "total",
                "",
                str(total["in_flight"]),
                str(total["requests_total"]),
                f"{total['busy_seconds_total']:.3f}",
                f"{total['requests_per_second']:.1f}",
                f"{total['average_response_time']:.1f}",
                f"{total['percentage_active']:.1f}",
            ]
        )
    )
    return "\n".join(lines) + "\n"


def _total(rows: Sequence[WorkerStats]) -> dict[str, Any]:
    """Sums over workers; averages and utilization pooled over their horizons."""
    requests_total = sum(w.requests_total for w in rows)
    requests = sum(w.requests for w in rows)
    horizon = sum(w.horizon_time for w in rows)
    return {
        "workers": len(rows),
        "in_flight": sum(w.in_flight for w in rows),
        "requests_total": requests_total,
        "busy_seconds_total": sum(w.busy_seconds_total for w in rows),
        "requests_per_second": sum(w.requests_per_second for w in rows),
        "average_response_time": (
            1000.0 * sum(w.response_time for w in rows) / requests if requests else 0.0
        ),
        "percentage_active": (
            100.0 * sum(w.active_time for w in rows) / horizon if horizon else 0.0
        ),
    }


def render_json(
    workers: Iterable[WorkerStats], *, unavailable: Mapping[str, str] | None = None
) -> str:
    """A JSON object: ``{"workers": [...], "total": {...}, "unavailable": {...}}``.

    ``unavailable`` names what the table lacks: ``{"shared": REASON}`` when
    the figures are one worker's own only.

    Example::

        json.loads(render_json(worker_stats(board)))["total"]["in_flight"]
    """
    rows = list(workers)
    return json.dumps(
        {
            "workers": [w.to_dict() for w in rows],
            "total": _total(rows),
            "unavailable": dict(unavailable or {}),
        },
        sort_keys=True,
    )
