"""The accounting of one process's requests, sans-IO: times in, figures out.

:class:`Accounting` is told when each request enters and leaves, as
integer nanoseconds of one monotonic clock, and keeps the figures the seed
defines: how many requests entered and finished, how long at least one was
in flight (busy time counts overlapping requests once, so utilization never
exceeds 100 %), the summed request durations, and the same figures at the
start of the current horizon. It reads no clock, takes no lock, touches no
shared memory and writes nothing: the middleware (``_core``) reads the
clock, decides who may call it when (``_guard``) and publishes the figures
on the worker's scoreboard row (``_row``), whose C steps apply the same
rules to the same times.

Example::

    >>> acct = Accounting(window_ns=100 * 10**9)
    >>> acct.enter(1_000), acct.start_horizon(1_000)
    (False, None)
    >>> acct.enter(1_500)  # a second request in flight: the first overlap
    True
    >>> acct.leave(1_000, 2_000), acct.leave(1_500, 4_000)
    (1000, 2500)
    >>> acct.done, acct.busy_ns, acct.response_total
    (2, 3000, 3500)
"""

from __future__ import annotations

__all__ = ["NEVER", "Accounting"]

#: A time no clock reaches: the deadline of what is never due.
NEVER = 1 << 126


class Accounting:
    """One process's request figures, changed only by the events it is told of.

    The figures, all ints (times in ns of the caller's clock):

    - ``in_flight``, ``done``: requests inside now, and finished since the
      process began (:attr:`entered` is their sum);
    - ``busy_ns``: time with at least one request in flight, settled at
      every request's end; ``since_ns``: the time it is settled up to (the
      last event's), so the busy time up to ``now`` is ``busy_ns + now -
      since_ns`` while a request is in flight;
    - ``overlapped``, ``response_ns``: the summed durations of the finished
      requests are :attr:`response_total`: ``busy_ns`` until two requests
      have been in flight at once (they are equal until then, so nothing
      more is kept), ``response_ns`` from then on;
    - ``horizon_ns`` and ``horizon_busy_ns``, ``horizon_done``,
      ``horizon_response_ns``: when the horizon began (``started`` says
      whether it has) and the figures at that moment;
    - ``gc_ns``, ``gc_collections``: garbage-collector pauses reported by
      :meth:`add_gc`.

    ``due_ns`` is the earliest time at which the caller has periodic work
    (a report, a process title, or :meth:`horizon_over`); the caller sets
    it, :meth:`horizon_ends_ns` helps.
    """

    __slots__ = (
        "busy_ns",
        "done",
        "due_ns",
        "gc_collections",
        "gc_ns",
        "horizon_busy_ns",
        "horizon_done",
        "horizon_ns",
        "horizon_response_ns",
        "in_flight",
        "overlapped",
        "response_ns",
        "since_ns",
        "started",
        "window_ns",
    )

    def __init__(self, window_ns: int) -> None:
        self.window_ns = window_ns
        self.in_flight = self.done = 0
        self.busy_ns = self.since_ns = 0
        self.overlapped = False
        self.response_ns = 0
        self.started = False
        self.horizon_ns = self.horizon_busy_ns = self.horizon_done = self.horizon_response_ns = 0
        self.gc_ns = self.gc_collections = 0
        self.due_ns = NEVER

    def enter(self, now: int) -> bool:
        """A request enters at ``now``; true when it is the first ever to overlap another.

        From that first overlap on, :attr:`response_ns` is kept per request
        (it starts as the busy time settled so far); the caller publishes it.
        """
        n = self.in_flight
        self.in_flight = n + 1
        if not n:
            self.since_ns = now
            return False
        if self.overlapped:
            return False
        self.overlapped = True
        self.response_ns = self.busy_ns
        return True

    def leave(self, started: int, now: int) -> int:
        """The request that entered at ``started`` leaves at ``now``; returns its duration.

        Settles the busy time up to ``now`` (a clock that went back settles
        nothing), as the row's busy-timer step does.
        """
        self.in_flight -= 1
        self.done += 1
        settled = now - self.since_ns
        if settled > 0:
            self.busy_ns += settled
        self.since_ns = now
        duration = now - started
        if self.overlapped:
            self.response_ns += duration
        return duration

    @property
    def entered(self) -> int:
        """Requests that entered since the process began."""
        return self.done + self.in_flight

    @property
    def response_total(self) -> int:
        """The summed durations of the finished requests (ns)."""
        return self.response_ns if self.overlapped else self.busy_ns

    def busy_at(self, now: int) -> int:
        """The busy time up to ``now``: settled, plus the request in flight's part."""
        busy = self.busy_ns
        if self.in_flight and now > self.since_ns:
            busy += now - self.since_ns
        return busy

    def start_horizon(self, now: int) -> None:
        """Begin a new horizon at ``now``: the horizon's figures count from here."""
        self.started = True
        self.horizon_ns = now
        self.horizon_busy_ns = self.busy_at(now)
        self.horizon_done = self.done
        self.horizon_response_ns = self.response_total

    def horizon_over(self, now: int) -> bool:
        """Whether a request ending at ``now`` restarts the horizon (``window_ns`` after it)."""
        return self.started and now - self.horizon_ns > self.window_ns

    def horizon_ends_ns(self) -> int:
        """The first time :meth:`horizon_over` is true (:data:`NEVER` before the first)."""
        return self.horizon_ns + self.window_ns + 1 if self.started else NEVER

    def add_gc(self, pause_ns: int) -> None:
        """One garbage collection, which paused the process ``pause_ns``."""
        self.gc_ns += pause_ns
        self.gc_collections += 1

    def values(self) -> dict[str, int]:
        """The figures under the names of a scoreboard row's fields (``FIELDS``).

        So this process's own figures are read as any row is
        (:func:`process_utilization.worker_stats`).
        """
        return {
            "requests": self.done,
            "entered": self.entered,
            "busy_ns": self.busy_ns,
            "overlapped": int(self.overlapped),
            "response_ns": self.response_ns,
            "busy_since_ns": self.since_ns,
            "horizon_ns": self.horizon_ns if self.started else 0,
            "horizon_busy_ns": self.horizon_busy_ns,
            "horizon_requests": self.horizon_done,
            "horizon_response_ns": self.horizon_response_ns,
            "gc_ns": self.gc_ns,
            "gc_collections": self.gc_collections,
        }
