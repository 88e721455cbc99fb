"""Every HTTP decision of the Watcher and LastDataRecv apps, shared by both adapters.

:meth:`WatcherCore.serve` (threaded servers) and :meth:`WatcherCore.aserve`
(event loops) start the sampler, map ``(method, path, query)`` to a finished
:class:`~raindrops_core.Reply` or to a :class:`TailPlan` (a stream the adapter
serves with :meth:`WatcherCore.tail` or :meth:`WatcherCore.atail`), and wait
where the Ruby original waited.  :class:`LastDataRecvCore` routes its report,
decides which requests count and records ``tcpi_last_data_recv`` into a
shared histogram.  The adapters only move bytes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import select
import socket
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from linux_inet_diag import escape_name
from shm_counters import server_segment

from ._access import DEFAULT_ALLOW, AccessList, Peer
from ._errors import ConfigError, FormatError, TailStreamsFullError
from ._http import Reply
from ._snapshot import UNAVAILABLE_HEADER
from ._state import SEGMENT_ENV
from ._validate import ANONYMOUS, check_segment
from ._watch_agg import (
    DEFAULT_DELAY,
    DEFAULT_HISTORY,
    AsyncFetch,
    Fetch,
    WatcherEngine,
    sample_std_dev,
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
    ruby_round,
    stats_headers,
    tail_line,
)

__all__ = [
    "DEFAULT_LAST_DATA_RECV_PATH",
    "FIRST_SAMPLE_WAIT",
    "LAST_DATA_RECV_SEGMENT_ENV",
    "UNPROBED_TAIL_SECONDS",
    "LastDataRecvCore",
    "TailPlan",
    "WatcherCore",
    "client_gone_probe",
    "cross_origin_refusal",
    "last_data_recv_ms",
    "set_defer_accept",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

# The Ruby original's content types, byte for byte; JSON is an addition.
_TEXT = "text/plain"
_HTML = "text/html"
_JSON = "application/json"
_NDJSON = "application/x-ndjson"
_TYPES = {"txt": _TEXT, "html": _HTML, "json": _JSON}

_STATS = re.compile(r"/(active|queued)/(.+)\.(txt|html|json)", re.DOTALL)
_TAIL = re.compile(r"/tail/(.+)\.(txt|json)", re.DOTALL)
_RESET = re.compile(r"/reset/(.+)", re.DOTALL)
_READ = ("GET", "HEAD")
_ALLOWED = ("GET", "HEAD", "POST")
_TO_I = re.compile(r"\s*([+-]?\d+(?:_\d+)*)")
#: The tail's ``Expires``: the epoch, as the Ruby original sends.
_EPOCH_DATE = "Thu, 01 Jan 1970 00:00:00 GMT"

#: How long a request that started the sampler waits for its first round, at most (s).
FIRST_SAMPLE_WAIT = 2.0
#: How long a tail stream lasts when nothing can tell that its client went away
#: (no ``gone`` probe: a WSGI server that does not expose the client socket) and no
#: ``tail_max_seconds`` was given (s).
UNPROBED_TAIL_SECONDS = 600.0


def _reply(status: int, body: bytes, ctype: str, extra: Sequence[tuple[str, str]] = ()) -> Reply:
    headers = (*extra, ("Content-Type", ctype), ("Content-Length", str(len(body))))
    return Reply(status, tuple(headers), body)


def _plain(status: int, text: str, extra: Sequence[tuple[str, str]] = ()) -> Reply:
    if status >= 400:  # an error may quote the client: never to be sniffed as HTML
        extra = (*extra, ("X-Content-Type-Options", "nosniff"))
    return _reply(status, text.encode(), _TEXT, extra)


def _not_found() -> Reply:
    return _plain(404, "Not Found")


def _not_allowed() -> Reply:
    return _plain(405, "Method Not Allowed", (("Allow", ", ".join(_ALLOWED)),))


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
    """Ruby's ``String#to_i`` of the last value: leading digits, else 0 (never an error)."""
    values = query.get(key)
    if not values:
        return 0
    m = _TO_I.match(values[-1])
    return int(m.group(1).replace("_", "")) if m else 0


