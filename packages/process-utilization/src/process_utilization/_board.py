"""The cross-worker scoreboard: what each worker publishes and how it is read.

Each worker owns one row of a :class:`shm_counters.Scoreboard`. All values
are unsigned 64-bit integers, so times are integer nanoseconds of the
middleware's clock (``time.monotonic`` by default, which on Linux is one
clock for every process of the machine, so a reader in another process can
compare its own clock with a worker's timestamps).

Row fields:

``in_flight``
    requests inside the application right now in that worker;
``busy_ns``
    cumulative nanoseconds with at least one request in flight, *settled*
    at every request end (a monotonic counter: Prometheus ``rate()`` of it
    is exact);
``busy_since_ns``
    clock time of the last settlement while requests are in flight, so a
    reader adds the unsettled part (``now - busy_since_ns``) for a live view;
``requests`` / ``response_ns``
    completed requests and the sum of their durations since the worker began;
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
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from shm_counters import Scoreboard

from ._errors import ConfigError

__all__ = [
    "DEFAULT_SLOTS",
    "FIELDS",
    "SEGMENT_ENV",
    "WorkerStats",
    "open_scoreboard",
    "render_json",
    "render_text",
    "worker_stats",
]

#: The fields of every row, in order.
FIELDS: tuple[str, ...] = (
    "in_flight",
    "busy_ns",
    "busy_since_ns",
    "requests",
    "response_ns",
    "horizon_ns",
    "horizon_busy_ns",
    "horizon_requests",
    "horizon_response_ns",
    "gc_ns",
    "gc_collections",
)

#: Environment variable naming the segment file (for spawned workers).
SEGMENT_ENV = "PROCESS_UTILIZATION_SEGMENT"

#: Rows in a scoreboard the middleware creates itself.
DEFAULT_SLOTS = 64


def open_scoreboard(
    segment: str | None = None, *, slots: int = DEFAULT_SLOTS, create: bool = True
) -> Scoreboard:
    """Open (or create) a scoreboard with the rows this package writes.

    ``segment=None`` gives anonymous shared memory, inherited by forked
    workers; a path (typically under ``/dev/shm``) is shared by any process
    that opens it, spawned workers and the CLI included.

    Example::

        board = open_scoreboard("/dev/shm/myapp-utilization")
        for worker in worker_stats(board):
            print(worker.pid, worker.percentage_active)
    """
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
        raise ConfigError(f"slots must be a positive integer, got {slots!r}")
    return Scoreboard(slots, FIELDS, path=segment, create=create)


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """One worker's row, read at one moment, in seconds.

    ``busy_seconds_total`` and ``requests_total`` only grow while the worker
    lives; the other figures cover the worker's current horizon.
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
        """Mean duration of all requests completed, in milliseconds."""
        if self.requests_total == 0:
            return 0.0
        return 1000.0 * self.response_seconds_total / self.requests_total

    def to_dict(self) -> dict[str, Any]:
        """The fields and the derived figures, for JSON."""
        out = asdict(self)
        out["percentage_active"] = self.percentage_active
        out["requests_per_second"] = self.requests_per_second
        out["average_response_time"] = self.average_response_time
        return out


def worker_stats(
    scoreboard: Scoreboard, *, clock: Callable[[], float] = time.monotonic
) -> list[WorkerStats]:
    """Every live worker's figures, read from ``scoreboard`` now.

    ``clock`` must be the clock the workers' middleware uses (both default
    to ``time.monotonic``). Workers that have not served a request yet are
    listed with zero figures.

    Example::

        for w in worker_stats(board):
            print(f"{w.pid}: {w.percentage_active:.1f}% busy")
    """
    now_ns = round(clock() * 1e9)
    out: list[WorkerStats] = []
    for info in scoreboard.rows():
        v = info.values
        busy = v["busy_ns"]
        in_flight = v["in_flight"]
        since = v["busy_since_ns"]
        if in_flight and 0 < since < now_ns:
            busy += now_ns - since
        horizon = v["horizon_ns"]
        if horizon and horizon <= now_ns:
            horizon_time = now_ns - horizon
            requests = max(0, v["requests"] - v["horizon_requests"])
            active = min(horizon_time, max(0, busy - v["horizon_busy_ns"]))
        else:
            horizon_time = requests = active = 0
        out.append(
            WorkerStats(
                index=info.index,
                pid=info.pid,
                in_flight=in_flight,
                requests_total=v["requests"],
                busy_seconds_total=busy / 1e9,
                response_seconds_total=v["response_ns"] / 1e9,
                horizon_time=horizon_time / 1e9,
                requests=requests,
                active_time=active / 1e9,
                gc_seconds=v["gc_ns"] / 1e9,
                gc_collections=v["gc_collections"],
            )
        )
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
    ``req/s`` and ``util%`` cover each worker's horizon; ``avg_ms`` is the
    mean duration of every request the worker completed.

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
    """Sums over workers; ``percentage_active`` is the mean utilization."""
    requests_total = sum(w.requests_total for w in rows)
    horizon = sum(w.horizon_time for w in rows)
    return {
        "workers": len(rows),
        "in_flight": sum(w.in_flight for w in rows),
        "requests_total": requests_total,
        "busy_seconds_total": sum(w.busy_seconds_total for w in rows),
        "requests_per_second": sum(w.requests_per_second for w in rows),
        "average_response_time": (
            1000.0 * sum(w.response_seconds_total for w in rows) / requests_total
            if requests_total
            else 0.0
        ),
        "percentage_active": (
            100.0 * sum(w.active_time for w in rows) / horizon if horizon else 0.0
        ),
    }


def render_json(workers: Iterable[WorkerStats]) -> str:
    """A JSON object: ``{"workers": [...], "total": {...}}``.

    Example::

        json.loads(render_json(worker_stats(board)))["total"]["in_flight"]
    """
    rows = list(workers)
    return json.dumps(
        {"workers": [w.to_dict() for w in rows], "total": _total(rows)},
        sort_keys=True,
    )
