"""install(): prometheus_client's own metrics keep their values in the shared segment.

prometheus_client creates every value through ``prometheus_client.values.
ValueClass`` (looked up at each creation), so replacing that one name makes
``Counter``, ``Gauge``, ``Histogram`` and ``Summary`` (labelled or not) keep
their values in this process's row of the segment. ``Info`` and ``Enum``,
which keep theirs in the metric object, get a shared copy written beside it.

The per-increment path is one C call: a :class:`SharedValue`'s ``inc``,
``set`` and ``get`` are instance attributes holding shm-counters bound steps
(C-level ``functools.partial`` objects over this process's cells), so
``Counter.inc()``'s own ``self._value.inc(amount)`` goes straight into the C
that adds the double by compare-and-swap. No lock, no PID check, no Python
frame of ours.

Fork safety, one pattern: an ``os.register_at_fork`` hook in the child points
every inherited value at a *first-touch* method; the first use of any value
in the child (or the creation of one) claims the child's own row, marks every
value it inherited as present there (with value 0, as prometheus_client's
multiprocess files do) and rebinds every value to it. Later uses are the one
C call again.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ._errors import ConfigError, NotInstalledError, PrometheusShmError, SeriesTableFullError
from ._store import R_GC, Geometry, Liveness, Store, check_geometry
from ._table import Entry, cells_for, encode_key, merge_of

__all__ = [
    "ANONYMOUS",
    "Installation",
    "Runtime",
    "SegmentInfo",
    "SharedValue",
    "active",
    "current",
    "install",
    "installed",
    "segment_info",
    "uninstall",
]

logger = logging.getLogger("prometheus_shm")
logger.addHandler(logging.NullHandler())

_runtime: Runtime | None = None
_install_lock = threading.Lock()


def active() -> Runtime:
    """The runtime :func:`install` made in this process; raises if there is none."""
    rt = _runtime
    if rt is None:
        raise NotInstalledError(
            "prometheus_shm.install() was not called in this process"
            " (call it before any metric is created)"
        )
    return rt


def current() -> Runtime | None:
    """The installed runtime, or None (internal)."""
    return _runtime


def installed() -> Installation | None:
    """What :func:`install` set up in this process, or None.

    Example::

        >>> import prometheus_shm
        >>> prometheus_shm.installed() is None
        True
    """
    rt = _runtime
    return None if rt is None else rt.installation


def _describe(name: str, labelnames: Sequence[str], labelvalues: Sequence[str]) -> str:
    labels = ",".join(f'{k}="{v}"' for k, v in zip(labelnames, labelvalues, strict=False))
    return f"{name}{{{labels}}}" if labels else name


class Runtime:
    """This process's view of the installed segment: its row and its values."""

    def __init__(self, store: Store | None, installation: Installation, geo: Geometry) -> None:
        self._store = store
        self._geo = geo
        self._mode = installation.mode
        self.local_reason: str | None = None
        self.installation = installation
        self.row: int | None = None
        self.pid = os.getpid()
        self.values: weakref.WeakSet[Any] = weakref.WeakSet()
        self.lock = threading.RLock()
        self.liveness = Liveness(installation.liveness_ttl)
        self._group: list[tuple[Any, Entry]] = []
        self._group_key: tuple[str, str, tuple[str, ...]] | None = None

    # -- the segment ---------------------------------------------------------------

    @property
    def store(self) -> Store:
        """The segment, found the first time a process needs it (``install()`` with no path).

        ``shm_counters.server_segment("prometheus")`` names the file every
        worker of this server shares. A process that finds none logs one
        warning and keeps its values in anonymous memory (shared with the
        processes it forks after that); its collectors say so
        (``prometheus_shm_local_only``). A forked child inherits what its
        parent found.
        """
        store = self._store
        if store is not None:
            return store
        with self.lock:
            if self._store is None:
                self._store = self._discover()
            return self._store

    def _discover(self) -> Store:
        from shm_counters import server_segment

        found = server_segment("prometheus")
        reason = found.reason
        if found.path is not None:
            try:
                store = Store.named(found.path, self._geo, self._mode)
            except (OSError, PrometheusShmError) as exc:  # a full tmpfs, a damaged file
                reason = f"cannot use {found.path}: {exc}"
            else:
                logger.info("prometheus-shm: metrics shared in %s", found.path)
                return store
        self.local_reason = reason
        logger.warning(
            "prometheus-shm: no shared segment for this server (%s); PID %d keeps its metrics"
            " in its own memory (shared only with processes it forks), so figures miss"
            " other workers",
            reason,
            os.getpid(),
        )
        return Store.anonymous(self._geo)

    # -- rows -------------------------------------------------------------------

    def ensure_row(self) -> int:
        """This process's row, claimed (and every inherited value rebound) if need be."""
        row = self.row
        if row is not None and self.pid == os.getpid():
            return row
        return self.touch()

    def touch(self) -> int:
        """Claim this process's row; mark every known value present there; rebind all."""
        with self.lock:
            if self.row is not None and self.pid == os.getpid():
                return self.row
            self.pid = os.getpid()
            row = self.store.claim(self.pid)
            values = list(self.values)
            self.store.mark_present(row, [c for v in values for c in v.cells()])
            self.row = row
            for v in values:
                v.bind(self)
            if self.installation.process_metrics:
                self._seed_gc()
            return row

    def forked(self) -> None:
        """In a forked child: no row yet; every value waits for its first touch."""
        self.lock = threading.RLock()
        if self._store is not None:
            self._store.lock = threading.RLock()
        self.row = None
        self.pid = os.getpid()
        self.liveness.close()  # the parent's pidfds, inherited
        self.liveness = Liveness(self.installation.liveness_ttl)
        for v in list(self.values):
            v.unbind()

    def value_cell(self, entry: Entry, offset: int = 0) -> int:
        """The cell of ``entry`` (+ ``offset``) in this process's row."""
        geo = self.store.geo
        return geo.values(geo.row(self.ensure_row())) + entry.first_cell + offset

    # -- series -------------------------------------------------------------------

    def register(self, value: Any, key: bytes, ncells: int, describe: str) -> Entry:
        """Find or add the entry for ``key``, mark it present in this row, bind ``value``.

        The values of one histogram or summary child are made one after the
        other; if one fails (the table is full), the ones made before it are
        withdrawn from this row, so no half series is ever shown.
        """
        with self.lock:
            row = self.ensure_row()
            group = value.group_key()
            if group is None or group != self._group_key:
                self._group = []
                self._group_key = group
            try:
                entry = self.store.add_series(key, ncells, describe)
            except SeriesTableFullError:
                self._withdraw_group(row)
                raise
            self.store.mark_present(row, range(entry.first_cell, entry.first_cell + entry.ncells))
            value.entry = entry
            value.bind(self)
            self.values.add(value)
            if group is not None:
                self._group.append((value, entry))
            return entry

    def _withdraw_group(self, row: int) -> None:
        for value, entry in self._group:
            self.values.discard(value)
            self.store.mark_present(
                row, range(entry.first_cell, entry.first_cell + entry.ncells), False
            )
        self._group = []
        self._group_key = None

    # -- per-process GC figures (install(process_metrics=True)) ---------------------

    def _gc_cell(self, generation: int, k: int) -> int:
        geo = self.store.geo
        row = self.row if self.row is not None else 0
        return geo.row(row) + R_GC + 3 * generation + k

    def _seed_gc(self) -> None:
        cells = self.store.cells
        for gen, st in enumerate(gc.get_stats()[:3]):
            for k, field in enumerate(("collections", "collected", "uncollectable")):
                cells.store(self._gc_cell(gen, k), int(st.get(field, 0)))

    def gc_callback(self, phase: str, info: dict[str, int]) -> None:
        """gc.callbacks hook: add one collection's figures to this process's row."""
        if phase != "stop" or self.row is None or self.pid != os.getpid():
            return
        try:
            gen = info["generation"]
            if not 0 <= gen < 3:
                return
            cells = self.store.cells
            cells.add(self._gc_cell(gen, 0), 1)
            cells.add(self._gc_cell(gen, 1), info.get("collected", 0))
            cells.add(self._gc_cell(gen, 2), info.get("uncollectable", 0))
        except Exception:  # never let a GC pass raise
            logger.debug("prometheus-shm: GC figures not recorded", exc_info=True)


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
        rt.register(self, key, cells_for(merge), _describe(name, labelnames, labelvalues))

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
        return f"<SharedValue {_describe(e.name, e.labelnames, e.labelvalues)} cell={e.first_cell}>"


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
        entry = rt.register(self, key, 2, _describe(sample, self._labelnames, self._labelvalues))
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


