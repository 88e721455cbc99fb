"""The framework-neutral accounting shared by the WSGI and ASGI middleware.

Busy time is the time with at least one request in flight: when requests
overlap (threads, asyncio) the overlap counts once, so utilization never
exceeds 100 %. All durations are integer nanoseconds of an injectable
monotonic clock; ``horizon`` alone is wall-clock time, as in the seed.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import gc
import ipaddress
import logging
import os
import re
import sys
import threading
import time
import weakref
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from shm_counters import (
    BusyTimer,
    Histogram,
    Scoreboard,
    ShmCountersError,
    monotonic_ns,
    server_segment,
)

from ._board import (
    ANONYMOUS,
    DEFAULT_LATENCY_BUCKETS,
    DEFAULT_SLOTS,
    LATENCY_NAME,
    LATENCY_SUFFIX,
    SEGMENT_ENV,
    SEGMENT_NAME,
    check_segment,
    latency_edges,
    open_scoreboard,
    render_json,
)
from ._board import render_text as _render_text
from ._board import worker_stats as _worker_stats
from ._errors import ConfigError
from ._extras import require

__all__ = [
    "UNAVAILABLE_HEADER",
    "GcStats",
    "StatsdClient",
    "UtilizationCore",
    "UtilizationStats",
]

#: The header naming what an answer lacks (``shared``: one worker's figures only),
#: as raindrops' endpoint sends it.
UNAVAILABLE_HEADER = "X-Raindrops-Unavailable"

_log = logging.getLogger("process_utilization")

_NEVER = 1 << 126  # a deadline no clock reaches

#: How long a locked caller waits for an unlocked section to end (a section
#: never waits for anything but the GIL: this bounds a loop, nothing more).
_WAIT_SECONDS = 1.0

#: rack-statsd's per-method timings: only these methods, spelled exactly so.
_METHOD_TIMINGS: dict[object, str] = {
    m: f"response_time.{m.lower()}" for m in ("GET", "HEAD", "POST", "PUT", "DELETE")
}

#: rack-statsd's status counter names; other codes send no status counter.
_STATUS_COUNTERS: dict[object, str] = {
    code: f"status_code.{name}"
    for code, name in (
        (200, "ok"),
        (201, "created"),
        (202, "accepted"),
        (301, "moved_permanently"),
        (302, "found"),
        (303, "see_other"),
        (304, "not_modified"),
        (305, "use_proxy"),
        (307, "temporary_redirect"),
        (400, "bad_request"),
        (401, "unauthorized"),
        (402, "payment_required"),
        (403, "forbidden"),
        (404, "missing"),
        (410, "gone"),
        (422, "invalid"),
        (500, "error"),
        (502, "bad_gateway"),
        (503, "node_down"),
        (504, "gateway_timeout"),
    )
}

_HOST_NAME = re.compile(r"[A-Za-z0-9_.-]+\Z")


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


def _check_callable(name: str, value: object) -> None:
    if not callable(value):
        raise ConfigError(f"{name} must be a callable returning seconds, got {value!r}")


def _check_text(name: str, value: object) -> None:
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{name} must be None or a string, got {value!r}")


def parse_statsd_address(value: str) -> tuple[str, int, bool]:
    """Split ``"host:port"`` or ``"[v6]:port"`` into ``(host, port, is_ipv6)``.

    Raises :class:`ConfigError` naming the value and the accepted forms.

    Example::

        parse_statsd_address("[::1]:8125")  # ("::1", 8125, True)
    """
    host, sep, port = value.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()):
        raise ConfigError(f"statsd must be a client or 'host:port', got {value!r}")
    number = int(port)
    if not 1 <= number <= 65535:
        raise ConfigError(f"statsd port must be 1..65535, got {value!r}")
    if host.startswith("[") or host.endswith("]"):
        inner = host[1:-1] if host.startswith("[") and host.endswith("]") else ""
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise ConfigError(
                f"statsd brackets must hold an IPv6 address like '[::1]:8125', got {value!r}"
            ) from None
        return inner, number, True
    if ":" in host:
        raise ConfigError(
            f"statsd IPv6 address must be in brackets like '[::1]:8125', got {value!r}"
        )
    if not _HOST_NAME.match(host):
        raise ConfigError(f"statsd host must be a host name or an IP address, got {value!r}")
    return host, number, False


def _check_report_to(value: object) -> None:
    if value is None or isinstance(value, (logging.Logger, logging.LoggerAdapter)):
        return
    if not callable(getattr(value, "write", None)):
        raise ConfigError(
            "report_to must be None, a logging.Logger or a writable stream "
            f"(an object with write()), got {value!r}"
        )


def _after_fork_in_child(ref: weakref.ReferenceType[UtilizationCore]) -> None:
    core = ref()
    if core is not None:
        core._after_fork()


class UtilizationCore:
    """Busy/idle accounting for one process, shared by both middleware flavours.

    Not used directly: :class:`process_utilization.ProcessUtilization`
    (WSGI) and :class:`process_utilization.asgi.ProcessUtilization` (ASGI)
    add the protocol. Everything here is safe with requests in flight in
    several threads or asyncio tasks at once; the per-request path takes no
    lock while no other thread can be in it (see "who may skip the lock").
    """

    # Slots: every attribute the per-request path touches is a slot, read
    # and written at a fixed offset (an instance dict would cost a lookup).
    __slots__ = (
        "__weakref__",
        "_clock",
        "_cold",
        "_current",
        "_finish",
        "_gc_collections",
        "_gc_ns",
        "_gc_start",
        "_getproctitle",
        "_horizon",
        "_horizon_busy",
        "_horizon_completed",
        "_horizon_response",
        "_horizon_wall",
        "_in_flight",
        "_inside",
        "_join",
        "_latency",
        "_latency_edges",
        "_lock",
        "_locked",
        "_next_event",
        "_next_report",
        "_next_title",
        "_now",
        "_open_lock",
        "_overlapped",
        "_owner",
        "_owns_statsd",
        "_private",
        "_proctitle_prefix",
        "_report_ns",
        "_response_ns",
        "_row",
        "_row_failed",
        "_row_response",
        "_scoreboard",
        "_setproctitle",
        "_settle",
        "_shared",
        "_slots",
        "_start",
        "_started",
        "_statsd",
        "_statsd_pipeline",
        "_timer",
        "_title_base",
        "_title_ns",
        "_wall_clock",
        "_warned",
        "_window_ns",
        "latency",
        "report_interval",
        "report_to",
        "stats_path",
        "total_requests",
        "track_gc",
        "unshared",
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
        proctitle: bool = False,
        proctitle_prefix: str | None = None,
        proctitle_interval: float = 1.0,
        statsd: StatsdClient | str | None = None,
        statsd_prefix: str | None = None,
        track_gc: bool = False,
        latency_buckets: Sequence[float] | None = DEFAULT_LATENCY_BUCKETS,
    ) -> None:
        _check_seconds("window", window)
        _check_seconds("report_interval", report_interval, allow_none=True)
        _check_seconds("proctitle_interval", proctitle_interval)
        _check_callable("clock", clock)
        _check_callable("wall_clock", wall_clock)
        _check_report_to(report_to)
        _check_text("proctitle_prefix", proctitle_prefix)
        _check_text("statsd_prefix", statsd_prefix)
        if stats_path is not None and not (
            isinstance(stats_path, str) and stats_path.startswith("/")
        ):
            raise ConfigError(
                f"stats_path must be None or a path starting with '/', got {stats_path!r}"
            )
        self.window = float(window)
        self.report_interval = None if report_interval is None else float(report_interval)
        self.report_to = report_to
        self.stats_path = stats_path
        self._clock = clock
        self._wall_clock = wall_clock
        # The default clock is the one the busy timer's C steps read
        # themselves (CLOCK_MONOTONIC, time.monotonic's on Linux); another
        # clock is read in Python and handed to them.
        self._now: Callable[[], int] = (
            monotonic_ns if clock is time.monotonic else lambda: round(clock() * 1e9)
        )
        self._window_ns = round(self.window * 1e9)
        self._report_ns = None if report_interval is None else round(report_interval * 1e9)
        self._title_ns = round(proctitle_interval * 1e9)

        self._statsd: Any = None
        self._statsd_pipeline: Callable[[], Any] | None = None
        self._owns_statsd = False
        statsd_address: tuple[str, int, bool] | None = None
        if isinstance(statsd, str):
            statsd_address = parse_statsd_address(statsd)
        elif statsd is not None and not (
            callable(getattr(statsd, "timing", None)) and callable(getattr(statsd, "incr", None))
        ):
            raise ConfigError(
                "statsd must be None, 'host:port' or a client with timing() and incr(), "
                f"got {statsd!r}"
            )

        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ConfigError(f"slots must be a positive integer, got {slots!r}")
        self._slots = slots
        #: Why this worker's figures are its own only (``None``: they are shared).
        self.unshared: str | None = None
        self._open_lock = threading.Lock()
        self._latency_edges = latency_edges(latency_buckets)
        #: Every worker's request durations (``None`` with ``latency_buckets=None``).
        self.latency: Histogram | None = None
        self._latency: Callable[[int], None] | None = None
        if scoreboard is None:
            chosen = check_segment(segment)
            # An explicit segment (or "anonymous") is opened now, so a bad one
            # fails at boot; the default waits for the first request, when
            # the server's sockets are there to name it.
            if chosen is not None:
                scoreboard = open_scoreboard(chosen, slots=slots)
                self._open_latency(None if chosen == ANONYMOUS else chosen + LATENCY_SUFFIX)
        else:
            self._open_latency(None)
        self._scoreboard: Scoreboard | None = scoreboard
        self._row: Any = None
        self._row_failed = False
        self._private = self._private_timer()
        self._use_timer(self._private)

        self._setproctitle: Callable[[str], None] | None = None
        self._getproctitle: Callable[[], str] | None = None
        if proctitle:
            mod = require("setproctitle", feature="proctitle=True", extra="setproctitle")
            self._setproctitle = mod.setproctitle
            self._getproctitle = mod.getproctitle
        self._proctitle_prefix = proctitle_prefix

        if statsd_address is not None:
            mod = require("statsd", feature="statsd=", extra="statsd")
            host, port, ipv6 = statsd_address
            self._statsd = mod.StatsClient(host, port, prefix=statsd_prefix, ipv6=ipv6)
            self._owns_statsd = True
        elif statsd is not None:
            self._statsd = statsd
        if self._statsd is not None:
            self._statsd_pipeline = getattr(self._statsd, "pipeline", None)

        self._lock = threading.Lock()
        self._locked = 0  # callers holding the lock, +1 once shared
        self._inside = False  # an unlocked section is running
        self._shared = False  # for good: every section takes the lock
        self._owner: int | None = None  # the thread whose ASGI requests skip the lock
        self._share_without_gil()
        self._warned: set[str] = set()
        self._current: contextvars.ContextVar[int | None] = contextvars.ContextVar(
            f"process_utilization_start_{id(self)}", default=None
        )
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
        self._cold = True
        self._overlapped = False
        self._in_flight = 0
        self.total_requests = 0
        self._response_ns = 0
        self._horizon = 0
        self._horizon_wall: float | None = None
        self._horizon_busy = 0
        self._horizon_completed = 0
        self._horizon_response = 0
        self._next_event = _NEVER
        self._next_report = _NEVER
        self._next_title = _NEVER
        self._title_base = ""

    def _after_fork(self) -> None:
        self._open_lock = threading.Lock()
        if self.unshared is not None:
            # The parent (a master that imported the app) found no server:
            # this child may, so it looks again.
            self._scoreboard = None
            self.unshared = None
            self.latency = self._latency = None
        self._lock = threading.Lock()
        self._locked = 0
        self._inside = False
        self._shared = False
        self._owner = None
        self._share_without_gil()
        self._row = None
        self._row_failed = False
        self._private = self._private_timer()
        self._use_timer(self._private)
        self._warned = set()
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
        self._statsd_pipeline = None
        self._latency = None  # the histogram is every worker's: left as it is
        row, self._row = self._row, None
        self._row_failed = True
        self._switch_timer(self._private)  # before release() retires the row's
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

    # -- the scoreboard row ----------------------------------------------------

    @property
    def scoreboard(self) -> Scoreboard:
        """The scoreboard every worker of the server shares (opened on first use).

        By default ``<shm>/raindrops-<euid>/utilization-<inode of the server
        socket>`` (:func:`shm_counters.server_segment`), the same in every
        worker, forked or spawned. A worker that cannot find or open it
        uses its own memory: it logs why, once, :attr:`unshared` says so,
        and so do the stats endpoint and the Prometheus collector.
        """
        board = self._scoreboard
        if board is None:
            with self._open_lock:
                board = self._scoreboard
                if board is None:
                    board = self._scoreboard = self._open_default()
        return board

    def _open_latency(self, path: str | None) -> None:
        """Open the request-duration histogram at ``path`` (``None``: anonymous memory).

        A segment that cannot be used (buckets other than this worker's,
        another user's file) is said once and replaced by a private one.
        """
        edges = self._latency_edges
        if edges is None:
            return
        try:
            hist = Histogram(edges, path=path)
        except (ShmCountersError, OSError) as exc:
            _log.warning(
                "process_utilization: cannot use the latency histogram %s (%s); this "
                "worker's request durations are kept in its own memory",
                path,
                exc,
            )
            hist = Histogram(edges)
        self.latency = hist
        self._latency = hist.record

    def _open_default(self) -> Scoreboard:
        found = server_segment(SEGMENT_NAME)
        if found.path is not None:
            try:
                board = open_scoreboard(found.path, slots=self._slots)
            except (ShmCountersError, OSError, ValueError) as exc:
                reason = f"cannot use the shared segment {found.path} ({exc})"
            else:
                if self._latency is None:
                    self._open_latency(server_segment(LATENCY_NAME, found.listeners).path)
                return board
        else:
            reason = found.reason
        self.unshared = reason
        _log.warning(
            "process_utilization: %s; this worker keeps its figures in its own memory, so "
            "the table misses every other worker. To share them, name one segment for "
            "every worker: ProcessUtilization(app, segment='/dev/shm/NAME') or $%s",
            reason,
            SEGMENT_ENV,
        )
        if self._latency is None:
            self._open_latency(None)
        return open_scoreboard(None, slots=self._slots)

    def _private_timer(self) -> BusyTimer:
        """A busy timer in private memory: the clock of the steps while no row is shared."""
        return BusyTimer(clock=None if self._now is monotonic_ns else self._now)

    def _switch_timer(self, timer: BusyTimer) -> None:
        """Carry this process's figures over to ``timer`` and use it from now on."""
        if timer is not self._timer:
            timer.set_values(**self._timer.values())
            self._use_timer(timer)

    def _use_timer(self, timer: BusyTimer) -> None:
        """Make ``timer``'s steps the per-request ones.

        The timer holds this process's own figures too (requests done,
        busy time settled and up to when): :attr:`_timer` is where every
        reader finds them.
        """
        self._timer = timer
        self._start, self._join = timer.start, timer.join
        self._settle, self._finish = timer.settle, timer.finish

    def _claim(self) -> Any:
        """Claim this process's row (lazily, once per process).

        The row starts from this process's current figures; afterwards the
        per-request path writes it through the row's busy timer: one C call
        when a request starts and one when it ends, each reading the clock
        and returning the time it read (see :class:`shm_counters.BusyTimer`).
        """
        row = None
        try:
            row = self.scoreboard.claim()
            timer = row.bind_busy_timer(
                "entered",
                "requests",
                "busy_ns",
                "busy_since_ns",
                clock=None if self._now is monotonic_ns else self._now,
            )
            timer.set_values(**self._timer.values())
            row.response_ns = self._response_total()
            row.overlapped = int(self._overlapped)
            row.gc_ns = self._gc_ns
            row.gc_collections = self._gc_collections
            self._publish_horizon(row)
            self._row_response = row.bind_add("response_ns")
        except Exception as exc:
            self._row_failed = True
            _log.warning(
                "process_utilization: no scoreboard row for pid %d, "
                "stats of this worker will not be shared: %r",
                os.getpid(),
                exc,
            )
            if row is not None:  # claimed, then failed: do not leave it half written
                with contextlib.suppress(Exception):
                    row.release()
            return None
        self._row = row
        self._use_timer(timer)
        return row

    def _response_total(self) -> int:
        """The summed durations of the completed requests (ns).

        Until two requests overlap it equals the settled busy time, which
        the per-request path then keeps alone (see :meth:`_first_overlap`).
        """
        return self._response_ns if self._overlapped else self._timer.busy_ns

    def _warm_up(self, n: int) -> int | None:
        """Start the first request of this process: claim the row, start the horizon.

        Takes the step a warm :meth:`_enter` takes (``n`` requests in
        flight); returns its time, ``None`` if the clock failed.
        """
        if self._row is None and not self._row_failed:
            self._claim()
        try:
            now: int | None = self._join() if n else self._start()
        except Exception as exc:
            now = self._step_failed(exc, n)
        if now is not None:
            if not self._started:
                self._first_request(now)
            self._cold = False
        return now

    def _step_again(self, exc: Exception, n: int, ending: bool) -> tuple[int | None, Exception]:
        """After a step raised: if the row is gone, drop it and step on the private timer.

        A row closed under the middleware has its steps retired (they raise
        ``ClosedError``). Returns the time of the step taken again, else
        ``None``, and the exception to report when there is no time.
        """
        if self._timer is self._private or not self._timer.closed:
            return None, exc
        self._row_broken(exc)
        busy, idle = (self._settle, self._finish) if ending else (self._join, self._start)
        step = busy if n else idle
        try:
            return step(), exc
        except Exception as again:
            return None, again

    def _step_failed(self, exc: Exception, n: int) -> int | None:
        """A request's start step raised: the row is gone, or the clock failed.

        A failing clock is logged once; the request is then not counted
        (``None``).
        """
        now, exc = self._step_again(exc, n, ending=False)
        if now is None:
            self._warn_once("clock", exc)
        return now

    def _leave_failed(self, exc: Exception, n: int, started: int) -> int:
        """A request's end step raised (see :meth:`_step_failed`); the time it ends at.

        With a failing clock the request ends at the latest time already
        known to have passed (its start, or the last settled time), so
        nothing more than that is counted.
        """
        now, exc = self._step_again(exc, n, ending=True)
        if now is not None:
            return now
        self._warn_once("clock", exc)
        now = max(started, self._timer.since_ns)
        try:
            return self._timer.settle_at(now) if n else self._timer.finish_at(now)
        except Exception as again:
            self._row_broken(again)
            return now

    def _first_overlap(self) -> None:
        """Two requests in flight at once, the first time in this process.

        Until now every request's duration equalled the busy time it
        settled, so the response sum was the busy sum, here and for readers
        of the row, and the hot path did not keep it. From now on it is kept
        per request: the sum so far is written first, then the flag (readers
        load ``busy_ns``, then ``overlapped``, then ``response_ns``).
        """
        self._overlapped = True
        self._response_ns = self._timer.busy_ns
        row = self._row
        if row is not None:
            try:
                row.response_ns = self._response_ns
                row.overlapped = 1
            except Exception as exc:
                self._row_broken(exc)

    def _add_response(self, duration: int) -> None:
        """Add one request's duration to the response sum (kept once overlapped)."""
        self._response_ns += duration
        if self._row is not None:
            try:
                self._row_response(duration)
            except Exception as exc:
                self._row_broken(exc)

    def _row_broken(self, exc: BaseException) -> None:
        self._row = None
        self._row_failed = True
        self._switch_timer(self._private)
        _log.warning("process_utilization: scoreboard update failed: %r", exc)

    def _publish_horizon(self, row: Any) -> None:
        row.horizon_busy_ns = self._horizon_busy
        row.horizon_requests = self._horizon_completed
        row.horizon_response_ns = self._horizon_response
        row.horizon_ns = self._horizon

    # -- who may skip the lock -----------------------------------------------------
    #
    # Per request the accounting runs in two short sections (when a request
    # starts, when it ends) that call nothing outside the middleware but the
    # clocks and the row's C steps. While no two threads can run a section
    # at once, a section takes no lock: WSGI requests whose server promises
    # one request at a time (``environ["wsgi.multithread"]`` false, as
    # gunicorn's sync worker), ASGI requests on the thread of the first
    # request's event loop. Once a WSGI request says otherwise (or does not
    # say), or an ASGI request comes from another thread, the instance is
    # *shared* for good (:meth:`_share`): every section takes the lock.
    #
    # Callers that are not requests (stats(), reset_stats(), ...) may run in
    # any thread at any time. They take the lock and, while holding it, keep
    # unlocked sections out (:meth:`_lock_out`): they raise ``_locked`` and
    # wait until ``_inside`` is false. An unlocked section sets ``_inside``
    # first and reads ``_locked`` next; the locker writes ``_locked`` first
    # and reads ``_inside`` next. Under the GIL loads and stores happen in
    # one order, so at least one of the two sees the other (Dekker's
    # handshake): the section then steps back and takes the lock itself, or
    # the locker waits for the section to end. A section waits for nothing
    # but the GIL, so that wait is short; it is bounded all the same.

    def _lock_out(self) -> None:
        """Take the lock and keep unlocked sections out until :meth:`_unlock`."""
        self._lock.acquire()
        try:
            self._locked += 1
            if self._inside:
                self._wait_outside()
        except BaseException:
            self._unlock()
            raise

    def _unlock(self) -> None:
        self._locked -= 1
        self._lock.release()

    def _wait_outside(self) -> None:
        """Wait (bounded) for the unlocked section in progress to end."""
        deadline = time.monotonic() + _WAIT_SECONDS
        while self._inside:
            if time.monotonic() > deadline:
                self._warn_once(
                    "waiting for a request's accounting",
                    TimeoutError(f"a section lasted over {_WAIT_SECONDS} s"),
                )
                return
            time.sleep(0)

    def _share_without_gil(self) -> None:
        """Share from the start on a free-threaded build with the GIL off.

        The handshake above relies on the GIL's one order of loads and
        stores; without it every section takes the lock.
        """
        gil_enabled = getattr(sys, "_is_gil_enabled", None)
        if gil_enabled is not None and not gil_enabled():
            self._shared = True
            self._locked += 1

    def _share(self) -> None:
        """From now on every per-request section takes the lock (once per process)."""
        self._lock_out()
        try:
            self._share_held()
        finally:
            self._unlock()

    def _share_held(self) -> bool:
        """:meth:`_share` with the lock held; true if this call shared the instance."""
        if self._shared:
            return False
        self._shared = True
        self._locked += 1  # never taken back: sections always step back now
        return True

    def _foreign_thread(self) -> None:
        """An ASGI request on a thread other than the first request's.

        The first one makes its thread the one whose requests skip the
        lock; a later one (a second event loop) shares the instance.
        """
        ident = threading.get_ident()
        self._lock_out()
        try:
            if self._owner is None:
                self._owner = ident
                return
            if not self._share_held():
                return
        finally:
            self._unlock()
        _log.info(
            "process_utilization: ASGI requests on a second thread "
            "(several event loops?): every request takes a lock from now on"
        )

    # -- the per-request path ---------------------------------------------------

    def _enter(self, env: MutableMapping[str, Any]) -> int | None:
        """Count a request in flight; its start (clock ns), ``None`` if not counted.

        The adapters' call when a request starts. The request counts in
        ``total_requests`` and ``env`` (the WSGI environ or ASGI scope) gets
        ``process.total_requests`` and ``process.request_start``. Never
        raises for a failing clock or row: a request whose start the clock
        cannot read is not counted in flight. The common case (no lock
        needed, the row claimed) runs :meth:`_enter_section` inlined;
        everything else goes through :meth:`_enter_slow`.
        """
        self._inside = True
        if self._locked or self._cold:
            self._inside = False
            now = self._enter_slow(env)
        else:
            try:
                # _enter_section, warm, inlined: keep the two alike.
                self.total_requests = total = self.total_requests + 1
                env["process.total_requests"] = total
                n = self._in_flight
                try:
                    now = self._join() if n else self._start()
                except Exception as exc:
                    now = self._step_failed(exc, n)
                if now is not None:
                    self._in_flight = n + 1
                    if n and not self._overlapped:
                        self._first_overlap()
            finally:
                self._inside = False
        # The seed's Time.now. Deriving it from the monotonic start and an
        # offset saves this read but costs as much in big-int maths.
        try:
            env["process.request_start"] = self._wall_clock()
        except Exception as exc:
            self._warn_once("wall_clock", exc)
            env["process.request_start"] = time.time()
        return now

    def _enter_section(self, env: MutableMapping[str, Any] | None) -> int | None:
        """The accounting of a request's start, run by one thread at a time.

        Takes the busy timer's step (``start`` if nothing is in flight,
        else ``join``): one C call that reads the clock and updates the
        row. Counts in ``total_requests`` only with ``env``.
        """
        if env is not None:
            self.total_requests = total = self.total_requests + 1
            env["process.total_requests"] = total
        n = self._in_flight
        now: int | None
        if self._cold:
            now = self._warm_up(n)
        else:
            try:
                now = self._join() if n else self._start()
            except Exception as exc:
                now = self._step_failed(exc, n)
        if now is not None:
            self._in_flight = n + 1
            if n and not self._overlapped:
                self._first_overlap()
        return now

    def _enter_slow(self, env: MutableMapping[str, Any]) -> int | None:
        """:meth:`_enter_section` under the lock when needed (see "who may skip the lock")."""
        self._inside = True
        if not self._locked:  # cold, alone: claim the row without the lock
            try:
                return self._enter_section(env)
            finally:
                self._inside = False
        self._inside = False  # shared, or a locker about: step back, take the lock
        lock = self._lock
        lock.acquire()
        try:
            return self._enter_section(env)
        finally:
            lock.release()

    def _enter_locked(self, env: MutableMapping[str, Any] | None) -> int | None:
        """:meth:`_enter_section` for any thread: under the lock, unlocked sections kept out."""
        self._lock_out()
        try:
            return self._enter_section(env)
        finally:
            self._unlock()

    def _leave(self, started: int, method: object = None, status: int | None = None) -> str | None:
        """Count the request started at ``started`` as finished now; never raises.

        The adapters' call when a request ends. Returns the periodic report
        line when one is due. With ``status`` (statsd on and a response
        started) the timings and the status counter go to statsd, after
        the section. Skips the lock as :meth:`_enter` does.
        """
        self._inside = True
        if self._locked:  # shared, or a locker about: step back, take the lock
            self._inside = False
            lock = self._lock
            lock.acquire()
            try:
                now, line = self._leave_section(started)
            finally:
                lock.release()
        else:
            try:
                # _leave_section inlined: keep the two alike.
                self._in_flight = n = self._in_flight - 1
                try:
                    now = self._settle() if n else self._finish()
                except Exception as exc:
                    now = self._leave_failed(exc, n, started)
                if self._overlapped:
                    self._add_response(now - started)
                line = self._periodic(now) if now >= self._next_event else None
            finally:
                self._inside = False
        latency = self._latency
        if latency is not None and now >= started:
            latency(now - started)  # lock-free, one C call
        if status is not None:
            self._send_statsd(now - started, method, status)
        return line

    def _leave_section(self, started: int) -> tuple[int, str | None]:
        """The accounting of a request's end, run by one thread at a time.

        Takes the busy timer's step (``settle`` while others are in
        flight, else ``finish``); returns the time the request ended and
        the report line when one is due.
        """
        self._in_flight = n = self._in_flight - 1
        try:
            now = self._settle() if n else self._finish()
        except Exception as exc:
            now = self._leave_failed(exc, n, started)
        if self._overlapped:
            self._add_response(now - started)
        return now, (self._periodic(now) if now >= self._next_event else None)

    def _leave_locked(self, started: int) -> str | None:
        """:meth:`_leave_section` for any thread: under the lock, unlocked sections kept out."""
        self._lock_out()
        try:
            now, line = self._leave_section(started)
        finally:
            self._unlock()
        latency = self._latency
        if latency is not None and now >= started:
            latency(now - started)
        return line

    def reset_stats(self) -> int | None:
        """Start the clock for one request (the seed's per-request reset).

        As in the seed, it marks the start of a request that
        :meth:`record_request` later records; it does not count in
        ``total_requests`` (the middleware does that per request). Unlike
        the seed, the start is not one attribute shared by every request:
        it is returned, and remembered for the current thread or asyncio
        task, so :meth:`record_request` without arguments records the
        right one when requests overlap. Returns ``None`` if the clock
        failed (logged once). Safe from any thread (it takes the lock).

        Example::

            mw.reset_stats()
            try:
                do_work_outside_the_middleware()
            finally:
                mw.record_request()
        """
        started = self._enter_locked(None)
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
        return self._leave_locked(started)

    # -- horizon, title, report (not per request) -------------------------------

    def _first_request(self, now: int) -> None:
        self._started = True
        if self._getproctitle is not None:
            try:
                self._title_base = self._proctitle_prefix or self._getproctitle()
            except Exception as exc:
                self._warn_once("getproctitle", exc)
        self._next_report = _NEVER if self._report_ns is None else now + self._report_ns
        self._next_title = now if self._setproctitle is not None else _NEVER
        self._reset_horizon(now)

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

    def _update_next_event(self) -> None:
        self._next_event = min(
            self._horizon + self._window_ns + 1, self._next_report, self._next_title
        )

    def _reset_horizon(self, now: int) -> None:
        self._horizon = now
        self._horizon_wall = self._wall_now()
        timer = self._timer
        busy = timer.busy_ns
        if self._in_flight:
            busy += now - timer.since_ns
        self._horizon_busy = busy
        self._horizon_completed = timer.done
        self._horizon_response = self._response_total()
        row = self._row
        if row is not None:
            try:
                self._publish_horizon(row)
            except Exception as exc:
                self._row_broken(exc)
        self._update_next_event()

    def reset_horizon(self) -> None:
        """Start a new horizon now: the averages cover only what follows.

        As in the seed, ``horizon`` becomes now and ``active_time`` and
        ``requests`` zero. Happens by itself when a request ends more than
        ``window`` seconds after the horizon, so long-past traffic does not
        skew the averages.
        """
        self._lock_out()
        try:
            self._reset_horizon(self._now())
        finally:
            self._unlock()

    def _periodic(self, now: int) -> str | None:
        """The report, title and horizon updates due at ``now``; never raises."""
        try:
            return self._periodic_due(now)
        except Exception as exc:
            self._warn_once("the periodic update", exc)
            return None

    def _periodic_due(self, now: int) -> str | None:
        line = None
        if now >= self._next_report and self._report_ns is not None:
            self._next_report = now + self._report_ns
            line = self.report_line(self._snapshot(now))
        if now >= self._next_title and self._setproctitle is not None:
            self._next_title = now + self._title_ns
            try:
                self._setproctitle(self.proctitle(self._snapshot(now)))
            except Exception as exc:
                self._warn_once("setproctitle", exc)
        if now - self._horizon > self._window_ns:
            self._reset_horizon(now)
        self._update_next_event()
        return line

    def _emit(self, line: str, default: Any) -> None:
        """Write one report line to ``report_to``, else to ``default`` (a stream)."""
        target = self.report_to
        try:
            if target is None:
                target = default
            if isinstance(target, (logging.Logger, logging.LoggerAdapter)):
                target.info("%s", line)
                return
            target.write(line + "\n")
            flush = getattr(target, "flush", None)
            if flush is not None:
                flush()
        except Exception as exc:
            self._warn_once("writing the report", exc)

    # -- reading -----------------------------------------------------------------

    @property
    def requests(self) -> int:
        """Requests completed since the horizon."""
        return self._timer.done - self._horizon_completed

    def _snapshot(self, now: int) -> UtilizationStats:
        timer = self._timer
        busy = timer.busy_ns
        if self._in_flight:
            busy += now - timer.since_ns
        if self._started:
            horizon_ns = max(0, now - self._horizon)
            active_ns = min(horizon_ns, busy - self._horizon_busy)
        else:
            horizon_ns = active_ns = 0
        requests = timer.done - self._horizon_completed
        h = horizon_ns / 1e9
        return UtilizationStats(
            horizon=self._horizon_wall,
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
                (self._response_total() - self._horizon_response) / requests / 1e6
                if requests
                else 0.0
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
        self._lock_out()
        try:
            return self._snapshot(self._now())
        finally:
            self._unlock()

    @property
    def horizon(self) -> float | None:
        """Wall-clock time (``time.time()`` seconds) when the horizon began.

        ``None`` before the first request, as the seed's ``nil``.
        """
        return self._horizon_wall

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
            self._warn_once("GC accounting", exc)

    def _send_statsd(self, duration: int, method: object, status: int) -> None:
        """Send one request's timings and status counter, as rack-statsd names them.

        ``response_time`` always; ``response_time.<method>`` for GET, HEAD,
        POST, PUT and DELETE only; ``status_code.<name>`` for the codes in
        rack-statsd's table only. One packet when the client pipelines.
        """
        client = self._statsd
        if client is None:
            return
        ms = duration / 1e6
        try:
            pipeline = self._statsd_pipeline
            target = client if pipeline is None else pipeline()
            target.timing("response_time", ms)
            per_method = _METHOD_TIMINGS.get(method)
            if per_method is not None:
                target.timing(per_method, ms)
            counter = _STATUS_COUNTERS.get(status)
            if counter is not None:
                target.incr(counter)
            if pipeline is not None:
                target.send()
        except Exception as exc:
            self._warn_once("statsd send", exc)

    # -- the stats endpoint ------------------------------------------------------------

    def render_stats(self, want_json: bool) -> tuple[str, bytes]:
        """The per-worker table: ``(content_type, body)``.

        JSON has ``"unavailable": {"shared": REASON}`` when this worker's
        figures are its own only (the adapters also send
        ``X-Raindrops-Unavailable: shared``).
        """
        workers = _worker_stats(self.scoreboard, clock=self._clock)
        if want_json:
            unavailable = {} if self.unshared is None else {"shared": self.unshared}
            return "application/json", render_json(workers, unavailable=unavailable).encode()
        return "text/plain; charset=utf-8", _render_text(workers).encode()
