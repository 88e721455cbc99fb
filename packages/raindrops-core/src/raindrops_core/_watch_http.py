"""Every HTTP decision of the Watcher and LastDataRecv apps, shared by both adapters.

:meth:`WatcherCore.handle` maps ``(method, path, query)`` to a finished
:class:`~raindrops_core.Reply` or to a :class:`TailPlan` (a stream the adapter
serves with :meth:`WatcherCore.tail` or :meth:`WatcherCore.atail`).
:class:`LastDataRecvCore` records ``tcpi_last_data_recv`` into a shared
histogram and renders its report.  The adapters only move bytes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ._errors import ConfigError, FormatError
from ._state import Reply
from ._watch_agg import (
    DEFAULT_DELAY,
    DEFAULT_HISTORY,
    AsyncFetch,
    Fetch,
    WatcherEngine,
)
from ._watch_render import (
    histogram_text,
    hostname,
    http_date,
    render_index_html,
    render_index_json,
    render_listener_html,
    render_listener_json,
    render_listener_text,
    stats_headers,
    tail_line,
)

__all__ = [
    "DEFAULT_LAST_DATA_RECV_PATH",
    "LAST_DATA_RECV_SEGMENT_ENV",
    "LastDataRecvCore",
    "TailPlan",
    "WatcherCore",
    "last_data_recv_ms",
    "set_defer_accept",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

_TEXT = "text/plain; charset=utf-8"
_HTML = "text/html; charset=utf-8"
_JSON = "application/json"
_TYPES = {"txt": _TEXT, "html": _HTML, "json": _JSON}

_STATS = re.compile(r"/(active|queued)/(.+)\.(txt|html|json)", re.DOTALL)
_TAIL = re.compile(r"/tail/(.+)\.(txt|json)", re.DOTALL)
_RESET = re.compile(r"/reset/(.+)", re.DOTALL)
_READ = ("GET", "HEAD")


def _reply(status: int, body: bytes, ctype: str, extra: Sequence[tuple[str, str]] = ()) -> Reply:
    headers = (*extra, ("Content-Type", ctype), ("Content-Length", str(len(body))))
    return Reply(status, tuple(headers), body)


def _plain(status: int, text: str, extra: Sequence[tuple[str, str]] = ()) -> Reply:
    return _reply(status, text.encode(), _TEXT, extra)


def _not_found() -> Reply:
    return _plain(404, "404 Not Found\n")


def _not_allowed(allowed: Sequence[str]) -> Reply:
    allow = ", ".join(allowed)
    return _plain(405, f"405 Method Not Allowed (allowed: {allow})\n", (("Allow", allow),))


@dataclass(frozen=True, slots=True)
class TailPlan:
    """A tail stream to serve: which listener, thresholds, format, limits, headers.

    A line is written for each sample round where the listener has
    ``active >= active_min`` **and** ``queued >= queued_min`` (both default
    0: every round), as in the Ruby original.
    """

    name: str
    active_min: int
    queued_min: int
    as_json: bool
    max_seconds: float | None
    headers: tuple[tuple[str, str], ...]

    def line(self, at: float, values: dict[str, tuple[int, int]]) -> bytes | None:
        """The line for one sample round, or ``None`` when nothing is to be written."""
        counts = values.get(self.name)
        if counts is None:
            return None
        active, queued = counts
        if active < self.active_min or queued < self.queued_min:
            return None
        return tail_line(at, self.name, active, queued, as_json=self.as_json)


def _threshold(query: dict[str, list[str]], key: str) -> int:
    values = query.get(key)
    if not values or values[-1] == "":
        return 0
    text = values[-1].strip()
    if not text.isascii() or not text.isdigit():
        raise FormatError(f"{key} must be a non-negative integer, not {values[-1]!r}")
    return int(text)


class WatcherCore:
    """The Watcher app without a framework: routing, pages, tail streams.

    ``listeners``, ``delay``, ``history``, ``clock``, ``fetch``, ``afetch``
    configure the :class:`~raindrops_core.watcher.WatcherEngine` it owns
    (or pass ``engine=``).  ``tail_max_seconds`` ends every tail stream after
    that long (``None``: only when the client goes away).

    Example::

        >>> core = WatcherCore(["127.0.0.1:80"], fetch=lambda names: {})
        >>> core.handle("GET", "/nope", "").status
        404
    """

    def __init__(
        self,
        listeners: Sequence[str] | None = None,
        *,
        delay: float = DEFAULT_DELAY,
        history: int = DEFAULT_HISTORY,
        clock: Callable[[], float] = time.time,
        fetch: Fetch | None = None,
        afetch: AsyncFetch | None = None,
        tail_max_seconds: float | None = None,
        engine: WatcherEngine | None = None,
    ) -> None:
        if engine is None:
            engine = WatcherEngine(
                listeners, delay=delay, history=history, clock=clock, fetch=fetch, afetch=afetch
            )
        self.engine = engine
        if tail_max_seconds is not None and (
            isinstance(tail_max_seconds, bool)
            or not isinstance(tail_max_seconds, (int, float))
            or not 0 < tail_max_seconds < math.inf
        ):
            raise ConfigError(
                f"tail_max_seconds must be a positive number of seconds or None, "
                f"not {tail_max_seconds!r}"
            )
        self.tail_max_seconds = tail_max_seconds
        self.host = hostname()

    def __repr__(self) -> str:
        return f"<WatcherCore {self.engine!r}>"

    def handle(
        self,
        method: str,
        path: str,
        query: str,
        *,
        base: str = "",
        referer: str | None = None,
        host: str | None = None,
    ) -> Reply | TailPlan:
        """Answer one request (``path`` decoded, below the mount point ``base``).

        The :class:`Reply` always carries the full body; the adapter drops
        it for ``HEAD``.  Unknown paths and listeners are 404, wrong methods
        405 with ``Allow``, bad thresholds 400.
        """
        if path in ("", "/", "/index.html", "/index.json"):
            if method not in _READ:
                return _not_allowed(_READ)
            return self._index(path.endswith(".json"), base)
        m = _STATS.fullmatch(path)
        if m is not None:
            if method not in _READ:
                return _not_allowed(_READ)
            return self._stats(m.group(1), m.group(2), m.group(3), base)
        m = _TAIL.fullmatch(path)
        if m is not None:
            if method not in _READ:
                return _not_allowed(_READ)
            return self._tail(m.group(1), m.group(2) == "json", query)
        m = _RESET.fullmatch(path)
        if m is not None:
            if method != "POST":
                return _not_allowed(("POST",))
            return self._reset(m.group(1), base, referer, host)
        return _not_found()

    def _index(self, as_json: bool, base: str) -> Reply:
        reports = self.engine.reports()
        updated = self.engine.updated_at
        extra = [("Expires", http_date(self.engine.next_sample_at()))]
        if updated is not None:
            extra.append(("Last-Modified", http_date(updated)))
        if as_json:
            body = render_index_json(
                reports,
                updated_at=updated,
                delay=self.engine.delay,
                error=self.engine.last_error,
                tail_streams=self.engine.subscribers,
            )
            return _reply(200, body, _JSON, extra)
        body = render_index_html(
            reports, base=base, host=self.host, updated_at=updated, error=self.engine.last_error
        )
        return _reply(200, body, _HTML, extra)

    def _stats(self, kind: str, name: str, ext: str, base: str) -> Reply:
        report = self.engine.report(name)
        if report is None:
            return _not_found()
        stats = getattr(report, kind)
        headers = stats_headers(stats, expires=self.engine.next_sample_at())
        if ext == "txt":
            body = render_listener_text(report, kind)
        elif ext == "json":
            body = render_listener_json(report, kind)
        else:
            body = render_listener_html(report, kind, base=base, host=self.host)
        return _reply(200, body, _TYPES[ext], headers)

    def _tail(self, name: str, as_json: bool, query: str) -> Reply | TailPlan:
        if self.engine.report(name) is None:
            return _not_found()
        q = parse_qs(query, keep_blank_values=True)
        try:
            active_min = _threshold(q, "active_min")
            queued_min = _threshold(q, "queued_min")
        except FormatError as exc:
            return _plain(400, f"400 Bad Request: {exc}\n")
        ctype = "application/x-ndjson" if as_json else _TEXT
        headers = (("Content-Type", ctype), ("Cache-Control", "no-cache"))
        return TailPlan(name, active_min, queued_min, as_json, self.tail_max_seconds, headers)

    def _reset(self, name: str, base: str, referer: str | None, host: str | None) -> Reply:
        if not self.engine.reset(name):
            return _not_found()
        location = f"{base}/"
        if referer and host:
            parts = urlsplit(referer)
            if parts.netloc == host and parts.scheme in ("http", "https"):
                location = referer
        return _plain(303, f"Redirecting to {location}\n", (("Location", location),))

    # -- tail streams --------------------------------------------------------

    def _wait_step(self) -> float:
        return max(self.engine.delay * 2, 0.05)

    def tail(self, plan: TailPlan) -> Generator[bytes, None, None]:
        """The tail stream as a generator (blocking waits; for WSGI servers).

        Ends after ``plan.max_seconds`` or when closed (the server closes a
        WSGI body when the client goes away); its subscription always ends.
        """
        event = threading.Event()
        sub = self.engine.subscribe(event.set)
        deadline = None if plan.max_seconds is None else time.monotonic() + plan.max_seconds
        try:
            while True:
                step = self._wait_step()
                if deadline is not None:
                    step = min(step, deadline - time.monotonic())
                    if step <= 0:
                        return
                event.wait(step)
                event.clear()
                for at, values in sub.drain():
                    line = plan.line(at, values)
                    if line is not None:
                        yield line
        finally:
            sub.close()

    async def atail(self, plan: TailPlan) -> AsyncGenerator[bytes, None]:
        """The tail stream as an async generator (never blocks the loop; for ASGI)."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        sub = self.engine.subscribe(lambda: loop.call_soon_threadsafe(event.set))
        deadline = None if plan.max_seconds is None else time.monotonic() + plan.max_seconds
        try:
            while True:
                step = self._wait_step()
                if deadline is not None:
                    step = min(step, deadline - time.monotonic())
                    if step <= 0:
                        return
                try:
                    await asyncio.wait_for(event.wait(), step)
                except asyncio.TimeoutError:
                    pass
                event.clear()
                for at, values in sub.drain():
                    line = plan.line(at, values)
                    if line is not None:
                        yield line
        finally:
            sub.close()


