"""Histogram: a lock-free histogram in shared memory.

Cells (unsigned 64-bit, after the segment header for named ones)::

    0 count   1-2 sum (128-bit, lo/hi)   3-4 sum of squares (128-bit)
    5 min (2**64-1 when empty)   6 max   7 outliers_low   8 outliers_high
    16...     explicit bounds: the len(bounds) edges, then one count per
              bucket; log2: one count per bucket

``record()`` is one C call: atomic adds for count, sum, sum of squares and
the bucket, compare-and-swap loops for min and max.
"""

from __future__ import annotations

import errno
import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from ._counters import CLOSED, amount_error, retire_step
from ._errors import BoundsError, ClosedError, SegmentError
from ._native import CACHE_LINE_SIZE, H_DATA, MAX, lib, new_u64
from ._segment import Kind, Layout, PathArg, Segment

__all__ = ["Histogram", "HistogramSnapshot"]

_VALUE_LIMIT = 2**63
_record = lib.shmc_hist_record


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """What a histogram held when read (cells are read one by one).

    ``stddev`` is the population standard deviation; ``buckets`` holds
    ``(low_inclusive, high_exclusive, count)`` triples.
    """

    count: int
    sum: int
    min: int | None
    max: int | None
    mean: float | None
    stddev: float | None
    outliers_low: int
    outliers_high: int
    buckets: tuple[tuple[int, int, int], ...]


def _check_bounds(bounds: object) -> tuple[int, ...]:
    if isinstance(bounds, (str, bytes)) or not isinstance(bounds, Sequence):
        raise BoundsError(f"bounds must be a sequence of ints, not {type(bounds).__name__}")
    edges = tuple(bounds)
    if len(edges) < 2:
        raise BoundsError(f"bounds needs at least 2 edges (one bucket), got {len(edges)}")
    if len(edges) > 4097:
        raise BoundsError(f"bounds has {len(edges)} edges, allowed at most 4097")
    for e in edges:
        if isinstance(e, bool) or not isinstance(e, int) or not 0 <= e <= _VALUE_LIMIT:
            raise BoundsError(f"bound {e!r} is not an int in 0..2**63")
    for a, b in itertools.pairwise(edges):
        if not a < b:
            raise BoundsError(f"bounds must increase strictly: {a} then {b}")
    return edges


