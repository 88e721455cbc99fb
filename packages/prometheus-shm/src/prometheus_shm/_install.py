"""install(): prometheus_client's own metrics keep their values in the shared segment.

prometheus_client creates every value through ``prometheus_client.values.
ValueClass`` (looked up at each creation), so replacing that one name makes
``Counter``, ``Gauge``, ``Histogram`` and ``Summary`` (labelled or not) keep
their values in this process's row of the segment. ``Info`` and ``Enum``,
which keep theirs in the metric object, get a shared copy written beside it.
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._errors import ConfigError
from ._layout import check_geometry
from ._runtime import Runtime, active, current, set_current
from ._store import Store
from ._values import EnumHandle, InfoHandle, SharedValue

__all__ = ["ANONYMOUS", "Installation", "SegmentInfo", "install", "segment_info", "uninstall"]

_install_lock = threading.Lock()


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
    rt = current()
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
    global _fork_hook_registered
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
        rt = current()
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
        set_current(rt)
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
    with _install_lock:
        rt = current()
        if rt is None:
            return
        _patches.undo()
        if rt.installation.process_metrics and rt.gc_callback in gc.callbacks:
            gc.callbacks.remove(rt.gc_callback)
        set_current(None)


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
