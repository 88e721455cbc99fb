"""The middleware's core: the accounting driven per request, and the figures read back.

:class:`UtilizationCore` wires the parts together and drives them; each
part is its own module: the accounting (``_accounting``, pure), the lock
policy (``_guard``), the scoreboard row (``_row``), where the figures are
shared (``_segments``), the report (``_report``), the process title
(``_title``), statsd (``_statsd``), GC pauses (``_gc``) and the stats
endpoint (``_endpoint``). The adapters (``_wsgi``, ``asgi``) call
:meth:`UtilizationCore._enter` when a request starts and
:meth:`UtilizationCore._leave` when it ends.

Fork safety, as in every module of the family that holds per-process
state: live instances are kept in a module-level ``WeakSet`` and one
``os.register_at_fork(after_in_child=...)`` hook, registered at import,
calls each one's ``_after_fork()``.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from typing import Any, ClassVar, overload

from raindrops_core import DEFAULT_ALLOW
from raindrops_core.adapter import AccessList
from shm_counters import Histogram, Scoreboard, monotonic_ns

from ._accounting import Accounting
from ._board import (
    DEFAULT_LATENCY_BUCKETS,
    DEFAULT_SLOTS,
    latency_edges,
    render_json,
    render_text,
    worker_stats,
)
from ._endpoint import StatsEndpoint, check_stats_path
from ._figures import GcStats, UtilizationStats, read_figures, utilization_stats
from ._gc import GcTracker
from ._guard import Guarded
from ._options import check_callable, check_seconds, check_slots, check_text
from ._report import Report, check_report_to, report_line
from ._row import Row, clock_steps
from ._segments import Segments
from ._statsd import StatsdClient, check_statsd, make_client, send_request
from ._title import Title, title_text

__all__ = ["UtilizationCore"]

_log = logging.getLogger("process_utilization")


class _Figure:
    """A figure of :meth:`UtilizationCore.stats` read as an attribute: ``mw.percentage_active``."""

    def __init__(self, name: str, doc: str) -> None:
        self.name = name
        self.__doc__ = doc

    @overload
    def __get__(self, core: None, owner: type) -> _Figure: ...
    @overload
    def __get__(self, core: UtilizationCore, owner: type) -> float: ...
    def __get__(self, core: UtilizationCore | None, owner: type) -> _Figure | float:
        if core is None:
            return self
        value: float = getattr(core.stats(), self.name)
        return value


_LIVE: weakref.WeakSet[UtilizationCore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for core in list(_LIVE):
        core._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class UtilizationCore(Guarded):
    """Busy/idle accounting for one process, shared by both middleware flavours.

    Not used directly: :class:`process_utilization.ProcessUtilization`
    (WSGI) and :class:`process_utilization.asgi.ProcessUtilization` (ASGI)
    add the protocol. Safe with requests in flight in several threads or
    asyncio tasks at once; who takes the lock when is ``_guard``'s policy.
    """

    # Slots: every attribute the per-request path touches is read at a fixed
    # offset (an instance dict would cost a lookup); instances take no others.
    __slots__ = (
        "__weakref__",
        "_acct",
        "_add_response",
        "_clock",
        "_current",
        "_endpoint",
        "_finish",
        "_gc",
        "_horizon_wall",
        "_join",
        "_now",
        "_owns_statsd",
        "_report",
        "_row",
        "_row_failed",
        "_segments",
        "_settle",
        "_start",
        "_statsd",
        "_title",
        "_wall_clock",
        "_warned",
        "report_interval",
        "stats_path",
        "total_requests",
        "track_gc",
        "window",
    )

    #: The instance in this process (the last one constructed).
    singleton: ClassVar[Any] = None

    def __init__(
        self,
        *,
        window: float = 100.0,
        report_interval: float | None = 300.0,
        report_to: logging.Logger | logging.LoggerAdapter[Any] | Any | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        scoreboard: Scoreboard | None = None,
        segment: str | os.PathLike[str] | None = None,
        slots: int = DEFAULT_SLOTS,
        stats_path: str | None = None,
        allow: Iterable[str] | AccessList = DEFAULT_ALLOW,
        proctitle: bool = False,
        proctitle_prefix: str | None = None,
        proctitle_interval: float = 1.0,
        statsd: StatsdClient | str | None = None,
        statsd_prefix: str | None = None,
        track_gc: bool = False,
        latency_buckets: Sequence[float] | None = DEFAULT_LATENCY_BUCKETS,
    ) -> None:
        check_seconds("window", window)
        check_seconds("report_interval", report_interval, allow_none=True)
        check_seconds("proctitle_interval", proctitle_interval)
        check_callable("clock", clock)
        check_callable("wall_clock", wall_clock)
        check_report_to(report_to)
        check_text("proctitle_prefix", proctitle_prefix)
        check_text("statsd_prefix", statsd_prefix)
        check_stats_path(stats_path)
        self._endpoint = StatsEndpoint(allow)
        statsd_address = check_statsd(statsd)
        check_slots(slots)
        self.window = float(window)
        self.report_interval = None if report_interval is None else float(report_interval)
        self.stats_path = stats_path
        self._clock = clock
        self._wall_clock = wall_clock
        # The default clock is the one the row's C steps read themselves
        # (CLOCK_MONOTONIC, time.monotonic's on Linux); another clock is read
        # in Python and handed to them.
        self._now: Callable[[], int] = (
            monotonic_ns if clock is time.monotonic else lambda: round(clock() * 1e9)
        )
        self._segments = Segments(
            scoreboard=scoreboard,
            segment=segment,
            slots=slots,
            edges=latency_edges(latency_buckets),
        )
        self._report = Report(
            None if report_interval is None else round(report_interval * 1e9), report_to
        )
        self._title = Title(proctitle, proctitle_prefix, round(proctitle_interval * 1e9))
        self._owns_statsd = statsd_address is not None
        self._statsd: Any = (
            statsd if statsd_address is None else make_client(statsd_address, statsd_prefix)
        )
        self._current: contextvars.ContextVar[int | None] = contextvars.ContextVar(
            f"process_utilization_start_{id(self)}", default=None
        )
        self._fresh()
        self.track_gc = bool(track_gc)
        self._gc = GcTracker(self._now, self._gc_pause, self._warn_once) if track_gc else None
        _LIVE.add(self)
        type(self).singleton = self

    # -- this process's state ---------------------------------------------------

    def _fresh(self) -> None:
        """Forget this process's figures (construction, and in a forked child)."""
        self._guard_reset()
        self._acct = Accounting(round(self.window * 1e9))
        self.total_requests = 0
        self._horizon_wall: float | None = None
        self._row: Row | None = None
        self._row_failed = False
        self._no_row()
        self._report.reset()
        self._title.reset()
        self._warned: set[str] = set()

    def _after_fork(self) -> None:
        self._segments.after_fork()
        self._fresh()

    def close(self) -> None:
        """Stop GC tracking, release the row, close an owned statsd client.

        The statsd client closed is the one the middleware made itself from
        ``"host:port"``; a client passed in stays open.

        Example::

            mw = ProcessUtilization(app, track_gc=True)
            ...
            mw.close()
        """
        if self._gc is not None:
            self._gc.stop()
        self.track_gc = False
        if self._owns_statsd and self._statsd is not None:
            close = getattr(self._statsd, "close", None)
            if close is not None:
                close()
        self._statsd = None
        self._segments.stop_latency()
        row, self._row = self._row, None
        self._row_failed = True
        self._no_row()
        if row is not None:
            try:
                row.release()
            except Exception as exc:
                _log.warning("process_utilization: releasing the row failed: %r", exc)

    def _warn_once(self, what: str, exc: BaseException) -> None:
        """Log ``what failed`` at WARNING, the first time only in this process."""
        if what in self._warned:
            return
        self._warned.add(what)
        _log.warning("process_utilization: %s failed (logged once per process): %r", what, exc)

    def _wall_now(self) -> float:
        try:
            return self._wall_clock()
        except Exception as exc:
            self._warn_once("wall_clock", exc)
            return time.time()

    # -- the row -------------------------------------------------------------------

    @property
    def scoreboard(self) -> Scoreboard:
        """The scoreboard every worker of the server shares (opened on first use).

        By default ``<shm>/raindrops-<euid>/utilization-<inode of the server
        socket>`` (:func:`shm_counters.server_segment`), the same in every
        worker, forked or spawned. A worker that cannot find or open it
        uses its own memory: it logs why, once, :attr:`unshared` says so,
        and so do the stats endpoint and the Prometheus collector.
        """
        return self._segments.board

    @property
    def unshared(self) -> str | None:
        """Why this worker's figures are its own only (``None``: they are shared)."""
        return self._segments.unshared

    @property
    def latency(self) -> Histogram | None:
        """Every worker's request durations (``None`` with ``latency_buckets=None``)."""
        return self._segments.latency

    def _no_row(self) -> None:
        """The steps of a worker without a row: the clock alone."""
        self._start, self._join, self._settle, self._finish = clock_steps(self._now)
        self._add_response: Callable[[int], int] | None = None

    def _claim(self) -> None:
        """Claim this process's row (once per process) and take its steps."""
        try:
            row = Row.claim(
                self.scoreboard, self._acct, None if self._now is monotonic_ns else self._now
            )
        except Exception as exc:
            self._row_failed = True
            _log.warning(
                "process_utilization: no scoreboard row for pid %d, "
                "stats of this worker will not be shared: %r",
                os.getpid(),
                exc,
            )
            return
        self._row = row
        self._start, self._join, self._settle, self._finish = row.steps()
        self._add_response = row.add_response

    def _row_broken(self, exc: BaseException) -> None:
        """The row failed (closed under the middleware, say): go on without it."""
        self._row = None
        self._row_failed = True
        self._no_row()
        _log.warning("process_utilization: scoreboard update failed: %r", exc)

    def _publish(self, what: Callable[[Row, Accounting], None]) -> None:
        row = self._row
        if row is not None:
            try:
                what(row, self._acct)
            except Exception as exc:
                self._row_broken(exc)

    def _gc_pause(self, pause_ns: int) -> None:
        # Runs inside any allocation, possibly while the lock is held: no lock here.
        self._acct.add_gc(pause_ns)
        self._publish(Row.publish_gc)

    # -- the per-request path ------------------------------------------------------
    #
    # A request's start (_enter) and end (_leave) each run one short section:
    # the row's step (one C call: the clock read, the row written), then the
    # accounting told the time. The section runs lock-free or under the lock,
    # as _guard's policy says (`held`); everything slow comes after it.

    def _enter(self, env: MutableMapping[str, Any] | None) -> int | None:
        """A request starts: its start (clock ns), ``None`` if the clock failed (not counted).

        ``env`` (the WSGI environ or ASGI scope) gets ``process.total_requests``
        and ``process.request_start``; ``None`` (:meth:`reset_stats`) counts
        the request in flight only. Never raises for a failing clock or row.
        """
        self._inside = True
        held = self._detour and self._hold(env)
        try:
            if env is not None:
                self.total_requests = total = self.total_requests + 1
                env["process.total_requests"] = total
            acct = self._acct
            try:
                now: int | None = self._join() if acct.in_flight else self._start()
            except Exception as exc:
                now = self._retake(exc)
            if now is not None:
                if acct.enter(now):
                    self._publish(Row.publish_overlap)
                if held and self._cold:
                    self._warm(now, env)
        finally:
            if held:
                self._lock.release()
            else:
                self._inside = False
        if env is not None:
            # The seed's Time.now. Deriving it from the monotonic start and an
            # offset saves this read but costs as much in big-int maths.
            try:
                env["process.request_start"] = self._wall_clock()
            except Exception as exc:
                self._warn_once("wall_clock", exc)
                env["process.request_start"] = time.time()
        return now

    def _leave(self, started: int, method: object = None, status: int | None = None) -> str | None:
        """The request started at ``started`` ends now; never raises.

        Records its duration in the latency histogram and, with ``status``
        (statsd on and a response started), sends it to statsd. Returns the
        periodic report line when one is due (the adapter writes it out).
        """
        self._inside = True
        held = self._detour and self._hold(None)
        try:
            acct = self._acct
            busy = acct.in_flight > 1
            try:
                now = self._settle() if busy else self._finish()
            except Exception as exc:
                now = self._end_failed(exc, busy, started)
            duration = acct.leave(started, now)
            if acct.overlapped and self._add_response is not None:
                try:
                    self._add_response(duration)
                except Exception as exc:
                    self._row_broken(exc)
        finally:
            if held:
                self._lock.release()
            else:
                self._inside = False
        record = self._segments.record_latency
        if record is not None:
            record(duration)  # one C call; a negative duration records nothing
        if status is not None and self._statsd is not None:
            try:
                send_request(self._statsd, duration, method, status)
            except Exception as exc:
                self._warn_once("statsd send", exc)
        if now >= acct.due_ns:
            return self._periodic(now)
        return None

    def _hold(self, env: MutableMapping[str, Any] | None) -> bool:
        """Take the section the locked way: true, the lock held (see ``_guard``).

        The first request of this process also claims its row first, and
        names the requests' thread (not :meth:`reset_stats`, ``env=None``).
        """
        self._inside = False
        self._lock.acquire()
        if self._cold:
            if self._row is None and not self._row_failed:
                self._claim()
            if self._owner is None and env is not None:
                self._owner = threading.get_ident()
        return True

    def _warm(self, now: int, env: MutableMapping[str, Any] | None) -> None:
        """A start at ``now`` while this process is cold (lock held): the horizon begins.

        The first request (``env``: not :meth:`reset_stats`, which names no
        thread) opens the lock-free way; until then, and again if the clock
        failed, every request takes the locked way.
        """
        if not self._acct.started:
            self._first_request(now)
        if env is not None:
            self._warmed()

    def _retake(self, exc: Exception) -> int | None:
        """A step raised: the time from the clock alone, or ``None`` if it is the clock that fails.

        A row gone under the middleware (its scoreboard closed) retires its
        steps: it is dropped and the time read again without it. A failing
        clock is said once.
        """
        row = self._row
        if row is not None and row.closed:
            self._row_broken(exc)
            try:
                return self._now()
            except Exception as again:
                exc = again
        self._warn_once("clock", exc)
        return None

    def _end_failed(self, exc: Exception, busy: bool, started: int) -> int:
        """A request's end step raised (see :meth:`_retake`); the time it ends at.

        With a failing clock the request ends at the latest time known to
        have passed (its start, or the last settled time), so nothing more
        is counted.
        """
        now = self._retake(exc)
        if now is not None:
            return now
        now = max(started, self._acct.since_ns)
        row = self._row
        if row is not None:
            try:
                row.settle_at(now) if busy else row.finish_at(now)
            except Exception as again:
                self._row_broken(again)
        return now

    # -- horizon, report, title: not per request -----------------------------------

    def _periodic(self, now: int) -> str | None:
        """The report, title and horizon updates due at ``now``; never raises."""
        self._lock_out()
        try:
            if now < self._acct.due_ns:  # done meanwhile by another thread
                return None
            return self._periodic_due(now)
        except Exception as exc:
            self._warn_once("the periodic update", exc)
            return None
        finally:
            self._unlock()

    def _periodic_due(self, now: int) -> str | None:
        line = None
        report, title = self._report, self._title
        if now >= report.due_ns:
            report.next(now)
            line = self.report_line(self._snapshot(now))
        if now >= title.due_ns:
            title.next(now)
            try:
                title.show(self.proctitle(self._snapshot(now)))
            except Exception as exc:
                self._warn_once("setproctitle", exc)
        acct = self._acct
        if acct.horizon_over(now):
            # Another thread's request may have ended since: start where it settled.
            self._start_horizon(max(now, acct.since_ns))
        self._update_due()
        return line

    def _update_due(self) -> None:
        acct = self._acct
        acct.due_ns = min(acct.horizon_ends_ns(), self._report.due_ns, self._title.due_ns)

    def _start_horizon(self, now: int) -> None:
        self._acct.start_horizon(now)
        self._horizon_wall = self._wall_now()
        self._publish(Row.publish_horizon)
        self._update_due()

    def _first_request(self, now: int) -> None:
        try:
            self._title.start(now)
        except Exception as exc:
            self._warn_once("getproctitle", exc)
        self._report.start(now)
        self._start_horizon(now)

    def first_request(self) -> None:
        """Start the horizon and the report and title timers.

        The middleware calls it once per worker, before its first request,
        as the seed does; calling it again starts them afresh (in the seed
        it is ``reset_horizon``).
        """
        self._lock_out()
        try:
            self._first_request(self._now())
        finally:
            self._unlock()

    def reset_horizon(self) -> None:
        """Start a new horizon now: the averages cover only what follows.

        As in the seed, ``horizon`` becomes now and ``active_time`` and
        ``requests`` zero. Happens by itself when a request ends more than
        ``window`` seconds after the horizon, so long-past traffic does not
        skew the averages.
        """
        self._lock_out()
        try:
            self._start_horizon(self._now())
        finally:
            self._unlock()

    def reset_stats(self) -> int | None:
        """Start the clock for one request (the seed's per-request reset).

        Counts a request in flight (not in ``total_requests``: the
        middleware counts those per request) and returns its start, also
        remembered for this thread or asyncio task so that
        :meth:`record_request` records the right one when requests
        overlap (the seed keeps one attribute). ``None`` if the clock
        failed (logged once). Safe from any thread.

        Example::

            mw.reset_stats()
            try:
                do_work_outside_the_middleware()
            finally:
                mw.record_request()
        """
        self._lock_out()
        try:
            started = self._enter(None)
        finally:
            self._unlock()
        self._current.set(started)
        return started

    def record_request(self, started: int | None = None) -> str | None:
        """Record a request as finished now (the seed's after-the-body hook).

        ``started`` is what :meth:`reset_stats` returned; without it, the
        start remembered by the last :meth:`reset_stats` of this thread or
        task. Adds its duration to the horizon's figures, restarts the
        horizon after ``window`` seconds, and returns the periodic report
        line when one is due (the middleware writes it out), else ``None``.
        Never raises: with no start known it logs a warning once, as the
        seed warns when recording fails.
        """
        if started is None:
            started = self._current.get()
            self._current.set(None)
            if started is None:
                self._warn_once(
                    "record_request",
                    RuntimeError("record_request() without a reset_stats() before it"),
                )
                return None
        self._lock_out()
        try:
            return self._leave(started)
        finally:
            self._unlock()

    # -- reading -------------------------------------------------------------------

    def _snapshot(self, now: int) -> UtilizationStats:
        """This process's figures at ``now`` (lock held), read as every row is read."""
        reading = read_figures(self._acct.values(), now)
        return utilization_stats(reading, self._horizon_wall, self.total_requests)

    def stats(self) -> UtilizationStats:
        """All figures of this process at one moment.

        Example::

            s = ProcessUtilization.singleton.stats()
            print(f"{s.percentage_active:.1f}% busy, {s.requests_per_second} req/s")
        """
        self._lock_out()
        try:
            return self._snapshot(self._now())
        finally:
            self._unlock()

    @property
    def requests(self) -> int:
        """Requests completed since the horizon."""
        return self._acct.done - self._acct.horizon_done

    @property
    def horizon(self) -> float | None:
        """Wall-clock time (``time.time()`` seconds) when the horizon began.

        ``None`` before the first request, as the seed's ``nil``.
        """
        return self._horizon_wall

    @property
    def in_flight(self) -> int:
        """Requests of this process inside the application right now."""
        return self._acct.in_flight

    horizon_time = _Figure("horizon_time", "Seconds since the horizon.")
    active_time = _Figure("active_time", "Seconds since the horizon with a request in flight.")
    idle_time = _Figure("idle_time", "Seconds since the horizon with no request in flight.")
    percentage_active = _Figure("percentage_active", "Per cent of the horizon busy (<= 100).")
    percentage_idle = _Figure("percentage_idle", "Per cent of the horizon spent idle.")
    requests_per_second = _Figure("requests_per_second", "Requests completed per second.")
    average_response_time = _Figure(
        "average_response_time", "Mean duration of the horizon's requests, in ms."
    )

    @property
    def gc_stats(self) -> GcStats:
        """GC collections and pause seconds seen while ``track_gc`` was on."""
        acct = self._acct
        return GcStats(acct.gc_collections, acct.gc_ns / 1e9)

    @property
    def report_to(self) -> Any:
        """Where the report goes: ``None`` (the adapter's stream), a logger or a stream."""
        return self._report.to

    @report_to.setter
    def report_to(self, value: Any) -> None:
        self._report.to = value

    def _worker(self) -> int | None:
        row = self._row
        return None if row is None else row.index

    def report_line(self, stats: UtilizationStats) -> str:
        """The periodic report: one ``key=value`` line (no newline)."""
        return report_line(stats, self._worker(), gc=self.track_gc)

    def proctitle(self, stats: UtilizationStats) -> str:
        """The process title shown by ``ps`` when ``proctitle=True``."""
        return title_text(self._title.base, stats, self._worker())

    def _emit(self, line: str, default: Any) -> None:
        """Write one report line to ``report_to``, else to ``default`` (a stream)."""
        try:
            self._report.emit(line, default)
        except Exception as exc:
            self._warn_once("writing the report", exc)

    # -- the stats endpoint ----------------------------------------------------------

    def render_stats(self, want_json: bool) -> tuple[str, bytes]:
        """The per-worker table: ``(content_type, body)``.

        JSON has ``"unavailable": {"shared": REASON}`` when this worker's
        figures are its own only (the adapters also send
        ``X-Raindrops-Unavailable: shared``).
        """
        workers = worker_stats(self.scoreboard, clock=self._clock)
        if want_json:
            unshared = self.unshared
            unavailable = {} if unshared is None else {"shared": unshared}
            return "application/json", render_json(workers, unavailable=unavailable).encode()
        return "text/plain; charset=utf-8", render_text(workers).encode()
