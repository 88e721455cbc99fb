"""The collector: every process's values merged, as MultiProcessCollector merges files.

Same families, types, sample names, labels and values as prometheus_client's
``MultiProcessCollector`` yields for the same workload: counters, histograms
(cumulative buckets, ``_count`` from them) and summaries (``_count``,
``_sum``) summed over every process alive or dead; gauges per
``multiprocess_mode``, with a ``pid`` label for ``all``/``liveall``; label
names in sorted order (``le`` last, ``pid`` last), no ``_created`` samples,
no units. Beyond it: ``Info`` and ``Enum`` (the value most recently set by
any process), optional per-worker ``process_*``/``python_gc_*`` figures, and
optional figures about the segment itself.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.registry import CollectorRegistry
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from ._errors import ConfigError
from ._layout import GC_CELLS, Snapshot, present
from ._liveness import Liveness
from ._runtime import Runtime, active, current
from ._store import Store
from ._table import Entry, Merge

__all__ = ["Collector", "MultiProcessCollectorShim", "mark_process_dead"]

# prometheus_client leaves it unannotated.
_go_float: Callable[[float], str] = floatToGoString
# Sample tuples made without their Python-level __new__ (the trailing fields,
# timestamp, exemplar and, in newer prometheus_client, native histogram, None).
_TAIL = (None,) * (len(Sample._fields) - 3)
_new_tuple = tuple.__new__


logger = logging.getLogger("prometheus_shm")

_FOLDS_PER_CALL = 8
_PER_ROW = frozenset(
    {
        Merge.MIN,
        Merge.LIVEMIN,
        Merge.MAX,
        Merge.LIVEMAX,
        Merge.RECENT,
        Merge.LIVERECENT,
        Merge.ALL,
        Merge.LIVEALL,
    }
)
_GC_FIELDS = (
    ("python_gc_collections", "Number of times this generation was collected"),
    ("python_gc_objects_collected", "Objects collected during gc"),
    ("python_gc_objects_uncollectable", "Uncollectable objects found during GC"),
)


@dataclass
class _Histo:
    """One histogram child: its sum and its buckets, sorted by bound, ready to render."""

    labels: dict[str, str]
    sum: int | None = None  # the sum's cell
    # (bound, cell, labels with le) sorted by bound
    buckets: list[tuple[float, int, dict[str, str]]] = field(default_factory=list)


@dataclass
class _Family:
    """One metric family's entries, and how they turn into samples."""

    name: str
    typ: str
    help: str
    merge: Merge
    # (cell, sample name, labels) of each counter, summary or gauge value, in table order
    items: list[tuple[int, str, dict[str, str]]] = field(default_factory=list)
    histos: dict[tuple[tuple[str, str], ...], _Histo] = field(default_factory=dict)
    series: dict[tuple[str, ...], list[Entry]] = field(default_factory=dict)
    labels: dict[int, dict[str, str]] = field(default_factory=dict)


class _Plan:
    """Families built from the series table once; extended as entries appear.

    Everything a collection needs that does not change (label dicts in
    MultiProcessCollector's order, ``le`` strings, bucket order) is made
    here, once per entry, so a collection only reads values.
    """

    def __init__(self) -> None:
        self.families: dict[str, _Family] = {}
        self.count = 0
        self.per_row = False

    def extend(self, entries: list[Entry]) -> None:
        for e in entries[self.count :]:
            fam = self.families.get(e.metric_name)
            if fam is None:
                fam = _Family(e.metric_name, e.typ, e.help, e.merge)
                self.families[e.metric_name] = fam
            self.per_row = self.per_row or fam.merge in _PER_ROW or fam.typ in ("info", "stateset")
            pairs = tuple(sorted(zip(e.labelnames, e.labelvalues, strict=True)))
            if fam.typ == "histogram":
                le = next((v for k, v in pairs if k == "le"), None)
                base = tuple(p for p in pairs if p[0] != "le")
                histo = fam.histos.get(base)
                if histo is None:
                    histo = fam.histos[base] = _Histo(dict(base))
                if le is None:
                    histo.sum = e.first_cell
                    continue
                try:
                    bound = float(le)
                except ValueError:
                    continue
                labels = {**histo.labels, "le": _go_float(bound)}
                histo.buckets.append((bound, e.first_cell, labels))
                histo.buckets.sort(key=lambda b: b[0])
            elif fam.typ in ("info", "stateset"):
                fam.series.setdefault(e.labelvalues, []).append(e)
                fam.labels[e.first_cell] = dict(zip(e.labelnames, e.labelvalues, strict=True))
            else:
                fam.items.append((e.first_cell, e.name, dict(pairs)))
        self.count = len(entries)


