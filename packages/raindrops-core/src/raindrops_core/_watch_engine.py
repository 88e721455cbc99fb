"""The Watcher's engine: sampling listeners and aggregating what it saw, exactly.

Framework-neutral: :class:`WatcherEngine` owns, per listener, one
:class:`Aggregate` for ``active`` and one for ``queued`` plus a bounded ring
of recent samples, and runs the one sampler of its process (a thread for
WSGI servers, an asyncio task for ASGI servers).  Tail streams subscribe to
it through a bounded :class:`Subscription` each.

The read is :mod:`raindrops_core._reads`' (described once, run by a blocking
or an asyncio socket); whoever waits for a round (a request after a reset,
the first request of a process) blocks in a thread or awaits on a loop and
is woken by the round itself (:class:`_Rounds`), never by polling.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from linux_inet_diag import DiagSocket

from ._errors import ConfigError, TailStreamsFullError
from ._fork import LiveInstances
from ._reads import Kernel, arun, listener_stats_steps, run
from ._validate import check_listeners
from ._watch_stats import Aggregate, ListenerReport, Sample, StatsLike

__all__ = [
    "ABSENT_ROUNDS",
    "DEFAULT_DELAY",
    "DEFAULT_HISTORY",
    "MAX_LISTENERS",
    "MAX_TAIL_STREAMS",
    "AsyncFetch",
    "Fetch",
    "Subscription",
    "WatcherEngine",
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

#: Reads the listeners' stats now: ``fetch(names or None) -> {name: stats}``.
Fetch = Callable[[Sequence[str] | None], Mapping[str, StatsLike]]
#: The same for an event loop; must never block it.
AsyncFetch = Callable[[Sequence[str] | None], Awaitable[Mapping[str, StatsLike]]]


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


class _Rounds:
    """Sample rounds as they are recorded, and whoever waits for one.

    A thread blocks on a condition; a coroutine awaits an ``asyncio.Event``
    of its own loop (one per waiting loop, made anew for each round), set
    through ``loop.call_soon_threadsafe`` by :meth:`advance` from whichever
    thread or task recorded the round: the sampler is a thread under WSGI
    servers, a task under ASGI ones, and several loops may wait at once.
    """

    __slots__ = ("_cond", "_loops", "number")

    def __init__(self, number: int = 0) -> None:
        #: Rounds recorded so far.
        self.number = number
        self._cond = threading.Condition(threading.Lock())
        self._loops: dict[asyncio.AbstractEventLoop, asyncio.Event] = {}

    def forked(self) -> _Rounds:
        """The same count with no waiter and a fresh lock (for a forked child)."""
        return _Rounds(self.number)

    def advance(self) -> None:
        """One more round: wake every waiter, blocking or on a loop."""
        with self._cond:
            self.number += 1
            self._cond.notify_all()
            loops, self._loops = self._loops, {}
        for loop, event in loops.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(event.set)

    def wait(self, after: int, timeout: float) -> bool:
        """Block until round ``after + 1`` is recorded (at most ``timeout`` s)."""
        with self._cond:
            return self._cond.wait_for(lambda: self.number > after, timeout)

    async def await_(self, after: int, timeout: float) -> bool:
        """:meth:`wait` on the running loop, woken by :meth:`advance`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            with self._cond:  # held for a dict lookup, never across an await
                if self.number > after:
                    return True
                event = self._loops.get(loop)
                if event is None:
                    event = self._loops[loop] = asyncio.Event()
            left = deadline - loop.time()
            if left <= 0:
                return False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), left)


_LIVE: LiveInstances[WatcherEngine] = LiveInstances()


