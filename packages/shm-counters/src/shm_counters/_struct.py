"""Named counters: ``counter_struct`` classes and the machinery rows share."""

from __future__ import annotations

import functools
import keyword
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

from ._busy import BusyTimer
from ._counters import CLOSED, ONE, Counters, amount_error, as_int, bound_step, retire_step
from ._errors import ClosedError, CounterIndexError, FieldNameError
from ._native import lib
from ._segment import PathArg

__all__ = ["CounterStruct", "FieldBank", "check_fields", "counter_struct"]

_add = lib.shmc_add
_sub = lib.shmc_sub
_inc1 = lib.shmc_inc1
_dec1 = lib.shmc_dec1
_load = lib.shmc_load
_store = lib.shmc_store

# Names a field may not take: they would hide a method or attribute.
_RESERVED = frozenset(
    {"to_dict", "close", "closed", "fields", "path", "counters", "index", "pid"}
    | {"release", "bind_incr", "bind_decr", "bind_add", "bind_store", "bind_busy_timer"}
)


def check_fields(fields: object) -> tuple[str, ...]:
    """Validate field names like :func:`collections.namedtuple` (stricter).

    ``fields`` is an iterable of names or one string of names separated by
    spaces or commas. Names must be identifiers, not keywords, not start with
    an underscore, be unique, and not hide a method.
    """
    if isinstance(fields, str):
        fields = fields.replace(",", " ").split()
    if not isinstance(fields, Iterable):
        raise FieldNameError(f"fields must be an iterable of names, not {type(fields).__name__}")
    names = tuple(fields)
    if not names:
        raise FieldNameError("fields must name at least one counter, got none")
    seen: set[str] = set()
    for name in names:
        if not isinstance(name, str) or not name.isidentifier():
            raise FieldNameError(f"field name {name!r} is not a Python identifier")
        if keyword.iskeyword(name) or keyword.issoftkeyword(name):
            raise FieldNameError(f"field name {name!r} is a Python keyword")
        if name.startswith("_"):
            raise FieldNameError(f"field name {name!r} starts with an underscore (reserved)")
        if name in _RESERVED:
            raise FieldNameError(f"field name {name!r} would hide a method")
        if name in seen:
            raise FieldNameError(f"duplicate field name {name!r}")
        seen.add(name)
    for name in names:
        for prefix in ("incr_", "decr_"):
            if name.startswith(prefix) and name[len(prefix) :] in seen:
                raise FieldNameError(
                    f"field name {name!r} clashes with the method of field {name[len(prefix) :]!r}"
                )
    return names


def _change_error(cell: list[Any], n: object, owner: str, keep: object) -> Exception:
    """The error for a refused incr/decr (``keep`` is only carried along)."""
    if cell[0] is CLOSED:
        return ClosedError(f"operation on closed {owner}")
    return amount_error("amount", n)


def _adder(fn: Any, one: Any, cell: list[Any], owner: str, keep: object) -> Any:
    """Bind ``fn`` (add or sub) to one counter: one cffi call per use.

    ``cell[0]`` is the counter's raw pointer (CLOSED once closed); ``keep``
    holds the mapping for as long as this function exists.
    """

    def change(n: int = 1) -> int:
        try:
            if n is ONE:  # one-argument cffi calls skip the argument tuple
                return one(cell[0])  # type: ignore[no-any-return]
            # cffi would take True as 1 and truncate Decimal('1.5'): refuse them
            return fn(cell[0], n if type(n) is int else as_int(n, "amount"))  # type: ignore[no-any-return]
        except (OverflowError, TypeError):
            raise _change_error(cell, n, owner, keep) from None

    return change


def _field_property(k: int, name: str) -> property:
    def get(self: FieldBank) -> int:
        try:
            return _load(self._cells[k][0])
        except TypeError:
            raise self._closed_error() from None

    def put(self: FieldBank, value: int) -> None:
        try:
            _store(self._cells[k][0], value if type(value) is int else as_int(value, "value"))
        except (OverflowError, TypeError):
            raise self._fail(value, "value") from None

    return property(get, put, doc=f"The {name!r} counter.")


