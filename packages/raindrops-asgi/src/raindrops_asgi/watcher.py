"""ASGI apps watching the server over time: :class:`Watcher` and :class:`LastDataRecv`.

Pure ASGI, protocol glue only: sampling, statistics, pages and routing are
:mod:`raindrops_core.watcher`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from typing import Any
from urllib.parse import unquote_to_bytes

from raindrops_core import DEFAULT_ALLOW, AccessList
from raindrops_core.adapter import Peer, Reply
from raindrops_core.watcher import (
    DEFAULT_DELAY,
    DEFAULT_HISTORY,
    DEFAULT_LAST_DATA_RECV_PATH,
    AsyncFetch,
    LastDataRecvCore,
    TailPlan,
    WatcherCore,
    set_defer_accept,
)

__all__ = ["LastDataRecv", "Watcher", "set_defer_accept"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


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
    """``(base, path)``: the mount point and the path below it, both decoded."""
    root = scope.get("root_path", "") or ""
    path = _lossless_path(scope)
    if root and path.startswith(root):
        path = path[len(root) :]
    return root, path


def _query(scope: Scope) -> str:
    return bytes(scope.get("query_string", b"")).decode("latin-1")


async def _send_reply(reply: Reply, send: Send, *, head: bool) -> None:
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else reply.body})


async def _lifespan(receive: Receive, send: Send, start: Any, stop: Any) -> None:
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


class Watcher:
    """The Ruby original's Raindrops::Watcher as a pure ASGI app (mount it under any prefix).

    Samples ``listeners`` (default: every listener on the machine) every
    ``delay`` seconds in one asyncio task per process, started on lifespan
    startup (or the first request when the server sends no lifespan, e.g.
    under a Starlette ``Mount``) and cancelled on lifespan shutdown or
    :meth:`aclose`; netlink queries never block the loop.  Serves ``GET /``
    (HTML index), ``/index.json``, ``/active/<L>.txt|.html|.json``,
    ``/queued/<L>.txt|.html|.json``, ``/tail/<L>.txt|.json?active_min=N&
    queued_min=N`` (streamed until the client disconnects, or
    ``tail_max_seconds``) and ``POST /reset/<L>`` (302 back).  ``<L>`` is the
    URL-escaped listener name (``0.0.0.0%3A80``).  ``afetch``/``fetch`` and
    ``clock`` replace the netlink query and the wall clock (tests).

    ``allow`` is who may use it, as for the stats endpoint (loopback and
    local Unix-socket peers by default; networks or a
    :class:`raindrops_core.AccessList`): the pages list every listener of
    the machine, other users' included.  A reset from another site's page
    (a cross-site form) is refused; see
    :func:`raindrops_core.watcher.cross_origin_refusal`.

    Example::

        # watcher.py, served with: uvicorn watcher:app
        from raindrops_asgi.watcher import Watcher

        app = Watcher(["0.0.0.0:8000"], delay=1.0)
    """

    def __init__(
        self,
        listeners: Sequence[str] | None = None,
        *,
        delay: float = DEFAULT_DELAY,
        history: int = DEFAULT_HISTORY,
        tail_max_seconds: float | None = None,
        afetch: AsyncFetch | None = None,
        fetch: Any = None,
        clock: Callable[[], float] | None = None,
        allow: Iterable[str] | AccessList = DEFAULT_ALLOW,
    ) -> None:
        kwargs: dict[str, Any] = {} if clock is None else {"clock": clock}
        self.core = WatcherCore(
            listeners,
            delay=delay,
            history=history,
            fetch=fetch,
            afetch=afetch,
            tail_max_seconds=tail_max_seconds,
            allow=allow,
            **kwargs,
        )
        self.engine = self.core.engine

    def __repr__(self) -> str:
        return f"<Watcher {self.engine!r}>"

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
        method = str(scope.get("method", "GET")).upper()
        base, path = _path_below_root(scope)
        answer = await self.core.aserve(
            method,
            path,
            _query(scope),
            base=base,
            referer=_header(scope, b"referer"),
            host=_header(scope, b"host"),
            peer=Peer.from_asgi(scope),
            origin=_header(scope, b"origin"),
            fetch_site=_header(scope, b"sec-fetch-site"),
        )
        if isinstance(answer, Reply):
            await _send_reply(answer, send, head=method == "HEAD")
            return
        await self._tail(answer, method, receive, send)

    async def _tail(self, plan: TailPlan, method: str, receive: Receive, send: Send) -> None:
        headers = [(k.lower().encode(), v.encode()) for k, v in plan.headers]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if method == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return

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


class LastDataRecv:
    """Records how long each request waited to be accepted; reports it at ``path``.

    Pure ASGI middleware: for every HTTP request (but those to ``path``) it
    looks up the client connection's ``tcp_info`` by its address pair
    (``scope["server"]``, ``scope["client"]``) through
    ``linux_inet_diag.AsyncDiagSocket.tcp_info_for`` (never blocking the
    loop) and, if it is the connection's first request, records
    ``tcpi_last_data_recv`` (ms) in a histogram shared by every worker (see
    :class:`raindrops_core.watcher.LastDataRecvCore` for ``segment`` and for
    which requests count), then calls ``app``.  Connections it cannot find
    (Unix sockets, proxies) are not recorded.  Any request to ``path``
    answers, as the Ruby original, ``X-Count`` (and ``X-Min``, ``X-Max``,
    ``X-Mean``, ``X-Std-Dev``, ``X-Outliers-Low``, ``X-Outliers-High`` once
    count > 1) and a text histogram; ``path.json`` (or ``?format=json``,
    ``Accept: application/json``) answers JSON.  With ``app=None`` it only
    reports (404 elsewhere).  Lifespan and websocket scopes pass through.

    Example::

        from raindrops_asgi.watcher import LastDataRecv

        app = LastDataRecv(app)   # GET /raindrops/last_data_recv
    """

    def __init__(
        self,
        app: ASGIApp | None = None,
        *,
        path: str = DEFAULT_LAST_DATA_RECV_PATH,
        segment: str | os.PathLike[str] | None = None,
        histogram: Any = None,
        tcp_info_for: Callable[[Any, Any], Awaitable[Any]] | None = None,
    ) -> None:
        self.app = app
        self.core = LastDataRecvCore(path=path, segment=segment, histogram=histogram)
        self.path = self.core.path
        self._tcp_info_for = tcp_info_for or _DiagPerProcess()

    def __repr__(self) -> str:
        return f"<LastDataRecv {self.app!r} path={self.path!r}>"

    def close(self) -> None:
        """Close this process's netlink socket (reopened on the next request)."""
        closer = getattr(self._tcp_info_for, "close", None)
        if closer is not None:
            closer()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if self.app is not None:
                await self.app(scope, receive, send)
            elif scope["type"] == "lifespan":
                await _lifespan(receive, send, _nothing, _nothing)
            return
        _, path = _path_below_root(scope)
        reply = self.core.answer(path, _query(scope), _header(scope, b"accept"))
        if reply is not None:
            head = str(scope.get("method", "GET")).upper() == "HEAD"
            await _send_reply(reply, send, head=head)
            return
        server, client = scope.get("server"), scope.get("client")
        if server and client:
            try:
                info = await self._tcp_info_for(tuple(server), tuple(client))
            except (ImportError, OSError, ValueError):
                info = None
            self.core.record_info(info)
        if self.app is None:
            await _send_reply(self.core.not_found(), send, head=False)
            return
        await self.app(scope, receive, send)


async def _nothing() -> None:
    return None


class _DiagPerProcess:
    """One ``AsyncDiagSocket`` per process (a netlink socket must not cross fork())."""

    def __init__(self) -> None:
        self._pid = 0
        self._sock: Any = None

    async def __call__(self, local: Any, remote: Any) -> Any:
        pid = os.getpid()
        if self._sock is None or self._pid != pid:
            from linux_inet_diag import AsyncDiagSocket

            self._sock, self._pid = AsyncDiagSocket(), pid
        return await self._sock.tcp_info_for(local, remote)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None and self._pid == os.getpid():
            sock.close()
