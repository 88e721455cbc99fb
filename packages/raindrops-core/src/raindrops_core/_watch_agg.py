"""The Watcher's engine: sampling listeners and aggregating what it saw, exactly.

Framework-neutral: :class:`WatcherEngine` owns, per listener, one
:class:`Aggregate` for ``active`` and one for ``queued`` plus a bounded ring
of recent samples, and runs the one sampler of its process (a thread for
WSGI servers, an asyncio task for ASGI servers).  Tail streams subscribe to
it through a bounded :class:`Subscription` each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ._errors import ConfigError, TailStreamsFullError
from ._validate import check_listeners, split_names

__all__ = [
    "ABSENT_ROUNDS",
    "DEFAULT_DELAY",
    "DEFAULT_HISTORY",
    "LOG2_BUCKETS",
    "MAX_LISTENERS",
    "MAX_TAIL_STREAMS",
    "Aggregate",
    "AggregateStats",
    "AsyncFetch",
    "Fetch",
    "ListenerReport",
    "Sample",
    "StatsLike",
    "Subscription",
    "WatcherEngine",
    "sample_std_dev",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

#: Seconds between two samples unless told otherwise (as in the Ruby original).
DEFAULT_DELAY = 1.0
#: Recent samples kept per listener for the history chart.
DEFAULT_HISTORY = 300
#: Watching every listener (``listeners=None``): one absent from this many
#: sample rounds in a row is forgotten (a minute at the default delay).  Any
#: user can make and close listeners (abstract Unix sockets) by the thousand.
ABSENT_ROUNDS = 60
#: Watching every listener: at most this many are kept; a new one beyond it
#: pushes out the one absent longest, or is not watched while all are present.
MAX_LISTENERS = 1024
#: Tail streams open at once in one process, at most (each holds a bounded queue).
MAX_TAIL_STREAMS = 64
#: Buckets of the log2 histogram, as the Ruby ``aggregate`` gem's: bucket k holds
#: [2**k, 2**(k+1)); samples below 1 are low outliers, from 2**127 on high ones.
LOG2_BUCKETS = 128
_HIGH = 2 ** (LOG2_BUCKETS - 1)


class StatsLike(Protocol):
    """What a sample of one listener must have (``linux_inet_diag.ListenStats`` has it)."""

    @property
    def active(self) -> int: ...

    @property
    def queued(self) -> int: ...


#: Reads the listeners' stats now: ``fetch(names or None) -> {name: stats}``.
Fetch = Callable[[Sequence[str] | None], Mapping[str, StatsLike]]
#: The same for an event loop; must never block it.
AsyncFetch = Callable[[Sequence[str] | None], Awaitable[Mapping[str, StatsLike]]]


@dataclass(frozen=True, slots=True)
class AggregateStats:
    """What an :class:`Aggregate` holds, read at once, with the Ruby Watcher's meanings.

    ``mean`` is ``None`` when empty (Ruby: NaN).  ``std_dev`` is the
    *sample* standard deviation (divided by ``count - 1``), computed as the
    Ruby ``aggregate`` gem does, ``None`` below two samples (Ruby: NaN).
    ``outliers_low`` counts samples below 1 (an empty queue is a "low
    outlier", as in Ruby) and ``outliers_high`` samples ``>= 2**127``: both
    also count in ``count``, ``sum``, ``min``, ``max``, ``mean`` and
    ``std_dev``, not in ``buckets``, which holds every log2 bucket as
    ``(low_inclusive, high_exclusive, count)``.  ``current`` is the last
    sample (kept across resets; ``None`` before the first).  The peak times
    are the last reset's until a sample above 0 reaches the maximum of the
    samples before it (``first_peak_at``: it went higher; ``last_peak_at``:
    it went as high), as in Ruby.  Times are seconds since the epoch, from
    the engine's clock.
    """

    count: int
    sum: int
    min: int | None
    max: int | None
    mean: float | None
    std_dev: float | None
    outliers_low: int
    outliers_high: int
    current: int | None
    first_peak_at: float
    last_peak_at: float
    last_reset: float
    buckets: tuple[tuple[int, int, int], ...]


def _bucket_edges(n: int) -> tuple[tuple[int, int], ...]:
    return tuple((2**k, 2 ** (k + 1)) for k in range(n))


_EDGES = _bucket_edges(LOG2_BUCKETS)


def sample_std_dev(count: int, total: float, squares: float) -> float | None:
    """The Ruby ``aggregate`` gem's ``std_dev``, in its floating-point steps.

    ``sqrt((squares - total * total / count) / (count - 1))``; ``None``
    where Ruby gets NaN or a domain error (fewer than two samples, or a
    negative rounding residue).

    Example::

        >>> sample_std_dev(3, 6, 14)
        1.0
        >>> sample_std_dev(1, 5, 25) is None
        True
    """
    if count < 2:
        return None
    n = float(count)
    s = float(total)
    variance = (float(squares) - (s * s) / n) / (n - 1)
    if not variance >= 0:
        return None
    return math.sqrt(variance)


class Aggregate:
    """Running statistics and a log2 histogram of integer samples, as the Ruby Watcher kept.

    Sums are exact Python integers; ``mean`` and ``std_dev`` are then
    computed in floating point exactly as the Ruby ``aggregate`` gem does,
    so the numbers (and the headers made of them) are Ruby's.  Not
    thread-safe by itself: :class:`WatcherEngine` locks.

    Example::

        >>> agg = Aggregate(reset_at=0.0)
        >>> for t, v in enumerate([1, 3, 3, 0]):
        ...     agg.add(v, float(t))
        >>> s = agg.stats()
        >>> s.count, s.min, s.max, s.mean, s.first_peak_at, s.last_peak_at, s.outliers_low
        (4, 0, 3, 1.75, 1.0, 2.0, 1)
    """

    __slots__ = (
        "_buckets",
        "_count",
        "_current",
        "_first_peak",
        "_high",
        "_last_peak",
        "_low",
        "_max",
        "_min",
        "_reset_at",
        "_squares",
        "_sum",
    )

    def __init__(self, *, reset_at: float) -> None:
        self._current: int | None = None
        self.reset(reset_at)

    def reset(self, at: float) -> None:
        """Forget every sample (not the current value); ``at`` becomes the last reset time."""
        self._count = 0
        self._sum = 0
        self._squares = 0
        self._min: int | None = None
        self._max: int | None = None
        self._low = 0
        self._high = 0
        self._first_peak = at
        self._last_peak = at
        self._reset_at = at
        self._buckets = [0] * LOG2_BUCKETS

    def add(self, value: int, at: float) -> None:
        """Record one sample ``value`` taken at time ``at``."""
        top = self._max
        if top is not None and value > 0 and value >= top:
            if value > top:
                self._first_peak = at
            self._last_peak = at
        self._count += 1
        self._sum += value
        self._squares += value * value
        self._current = value
        if top is None or value > top:
            self._max = value
        if self._min is None or value < self._min:
            self._min = value
        if value < 1:
            self._low += 1
        elif value >= _HIGH:
            self._high += 1
        else:
            self._buckets[value.bit_length() - 1] += 1

    def stats(self) -> AggregateStats:
        """Everything at once, as a frozen record."""
        n = self._count
        return AggregateStats(
            count=n,
            sum=self._sum,
            min=self._min,
            max=self._max,
            mean=float(self._sum) / n if n else None,
            std_dev=sample_std_dev(n, self._sum, self._squares),
            outliers_low=self._low,
            outliers_high=self._high,
            current=self._current,
            first_peak_at=self._first_peak,
            last_peak_at=self._last_peak,
            last_reset=self._reset_at,
            buckets=tuple((lo, hi, c) for (lo, hi), c in zip(_EDGES, self._buckets, strict=True)),
        )


@dataclass(frozen=True, slots=True)
class Sample:
    """One sample of one listener: when, and its ``active``/``queued`` counts."""

    at: float
    active: int
    queued: int


@dataclass(frozen=True, slots=True)
class ListenerReport:
    """One watched listener, read at once: both aggregates and the recent samples."""

    name: str
    active: AggregateStats
    queued: AggregateStats
    history: tuple[Sample, ...]


class _Listener:
    __slots__ = ("active", "history", "queued", "seen")

    def __init__(self, at: float, history: int, seen: int = 0) -> None:
        self.active = Aggregate(reset_at=at)
        self.queued = Aggregate(reset_at=at)
        self.history: deque[Sample] = deque(maxlen=history)
        #: The number of the last sample round this listener was in.
        self.seen = seen

    def reset(self, at: float) -> None:
        self.active.reset(at)
        self.queued.reset(at)
        self.history.clear()


class Subscription:
    """A tail client's bounded queue of sample rounds, filled by the sampler.

    Each item is ``(time, {name: (active, queued)})``; when the client is
    slower than the sampler the oldest rounds are dropped (``maxsize``).
    ``waker`` is called (from the sampler's thread or task) after each push.
    Always :meth:`close` it (the tail iterators do, in ``finally``).
    """

    __slots__ = ("__weakref__", "_engine", "_items", "_waker")

    def __init__(self, engine: WatcherEngine, maxsize: int, waker: Callable[[], object]) -> None:
        self._engine: WatcherEngine | None = engine
        self._items: deque[tuple[float, dict[str, tuple[int, int]]]] = deque(maxlen=maxsize)
        self._waker = waker

    def push(self, item: tuple[float, dict[str, tuple[int, int]]]) -> None:
        """Queue one round and wake the reader."""
        self._items.append(item)
        with contextlib.suppress(RuntimeError):  # the reader's loop already closed
            self._waker()

    def drain(self) -> list[tuple[float, dict[str, tuple[int, int]]]]:
        """Every queued round, oldest first, emptying the queue."""
        out: list[tuple[float, dict[str, tuple[int, int]]]] = []
        while True:
            try:
                out.append(self._items.popleft())
            except IndexError:
                return out

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._engine is None

    def close(self) -> None:
        """Stop receiving rounds (idempotent)."""
        engine, self._engine = self._engine, None
        if engine is not None:
            engine._unsubscribe(self)


def _check_positive(what: str, value: object, *, integer: bool = False) -> Any:
    allowed = "a positive int" if integer else "a positive, finite number of seconds"
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ConfigError(f"{what} must be {allowed}, not {value!r}")
    number = float(value)  # type: ignore[arg-type]
    if not (number > 0 and math.isfinite(number)):
        raise ConfigError(f"{what} must be {allowed}, not {value!r}")
    return value


class _SyncDiag:
    """The default :data:`Fetch`: one reusable ``linux_inet_diag.DiagSocket``."""

    def __init__(self) -> None:
        self._sock: Any = None

    def __call__(self, names: Sequence[str] | None) -> Mapping[str, StatsLike]:
        from linux_inet_diag import DiagSocket, tcp_listener_stats, unix_listener_stats

        if self._sock is None:
            self._sock = DiagSocket()
        out: dict[str, StatsLike] = {}
        if names is None:
            out.update(tcp_listener_stats(None, sock=self._sock))
            out.update(unix_listener_stats(None, sock=self._sock))
            return out
        tcp, unix = split_names(names)
        if tcp:
            out.update(tcp_listener_stats(tcp, sock=self._sock))
        if unix:
            out.update(unix_listener_stats(unix, sock=self._sock))
        return out

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


async def _async_diag(names: Sequence[str] | None) -> Mapping[str, StatsLike]:
    """The default :data:`AsyncFetch`: ``linux_inet_diag.AsyncDiagSocket`` (never blocks)."""
    from linux_inet_diag import AsyncDiagSocket

    sock = AsyncDiagSocket()
    try:
        out: dict[str, StatsLike] = {}
        tcp, unix = (None, None) if names is None else split_names(names)
        if tcp is None or tcp:
            out.update(await sock.tcp_listener_stats(tcp))
        if unix is None or unix:
            out.update(await sock.unix_listener_stats(unix))
        return out
    finally:
        sock.close()


_ENGINES: weakref.WeakSet[WatcherEngine] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for engine in list(_ENGINES):
        engine._forget_process()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class WatcherEngine:
    """Samples listeners every ``delay`` seconds and aggregates what it saw.

    ``listeners``: names to watch (``"127.0.0.1:8080"``, ``"[::1]:8080"``,
    ``"/path.sock"``), checked here (:class:`ConfigError`), or ``None`` for
    every listener on the machine (new ones join as they appear).  With
    ``None`` memory stays bounded whatever other users do: a listener
    absent from ``absent_rounds`` sample rounds in a row is forgotten
    (:data:`ABSENT_ROUNDS`), and at most ``max_listeners`` are kept
    (:data:`MAX_LISTENERS`; a new one beyond pushes out the one absent
    longest, or is not watched while every kept one is present:
    :attr:`unwatched` counts those of the last round).  Named listeners are
    always kept.  ``max_tail_streams`` bounds the open tail subscriptions
    (:data:`MAX_TAIL_STREAMS`).
    ``history``: recent samples kept per listener.  ``clock`` gives the
    wall-clock time of samples and resets (seconds since the epoch).
    ``fetch``/``afetch`` read the stats (defaults: netlink through
    linux-inet-diag, ``afetch`` never blocking the event loop).

    One sampler per engine and process: :meth:`start_thread` (WSGI) or
    :meth:`ensure_task` (ASGI), both idempotent; a forked child starts its own.

    Example::

        >>> from linux_inet_diag import ListenStats
        >>> engine = WatcherEngine(["127.0.0.1:80"], clock=lambda: 1.0)
        >>> engine.record({"127.0.0.1:80": ListenStats(2, 5, 128)})
        >>> engine.report("127.0.0.1:80").queued.max
        5
    """

    def __init__(
        self,
        listeners: Sequence[str] | None = None,
        *,
        delay: float = DEFAULT_DELAY,
        history: int = DEFAULT_HISTORY,
        clock: Callable[[], float] = time.time,
        fetch: Fetch | None = None,
        afetch: AsyncFetch | None = None,
        tail_queue: int = 64,
        absent_rounds: int = ABSENT_ROUNDS,
        max_listeners: int = MAX_LISTENERS,
        max_tail_streams: int = MAX_TAIL_STREAMS,
    ) -> None:
        self.listeners = check_listeners(listeners)
        self.delay = float(_check_positive("delay", delay))
        self.history = int(_check_positive("history", history, integer=True))
        self.tail_queue = int(_check_positive("tail_queue", tail_queue, integer=True))
        self.absent_rounds = int(_check_positive("absent_rounds", absent_rounds, integer=True))
        self.max_listeners = int(_check_positive("max_listeners", max_listeners, integer=True))
        self.max_tail_streams = int(
            _check_positive("max_tail_streams", max_tail_streams, integer=True)
        )
        self.clock = clock
        self._sync_diag: _SyncDiag | None = None
        if fetch is None:
            self._sync_diag = _SyncDiag()
            fetch = self._sync_diag
        self._fetch: Fetch = fetch
        self._afetch: AsyncFetch | None = afetch
        self._custom_fetch = self._sync_diag is None
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        started = clock()
        self._started_at = started
        self._listeners: dict[str, _Listener] = {}
        for name in self.listeners or ():
            self._listeners[name] = _Listener(started, self.history)
        self._updated_at: float | None = None
        self._current: dict[str, tuple[int, int]] = {}
        self._recorded = 0  # sample rounds recorded, under _lock
        self._unwatched = 0
        self.last_error: str | None = None
        self._subs: set[Subscription] = set()
        self._sampled = threading.Event()
        self._rounds = 0
        self._round_done = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._stop: threading.Event | None = None
        self._thread_pid = 0
        self._task: asyncio.Task[None] | None = None
        _ENGINES.add(self)

    def __repr__(self) -> str:
        watched = "every listener" if self.listeners is None else list(self.listeners)
        return f"<WatcherEngine {watched} delay={self.delay}>"

    # -- the data ------------------------------------------------------------

    def record(self, stats: Mapping[str, StatsLike], at: float | None = None) -> None:
        """Add one sample round (``{name: stats}``) taken at ``at`` (default: now).

        Names outside an explicit ``listeners`` list are ignored.  Watching
        every listener, this is where the absent are forgotten and the
        number kept is capped (see the class).
        """
        if at is None:
            at = self.clock()
        round_: dict[str, tuple[int, int]] = {}
        with self._lock:
            self._recorded += 1
            number = self._recorded
            kept = self._listeners
            fresh: list[str] = []
            for name in stats:
                entry = kept.get(name)
                if entry is not None:
                    entry.seen = number
                elif self.listeners is None:
                    fresh.append(name)
            if self.listeners is None:
                self._forget_absent(number)
                fresh = self._make_room(fresh, number)
            for name in fresh:
                kept[name] = _Listener(self._started_at, self.history, number)
            for name, s in stats.items():
                entry = kept.get(name)
                if entry is None:
                    continue
                active, queued = int(s.active), int(s.queued)
                entry.active.add(active, at)
                entry.queued.add(queued, at)
                entry.history.append(Sample(at, active, queued))
                round_[name] = (active, queued)
            self._updated_at = at
            self._current = round_
            subs = list(self._subs)
        for sub in subs:
            sub.push((at, round_))
        self._sampled.set()
        with self._round_done:
            self._rounds += 1
            self._round_done.notify_all()

    def _forget_absent(self, number: int) -> None:
        """Drop the listeners absent from the last ``absent_rounds`` rounds (under the lock)."""
        oldest = number - self.absent_rounds
        gone = [name for name, entry in self._listeners.items() if entry.seen <= oldest]
        for name in gone:
            del self._listeners[name]

    def _make_room(self, fresh: list[str], number: int) -> list[str]:
        """The new names that fit under ``max_listeners``, pushing out the longest absent."""
        room = self.max_listeners - len(self._listeners)
        if len(fresh) > room:
            absent = sorted(
                (entry.seen, name) for name, entry in self._listeners.items() if entry.seen < number
            )
            for _, name in absent[: len(fresh) - room]:
                del self._listeners[name]
            room = self.max_listeners - len(self._listeners)
        unwatched = max(0, len(fresh) - room)
        if unwatched and not self._unwatched:
            logger.warning(
                "raindrops Watcher: %d listeners present, %d watched at most "
                "(max_listeners); %d not watched",
                len(self._listeners) + len(fresh),
                self.max_listeners,
                unwatched,
            )
        self._unwatched = unwatched
        return fresh[:room] if unwatched else fresh

    @property
    def unwatched(self) -> int:
        """Listeners of the last round left out for ``max_listeners`` (every listener watched)."""
        return self._unwatched

    def __len__(self) -> int:
        """How many listeners the engine keeps records for now."""
        with self._lock:
            return len(self._listeners)

    def names(self) -> tuple[str, ...]:
        """Watched listener names, in the order they were first seen."""
        with self._lock:
            return tuple(self._listeners)

    @property
    def updated_at(self) -> float | None:
        """When the last sample round was taken (``None`` before the first)."""
        return self._updated_at

    @property
    def snapshot_at(self) -> float:
        """When the last sample round was taken, or the engine's start before the first.

        The Ruby Watcher's ``Last-Modified`` (and, plus ``delay``, ``Expires``).
        """
        last = self._updated_at
        return self._started_at if last is None else last

    def next_sample_at(self) -> float:
        """When the next sample round is due: :attr:`snapshot_at` plus ``delay``."""
        return self.snapshot_at + self.delay

    def current(self) -> dict[str, tuple[int, int]]:
        """The last sample round: ``{name: (active, queued)}`` (empty before the first)."""
        with self._lock:
            return dict(self._current)

    def report(self, name: str) -> ListenerReport | None:
        """One listener's aggregates and history, or ``None`` if it is not watched."""
        with self._lock:
            entry = self._listeners.get(name)
            if entry is None:
                return None
            return ListenerReport(
                name, entry.active.stats(), entry.queued.stats(), tuple(entry.history)
            )

    def reports(self) -> list[ListenerReport]:
        """Every watched listener's report, in :meth:`names` order."""
        out = []
        for name in self.names():
            rep = self.report(name)
            if rep is not None:
                out.append(rep)
        return out

    def reset(self, name: str) -> bool:
        """Clear one listener's history now; ``False`` if it is not watched."""
        at = self.clock()
        with self._lock:
            entry = self._listeners.get(name)
            if entry is None:
                return False
            entry.reset(at)
            return True

    # -- tail subscriptions --------------------------------------------------

    def subscribe(self, waker: Callable[[], object]) -> Subscription:
        """A new bounded queue of sample rounds; ``waker()`` runs after each push.

        Raises :class:`~raindrops_core.TailStreamsFullError` when
        ``max_tail_streams`` are open already.
        """
        sub = Subscription(self, self.tail_queue, waker)
        with self._lock:
            if len(self._subs) >= self.max_tail_streams:
                raise TailStreamsFullError(
                    f"{len(self._subs)} tail streams are open, the most allowed "
                    f"(max_tail_streams={self.max_tail_streams})"
                )
            self._subs.add(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs.discard(sub)

    @property
    def subscribers(self) -> int:
        """How many tail streams are open now."""
        with self._lock:
            return len(self._subs)

    # -- sampling ------------------------------------------------------------

    def _failed(self, exc: BaseException) -> None:
        message = f"{type(exc).__name__}: {exc}"
        if message != self.last_error:
            logger.warning("raindrops Watcher: sampling failed: %s", message)
        self.last_error = message

    def sample(self) -> None:
        """Take one sample round now (blocking netlink query); errors are kept, not raised."""
        try:
            stats = self._fetch(self.listeners)
        except Exception as exc:  # keep sampling: the next round may work
            self._failed(exc)
            if self._sync_diag is not None:
                self._sync_diag.close()
            return
        self.last_error = None
        self.record(stats)

    async def asample(self) -> None:
        """:meth:`sample` for an event loop: never blocks it."""
        try:
            if self._afetch is not None:
                stats = await self._afetch(self.listeners)
            elif self._custom_fetch:
                stats = await asyncio.to_thread(self._fetch, self.listeners)
            else:
                stats = await _async_diag(self.listeners)
        except Exception as exc:  # keep sampling: the next round may work
            self._failed(exc)
            return
        self.last_error = None
        self.record(stats)

    def _forget_process(self) -> None:
        # In a forked child: the parent's sampler thread or task did not come along.
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._thread = None
        self._stop = None
        self._task = None
        self._subs = set()
        self._sampled = threading.Event()
        self._round_done = threading.Condition(threading.Lock())
        self._sync_diag = _SyncDiag() if self._sync_diag is not None else None
        if self._sync_diag is not None:
            self._fetch = self._sync_diag

    def start_thread(self) -> bool:
        """Start this process's sampler thread unless it runs; ``True`` if started."""
        with self._start_lock:
            thread = self._thread
            if thread is not None and thread.is_alive() and self._thread_pid == os.getpid():
                return False
            stop = threading.Event()
            thread = threading.Thread(
                target=self._run_thread, args=(stop,), name="raindrops-watcher", daemon=True
            )
            self._stop, self._thread, self._thread_pid = stop, thread, os.getpid()
            thread.start()
            return True

    def _run_thread(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                began = time.monotonic()
                self.sample()
                stop.wait(max(0.0, self.delay - (time.monotonic() - began)))
        finally:
            if self._sync_diag is not None:
                self._sync_diag.close()

    def stop_thread(self, timeout: float = 5.0) -> None:
        """Stop the sampler thread and wait for it (at most ``timeout`` seconds)."""
        with self._start_lock:
            stop, thread = self._stop, self._thread
            self._stop = self._thread = None
        if stop is not None:
            stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def thread_running(self) -> bool:
        """True while this process's sampler thread runs."""
        thread = self._thread
        return thread is not None and thread.is_alive() and self._thread_pid == os.getpid()

    def wait_sampled(self, timeout: float) -> bool:
        """Block until a first sample round exists (at most ``timeout`` s)."""
        return self._sampled.wait(timeout)

    @property
    def rounds(self) -> int:
        """How many sample rounds were recorded in this process."""
        return self._rounds

    def wait_round(self, after: int, timeout: float) -> bool:
        """Block until a round after round number ``after`` is recorded (at most ``timeout`` s)."""
        with self._round_done:
            return self._round_done.wait_for(lambda: self._rounds > after, timeout)

    async def await_round(self, after: int, timeout: float) -> bool:
        """:meth:`wait_round` for an event loop (polls; never blocks the loop)."""
        deadline = time.monotonic() + timeout
        while self._rounds <= after:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    def ensure_task(self) -> bool:
        """Start the sampler task in the running event loop unless it runs there.

        ``True`` if started.  Must be called from inside the loop.
        """
        loop = asyncio.get_running_loop()
        task = self._task
        if task is not None and not task.done() and task.get_loop() is loop:
            return False
        self._task = loop.create_task(self._run_task(), name="raindrops-watcher")
        return True

    async def _run_task(self) -> None:
        while True:
            began = time.monotonic()
            await self.asample()
            await asyncio.sleep(max(0.0, self.delay - (time.monotonic() - began)))

    async def stop_task(self) -> None:
        """Cancel the sampler task and wait until it is gone."""
        task, self._task = self._task, None
        if task is None or task.done():
            return
        if task.get_loop() is not asyncio.get_running_loop():
            task.cancel()
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    @property
    def task_running(self) -> bool:
        """True while the sampler task runs."""
        task = self._task
        return task is not None and not task.done()

    async def await_sampled(self, timeout: float) -> bool:
        """Wait in the loop until a first sample round exists (at most ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        while not self._sampled.is_set():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True