def client_gone_probe(sock: Any) -> Callable[[], bool] | None:
    """A "has the client gone away?" check for a server's client socket, or ``None``.

    For a tail stream that may write nothing for a long time (thresholds not
    met): a WSGI server only notices a client that left when a write fails,
    and gunicorn does not even write empty chunks.  With ``POLLRDHUP``
    (Linux) the client is gone once it closed or shut down its side, or the
    connection failed, even behind unread bytes; elsewhere a non-blocking
    ``recv(1, MSG_PEEK)`` says gone on end of file or a reset, there on
    ``EAGAIN`` (bytes already sent, such as a pipelined next request, are
    not a disconnect).  ``None`` when ``sock`` is not a socket.

    Example::

        gone = client_gone_probe(environ.get("gunicorn.socket"))
    """
    fileno = getattr(sock, "fileno", None)
    if fileno is None:
        return None
    try:
        fd = fileno()
    except (OSError, ValueError):
        return None
    if not isinstance(fd, int) or fd < 0:
        return None
    rdhup = getattr(select, "POLLRDHUP", 0)
    if rdhup and hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, rdhup | select.POLLERR | select.POLLHUP)
        trouble = rdhup | select.POLLERR | select.POLLHUP | select.POLLNVAL

        def polled() -> bool:
            if sock.fileno() < 0:
                return True
            return any(events & trouble for _, events in poller.poll(0))

        return polled

    recv = getattr(sock, "recv", None)
    dontwait = getattr(socket, "MSG_DONTWAIT", 0)
    if recv is None or not dontwait:
        return None

    def peeked() -> bool:
        if sock.fileno() < 0:
            return True
        try:
            peek: bytes = recv(1, socket.MSG_PEEK | dontwait)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        return peek == b""

    return peeked


def cross_origin_refusal(
    origin: str | None, fetch_site: str | None, host: str | None
) -> str | None:
    """``None`` if a state-changing request may come from where it says, else why not.

    The browser's own word first: ``Sec-Fetch-Site`` (every current browser
    sends it) must be ``same-origin`` (or ``none``, a request the user
    started); without it, an ``Origin`` header must name this very host
    (its ``host[:port]`` equal to the ``Host`` header); a request with
    neither comes from no browser (curl, a script) and is allowed.  A
    cross-site form posting to the Watcher from a page the operator visits
    (cross-site request forgery) carries one of them, and is refused.  The
    rule Go's ``net/http.CrossOriginProtection`` applies.

    Example::

        >>> cross_origin_refusal(None, "same-origin", "127.0.0.1:9000") is None
        True
        >>> print(cross_origin_refusal("http://evil.example", None, "127.0.0.1:9000"))
        cross-origin request refused: Origin 'http://evil.example' is not this site (Host ...)
    """
    if fetch_site is not None:
        site = fetch_site.strip().lower()
        if site in ("same-origin", "none"):
            return None
        return f"cross-origin request refused: Sec-Fetch-Site is {escape_name(fetch_site)!r}"
    if origin is None:
        return None
    parts = urlsplit(origin.strip())
    if host and parts.scheme in ("http", "https") and parts.netloc.lower() == host.strip().lower():
        return None
    where = f" (Host {escape_name(host)!r})" if host else ""
    return f"cross-origin request refused: Origin {escape_name(origin)!r} is not this site{where}"


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str
    query: str
    base: str
    referer: str | None
    host: str | None
    peer: Peer | str | None
    origin: str | None
    fetch_site: str | None