# One plan per segment handle, shared by every collector on it: the
# documented pattern makes a fresh registry and collector for every scrape.
_plans: weakref.WeakKeyDictionary[Store, _Plan] = weakref.WeakKeyDictionary()
_plans_lock = threading.Lock()


def _plan_for(store: Store) -> _Plan:
    with _plans_lock:
        plan = _plans.get(store)
        if plan is None:
            plan = _plans[store] = _Plan()
        return plan


class Collector:
    """Yields the merged metrics of every process sharing the segment.

    Shaped like prometheus_client's ``MultiProcessCollector``: give it a
    fresh registry (or None) and ask the registry. Without ``path`` it reads
    the segment :func:`install` set up in this process; with ``path`` it
    attaches to that named segment (an exporter, a CLI). ``process_metrics``
    (default: as installed) adds each live worker's ``process_*`` figures
    (read from ``/proc/<pid>``) and ``python_gc_*`` (published by workers that
    installed with ``process_metrics=True``), labelled ``pid``.
    ``self_metrics`` adds ``prometheus_shm_*`` figures about the segment.

    Example::

        >>> import prometheus_shm
        >>> from prometheus_client import CollectorRegistry, Gauge, generate_latest
        >>> _ = prometheus_shm.install("anonymous")
        >>> g = Gauge("busy", "Busy workers.", multiprocess_mode="livesum", registry=None)
        >>> g.inc()
        >>> registry = CollectorRegistry()
        >>> _ = prometheus_shm.Collector(registry)
        >>> [(s.name, s.value) for m in registry.collect() for s in m.samples]
        [('busy', 1.0)]
        >>> prometheus_shm.uninstall()
    """

    def __init__(
        self,
        registry: CollectorRegistry | None,
        path: str | os.PathLike[str] | None = None,
        *,
        process_metrics: bool | None = None,
        self_metrics: bool = False,
        liveness_ttl: float = 1.0,
    ) -> None:
        self._rt: Runtime | None = None
        if path is None:
            rt = self._rt = active()
            self._store = rt.store
            # the runtime's: forked children get a fresh one
            self._liveness: Callable[[], Liveness] = lambda: rt.liveness
            default_pm = rt.installation.process_metrics
        else:
            name = os.fspath(path)
            if not isinstance(name, str) or not os.path.isabs(name):
                raise ConfigError(f"path must be an absolute file name, not {path!r}")
            self._store = Store.named(name, None)
            own = Liveness(liveness_ttl)
            self._liveness = lambda: own
            default_pm = False
        self._process_metrics = default_pm if process_metrics is None else bool(process_metrics)
        self._self_metrics = bool(self_metrics)
        self._plan = _plan_for(self._store)
        if registry is not None:
            registry.register(self)

    def collect(self) -> list[Metric]:
        """The merged metric families, read now; dead processes' rows folded on the way."""
        store = self._store
        store.sync()
        with store.lock:
            self._plan.extend(store.entries)
        snap, dead = store.snapshot(
            self._liveness(), per_row=self._plan.per_row or self._process_metrics
        )
        for r, word in dead[:_FOLDS_PER_CALL]:
            try:
                store.fold(r, word)
            except Exception:  # a fold is housekeeping: the figures above are right
                logger.warning("prometheus-shm: could not fold row %d", r, exc_info=True)
        out = [m for fam in self._plan.families.values() if (m := _render(fam, snap)) is not None]
        if self._process_metrics:
            out += _process_families(snap)
        if self._self_metrics:
            out += _self_families(store)
        reason = self._rt.local_reason if self._rt is not None else None
        if reason is not None:
            m = Metric(
                "prometheus_shm_local_only",
                "1: this process found no shared segment for its server; these figures are"
                " its own (and its forked children's) only",
                "gauge",
            )
            m.add_sample(
                "prometheus_shm_local_only", {"pid": str(os.getpid()), "reason": reason}, 1.0
            )
            out.append(m)
        return out


