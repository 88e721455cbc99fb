"""This process's runtime: its row in the shared segment, its values, fork safety.

Fork safety, one pattern: an ``os.register_at_fork`` hook in the child points
every inherited value at a *first-touch* method; the first use of any value
in the child (or the creation of one) claims the child's own row, marks every
value it inherited as present there (with value 0, as prometheus_client's
multiprocess files do) and rebinds every value to it. Later uses are the one
C call again.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._errors import NotInstalledError, PrometheusShmError, SeriesTableFullError
from ._layout import R_GC, Geometry
from ._liveness import Liveness
from ._store import Store
from ._table import Entry

if TYPE_CHECKING:
    from ._install import Installation

__all__ = ["Runtime", "active", "current", "describe", "installed", "set_current"]

logger = logging.getLogger("prometheus_shm")
logger.addHandler(logging.NullHandler())

_runtime: Runtime | None = None


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


def set_current(rt: Runtime | None) -> None:
    """Make ``rt`` this process's runtime (``install``/``uninstall`` only)."""
    global _runtime
    _runtime = rt


def describe(name: str, labelnames: Sequence[str], labelvalues: Sequence[str]) -> str:
    """A series as written in messages: ``name{label="value",...}``."""
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
