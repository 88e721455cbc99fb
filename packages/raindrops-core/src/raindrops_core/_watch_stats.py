"""The Watcher's statistics: the Ruby ``aggregate`` gem's running figures, exactly.

Pure records and arithmetic, no I/O: :class:`Aggregate` keeps count, sum,
min, max, the sample standard deviation and the log2 histogram of integer
samples; :class:`AggregateStats` is what it holds, read at once;
:class:`ListenerReport` one watched listener's two aggregates and recent
:class:`Sample` s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "LOG2_BUCKETS",
    "Aggregate",
    "AggregateStats",
    "ListenerReport",
    "Sample",
    "StatsLike",
    "sample_std_dev",
]

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
