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
  the per-request :class:`Steps`, the scoreboard's :data:`FIELDS` and the
  default segment's :data:`SEGMENT_NAME`, and what a snapshot may lack:
  :data:`UNAVAILABLE_HEADER`, :data:`UNAVAILABLE_PARTS`,
  :func:`unavailable_header`.
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
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from types import TracebackType
from typing import Any, Generic, TypeVar

from ._access import DEFAULT_ALLOW, FORWARDING_HEADERS, AccessList, Peer, listens_on_unix
from ._http import Reply, app_path
from ._prometheus import snapshot_families
from ._reads import Kernel
from ._snapshot import UNAVAILABLE_HEADER, UNAVAILABLE_PARTS, unavailable_header
from ._state import DEFAULT_PATH, DEFAULT_SLOTS, FIELDS, SEGMENT_NAME, RaindropsState, Steps

__all__ = [
    "FIELDS",
    "FORWARDING_HEADERS",
    "SEGMENT_NAME",
    "UNAVAILABLE_HEADER",
    "UNAVAILABLE_PARTS",
    "ASGIApp",
    "AccessList",
    "Environ",
    "ExcInfo",
    "Kernel",
    "Message",
    "Middleware",
    "Peer",
    "Receive",
    "Reply",
    "Scope",
    "Send",
    "StartResponse",
    "Steps",
    "WSGIApp",
    "app_path",
    "asgi_header",
    "asgi_query",
    "listens_on_unix",
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
