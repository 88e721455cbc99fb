"""BusyTimer: busy time in four counters, one C call per step."""

from __future__ import annotations

import multiprocessing
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from shm_counters import (
    MAX,
    BusyTimer,
    ClosedError,
    CounterValueError,
    FieldNameError,
    Scoreboard,
    counter_struct,
    monotonic_ns,
)

FORK = multiprocessing.get_context("fork")
Row = counter_struct("Row", ["entered", "done", "busy_ns", "since_ns", "other"])
FIELDS = ("entered", "done", "busy_ns", "since_ns")


def ticks(*times: int) -> Callable[[], int]:
    """A clock returning ``times`` in turn, then failing loudly."""
    it: Iterator[int] = iter(times)
    return lambda: next(it)


def shared(row: object) -> dict[str, int]:
    return {name: getattr(row, name) for name in FIELDS}


def test_steps_with_a_given_clock_give_exact_figures() -> None:
    """start, join, settle, finish: busy time counts overlaps once."""
    t = BusyTimer(clock=ticks(100, 150, 400, 1000, 1200, 1500))
    assert t.start() == 100
    assert t.join() == 150
    assert t.values() == {"entered": 2, "done": 0, "busy_ns": 0, "since_ns": 100}
    assert t.settle() == 400
    assert t.values() == {"entered": 2, "done": 1, "busy_ns": 300, "since_ns": 400}
    assert t.finish() == 1000
    assert t.values() == {"entered": 2, "done": 2, "busy_ns": 900, "since_ns": 1000}
    # Idle from 1000 to 1200 does not count.
    assert (t.start(), t.finish()) == (1200, 1500)
    assert (t.entered, t.done, t.busy_ns, t.since_ns) == (3, 3, 1200, 1500)


def test_bound_to_a_struct_the_shared_fields_follow_the_steps() -> None:
    """Readers see entered/done/busy_ns/since_ns; other fields are untouched."""
    row = Row()
    row.other = 7
    t = row.bind_busy_timer("entered", "done", "busy_ns", "since_ns", clock=ticks(10, 25, 60, 90))
    t.start()
    assert shared(row) == {"entered": 1, "done": 0, "busy_ns": 0, "since_ns": 10}
    t.join()
    t.settle()
    assert shared(row) == {"entered": 2, "done": 1, "busy_ns": 50, "since_ns": 60}
    t.finish()
    # The shared since_ns keeps the start of the last busy time (meaningless
    # when idle); the owner's copy moves with every step.
    assert shared(row) == {"entered": 2, "done": 2, "busy_ns": 80, "since_ns": 60}
    assert t.since_ns == 90
    assert row.other == 7
    row.close()


def test_the_c_clock_is_the_monotonic_clock() -> None:
    """The kernel's CLOCK_MONOTONIC brackets every step's time."""
    t = BusyTimer()
    before = time.monotonic_ns()
    begun = t.start()
    middle = monotonic_ns()
    ended = t.finish()
    after = time.monotonic_ns()
    assert before <= begun <= middle <= ended <= after
    assert t.busy_ns == ended - begun
    assert repr(t) == (
        "<BusyTimer of BusyTimer (C clock)>"
        if sys.platform.startswith("linux")
        else "<BusyTimer of BusyTimer (clock)>"
    )


def test_steps_at_a_given_time_and_a_clock_that_goes_back() -> None:
    """*_at(ns) steps at ns; busy time never goes down when the clock does."""
    t = BusyTimer()
    assert t.start_at(5_000) == 5_000
    assert t.join_at(6_000) == 6_000
    assert t.settle_at(4_000) == 4_000  # went back: settles nothing
    assert t.finish_at(9_000) == 9_000
    assert t.values() == {"entered": 2, "done": 2, "busy_ns": 5_000, "since_ns": 9_000}
    # The C clock is back in charge after an _at step.
    now = t.start()
    assert now >= time.monotonic_ns() - 10**9


def test_set_values_seeds_both_copies() -> None:
    """A timer taking over from another carries on from its figures."""
    row = Row()
    old = BusyTimer(clock=ticks(100, 200))
    old.start()
    old.join()
    t = row.bind_busy_timer(*FIELDS, clock=ticks(700, 900))
    t.set_values(**old.values())
    assert shared(row) == {"entered": 2, "done": 0, "busy_ns": 0, "since_ns": 100}
    t.settle()
    t.finish()
    assert shared(row) == {"entered": 2, "done": 2, "busy_ns": 800, "since_ns": 700}
    assert t.values() == {"entered": 2, "done": 2, "busy_ns": 800, "since_ns": 900}
    row.close()


