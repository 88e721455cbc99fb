"""ASGI apps watching the server over time: :class:`Watcher` and :class:`LastDataRecv`.

Pure ASGI, protocol glue only: the constructors, sampling, statistics,
pages, routing and final replies are raindrops-core's
(:class:`raindrops_core.adapter.WatcherApp`,
:class:`raindrops_core.adapter.LastDataRecvApp`); this module reads the
scope (Starlette's ``Headers``), sends the replies (Starlette's
``Response``, through :func:`raindrops_asgi._middleware.send_reply`) and
streams the tail until ``http.disconnect``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from urllib.parse import unquote_to_bytes

from raindrops_core.adapter import (
    ASGIApp,
    LastDataRecvApp,
    Peer,
    Receive,
    Reply,
    Scope,
    Send,
    TailPlan,
    WatcherApp,
    app_path,
    asgi_query,
)
from raindrops_core.watcher import set_defer_accept
from starlette.datastructures import Headers

from ._middleware import send_reply

__all__ = ["LastDataRecv", "Watcher", "set_defer_accept"]


def _lossless_path(scope: Scope) -> str:
    """``scope["path"]``, or the same path from ``raw_path`` where the server lost bytes.

    Servers decode the path as UTF-8 with replacement (``%E9`` becomes
    U+FFFD); listener names keep a byte that is not UTF-8 as a
    ``surrogateescape`` code point.  When ``raw_path`` decoded that way reads
    as ``path`` once its own bad bytes are replaced, it is the same path,
    losslessly, and is used (so ``/queued/%2Ftmp%2Fcaf%E9.sock.txt`` finds
    ``/tmp/caf\\xe9.sock``).
    """
    path = scope.get("path", "") or ""
    raw = scope.get("raw_path")
    if "\ufffd" not in path or not isinstance(raw, (bytes, bytearray)):
        return str(path)
    exact = unquote_to_bytes(bytes(raw)).decode("utf-8", "surrogateescape")
    if exact.encode("utf-8", "surrogateescape").decode("utf-8", "replace") == path:
        return exact
    return str(path)


def _path_below_root(scope: Scope) -> tuple[str, str]:
    """``(base, path)``: the mount point and the path below it (the core's one rule)."""
    root = scope.get("root_path", "") or ""
    return root, app_path(_lossless_path(scope), root)


async def _lifespan(
    receive: Receive,
    send: Send,
    start: Callable[[], Awaitable[None]],
    stop: Callable[[], Awaitable[None]],
) -> None:
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "lifespan.startup":
            await start()
            await send({"type": "lifespan.startup.complete"})
        elif kind == "lifespan.shutdown":
            await stop()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _nothing() -> None:
    return None


class Watcher(WatcherApp):
    """The Ruby original's Raindrops::Watcher as a pure ASGI app (mount it under any prefix).

    The options, routes and access rule are
    :class:`raindrops_core.adapter.WatcherApp`'s.  One asyncio sampler task
    per process, started on lifespan startup (or the first request when the
    server sends no lifespan, e.g. under a Starlette ``Mount``) and
    cancelled on lifespan shutdown or :meth:`aclose`; netlink queries never
    block the loop, and a ``fetch`` without ``afetch`` runs in a thread.
    A tail streams until the client disconnects (or ``tail_max_seconds``).
    Links and redirects follow ``root_path``.

    Example::

        # watcher.py, served with: uvicorn watcher:app
        from raindrops_asgi.watcher import Watcher

        app = Watcher(["0.0.0.0:8000"], delay=1.0)
    """

    async def start(self) -> None:
        """Start the sampler task in this loop unless it runs; wait for a first sample."""
        await self.core.astart()

    async def aclose(self) -> None:
        """Cancel the sampler task (a later request starts it again)."""
        await self.engine.stop_task()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(receive, send, self.start, self.aclose)
            return
        if kind != "http":
            return
        base, path = _path_below_root(scope)
        headers = Headers(scope=scope)
        answer = await self.core.aserve(
            str(scope.get("method", "GET")).upper(),
            path,
            asgi_query(scope),
            base=base,
            referer=headers.get("referer"),
            host=headers.get("host"),
            peer=Peer.from_asgi(scope),
            origin=headers.get("origin"),
            fetch_site=headers.get("sec-fetch-site"),
        )
        if isinstance(answer, Reply):
            await send_reply(answer, scope, receive, send)
            return
        await self._tail(answer, receive, send)

    async def _tail(self, plan: TailPlan, receive: Receive, send: Send) -> None:
        """Stream ``plan`` until it ends or the client disconnects, whichever comes first.

        Pure ASGI rather than Starlette's ``StreamingResponse``: under ASGI
        spec 2.4 that one stops listening for ``http.disconnect`` and notices
        a client that left only when a write fails, which a tail whose
        thresholds are never met never makes; and it would leave the
        subscription to the garbage collector instead of closing it here.
        """
        headers = [(k.lower().encode(), v.encode()) for k, v in plan.headers]
        await send({"type": "http.response.start", "status": 200, "headers": headers})

        async def stream() -> None:
            lines = self.core.atail(plan)
            try:
                async for line in lines:
                    await send({"type": "http.response.body", "body": line, "more_body": True})
            finally:
                await lines.aclose()
            await send({"type": "http.response.body", "body": b""})

        async def disconnected() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return

        streamer = asyncio.ensure_future(stream())
        watcher = asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait({streamer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (streamer, watcher):
                task.cancel()
            for task in (streamer, watcher):
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await task


class LastDataRecv(LastDataRecvApp[ASGIApp]):
    """Records how long each request waited to be accepted; reports it at ``path``.

    The options and the report are
    :class:`raindrops_core.adapter.LastDataRecvApp`'s.  Pure ASGI middleware:
    ASGI servers expose no client socket, so for every HTTP request (but
    those to ``path``) the connection is found by its address pair
    (``scope["server"]``, ``scope["client"]``) through
    ``linux_inet_diag.AsyncDiagSocket.tcp_info_for`` (never blocking the
    loop; ``tcp_info_for=`` replaces it), then ``app`` is called.
    Connections it cannot find (Unix sockets, proxies) are not recorded.
    Lifespan and websocket scopes pass through; :meth:`close` closes this
    process's netlink socket.

    Example::

        from raindrops_asgi.watcher import LastDataRecv

        app = LastDataRecv(app)   # GET /raindrops/last_data_recv
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if self.app is not None:
                await self.app(scope, receive, send)
            elif scope["type"] == "lifespan":
                await _lifespan(receive, send, _nothing, _nothing)
            return
        method = str(scope.get("method", "GET")).upper()
        _, path = _path_below_root(scope)
        accept = Headers(scope=scope).get("accept")
        reply = self.core.answer(path, asgi_query(scope), accept, method=method)
        if reply is not None:
            await send_reply(reply, scope, receive, send)
            return
        server, client = scope.get("server"), scope.get("client")
        if server and client:
            await self.core.arecord_address(tuple(server), tuple(client))
        if self.app is None:
            await send_reply(self.core.not_found(method), scope, receive, send)
            return
        await self.app(scope, receive, send)
