"""Busy timers: the time with at least one unit of work in flight, one C call per step."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from ._counters import _refuse_closed, amount_error, as_int, bound_step, retire_step
from ._errors import ClosedError
from ._native import MAX, ffi, lib

__all__ = ["BusyTimer", "monotonic_ns"]

#: Whether the C steps read the clock themselves (Linux: CLOCK_MONOTONIC).
C_CLOCK: bool = bool(lib.shmc_busy_clock())

#: The clock busy timers read by default, in ns: on Linux the C function
#: the steps call (``CLOCK_MONOTONIC``, the clock of ``time.monotonic_ns``),
#: elsewhere ``time.monotonic_ns`` itself.
monotonic_ns: Callable[[], int] = lib.shmc_monotonic_ns if C_CLOCK else time.monotonic_ns

_STEPS = ("start", "join", "settle", "finish")
_C_STEPS = (lib.shmc_busy_start, lib.shmc_busy_join, lib.shmc_busy_settle, lib.shmc_busy_finish)


def _clocked(raw: Callable[[], int], timer: Any, clock: Callable[[], int]) -> Callable[[], int]:
    """A step that reads ``clock`` in Python and hands the time to the C step."""

    def step() -> int:
        now = clock()
        try:
            timer.now = now
        except (OverflowError, TypeError):
            raise amount_error("clock()", now) from None
        return raw()

    return step


class BusyTimer:
    """How long at least one unit of work was in flight, in four counters.

    The counters are ``entered`` and ``done`` (+1 per unit started and
    finished), ``busy_ns`` (busy time settled so far) and ``since_ns``
    (when the busy time not yet settled began; meaningful while
    ``entered != done``). A reader in any process computes the busy time
    up to ``now`` as ``busy_ns + (now - since_ns if entered != done else
    0)``, loading ``done``, ``entered``, ``busy_ns``, ``since_ns`` in that
    order (the steps write so that such a read never counts settled time
    twice).

    The owner alone writes the counters, one step per event, each a single
    call into C that reads the clock and returns the time it read (ns):

    - ``start()``: a unit starts while none is in flight;
    - ``join()``: a unit starts while others are in flight;
    - ``settle()``: a unit finishes while others are still in flight;
    - ``finish()``: the last unit in flight finishes.

    The owner keeps its own in-flight count to pick the step. The steps are
    zero-argument C-level callables (no Python frame) for per-request hot
    paths; ``start_at(ns)`` and friends do the same at a given time. The
    timer also keeps the owner's own copy of the figures in private memory
    (:attr:`entered`, :attr:`done`, :attr:`busy_ns`, :attr:`since_ns`), so
    the owner reads its figures without touching shared memory, even after
    the shared counters are gone; :meth:`set_values` starts both from
    given figures (a timer taking over from another).

    The clock is :func:`monotonic_ns` unless ``clock`` (a callable
    returning integer nanoseconds) is given; the steps then call it from
    Python first. ``BusyTimer()`` keeps its counters in this process's
    private memory; :meth:`FieldBank.bind_busy_timer
    <shm_counters.CounterStruct.bind_busy_timer>` keeps them in four fields
    of a shared struct or scoreboard row.

    Example::

        >>> t = BusyTimer(clock=iter([100, 150, 400, 1000]).__next__)
        >>> t.start(), t.join(), t.settle(), t.finish()
        (100, 150, 400, 1000)
        >>> t.values()
        {'entered': 2, 'done': 2, 'busy_ns': 900, 'since_ns': 1000}
        >>> t.close()
    """

    __slots__ = ("_b", "_bound", "_owner", "_raw", "finish", "join", "settle", "start")

    start: Callable[[], int]
    join: Callable[[], int]
    settle: Callable[[], int]
    finish: Callable[[], int]

    def __init__(self, *, clock: Callable[[], int] | None = None) -> None:
        cells = ffi.new("uint64_t[4]")
        self._setup([cells + k for k in range(4)], cells, "BusyTimer", [], clock)

    @classmethod
    def _over(
        cls,
        ptrs: list[Any],
        keep: object,
        owner: str,
        bound: list[functools.partial[int]],
        clock: Callable[[], int] | None,
    ) -> BusyTimer:
        """A timer over four raw cell pointers that ``keep`` keeps mapped."""
        timer = cls.__new__(cls)
        timer._setup(ptrs, keep, owner, bound, clock)
        return timer

    def _setup(
        self,
        ptrs: list[Any],
        keep: object,
        owner: str,
        bound: list[functools.partial[int]],
        clock: Callable[[], int] | None,
    ) -> None:
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be None or a callable returning ns, got {clock!r}")
        b = ffi.new("struct shmc_busy *")
        b.entered, b.done, b.busy_ns, b.since_ns = ptrs
        self._b = b
        self._owner = owner
        # The C steps hold the struct (their argument) and ``keep`` (the
        # memory the cells are in); retiring them (close) drops both.
        self._raw = [bound_step(fn, b, keep) for fn in _C_STEPS]
        bound.extend(self._raw)
        self._bound = bound
        if clock is None and C_CLOCK:
            steps: list[Callable[[], int]] = list(self._raw)
        else:
            b.manual = 1
            tick = time.monotonic_ns if clock is None else clock
            steps = [_clocked(raw, b, tick) for raw in self._raw]
        self.start, self.join, self.settle, self.finish = steps

    def _at(self, k: int, ns: object) -> int:
        if type(ns) is not int:
            ns = as_int(ns, "ns")
        if not 0 <= ns <= MAX:
            raise amount_error("ns", ns)
        b = self._b
        manual, b.manual = b.manual, 1
        try:
            b.now = ns
            return self._raw[k]()
        finally:
            b.manual = manual

    def start_at(self, ns: int) -> int:
        """:attr:`start` at time ``ns`` (an int, ``0 <= ns < 2**64``); returns ``ns``."""
        return self._at(0, ns)

    def join_at(self, ns: int) -> int:
        """:attr:`join` at time ``ns``; returns ``ns``."""
        return self._at(1, ns)

    def settle_at(self, ns: int) -> int:
        """:attr:`settle` at time ``ns``; returns ``ns``."""
        return self._at(2, ns)

    def finish_at(self, ns: int) -> int:
        """:attr:`finish` at time ``ns``; returns ``ns``."""
        return self._at(3, ns)

    @property
    def closed(self) -> bool:
        """True once closed (or once the struct or row it lives in is)."""
        return self._raw[0].func is _refuse_closed

    @property
    def entered(self) -> int:
        """Units started (the owner's own copy)."""
        return int(self._b.own_entered)

    @property
    def done(self) -> int:
        """Units finished (the owner's own copy)."""
        return int(self._b.own_done)

    @property
    def busy_ns(self) -> int:
        """Busy time settled so far, ns (the owner's own copy)."""
        return int(self._b.own_busy_ns)

    @property
    def since_ns(self) -> int:
        """The time busy time is settled up to: the last step's (own copy).

        While units are in flight, the busy time up to ``now`` is
        ``busy_ns + now - since_ns``.
        """
        return int(self._b.own_since_ns)

    def values(self) -> dict[str, int]:
        """The owner's own figures: ``entered``, ``done``, ``busy_ns``, ``since_ns``.

        Readable after :meth:`close` too (they are private memory).
        """
        b = self._b
        return {
            "entered": int(b.own_entered),
            "done": int(b.own_done),
            "busy_ns": int(b.own_busy_ns),
            "since_ns": int(b.own_since_ns),
        }

    def set_values(self, *, entered: int, done: int, busy_ns: int, since_ns: int) -> None:
        """Start from these figures: the owner's copy and the shared counters.

        For a timer taking over from another (``other.values()``): the
        shared ``since_ns`` is written too, meaningful once ``entered !=
        done``. Each value must be an int in ``0 <= value < 2**64``.

        Example::

            >>> t = BusyTimer()
            >>> t.set_values(entered=3, done=2, busy_ns=500, since_ns=1000)
            >>> t.finish_at(1200), t.busy_ns, t.done
            (1200, 700, 3)
        """
        figures = {"entered": entered, "done": done, "busy_ns": busy_ns, "since_ns": since_ns}
        for name, value in figures.items():
            if type(value) is not int:
                figures[name] = value = as_int(value, name)
            if not 0 <= value <= MAX:
                raise amount_error(name, value)
        if self.closed:
            raise ClosedError(f"operation on closed {self._owner}")
        b = self._b
        for name, value in figures.items():
            setattr(b, f"own_{name}", value)
            lib.shmc_store(getattr(b, name), value)

    def close(self) -> None:
        """Make every step raise :class:`ClosedError` from now on (idempotent)."""
        for step in self._raw:
            if step.func is not _refuse_closed:
                retire_step(step, self._owner)
                if step in self._bound:
                    self._bound.remove(step)

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("C clock" if self._b.manual == 0 else "clock")
        return f"<BusyTimer of {self._owner} ({state})>"
