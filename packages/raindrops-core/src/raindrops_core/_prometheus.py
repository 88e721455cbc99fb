"""Prometheus exposition of a snapshot, through prometheus_client.

:class:`RaindropsCollector` is a custom collector: the endpoint renders
with it, and users who already run prometheus_client register it in their
own registry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, cast, runtime_checkable

from linux_inet_diag import ListenOverflows, escape_name
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest as _generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as _generate_openmetrics

from ._errors import ConfigError
from ._snapshot import Snapshot

__all__ = ["RaindropsCollector", "SnapshotSource", "render_prometheus", "snapshot_families"]

# Typed views: prometheus_client annotates these loosely (or not at all),
# and they only call ``.collect()`` on what they are given.
generate_latest = cast(Callable[[Any], bytes], _generate_latest)
generate_openmetrics = cast(Callable[[Any], bytes], _generate_openmetrics)


def snapshot_families(
    snapshots: Iterable[tuple[Sequence[str], Snapshot]],
    *,
    labels: Sequence[str] = (),
    overflows: ListenOverflows | None = None,
    namespace: str = "raindrops",
) -> list[Metric]:
    """The raindrops metric families of several labelled snapshots, each family once.

    The one renderer of ``calling``, ``writing``, ``shared``, the listener
    gauges and the overflow counters, for the in-band endpoint (one snapshot,
    no labels) and for readers of many servers (raindrops-exporter: one
    snapshot per server, ``labels=("server",)``). Each pair is the values of
    ``labels`` and a snapshot; every family holds one sample per snapshot, the
    listener families one per snapshot and listener (label ``listener`` after
    ``labels``). The snapshots' own ``overflows`` are not read: the machine's
    counters are given once, as ``overflows``, and rendered without labels.

    Example::

        >>> [m.name for m in snapshot_families([((), Snapshot(1, 0, {}))])][:2]
        ['raindrops_calling', 'raindrops_writing']
    """
    ns = f"{namespace}_" if namespace else ""
    names = list(labels)
    calling = GaugeMetricFamily(
        f"{ns}calling",
        "Requests inside the application right now, on every worker.",
        labels=names,
    )
    writing = GaugeMetricFamily(
        f"{ns}writing",
        "Responses whose body is still being sent, on every worker.",
        labels=names,
    )
    shared = GaugeMetricFamily(
        f"{ns}shared",
        "1 if calling/writing are shared by every worker of the server, "
        "0 if they are this process's only.",
        labels=names,
    )
    available = GaugeMetricFamily(
        f"{ns}listeners_available",
        "1 if listener queue statistics could be read (Linux netlink), else 0.",
        labels=names,
    )
    per_listener = [*names, "listener"]
    active = GaugeMetricFamily(
        f"{ns}listener_active",
        "Connections accepted on the listener and not yet closed.",
        labels=per_listener,
    )
    queued = GaugeMetricFamily(
        f"{ns}listener_queued",
        "Connections waiting in the listen queue, not yet accepted.",
        labels=per_listener,
    )
    backlog = GaugeMetricFamily(
        f"{ns}listener_backlog",
        "The listen queue's capacity (the listen() backlog).",
        labels=per_listener,
    )
    any_listeners = False
    for values, snapshot in snapshots:
        lv = list(values)
        calling.add_metric(lv, snapshot.calling)
        writing.add_metric(lv, snapshot.writing)
        shared.add_metric(lv, 0 if "shared" in snapshot.unavailable else 1)
        readable = "listeners" not in snapshot.unavailable
        available.add_metric(lv, 1 if readable else 0)
        if not readable:
            continue
        any_listeners = True
        for name, stats in snapshot.listeners.items():
            label = [*lv, escape_name(name)]  # as the text spells it; always valid UTF-8
            active.add_metric(label, stats.active)
            queued.add_metric(label, stats.queued)
            if stats.backlog is not None:  # None: nothing listens there (yet)
                backlog.add_metric(label, stats.backlog)
    out: list[Metric] = [calling, writing, shared, available]
    if any_listeners:
        out += [active, queued, backlog]
    if overflows is not None:
        out.append(
            CounterMetricFamily(
                f"{ns}listen_overflows",
                "Times a listen queue was full (TcpExtListenOverflows, whole machine).",
                value=overflows.listen_overflows,
            )
        )
        out.append(
            CounterMetricFamily(
                f"{ns}listen_drops",
                "SYNs dropped on listeners (TcpExtListenDrops, whole machine).",
                value=overflows.listen_drops,
            )
        )
    return out


def _metrics(snapshot: Snapshot, namespace: str) -> Iterator[Metric]:
    yield from snapshot_families(
        [((), snapshot)], overflows=snapshot.overflows, namespace=namespace
    )


@runtime_checkable
class SnapshotSource(Protocol):
    """What a :class:`RaindropsCollector` reads: anything that takes a snapshot now."""

    def snapshot(self) -> Snapshot:
        """The stats at this moment (blocking)."""
        ...


class RaindropsCollector:
    """A prometheus_client collector of raindrops snapshots.

    ``source`` is anything with a ``snapshot()`` method (a
    :class:`SnapshotSource`: the middleware's ``.state``, a
    :class:`RaindropsState`) or any callable returning a :class:`Snapshot`.
    Metrics: ``raindrops_calling``, ``raindrops_writing``,
    ``raindrops_shared`` (0 when the gauges are this process's only),
    ``raindrops_listener_active``/``_queued``/``_backlog`` (label
    ``listener``), ``raindrops_listeners_available`` and, when readable,
    ``raindrops_listen_overflows_total``/``raindrops_listen_drops_total``.
    :meth:`collect` blocks while it reads them.

    Example::

        >>> from prometheus_client import CollectorRegistry, generate_latest
        >>> registry = CollectorRegistry()
        >>> registry.register(RaindropsCollector(middleware.state))  # doctest: +SKIP
    """

    def __init__(
        self,
        source: SnapshotSource | Callable[[], Snapshot],
        *,
        namespace: str = "raindrops",
    ) -> None:
        if isinstance(source, SnapshotSource):
            self._snapshot: Callable[[], Snapshot] = source.snapshot
        elif callable(source):
            self._snapshot = source
        else:
            raise ConfigError(
                "RaindropsCollector needs the middleware's state (anything with snapshot()) "
                f"or a callable returning a Snapshot, not {source!r}"
            )
        self._namespace = namespace

    def __repr__(self) -> str:
        return f"RaindropsCollector({self._snapshot!r}, namespace={self._namespace!r})"

    def collect(self) -> Iterator[Metric]:
        """Take one snapshot and yield its metric families.

        Blocking: prometheus_client calls ``collect()`` synchronously, and the
        snapshot runs a netlink query and reads ``/proc`` (and, the first
        time, discovers the listeners).  Do not render a registry holding it
        from an event loop's own thread; the ASGI endpoint's
        ``?format=prometheus`` reads the same numbers off the loop.
        """
        yield from _metrics(self._snapshot(), self._namespace)

    def describe(self) -> list[Metric]:
        """Nothing: registering must not take a snapshot (netlink) up front."""
        return []

    #: :func:`snapshot_families`: the same families for many labelled snapshots
    #: (what raindrops-exporter renders, one snapshot per server).
    families = staticmethod(snapshot_families)


class _Fixed:
    """A collector of one given snapshot (what the endpoint renders)."""

    __slots__ = ("_namespace", "_snapshot")

    def __init__(self, snapshot: Snapshot, namespace: str) -> None:
        self._snapshot = snapshot
        self._namespace = namespace

    def collect(self) -> Iterator[Metric]:
        return _metrics(self._snapshot, self._namespace)


def render_prometheus(
    snapshot: Snapshot, *, openmetrics: bool = False, namespace: str = "raindrops"
) -> bytes:
    """The snapshot in Prometheus text exposition (0.0.4), or OpenMetrics 1.0.

    In the Prometheus text format, a part that could not be read adds a
    comment such as ``# listeners unavailable: ...`` at the end (OpenMetrics
    has no comments: ``raindrops_listeners_available 0`` says it there too).
    The ``listener`` label is the name as the raindrops text spells it
    (:func:`linux_inet_diag.escape_name`: control characters and bytes that
    are not UTF-8 as ``\\xHH``), so the exposition is always UTF-8 and
    never carries a terminal escape; prometheus_client then quotes it.

    Example::

        >>> print(render_prometheus(Snapshot(1, 0, {})).decode())  # doctest: +ELLIPSIS
        # HELP raindrops_calling Requests inside the application right now, on every worker.
        # TYPE raindrops_calling gauge
        raindrops_calling 1.0
        ...
    """
    fixed = _Fixed(snapshot, namespace)
    if openmetrics:
        return generate_openmetrics(fixed)
    body = generate_latest(fixed)
    notes = "".join(
        f"# {part} unavailable: {escape_name(' '.join(reason.split()))}\n"
        for part, reason in snapshot.unavailable.items()
    )
    return body + notes.encode()