class Histogram:
    """A histogram that many processes record into, lock-free.

    Buckets are either explicit, ``bounds=[e0, e1, ..., en]`` making bucket
    ``k`` hold ``[e_k, e_k+1)`` (values below ``e0`` count as
    ``outliers_low``, values ``>= en`` as ``outliers_high``), or powers of
    two, ``log2_buckets=n``: bucket 0 holds 0 and 1, bucket ``k >= 1`` holds
    ``[2**k, 2**(k+1))``, values ``>= 2**n`` are ``outliers_high``. The
    default is 32 log2 buckets. Every value, outliers included, counts in
    count, sum, min and max. Values are ints in ``[0, 2**63)``.

    Sum and sum of squares are 128-bit: the sum is always exact, the sum of
    squares (hence ``stddev``) as long as it stays below ``2**128`` (e.g.
    up to ``2**64`` values below ``2**32``).

    Example::

        >>> h = Histogram([0, 10, 100])
        >>> h.record(5); h.record(50); h.record(500)
        >>> s = h.snapshot()
        >>> s.count, s.min, s.max, s.buckets
        (3, 5, 500, ((0, 10, 1), (10, 100, 1)))
        >>> s.outliers_high
        1
    """

    __slots__ = ("_bound", "_cells", "_edges", "_keep", "_log2", "_nb", "_path", "_seg")

    def __init__(
        self,
        bounds: Sequence[int] | None = None,
        *,
        log2_buckets: int | None = None,
        path: PathArg | None = None,
        create: bool = True,
        mode: int = 0o600,
    ) -> None:
        if bounds is not None and log2_buckets is not None:
            raise BoundsError("give bounds or log2_buckets, not both")
        given = bounds is not None or log2_buckets is not None
        edges: tuple[int, ...] = ()
        if bounds is not None:
            edges = _check_bounds(bounds)
            log2, nb = 0, len(edges) - 1
        else:
            n = 32 if log2_buckets is None else log2_buckets
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 63:
                raise BoundsError(f"log2_buckets {n!r} out of range: allowed 1..63")
            log2, nb = 1, n
        ncells = H_DATA + nb + (0 if log2 else nb + 1)

        def init(seg: Segment) -> None:
            cells = seg.cells(0)
            if not log2:
                cells[H_DATA : H_DATA + nb + 1] = list(edges)
            lib.shmc_hist_reset(cells, log2, nb)

        what = f"a histogram of {nb} buckets"
        if path is None:
            seg = Segment.anonymous(ncells * 8, what)
            init(seg)
        else:

            def want() -> Layout:
                return Layout(Kind.HISTOGRAM, nb, -(-ncells * 8 // CACHE_LINE_SIZE), log2)

            seg = Segment.named(
                path,
                kind=Kind.HISTOGRAM,
                want=want if create else None,
                mode=mode,
                init=init,
                what=what,
            )
            got = seg.header()
            if not given:
                log2, nb = got.param, got.count
                ncells = H_DATA + nb + (0 if log2 else nb + 1)
            if (
                got.param not in (0, 1)
                or got.count < 1
                or got.capacity * CACHE_LINE_SIZE < ncells * 8
            ):
                raise SegmentError(errno.EINVAL, "histogram segment is malformed", seg.path)
            theirs = seg.cells(0)
            if not log2 and not given:
                edges = tuple(theirs[H_DATA : H_DATA + nb + 1])
                try:
                    _check_bounds(list(edges))
                except BoundsError as exc:
                    raise SegmentError(errno.EINVAL, str(exc), seg.path) from None
            if (got.param, got.count) != (log2, nb) or (
                not log2 and tuple(theirs[H_DATA : H_DATA + nb + 1]) != edges
            ):
                raise SegmentError(
                    errno.EINVAL,
                    "histogram segment has other buckets than asked for",
                    seg.path,
                )
        self._seg: Segment | None = seg
        self._path = seg.path
        self._log2 = log2
        self._nb = nb
        self._edges = edges
        self._cells: Any = seg.cells(0)
        self._keep = seg  # held until this object dies, even after close()
        self._bound: list[functools.partial[int]] = []

    @classmethod
    def attach(cls, path: PathArg) -> Histogram:
        """Attach to an existing named histogram, with its own buckets.

        Example::

            h = Histogram.attach("/dev/shm/myapp.latency")
        """
        return cls(path=path, create=False)

    @property
    def path(self) -> str | None:
        """The named segment's path, or None for anonymous memory."""
        return self._path

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._seg is None

    def record(self, value: int) -> None:
        """Add one value in ``[0, 2**63)``, lock-free, in one C call.

        ``value`` is an int (or has ``__index__``); a bool, float, str or
        None raises :class:`TypeError`, as every counter operation does.

        Example::

            h.record(elapsed_us)
        """
        if value is True or value is False:  # cffi would take them as 1 and 0
            raise TypeError("value must be an int, not bool")
        try:
            if _record(self._cells, self._log2, self._nb, value):
                raise amount_error("value", value, 0, _VALUE_LIMIT - 1)
        except (OverflowError, TypeError):
            if self._seg is None:
                raise ClosedError("operation on closed Histogram") from None
            raise amount_error("value", value, 0, _VALUE_LIMIT - 1) from None

    def bind_record(self) -> Callable[[int], int]:
        """A one-argument callable recording ``value``: one C call, no Python frame.

        For hot paths, like the counters' bound steps: a C-level
        ``functools.partial`` of the C function over this histogram's cells,
        so a call goes straight into cffi. It does no checking of its own:
        it returns 0, or -1 for a negative value (nothing recorded); a
        value that is not an int below ``2**63`` raises cffi's
        ``OverflowError`` or ``TypeError`` and records nothing (a bool
        counts as 0 or 1: :meth:`record` is the checked call). After
        :meth:`close` it raises :class:`ClosedError`.

        Example::

            >>> h = Histogram([0, 10, 100])
            >>> record = h.bind_record()
            >>> record(5), record(50), record(-1)
            (0, 0, -1)
            >>> h.snapshot().count
            2
            >>> h.close()
        """
        if self._seg is None:
            raise ClosedError("operation on closed Histogram")
        step = functools.partial(_record, self._cells, self._log2, self._nb)
        step.keep = self._keep  # type: ignore[attr-defined]
        self._bound.append(step)
        return step

    def _bucket_edges(self) -> list[tuple[int, int]]:
        if self._log2:
            return [(0 if k == 0 else 2**k, 2 ** (k + 1)) for k in range(self._nb)]
        e = self._edges
        return [(e[k], e[k + 1]) for k in range(self._nb)]

    def snapshot(self) -> HistogramSnapshot:
        """Read the histogram (cell by cell, while others may record).

        Example::

            >>> h = Histogram(log2_buckets=2)
            >>> h.record(3)
            >>> s = h.snapshot()
            >>> s.count, s.mean, s.buckets
            (1, 3.0, ((0, 2, 0), (2, 4, 1)))
        """
        if self._seg is None:
            raise ClosedError("operation on closed Histogram")
        n = H_DATA + self._nb + (0 if self._log2 else self._nb + 1)
        raw = new_u64(n)
        for k in range(n):
            raw[k] = lib.shmc_load(self._cells + k)
        c = list(raw)
        count = c[0]
        total = c[1] | (c[2] << 64)
        squares = c[3] | (c[4] << 64)
        start = H_DATA + (0 if self._log2 else self._nb + 1)
        buckets = tuple((lo, hi, c[start + k]) for k, (lo, hi) in enumerate(self._bucket_edges()))
        mean = total / count if count else None
        stddev = None
        if count >= 2:
            var_num = count * squares - total * total
            stddev = math.sqrt(max(var_num, 0)) / count
        return HistogramSnapshot(
            count=count,
            sum=total,
            min=c[5] if count and c[5] != MAX else None,
            max=c[6] if count else None,
            mean=mean,
            stddev=stddev,
            outliers_low=c[7],
            outliers_high=c[8],
            buckets=buckets,
        )

    def reset(self) -> None:
        """Zero everything (not atomic with concurrent ``record`` calls).

        Example::

            >>> h = Histogram()
            >>> h.record(7)
            >>> h.reset()
            >>> h.snapshot().count
            0
        """
        if self._seg is None:
            raise ClosedError("operation on closed Histogram")
        lib.shmc_hist_reset(self._cells, self._log2, self._nb)

    def close(self) -> None:
        """Release the mapping; later use raises :class:`ClosedError`.

        Example::

            >>> h = Histogram()
            >>> h.close()
            >>> h.closed
            True
        """
        self._seg = None
        self._cells = CLOSED
        for step in self._bound:
            retire_step(step, "Histogram")
        self._bound.clear()

    def __enter__(self) -> Histogram:
        if self._seg is None:
            raise ClosedError("operation on closed Histogram")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = f"log2_buckets={self._nb}" if self._log2 else f"bounds={self._edges}"
        state = " closed" if self._seg is None else ""
        return f"<Histogram {kind}{state}>"
