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
  ``Peer.from_asgi(scope)``) judged by an :class:`AccessList`.
- Mount points: :func:`app_path` (the path below an ASGI ``root_path``).
- The endpoint's answer, :class:`Reply`, the per-request :class:`Steps`,
  and :data:`UNAVAILABLE_HEADER`.

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

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from types import TracebackType
from typing import Any

from ._access import AccessList, Peer
from ._state import UNAVAILABLE_HEADER, Reply, Steps, app_path

__all__ = [
    "UNAVAILABLE_HEADER",
    "ASGIApp",
    "AccessList",
    "Environ",
    "ExcInfo",
    "Message",
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
