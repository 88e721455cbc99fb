"""Counters: an array of unsigned 64-bit counters, one per cache line."""

from __future__ import annotations

import errno
import functools
import logging
import operator
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

from ._errors import (
    CapacityError,
    ClosedError,
    CounterIndexError,
    CounterSizeError,
    CounterValueError,
    SegmentError,
)
from ._native import CACHE_LINE_SIZE, MAX, lib, new_u64
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

__all__ = [
    "CLOSED",
    "ONE",
    "Counters",
    "amount_error",
    "as_int",
    "bound_step",
    "check_size",
    "retire_step",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

_MAX_SIZE = MAX_BYTES // CACHE_LINE_SIZE
# Counters below this index get a prebuilt pointer each, for the one-argument
# incr/decr-by-1 path (a cffi call with one argument skips the argument tuple).
_FAST_LIMIT = 4096
# The small int 1 is a singleton in CPython: `n is ONE` is the cheapest test
# for "increment by one" and refuses 1.0 and True (they take the checked path).
ONE = 1

_inc1 = lib.shmc_inc1
_dec1 = lib.shmc_dec1
_load = lib.shmc_load
_store = lib.shmc_store
_add = lib.shmc_add
_sub = lib.shmc_sub
_incr_at = lib.shmc_incr_at
_decr_at = lib.shmc_decr_at
_load_at = lib.shmc_load_at
_store_at = lib.shmc_store_at


class _Closed:
    """Stands where a pointer was; cffi refuses it, so a call fails cleanly."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<closed>"


CLOSED: Any = _Closed()


def _refuse_closed(owner: str, *args: object) -> int:
    """What a bound step becomes once its counters are closed (whatever it is called with)."""
    raise ClosedError(f"operation on closed {owner}")


def bound_step(fn: Any, ptr: Any, keep: object) -> functools.partial[int]:
    """A zero-argument callable running ``fn(ptr)``: one C call, no Python frame.

    ``functools.partial`` is implemented in C, so calling it goes straight
    into cffi's one-argument wrapper.  It holds ``keep`` (the mapping) as an
    attribute, so the memory outlives every copy of it; :func:`retire_step`
    rewrites it in place when the counters are closed.
    """
    step = functools.partial(fn, ptr)
    step.keep = keep  # type: ignore[attr-defined]
    return step


def retire_step(step: functools.partial[int], owner: str) -> None:
    """Make ``step`` (and every reference to it) raise :class:`ClosedError`.

    ``partial.__setstate__`` replaces the function and arguments of the very
    object callers hold, and drops its hold on the mapping.
    """
    step.__setstate__((_refuse_closed, (owner,), None, None))  # type: ignore[attr-defined]


def check_size(size: object, what: str = "counters") -> int:
    """Return ``size`` if it is an int in ``[1, MAX_BYTES / CACHE_LINE_SIZE]``."""
    if isinstance(size, bool) or not isinstance(size, int):
        raise CounterSizeError(f"size must be an int, not {type(size).__name__} {size!r}")
    if not 1 <= size <= _MAX_SIZE:
        raise CounterSizeError(
            f"size {size} out of range: {what} need 1 <= size <= {_MAX_SIZE}"
            f" ({MAX_BYTES} bytes of memory in {CACHE_LINE_SIZE}-byte slots)"
        )
    return size


def as_int(value: object, what: str) -> int:
    """``value`` as an int: ints and ``__index__`` objects (numpy integers), never bool.

    Raises ``TypeError("<what> must be an int, not <type>")`` otherwise.
    """
    if not isinstance(value, bool):
        try:
            return operator.index(value)  # type: ignore[arg-type]
        except TypeError:
            pass
    raise TypeError(f"{what} must be an int, not {type(value).__name__}")


def amount_error(name: str, value: object, low: int = 0, high: int = MAX) -> Exception:
    """The error for a value cffi refused (or that is out of range)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return TypeError(f"{name} must be an int, not {type(value).__name__}")
    return CounterValueError(f"{name} {value} out of range: allowed {low} <= {name} <= {high}")


class Counters:
    """At least ``size`` unsigned 64-bit counters in shared memory.

    Each counter sits on its own cache line. Without ``path`` the memory is
    anonymous and shared with children forked after construction; with
    ``path`` it is a named segment file (e.g. under ``/dev/shm``) that any
    process can attach to. Arithmetic is modulo ``2**64``.

    On an existing segment, ``size`` must fit its capacity; the count its
    header records (what :meth:`attach` gets) is raised to ``size`` if
    lower, never lowered. ``size`` is at most this machine's memory in
    ``CACHE_LINE_SIZE`` slots (:class:`CounterSizeError`); memory the
    system will not map raises :class:`SegmentError` naming the bytes.

    Example::

        >>> c = Counters(4)
        >>> c.incr(0)
        1
        >>> c.decr(1)
        18446744073709551615
        >>> c[2] = 7
        >>> c.to_list()
        [1, 18446744073709551615, 7, 0]
        >>> c.close()
    """

    __slots__ = (
        "__weakref__",
        "_bound",
        "_capacity",
        "_keep",
        "_path",
        "_ptrs",
        "_seg",
        "_size",
        "_slots",
    )

    def __init__(
        self,
        size: int | None = None,
        *,
        path: PathArg | None = None,
        create: bool = True,
        zero: bool = False,
        mode: int = 0o600,
    ) -> None:
        self._open(size, path, create, zero, mode)

    def _open(
        self,
        size: int | None,
        path: PathArg | None,
        create: bool,
        zero: bool,
        mode: int,
        names: tuple[str, ...] = (),
        owner: str = "",
    ) -> None:
        """Map the counters; ``names`` are the fields of ``owner``, a counter struct.

        A struct's names go in a new file's header and must equal an
        existing file's; plain counters (no names) attach to either.
        """
        if path is None:
            n = check_size(size)
            seg = Segment.anonymous(n * CACHE_LINE_SIZE, f"{n} counters")
            capacity = page_round(n * CACHE_LINE_SIZE) // CACHE_LINE_SIZE
        else:
            asked = None if size is None else check_size(size)
            extra = encode_names(names)

            def want() -> Layout:
                n = check_size(size)
                header = Layout(Kind.COUNTERS, n, 0, len(names), extra).header_size
                capacity = (page_round(header + n * CACHE_LINE_SIZE) - header) // CACHE_LINE_SIZE
                return Layout(Kind.COUNTERS, n, capacity, len(names), extra)

            seg = Segment.named(
                path,
                kind=Kind.COUNTERS,
                want=want if create else None,
                mode=mode,
                what=f"{asked} counters",
            )
            theirs = seg.field_names()
            if names and theirs != names:
                if not theirs:
                    message = (
                        "segment holds plain counters (no field names)"
                        f", not {owner}'s fields {format_names(names)}"
                    )
                else:
                    message = (
                        f"segment holds fields {format_names(theirs)}"
                        f", not {owner}'s fields {format_names(names)}"
                    )
                raise SegmentError(errno.EINVAL, message, seg.path)
            capacity = seg.header().capacity
            if asked is None:
                n = seg.header().count
            elif asked > capacity:
                raise SegmentError(
                    errno.EINVAL,
                    f"segment holds {capacity} counters at most, {asked} asked",
                    seg.path,
                )
            else:
                n = asked
                seg.grow_count(n)
        self._seg: Segment | None = seg
        # Held until this object dies, even after close(): a call in flight in
        # another thread, or a pointer handed out by cell(), must never find
        # the memory unmapped.
        self._keep = seg
        self._path = seg.path
        self._capacity = capacity
        self._size = n
        self._slots: Any = seg.chars(0)
        self._ptrs = self._prebuilt(seg, n)
        self._bound: list[Any] = []
        if zero and path is not None:
            lib.shmc_store_many(self._slots, capacity, new_u64(capacity))

    @staticmethod
    def _prebuilt(seg: Segment, size: int) -> list[Any]:
        """A pointer to each of the first ``min(size, _FAST_LIMIT)`` counters."""
        return [seg.cells(k * CACHE_LINE_SIZE) for k in range(min(size, _FAST_LIMIT))]

    @classmethod
    def attach(cls, path: PathArg) -> Counters:
        """Attach to an existing named segment, with the size in its header.

        Any counters segment will do, a counter struct's included (its
        fields are counters 0, 1, ... in field order).

        Example::

            c = Counters.attach("/dev/shm/myapp.counters")
        """
        return cls(path=path, create=False)

    # -- errors and checks (off the hot path) -------------------------------

    def _closed_error(self) -> ClosedError:
        return ClosedError("operation on closed Counters")

    def _index(self, i: object) -> int:
        """``i`` as a checked counter index, or the error saying what is wrong."""
        if self._seg is None:
            raise self._closed_error()
        k = i if type(i) is int else as_int(i, "counter index")
        if not 0 <= k < self._size:
            raise CounterIndexError(
                f"index {k} out of range for {self._size} counters"
                f" (allowed 0 <= index < {self._size})"
            )
        return k

    def _refused(self, name: str, value: object) -> Exception:
        """The error for a C call cffi refused: closed meanwhile, or out of range."""
        if self._seg is None:
            return self._closed_error()
        return amount_error(name, value)

    # -- the hot path -------------------------------------------------------
    #
    # self._ptrs holds a prebuilt pointer for each of the first
    # min(len, _FAST_LIMIT) counters, and nothing else: indexing it is the
    # upper bound check (IndexError), `i >= 0` the lower one, and the two
    # identity tests keep True and False (ints to a list) off it. Whatever
    # else fails there (None, str, float: TypeError) takes the checked path,
    # which accepts objects with __index__ (numpy integers) and says what is
    # wrong with the rest. try costs nothing in CPython >= 3.11 unless raised.
    # The checked path is written out in each method: a helper method call
    # would cost incr(i, n) a third more.

    def incr(self, i: int, n: int = 1) -> int:
        """Add ``n`` to counter ``i`` atomically; return the new value.

        ``i`` and ``n`` are ints or objects with ``__index__`` (such as numpy
        integers); bool, float, str and None raise :class:`TypeError`.

        Example::

            >>> c = Counters(2)
            >>> c.incr(0), c.incr(0, 5)
            (1, 6)
        """
        try:
            if i >= 0 and i is not True and i is not False:
                if n is ONE:
                    return _inc1(self._ptrs[i])
                if type(n) is int:
                    return _add(self._ptrs[i], n)
        except (IndexError, TypeError):
            pass
        except OverflowError:
            raise amount_error("amount", n) from None
        if type(i) is not int or not 0 <= i < self._size:
            i = self._index(i)
        if type(n) is not int:
            n = as_int(n, "amount")
        try:
            return _incr_at(self._slots, i, n)
        except (OverflowError, TypeError):
            raise self._refused("amount", n) from None

    def decr(self, i: int, n: int = 1) -> int:
        """Subtract ``n`` from counter ``i`` atomically; return the new value.

        Example::

            >>> Counters(1).decr(0)
            18446744073709551615
        """
        try:
            if i >= 0 and i is not True and i is not False:
                if n is ONE:
                    return _dec1(self._ptrs[i])
                if type(n) is int:
                    return _sub(self._ptrs[i], n)
        except (IndexError, TypeError):
            pass
        except OverflowError:
            raise amount_error("amount", n) from None
        if type(i) is not int or not 0 <= i < self._size:
            i = self._index(i)
        if type(n) is not int:
            n = as_int(n, "amount")
        try:
            return _decr_at(self._slots, i, n)
        except (OverflowError, TypeError):
            raise self._refused("amount", n) from None

    def __getitem__(self, i: int) -> int:
        """Read counter ``i``: ``c[i]``.

        Example::

            >>> Counters(2)[1]
            0
        """
        try:
            if i >= 0 and i is not True and i is not False:
                return _load(self._ptrs[i])
        except (IndexError, TypeError):
            pass
        k = self._index(i)
        try:
            return _load_at(self._slots, k)
        except TypeError:  # closed by another thread meanwhile
            raise self._closed_error() from None

    def __setitem__(self, i: int, value: int) -> None:
        """Write counter ``i``: ``c[i] = value``, an int in ``[0, MAX]``.

        Example::

            >>> c = Counters(1)
            >>> c[0] = 7
            >>> c[0]
            7
        """
        try:
            if i >= 0 and i is not True and i is not False and type(value) is int:
                _store(self._ptrs[i], value)
                return
        except (IndexError, TypeError):
            pass
        except OverflowError:
            raise amount_error("value", value) from None
        i = self._index(i)
        if type(value) is not int:
            value = as_int(value, "value")
        try:
            _store_at(self._slots, i, value)
        except (OverflowError, TypeError):
            raise self._refused("value", value) from None

    def bind_incr(self, i: int) -> Callable[[], int]:
        """A zero-argument callable adding 1 to counter ``i``; returns the new value.

        One cffi call and no Python frame per use (a C-level
        ``functools.partial``), for hot paths that always step by one.  The
        index is checked here, once.  After :meth:`close` it raises
        :class:`ClosedError`.

        Example::

            >>> c = Counters(2)
            >>> hit = c.bind_incr(1)
            >>> hit(), hit()
            (1, 2)
            >>> c.close()
        """
        return self._bind_step(i, _inc1)

    def bind_decr(self, i: int) -> Callable[[], int]:
        """A zero-argument callable subtracting 1 from counter ``i``; see :meth:`bind_incr`.

        Example::

            >>> Counters(1).bind_decr(0)()
            18446744073709551615
        """
        return self._bind_step(i, _dec1)

    def _bind_step(self, i: int, fn: Any) -> Callable[[], int]:
        ptr, keep = self._cell_pointer(i)
        step = bound_step(fn, ptr, keep)
        self._bound.append(step)
        return step

    # -- the rest -------------------------------------------------------------

    def _check_open(self) -> Segment:
        if self._seg is None:
            raise self._closed_error()
        return self._seg

    def __len__(self) -> int:
        self._check_open()
        return self._size

    @property
    def capacity(self) -> int:
        """How many counters fit in the segment (``resize`` up to this).

        Example::

            >>> c = Counters(3)
            >>> len(c), c.capacity  # whole pages of 64-byte slots
            (3, 64)
        """
        self._check_open()
        return self._capacity

    @property
    def path(self) -> str | None:
        """The named segment's path, or None for anonymous memory.

        Example::

            >>> Counters(1).path is None
            True
        """
        return self._path

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._seg is None

    def resize(self, size: int) -> None:
        """Change the number of counters within capacity; values are kept.

        Example::

            >>> c = Counters(1)
            >>> c.resize(8)
            >>> len(c)
            8
        """
        seg = self._check_open()
        check_size(size)
        if size > self._capacity:
            raise CapacityError(f"cannot resize to {size} counters: capacity is {self._capacity}")
        self._size = size
        self._ptrs = self._prebuilt(seg, size)
        if seg.path is not None:
            seg.set_count(size)

    def to_list(self) -> list[int]:
        """All values, in index order (each read atomically, not all at once).

        Example::

            >>> c = Counters(3)
            >>> c[2] = 5
            >>> c.to_list(), list(c)
            ([0, 0, 5], [0, 0, 5])
        """
        self._check_open()
        out = new_u64(self._size)
        lib.shmc_load_many(self._slots, self._size, out)
        return list(out)

    def __iter__(self) -> Iterator[int]:
        return iter(self.to_list())

    def copy(self) -> Counters:
        """A fresh anonymous segment holding the same values.

        Example::

            >>> c = Counters(2)
            >>> c.incr(1)
            1
            >>> c.copy().to_list()
            [0, 1]
        """
        values = self.to_list()
        other = Counters(self._size)
        buf = new_u64(self._size)
        buf[0 : self._size] = values
        lib.shmc_store_many(other._slots, self._size, buf)
        return other

    def _cell_pointer(self, i: int) -> tuple[Any, Segment]:
        """A raw ``uint64_t *`` on counter ``i`` and the segment to keep alive with it."""
        k = self._index(i)
        seg = self._check_open()
        return seg.cells(k * CACHE_LINE_SIZE), seg

    def close(self) -> None:
        """Close: later use raises :class:`ClosedError`.

        The memory is unmapped when the object (and anything bound to it, such
        as a struct's ``incr_`` functions) is garbage-collected, so no call can
        ever touch unmapped memory. Closing a named segment never deletes its
        file: see :meth:`unlink`.

        Example::

            >>> c = Counters(1)
            >>> c.close()
            >>> c.closed
            True
        """
        self._seg = None
        self._slots = CLOSED
        self._size = 0
        self._ptrs = []
        for step in self._bound:
            retire_step(step, "Counters")
        self._bound = []

    def unlink(self) -> None:
        """Delete the named segment's file (attached processes keep their mapping).

        Example::

            c = Counters(4, path="/dev/shm/myapp.counters")
            c.unlink()  # the file is gone; c still works until closed
        """
        if self._path is None:
            raise SegmentError(errno.EINVAL, "anonymous Counters have no file to unlink")
        unlink(self._path)

    def __enter__(self) -> Counters:
        self._check_open()
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
            return "<Counters closed>"
        where = f" path={self._path!r}" if self._path else ""
        return f"<Counters size={self._size} capacity={self._capacity}{where}>"