class MultiProcessCollectorShim(Collector):
    """``prometheus_client.multiprocess.MultiProcessCollector`` while installed.

    So ``multiprocess.MultiProcessCollector(registry)`` in unchanged code
    reads the shared segment. ``path`` (MultiProcessCollector's directory) is
    ignored: the installed segment is read.

    Example::

        >>> import prometheus_shm
        >>> from prometheus_client import CollectorRegistry, multiprocess
        >>> _ = prometheus_shm.install("anonymous")
        >>> type(multiprocess.MultiProcessCollector(CollectorRegistry())).__name__
        'MultiProcessCollectorShim'
        >>> prometheus_shm.uninstall()
    """

    def __init__(self, registry: CollectorRegistry | None, path: str | None = None) -> None:
        super().__init__(registry)


def mark_process_dead(pid: int, path: str | None = None) -> None:
    """``prometheus_client.multiprocess.mark_process_dead`` while installed: optional.

    Dead processes need no hook; called (from gunicorn's ``child_exit``, say)
    it folds ``pid``'s row at once instead of at the next collection, so its
    live gauges vanish immediately. ``path`` is ignored.

    Example::

        >>> import prometheus_shm
        >>> _ = prometheus_shm.install("anonymous")
        >>> prometheus_shm.mark_process_dead(2**22 + 1)
        >>> prometheus_shm.uninstall()
    """
    rt = current()
    if rt is None:
        return
    rt.liveness.mark_dead(pid)
    store = rt.store
    for r, word in store.dead_rows():
        if word == pid:
            store.fold(r, word)


# -- rendering ------------------------------------------------------------------


def _rows_for(snap: Snapshot, merge: Merge) -> Iterable[Any]:
    live_only = merge.live_only
    for row in snap.rows:
        if row.retired and merge is not Merge.ALL:
            continue
        if live_only and not row.live:
            continue
        yield row


def _render(fam: _Family, snap: Snapshot) -> Metric | None:
    m = Metric(fam.name, fam.help, fam.typ)
    out = m.samples  # Sample tuples appended directly: add_sample() would only wrap them
    n = snap.ncells
    if fam.typ == "histogram":
        for histo in fam.histos.values():
            _render_histogram(out, fam.name, histo, snap)
        return m
    if fam.typ in ("info", "stateset"):
        for entries in fam.series.values():
            _render_recent_series(out, fam, entries, snap)
        return m
    merge = fam.merge
    if merge in (Merge.SUM, Merge.LIVESUM):
        sums, pres = (
            (snap.sums, snap.presence)
            if merge is Merge.SUM
            else (snap.live_sums, snap.live_presence)
        )
        for c, name, labels in fam.items:
            if c < n and pres[c >> 6] >> (c & 63) & 1:
                out.append(_new_tuple(Sample, (name, labels.copy(), sums[c], *_TAIL)))
        return m
    for c, name, labels in fam.items:
        if c >= n:
            continue
        if merge in (Merge.ALL, Merge.LIVEALL):
            for row in _rows_for(snap, merge):
                if present(row.presence, c):
                    out.append(Sample(name, {**labels, "pid": str(row.pid)}, row.values[c]))
        elif merge in (Merge.MIN, Merge.LIVEMIN, Merge.MAX, Merge.LIVEMAX):
            lowest = merge in (Merge.MIN, Merge.LIVEMIN)
            best: float | None = None
            candidates = [
                row.values[c] for row in _rows_for(snap, merge) if present(row.presence, c)
            ]
            if not merge.live_only and present(snap.archive_presence, c):
                candidates.insert(0, snap.archive[c])
            for v in candidates:
                if best is None or (v < best if lowest else v > best):
                    best = v
            if best is not None:
                out.append(Sample(name, dict(labels), best))
        else:  # RECENT, LIVERECENT: the value with the latest timestamp > 0
            value, when = _most_recent(snap, merge, c)
            if when > 0.0:
                out.append(Sample(name, dict(labels), value))
    return m


def _most_recent(snap: Snapshot, merge: Merge, c: int) -> tuple[float, float]:
    value, when = 0.0, 0.0
    if not merge.live_only and present(snap.archive_presence, c) and snap.archive[c + 1] > when:
        value, when = snap.archive[c], snap.archive[c + 1]
    for row in _rows_for(snap, merge):
        if present(row.presence, c) and row.values[c + 1] > when:
            value, when = row.values[c], row.values[c + 1]
    return value, when