# -- install ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Installation:
    """What :func:`install` was asked for in this process.

    ``path`` is as given: None (the server's segment, found by discovery),
    ``"anonymous"``, or a file name. The segment actually used, its figures
    and whether this process could join its server are in
    :func:`segment_info`.
    """

    path: str | None
    capacity: int
    processes: int
    heap_bytes: int
    liveness_ttl: float
    process_metrics: bool
    mode: int = 0o600


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """The segment this process uses, and how full it is.

    ``path`` is the named file (None: anonymous memory); ``local_reason`` is
    None when this process shares its server's segment as intended, else why
    discovery found none (the figures are then this process's and its forked
    children's only). The rest counts values, heap bytes and process rows.
    """

    path: str | None
    local_reason: str | None
    bytes: int
    capacity: int
    values_used: int
    heap_bytes: int
    heap_used: int
    rows: int
    rows_owned: int
    rows_retired: int
    folded: int
    retired_dropped: int


def segment_info() -> SegmentInfo:
    """The segment in use here (found now if it was not yet) and its figures.

    Example::

        >>> import prometheus_shm
        >>> _ = prometheus_shm.install("anonymous", capacity=100)
        >>> info = prometheus_shm.segment_info()
        >>> info.path, info.local_reason, info.capacity, info.values_used
        (None, None, 100, 0)
        >>> prometheus_shm.uninstall()
    """
    rt = active()
    store = rt.store
    return SegmentInfo(store.path, rt.local_reason, **store.stats())