@atexit.register
def _stop_threads() -> None:
    """At interpreter exit, stop every sampler thread (they would sample into shutdown)."""
    for engine in _LIVE:
        engine.stop_thread()


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
    Where the samples come from: ``kernel`` (a
    :class:`raindrops_core.adapter.Kernel`, the default reading netlink
    through linux-inet-diag: :meth:`sample` with one reused blocking
    ``DiagSocket``, :meth:`asample` with an ``AsyncDiagSocket`` that never
    blocks the event loop); or ``fetch(names)`` / ``afetch(names)``, which
    replace the read outright (``asample`` runs a ``fetch`` without
    ``afetch`` in a thread).

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
        kernel: Kernel | None = None,
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
        #: Where the samples come from when no ``fetch``/``afetch`` replaces the read.
        self.kernel = Kernel() if kernel is None else kernel
        self._fetch: Fetch | None = fetch
        self._afetch: AsyncFetch | None = afetch
        self._diag: DiagSocket | None = None  # the blocking reads' socket, reused
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
        self._rounds = _Rounds()
        self._first = 0  # rounds recorded before this process's first (a forked child's)
        self._thread: threading.Thread | None = None
        self._stop: threading.Event | None = None
        self._task: asyncio.Task[None] | None = None
        _LIVE.add(self)

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
        self._rounds.advance()

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
            if self._fetch is not None:
                stats = self._fetch(self.listeners)
            else:
                stats = run(listener_stats_steps(self.listeners), self._blocking_diag())
        except Exception as exc:  # keep sampling: the next round may work
            self._failed(exc)
            self._close_diag()
            return
        self.last_error = None
        self.record(stats)

    async def asample(self) -> None:
        """:meth:`sample` for an event loop: never blocks it.

        The same read, run by an ``AsyncDiagSocket`` (one per round: it
        belongs to the running loop), or the given ``afetch``, or the given
        ``fetch`` in a thread.
        """
        try:
            if self._afetch is not None:
                stats = await self._afetch(self.listeners)
            elif self._fetch is not None:
                stats = await asyncio.to_thread(self._fetch, self.listeners)
            else:
                diag = self.kernel.adiag()
                try:
                    stats = await arun(listener_stats_steps(self.listeners), diag)
                finally:
                    diag.close()
        except Exception as exc:  # keep sampling: the next round may work
            self._failed(exc)
            return
        self.last_error = None
        self.record(stats)

    def _blocking_diag(self) -> DiagSocket:
        diag = self._diag
        if diag is None:
            diag = self._diag = self.kernel.diag()
        return diag

    def _close_diag(self) -> None:
        diag, self._diag = self._diag, None
        if diag is not None:
            with contextlib.suppress(OSError):
                diag.close()

    def _after_fork(self) -> None:
        # In a forked child: the parent's sampler thread or task, its socket and
        # its waiters did not come along; a lock held at the fork stays held.
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._thread = None
        self._stop = None
        self._task = None
        self._subs = set()
        self._diag = None
        self._rounds = self._rounds.forked()
        self._first = self._rounds.number

    def start_thread(self) -> bool:
        """Start this process's sampler thread unless it runs; ``True`` if started."""
        with self._start_lock:
            thread = self._thread
            if thread is not None and thread.is_alive():
                return False
            stop = threading.Event()
            thread = threading.Thread(
                target=self._run_thread, args=(stop,), name="raindrops-watcher", daemon=True
            )
            self._stop, self._thread = stop, thread
            thread.start()
            return True

    def _run_thread(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                began = time.monotonic()
                self.sample()
                stop.wait(max(0.0, self.delay - (time.monotonic() - began)))
        finally:
            self._close_diag()

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
        return thread is not None and thread.is_alive()

    def wait_sampled(self, timeout: float) -> bool:
        """Block until this process has a first sample round (at most ``timeout`` s)."""
        return self._rounds.wait(self._first, timeout)

    @property
    def rounds(self) -> int:
        """How many sample rounds were recorded in this process."""
        return self._rounds.number

    def wait_round(self, after: int, timeout: float) -> bool:
        """Block until a round after round number ``after`` is recorded (at most ``timeout`` s)."""
        return self._rounds.wait(after, timeout)

    async def await_round(self, after: int, timeout: float) -> bool:
        """:meth:`wait_round` for an event loop: woken by the round, never blocking the loop."""
        return await self._rounds.await_(after, timeout)

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
        """:meth:`wait_sampled` for an event loop: woken by the round, never blocking the loop."""
        return await self._rounds.await_(self._first, timeout)
