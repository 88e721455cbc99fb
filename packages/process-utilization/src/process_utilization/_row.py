"""This worker's scoreboard row: the accounting's figures, published for every other process.

A worker claims its row at its first request (a forked child, its own) and
starts it from its :class:`~process_utilization._accounting.Accounting`'s
figures. From then on each request's start and end is one step of the
row's busy timer (:class:`shm_counters.BusyTimer`): a single C call, bound
once, that reads the monotonic clock, writes ``entered``, ``requests``,
``busy_ns`` and ``busy_since_ns`` in the order readers rely on, and returns
the time it read, which the middleware then hands to the accounting. Those
steps are also the middleware's clock: reading the clock and publishing a
request cost one C call, not three. The other fields change rarely and are
written when they do (the horizon, the first overlap, a GC pause), except
``response_ns``, added per request once requests have overlapped.

A worker without a row (none could be claimed, or it failed later) reads
the clock alone: :func:`clock_steps`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from shm_counters import Scoreboard

from ._accounting import Accounting

__all__ = ["Row", "clock_steps"]

#: A row step: reads the clock, publishes, returns the time it read (ns).
Step = Callable[[], int]


def clock_steps(clock: Step) -> tuple[Step, Step, Step, Step]:
    """The four steps of a worker with no row: each only reads ``clock``."""
    return clock, clock, clock, clock


class Row:
    """A claimed scoreboard row, its busy timer's steps bound.

    ``start``, ``join``, ``settle`` and ``finish`` are the steps (see
    :class:`shm_counters.BusyTimer`: a request starting with none or some in
    flight, ending with some or none left); ``add_response(ns)`` adds one
    request's duration to ``response_ns``. Every other method writes what
    the accounting changed.

    Example::

        row = Row.claim(board, acct, clock=None)
        now = row.start()  # a request enters
        acct.enter(now)
    """

    __slots__ = ("_row", "_timer", "add_response", "finish", "index", "join", "settle", "start")

    def __init__(self, row: Any, timer: Any) -> None:
        self._row = row
        self._timer = timer
        self.index: int = row.index
        self.start: Step = timer.start
        self.join: Step = timer.join
        self.settle: Step = timer.settle
        self.finish: Step = timer.finish
        self.add_response: Callable[[int], int] = row.bind_add("response_ns")

    @classmethod
    def claim(cls, board: Scoreboard, acct: Accounting, clock: Step | None) -> Row:
        """Claim this process's row of ``board`` and start it from ``acct``'s figures.

        ``clock`` (ns) replaces the C steps' own clock. A row claimed but not
        set up (a scoreboard missing a field, say) is released before the
        error propagates, never left claimed half written.
        """
        row = board.claim()
        try:
            timer = row.bind_busy_timer(
                "entered", "requests", "busy_ns", "busy_since_ns", clock=clock
            )
            timer.set_values(
                entered=acct.entered, done=acct.done, busy_ns=acct.busy_ns, since_ns=acct.since_ns
            )
            claimed = cls(row, timer)
            claimed.publish_overlap(acct)
            claimed.publish_horizon(acct)
            claimed.publish_gc(acct)
        except BaseException:
            with contextlib.suppress(Exception):
                row.release()
            raise
        return claimed

    def steps(self) -> tuple[Step, Step, Step, Step]:
        """``start``, ``join``, ``settle``, ``finish``."""
        return self.start, self.join, self.settle, self.finish

    @property
    def closed(self) -> bool:
        """True once the row is gone under the middleware (its scoreboard closed)."""
        return bool(self._timer.closed)

    def settle_at(self, now: int) -> int:
        """:attr:`settle` at a given time (the clock failed)."""
        return int(self._timer.settle_at(now))

    def finish_at(self, now: int) -> int:
        """:attr:`finish` at a given time (the clock failed)."""
        return int(self._timer.finish_at(now))

    def publish_overlap(self, acct: Accounting) -> None:
        """The response sum, then the flag saying it is kept (readers load them the other way)."""
        row = self._row
        row.response_ns = acct.response_total
        row.overlapped = int(acct.overlapped)

    def publish_horizon(self, acct: Accounting) -> None:
        """The horizon's figures, its time last (readers take a zero time as no horizon)."""
        row = self._row
        row.horizon_busy_ns = acct.horizon_busy_ns
        row.horizon_requests = acct.horizon_done
        row.horizon_response_ns = acct.horizon_response_ns
        row.horizon_ns = acct.horizon_ns if acct.started else 0

    def publish_gc(self, acct: Accounting) -> None:
        """The garbage collector's pauses."""
        row = self._row
        row.gc_ns = acct.gc_ns
        row.gc_collections = acct.gc_collections

    def release(self) -> None:
        """Zero the row and free it for another worker; its steps then raise ``ClosedError``."""
        self._row.release()
