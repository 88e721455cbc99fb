"""The accounting on its own, sans-IO: times in, figures out (no clock, lock or row)."""

from __future__ import annotations

from process_utilization import FIELDS
from process_utilization._accounting import NEVER, Accounting
from process_utilization._figures import read_figures

S = 10**9  # ns in a second


def test_one_request_at_a_time_busy_equals_durations() -> None:
    """Sequential requests: busy time and the response sum are their durations."""
    acct = Accounting(window_ns=100 * S)
    assert acct.enter(1 * S) is False
    assert acct.leave(1 * S, 3 * S) == 2 * S
    assert acct.enter(5 * S) is False
    assert acct.leave(5 * S, 6 * S) == 1 * S
    assert (acct.in_flight, acct.done, acct.entered) == (0, 2, 2)
    assert (acct.busy_ns, acct.response_total, acct.overlapped) == (3 * S, 3 * S, False)


def test_overlap_counts_once_and_keeps_the_response_sum_from_then_on() -> None:
    """Overlapping requests count their union as busy; the first overlap is said once."""
    acct = Accounting(window_ns=100 * S)
    acct.enter(0)
    acct.leave(0, 1 * S)  # alone: 1 s
    assert acct.enter(2 * S) is False
    assert acct.enter(3 * S) is True  # the first overlap: response_ns starts at busy (1 s)
    assert acct.response_ns == 1 * S
    assert acct.enter(3 * S) is False  # later overlaps say nothing
    acct.leave(2 * S, 4 * S)
    acct.leave(3 * S, 5 * S)
    acct.leave(3 * S, 7 * S)
    assert acct.busy_ns == 6 * S  # 0..1 and 2..7
    assert acct.response_total == (1 + 2 + 2 + 4) * S


def test_busy_up_to_now_includes_the_request_in_flight() -> None:
    """busy_at(now) adds the unsettled part of a request still in flight."""
    acct = Accounting(window_ns=100 * S)
    acct.enter(10 * S)
    assert acct.busy_at(12 * S) == 2 * S
    acct.leave(10 * S, 13 * S)
    assert acct.busy_at(20 * S) == 3 * S


def test_a_clock_that_went_back_settles_nothing() -> None:
    """A request ending before the last settled time adds no busy time."""
    acct = Accounting(window_ns=100 * S)
    acct.enter(10 * S)
    assert acct.leave(10 * S, 9 * S) == -1 * S
    assert acct.busy_ns == 0


def test_the_horizon_starts_from_the_figures_at_that_moment() -> None:
    """start_horizon() keeps the figures at its time; horizon_over() says when it is past."""
    acct = Accounting(window_ns=10 * S)
    assert (acct.started, acct.horizon_ends_ns()) == (False, NEVER)
    assert acct.horizon_over(10**6 * S) is False
    acct.enter(0)
    acct.start_horizon(0)
    acct.leave(0, 4 * S)
    acct.enter(8 * S)
    acct.start_horizon(9 * S)  # a request in flight since 8 s
    assert (acct.horizon_busy_ns, acct.horizon_done) == (5 * S, 1)
    assert acct.horizon_ends_ns() == 19 * S + 1
    assert acct.horizon_over(19 * S) is False
    assert acct.horizon_over(19 * S + 1) is True


def test_values_are_a_row_and_read_as_one() -> None:
    """values() names every row field; read as a row, they give the figures."""
    acct = Accounting(window_ns=100 * S)
    acct.enter(1 * S)
    acct.start_horizon(1 * S)
    acct.leave(1 * S, 2 * S)
    acct.add_gc(S // 4)
    acct.enter(3 * S)
    values = acct.values()
    assert tuple(values) == FIELDS
    r = read_figures(values, 5 * S)
    assert (r.in_flight, r.requests_total, r.busy_ns, r.response_ns) == (1, 1, 3 * S, 1 * S)
    assert (r.horizon_ns, r.requests, r.active_ns) == (4 * S, 1, 3 * S)
    assert (r.gc_ns, r.gc_collections) == (S // 4, 1)


def test_before_any_request_a_worker_reads_as_idle() -> None:
    """A fresh accounting reads as the table shows a worker that has served nothing."""
    r = read_figures(Accounting(window_ns=S).values(), 7 * S)
    assert (r.in_flight, r.requests_total, r.busy_ns, r.horizon_ns, r.active_ns) == (0,) * 5
