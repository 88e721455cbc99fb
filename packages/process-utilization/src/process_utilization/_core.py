"""The framework-neutral accounting shared by the WSGI and ASGI middleware.

Busy time is the time with at least one request in flight: when requests
overlap (threads, asyncio) the overlap counts once, so utilization never
exceeds 100 %. All times are integer nanoseconds of an injectable clock.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from shm_counters import Scoreboard

from ._board import DEFAULT_SLOTS, SEGMENT_ENV, open_scoreboard, render_json
from ._board import render_text as _render_text
from ._board import worker_stats as _worker_stats
from ._errors import ConfigError
from ._extras import require

__all__ = ["GcStats", "StatsdClient", "UtilizationCore", "UtilizationStats"]

_log = logging.getLogger("process_utilization")

_NEVER = 1 << 126  # a deadline no clock reaches


class StatsdClient(Protocol):
    """What the middleware needs of a statsd client (``statsd.StatsClient``)."""

    def timing(self, stat: str, delta: float, rate: float = 1) -> None: ...
    def incr(self, stat: str, count: int = 1, rate: float = 1) -> None: ...


@dataclass(frozen=True, slots=True)
class GcStats:
    """Garbage-collector pauses seen since tracking began (``track_gc=True``)."""

    collections: int
    seconds: float


@dataclass(frozen=True, slots=True)
class UtilizationStats:
    """This process's figures at one moment (times in seconds, averages in ms)."""

    horizon: float
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


def _check_seconds(name: str, value: object, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not value > 0
        or value == float("inf")
    ):
        allowed = "a positive number of seconds" + (" or None" if allow_none else "")
        raise ConfigError(f"{name} must be {allowed}, got {value!r}")


def _after_fork_in_child(ref: weakref.ReferenceType[UtilizationCore]) -> None:
    core = ref()
    if core is not None:
        core._after_fork()