@dataclass
class _Patches:
    saved: list[tuple[Any, str, Any]]

    def set(self, owner: Any, name: str, value: Any) -> None:
        self.saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def undo(self) -> None:
        for owner, name, value in reversed(self.saved):
            setattr(owner, name, value)
        self.saved.clear()


_patches = _Patches([])
_fork_hook_registered = False


def _after_fork_in_child() -> None:
    global _install_lock
    _install_lock = threading.Lock()
    rt = _runtime
    if rt is not None:
        rt.forked()


def install(
    path: str | os.PathLike[str] | None = None,
    *,
    capacity: int = 4096,
    processes: int = 64,
    heap_bytes: int | None = None,
    liveness_ttl: float = 1.0,
    process_metrics: bool = False,
    mode: int = 0o600,
) -> Installation:
    """Make prometheus_client's metrics keep their values in one shared segment.

    Call it once, before any metric is created: in a gunicorn config file,
    or at the top of the app module (each spawned uvicorn worker imports
    it). Where the values go:

    - ``path=None`` (default): the server's own segment, found by
      ``shm_counters.server_segment("prometheus")`` (a file in this user's
      ``/dev/shm/raindrops-<uid>/`` named after the listening socket every
      worker inherited, forked or spawned). Found the first time a process
      needs it, so a gunicorn config may call this before the sockets are
      bound. A process that finds no socket logs one warning, counts in its
      own memory, and its collectors add ``prometheus_shm_local_only``.
    - ``"anonymous"``: anonymous memory made now, inherited by every process
      forked after this call (a forking server or pool with no sockets).
    - an absolute file name: that segment (created, mode ``mode``, if missing).

    ``capacity`` is how many values the series table holds (one per counter
    or gauge child, two per "mostrecent" gauge, buckets + 1 per histogram
    child, 2 per summary child), ``processes`` how many processes may hold a
    row at once (live workers, plus dead ones kept for their "all" gauges),
    ``heap_bytes`` the room for names and label values (default
    ``capacity * 192``, at least 64 KiB). They size a new segment; an
    existing one keeps its own. ``liveness_ttl``: seconds a reader trusts
    that a process is alive. ``process_metrics``: each process publishes its
    GC figures, and collectors add per-worker ``process_*`` and
    ``python_gc_*`` metrics labelled ``pid``.

    Calling it again with the same ``path`` returns the same installation
    (an app module imported by every worker may call it too).

    Example::

        >>> import prometheus_shm
        >>> from prometheus_client import CollectorRegistry, Counter, generate_latest
        >>> inst = prometheus_shm.install("anonymous", capacity=256, processes=8)
        >>> inst.path, inst.capacity
        ('anonymous', 256)
        >>> c = Counter("jobs_total", "Jobs done.", ["queue"], registry=None)
        >>> c.labels("fast").inc()
        >>> registry = CollectorRegistry()
        >>> _ = prometheus_shm.Collector(registry)
        >>> print(generate_latest(registry).decode().splitlines()[2])
        jobs_total{queue="fast"} 1.0
        >>> prometheus_shm.uninstall()
    """
    global _runtime, _fork_hook_registered
    name = _check_path(path)
    heap = max(65536, capacity * 192) if isinstance(capacity, int) else 0
    geo = check_geometry(capacity, processes, heap if heap_bytes is None else heap_bytes)
    if isinstance(liveness_ttl, bool) or not isinstance(liveness_ttl, (int, float)):
        raise ConfigError(f"liveness_ttl must be a number of seconds, not {liveness_ttl!r}")
    if not 0 <= liveness_ttl <= 3600:
        raise ConfigError(
            f"liveness_ttl {liveness_ttl} out of range: allowed 0 <= liveness_ttl <= 3600 s"
        )
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
        raise ConfigError(f"mode must be a file mode 0..0o777, not {mode!r}")
    if mode & 0o022:
        raise ConfigError(
            f"mode 0o{mode:03o} lets group or others write; allowed: owner-writable only,"
            " such as 0o600 or 0o640"
        )
    with _install_lock:
        rt = _runtime
        if rt is not None:
            if rt.installation.path != name:
                raise ConfigError(
                    f"prometheus_shm is already installed with path {rt.installation.path!r},"
                    f" not {name!r}"
                )
            return rt.installation
        store: Store | None = None
        if name == ANONYMOUS:
            store = Store.anonymous(geo)
        elif name is not None:
            store = Store.named(name, geo, mode)
        if store is not None:
            geo = store.geo
        installation = Installation(
            name,
            geo.capacity,
            geo.rows,
            geo.heap_bytes,
            float(liveness_ttl),
            bool(process_metrics),
            mode,
        )
        rt = Runtime(store, installation, geo)
        _apply_patches(rt)
        _runtime = rt
        if not _fork_hook_registered:
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _fork_hook_registered = True
        return installation


