"""Histogram: buckets, statistics, errors, many processes."""

from __future__ import annotations

import errno
import multiprocessing
import statistics
import struct

import pytest
import shmc_test_workers as workers
from shm_counters import (
    BoundsError,
    ClosedError,
    CounterValueError,
    Histogram,
    HistogramSnapshot,
    SegmentError,
)

FORK = multiprocessing.get_context("fork")
SPAWN = multiprocessing.get_context("spawn")


def test_explicit_bounds_buckets_and_outliers() -> None:
    """Explicit edges make [e_k, e_k+1) buckets; values outside are outliers."""
    h = Histogram([10, 20, 50])
    for v in (3, 10, 19, 20, 49, 50, 1000):
        h.record(v)
    s = h.snapshot()
    assert s.buckets == ((10, 20, 2), (20, 50, 2))
    assert (s.outliers_low, s.outliers_high) == (1, 2)
    assert (s.count, s.sum, s.min, s.max) == (7, 1151, 3, 1000)


def test_log2_buckets() -> None:
    """Log2 bucket 0 holds 0 and 1, bucket k holds [2**k, 2**(k+1))."""
    h = Histogram(log2_buckets=4)
    for v in (0, 1, 2, 3, 4, 7, 8, 15, 16, 2**40):
        h.record(v)
    s = h.snapshot()
    assert s.buckets == ((0, 2, 2), (2, 4, 2), (4, 8, 2), (8, 16, 2))
    assert (s.outliers_low, s.outliers_high) == (0, 2)


def test_default_is_32_log2_buckets() -> None:
    """With no arguments there are 32 log2 buckets, up to 2**32."""
    h = Histogram()
    h.record(2**32 - 1)
    h.record(2**32)
    s = h.snapshot()
    assert len(s.buckets) == 32
    assert s.buckets[-1] == (2**31, 2**32, 1)
    assert s.outliers_high == 1


def test_statistics_match_python() -> None:
    """mean and population stddev equal the statistics module's on the same data."""
    values = [5, 17, 17, 200, 3, 99, 1024, 0]
    h = Histogram([0, 100, 2000])
    for v in values:
        h.record(v)
    s = h.snapshot()
    assert s.count == len(values)
    assert s.sum == sum(values)
    assert s.mean == sum(values) / len(values)
    assert s.stddev == pytest.approx(statistics.pstdev(values), rel=1e-12)
    assert (s.min, s.max) == (0, 1024)


def test_empty_and_single_value_snapshots() -> None:
    """An empty histogram has None min/max/mean/stddev; one value has stddev None."""
    h = Histogram([0, 10])
    assert h.snapshot() == HistogramSnapshot(0, 0, None, None, None, None, 0, 0, ((0, 10, 0),))
    h.record(4)
    assert h.snapshot() == HistogramSnapshot(1, 4, 4, 4, 4.0, None, 0, 0, ((0, 10, 1),))


def test_sum_is_exact_beyond_64_bits() -> None:
    """The sum is kept in 128 bits: eight values of 2**62 sum to 2**65."""
    h = Histogram(log2_buckets=63)
    for _ in range(8):
        h.record(2**62)
    s = h.snapshot()
    assert s.sum == 2**65
    assert s.stddev == 0.0
    assert s.max == 2**62
    assert s.buckets[62] == (2**62, 2**63, 8)


@pytest.mark.parametrize("value", [-1, 2**63, 2**64])
def test_bad_values(value: int) -> None:
    """Values outside [0, 2**63) raise CounterValueError and record nothing."""
    h = Histogram()
    with pytest.raises(CounterValueError) as info:
        h.record(value)
    assert str(info.value) == f"value {value} out of range: allowed 0 <= value <= {2**63 - 1}"
    assert h.snapshot().count == 0


def test_non_int_value() -> None:
    """A float value raises TypeError."""
    with pytest.raises(TypeError, match=r"^value must be an int, not float$"):
        Histogram().record(1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [True, False])
def test_bool_value_raises_and_records_nothing(value: bool) -> None:
    """``record(True)`` raises TypeError, as the README says, instead of recording a 1."""
    h = Histogram(log2_buckets=4)
    with pytest.raises(TypeError) as info:
        h.record(value)
    assert str(info.value) == "value must be an int, not bool"
    assert (h.snapshot().count, h.snapshot().sum) == (0, 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bounds": [1]}, "bounds needs at least 2 edges (one bucket), got 1"),
        ({"bounds": [5, 5]}, "bounds must increase strictly: 5 then 5"),
        ({"bounds": [5, 3]}, "bounds must increase strictly: 5 then 3"),
        ({"bounds": [-1, 3]}, "bound -1 is not an int in 0..2**63"),
        ({"bounds": [0, 2**64]}, f"bound {2**64} is not an int in 0..2**63"),
        ({"bounds": [0, 1.5]}, "bound 1.5 is not an int in 0..2**63"),
        ({"bounds": "abc"}, "bounds must be a sequence of ints, not str"),
        ({"bounds": [0, 1], "log2_buckets": 3}, "give bounds or log2_buckets, not both"),
        ({"log2_buckets": 0}, "log2_buckets 0 out of range: allowed 1..63"),
        ({"log2_buckets": 64}, "log2_buckets 64 out of range: allowed 1..63"),
    ],
)
def test_bad_bounds(kwargs: dict[str, object], message: str) -> None:
    """Bad bucket definitions raise BoundsError (a ValueError) saying why."""
    with pytest.raises(BoundsError) as info:
        Histogram(**kwargs)  # type: ignore[arg-type]
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)