class WatcherCore:
    """The Watcher app without a framework: access, routing, pages, tail streams.

    ``listeners``, ``delay``, ``history``, ``clock``, ``fetch``, ``afetch``
    configure the :class:`~raindrops_core.watcher.WatcherEngine` it owns
    (or pass ``engine=``).  ``tail_max_seconds`` ends every tail stream after
    that long (``None``: when the client goes away; where that cannot be
    told, after :data:`UNPROBED_TAIL_SECONDS`).  ``allow`` is who may read
    it, as the stats endpoint's (:class:`~raindrops_core.AccessList`:
    loopback and local Unix peers by default): the pages list every
    listener on the machine, other users' too.

    Adapters call :meth:`serve` (threaded servers) or :meth:`aserve` (an
    event loop) with the request's :class:`~raindrops_core.Peer` and its
    ``Origin``/``Sec-Fetch-Site`` headers, and stream a :class:`TailPlan`
    with :meth:`tail` or :meth:`atail`; :meth:`handle` is the same routing
    with no waiting.

    Example::

        >>> core = WatcherCore(["127.0.0.1:80"], fetch=lambda names: {})
        >>> core.handle("GET", "/nope", "", peer="127.0.0.1").status
        404
        >>> core.handle("GET", "/", "", peer="192.0.2.1").status
        403
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
        allow: Iterable[str] | AccessList = DEFAULT_ALLOW,
    ) -> None:
        self.access = AccessList.parse(allow)
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

    # -- starting the sampler ------------------------------------------------

    def _first_wait(self) -> float:
        return min(FIRST_SAMPLE_WAIT, self.engine.delay * 2)

    def start_thread(self) -> None:
        """Start this process's sampler thread unless it runs; wait (bounded) for a first round."""
        if self.engine.thread_running:
            return
        if self.engine.start_thread():
            self.engine.wait_sampled(self._first_wait())

    async def astart(self) -> None:
        """Start the sampler task in this loop unless it runs; await (bounded) a first round."""
        if self.engine.ensure_task():
            await self.engine.await_sampled(self._first_wait())

    # -- requests ------------------------------------------------------------

    def handle(
        self,
        method: str,
        path: str,
        query: str,
        *,
        base: str = "",
        referer: str | None = None,
        host: str | None = None,
        peer: Peer | str | None = None,
        origin: str | None = None,
        fetch_site: str | None = None,
    ) -> Reply | TailPlan:
        """Answer one request (``path`` decoded, below the mount point ``base``), never waiting.

        First who asks: ``peer`` (a :class:`~raindrops_core.Peer`, or a bare
        IP address of a direct TCP client; ``None``, no address, is refused)
        is decided by ``allow``: a refused one gets ``403`` with the reason
        (``text/plain``, ``X-Content-Type-Options: nosniff``).  Then, as the
        Ruby original: ``GET``/``HEAD`` of ``/``, ``/active|queued/<L>.txt|.html``
        and ``/tail/<L>.txt``, ``POST /reset/<L>``; any other path is 404
        (also a ``GET`` of ``/reset/<L>`` or a ``POST`` elsewhere), any other
        method 405 (with ``Allow``, an addition).  A reset is refused (403)
        unless it comes from the Watcher's own pages or from no browser
        (:func:`same_origin` of ``origin``, ``fetch_site``, ``host``); a tail
        beyond ``max_tail_streams`` open ones is 503.  The :class:`Reply`
        always carries the full body; the adapter drops it for ``HEAD``.
        """
        req = _Request(method, path, query, base, referer, host, peer, origin, fetch_site)
        return self._route(req)[0]

    def serve(
        self,
        method: str,
        path: str,
        query: str,
        *,
        base: str = "",
        referer: str | None = None,
        host: str | None = None,
        peer: Peer | str | None = None,
        origin: str | None = None,
        fetch_site: str | None = None,
    ) -> Reply | TailPlan:
        """:meth:`handle` for a threaded server (WSGI), with the Ruby original's waits.

        Starts this process's sampler thread on first use (for an allowed
        client) and waits (at most :data:`FIRST_SAMPLE_WAIT`) for its first
        round; after a reset, waits as long for the next round before
        redirecting, so the page the client comes back to has a sample again.
        """
        req = _Request(method, path, query, base, referer, host, peer, origin, fetch_site)
        refused = self._refused(req)
        if refused is not None:
            return refused
        self.start_thread()
        rounds = self.engine.rounds
        answer, settle = self._route(req)
        if settle:
            self.engine.wait_round(rounds, self._first_wait())
        return answer

    async def aserve(
        self,
        method: str,
        path: str,
        query: str,
        *,
        base: str = "",
        referer: str | None = None,
        host: str | None = None,
        peer: Peer | str | None = None,
        origin: str | None = None,
        fetch_site: str | None = None,
    ) -> Reply | TailPlan:
        """:meth:`serve` for an event loop (ASGI): the same waits, never blocking the loop."""
        req = _Request(method, path, query, base, referer, host, peer, origin, fetch_site)
        refused = self._refused(req)
        if refused is not None:
            return refused
        await self.astart()
        rounds = self.engine.rounds
        answer, settle = self._route(req)
        if settle:
            await self.engine.await_round(rounds, self._first_wait())
        return answer

    def _refused(self, req: _Request) -> Reply | None:
        reason = self.access.refusal(req.peer)
        if reason is None:
            return None
        return _plain(403, f"403 Forbidden: {reason}\n")

    def _route(self, req: _Request) -> tuple[Reply | TailPlan, bool]:
        refused = self._refused(req)
        if refused is not None:
            return refused, False
        method, path = req.method, req.path
        if method in _READ:
            if path in ("/", "/index.html", "/index.json"):
                return self._index(path.endswith(".json"), req.base), False
            m = _STATS.fullmatch(path)
            if m is not None:
                return self._stats(m.group(1), m.group(2), m.group(3), req.base), False
            m = _TAIL.fullmatch(path)
            if m is not None:
                return self._tail(m.group(1), m.group(2) == "json", req.query), False
            return _not_found(), False
        if method == "POST":
            m = _RESET.fullmatch(path)
            if m is not None:
                forged = cross_origin_refusal(req.origin, req.fetch_site, req.host)
                if forged is not None:
                    return _plain(403, f"403 Forbidden: {forged}\n"), False
                reply = self._reset(m.group(1), req.base, req.referer, req.host)
                return reply, reply.status == 302
            return _not_found(), False
        return _not_allowed(), False

    def _index(self, as_json: bool, base: str) -> Reply:
        current = self.engine.current()
        at = self.engine.snapshot_at
        extra = [("Last-Modified", http_date(at)), ("Expires", http_date(at + self.engine.delay))]
        if as_json:
            body = render_index_json(
                current,
                updated_at=self.engine.updated_at,
                delay=self.engine.delay,
                error=self.engine.last_error,
                tail_streams=self.engine.subscribers,
            )
            return _reply(200, body, _JSON, extra)
        reports = {r.name: r for r in self.engine.reports()}
        body = render_index_html(
            current,
            reports,
            base=base,
            host=self.host,
            updated_at=self.engine.updated_at,
            error=self.engine.last_error,
        )
        return _reply(200, body, _HTML, extra)

    def _stats(self, kind: str, name: str, ext: str, base: str) -> Reply:
        report = self.engine.report(name)
        if report is None:
            return _not_found()
        stats = getattr(report, kind)
        expires = self.engine.next_sample_at()
        headers = stats_headers(stats, expires=expires)
        if ext == "txt":
            body = render_listener_text(report, kind)
        elif ext == "json":
            body = render_listener_json(report, kind)
        else:
            body = render_listener_html(report, kind, base=base, host=self.host, expires=expires)
        return _reply(200, body, _TYPES[ext], headers)

    def _tail(self, name: str, as_json: bool, query: str) -> Reply | TailPlan:
        if self.engine.report(name) is None:
            return _not_found()
        engine = self.engine
        if engine.subscribers >= engine.max_tail_streams:
            return _plain(
                503,
                f"503 Service Unavailable: {engine.subscribers} tail streams are open, "
                f"the most allowed (max_tail_streams={engine.max_tail_streams})\n",
                (("Retry-After", str(max(1, math.ceil(engine.delay)))),),
            )
        q = parse_qs(query, keep_blank_values=True)
        headers = (
            ("Content-Type", _NDJSON if as_json else _TEXT),
            ("Cache-Control", "no-transform"),
            ("Expires", _EPOCH_DATE),
        )
        return TailPlan(
            name,
            _threshold(q, "active_min"),
            _threshold(q, "queued_min"),
            as_json,
            self.tail_max_seconds,
            headers,
        )

    def _reset(self, name: str, base: str, referer: str | None, host: str | None) -> Reply:
        if not self.engine.reset(name):
            return _not_found()
        location = f"{base}/"
        if referer and host:
            parts = urlsplit(referer)
            if parts.netloc == host and parts.scheme in ("http", "https"):
                location = referer
        return _plain(302, f"Redirecting to {location}", (("Location", location),))

    # -- tail streams --------------------------------------------------------

    def _wait_step(self) -> float:
        return max(self.engine.delay * 2, 0.05)

    def tail(
        self, plan: TailPlan, gone: Callable[[], bool] | None = None
    ) -> Generator[bytes, None, None]:
        """The tail stream as a generator (blocking waits; for WSGI servers).

        Ends after ``plan.max_seconds``, when closed (the server closes a
        WSGI body when a write fails), or as soon as ``gone()`` (asked after
        every wait, at least every ``2 * delay`` s; see
        :func:`client_gone_probe`) says the client left.  Without ``gone``
        and without ``max_seconds`` it ends after
        :data:`UNPROBED_TAIL_SECONDS`.  Its subscription always ends.
        """
        limit = plan.max_seconds
        if limit is None and gone is None:
            limit = UNPROBED_TAIL_SECONDS
        event = threading.Event()
        try:
            sub = self.engine.subscribe(event.set)
        except TailStreamsFullError:  # filled since the plan was made: end, empty
            return
        deadline = None if limit is None else time.monotonic() + limit
        try:
            while True:
                step = self._wait_step()
                if deadline is not None:
                    step = min(step, deadline - time.monotonic())
                    if step <= 0:
                        return
                event.wait(step)
                event.clear()
                if gone is not None and gone():
                    return
                for at, values in sub.drain():
                    line = plan.line(at, values)
                    if line is not None:
                        yield line
        finally:
            sub.close()

    async def atail(self, plan: TailPlan) -> AsyncGenerator[bytes, None]:
        """The tail stream as an async generator (never blocks the loop; for ASGI).

        The adapter ends it on ``http.disconnect``; it also ends after
        ``plan.max_seconds``.
        """
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        try:
            sub = self.engine.subscribe(lambda: loop.call_soon_threadsafe(event.set))
        except TailStreamsFullError:  # filled since the plan was made: end, empty
            return
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
_INET_FAMILIES = (socket.AF_INET, socket.AF_INET6)


