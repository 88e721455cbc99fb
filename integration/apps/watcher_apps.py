"""Watcher and LastDataRecv apps for the integration tests, configured by environment.

``WATCH_LISTENERS`` (comma-separated names), ``WATCH_DELAY`` (seconds) and
``WATCH_TAIL_MAX`` (seconds, or ``none`` for no limit) configure both
Watchers; ``LDR_SEGMENT`` names LastDataRecv's shared histogram (default:
derived from the inherited listener).  Every LastDataRecv response carries
``X-Pid``, the worker that answered, so a test can tell that every worker
served.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from hello import asgi as hello_asgi
from hello import wsgi as hello_wsgi
from raindrops_asgi.watcher import LastDataRecv as AsgiLastDataRecv
from raindrops_asgi.watcher import Watcher as AsgiWatcher
from raindrops_wsgi.watcher import LastDataRecv as WsgiLastDataRecv
from raindrops_wsgi.watcher import Watcher as WsgiWatcher

_LISTENERS = [n for n in os.environ.get("WATCH_LISTENERS", "").split(",") if n] or None
_DELAY = float(os.environ.get("WATCH_DELAY", "0.1"))
_TAIL_MAX_TEXT = os.environ.get("WATCH_TAIL_MAX", "30")
_TAIL_MAX = None if _TAIL_MAX_TEXT == "none" else float(_TAIL_MAX_TEXT)
_SEGMENT = os.environ.get("LDR_SEGMENT") or None

Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [
        MutableMapping[str, Any],
        Callable[[], Awaitable[Message]],
        Callable[[Message], Awaitable[None]],
    ],
    Awaitable[None],
]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def wsgi_with_pid(app: WSGIApp) -> WSGIApp:
    """``app`` with an ``X-Pid`` response header naming the worker process."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, [*headers, ("X-Pid", str(os.getpid()))], exc_info)

        return app(environ, start)

    return wrapped


def asgi_with_pid(app: ASGIApp) -> ASGIApp:
    """``app`` with an ``x-pid`` response header naming the worker process."""

    async def wrapped(
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        async def send_with_pid(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"x-pid", str(os.getpid()).encode())]
                message = {**message, "headers": headers}
            await send(message)

        await app(scope, receive, send_with_pid)

    return wrapped


wsgi_watcher = WsgiWatcher(_LISTENERS, delay=_DELAY, tail_max_seconds=_TAIL_MAX)
asgi_watcher = AsgiWatcher(_LISTENERS, delay=_DELAY, tail_max_seconds=_TAIL_MAX)
wsgi_ldr = wsgi_with_pid(WsgiLastDataRecv(hello_wsgi, segment=_SEGMENT))
asgi_ldr = asgi_with_pid(AsgiLastDataRecv(hello_asgi, segment=_SEGMENT))