def test_reset() -> None:
    """reset() zeroes every statistic and bucket but keeps the bounds."""
    h = Histogram([0, 10, 20])
    for v in (1, 15, 25):
        h.record(v)
    h.reset()
    assert h.snapshot() == HistogramSnapshot(
        0, 0, None, None, None, None, 0, 0, ((0, 10, 0), (10, 20, 0))
    )
    h.record(12)
    assert h.snapshot().buckets == ((0, 10, 0), (10, 20, 1))
    assert h.snapshot().min == 12


def test_closed_histogram() -> None:
    """After close, record, snapshot and reset raise ClosedError."""
    with Histogram() as h:
        h.record(1)
    assert h.closed
    for op in (lambda: h.record(1), lambda: h.record(-1), h.snapshot, h.reset):
        with pytest.raises(ClosedError, match=r"^operation on closed Histogram$"):
            op()


def test_bound_record_is_record_without_the_checks() -> None:
    """bind_record() records as record() does, answers -1 for a negative value, retires on close."""
    h = Histogram([10, 20, 50])
    record = h.bind_record()
    assert [record(v) for v in (3, 10, 19, 49, 50, -1)] == [0, 0, 0, 0, 0, -1]
    with pytest.raises(OverflowError):
        record(2**63)
    s = h.snapshot()
    assert (s.count, s.sum, s.min, s.max) == (5, 131, 3, 50)
    assert (s.outliers_low, s.outliers_high, s.buckets) == (1, 1, ((10, 20, 2), (20, 50, 1)))
    h.close()
    with pytest.raises(ClosedError, match=r"^operation on closed Histogram$"):
        record(1)
    with pytest.raises(ClosedError, match=r"^operation on closed Histogram$"):
        h.bind_record()


def _record_many(h: Histogram, values: list[int]) -> None:
    for v in values:
        h.record(v)


def test_exact_totals_from_forked_processes() -> None:
    """4 forked processes x 20,000 records give exact count, sum, min, max, buckets."""
    h = Histogram([0, 100, 1000])
    per = [list(range(k, 20_000 * 7 + k, 7)) for k in range(4)]
    procs = [FORK.Process(target=_record_many, args=(h, vals)) for vals in per]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    every = [v for vals in per for v in vals]
    s = h.snapshot()
    assert s.count == 80_000
    assert s.sum == sum(every)
    assert (s.min, s.max) == (min(every), max(every))
    assert s.buckets == (
        (0, 100, sum(v < 100 for v in every)),
        (100, 1000, sum(100 <= v < 1000 for v in every)),
    )
    assert s.outliers_high == sum(v >= 1000 for v in every)
    assert s.stddev == pytest.approx(statistics.pstdev(every), rel=1e-9)


def test_named_histogram_shared_with_spawned_processes(shm_path: str) -> None:
    """Spawned processes attached by path record into one histogram exactly."""
    h = Histogram([0, 10, 100], path=shm_path)
    procs = [
        SPAWN.Process(target=workers.record_histogram, args=(shm_path, [k, 10 + k, 500]))
        for k in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    s = h.snapshot()
    assert (s.count, s.sum, s.min, s.max) == (9, 3 * 510 + 2 * 3, 0, 500)
    assert s.buckets == ((0, 10, 3), (10, 100, 3))
    assert s.outliers_high == 3


def test_named_histogram_attach_takes_its_buckets(shm_path: str) -> None:
    """attach() and a bare create=True adopt the file's buckets."""
    Histogram([1, 2, 3], path=shm_path).record(2)
    a = Histogram.attach(shm_path)
    assert a.snapshot().buckets == ((1, 2, 0), (2, 3, 1))
    b = Histogram(path=shm_path)
    assert b.snapshot().count == 1
    assert repr(b) == "<Histogram bounds=(1, 2, 3)>"


def test_named_histogram_mismatch(shm_path: str) -> None:
    """Asking an existing histogram for other buckets is a SegmentError EINVAL."""
    Histogram([1, 2, 3], path=shm_path)
    for kwargs in ({"bounds": [1, 2, 4]}, {"bounds": [1, 2]}, {"log2_buckets": 2}):
        with pytest.raises(SegmentError) as info:
            Histogram(path=shm_path, **kwargs)  # type: ignore[arg-type]
        assert info.value.errno == errno.EINVAL
        assert "other buckets" in str(info.value)


def test_named_histogram_with_corrupt_bounds(shm_path: str) -> None:
    """A file whose stored edges do not increase is refused with EINVAL."""
    Histogram([1, 2, 3], path=shm_path)
    with open(shm_path, "r+b") as f:
        header_size = struct.unpack_from("<I", f.read(24), 20)[0]
        f.seek(header_size + 16 * 8)
        f.write(struct.pack("<Q", 9))
    with pytest.raises(SegmentError, match="bounds must increase strictly: 9 then 2"):
        Histogram.attach(shm_path)


@pytest.mark.parametrize("kwargs", [{}, {"log2_buckets": 63}, {"bounds": list(range(0, 200, 2))}])
def test_named_histogram_with_more_buckets_than_slots_reattaches(
    shm_path: str, kwargs: dict[str, object]
) -> None:
    """A named histogram whose buckets outnumber its cache lines attaches again, shared."""
    first = Histogram(path=shm_path, **kwargs)  # type: ignore[arg-type]
    second = Histogram(path=shm_path, **kwargs)  # type: ignore[arg-type]
    attached = Histogram.attach(shm_path)
    first.record(3)
    second.record(5)
    attached.record(7)
    for h in (first, second, attached):
        snap = h.snapshot()
        assert (snap.count, snap.sum, snap.min, snap.max) == (3, 15, 3, 7)
