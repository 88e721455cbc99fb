"""The exporter's reader: every server's segments and the kernel, read out of band.

Nothing here sends a request to a worker: the figures come from the shared
segments the workers write (shm-counters) and from the kernel (netlink,
``/proc``), so they are there when every worker is busy.

What one :meth:`Exporter.read` costs, and how fresh each figure is:

- ``calling``/``writing``, the workers' table, the histogram and the restart
  counter: read from shared memory at each read (microseconds);
- each listener's ``queued`` and ``backlog``: netlink dumps of the LISTEN
  sockets (TCP, Unix) at each read (they also find the servers: see
  ``_discovery``); the kernel skips its table of connections for them, so
  they cost the same with 10 or 10,000 connections;
- each listener's ``active``: counting connections walks the kernel's whole
  table of connections (10-20 ms with 10,000 TCP ones), so the sampler
  thread does it every ``interval`` seconds and a read uses its last count
  (at most ``2 * interval`` old; a read walks itself when it is older, e.g.
  when no sampler runs).

The sampler also frees dead workers' rows (``Scoreboard.reap``), so the
restart counter counts deaths within ``interval``, and keeps the last
``history`` seconds of samples for the dashboard, in memory.
"""

from __future__ import annotations

import collections
import errno
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from linux_inet_diag import (
    LinuxInetDiagError,
    ListenOverflows,
    ListenStats,
    listen_overflows,
    tcp_listener_stats,
    unix_listener_stats,
)
from process_utilization import FIELDS as UTILIZATION_FIELDS
from process_utilization import WorkerStats, cumulative_buckets, worker_stats
from raindrops_core import Snapshot
from raindrops_core.adapter import FIELDS as RAINDROPS_FIELDS
from shm_counters import (
    Histogram,
    Scoreboard,
    SegmentError,
    ShmCountersError,
    listening_inodes,
    server_directory,
)

from . import _discovery
from ._discovery import ListeningSocket, label_of, names_held, order_names, segment_groups
from ._errors import ConfigError