class FieldBank:
    """Named counters backed by one cell each; base of structs and rows."""

    __slots__ = ("_bound", "_cells", "_keep")
    fields: ClassVar[tuple[str, ...]] = ()

    if TYPE_CHECKING:  # fields and incr_/decr_ methods are made at run time

        def __getattr__(self, name: str) -> Any: ...
        def __setattr__(self, name: str, value: Any) -> None: ...

    @classmethod
    def _namespace(cls, fields: tuple[str, ...]) -> dict[str, Any]:
        """The class body for a subclass with these fields."""
        ns: dict[str, Any] = {
            "__slots__": tuple(f"{p}_{f}" for f in fields for p in ("incr", "decr")),
            "fields": fields,
        }
        for k, name in enumerate(fields):
            ns[name] = _field_property(k, name)
        return ns

    def _bind(self, cells: list[Any], keep: object) -> None:
        """Point every field at its raw pointer and make the incr_/decr_ callables.

        ``keep`` owns the mapping the pointers point into; it is held until
        this object and every function it handed out are gone.
        """
        self._keep = keep
        self._cells = [[c] for c in cells]
        self._bound: list[functools.partial[int]] = []
        owner = type(self).__name__
        for name, cell in zip(self.fields, self._cells, strict=True):
            for prefix, fn, one in (("incr", _add, _inc1), ("decr", _sub, _dec1)):
                object.__setattr__(self, f"{prefix}_{name}", _adder(fn, one, cell, owner, keep))

    def _unbind(self) -> None:
        for cell in self._cells:
            cell[0] = CLOSED
        owner = type(self).__name__
        for step in self._bound:
            retire_step(step, owner)
        self._bound.clear()

    def _field_index(self, field: object) -> int:
        if isinstance(field, str) and field in self.fields:
            return self.fields.index(field)
        raise FieldNameError(
            f"no field {field!r} in {type(self).__name__}: fields are {', '.join(self.fields)}"
        )

    def bind_incr(self, field: str) -> Callable[[], int]:
        """A zero-argument callable adding 1 to ``field``; returns the new value.

        For per-request and per-event hot paths: the callable is
        ``functools.partial`` around the one-argument C function, so a call
        is one cffi call with no Python frame in between (``incr_<field>()``
        is a small Python function, because it takes an optional amount).
        After :meth:`close` (or ``release()`` of a scoreboard row) it raises
        :class:`ClosedError`, like every other operation.

        Example::

            >>> Stats = counter_struct("Stats", ["calling", "writing"])
            >>> s = Stats()
            >>> enter = s.bind_incr("calling")
            >>> enter(), enter()
            (1, 2)
            >>> s.close()
        """
        return self._bind_step(field, _inc1)

    def bind_decr(self, field: str) -> Callable[[], int]:
        """A zero-argument callable subtracting 1 from ``field``; see :meth:`bind_incr`.

        Example::

            >>> Stats = counter_struct("Stats", ["calling"])
            >>> s = Stats()
            >>> s.bind_decr("calling")()
            18446744073709551615
            >>> s.close()
        """
        return self._bind_step(field, _dec1)

    def bind_add(self, field: str) -> Callable[[int], int]:
        """A one-argument callable adding ``n`` to ``field``; returns the new value.

        Like :meth:`bind_incr`, a C-level ``functools.partial`` (no Python
        frame) for hot paths that add amounts: ``add(n)`` is one two-argument
        cffi call. It does no checking of its own: an ``n`` that is not an
        int in ``0 <= n < 2**64`` raises cffi's ``OverflowError`` or
        ``TypeError`` (``incr_<field>(n)`` gives the package's errors).

        Example::

            >>> Stats = counter_struct("Stats", ["busy_ns"])
            >>> s = Stats()
            >>> add = s.bind_add("busy_ns")
            >>> add(1500), add(500)
            (1500, 2000)
            >>> s.close()
        """
        return self._bind_step(field, _add)  # type: ignore[return-value]

    def bind_store(self, field: str) -> Callable[[int], None]:
        """A one-argument callable writing ``value`` to ``field``; see :meth:`bind_add`.

        Example::

            >>> Stats = counter_struct("Stats", ["since"])
            >>> s = Stats()
            >>> s.bind_store("since")(42)
            >>> s.since
            42
            >>> s.close()
        """
        return self._bind_step(field, _store)  # type: ignore[return-value]

    def bind_busy_timer(
        self,
        entered: str,
        done: str,
        busy_ns: str,
        since_ns: str,
        *,
        clock: Callable[[], int] | None = None,
    ) -> BusyTimer:
        """A :class:`~shm_counters.BusyTimer` writing these four fields.

        Each step is one C call that reads the clock and updates the fields
        in the order readers rely on (see :class:`~shm_counters.BusyTimer`);
        closing this struct (or releasing the row) closes the timer too.

        Example::

            >>> Row = counter_struct("Row", ["entered", "done", "busy_ns", "since_ns"])
            >>> row = Row()
            >>> timer = row.bind_busy_timer("entered", "done", "busy_ns", "since_ns")
            >>> begun = timer.start()
            >>> ended = timer.finish()
            >>> row.done, row.busy_ns == ended - begun
            (1, True)
            >>> row.close()
        """
        names = (entered, done, busy_ns, since_ns)
        ks = [self._field_index(name) for name in names]
        if len(set(ks)) != 4:
            raise FieldNameError(
                f"a busy timer needs four different fields, got {', '.join(map(repr, names))}"
            )
        ptrs = [self._cells[k][0] for k in ks]
        if ptrs[0] is CLOSED:
            raise self._closed_error()
        return BusyTimer._over(ptrs, self._keep, type(self).__name__, self._bound, clock)

    def _bind_step(self, field: str, fn: Any) -> Callable[[], int]:
        k = self._field_index(field)
        ptr = self._cells[k][0]
        if ptr is CLOSED:
            raise self._closed_error()
        step = bound_step(fn, ptr, self._keep)
        self._bound.append(step)
        return step

    def _closed_error(self) -> ClosedError:
        return ClosedError(f"operation on closed {type(self).__name__}")

    def _fail(self, value: object, what: str = "amount") -> Exception:
        if self._cells[0][0] is CLOSED:
            return self._closed_error()
        return amount_error(what, value)

    @property
    def closed(self) -> bool:
        """True once closed (or released)."""
        return self._cells[0][0] is CLOSED

    def __getitem__(self, k: int) -> int:
        """Read field ``k`` (in field order): ``s[0]``."""
        n = len(self.fields)
        k = as_int(k, "field index")
        if not 0 <= k < n:
            raise CounterIndexError(
                f"index {k} out of range for {n} fields (allowed 0 <= index < {n})"
            )
        try:
            return _load(self._cells[k][0])
        except TypeError:
            raise self._closed_error() from None

    def __len__(self) -> int:
        return len(self.fields)

    def __iter__(self) -> Iterator[int]:
        return iter(self.to_dict().values())

    def to_dict(self) -> dict[str, int]:
        """The values by field name (each read atomically, not all at once).

        Example::

            >>> s = counter_struct("Stats", ["calling", "writing"])()
            >>> s.incr_writing()
            1
            >>> s.to_dict()
            {'calling': 0, 'writing': 1}
        """
        try:
            return {f: _load(c[0]) for f, c in zip(self.fields, self._cells, strict=True)}
        except TypeError:
            raise self._closed_error() from None

    def __repr__(self) -> str:
        if self.closed:
            return f"<{type(self).__name__} closed>"
        inner = ", ".join(f"{k}={v}" for k, v in self.to_dict().items())
        return f"{type(self).__name__}({inner})"


