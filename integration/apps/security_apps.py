"""The stats endpoint and the Watcher in one app, for the security tests (WSGI and ASGI).

``/_raindrops`` is ``RaindropsMiddleware`` around ``hello``; everything under
``/watch`` is a Watcher of every listener on the machine (sampled every
``0.1`` s).  ``SEC_LISTENERS`` (a JSON list, so names may hold newlines and
undecodable bytes as ``\\udcXX``) names the listeners the endpoint reports;
by default it reports those it inherited.  Both use the default access rule.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from hello import asgi as hello_asgi
from hello import wsgi as hello_wsgi
from raindrops_asgi import RaindropsMiddleware as AsgiRaindrops
from raindrops_asgi.watcher import Watcher as AsgiWatcher
from raindrops_wsgi import RaindropsMiddleware as WsgiRaindrops
from raindrops_wsgi.watcher import Watcher as WsgiWatcher

PREFIX = "/watch"
_NAMES = os.environ.get("SEC_LISTENERS")
_LISTENERS = None if not _NAMES else list(json.loads(_NAMES))

Message = MutableMapping[str, Any]
Scope = MutableMapping[str, Any]

_wsgi_watcher = WsgiWatcher(None, delay=0.1, tail_max_seconds=20)
_wsgi_stats = WsgiRaindrops(hello_wsgi, listeners=_LISTENERS)


def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """``/watch...``: the Watcher mounted there (``SCRIPT_NAME``); else the middleware."""
    path = environ.get("PATH_INFO", "")
    if path == PREFIX or path.startswith(PREFIX + "/"):
        environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + PREFIX
        environ["PATH_INFO"] = path[len(PREFIX) :] or "/"
        return _wsgi_watcher(environ, start_response)
    return _wsgi_stats(environ, start_response)


_asgi_watcher = AsgiWatcher(None, delay=0.1, tail_max_seconds=20)
_asgi_stats = AsgiRaindrops(hello_asgi, listeners=_LISTENERS)


async def asgi(
    scope: Scope,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    """``/watch...``: the Watcher mounted there (``root_path``); else the middleware."""
    path = scope.get("path", "")
    if scope["type"] == "http" and (path == PREFIX or path.startswith(PREFIX + "/")):
        if path == PREFIX:
            scope = {**scope, "path": PREFIX + "/"}
        await _asgi_watcher(
            {**scope, "root_path": scope.get("root_path", "") + PREFIX}, receive, send
        )
        return
    await _asgi_stats(scope, receive, send)