__all__ = [
    "DEFAULT_HISTORY",
    "DEFAULT_INTERVAL",
    "Exporter",
    "LatencyReading",
    "Reading",
    "ServerReading",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

#: Seconds between two samples (the dashboard's step, the connection walk's age).
DEFAULT_INTERVAL = 1.0
#: Seconds of samples the exporter keeps in memory for the dashboard.
DEFAULT_HISTORY = 600.0
#: Samples kept at most, whatever ``history / interval`` says.
MAX_SAMPLES = 3600

_Readers = (SegmentError, ShmCountersError, OSError, ValueError)


@dataclass(frozen=True, slots=True)
class LatencyReading:
    """A request-duration histogram, as Prometheus reads it.

    ``buckets`` are cumulative ``(upper bound in seconds, count)`` pairs, the
    last one ``(inf, count)``; ``sum_seconds`` is the summed durations.
    """

    buckets: tuple[tuple[float, int], ...]
    count: int
    sum_seconds: float


@dataclass(frozen=True, slots=True)
class ServerReading:
    """One server at one moment.

    ``server`` is its label (its listener names, comma-joined); ``calling``
    and ``writing`` are ``None`` when it has no raindrops segment (only
    process-utilization's). ``worker_pids`` are the live workers (a row in
    either scoreboard), ``busy_pids`` those with a request in flight.
    ``requests_total``, ``busy_seconds_total`` and ``response_seconds_total``
    sum every worker's counter, the workers that went away while the
    exporter ran included (at their last reading), so they never go down.
    ``reclaimed`` counts the workers that died without releasing their row.

    Example::

        reading = Exporter().read()
        [(s.server, s.calling, len(s.worker_pids)) for s in reading.servers]
    """

    server: str
    listeners: Mapping[str, ListenStats]
    calling: int | None
    writing: int | None
    workers: tuple[WorkerStats, ...]
    worker_pids: tuple[int, ...]
    busy_pids: tuple[int, ...]
    reclaimed: int | None
    requests_total: int
    busy_seconds_total: float
    response_seconds_total: float
    in_flight: int
    latency: LatencyReading | None
    segments: Mapping[str, str]
    unavailable: Mapping[str, str] = field(default_factory=dict)

    def snapshot(self) -> Snapshot:
        """The raindrops :class:`Snapshot` of this server (what the raindrops families render)."""
        missing = dict(self.unavailable)
        if self.calling is None:
            missing.setdefault("shared", "the server has no raindrops segment")
        return Snapshot(self.calling or 0, self.writing or 0, dict(self.listeners), None, missing)


@dataclass(frozen=True, slots=True)
class Reading:
    """Every server found, the machine's overflow counters, and how long the read took."""

    time: float
    servers: tuple[ServerReading, ...]
    overflows: ListenOverflows | None
    duration: float
    unavailable: Mapping[str, str] = field(default_factory=dict)


class _Source:
    """The segments of one server (one inode, or one ``--segment``), opened once."""

    def __init__(self, key: str, inode: int | None, paths: Mapping[str, str]) -> None:
        self.key = key
        self.inode = inode
        self.paths = dict(paths)
        self.raindrops: Scoreboard | None = None
        self.utilization: Scoreboard | None = None
        self.latency: Histogram | None = None
        self.errors: dict[str, str] = {}
        self.names: tuple[str, ...] | None = None
        self.inodes: frozenset[int] = frozenset()
        self.checked: dict[int, bool] = {}
        self._open()

    def _open(self) -> None:
        for kind, path in self.paths.items():
            try:
                if kind == "latency":
                    self.latency = Histogram.attach(path)
                elif kind in ("raindrops", "utilization"):
                    board = Scoreboard.attach(path)
                    want = RAINDROPS_FIELDS if kind == "raindrops" else UTILIZATION_FIELDS
                    if tuple(board.fields) != tuple(want):
                        board.close()
                        raise SegmentError(
                            errno.EINVAL, f"fields {board.fields!r}, expected {tuple(want)!r}", path
                        )
                    setattr(self, kind, board)
            except _Readers as exc:
                self.errors[kind] = str(exc)

    def boards(self) -> list[Scoreboard]:
        return [b for b in (self.utilization, self.raindrops) if b is not None]

    def close(self) -> None:
        for board in self.boards():
            board.close()
        if self.latency is not None:
            self.latency.close()


def classify_segment(path: str) -> dict[str, str]:
    """The kind of a segment given by path, from its header: ``{kind: path}``.

    A process-utilization scoreboard named ``PATH`` brings the histogram
    ``PATH.latency`` beside it when there is one.

    Example::

        classify_segment("/dev/shm/myapp-utilization")
        # {'utilization': '/dev/shm/myapp-utilization', 'latency': '/dev/shm/...latency'}
    """
    try:
        with Scoreboard.attach(path) as board:
            fields = tuple(board.fields)
    except SegmentError:
        with Histogram.attach(path):
            return {"latency": path}
    if fields == tuple(RAINDROPS_FIELDS):
        return {"raindrops": path}
    if fields == tuple(UTILIZATION_FIELDS):
        found = {"utilization": path}
        if os.path.exists(path + ".latency"):
            found["latency"] = path + ".latency"
        return found
    raise ConfigError(
        f"segment {path!r} is a scoreboard of fields {fields!r}; allowed: raindrops' "
        f"{tuple(RAINDROPS_FIELDS)!r} or process-utilization's"
    )


class _Retired:
    """Per server: the counters of the workers that went away, so sums never go down."""

    __slots__ = ("busy", "last", "requests", "response")

    def __init__(self) -> None:
        self.requests = 0
        self.busy = 0.0
        self.response = 0.0
        self.last: dict[tuple[int, int], tuple[int, float, float]] = {}

    def update(self, workers: Sequence[WorkerStats]) -> tuple[int, float, float]:
        now = {
            (w.index, w.pid): (w.requests_total, w.busy_seconds_total, w.response_seconds_total)
            for w in workers
        }
        for key, (req, busy, resp) in self.last.items():
            if key not in now:
                self.requests += req
                self.busy += busy
                self.response += resp
        self.last = now
        return (
            self.requests + sum(v[0] for v in now.values()),
            self.busy + sum(v[1] for v in now.values()),
            self.response + sum(v[2] for v in now.values()),
        )


def _check_seconds(name: str, value: object, low: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < low
    ):
        raise ConfigError(f"{name} must be a finite number of seconds >= {low}, not {value!r}")
    return float(value)


class Exporter:
    """Finds this user's servers and reads them, out of band.

    ``servers`` keeps only the servers whose label or one of whose listener
    names is given; ``segments`` attaches to named segments explicitly (for
    servers started with ``segment=PATH``); ``inodes`` keeps only the servers
    whose segments are named after these socket inodes (the gunicorn recipe
    shows its own server only). ``directory`` replaces
    ``shm_counters.server_directory()``. ``interval`` is the sampler's period
    and ``history`` the seconds of samples kept for the dashboard.

    Example::

        exporter = Exporter()
        exporter.start()            # the sampler thread
        reading = exporter.read()   # every server, now
        exporter.stop()
    """

    def __init__(
        self,
        *,
        servers: Iterable[str] = (),
        segments: Iterable[str] = (),
        inodes: Iterable[int] | None = None,
        directory: str | None = None,
        interval: float = DEFAULT_INTERVAL,
        history: float = DEFAULT_HISTORY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.interval = _check_seconds("interval", interval, 0.05)
        self.history_seconds = _check_seconds("history", history, 0.0)
        if isinstance(servers, str) or isinstance(segments, str):
            raise ConfigError("servers and segments must be lists of strings, not one string")
        self.wanted = tuple(servers)
        self.directory = directory
        self.inodes = None if inodes is None else frozenset(inodes)
        self._explicit: dict[str, dict[str, str]] = {}
        for path in segments:
            if not os.path.isabs(path):
                raise ConfigError(f"segment {path!r} must be an absolute path")
            self._explicit[path] = classify_segment(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._sources: dict[str, _Source] = {}
        self._retired: dict[str, _Retired] = {}
        self._active: dict[str, int] = {}
        self._walked_at = -math.inf
        self._walk_names: tuple[str, ...] = ()
        self._walk_failure: str | None = None
        samples = min(MAX_SAMPLES, max(1, math.ceil(self.history_seconds / self.interval)))
        self._history: collections.deque[dict[str, Any]] = collections.deque(maxlen=samples)
        self._seq = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<Exporter servers={len(self._sources)} interval={self.interval}>"

    @property
    def lock(self) -> threading.Lock:
        """Held while a read runs (the gunicorn recipe takes it around fork())."""
        return self._lock

    # -- discovery -----------------------------------------------------------

    def _listening(self, notes: dict[str, str]) -> dict[int, ListeningSocket]:
        try:
            return _discovery.listening_sockets()
        except (LinuxInetDiagError, OSError) as exc:
            notes["listeners"] = str(exc) or type(exc).__name__
            return {}

    def _groups(
        self, listening: Mapping[int, ListeningSocket], notes: dict[str, str]
    ) -> dict[str, tuple[int | None, dict[str, str]]]:
        found: dict[str, tuple[int | None, dict[str, str]]] = {}
        try:
            where = self.directory or server_directory(create=False)
            groups = segment_groups(where)
        except FileNotFoundError:
            groups = {}
        except (SegmentError, OSError) as exc:
            notes["segments"] = str(exc)
            groups = {}
        live: frozenset[int] | set[int] = set(listening)
        if "listeners" in notes:
            try:
                live = listening_inodes()
            except OSError:
                live = frozenset()
        for inode, paths in groups.items():
            if inode in live and (self.inodes is None or inode in self.inodes):
                found[f"inode:{inode}"] = (inode, paths)
        for path, paths in self._explicit.items():
            found[f"segment:{path}"] = (None, paths)
        return found

    def _refresh_sources(
        self, listening: Mapping[int, ListeningSocket], notes: dict[str, str]
    ) -> None:
        wanted = self._groups(listening, notes)
        for key in list(self._sources):
            if key not in wanted:
                self._sources.pop(key).close()
        for key, (inode, paths) in wanted.items():
            source = self._sources.get(key)
            if source is not None and source.paths != paths:
                source.close()
                source = None
            if source is None:
                self._sources[key] = _Source(key, inode, paths)

    def _names(self, source: _Source, listening: Mapping[int, ListeningSocket]) -> tuple[str, ...]:
        if source.names is not None:
            return source.names
        pids = [info.pid for board in source.boards() for info in board.rows()]
        names = names_held(pids, listening)
        if names:
            source.names = names
            source.inodes = frozenset(i for i, s in listening.items() if s.name in names)
            return names
        if source.inode is not None and source.inode in listening:
            return (listening[source.inode].name,)
        return ()

    # -- reading -------------------------------------------------------------

    def _walk(self, names: Sequence[str]) -> None:
        """Count every listener's accepted connections (the kernel's whole tables)."""
        tcp = [n for n in names if not n.startswith(("/", "@"))]
        unix = [n for n in names if n.startswith(("/", "@"))]
        try:
            stats = dict(tcp_listener_stats(tcp)) if tcp else {}
            if unix:
                stats.update(unix_listener_stats(unix))
        except (LinuxInetDiagError, OSError) as exc:
            self._walk_failure = str(exc) or type(exc).__name__
            return
        self._walk_failure = None
        self._active = {name: s.active for name, s in stats.items()}
        self._walked_at = time.monotonic()

    def read(self, *, walk: bool = False) -> Reading:
        """Every server now (see the module notes for each figure's freshness).

        ``walk=True`` counts the TCP listeners' connections now instead of
        using the sampler's last count.

        Example::

            for server in Exporter().read(walk=True).servers:
                print(server.server, server.calling, dict(server.listeners))
        """
        started = time.perf_counter()
        with self._lock:
            notes: dict[str, str] = {}
            listening = self._listening(notes)
            self._refresh_sources(listening, notes)
            labelled: dict[str, list[_Source]] = {}
            names_of: dict[str, tuple[str, ...]] = {}
            for source in self._sources.values():
                names = names_of[source.key] = self._names(source, listening)
                label = label_of(names) if names else source.key.partition(":")[2]
                if self.wanted and not (label in self.wanted or set(names) & set(self.wanted)):
                    continue
                labelled.setdefault(label, []).append(source)
            walk_names = order_names(
                n for sources in labelled.values() for s in sources for n in names_of[s.key]
            )
            self._walk_names = walk_names
            stale = time.monotonic() - self._walked_at > 2 * self.interval
            if walk or stale or not set(walk_names) <= set(self._active):
                self._walk(walk_names)
            servers = [
                self._server(label, sources, names_of, listening, notes)
                for label, sources in sorted(labelled.items())
            ]
            for key in list(self._retired):
                if key not in labelled:
                    del self._retired[key]
            try:
                overflows: ListenOverflows | None = listen_overflows()
            except (LinuxInetDiagError, OSError) as exc:
                overflows = None
                notes["overflows"] = str(exc) or type(exc).__name__
            return Reading(
                time=self._clock(),
                servers=tuple(servers),
                overflows=overflows,
                duration=time.perf_counter() - started,
                unavailable=notes,
            )

    def _listeners(
        self, names: Sequence[str], listening: Mapping[int, ListeningSocket], notes: dict[str, str]
    ) -> tuple[dict[str, ListenStats], str | None]:
        if "listeners" in notes:
            return {}, notes["listeners"]
        by_name: dict[str, list[ListeningSocket]] = {}
        for sock in listening.values():
            by_name.setdefault(sock.name, []).append(sock)
        out: dict[str, ListenStats] = {}
        for name in names:
            socks = by_name.get(name, [])
            if not socks:  # nothing listens there (any more)
                out[name] = ListenStats(0, 0, None)
                continue
            out[name] = ListenStats(
                active=self._active.get(name, 0),
                queued=sum(s.queued or 0 for s in socks),
                backlog=sum(s.backlog or 0 for s in socks),
            )
        return out, self._walk_failure

    def _server(
        self,
        label: str,
        sources: Sequence[_Source],
        names_of: Mapping[str, tuple[str, ...]],
        listening: Mapping[int, ListeningSocket],
        notes: dict[str, str],
    ) -> ServerReading:
        raindrops = next((s.raindrops for s in sources if s.raindrops is not None), None)
        utilization = next((s.utilization for s in sources if s.utilization is not None), None)
        latency = next((s.latency for s in sources if s.latency is not None), None)
        segments = {k: p for s in sources for k, p in s.paths.items()}
        unavailable = {f"segment {k}": e for s in sources for k, e in s.errors.items()}
        names = order_names(n for s in sources for n in names_of[s.key])
        listeners, failure = self._listeners(names, listening, notes)
        if failure is not None:
            unavailable["listeners"] = failure
        calling = writing = None
        pids: set[int] = set()
        busy: set[int] = set()
        if raindrops is not None:
            totals = raindrops.totals()
            calling, writing = totals["calling"], totals["writing"]
            # Its rows are read only without a utilization table, which says the same
            # (a worker's in-flight count runs to its response's end) at a lower cost.
            for info in raindrops.rows() if utilization is None else ():
                pids.add(info.pid)
                if info.values["calling"] or info.values["writing"]:
                    busy.add(info.pid)
        workers: list[WorkerStats] = []
        if utilization is not None:
            workers = worker_stats(utilization)
            for w in workers:
                pids.add(w.pid)
                if w.in_flight:
                    busy.add(w.pid)
        if not pids and raindrops is not None:  # no request served yet: no utilization row
            pids = {info.pid for info in raindrops.rows()}
        inodes = frozenset().union(*(s.inodes for s in sources))
        if inodes:
            checked = sources[0].checked
            found = _discovery.worker_processes(sorted(pids), inodes, checked)
            if found is not None:
                pids = set(found) | pids
        retired = self._retired.setdefault(label, _Retired())
        requests, busy_s, response_s = retired.update(workers)
        board = utilization or raindrops
        hist = None
        if latency is not None:
            snap = latency.snapshot()
            hist = LatencyReading(tuple(cumulative_buckets(snap)), snap.count, snap.sum / 1e9)
        return ServerReading(
            server=label,
            listeners=listeners,
            calling=calling,
            writing=writing,
            workers=tuple(sorted(workers, key=lambda w: w.index)),
            worker_pids=tuple(sorted(pids)),
            busy_pids=tuple(sorted(busy & pids)),
            reclaimed=None if board is None else board.reclaimed,
            requests_total=requests,
            busy_seconds_total=busy_s,
            response_seconds_total=response_s,
            in_flight=sum(w.in_flight for w in workers),
            latency=hist,
            segments=segments,
            unavailable=unavailable,
        )

    # -- the sampler ---------------------------------------------------------

    def sample(self) -> Reading:
        """Walk the connections, free dead workers' rows, read, and keep the sample.

        What the sampler thread runs every ``interval``; ``--once`` runs it once.

        Example::

            reading = Exporter().sample()
        """
        self._walk(self._walk_names)
        with self._lock:
            for source in self._sources.values():
                for board in source.boards():
                    try:
                        board.reap()
                    except _Readers as exc:  # a segment gone bad: say it, keep going
                        logger.debug("raindrops_exporter: reap %s: %s", source.key, exc)
        reading = self.read()
        self._keep(reading)
        return reading

    def _keep(self, reading: Reading) -> None:
        with self._lock:
            self._seq += 1
            self._history.append(
                {
                    "seq": self._seq,
                    "time": reading.time,
                    "servers": {
                        s.server: {
                            "calling": s.calling,
                            "writing": s.writing,
                            "workers": len(s.worker_pids),
                            "busy": len(s.busy_pids),
                            "listeners": {
                                n: [v.active, v.queued, v.backlog] for n, v in s.listeners.items()
                            },
                        }
                        for s in reading.servers
                    },
                }
            )

    def history(self, after: int = 0) -> list[dict[str, Any]]:
        """The samples kept (oldest first), those numbered above ``after`` only.

        Each: ``{"seq", "time", "servers": {LABEL: {"calling", "writing",
        "workers", "busy", "listeners": {NAME: [active, queued, backlog]}}}}``.
        """
        with self._lock:
            return [s for s in self._history if s["seq"] > after]

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                self.sample()
            except Exception:  # the sampler must outlive one bad read; it says why
                logger.exception("raindrops_exporter: sample failed")
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - began)))

    def start(self) -> None:
        """Start the sampler thread (a daemon), after one sample in this thread."""
        if self._thread is not None:
            return
        self.sample()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name="raindrops-exporter-sampler", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the sampler thread and close every segment."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        with self._lock:
            for source in self._sources.values():
                source.close()
            self._sources.clear()

    def forget_after_fork(self) -> None:
        """In a forked child: drop everything (the child never reads through this object)."""
        self._lock = threading.Lock()
        self._thread = None
        self._sources = {}