def test_a_forked_child_steps_and_the_parent_reads_exact_figures() -> None:
    """The fields are shared memory: a child's steps show in the parent."""
    row = Row()

    def child() -> None:
        t = row.bind_busy_timer(*FIELDS, clock=ticks(*range(0, 20_000, 10)))
        for _ in range(500):
            t.start()
            t.join()
            t.settle()
            t.finish()

    p = FORK.Process(target=child)
    p.start()
    p.join(60)
    assert p.exitcode == 0
    # Per round: start t, join t+10, settle t+20 (the shared since), finish
    # t+30: 30 ns busy.
    assert shared(row) == {"entered": 1000, "done": 1000, "busy_ns": 15_000, "since_ns": 19_980}
    row.close()


def test_closing_the_struct_closes_the_timer() -> None:
    row = Row()
    t = row.bind_busy_timer(*FIELDS)
    start = t.start
    t.start()
    row.close()
    assert t.closed
    for step in (start, t.join, t.settle, t.finish):
        with pytest.raises(ClosedError, match="operation on closed Row"):
            step()
    with pytest.raises(ClosedError, match="operation on closed Row"):
        t.finish_at(5)
    with pytest.raises(ClosedError, match="operation on closed Row"):
        t.set_values(entered=0, done=0, busy_ns=0, since_ns=0)
    # The owner's copy is private memory: still readable.
    assert (t.entered, t.done) == (1, 0)


def test_close_is_idempotent_and_leaves_the_struct_open() -> None:
    row = Row()
    t = row.bind_busy_timer(*FIELDS)
    t.close()
    t.close()
    assert t.closed
    assert not row.closed
    with pytest.raises(ClosedError):
        t.start()
    row.incr_entered()
    assert row.entered == 1
    row.close()


def test_a_released_scoreboard_row_closes_its_timer() -> None:
    board = Scoreboard(2, list(FIELDS))
    row = board.claim()
    t = row.bind_busy_timer(*FIELDS)
    t.start()
    assert board.totals()["entered"] == 1
    row.release()
    with pytest.raises(ClosedError):
        t.finish()
    board.close()


def test_bad_times_are_refused_and_nothing_changes() -> None:
    t = BusyTimer()
    t.start_at(10)
    before = t.values()
    with pytest.raises(CounterValueError, match=r"ns -1 out of range: allowed 0 <= ns <= "):
        t.finish_at(-1)
    with pytest.raises(CounterValueError, match=rf"ns {MAX + 1} out of range"):
        t.finish_at(MAX + 1)
    with pytest.raises(TypeError, match="ns must be an int, not float"):
        t.finish_at(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ns must be an int, not bool"):
        t.finish_at(True)
    with pytest.raises(CounterValueError, match="busy_ns -5 out of range"):
        t.set_values(entered=1, done=1, busy_ns=-5, since_ns=0)
    assert t.values() == before


def test_a_clock_returning_garbage_is_refused_before_any_counting() -> None:
    values: list[object] = [-1, 2.5]
    t = BusyTimer(clock=lambda: values.pop(0))  # type: ignore[arg-type,return-value]
    with pytest.raises(CounterValueError, match=r"clock\(\) -1 out of range"):
        t.start()
    with pytest.raises(TypeError, match=r"clock\(\) must be an int, not float"):
        t.start()
    assert t.values() == {"entered": 0, "done": 0, "busy_ns": 0, "since_ns": 0}


def test_bad_construction_is_refused() -> None:
    with pytest.raises(TypeError, match="clock must be None or a callable returning ns, got 5"):
        BusyTimer(clock=5)  # type: ignore[arg-type]
    row = Row()
    with pytest.raises(FieldNameError, match="no field 'nope' in Row"):
        row.bind_busy_timer("entered", "done", "busy_ns", "nope")
    with pytest.raises(FieldNameError, match="four different fields"):
        row.bind_busy_timer("entered", "done", "busy_ns", "done")
    row.close()
    with pytest.raises(ClosedError, match="operation on closed Row"):
        row.bind_busy_timer(*FIELDS)


def test_method_names_cannot_be_field_names() -> None:
    with pytest.raises(FieldNameError, match="would hide a method"):
        counter_struct("Bad", ["bind_busy_timer"])
