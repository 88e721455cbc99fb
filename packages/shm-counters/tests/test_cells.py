"""Cells: packed 64-bit cells, integer and double operations, named segments, bulk reads."""

from __future__ import annotations

import errno
import math
import multiprocessing
import os
import threading

import pytest
from shm_counters import (
    PAGE_SIZE,
    Cells,
    ClosedError,
    CounterIndexError,
    Counters,
    CounterSizeError,
    CounterValueError,
    FieldNameError,
    SegmentError,
    counter_struct,
    process_alive,
    process_start_time,
)
from shmc_test_workers import fadd_cells

FORK = multiprocessing.get_context("fork")
SPAWN = multiprocessing.get_context("spawn")


def test_anonymous_cells_are_zero_and_page_granular() -> None:
    """A new block holds zeros, 8 bytes per cell, rounded up to whole pages."""
    c = Cells(3)
    assert len(c) == PAGE_SIZE // 8
    assert c.load_many(0, 3) == [0, 0, 0]
    assert c.fload_many(0, 3) == [0.0, 0.0, 0.0]
    assert c.path is None
    assert repr(c) == f"<Cells count={PAGE_SIZE // 8} tag='cells'>"


def test_integer_operations() -> None:
    """load, store, add (mod 2**64), cas, or_bits and and_bits give exact values."""
    c = Cells(4)
    c.store(0, 2**64 - 1)
    assert c.add(0, 2) == 1
    assert c.cas(1, 0, 9) is True
    assert c.cas(1, 0, 10) is False
    assert c.load_sc(1) == 9
    c.store_sc(2, 5)
    assert c.or_bits(2, 0b1010) == 0b1111
    assert c.and_bits(2, 0b0110) == 0b0110
    assert c.load_many(0, 3) == [1, 9, 6]


def test_double_operations() -> None:
    """fload, fstore, fadd, fmin and fmax work on IEEE-754 doubles in place."""
    c = Cells(4)
    assert c.fadd(0, 0.5) == 0.5
    assert c.fadd(0, 2) == 2.5
    c.fstore(1, -1.25)
    assert c.fload(1) == -1.25
    assert c.fmin(1, 3.0) == -1.25
    assert c.fmin(1, -7.5) == -7.5
    assert c.fmax(2, -1.0) == 0.0
    assert c.fmax(2, 1e300) == 1e300
    c.fstore(3, math.inf)
    assert c.fadd(3, 1.0) == math.inf


def test_min_and_max_ignore_nan() -> None:
    """A NaN never replaces a value in fmin/fmax, and a NaN cell keeps its NaN."""
    c = Cells(2)
    c.fstore(0, 4.0)
    assert c.fmin(0, math.nan) == 4.0
    assert c.fmax(0, math.nan) == 4.0
    c.fstore(1, math.nan)
    assert math.isnan(c.fmin(1, -1.0))
    assert math.isnan(c.fmax(1, 1.0))


def test_bit_patterns_are_shared_by_both_views() -> None:
    """A double cell holds the IEEE-754 bit pattern, readable as an integer."""
    c = Cells(1)
    c.fstore(0, 1.0)
    assert c.load(0) == 0x3FF0000000000000
    c.store(0, 0xC004000000000000)
    assert c.fload(0) == -2.5


@pytest.mark.parametrize("value", [True, "1", None, b"x", [1]])
def test_doubles_refuse_non_numbers(value: object) -> None:
    """fstore/fadd refuse bool, str, bytes, None and lists with TypeError naming the type."""
    c = Cells(1)
    with pytest.raises(TypeError, match=f"must be a real number, not {type(value).__name__}"):
        c.fstore(0, value)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="amount must be a real number"):
        c.fadd(0, value)  # type: ignore[arg-type]
    assert c.fload(0) == 0.0