def _render_histogram(out: list[Sample], name: str, histo: _Histo, snap: Snapshot) -> None:
    n, sums, pres = snap.ncells, snap.sums, snap.presence
    c = histo.sum
    if c is not None and c < n and pres[c >> 6] >> (c & 63) & 1:
        out.append(_new_tuple(Sample, (name + "_sum", dict(histo.labels), sums[c], *_TAIL)))
    acc = 0.0
    seen = False
    bucket = name + "_bucket"
    append = out.append
    for _, c, labels in histo.buckets:
        if c < n and pres[c >> 6] >> (c & 63) & 1:
            seen = True
            acc += sums[c]
            append(_new_tuple(Sample, (bucket, labels.copy(), acc, *_TAIL)))
    if seen:
        out.append(_new_tuple(Sample, (name + "_count", dict(histo.labels), acc, *_TAIL)))


def _render_recent_series(
    out: list[Sample], fam: _Family, entries: list[Entry], snap: Snapshot
) -> None:
    """Info / Enum: the entry and value set most recently by any process."""
    best: tuple[float, Entry, float] | None = None
    for e in entries:
        c = e.first_cell
        if c + 1 >= snap.ncells:
            continue
        candidates = []
        if present(snap.archive_presence, c):
            candidates.append((snap.archive[c + 1], snap.archive[c]))
        candidates += [
            (row.values[c + 1], row.values[c])
            for row in _rows_for(snap, Merge.RECENT)
            if present(row.presence, c)
        ]
        for when, value in candidates:
            if best is None or when > best[0]:
                best = (when, e, value)
    if best is None:
        return
    _, e, value = best
    labels = fam.labels[e.first_cell]
    if fam.typ == "info":
        pairs = e.extra if isinstance(e.extra, list) else []
        info = {
            str(k): str(v) for k, v in (p for p in pairs if isinstance(p, list) and len(p) == 2)
        }
        out.append(Sample(fam.name + "_info", {**labels, **info}, 1.0))
        return
    states = [str(s) for s in e.extra] if isinstance(e.extra, list) else []
    index = int(value) if value == value else 0
    for i, state in enumerate(states):
        out.append(Sample(fam.name, {**labels, fam.name: state}, 1.0 if i == index else 0.0))


def _process_families(snap: Snapshot) -> list[Metric]:
    """Each live worker's process_* (from /proc/<pid>) and python_gc_* figures, by pid."""
    from prometheus_client import ProcessCollector

    merged: dict[str, Metric] = {}
    for pid in snap.live_pids:
        pc = ProcessCollector(pid=functools.partial(int, pid), registry=None)
        for fam in pc.collect():
            out = merged.get(fam.name)
            if out is None:
                out = merged[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
            for s in fam.samples:
                out.add_sample(s.name, {**s.labels, "pid": str(pid)}, s.value)
    gc_fams = [Metric(name, doc, "counter") for name, doc in _GC_FIELDS]
    for row in snap.rows:
        if not row.live or len(row.gc) != GC_CELLS:
            continue
        for gen in range(3):
            for k, fam in enumerate(gc_fams):
                labels = {"generation": str(gen), "pid": str(row.pid)}
                fam.add_sample(fam.name + "_total", labels, float(row.gc[3 * gen + k]))
    return [*merged.values(), *gc_fams]


def _self_families(store: Store) -> list[Metric]:
    """Figures about the segment itself (Collector(self_metrics=True))."""
    st = store.stats()
    out = []
    for name, doc, typ, value in (
        ("prometheus_shm_segment_bytes", "Size of the shared segment.", "gauge", st["bytes"]),
        ("prometheus_shm_values", "Values in the series table.", "gauge", st["values_used"]),
        ("prometheus_shm_values_capacity", "Values the table can hold.", "gauge", st["capacity"]),
        ("prometheus_shm_process_rows", "Rows held by processes.", "gauge", st["rows_owned"]),
        ("prometheus_shm_retired_rows", "Dead processes' rows kept.", "gauge", st["rows_retired"]),
        ("prometheus_shm_process_rows_capacity", "Process rows.", "gauge", st["rows"]),
        ("prometheus_shm_rows_folded", "Dead rows folded.", "counter", st["folded"]),
    ):
        m = Metric(name, doc, typ)
        m.add_sample(name + ("_total" if typ == "counter" else ""), {}, float(value))
        out.append(m)
    return out