# -- LastDataRecv -------------------------------------------------------------

#: The report's default path, as in the Ruby original.
DEFAULT_LAST_DATA_RECV_PATH = "/raindrops/last_data_recv"
#: The environment variable naming LastDataRecv's histogram segment (or ``anonymous``).
LAST_DATA_RECV_SEGMENT_ENV = "RAINDROPS_LAST_DATA_RECV_SEGMENT"


def last_data_recv_ms(info: object) -> int | None:
    """``tcpi_last_data_recv`` (milliseconds) from a ``linux_inet_diag.TcpInfo``, if present."""
    for attr in ("last_data_recv", "last_data_recv_ms", "tcpi_last_data_recv"):
        value = getattr(info, attr, None)
        if isinstance(value, int):
            return value
    return None


def _default_segment() -> str | None:
    from ._discover import discover_listeners
    from ._state import _shm_dir

    inodes = [listener.inode for listener in discover_listeners() if listener.inode]
    if not inodes:
        return None
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return os.path.join(_shm_dir(), f"raindrops-ldr-{uid}-{min(inodes)}")


class LastDataRecvCore:
    """Records each request's ``tcpi_last_data_recv`` (ms) in a shared histogram; reports it.

    The histogram is a ``shm_counters.Histogram`` with log2 buckets, shared
    by every worker: ``segment=`` (a path, or ``"anonymous"``), else
    ``$RAINDROPS_LAST_DATA_RECV_SEGMENT``, else
    ``/dev/shm/raindrops-ldr-<uid>-<listener inode>`` derived from the
    listening socket the worker inherited (so forked and spawned workers
    agree with no configuration), else anonymous memory (shared across
    fork only).  It is opened on first use, after the server has set up.
    ``histogram=`` supplies one directly (anything with ``record``,
    ``snapshot``, ``reset``).

    Example::

        >>> ldr = LastDataRecvCore(segment="anonymous")
        >>> ldr.record(3); ldr.record(5)
        >>> dict(ldr.reply("GET", "", None, as_json=False).headers)["X-Mean"]
        '4'
    """

    def __init__(
        self,
        *,
        segment: str | os.PathLike[str] | None = None,
        histogram: Any = None,
        log2_buckets: int = 32,
    ) -> None:
        if segment is None:
            segment = os.environ.get(LAST_DATA_RECV_SEGMENT_ENV) or None
        if segment is not None:
            text = os.fspath(segment)
            if text != "anonymous" and not os.path.isabs(text):
                raise ConfigError(
                    f"segment {text!r} is not an absolute path; give one like "
                    "'/dev/shm/myapp.ldr', or 'anonymous'"
                )
            segment = text
        self._segment: str | None = segment
        self._log2 = log2_buckets
        self._hist: Any = histogram
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<LastDataRecvCore segment={self._segment!r}>"

    @property
    def histogram(self) -> Any:
        """The shared histogram (opened on first use)."""
        hist = self._hist
        if hist is None:
            hist = self._open()
        return hist

    def _open(self) -> Any:
        from shm_counters import Histogram, ShmCountersError

        with self._lock:
            if self._hist is not None:
                return self._hist
            path = self._segment if self._segment is not None else _default_segment()
            if path == "anonymous":
                path = None
            try:
                hist = Histogram(log2_buckets=self._log2, path=path)
            except (ShmCountersError, OSError) as exc:
                logger.warning(
                    "raindrops LastDataRecv: cannot open %s (%s); using memory shared "
                    "across fork() only",
                    path,
                    exc,
                )
                hist = Histogram(log2_buckets=self._log2)
            self._hist = hist
            return hist

    def record(self, ms: int) -> None:
        """Record one request's wait, in milliseconds (lock-free)."""
        hist = self._hist
        if hist is None:
            hist = self._open()
        hist.record(ms)

    def reply(self, method: str, query: str, accept: str | None, *, as_json: bool) -> Reply:
        """The report: ``X-Count`` (+ the rest when count > 1), text histogram or JSON.

        JSON when ``as_json`` (the ``.json`` path) or asked by ``?format=json``
        or ``Accept``; 405 for methods other than GET/HEAD.
        """
        if method not in _READ:
            return _not_allowed(_READ)
        if not as_json:
            from ._snapshot import Format, negotiate

            try:
                as_json = negotiate(accept, query) is Format.JSON
            except FormatError as exc:
                return _plain(400, f"400 Bad Request: {exc}\n")
        snap = self.histogram.snapshot()
        headers = [("X-Count", str(snap.count))]
        if snap.count > 1:
            from ._watch_render import format_number

            headers += [
                ("X-Min", str(snap.min)),
                ("X-Max", str(snap.max)),
                ("X-Mean", format_number(snap.mean)),
                ("X-Std-Dev", format_number(snap.stddev)),
                ("X-Outliers-Low", str(snap.outliers_low)),
                ("X-Outliers-High", str(snap.outliers_high)),
            ]
        if as_json:
            doc = {
                "count": snap.count,
                "sum": snap.sum,
                "min": snap.min,
                "max": snap.max,
                "mean": snap.mean,
                "std_dev": snap.stddev,
                "outliers_low": snap.outliers_low,
                "outliers_high": snap.outliers_high,
                "buckets": [{"low": lo, "high": hi, "count": c} for lo, hi, c in snap.buckets if c],
            }
            return _reply(200, (json.dumps(doc) + "\n").encode(), _JSON, headers)
        body = histogram_text(snap.buckets, snap.outliers_low, snap.outliers_high).encode()
        return _reply(200, body, _TEXT, headers)


def set_defer_accept(sock: Any, seconds: int = 1) -> bool:
    """Set ``TCP_DEFER_ACCEPT`` on a listening TCP socket; ``False`` where unsupported.

    With it the kernel keeps a connection out of the accept queue until the
    client has sent data, so ``tcpi_last_data_recv`` at accept time is how
    long the request waited.  Unix sockets and systems without the option
    are left alone.  For gunicorn, in ``gunicorn.conf.py``::

        from raindrops_core.watcher import set_defer_accept

        def when_ready(server):
            for listener in server.LISTENERS:
                set_defer_accept(listener.sock)
    """
    import socket

    opt = getattr(socket, "TCP_DEFER_ACCEPT", None)
    if opt is None or getattr(sock, "family", None) not in (socket.AF_INET, socket.AF_INET6):
        return False
    sock.setsockopt(socket.IPPROTO_TCP, opt, int(seconds))
    return True