class UtilizationCore:
    """Busy/idle accounting for one process, shared by both middleware flavours.

    Not used directly: :class:`process_utilization.ProcessUtilization`
    (WSGI) and :class:`process_utilization.asgi.ProcessUtilization` (ASGI)
    add the protocol. Everything here is safe with requests in flight in
    several threads at once.
    """

    #: The instance in this process (the last one constructed).
    singleton: ClassVar[Any] = None

    def __init__(
        self,
        *,
        window: float = 100.0,
        report_interval: float | None = 300.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        scoreboard: Scoreboard | None = None,
        segment: str | None = None,
        slots: int = DEFAULT_SLOTS,
        stats_path: str | None = None,
        proctitle: bool = False,
        proctitle_prefix: str | None = None,
        proctitle_interval: float = 1.0,
        statsd: StatsdClient | str | None = None,
        statsd_prefix: str | None = None,
        track_gc: bool = False,
    ) -> None:
        _check_seconds("window", window)
        _check_seconds("report_interval", report_interval, allow_none=True)
        _check_seconds("proctitle_interval", proctitle_interval)
        if stats_path is not None and not (
            isinstance(stats_path, str) and stats_path.startswith("/")
        ):
            raise ConfigError(
                f"stats_path must be None or a path starting with '/', got {stats_path!r}"
            )
        self.window = float(window)
        self.report_interval = None if report_interval is None else float(report_interval)
        self.stats_path = stats_path
        self._clock = clock
        self._wall_clock = wall_clock
        self._now: Callable[[], int] = (
            time.monotonic_ns if clock is time.monotonic else lambda: round(clock() * 1e9)
        )
        self._window_ns = round(self.window * 1e9)
        self._report_ns = None if report_interval is None else round(report_interval * 1e9)
        self._title_ns = round(proctitle_interval * 1e9)

        if scoreboard is None:
            segment = segment or os.environ.get(SEGMENT_ENV) or None
            scoreboard = open_scoreboard(segment, slots=slots)
        self.scoreboard: Scoreboard = scoreboard
        self._row: Any = None
        self._row_failed = False

        self._setproctitle: Callable[[str], None] | None = None
        self._getproctitle: Callable[[], str] | None = None
        if proctitle:
            mod = require("setproctitle", feature="proctitle=True", extra="setproctitle")
            self._setproctitle = mod.setproctitle
            self._getproctitle = mod.getproctitle
        self._proctitle_prefix = proctitle_prefix

        self._statsd: StatsdClient | None = None
        self._owns_statsd = False
        if isinstance(statsd, str):
            host, sep, port = statsd.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ConfigError(f"statsd must be a client or 'host:port', got {statsd!r}")
            mod = require("statsd", feature="statsd=", extra="statsd")
            self._statsd = mod.StatsClient(host.strip("[]"), int(port), prefix=statsd_prefix)
            self._owns_statsd = True
        elif statsd is not None:
            self._statsd = statsd

        self._lock = threading.Lock()
        self._reset_all()

        self.track_gc = bool(track_gc)
        self._gc_start = 0
        self._gc_ns = 0
        self._gc_collections = 0
        if self.track_gc:
            gc.callbacks.append(self._gc_callback)

        os.register_at_fork(
            after_in_child=functools.partial(_after_fork_in_child, weakref.ref(self))
        )
        type(self).singleton = self

    # -- state ---------------------------------------------------------------

    def _reset_all(self) -> None:
        """Forget everything (construction, and in a forked child)."""
        self._started = False
        self._in_flight = 0
        self.total_requests = 0
        self.requests = 0
        self._completed = 0
        self._response_ns = 0
        self._busy_ns = 0
        self._busy_since = 0
        self._horizon = 0
        self._horizon_busy = 0
        self._horizon_response = 0
        self._next_event = _NEVER
        self._next_report = _NEVER
        self._next_title = _NEVER
        self._title_base = ""

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._row = None
        self._row_failed = False
        self._reset_all()
        self._gc_ns = 0
        self._gc_collections = 0

    def close(self) -> None:
        """Stop GC tracking, release the row, close an owned statsd client.

        The statsd client closed is the one the middleware made itself from
        ``"host:port"``; a client passed in stays open.

        Example::

            mw = ProcessUtilization(app, track_gc=True)
            ...
            mw.close()
        """
        if self.track_gc:
            with contextlib.suppress(ValueError):
                gc.callbacks.remove(self._gc_callback)
            self.track_gc = False
        if self._owns_statsd and self._statsd is not None:
            close = getattr(self._statsd, "close", None)
            if close is not None:
                close()
            self._statsd = None
        row, self._row = self._row, None
        self._row_failed = True
        if row is not None:
            try:
                row.release()
            except Exception as exc:
                _log.warning("process_utilization: releasing the row failed: %r", exc)

    # -- the scoreboard row ----------------------------------------------------

    def _claim(self) -> Any:
        """Claim this process's row (lazily, once per process).

        The row starts from this process's current figures; afterwards the
        hot path only adds to it (atomic adds, cheaper than stores).
        """
        try:
            row = self.scoreboard.claim()
            row.in_flight = self._in_flight
            row.busy_ns = self._busy_ns
            row.busy_since_ns = self._busy_since if self._in_flight else 0
            row.requests = self._completed
            row.response_ns = self._response_ns
            row.gc_ns = self._gc_ns
            row.gc_collections = self._gc_collections
            self._publish_horizon(row)
            self._incr_in_flight = row.incr_in_flight
            self._decr_in_flight = row.decr_in_flight
            self._incr_busy = row.incr_busy_ns
            self._incr_requests = row.incr_requests
            self._incr_response = row.incr_response_ns
        except Exception as exc:
            self._row_failed = True
            _log.warning(
                "process_utilization: no scoreboard row for pid %d, "
                "stats of this worker will not be shared: %r",
                os.getpid(),
                exc,
            )
            return None
        self._row = row
        return row

    def _row_broken(self, exc: BaseException) -> None:
        self._row = None
        self._row_failed = True
        _log.warning("process_utilization: scoreboard update failed: %r", exc)

    def _publish_horizon(self, row: Any) -> None:
        row.horizon_busy_ns = self._horizon_busy
        row.horizon_requests = self._completed - self.requests
        row.horizon_response_ns = self._horizon_response
        row.horizon_ns = self._horizon

    # -- the per-request path ---------------------------------------------------

    def start_request(self) -> int:
        """Count a request as in flight; returns its start (clock nanoseconds).

        The middleware calls this; call it yourself only when accounting for
        work that does not pass through the middleware, and always pair it
        with :meth:`record_request`.

        Example::

            started = mw.start_request()
            try:
                do_work()
            finally:
                mw.record_request(started)
        """
        # The clock is read under the lock so that busy intervals settled by
        # concurrent threads never run backwards.
        lock = self._lock
        lock.acquire()
        try:
            now = self._now()
            if not self._started:
                self._first_request(now)
            row = self._row
            if row is None and not self._row_failed:
                row = self._claim()
            self.total_requests += 1
            n = self._in_flight
            self._in_flight = n + 1
            if n == 0:
                self._busy_since = now
            if row is not None:
                try:
                    if n == 0:
                        row.busy_since_ns = now
                    self._incr_in_flight()
                except Exception as exc:
                    self._row_broken(exc)
        finally:
            lock.release()
        return now

    def record_request(self, started: int) -> str | None:
        """Count a request started at ``started`` as finished now.

        Called once per request after its response body is closed. Returns
        the periodic report line when one is due (the middleware writes it
        to ``wsgi.errors`` or the logger), else ``None``.
        """
        lock = self._lock
        lock.acquire()
        try:
            now = self._now()
            n = self._in_flight - 1
            self._in_flight = n
            self.requests += 1
            self._completed += 1
            duration = now - started
            self._response_ns += duration
            settled = now - self._busy_since
            self._busy_ns += settled
            self._busy_since = now
            if self._row is not None:
                try:
                    self._incr_busy(settled)
                    if n:
                        self._row.busy_since_ns = now
                    self._incr_requests()
                    self._incr_response(duration)
                    self._decr_in_flight()
                except Exception as exc:
                    self._row_broken(exc)
            if now >= self._next_event:
                return self._periodic(now)
            return None
        finally:
            lock.release()

    # -- horizon, title, report (not per request) -------------------------------

    def _first_request(self, now: int) -> None:
        self._started = True
        if self._getproctitle is not None:
            self._title_base = self._proctitle_prefix or self._getproctitle()
        self._reset_horizon(now)
        self._next_report = _NEVER if self._report_ns is None else now + self._report_ns
        self._next_title = now if self._setproctitle is not None else _NEVER
        self._update_next_event()

    def first_request(self) -> None:
        """Start the horizon (and the report and title timers); runs once.

        The middleware calls it before the first request; calling it again
        does nothing.
        """
        with self._lock:
            if not self._started:
                self._first_request(self._now())

    def _update_next_event(self) -> None:
        self._next_event = min(
            self._horizon + self._window_ns + 1, self._next_report, self._next_title
        )

    def _reset_horizon(self, now: int) -> None:
        self._horizon = now
        busy = self._busy_ns
        if self._in_flight:
            busy += now - self._busy_since
        self._horizon_busy = busy
        self._horizon_response = self._response_ns
        self.requests = 0
        row = self._row
        if row is not None:
            try:
                self._publish_horizon(row)
            except Exception as exc:
                self._row_broken(exc)
        self._update_next_event()

    def reset_horizon(self) -> None:
        """Start a new horizon now: the averages cover only what follows.

        Happens by itself after a request ends more than ``window`` seconds
        after the horizon, so long-past traffic does not skew the averages.
        """
        with self._lock:
            self._reset_horizon(self._now())

    def reset_stats(self) -> None:
        """Zero ``total_requests`` and start a new horizon.

        The cumulative counters shared on the scoreboard (busy seconds,
        completed requests) keep growing, so rates derived from them stay
        exact.
        """
        with self._lock:
            self.total_requests = 0
            self._reset_horizon(self._now())

    def _periodic(self, now: int) -> str | None:
        line = None
        if now >= self._next_report and self._report_ns is not None:
            self._next_report = now + self._report_ns
            line = self.report_line(self._snapshot(now))
        if now >= self._next_title and self._setproctitle is not None:
            self._next_title = now + self._title_ns
            try:
                self._setproctitle(self.proctitle(self._snapshot(now)))
            except Exception as exc:
                _log.warning("process_utilization: setproctitle failed: %r", exc)
        if now - self._horizon > self._window_ns:
            self._reset_horizon(now)
        self._update_next_event()
        return line

    # -- reading -----------------------------------------------------------------

    def _snapshot(self, now: int) -> UtilizationStats:
        busy = self._busy_ns
        if self._in_flight:
            busy += now - self._busy_since
        if self._started:
            horizon_ns = max(0, now - self._horizon)
            active_ns = min(horizon_ns, busy - self._horizon_busy)
        else:
            horizon_ns = active_ns = 0
        requests = self.requests
        h = horizon_ns / 1e9
        return UtilizationStats(
            horizon=self._horizon / 1e9,
            horizon_time=h,
            active_time=active_ns / 1e9,
            idle_time=(horizon_ns - active_ns) / 1e9,
            requests=requests,
            total_requests=self.total_requests,
            in_flight=self._in_flight,
            percentage_active=100 * active_ns / horizon_ns if horizon_ns else 0.0,
            percentage_idle=(100 * (horizon_ns - active_ns) / horizon_ns if horizon_ns else 100.0),
            requests_per_second=requests / h if horizon_ns else 0.0,
            average_response_time=(
                (self._response_ns - self._horizon_response) / requests / 1e6 if requests else 0.0
            ),
            busy_seconds_total=busy / 1e9,
            gc_collections=self._gc_collections,
            gc_seconds=self._gc_ns / 1e9,
        )

    def stats(self) -> UtilizationStats:
        """All figures of this process at one moment.

        Example::

            s = ProcessUtilization.singleton.stats()
            print(f"{s.percentage_active:.1f}% busy, {s.requests_per_second} req/s")
        """
        with self._lock:
            return self._snapshot(self._now())

    @property
    def horizon(self) -> float:
        """Clock time (seconds) when the current sampling horizon began."""
        return self._horizon / 1e9

    @property
    def in_flight(self) -> int:
        """Requests of this process inside the application right now."""
        return self._in_flight

    @property
    def horizon_time(self) -> float:
        """Seconds since the horizon."""
        return self.stats().horizon_time

    @property
    def active_time(self) -> float:
        """Seconds since the horizon with at least one request in flight."""
        return self.stats().active_time

    @property
    def idle_time(self) -> float:
        """Seconds since the horizon with no request in flight."""
        return self.stats().idle_time

    @property
    def percentage_active(self) -> float:
        """Per cent of the horizon spent busy (never above 100)."""
        return self.stats().percentage_active

    @property
    def percentage_idle(self) -> float:
        """Per cent of the horizon spent idle."""
        return self.stats().percentage_idle

    @property
    def requests_per_second(self) -> float:
        """Requests completed per second since the horizon."""
        return self.stats().requests_per_second

    @property
    def average_response_time(self) -> float:
        """Mean duration of the requests completed since the horizon, in ms."""
        return self.stats().average_response_time

    @property
    def gc_stats(self) -> GcStats:
        """GC collections and pause seconds seen while ``track_gc`` was on."""
        return GcStats(self._gc_collections, self._gc_ns / 1e9)

    def report_line(self, stats: UtilizationStats) -> str:
        """The periodic report: one ``key=value`` line (no newline)."""
        row = self._row
        worker = "-" if row is None else str(row.index)
        line = (
            f"process-utilization pid={os.getpid()} worker={worker}"
            f" requests={stats.requests} total_requests={stats.total_requests}"
            f" in_flight={stats.in_flight} horizon={stats.horizon_time:.3f}s"
            f" active={stats.active_time:.3f}s idle={stats.idle_time:.3f}s"
            f" util={stats.percentage_active:.1f}%"
            f" rps={stats.requests_per_second:.2f}"
            f" avg={stats.average_response_time:.1f}ms"
        )
        if self.track_gc:
            line += f" gc={stats.gc_collections} gc_time={stats.gc_seconds:.3f}s"
        return line

    def proctitle(self, stats: UtilizationStats) -> str:
        """The process title shown by ``ps`` when ``proctitle=True``."""
        row = self._row
        worker = -1 if row is None else row.index
        return (
            f"{self._title_base} worker[{worker:02d}]: "
            f"{stats.total_requests} reqs, {stats.requests_per_second:.1f} req/s, "
            f"{stats.average_response_time:.0f}ms avg, "
            f"{stats.percentage_active:.1f}% util"
        ).lstrip()

    # -- extras ----------------------------------------------------------------------

    def _gc_callback(self, phase: str, info: dict[str, int]) -> None:
        # Runs inside any allocation, possibly while self._lock is held:
        # never take the lock here.
        try:
            if phase == "start":
                self._gc_start = self._now()
                return
            self._gc_ns += self._now() - self._gc_start
            self._gc_collections += 1
            row = self._row
            if row is not None:
                row.gc_ns = self._gc_ns
                row.gc_collections = self._gc_collections
        except Exception as exc:  # pragma: no cover - defensive
            _log.warning("process_utilization: GC accounting failed: %r", exc)

    def _send_statsd(self, started: int, method: str, status: int) -> None:
        """Send one request's timings and status to statsd (one packet)."""
        client = self._statsd
        if client is None:
            return
        ms = (self._now() - started) / 1e6
        try:
            pipe_factory = getattr(client, "pipeline", None)
            target: Any = pipe_factory() if pipe_factory is not None else client
            target.timing("request_time", ms)
            target.timing(f"request_time.{method.lower()}", ms)
            target.incr(f"status_code.{status}")
            if pipe_factory is not None:
                target.send()
        except Exception as exc:
            _log.warning("process_utilization: statsd send failed: %r", exc)

    # -- the stats endpoint ------------------------------------------------------------

    def render_stats(self, want_json: bool) -> tuple[str, bytes]:
        """The per-worker table: ``(content_type, body)``."""
        workers = _worker_stats(self.scoreboard, clock=self._clock)
        if want_json:
            return "application/json", render_json(workers).encode()
        return "text/plain; charset=utf-8", _render_text(workers).encode()
