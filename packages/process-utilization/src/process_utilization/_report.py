"""The periodic report: one ``key=value`` line every ``report_interval`` seconds.

The seed promised the figures "dumped every 5 minutes"; here, at the end
of the first request after each interval, one line goes to ``report_to``
(a logger, at INFO, or a stream), by default the adapter's stream
(WSGI ``environ["wsgi.errors"]``, ASGI ``sys.stderr``).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ._accounting import NEVER
from ._errors import ConfigError
from ._figures import UtilizationStats

__all__ = ["Report", "check_report_to", "report_line"]


def check_report_to(value: object) -> None:
    """Refuse a ``report_to`` that is neither ``None``, a logger nor a writable stream."""
    if value is None or isinstance(value, (logging.Logger, logging.LoggerAdapter)):
        return
    if not callable(getattr(value, "write", None)):
        raise ConfigError(
            "report_to must be None, a logging.Logger or a writable stream "
            f"(an object with write()), got {value!r}"
        )


def report_line(stats: UtilizationStats, worker: int | None, *, gc: bool) -> str:
    """The report: one line, no newline; ``worker`` is the row (``None``: ``-``).

    Example::

        process-utilization pid=4242 worker=0 requests=3 total_requests=3 in_flight=0
        horizon=60.000s active=1.500s idle=58.500s util=2.5% rps=0.05 avg=500.0ms
    """
    line = (
        f"process-utilization pid={os.getpid()} worker={'-' if worker is None else worker}"
        f" requests={stats.requests} total_requests={stats.total_requests}"
        f" in_flight={stats.in_flight} horizon={stats.horizon_time:.3f}s"
        f" active={stats.active_time:.3f}s idle={stats.idle_time:.3f}s"
        f" util={stats.percentage_active:.1f}%"
        f" rps={stats.requests_per_second:.2f}"
        f" avg={stats.average_response_time:.1f}ms"
    )
    if gc:
        line += f" gc={stats.gc_collections} gc_time={stats.gc_seconds:.3f}s"
    return line


class Report:
    """When the next report is due, and where it goes.

    Example::

        report = Report(300 * 10**9, None)
        report.start(now)
        if now >= report.due_ns:
            report.next(now)
            report.emit(line, sys.stderr)
    """

    __slots__ = ("due_ns", "interval_ns", "to")

    def __init__(self, interval_ns: int | None, to: Any) -> None:
        self.interval_ns = interval_ns
        self.to = to
        self.due_ns = NEVER

    def start(self, now: int) -> None:
        """The first request: the first report is due one interval later."""
        self.due_ns = NEVER if self.interval_ns is None else now + self.interval_ns

    def next(self, now: int) -> None:
        """A report goes out at ``now``: the next is due one interval later."""
        self.start(now)

    def reset(self) -> None:
        """Nothing due (in a forked child, until its first request)."""
        self.due_ns = NEVER

    def emit(self, line: str, default: Any) -> None:
        """Write ``line`` to ``report_to``, else to ``default`` (a stream); may raise."""
        target = self.to if self.to is not None else default
        if isinstance(target, (logging.Logger, logging.LoggerAdapter)):
            target.info("%s", line)
            return
        target.write(line + "\n")
        flush = getattr(target, "flush", None)
        if flush is not None:
            flush()