def test_integers_refuse_out_of_range_and_non_ints() -> None:
    """Integer writes outside [0, 2**64-1], or of non-ints, raise and write nothing."""
    c = Cells(1)
    with pytest.raises(CounterValueError, match=r"value -1 out of range: allowed 0 <= value <="):
        c.store(0, -1)
    with pytest.raises(CounterValueError, match="amount 18446744073709551616 out of range"):
        c.add(0, 2**64)
    with pytest.raises(TypeError, match="value must be an int, not float"):
        c.store(0, 1.0)  # type: ignore[arg-type]
    assert c.load(0) == 0
    with pytest.raises(CounterValueError, match=r"^amount 1(0){400} is too large for a double$"):
        c.fadd(0, 10**400)


def test_indexes_are_checked() -> None:
    """Every index and range is checked against the count; nothing is touched outside."""
    c = Cells(PAGE_SIZE // 8)
    n = len(c)
    with pytest.raises(CounterIndexError, match=f"index {n} out of range for {n} cells"):
        c.load(n)
    with pytest.raises(CounterIndexError, match="index -1 out of range"):
        c.fadd(-1, 1.0)
    with pytest.raises(CounterIndexError, match=rf"cells {n - 1}..{n} \(2 cells\) out of range"):
        c.fload_many(n - 1, 2)
    with pytest.raises(CounterIndexError, match="out of range"):
        c.bind_fadd(n)
    with pytest.raises(CounterIndexError, match="out of range"):
        c.fsum_rows(0, 8, [0, n // 8], 1)
    with pytest.raises(TypeError, match="cell index must be an int, not bool"):
        c.load(True)  # type: ignore[arg-type]
    with pytest.raises(CounterIndexError, match="overlap"):
        c.copy(1, 0, 2)


@pytest.mark.parametrize("count", [0, -1, 2**61])
def test_bad_counts(count: int) -> None:
    """A count below 1 or beyond the machine's memory is a CounterSizeError."""
    with pytest.raises(CounterSizeError, match=f"count {count} out of range"):
        Cells(count)


def test_bound_steps_are_one_call_and_retire_on_close() -> None:
    """bind_fadd/bind_fstore/bind_fload work on one cell and raise ClosedError after close."""
    c = Cells(2)
    add, put, get = c.bind_fadd(1), c.bind_fstore(1), c.bind_fload(1)
    assert add(0.25) == 0.25
    put(8.0)
    assert get() == 8.0
    assert add(1) == 9.0
    c.close()
    for step, args in ((add, (1.0,)), (put, (1.0,)), (get, ())):
        with pytest.raises(ClosedError, match="operation on closed Cells"):
            step(*args)
    with pytest.raises(ClosedError):
        c.load(0)


def test_ranges_copy_and_zero() -> None:
    """store_many/fstore_many, copy and zero act on exactly the cells named."""
    c = Cells(8)
    c.store_many(0, [1, 2, 3])
    c.copy(4, 0, 3)
    c.zero(1, 1)
    assert c.load_many(0, 8) == [1, 0, 3, 0, 1, 2, 3, 0]
    c.fstore_many(5, [0.5, -0.5])
    assert c.fload_many(5, 2) == [0.5, -0.5]


def test_column_sums_and_ors_over_rows() -> None:
    """fsum_rows and or_rows reduce a column over exactly the rows listed."""
    c = Cells(32)
    for r in range(4):
        c.fstore_many(8 + r * 4, [r + 0.5, 10.0 * r, 1.0])
        c.store(8 + r * 4 + 3, 1 << r)
    assert c.fsum_rows(8, 4, [0, 2, 3], 3) == [0.5 + 2.5 + 3.5, 50.0, 3.0]
    assert c.or_rows(11, 4, [1, 3], 1) == [0b1010]
    assert c.fsum_rows(8, 4, [], 2) == [0.0, 0.0]


def test_bytes_round_trip() -> None:
    """write_bytes then read_bytes gives the same bytes, and only those cells change."""
    c = Cells(4)
    c.store(3, 77)
    c.write_bytes(1, b"prometheus\x00shm")
    assert c.read_bytes(1, 14) == b"prometheus\x00shm"
    assert c.load(3) == 77
    with pytest.raises(CounterIndexError):
        c.write_bytes(len(c) - 1, b"123456789")


def test_fadd_from_threads_is_exact() -> None:
    """8 threads adding 0.5 each 20,000 times lose no update."""
    c = Cells(1)
    add = c.bind_fadd(0)

    def work() -> None:
        for _ in range(20_000):
            add(0.5)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.fload(0) == 80_000.0


def _fork_worker(cells: Cells, times: int) -> None:
    add = cells.bind_fadd(0)
    for _ in range(times):
        add(0.5)
    cells.fmax(1, float(os.getpid()))


def test_fadd_from_forked_processes_is_exact() -> None:
    """4 forked processes adding 0.5 100,000 times each to one cell sum exactly."""
    c = Cells(2)
    procs = [FORK.Process(target=_fork_worker, args=(c, 100_000)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert c.fload(0) == 200_000.0
    assert c.fload(1) == float(max(p.pid for p in procs if p.pid is not None))


def test_named_cells_are_shared_by_spawned_processes(shm_path: str) -> None:
    """Spawned processes attaching by path and tag add into the same doubles exactly."""
    c = Cells(16, path=shm_path, tag="promtest")
    procs = [
        SPAWN.Process(target=fadd_cells, args=(shm_path, "promtest", 3, 0.25, 20_000))
        for _ in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert c.fload(3) == 15_000.0


def test_named_cells_init_runs_before_the_file_appears(shm_path: str) -> None:
    """init fills a new named segment; attaching later sees its writes and does not rerun it."""
    calls: list[int] = []

    def init(view: Cells) -> None:
        assert not os.path.exists(shm_path)
        calls.append(len(view))
        view.store(0, 42)

    a = Cells(100, path=shm_path, tag="inittest", init=init)
    b = Cells(100, path=shm_path, tag="inittest", init=init)
    assert calls == [len(a)]
    assert b.load(0) == 42
    assert len(a) == len(b) >= 100
    assert (os.stat(shm_path).st_mode & 0o777) == 0o600


def test_named_cells_refuse_another_tag_or_a_counters_file(shm_path: str) -> None:
    """A segment tagged otherwise, a counter struct's or plain counters are SegmentError EINVAL."""
    Cells(8, path=shm_path, tag="one")
    with pytest.raises(
        SegmentError, match="segment holds fields \\(one\\), not cells tagged 'two'"
    ) as e:
        Cells.attach(shm_path, tag="two")
    assert e.value.errno == errno.EINVAL
    os.unlink(shm_path)
    Counters(4, path=shm_path)
    with pytest.raises(SegmentError, match="segment holds plain counters, not cells tagged 'one'"):
        Cells.attach(shm_path, tag="one")
    os.unlink(shm_path)
    counter_struct("S", ["a"])(path=shm_path)
    with pytest.raises(SegmentError, match=r"segment holds fields \(a\), not cells tagged 'one'"):
        Cells.attach(shm_path, tag="one")


def test_named_cells_too_few_for_the_count_asked(shm_path: str) -> None:
    """Attaching with a count beyond the file's cells is a SegmentError naming both."""
    n = len(Cells(8, path=shm_path, tag="small"))
    with pytest.raises(SegmentError, match=f"segment holds {n} cells, {n + 1} asked"):
        Cells(n + 1, path=shm_path, tag="small")


def test_missing_segment_and_bad_tag() -> None:
    """Attaching a missing file is ENOENT; a tag that is not an identifier is FieldNameError."""
    with pytest.raises(SegmentError) as e:
        Cells.attach("/nonexistent-dir-for-cells/x", tag="t")
    assert e.value.errno == errno.ENOENT
    with pytest.raises(FieldNameError):
        Cells(1, tag="not an identifier")


def test_process_liveness_helpers() -> None:
    """process_alive with process_start_time says this process is alive, a wrong start time not."""
    me = os.getpid()
    start = process_start_time(me)
    assert process_alive(me, start) is True
    if start:
        assert process_alive(me, start + 1) is False
    assert process_alive(0) is False
