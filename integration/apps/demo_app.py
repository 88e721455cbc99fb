"""The demo's WSGI app: quick pages, slow pages and slowly streamed bodies.

Served by gunicorn with the raindrops middleware in front, so ``/_raindrops``
shows how many requests every worker is processing (``calling``) and writing
(``writing``), and how many connections wait in the listen queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from raindrops_wsgi import RaindropsMiddleware


def _app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
    path = environ.get("PATH_INFO", "/")
    if path == "/slow":
        time.sleep(0.4)
        body = b"slow\n"
    elif path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _stream()
    else:
        body = b"fast\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _stream() -> Iterator[bytes]:
    for i in range(4):
        time.sleep(0.1)
        yield f"chunk {i}\n".encode()


app = RaindropsMiddleware(_app)
