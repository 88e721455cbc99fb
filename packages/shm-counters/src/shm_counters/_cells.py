"""Cells: packed 64-bit cells in shared memory, for layouts of your own.

:class:`Counters` gives every counter its own cache line, which is right for
counters that different processes write at once. A data structure of its own
(a table of per-process rows, a log, a seqlock-protected record) wants the
opposite: cells packed 8 bytes apart, laid out by the caller, each read and
written atomically, some holding integers and some IEEE-754 doubles.
``Cells`` is that: a block of ``count`` 64-bit cells, anonymous (inherited
across ``fork()``) or a named segment file, with bounds-checked atomic
operations by index, bound steps for hot paths, and a few bulk operations
(one C call for a range or for a column over rows).

A double is kept as its bit pattern; ``fadd``, ``fmin`` and ``fmax`` are
compare-and-swap loops on it (see the C header), so concurrent additions from
any number of threads and processes are never lost.

A named segment is a counters segment (the same header, checked the same way
at attach) whose one field name is the caller's ``tag``: attaching checks the
tag, so a file made for another purpose, or by a counter struct, is refused.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, cast

from ._counters import CLOSED, amount_error, as_int, bound_step, retire_step
from ._errors import (
    ClosedError,
    CounterIndexError,
    CounterSizeError,
    CounterValueError,
    SegmentError,
)
from ._native import CACHE_LINE_SIZE, MAX, ffi, lib
from ._segment import (
    MAX_BYTES,
    Kind,
    Layout,
    PathArg,
    Segment,
    encode_names,
    format_names,
    page_round,
    unlink,
)
from ._struct import check_fields

__all__ = ["Cells"]

_PER_SLOT = CACHE_LINE_SIZE // 8
_MAX_CELLS = MAX_BYTES // 8


def _check_count(count: object) -> int:
    if isinstance(count, bool) or not isinstance(count, int):
        raise CounterSizeError(f"count must be an int, not {type(count).__name__} {count!r}")
    if not 1 <= count <= _MAX_CELLS:
        raise CounterSizeError(
            f"count {count} out of range: cells need 1 <= count <= {_MAX_CELLS}"
            f" ({MAX_BYTES} bytes of memory in 8-byte cells)"
        )
    return count


def _check_float(x: object, what: str = "value") -> float:
    """``x`` as a float: ints, floats and objects with ``__float__``, never bool or str."""
    if isinstance(x, (bool, str, bytes)) or not hasattr(x, "__float__"):
        raise TypeError(f"{what} must be a real number, not {type(x).__name__}")
    try:
        return float(x)
    except OverflowError:
        raise CounterValueError(f"{what} {x} is too large for a double") from None


class Cells:
    """At least ``count`` packed 64-bit cells in shared memory (8 bytes apart).

    Without ``path`` the memory is anonymous and shared with children forked
    after construction; with ``path`` it is a named segment file any process
    attaches to, whose header records ``tag`` (an identifier) and is checked
    at attach. ``init`` fills a new segment before anyone else can see it (a
    named file is linked into place only after ``init`` returns). ``count``
    is rounded up to whole pages (anonymous) or cache lines (named).

    Integer cells are unsigned 64-bit; double cells hold IEEE-754 bit
    patterns. Indexes are checked on every method (:class:`CounterIndexError`);
    bound steps check once, when bound.

    Example::

        >>> cells = Cells(16)
        >>> cells.fadd(0, 0.5), cells.fadd(0, 0.25)
        (0.5, 0.75)
        >>> cells.add(1, 3), cells.cas(1, 3, 7), cells.load(1)
        (3, True, 7)
        >>> inc = cells.bind_fadd(2)
        >>> inc(1.5)
        1.5
        >>> cells.close()
    """

    __slots__ = ("__weakref__", "_base", "_bound", "_count", "_keep", "_path", "_seg", "tag")

    def __init__(
        self,
        count: int | None = None,
        *,
        tag: str = "cells",
        path: PathArg | None = None,
        create: bool = True,
        mode: int = 0o600,
        init: Callable[[Cells], None] | None = None,
    ) -> None:
        (name,) = check_fields((tag,))
        if path is None:
            n = _check_count(count)
            seg = Segment.anonymous(n * 8, f"{n} cells")
            self._setup(seg, page_round(n * 8) // 8, name)
            if init is not None:
                init(self)
            return
        asked = None if count is None else _check_count(count)
        extra = encode_names((name,))

        def want() -> Layout:
            n = _check_count(count)
            header = Layout(Kind.COUNTERS, 0, 0, 1, extra).header_size
            slots = (page_round(header + n * 8) - header) // CACHE_LINE_SIZE
            return Layout(Kind.COUNTERS, slots, slots, 1, extra)

        def fill(segment: Segment) -> None:
            if init is None:
                return
            view = Cells.__new__(Cells)
            view._setup(segment, segment.header().capacity * _PER_SLOT, name)
            try:
                init(view)
            finally:
                view.close()

        seg = Segment.named(
            path,
            kind=Kind.COUNTERS,
            want=want if create else None,
            mode=mode,
            init=fill,
            what=f"{asked} cells",
        )
        theirs = seg.field_names()
        if theirs != (name,):
            held = f"fields {format_names(theirs)}" if theirs else "plain counters"
            raise SegmentError(
                errno.EINVAL, f"segment holds {held}, not cells tagged {name!r}", seg.path
            )
        layout = seg.header()
        n = layout.capacity * _PER_SLOT
        if asked is not None and asked > n:
            raise SegmentError(errno.EINVAL, f"segment holds {n} cells, {asked} asked", seg.path)
        self._setup(seg, n, name)

    def _setup(self, seg: Segment, count: int, tag: str) -> None:
        self._seg: Segment | None = seg
        # Held until this object dies, even after close(): a call in flight in
        # another thread, or a bound step, never finds the memory unmapped.
        self._keep = seg
        self._path = seg.path
        self._count = count
        self._base: Any = seg.cells(0)
        self._bound: list[Any] = []
        self.tag = tag

    @classmethod
    def attach(cls, path: PathArg, tag: str = "cells") -> Cells:
        """Attach to an existing named segment of cells tagged ``tag``.

        Example::

            cells = Cells.attach("/dev/shm/myapp.cells", tag="myapp")
        """
        return cls(path=path, tag=tag, create=False)

    # -- checks ---------------------------------------------------------------

    def _ptr(self, i: object, n: int = 1) -> Any:
        """A raw pointer to cell ``i`` after checking cells ``i .. i+n-1`` exist."""
        if self._seg is None:
            raise ClosedError("operation on closed Cells")
        k = i if type(i) is int else as_int(i, "cell index")
        if type(n) is not int:
            n = as_int(n, "cell count")
        if k < 0 or n < 0 or k + n > self._count:
            if n == 1:
                raise CounterIndexError(
                    f"index {k} out of range for {self._count} cells"
                    f" (allowed 0 <= index < {self._count})"
                )
            raise CounterIndexError(
                f"cells {k}..{k + n - 1} ({n} cells) out of range for {self._count} cells"
            )
        return self._base + k

    @staticmethod
    def _u64(value: object, what: str) -> int:
        v = value if type(value) is int else as_int(value, what)
        if not 0 <= v <= MAX:
            raise amount_error(what, v)
        return v

    # -- integers ---------------------------------------------------------------

    def load(self, i: int) -> int:
        """Read integer cell ``i`` (relaxed).

        Example::

            >>> Cells(1).load(0)
            0
        """
        return lib.shmc_load(self._ptr(i))

    def store(self, i: int, value: int) -> None:
        """Write integer cell ``i`` (relaxed); ``value`` in ``[0, 2**64-1]``.

        Example::

            >>> c = Cells(1)
            >>> c.store(0, 9)
            >>> c.load(0)
            9
        """
        lib.shmc_store(self._ptr(i), self._u64(value, "value"))

    def add(self, i: int, n: int) -> int:
        """Add ``n`` to integer cell ``i`` atomically (modulo 2**64); return the new value.

        Example::

            >>> Cells(1).add(0, 5)
            5
        """
        return lib.shmc_add(self._ptr(i), self._u64(n, "amount"))

    def load_sc(self, i: int) -> int:
        """Read integer cell ``i``, sequentially consistent.

        Example::

            >>> Cells(1).load_sc(0)
            0
        """
        return lib.shmc_load_sc(self._ptr(i))

    def store_sc(self, i: int, value: int) -> None:
        """Write integer cell ``i``, sequentially consistent.

        Example::

            >>> Cells(1).store_sc(0, 1)
        """
        lib.shmc_store_sc(self._ptr(i), self._u64(value, "value"))

    def cas(self, i: int, expected: int, desired: int) -> bool:
        """Compare-and-swap integer cell ``i`` (sequentially consistent); True if swapped.

        Example::

            >>> c = Cells(1)
            >>> c.cas(0, 0, 4), c.cas(0, 0, 5), c.load(0)
            (True, False, 4)
        """
        ptr = self._ptr(i)
        return bool(
            lib.shmc_cas(ptr, self._u64(expected, "expected"), self._u64(desired, "desired"))
        )

    def or_bits(self, i: int, bits: int) -> int:
        """Set ``bits`` in integer cell ``i`` atomically; return the new value.

        Example::

            >>> c = Cells(1)
            >>> c.or_bits(0, 0b101), c.or_bits(0, 0b010)
            (5, 7)
        """
        return lib.shmc_or(self._ptr(i), self._u64(bits, "bits"))

    def and_bits(self, i: int, bits: int) -> int:
        """Keep only ``bits`` of integer cell ``i`` atomically; return the new value.

        Example::

            >>> c = Cells(1)
            >>> c.store(0, 7)
            >>> c.and_bits(0, ~0b010 & (2**64 - 1))
            5
        """
        return lib.shmc_and(self._ptr(i), self._u64(bits, "bits"))

    # -- doubles ----------------------------------------------------------------

    def fload(self, i: int) -> float:
        """Read double cell ``i``.

        Example::

            >>> Cells(1).fload(0)
            0.0
        """
        return lib.shmc_f_load(self._ptr(i))

    def fstore(self, i: int, x: float) -> None:
        """Write double cell ``i``.

        Example::

            >>> c = Cells(1)
            >>> c.fstore(0, -2.5)
            >>> c.fload(0)
            -2.5
        """
        lib.shmc_f_store(self._ptr(i), _check_float(x))

    def fadd(self, i: int, x: float) -> float:
        """Add ``x`` to double cell ``i`` atomically (a CAS loop); return the new value.

        Example::

            >>> Cells(1).fadd(0, 0.5)
            0.5
        """
        return lib.shmc_f_add(self._ptr(i), _check_float(x, "amount"))

    def fmin(self, i: int, x: float) -> float:
        """Lower double cell ``i`` to ``x`` if ``x`` is smaller; return the cell's value.

        A NaN ``x`` never replaces the value.

        Example::

            >>> c = Cells(1)
            >>> c.fmin(0, 3.0), c.fmin(0, -1.0)
            (0.0, -1.0)
        """
        return lib.shmc_f_min(self._ptr(i), _check_float(x))

    def fmax(self, i: int, x: float) -> float:
        """Raise double cell ``i`` to ``x`` if ``x`` is larger; return the cell's value.

        Example::

            >>> Cells(1).fmax(0, 3.0)
            3.0
        """
        return lib.shmc_f_max(self._ptr(i), _check_float(x))

    # -- bound steps ------------------------------------------------------------

    def _bind(self, fn: Any, i: int) -> Any:
        step = bound_step(fn, self._ptr(i), self._keep)
        self._bound.append(step)
        return step

    def bind_fadd(self, i: int) -> Callable[[float], float]:
        """A callable adding its argument to double cell ``i``; returns the new value.

        One cffi call and no Python frame per use (a C-level
        ``functools.partial``); the index is checked here, once, and the
        argument only by cffi (a ``str`` raises ``TypeError``). After
        :meth:`close` it raises :class:`ClosedError`.

        Example::

            >>> c = Cells(1)
            >>> inc = c.bind_fadd(0)
            >>> inc(0.5), inc(2)
            (0.5, 2.5)
        """
        return cast("Callable[[float], float]", self._bind(lib.shmc_f_add, i))

    def bind_fstore(self, i: int) -> Callable[[float], None]:
        """A callable writing its argument to double cell ``i``; see :meth:`bind_fadd`.

        Example::

            >>> c = Cells(1)
            >>> c.bind_fstore(0)(4.0)
            >>> c.fload(0)
            4.0
        """
        return cast("Callable[[float], None]", self._bind(lib.shmc_f_store, i))

    def bind_fload(self, i: int) -> Callable[[], float]:
        """A zero-argument callable reading double cell ``i``; see :meth:`bind_fadd`.

        Example::

            >>> Cells(1).bind_fload(0)()
            0.0
        """
        return cast("Callable[[], float]", self._bind(lib.shmc_f_load, i))

    # -- ranges and columns -------------------------------------------------------

    def load_many(self, i: int, n: int) -> list[int]:
        """Integer cells ``i .. i+n-1``, each read atomically (not all at once).

        Example::

            >>> Cells(4).load_many(1, 3)
            [0, 0, 0]
        """
        ptr = self._ptr(i, n)
        out = ffi.new("uint64_t[]", max(n, 1))
        lib.shmc_load_range(ptr, n, out)
        return cast("list[int]", ffi.unpack(out, n))

    def store_many(self, i: int, values: Sequence[int]) -> None:
        """Write ``values`` to integer cells ``i, i+1, ...``.

        Example::

            >>> c = Cells(4)
            >>> c.store_many(1, [7, 8])
            >>> c.load_many(0, 4)
            [0, 7, 8, 0]
        """
        vals = [self._u64(v, "value") for v in values]
        ptr = self._ptr(i, len(vals))
        buf = ffi.new("uint64_t[]", vals) if vals else ffi.new("uint64_t[]", 1)
        lib.shmc_copy_cells(ptr, buf, len(vals))

    def fload_many(self, i: int, n: int) -> list[float]:
        """Double cells ``i .. i+n-1``, each read atomically (not all at once).

        Example::

            >>> c = Cells(2)
            >>> c.fstore(1, 0.5)
            >>> c.fload_many(0, 2)
            [0.0, 0.5]
        """
        ptr = self._ptr(i, n)
        out = ffi.new("double[]", max(n, 1))
        lib.shmc_f_load_many(ptr, n, out)
        return cast("list[float]", ffi.unpack(out, n))

    def fstore_many(self, i: int, values: Sequence[float]) -> None:
        """Write ``values`` to double cells ``i, i+1, ...``.

        Example::

            >>> c = Cells(2)
            >>> c.fstore_many(0, [1.5, 2])
            >>> c.fload_many(0, 2)
            [1.5, 2.0]
        """
        vals = [_check_float(v) for v in values]
        ptr = self._ptr(i, len(vals))
        buf = ffi.new("double[]", vals) if vals else ffi.new("double[]", 1)
        lib.shmc_f_store_many(ptr, len(vals), buf)

    def copy(self, dst: int, src: int, n: int) -> None:
        """Copy cells ``src .. src+n-1`` to ``dst ..`` (cell by cell, ranges must not overlap).

        Example::

            >>> c = Cells(4)
            >>> c.store(0, 5)
            >>> c.copy(2, 0, 2)
            >>> c.load_many(0, 4)
            [5, 0, 5, 0]
        """
        p_dst = self._ptr(dst, n)
        p_src = self._ptr(src, n)
        if n and (dst < src + n and src < dst + n):
            raise CounterIndexError(f"cells {src}.. and {dst}.. overlap ({n} cells each)")
        lib.shmc_copy_cells(p_dst, p_src, n)

    def zero(self, i: int, n: int) -> None:
        """Write 0 to cells ``i .. i+n-1``.

        Example::

            >>> c = Cells(2)
            >>> c.store(1, 3)
            >>> c.zero(0, 2)
            >>> c.load(1)
            0
        """
        lib.shmc_zero_cells(self._ptr(i, n), n)

    def _rows(self, start: int, stride: int, rows: Iterable[int], n: int) -> tuple[Any, Any, int]:
        """Check a column operation; return (base pointer, row array, row count)."""
        s = stride if type(stride) is int else as_int(stride, "stride")
        if s < 1:
            raise CounterIndexError(f"stride must be >= 1, not {s}")
        picked = [r if type(r) is int else as_int(r, "row") for r in rows]
        base = self._ptr(start, 0)
        if picked:
            low, high = min(picked), max(picked)
            if low < 0:
                raise CounterIndexError(f"row {low} is negative")
            self._ptr(start + high * s, n)  # the last row's cells: raises if out of range
        arr = ffi.new("uint64_t[]", picked) if picked else ffi.new("uint64_t[]", 1)
        return base, arr, len(picked)

    def fsum_rows(self, start: int, stride: int, rows: Iterable[int], n: int) -> list[float]:
        """Column sums of doubles: ``out[k] = sum(fload(start + r*stride + k) for r in rows)``.

        One C pass over the rows, for ``k < n``.

        Example::

            >>> c = Cells(6)
            >>> c.fstore_many(0, [1.0, 2.0, 10.0, 20.0, 100.0, 200.0])
            >>> c.fsum_rows(0, 2, [0, 2], 2)
            [101.0, 202.0]
        """
        base, arr, nrows = self._rows(start, stride, rows, n)
        out = ffi.new("double[]", max(n, 1))
        lib.shmc_f_sum_rows(base, stride, arr, nrows, n, out)
        return cast("list[float]", ffi.unpack(out, n))

    def or_rows(self, start: int, stride: int, rows: Iterable[int], n: int) -> list[int]:
        """Column bitwise or of integers over rows, like :meth:`fsum_rows`.

        Example::

            >>> c = Cells(4)
            >>> c.store_many(0, [1, 4, 2, 8])
            >>> c.or_rows(0, 2, [0, 1], 2)
            [3, 12]
        """
        base, arr, nrows = self._rows(start, stride, rows, n)
        out = ffi.new("uint64_t[]", max(n, 1))
        lib.shmc_or_rows(base, stride, arr, nrows, n, out)
        return cast("list[int]", ffi.unpack(out, n))

    # -- bytes ------------------------------------------------------------------

    def read_bytes(self, i: int, nbytes: int) -> bytes:
        """``nbytes`` bytes from the start of cell ``i`` (a plain copy, not atomic).

        Example::

            >>> c = Cells(2)
            >>> c.write_bytes(0, b"hello")
            >>> c.read_bytes(0, 5)
            b'hello'
        """
        k = nbytes if type(nbytes) is int else as_int(nbytes, "byte count")
        if k < 0:
            raise CounterIndexError(f"byte count must be >= 0, not {k}")
        ptr = self._ptr(i, -(-k // 8))
        return cast("bytes", ffi.unpack(ffi.cast("char *", ptr), k))

    def write_bytes(self, i: int, data: bytes) -> None:
        """Copy ``data`` to the bytes from the start of cell ``i`` (plain, not atomic).

        Publish what it wrote with a later :meth:`store_sc` that readers load
        with :meth:`load_sc` before reading.

        Example::

            >>> Cells(1).write_bytes(0, b"12345678")
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        raw = bytes(data)
        ptr = self._ptr(i, -(-len(raw) // 8))
        ffi.memmove(ptr, raw, len(raw))

    @staticmethod
    def fence() -> None:
        """A sequentially consistent memory fence (for seqlocks over the bulk reads).

        Example::

            >>> Cells.fence()
        """
        lib.shmc_fence()

    # -- the rest -----------------------------------------------------------------

    def __len__(self) -> int:
        if self._seg is None:
            raise ClosedError("operation on closed Cells")
        return self._count

    @property
    def path(self) -> str | None:
        """The named segment's path, or None for anonymous memory.

        Example::

            >>> Cells(1).path is None
            True
        """
        return self._path

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._seg is None

    def close(self) -> None:
        """Close: later use (bound steps included) raises :class:`ClosedError`.

        The memory is unmapped when this object and every bound step are gone.

        Example::

            >>> c = Cells(1)
            >>> c.close()
            >>> c.closed
            True
        """
        self._seg = None
        self._base = CLOSED
        self._count = 0
        for step in self._bound:
            retire_step(step, "Cells")
        self._bound = []

    def unlink(self) -> None:
        """Delete the named segment's file (attached processes keep their mapping).

        Example::

            cells = Cells(64, path="/dev/shm/myapp.cells", tag="myapp")
            cells.unlink()
        """
        if self._path is None:
            raise SegmentError(errno.EINVAL, "anonymous Cells have no file to unlink")
        unlink(self._path)

    def __enter__(self) -> Cells:
        if self._seg is None:
            raise ClosedError("operation on closed Cells")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._seg is None:
            return "<Cells closed>"
        where = f" path={self._path!r}" if self._path else ""
        return f"<Cells count={self._count} tag={self.tag!r}{where}>"
