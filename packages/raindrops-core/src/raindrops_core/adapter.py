"""For adapter authors: the WSGI and ASGI types, and the few helpers every adapter needs.

Users of the middleware never import this module. The adapters of this
family (raindrops-wsgi, raindrops-asgi, process-utilization's two) take
their protocol types and the shared request helpers from here, so each is
written once; Starlette keeps its ASGI aliases the same way, in one small
``types`` module.

- WSGI (PEP 3333): :data:`Environ`, :data:`StartResponse`, :data:`WSGIApp`,
  :data:`ExcInfo`.
- ASGI: :data:`Scope`, :data:`Message`, :data:`Receive`, :data:`Send`,
  :data:`ASGIApp`, and :func:`asgi_header`, :func:`asgi_query`.
- Who may read: :class:`Peer` (``Peer.from_wsgi(environ)``,
  ``Peer.from_asgi(scope)``) judged by an :class:`AccessList`;
  :data:`FORWARDING_HEADERS`, :func:`listens_on_unix`.
- Mount points: :func:`app_path` (the path below an ASGI ``root_path``).
- Where the kernel's figures come from: :class:`Kernel` (the seam tests
  replace).
- The endpoint's final answer, :class:`Reply` (``HEAD`` already applied),
  made by :func:`reply` (type and length first) or :func:`plain` (a
  refusal, not sniffed), the per-request :class:`Steps`, the scoreboard's :data:`FIELDS` and the
  default segment's :data:`SEGMENT_NAME`, and what a snapshot may lack:
  :data:`UNAVAILABLE_HEADER`, :data:`UNAVAILABLE_PARTS`,
  :func:`unavailable_header`.
- The one constructor of each app: :class:`Middleware` (the stats
  endpoint), :class:`WatcherApp` (the Watcher), :class:`LastDataRecvApp`
  (LastDataRecv); each adapter adds only its protocol's ``__call__``.
- The Watcher's HTTP core: :class:`WatcherCore` (final replies, or a
  :class:`TailPlan` to stream with ``tail``/``atail``; what it takes of
  a request: :class:`RequestInfo`), the
  :func:`client_gone_probe` for WSGI tails, the reset's
  :func:`cross_origin_refusal`, the reads it may be given
  (:data:`Fetch`, :data:`AsyncFetch`); LastDataRecv's
  :class:`LastDataRecvCore` (``record_socket``, ``arecord_address``,
  ``answer``), :data:`TcpInfoFor` and :func:`last_data_recv_ms`.
- Prometheus families of many labelled snapshots (one per server, for a
  reader of many servers such as raindrops-exporter): :func:`snapshot_families`.

Example::

    from raindrops_core.adapter import ASGIApp, Peer, Receive, Scope, Send, asgi_header

    class Middleware:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            accept = asgi_header(scope, b"accept")
            ...
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from types import TracebackType
from typing import Any, Generic, TypeVar

from ._access import DEFAULT_ALLOW, FORWARDING_HEADERS, AccessList, Peer, listens_on_unix
from ._http import Reply, app_path, plain, reply
from ._ldr import DEFAULT_LAST_DATA_RECV_PATH, LastDataRecvCore, TcpInfoFor, last_data_recv_ms
from ._prometheus import snapshot_families
from ._reads import Kernel
from ._snapshot import UNAVAILABLE_HEADER, UNAVAILABLE_PARTS, unavailable_header
from ._state import DEFAULT_PATH, DEFAULT_SLOTS, FIELDS, SEGMENT_NAME, RaindropsState, Steps
from ._watch_engine import DEFAULT_DELAY, DEFAULT_HISTORY, AsyncFetch, Fetch
from ._watch_http import (
    RequestInfo,
    TailPlan,
    WatcherCore,
    client_gone_probe,
    cross_origin_refusal,
)

__all__ = [
    "FIELDS",
    "FORWARDING_HEADERS",
    "SEGMENT_NAME",
    "UNAVAILABLE_HEADER",
    "UNAVAILABLE_PARTS",
    "ASGIApp",
    "AccessList",
    "AsyncFetch",
    "Environ",
    "ExcInfo",
    "Fetch",
    "Kernel",
    "LastDataRecvApp",
    "LastDataRecvCore",
    "Message",
    "Middleware",
    "Peer",
    "Receive",
    "Reply",
    "RequestInfo",
    "Scope",
    "Send",
    "StartResponse",
    "Steps",
    "TailPlan",
    "TcpInfoFor",
    "WSGIApp",
    "WatcherApp",
    "WatcherCore",
    "app_path",
    "asgi_header",
    "asgi_query",
    "client_gone_probe",
    "cross_origin_refusal",
    "last_data_recv_ms",
    "listens_on_unix",
    "plain",
    "reply",
    "snapshot_families",
    "unavailable_header",
]

#: PEP 3333's ``exc_info``: what ``sys.exc_info()`` returns, or ``None``.
ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | None
#: The WSGI environ.
Environ = dict[str, Any]
#: ``start_response(status, headers, exc_info=None) -> write``.
StartResponse = Callable[..., Callable[[bytes], object]]
#: A WSGI application.
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

#: The ASGI connection scope.
Scope = MutableMapping[str, Any]
#: An ASGI event (received or sent).
Message = MutableMapping[str, Any]
#: ASGI ``receive()``.
Receive = Callable[[], Awaitable[Message]]
#: ASGI ``send(message)``.
Send = Callable[[Message], Awaitable[None]]
#: An ASGI application.
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def asgi_header(scope: Scope, name: bytes) -> str | None:
    """The first request header ``name`` (lower-case bytes), latin-1 decoded, or ``None``.

    Example::

        >>> asgi_header({"headers": [(b"accept", b"text/plain")]}, b"accept")
        'text/plain'
    """
    for key, value in scope.get("headers", ()):
        if bytes(key).lower() == name:
            return bytes(value).decode("latin-1")
    return None


def asgi_query(scope: Scope) -> str:
    """The raw query string of an ASGI request, latin-1 decoded (``""`` when none).

    Example::

        >>> asgi_query({"query_string": b"format=json"})
        'format=json'
    """
    return bytes(scope.get("query_string", b"")).decode("latin-1")


App = TypeVar("App")


class Middleware(Generic[App]):
    """The one constructor of the raindrops middleware, WSGI and ASGI alike.

    ``RaindropsMiddleware(app, *, path="/_raindrops", listeners=None,
    segment=None, allow=DEFAULT_ALLOW, slots=256, state=None)``: the options
    are those of :class:`~raindrops_core.RaindropsState`, which checks them
    (``ConfigError`` at construction) and holds them; or pass a ready
    ``state`` (several apps sharing one). Each adapter subclasses this and
    adds only its protocol's ``__call__``.

    Example::

        class RaindropsMiddleware(Middleware[WSGIApp]):
            def __call__(self, environ, start_response): ...
    """

    def __init__(
        self,
        app: App,
        *,
        path: str = DEFAULT_PATH,
        listeners: Iterable[str] | None = None,
        segment: str | os.PathLike[str] | None = None,
        allow: Iterable[str] | AccessList = DEFAULT_ALLOW,
        slots: int = DEFAULT_SLOTS,
        state: RaindropsState | None = None,
    ) -> None:
        self.app = app
        if state is None:
            state = RaindropsState(
                path=path, listeners=listeners, segment=segment, allow=allow, slots=slots
            )
        self.state = state
        self._path = state.path

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.app!r}, state={self.state!r})"


class WatcherApp:
    """The one constructor of the Watcher apps, WSGI and ASGI alike.

    ``Watcher(listeners=None, *, delay=1.0, history=300,
    tail_max_seconds=None, fetch=None, afetch=None, clock=None,
    allow=DEFAULT_ALLOW, kernel=None)``: the Ruby original's
    ``Raindrops::Watcher``.  It samples ``listeners`` (default: every
    listener on the machine) every ``delay`` seconds, one sampler per
    process, and serves ``GET /`` (HTML index), ``/index.json``,
    ``/active/<L>.txt|.html|.json``, ``/queued/<L>.txt|.html|.json``,
    ``/tail/<L>.txt|.json?active_min=N&queued_min=N`` (streamed) and
    ``POST /reset/<L>`` (302 back once the next sample is in); ``<L>`` is
    the URL-escaped listener name (``0.0.0.0%3A80``).  ``tail_max_seconds``
    ends every tail stream after that long.  ``fetch``/``afetch`` (the
    blocking and the event-loop read), ``kernel`` (where the figures come
    from: :class:`Kernel`) and ``clock`` replace the netlink query and the
    wall clock (tests).

    ``allow`` is who may use it, as for the stats endpoint (loopback and
    local Unix-socket peers by default; networks or an :class:`AccessList`):
    the pages list every listener of the machine, other users' included.  A
    reset from another site's page (a cross-site form) is refused
    (:func:`cross_origin_refusal`).  Everything else is :class:`WatcherCore`
    (``self.core``) and its :class:`~raindrops_core.watcher.WatcherEngine`
    (``self.engine``); each adapter subclasses this and adds its protocol's
    ``__call__`` and the sampler's start and stop.

    Example::

        class Watcher(WatcherApp):
            def __call__(self, environ, start_response): ...
    """

    def __init__(
        self,
        listeners: Sequence[str] | None = None,
        *,
        delay: float = DEFAULT_DELAY,
        history: int = DEFAULT_HISTORY,
        tail_max_seconds: float | None = None,
        fetch: Fetch | None = None,
        afetch: AsyncFetch | None = None,
        clock: Callable[[], float] | None = None,
        allow: Iterable[str] | AccessList = DEFAULT_ALLOW,
        kernel: Kernel | None = None,
    ) -> None:
        self.core = WatcherCore(
            listeners,
            delay=delay,
            history=history,
            clock=time.time if clock is None else clock,
            fetch=fetch,
            afetch=afetch,
            tail_max_seconds=tail_max_seconds,
            allow=allow,
            kernel=kernel,
        )
        self.engine = self.core.engine

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.engine!r}>"


class LastDataRecvApp(Generic[App]):
    """The one constructor of the LastDataRecv middleware, WSGI and ASGI alike.

    ``LastDataRecv(app=None, *, path="/raindrops/last_data_recv",
    segment=None, histogram=None, tcp_info_for=None, kernel=None)``: records
    how long each request waited to be accepted (``tcpi_last_data_recv``,
    ms, for the first request of each connection) in a histogram shared by
    every worker, then calls ``app``; any request to ``path`` answers, as
    the Ruby original, ``X-Count`` (and ``X-Min``, ``X-Max``, ``X-Mean``,
    ``X-Std-Dev``, ``X-Outliers-Low``, ``X-Outliers-High`` once count > 1)
    and a text histogram; ``path.json`` (or ``?format=json``, or ``Accept:
    application/json``) answers JSON.  With ``app=None`` it only reports
    (404 elsewhere).  The options are :class:`LastDataRecvCore`'s
    (``self.core``: ``segment``, which requests count, ``tcp_info_for`` for
    event loops); each adapter subclasses this and adds its protocol's
    ``__call__``.

    Example::

        class LastDataRecv(LastDataRecvApp[WSGIApp]):
            def __call__(self, environ, start_response): ...
    """

    def __init__(
        self,
        app: App | None = None,
        *,
        path: str = DEFAULT_LAST_DATA_RECV_PATH,
        segment: str | os.PathLike[str] | None = None,
        histogram: Any = None,
        tcp_info_for: TcpInfoFor | None = None,
        kernel: Kernel | None = None,
    ) -> None:
        self.app = app
        self.core = LastDataRecvCore(
            path=path,
            segment=segment,
            histogram=histogram,
            tcp_info_for=tcp_info_for,
            kernel=kernel,
        )
        self.path = self.core.path

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.app!r} path={self.path!r}>"

    def close(self) -> None:
        """Close this process's netlink socket, if one is open (reopened when needed)."""
        self.core.close()