def last_data_recv_ms(info: object) -> int | None:
    """``tcpi_last_data_recv`` (milliseconds) from a ``linux_inet_diag.TcpInfo``, if present."""
    for attr in ("last_data_recv", "last_data_recv_ms", "tcpi_last_data_recv"):
        value = getattr(info, attr, None)
        if isinstance(value, int):
            return value
    return None


#: LastDataRecv's default segment name in the server's directory.
LAST_DATA_RECV_SEGMENT_NAME = "ldr"


#: The Ruby ``aggregate`` gem's log2 buckets that a millisecond count can reach:
#: ``[2**k, 2**(k+1))`` for k in 0..62; 0 is a low outlier.
_LDR_BOUNDS = tuple(2**k for k in range(64))

_TcpInfo: Any = None


def _tcp_info_class() -> Any:
    global _TcpInfo
    if _TcpInfo is None:
        from linux_inet_diag import TcpInfo

        _TcpInfo = TcpInfo
    return _TcpInfo


def _sample_std_dev_of(snap: Any) -> float | None:
    """The aggregate gem's (sample) standard deviation from a histogram snapshot.

    ``shm_counters`` reports the population one, ``sqrt(n*S2 - S*S) / n``; the
    integer under the root is recovered by rounding (exact while it stays
    below 2**50, far beyond any count of milliseconds), then the gem's own
    floating-point steps are replayed on the exact sums.
    """
    count, total, pop = snap.count, snap.sum, snap.stddev
    if count < 2 or pop is None:
        return None
    spread = round((pop * count) ** 2)  # n * S2 - S * S
    squares, rest = divmod(spread + total * total, count)
    if rest:
        return math.sqrt(spread / (count * (count - 1)))
    return sample_std_dev(count, total, squares)


