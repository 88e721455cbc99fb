"""Every HTTP decision of the Watcher app, shared by both adapters.

:class:`WatcherCore` maps ``(method, path, query)`` to a final
:class:`~raindrops_core.adapter.Reply` (``HEAD`` applied) or to a
:class:`TailPlan` (a stream the adapter serves with :meth:`WatcherCore.tail`
or :meth:`WatcherCore.atail`), and waits where the Ruby original waited.
What a request does is described once, as steps (start the sampler, wait
past a round, the tail's waits and lines); :meth:`~WatcherCore.serve` and
:meth:`~WatcherCore.tail` run them blocking (threaded servers),
:meth:`~WatcherCore.aserve` and :meth:`~WatcherCore.atail` on an event
loop.  The adapters only move bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import select
import socket
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict, cast
from urllib.parse import parse_qs, urlsplit

from linux_inet_diag import escape_name

from ._access import DEFAULT_ALLOW, AccessList, Peer
from ._errors import ConfigError, TailStreamsFullError
from ._http import Reply, reply, text_reply
from ._reads import Kernel
from ._watch_engine import (
    DEFAULT_DELAY,
    DEFAULT_HISTORY,
    AsyncFetch,
    Fetch,
    Subscription,
    WatcherEngine,
)
from ._watch_render import (
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

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "FIRST_SAMPLE_WAIT",
    "UNPROBED_TAIL_SECONDS",
    "RequestInfo",
    "TailPlan",
    "WatcherCore",
    "client_gone_probe",
    "cross_origin_refusal",
]

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


def _not_found() -> Reply:
    return text_reply(404, "Not Found")


def _not_allowed() -> Reply:
    return text_reply(405, "Method Not Allowed", (("Allow", ", ".join(_ALLOWED)),))


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


class RequestInfo(TypedDict, total=False):
    """What :meth:`WatcherCore.handle` / ``serve`` / ``aserve`` take about a request, by keyword.

    ``base``: the mount point (``SCRIPT_NAME``, ``root_path``; default
    ``""``), for links and redirects.  ``referer``, ``host``, ``origin``,
    ``fetch_site``: the ``Referer``, ``Host``, ``Origin`` and
    ``Sec-Fetch-Site`` headers (default: absent).  ``peer``: who asks, a
    :class:`~raindrops_core.adapter.Peer` or a bare IP address of a direct
    TCP client (default ``None``: no address, refused).
    """

    base: str
    referer: str | None
    host: str | None
    peer: Peer | str | None
    origin: str | None
    fetch_site: str | None


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str
    query: str
    base: str = ""
    referer: str | None = None
    host: str | None = None
    peer: Peer | str | None = None
    origin: str | None = None
    fetch_site: str | None = None


class WatcherCore:
    """The Watcher app without a framework: access, routing, pages, tail streams.

    ``listeners``, ``delay``, ``history``, ``clock``, ``fetch``, ``afetch``,
    ``kernel`` configure the :class:`~raindrops_core.watcher.WatcherEngine`
    it owns (or pass ``engine=``).  ``tail_max_seconds`` ends every tail stream after
    that long (``None``: when the client goes away; where that cannot be
    told, after :data:`UNPROBED_TAIL_SECONDS`).  ``allow`` is who may read
    it, as the stats endpoint's (:class:`~raindrops_core.AccessList`:
    loopback and local Unix peers by default): the pages list every
    listener on the machine, other users' too.

    Adapters call :meth:`serve` (threaded servers) or :meth:`aserve` (an
    event loop) with the request's :class:`~raindrops_core.adapter.Peer` and
    its ``Origin``/``Sec-Fetch-Site`` headers, send the :class:`Reply` as it
    is (final: ``HEAD`` already applied) and stream a :class:`TailPlan`
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
        kernel: Kernel | None = None,
    ) -> None:
        self.access = AccessList.parse(allow)
        if engine is None:
            engine = WatcherEngine(
                listeners,
                delay=delay,
                history=history,
                clock=clock,
                fetch=fetch,
                afetch=afetch,
                kernel=kernel,
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
        self, method: str, path: str, query: str, **info: Unpack[RequestInfo]
    ) -> Reply | TailPlan:
        """Answer one request (``path`` decoded, below the mount point ``base``), never waiting.

        ``info`` is the rest of the request (:class:`RequestInfo`: ``base``,
        ``referer``, ``host``, ``peer``, ``origin``, ``fetch_site``).  First
        who asks: ``peer`` (a :class:`~raindrops_core.adapter.Peer`, or a bare
        IP address of a direct TCP client; ``None``, no address, is refused)
        is decided by ``allow``: a refused one gets ``403`` with the reason
        (``text/plain``, ``X-Content-Type-Options: nosniff``).  Then, as the
        Ruby original: ``GET``/``HEAD`` of ``/``, ``/active|queued/<L>.txt|.html``
        and ``/tail/<L>.txt``, ``POST /reset/<L>``; any other path is 404
        (also a ``GET`` of ``/reset/<L>`` or a ``POST`` elsewhere), any other
        method 405 (with ``Allow``, an addition).  A reset is refused (403)
        unless it comes from the Watcher's own pages or from no browser
        (:func:`cross_origin_refusal` of ``origin``, ``fetch_site``, ``host``); a tail
        beyond ``max_tail_streams`` open ones is 503.  The :class:`Reply` is
        final: for ``HEAD``, the same headers and no body (a tail's too).
        """
        req = _Request(method, path, query, **info)
        return self._route(req)[0]

    def serve(
        self, method: str, path: str, query: str, **info: Unpack[RequestInfo]
    ) -> Reply | TailPlan:
        """:meth:`handle` for a threaded server (WSGI), with the Ruby original's waits.

        Starts this process's sampler thread on first use (for an allowed
        client) and waits (at most :data:`FIRST_SAMPLE_WAIT`) for its first
        round; after a reset, waits as long for the next round before
        redirecting, so the page the client comes back to has a sample again.
        """
        req = _Request(method, path, query, **info)
        steps = self._serve_steps(req)
        try:
            after = next(steps)
            while True:
                if after is None:
                    self.start_thread()
                else:
                    self.engine.wait_round(after, self._first_wait())
                after = next(steps)
        except StopIteration as done:
            return cast("Reply | TailPlan", done.value)

    async def aserve(
        self, method: str, path: str, query: str, **info: Unpack[RequestInfo]
    ) -> Reply | TailPlan:
        """:meth:`serve` for an event loop (ASGI): the same steps, never blocking the loop."""
        req = _Request(method, path, query, **info)
        steps = self._serve_steps(req)
        try:
            after = next(steps)
            while True:
                if after is None:
                    await self.astart()
                else:
                    await self.engine.await_round(after, self._first_wait())
                after = next(steps)
        except StopIteration as done:
            return cast("Reply | TailPlan", done.value)

    def _serve_steps(self, req: _Request) -> Generator[int | None, None, Reply | TailPlan]:
        """A request with the Ruby original's waits, as steps (no I/O, no waiting here).

        Yields ``None`` for "start this process's sampler and wait (bounded)
        for its first round", then, after a reset, the round number to wait
        past; returns the answer.  A refused client starts nothing.
        """
        refused = self._refused(req)
        if refused is not None:
            return refused.for_method(req.method)
        yield None
        rounds = self.engine.rounds
        answer, settle = self._route(req)
        if settle:
            yield rounds
        return answer

    def _refused(self, req: _Request) -> Reply | None:
        reason = self.access.refusal(req.peer)
        if reason is None:
            return None
        return text_reply(403, f"403 Forbidden: {reason}\n")

    def _route(self, req: _Request) -> tuple[Reply | TailPlan, bool]:
        """The final answer, and whether to wait past the next round (a reset) before it."""
        answer, settle = self._answer(req)
        if req.method == "HEAD":
            if isinstance(answer, TailPlan):
                return Reply(200, answer.headers, b""), settle
            return answer.for_method("HEAD"), settle
        return answer, settle

    def _answer(self, req: _Request) -> tuple[Reply | TailPlan, bool]:
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
                    return text_reply(403, f"403 Forbidden: {forged}\n"), False
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
            return reply(200, body, _JSON, lead=extra)
        reports = {r.name: r for r in self.engine.reports()}
        body = render_index_html(
            current,
            reports,
            base=base,
            host=self.host,
            updated_at=self.engine.updated_at,
            error=self.engine.last_error,
            refresh=self.engine.delay,
        )
        return reply(200, body, _HTML, lead=extra)

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
            body = render_listener_html(
                report, kind, base=base, host=self.host, expires=expires, refresh=self.engine.delay
            )
        return reply(200, body, _TYPES[ext], lead=headers)

    def _tail(self, name: str, as_json: bool, query: str) -> Reply | TailPlan:
        if self.engine.report(name) is None:
            return _not_found()
        engine = self.engine
        if engine.subscribers >= engine.max_tail_streams:
            return text_reply(
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
        return text_reply(302, f"Redirecting to {location}", (("Location", location),))

    # -- tail streams --------------------------------------------------------

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
        try:
            for step in self._tail_steps(plan, sub, limit, gone):
                if isinstance(step, bytes):
                    yield step
                else:
                    event.wait(step)
                    event.clear()
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
        try:
            for step in self._tail_steps(plan, sub, plan.max_seconds, None):
                if isinstance(step, bytes):
                    yield step
                else:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(event.wait(), step)
                    event.clear()
        finally:
            sub.close()

    def _tail_steps(
        self,
        plan: TailPlan,
        sub: Subscription,
        limit: float | None,
        gone: Callable[[], bool] | None,
    ) -> Generator[bytes | float, None, None]:
        """A tail stream as steps: yields a line to write, or how long to wait at most.

        The runner waits that long, or until the subscription's waker fires
        (the next round), then resumes it; it ends after ``limit`` seconds,
        or once ``gone()`` says the client left.
        """
        deadline = None if limit is None else time.monotonic() + limit
        while True:
            step = max(self.engine.delay * 2, 0.05)
            if deadline is not None:
                step = min(step, deadline - time.monotonic())
                if step <= 0:
                    return
            yield step
            if gone is not None and gone():
                return
            for at, values in sub.drain():
                line = plan.line(at, values)
                if line is not None:
                    yield line
