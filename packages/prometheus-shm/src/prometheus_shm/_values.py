"""prometheus_client's value class, and the shared copies of Info and Enum values.

``install()`` makes :class:`SharedValue` ``prometheus_client.values.ValueClass``.
The per-increment path is one C call: a :class:`SharedValue`'s ``inc``,
``set`` and ``get`` are instance attributes holding shm-counters bound steps
(C-level ``functools.partial`` objects over this process's cells), so
``Counter.inc()``'s own ``self._value.inc(amount)`` goes straight into the C
that adds the double by compare-and-swap. No lock, no PID check, no Python
frame of ours. After a fork they point at *first-touch* methods (``_runtime``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ._runtime import active, describe
from ._table import Entry, cells_for, encode_key, merge_of

if TYPE_CHECKING:
    from ._runtime import Runtime

__all__ = ["EnumHandle", "InfoHandle", "SharedValue"]


def _set_recent(
    store_value: Any, store_time: Any, value: float, timestamp: float | None = None
) -> None:
    store_value(value)
    store_time(timestamp or 0.0)


class SharedValue:
    """prometheus_client's value class, kept in this process's row of the segment.

    ``install()`` makes it ``prometheus_client.values.ValueClass``; users
    never create one themselves.

    Example::

        >>> import prometheus_shm
        >>> from prometheus_client import CollectorRegistry, Counter
        >>> _ = prometheus_shm.install("anonymous")
        >>> c = Counter("example_total", "Example.", registry=CollectorRegistry())
        >>> c.inc(0.5)
        >>> type(c._value).__name__, c._value.get()
        ('SharedValue', 0.5)
        >>> prometheus_shm.uninstall()
    """

    _multiprocess = True
    __slots__ = ("__weakref__", "_group", "_recent", "entry", "get", "inc", "set")
    entry: Entry
    inc: Callable[[float], object]
    set: Callable[..., object]
    get: Callable[[], float]

    def __init__(
        self,
        typ: str,
        metric_name: str,
        name: str,
        labelnames: Sequence[str],
        labelvalues: Sequence[str],
        help_text: str,
        multiprocess_mode: str = "",
        **kwargs: object,
    ) -> None:
        rt = active()
        mode = multiprocess_mode if typ == "gauge" else ""
        merge = merge_of(typ, mode)
        self._recent = cells_for(merge) == 2
        self._group: tuple[str, str, tuple[str, ...]] | None = None
        if typ == "histogram":
            base = tuple(labelvalues[:-1]) if name.endswith("_bucket") else tuple(labelvalues)
            self._group = (typ, metric_name, base)
        elif typ == "summary":
            self._group = (typ, metric_name, tuple(labelvalues))
        key = encode_key(typ, mode, metric_name, name, labelnames, labelvalues, help_text)
        rt.register(self, key, cells_for(merge), describe(name, labelnames, labelvalues))

    def group_key(self) -> tuple[str, str, tuple[str, ...]] | None:
        return self._group

    def cells(self) -> range:
        return range(self.entry.first_cell, self.entry.first_cell + self.entry.ncells)

    def bind(self, rt: Runtime) -> None:
        """Point ``inc``/``set``/``get`` at this value's cells in ``rt``'s row."""
        cells = rt.store.cells
        at = rt.value_cell(self.entry)
        self.inc = cells.bind_fadd(at)
        self.get = cells.bind_fload(at)
        if self._recent:
            self.set = functools.partial(
                _set_recent, cells.bind_fstore(at), cells.bind_fstore(at + 1)
            )
        else:
            self.set = cells.bind_fstore(at)

    def unbind(self) -> None:
        """After fork: the next use claims the child's row first."""
        self.inc = self._first_inc
        self.set = self._first_set
        self.get = self._first_get

    def _first_inc(self, amount: float) -> Any:
        active().touch()
        return self.inc(amount)

    def _first_set(self, value: float, timestamp: float | None = None) -> Any:
        active().touch()
        if timestamp is None:
            return self.set(value)
        return self.set(value, timestamp)

    def _first_get(self) -> Any:
        active().touch()
        return self.get()

    def set_exemplar(self, exemplar: object) -> None:
        """Exemplars are not kept (as in prometheus_client's multiprocess mode)."""

    def get_exemplar(self) -> None:
        """Always None: exemplars are not kept."""

    def __repr__(self) -> str:
        e = self.entry
        return f"<SharedValue {describe(e.name, e.labelnames, e.labelvalues)} cell={e.first_cell}>"


class _RecentHandle:
    """The shared copy of an Info's or Enum's value: entries with (value, time) cells."""

    __slots__ = ("__weakref__", "_entries", "_help", "_labelnames", "_labelvalues", "_name", "_typ")

    def __init__(
        self, typ: str, name: str, labelnames: Sequence[str], labelvalues: Sequence[str], doc: str
    ) -> None:
        self._typ = typ
        self._name = name
        self._labelnames = tuple(labelnames)
        self._labelvalues = tuple(str(v) for v in labelvalues)
        self._help = doc
        self._entries: list[Entry] = []

    def group_key(self) -> None:
        return None

    def cells(self) -> list[int]:
        return [c for e in self._entries for c in range(e.first_cell, e.first_cell + 2)]

    def bind(self, rt: Runtime) -> None:
        """Nothing to rebind: each write finds this process's row."""

    def unbind(self) -> None:
        """Nothing to unbind: each write finds this process's row."""

    def _entry(self, extra: object, sample: str) -> Entry:
        rt = active()
        key = encode_key(
            self._typ,
            "",
            self._name,
            sample,
            self._labelnames,
            self._labelvalues,
            self._help,
            extra,
        )
        # register() binds .entry; keep every entry this handle made
        entry = rt.register(self, key, 2, describe(sample, self._labelnames, self._labelvalues))
        if entry not in self._entries:
            self._entries.append(entry)
        return entry

    @property
    def entry(self) -> Entry:
        return self._entries[-1]

    @entry.setter
    def entry(self, value: Entry) -> None:
        if value not in self._entries:
            self._entries.append(value)

    def write(self, entry: Entry, value: float) -> None:
        rt = active()
        cells = rt.store.cells
        cells.fstore(rt.value_cell(entry), value)
        cells.fstore(rt.value_cell(entry, 1), time.time())


class InfoHandle(_RecentHandle):
    """An Info child's shared value: one entry per distinct label dict set."""

    __slots__ = ()

    def __init__(self, name: str, labelnames: Sequence[str], labelvalues: Sequence[str], doc: str):
        super().__init__("info", name, labelnames, labelvalues, doc)
        self._entry([], name + "_info")

    def info(self, val: dict[str, str]) -> None:
        self.write(self._entry([[k, v] for k, v in val.items()], self._name + "_info"), 1.0)


class EnumHandle(_RecentHandle):
    """An Enum child's shared value: the index of its state and when it was set."""

    __slots__ = ("_states",)

    def __init__(
        self,
        name: str,
        labelnames: Sequence[str],
        labelvalues: Sequence[str],
        doc: str,
        states: Sequence[str],
    ):
        super().__init__("stateset", name, labelnames, labelvalues, doc)
        self._states = list(states)
        self._entry(self._states, name)

    def state(self, index: int) -> None:
        self.write(self._entries[0], float(index))