class CounterStruct(FieldBank):
    """Base class of the classes :func:`counter_struct` makes.

    ``Cls(path=None, create=True, zero=False, mode=0o600)``: a fresh
    anonymous segment, or the named one at ``path`` (created or attached
    like :class:`Counters`). A named segment records the field names, and a
    struct refuses a segment whose names differ.

    Example::

        >>> Stats = counter_struct("Stats", ["calling", "writing"])
        >>> isinstance(Stats(), CounterStruct)
        True
        >>> s = Stats(path="/dev/shm/myapp.stats")  # doctest: +SKIP
    """

    __slots__ = ("_counters",)

    def __init__(
        self,
        *,
        path: PathArg | None = None,
        create: bool = True,
        zero: bool = False,
        mode: int = 0o600,
    ) -> None:
        if not self.fields:
            raise FieldNameError("use counter_struct() to make a class with fields")
        # A named segment records the field names: another struct (or an
        # older file without names) is refused instead of read field by field.
        counters = Counters.__new__(Counters)
        counters._open(len(self.fields), path, create, zero, mode, self.fields, type(self).__name__)
        self._counters = counters
        cells = [self._counters._cell_pointer(k) for k in range(len(self.fields))]
        self._bind([c for c, _ in cells], cells[0][1])

    @property
    def counters(self) -> Counters:
        """The underlying :class:`Counters` (field k is index k).

        Example::

            >>> s = counter_struct("Stats", ["calling", "writing"])()
            >>> s.writing = 2
            >>> s.counters.to_list()
            [0, 2]
        """
        return self._counters

    @property
    def path(self) -> str | None:
        """The named segment's path, or None for anonymous memory."""
        return self._counters.path

    def close(self) -> None:
        """Release the mapping; later use raises :class:`ClosedError`.

        Example::

            >>> s = counter_struct("Stats", ["calling"])()
            >>> s.close()
            >>> s.closed
            True
        """
        self._unbind()
        self._counters.close()

    def __enter__(self) -> CounterStruct:
        if self.closed:
            raise self._closed_error()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def counter_struct(name: str, fields: Iterable[str] | str) -> type[CounterStruct]:
    """Make a class of named counters, like :func:`collections.namedtuple`.

    Each instance owns a fresh segment (anonymous, or named with ``path=``).
    Field ``f`` is read with ``s.f``, written with ``s.f = v``, changed
    atomically with ``s.incr_f(n=1)`` / ``s.decr_f(n=1)`` (both return the
    new value); ``s[k]`` reads field ``k``; ``s.to_dict()`` reads them all.

    Example::

        >>> Stats = counter_struct("Stats", ["calling", "writing"])
        >>> s = Stats()
        >>> s.incr_calling()
        1
        >>> s.writing = 3
        >>> s.to_dict()
        {'calling': 1, 'writing': 3}
        >>> s.close()
    """
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise FieldNameError(f"struct name {name!r} is not a Python identifier")
    names = check_fields(fields)
    cls = type(name, (CounterStruct,), CounterStruct._namespace(names))
    cls.__doc__ = f"{name}({', '.join(names)}): counters in shared memory."
    return cls
