"""Pure ASGI middleware (no Starlette needed)."""

from __future__ import annotations

import sys
from threading import get_ident as _get_ident
from typing import Any, ClassVar

from raindrops_core.adapter import (
    ASGIApp,
    Message,
    Peer,
    Receive,
    Scope,
    Send,
    app_path,
    asgi_header,
    asgi_query,
)

from ._core import UtilizationCore

__all__ = ["ProcessUtilization"]


class ProcessUtilization(UtilizationCore):
    """ASGI middleware measuring how busy this worker process is.

    The same accounting and attributes as the WSGI middleware: busy time is
    the time with at least one HTTP request in flight, however many run at
    once in the event loop. A request counts as finished when the
    application returns. ``scope["process.request_start"]`` and
    ``scope["process.total_requests"]`` are set and an ``x-request-start``
    header is removed. The periodic report line goes to ``sys.stderr`` (the
    ASGI analogue of ``wsgi.errors``), or to ``report_to`` (a logger or a
    stream). Non-HTTP scopes (websocket, lifespan) pass through untouched.
    ``stats_path`` is matched below the app's mount point
    (``scope["root_path"]``: Starlette's ``Mount``, ``uvicorn --root-path``).

    Example::

        from process_utilization.asgi import ProcessUtilization

        app = ProcessUtilization(app, stats_path="/_utilization")
    """

    __slots__ = ("app",)

    singleton: ClassVar[ProcessUtilization | None] = None

    def __init__(self, app: ASGIApp, **options: Any) -> None:
        super().__init__(**options)
        self.app = app

    def __repr__(self) -> str:
        return f"<asgi.ProcessUtilization app={self.app!r} window={self.window}>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        stats_path = self.stats_path
        if stats_path is not None:
            path = scope.get("path", "")
            # Below the app's mount point (root_path), as raindrops' endpoint.
            if path.endswith(stats_path) and (
                app_path(path, scope.get("root_path", "")) == stats_path
            ):
                await self._serve_stats(scope, send)
                return
        # The accounting runs on the event loop's thread with no await
        # inside, so it takes no lock until a request comes from another
        # thread (a second event loop), which makes it threaded for good (_guard).
        if not self._threaded and _get_ident() != self._owner:
            self._foreign_thread()
        started = self._enter(scope)
        headers = scope.get("headers")
        if headers:
            for key, _ in headers:
                if key == b"x-request-start":
                    scope["headers"] = [(k, v) for k, v in headers if k != b"x-request-start"]
                    break
        if started is None:  # the clock failed: pass through, uncounted
            await self.app(scope, receive, send)
            return
        if self._statsd is not None:
            await self._call_with_statsd(scope, receive, send, started)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            line = self._leave(started)
            if line is not None:
                self._emit(line, sys.stderr)

    async def _call_with_statsd(
        self, scope: Scope, receive: Receive, send: Send, started: int
    ) -> None:
        status: list[int | None] = [None]

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message.get("status")
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # As rack-statsd: nothing is sent for an app that fails before
            # it starts a response; once started, the status is known.
            line = self._leave(started, scope.get("method"), status[0])
            if line is not None:
                self._emit(line, sys.stderr)

    async def _serve_stats(self, scope: Scope, send: Send) -> None:
        reply = self._endpoint.answer(
            Peer.from_asgi(scope),
            asgi_query(scope),
            asgi_header(scope, b"accept") or "",
            self.render_stats,
            self.unshared,
        )
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers]
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})