class LastDataRecvCore:
    """Records each request's ``tcpi_last_data_recv`` (ms) in a shared histogram; reports it.

    The Ruby original's ``Raindrops::LastDataRecv`` without its message
    queue: the histogram is a ``shm_counters.Histogram`` shared by every
    worker, with the ``aggregate`` gem's log2 buckets (``[2**k, 2**(k+1))``;
    0 ms counts as a low outlier, as in Ruby).  Where: ``segment=`` (an
    absolute path, or ``"anonymous"``; checked as the middleware's
    ``segment``), else ``$RAINDROPS_LAST_DATA_RECV_SEGMENT``, else a path
    under ``/dev/shm`` derived from the listening socket the worker
    inherited (so forked and spawned workers agree with no configuration),
    else anonymous memory (shared across fork only).  It is opened on first
    use, after the server has set up.  ``histogram=`` supplies one directly
    (anything with ``record`` and a ``snapshot`` like shm-counters').

    Only the first request of each connection is recorded
    (:meth:`record_info`).  The report is at ``path`` (text) and
    ``path + ".json"``: :meth:`answer`.

    Example::

        >>> ldr = LastDataRecvCore(segment="anonymous")
        >>> ldr.record(3); ldr.record(5)
        >>> dict(ldr.reply("", None, as_json=False).headers)["X-Mean"]
        '4'
    """

    def __init__(
        self,
        *,
        path: str = DEFAULT_LAST_DATA_RECV_PATH,
        segment: str | os.PathLike[str] | None = None,
        histogram: Any = None,
    ) -> None:
        if not isinstance(path, str) or not path.startswith("/"):
            raise ConfigError(f"path must be a string starting with '/', not {path!r}")
        self.path = path
        self.json_path = path + ".json"
        checked: str | None
        if segment is not None:
            checked = check_segment(segment, SEGMENT_ENV)
        else:
            env = os.environ.get(LAST_DATA_RECV_SEGMENT_ENV) or None
            try:
                checked = None if env is None else check_segment(env, SEGMENT_ENV)
            except ConfigError as exc:
                raise ConfigError(f"${LAST_DATA_RECV_SEGMENT_ENV}: {exc}") from None
        self._segment = checked
        self._hist: Any = histogram
        #: Why this process's histogram is its own only (``None``: it is shared).
        self.unshared: str | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<LastDataRecvCore path={self.path!r} segment={self._segment!r}>"

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
            path = self._segment
            if path is None:
                found = server_segment(LAST_DATA_RECV_SEGMENT_NAME)
                path = found.path
                if path is None:
                    self.unshared = found.reason
                    logger.warning(
                        "raindrops LastDataRecv: %s; this process records into its own "
                        "memory, so the report misses other workers (name a segment: "
                        "segment='/dev/shm/NAME' or $%s)",
                        found.reason,
                        LAST_DATA_RECV_SEGMENT_ENV,
                    )
            if path == ANONYMOUS:
                path = None
            try:
                hist = Histogram(_LDR_BOUNDS, path=path)
            except (ShmCountersError, OSError) as exc:
                logger.warning(
                    "raindrops LastDataRecv: cannot open %s (%s); using memory shared "
                    "across fork() only",
                    path,
                    exc,
                )
                hist = Histogram(_LDR_BOUNDS)
            self._hist = hist
            return hist

    # -- recording -------------------------------------------------------------

    def record(self, ms: int) -> None:
        """Record one wait, in milliseconds (lock-free, one C call)."""
        hist = self._hist
        if hist is None:
            hist = self._open()
        hist.record(ms)

    def record_info(self, info: Any) -> bool:
        """Record ``tcpi_last_data_recv`` of a request's connection if it is its first request.

        The Ruby original read it once per connection, at ``accept()``; here
        it is read when a request reaches the app, so a later request on a
        keep-alive (or pipelined) connection would add a wait of about 0
        that is no queue wait.  The kernel tells them apart:
        ``tcpi_data_segs_out`` (Linux 4.6+) is 0 until the server first
        writes on the connection, i.e. during its first request only.
        Recorded: requests where it is 0, or where the kernel lacks it.  Not
        recorded: later requests; and also first requests after the server
        already wrote (an ``Expect: 100-continue`` answered before the app
        runs, a TLS handshake done by the server itself), whose last data
        is no longer the request's arrival.  ``True`` if recorded.
        """
        if info is None:
            return False
        ms = last_data_recv_ms(info)
        if ms is None or getattr(info, "data_segs_out", None):
            return False
        self.record(ms)
        return True

    def record_socket(self, sock: Any) -> bool:
        """:meth:`record_info` from a TCP client socket (``getsockopt(TCP_INFO)``).

        Anything else (a Unix socket, a closed one, not Linux) is not recorded.
        """
        if getattr(sock, "family", None) not in _INET_FAMILIES:
            return False
        try:
            info = _tcp_info_class().from_socket(sock)
        except (ImportError, OSError, ValueError):
            return False
        return self.record_info(info)

    # -- reporting -------------------------------------------------------------

    def answer(self, path: str, query: str, accept: str | None) -> Reply | None:
        """The report if ``path`` is the report's (or its ``.json`` twin), else ``None``.

        ``None`` means: not for us, record the request and pass it on.  Any
        method gets the report, as in Ruby (the adapter drops the body for
        ``HEAD``).
        """
        if path == self.path:
            return self.reply(query, accept, as_json=False)
        if path == self.json_path:
            return self.reply(query, accept, as_json=True)
        return None

    def not_found(self) -> Reply:
        """The answer to every other path when there is no app behind: 404 ``Not Found``."""
        return _not_found()

    def reply(self, query: str, accept: str | None, *, as_json: bool) -> Reply:
        """The report, as the Ruby original's: ``X-Count``, and when count > 1 the rest.

        ``X-Min``, ``X-Max``, ``X-Mean`` (rounded, halves away from zero, as
        Ruby's ``round``), ``X-Std-Dev`` (the gem's sample standard deviation,
        rounded), ``X-Outliers-Low`` (0 ms waits), ``X-Outliers-High``; the
        gem's text histogram.  JSON (an addition) when ``as_json`` (the
        ``.json`` path) or asked by ``?format=json`` or ``Accept``; a bad
        ``format`` is 400. A process that could not join its server's
        segment adds ``X-Raindrops-Unavailable: shared`` (and, in JSON,
        ``"unavailable": {"shared": REASON}``).
        """
        if not as_json:
            from ._snapshot import Format, negotiate

            try:
                as_json = negotiate(accept, query) is Format.JSON
            except FormatError as exc:
                return _plain(400, f"400 Bad Request: {exc}\n")
        snap = self.histogram.snapshot()
        std_dev = _sample_std_dev_of(snap)
        headers = [("X-Count", str(snap.count))]
        unavailable = {} if self.unshared is None else {"shared": self.unshared}
        if snap.count > 1:
            headers += [
                ("X-Min", str(snap.min)),
                ("X-Max", str(snap.max)),
                ("X-Mean", str(ruby_round(snap.mean))),
                ("X-Std-Dev", str(ruby_round(std_dev or 0.0))),
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
                "std_dev": std_dev,
                "outliers_low": snap.outliers_low,
                "outliers_high": snap.outliers_high,
                "buckets": [{"low": lo, "high": hi, "count": c} for lo, hi, c in snap.buckets if c],
                "unavailable": unavailable,
            }
            if unavailable:
                headers.append((UNAVAILABLE_HEADER, "shared"))
            return _reply(200, (json.dumps(doc) + "\n").encode(), _JSON, headers)
        if unavailable:
            headers.append((UNAVAILABLE_HEADER, "shared"))
        body = histogram_text(snap.buckets).encode()
        return _reply(200, body, _TEXT, headers)


def set_defer_accept(sock: Any, seconds: int = 1) -> bool:
    """Set ``TCP_DEFER_ACCEPT`` on a listening TCP socket; ``False`` where unsupported.

    The kernel then keeps a connection out of the accept queue (and out of
    ``queued``) until the client has sent data, for up to about ``seconds``,
    so no worker accepts a connection that has nothing to read.  The Ruby
    original needed it because it read ``tcpi_last_data_recv`` at
    ``accept()``; LastDataRecv here reads it when the request reaches the
    app, which is the time since the request's last bytes arrived with or
    without it.  Unix sockets and systems without the option are left alone.
    For gunicorn, in ``gunicorn.conf.py``::

        from raindrops_core.watcher import set_defer_accept

        def when_ready(server):
            for listener in server.LISTENERS:
                set_defer_accept(listener.sock)
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 1:
        raise ConfigError(f"seconds must be a positive int, not {seconds!r}")
    opt = getattr(socket, "TCP_DEFER_ACCEPT", None)
    if opt is None or getattr(sock, "family", None) not in _INET_FAMILIES:
        return False
    sock.setsockopt(socket.IPPROTO_TCP, opt, seconds)
    return True