#: ``install(ANONYMOUS)``: anonymous memory, inherited by forked processes.
ANONYMOUS = "anonymous"


def _check_path(path: object) -> str | None:
    if path is None:
        return None
    try:
        name = os.fspath(path)  # type: ignore[call-overload]
    except TypeError:
        name = None
    if name == ANONYMOUS:
        return ANONYMOUS
    if not isinstance(name, str) or not os.path.isabs(name):
        raise ConfigError(
            f"path must be None (the server's segment), 'anonymous' or an absolute file name,"
            f" not {path!r}"
        )
    return name


def uninstall() -> None:
    """Undo :func:`install` in this process (for tests): new metrics are plain again.

    Metrics created meanwhile keep writing to the segment's memory, which
    stays mapped while they exist.

    Example::

        >>> import prometheus_shm
        >>> _ = prometheus_shm.install("anonymous")
        >>> prometheus_shm.uninstall()
        >>> prometheus_shm.installed() is None
        True
    """
    global _runtime
    with _install_lock:
        rt = _runtime
        if rt is None:
            return
        _patches.undo()
        if rt.installation.process_metrics and rt.gc_callback in gc.callbacks:
            gc.callbacks.remove(rt.gc_callback)
        _runtime = None


def _apply_patches(rt: Runtime) -> None:
    from prometheus_client import metrics, multiprocess, values

    from ._collector import MultiProcessCollectorShim, mark_process_dead

    _patches.set(values, "ValueClass", SharedValue)
    _patches.set(multiprocess, "MultiProcessCollector", MultiProcessCollectorShim)
    _patches.set(multiprocess, "mark_process_dead", mark_process_dead)

    # prometheus_client leaves these unannotated: typed here as what they are.
    info_init: Callable[[Any], None] = metrics.Info._metric_init
    info_info: Callable[[Any, dict[str, str]], None] = metrics.Info.info
    enum_init: Callable[..., None] = metrics.Enum.__init__
    enum_state: Callable[[Any, str], None] = metrics.Enum.state

    def _info_metric_init(self: Any) -> None:
        info_init(self)
        self._shm = InfoHandle(self._name, self._labelnames, self._labelvalues, self._documentation)

    def _info(self: Any, val: dict[str, str]) -> None:
        info_info(self, val)
        self._shm.info(self._value)

    # Enum sets its states after MetricWrapperBase.__init__ (which runs
    # _metric_init), so its shared copy is made once the whole __init__ ran.
    def _enum_init(self: Any, *args: Any, **kwargs: Any) -> None:
        enum_init(self, *args, **kwargs)
        if self._is_observable():
            self._shm = EnumHandle(
                self._name, self._labelnames, self._labelvalues, self._documentation, self._states
            )

    def _state(self: Any, state: str) -> None:
        enum_state(self, state)
        self._shm.state(self._value)

    _patches.set(metrics.Info, "_metric_init", _info_metric_init)
    _patches.set(metrics.Info, "info", _info)
    _patches.set(metrics.Enum, "__init__", _enum_init)
    _patches.set(metrics.Enum, "state", _state)
    if rt.installation.process_metrics:
        gc.callbacks.append(rt.gc_callback)
