"""The ASGI glue: count ``calling``/``writing`` around the app, serve the endpoint.

Pure ASGI (no ``BaseHTTPMiddleware``): per-request state lives in locals
and one closure, bookkeeping in ``try/finally``.  Everything else is
:class:`raindrops_core.RaindropsState`.
"""

from __future__ import annotations

from raindrops_core.adapter import (
    ASGIApp,
    Message,
    Middleware,
    Peer,
    Receive,
    Reply,
    Scope,
    Send,
    app_path,
)
from starlette.datastructures import Headers
from starlette.responses import Response

__all__ = ["RaindropsMiddleware", "send_reply"]

_CALLING, _WRITING, _DONE = 1, 2, 3


async def send_reply(reply: Reply, scope: Scope, receive: Receive, send: Send) -> None:
    """Send one of the core's final replies (``HEAD`` already applied) with Starlette.

    The reply's body is sent as it is: the core has already left it empty
    for ``HEAD``.
    """
    response = Response(reply.body, status_code=reply.status)
    response.raw_headers = [
        (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers
    ]
    await response(scope, receive, send)


def _is_last(message: Message, trailers: bool) -> bool:
    """Whether ``message`` ends the response (body, pathsend, zero-copy, trailers)."""
    kind = message["type"]
    if kind == "http.response.body" or kind == "http.response.zerocopysend":
        return not trailers and not message.get("more_body", False)
    if kind == "http.response.pathsend":
        return True
    if kind == "http.response.trailers":
        return not message.get("more_trailers", False)
    return False


class RaindropsMiddleware(Middleware[ASGIApp]):
    """Pure ASGI middleware: raindrops gauges around ``app``, the stats endpoint at ``path``.

    ``calling`` counts HTTP requests from entering ``app`` until it sends
    ``http.response.start``; ``writing`` counts them from then until the last
    body message has been sent (``more_body`` false, or
    ``http.response.pathsend``, or the last trailers), or until ``app``
    raises or is cancelled.  Exceptions propagate and leave the gauges exact.
    Lifespan and websocket scopes pass through untouched (at lifespan
    startup, the scoreboard is opened in a thread first).  A request to
    ``path`` below the app's mount point (``scope["root_path"]``, as set by
    Starlette's ``Mount`` or ``uvicorn --root-path``; any method; no body for
    ``HEAD``) answers the snapshot of every worker, read without blocking
    the event loop, and is not counted itself.

    ``RaindropsMiddleware(app, *, path="/_raindrops", listeners=None,
    segment=None, allow=DEFAULT_ALLOW, slots=256, state=None)``: the options
    of :class:`raindrops_core.RaindropsState`, or a ready ``state``.

    Example::

        from starlette.applications import Starlette
        from raindrops_asgi import RaindropsMiddleware

        app = RaindropsMiddleware(Starlette(routes=...))
        # uvicorn --workers 4 app:app ; curl http://127.0.0.1:8000/_raindrops
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "lifespan" and self.state.steps is None:
                # At startup, in a thread: the scoreboard, the row, the listeners
                # (or, where the server has no socket yet, at the first request).
                await self.state.astartup()
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path.endswith(self._path) and app_path(path, scope.get("root_path", "")) == self._path:
            await self._endpoint(scope, receive, send)
            return
        steps = self.state.steps
        if steps is None:
            steps = await self.state.aprepare()
        phase = _CALLING
        trailers = False

        async def counted_send(message: Message) -> None:
            nonlocal phase, trailers
            if phase == _CALLING:
                if message["type"] == "http.response.start":
                    phase = _WRITING
                    trailers = bool(message.get("trailers", False))
                    steps.decr_calling()
                    steps.incr_writing()
                await send(message)
                return
            await send(message)
            if phase == _WRITING:
                if message["type"] == "http.response.body":
                    if trailers or message.get("more_body", False):
                        return
                elif not _is_last(message, trailers):
                    return
                phase = _DONE
                steps.decr_writing()

        steps.incr_calling()
        try:
            await self.app(scope, receive, counted_send)
        finally:
            if phase == _CALLING:
                steps.decr_calling()
            elif phase == _WRITING:
                steps.decr_writing()

    async def _endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Read off the loop, reply with the core's final answer."""
        reply = await self.state.arespond(
            scope.get("method", "GET"),
            Peer.from_asgi(scope),
            Headers(scope=scope).get("accept"),
            bytes(scope.get("query_string", b"")).decode("latin-1"),
        )
        await send_reply(reply, scope, receive, send)
