"""WSGI and ASGI apps behind the raindrops middleware, held open by the test.

The test controls them through files in ``$RD_GATE_DIR``:

- ``/hold?gate=G&id=I`` writes this worker's PID to ``pid-I``, then waits
  (at most 20 s) until the file ``G`` exists, then answers ``released``.
- ``/stream?gate=G`` sends ``first`` at once, then ``last`` once ``G`` exists.
- ``/file`` (WSGI) answers ``wsgi.file_wrapper`` over a real file whose
  ``read()`` lies: the body is the file's bytes only if the server used
  sendfile() on the descriptor, i.e. kept its own wrapper type.

``$RD_LISTENERS`` (comma-separated) names the listeners to report; unset,
the middleware discovers the ones the worker inherited.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from raindrops_asgi import RaindropsMiddleware as AsgiRaindrops
from raindrops_wsgi import RaindropsMiddleware as WsgiRaindrops

GATES = Path(os.environ.get("RD_GATE_DIR", tempfile.gettempdir()))
LISTENERS = [n for n in os.environ.get("RD_LISTENERS", "").split(",") if n] or None
FILE_BYTES = b"bytes sent by sendfile\n"
READ_BYTES = b"bytes read by iteration\n"
WAIT_LIMIT = 20.0


def _args(query: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(query).items()}


def _gate_open(name: str) -> bool:
    return (GATES / name).exists()


def _wait_gate(name: str) -> None:
    deadline = time.monotonic() + WAIT_LIMIT
    while not _gate_open(name) and time.monotonic() < deadline:
        time.sleep(0.01)


class _LyingFile:
    """A real file for sendfile(), whose read() returns other bytes."""

    def __init__(self) -> None:
        fd, path = tempfile.mkstemp(prefix="rd-file-")
        os.write(fd, FILE_BYTES)
        os.lseek(fd, 0, os.SEEK_SET)
        os.unlink(path)
        self._fd = fd
        self._sent = False

    def fileno(self) -> int:
        return self._fd

    def read(self, size: int = -1) -> bytes:
        if self._sent:
            return b""
        self._sent = True
        return READ_BYTES

    def close(self) -> None:
        os.close(self._fd)


def _note_pid(name: str) -> None:
    """Write this worker's PID to ``GATES/name`` atomically: never seen empty."""
    tmp = GATES / f".{name}.{os.getpid()}.tmp"
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, GATES / name)


def _wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
    path = environ.get("PATH_INFO", "/")
    args = _args(environ.get("QUERY_STRING", ""))
    if path == "/hold":
        _note_pid(f"pid-{args['id']}")
        _wait_gate(args["gate"])
        body = b"released\n"
    elif path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _stream(args["gate"])
    elif path == "/file":
        start_response(
            "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(FILE_BYTES)))]
        )
        return environ["wsgi.file_wrapper"](_LyingFile())
    else:
        body = f"hello from {os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _stream(gate: str) -> Iterator[bytes]:
    yield b"first\n"
    _wait_gate(gate)
    yield b"last\n"


async def _await_gate(name: str) -> None:
    deadline = time.monotonic() + WAIT_LIMIT
    while not _gate_open(name) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


async def _asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    args = _args(scope.get("query_string", b"").decode())
    headers = [(b"content-type", b"text/plain")]
    if scope["path"] == "/hold":
        _note_pid(f"pid-{args['id']}")
        await _await_gate(args["gate"])
        body = b"released\n"
    elif scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"first\n", "more_body": True})
        await _await_gate(args["gate"])
        await send({"type": "http.response.body", "body": b"last\n"})
        return
    else:
        body = f"hello from {os.getpid()}\n".encode()
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


wsgi = WsgiRaindrops(_wsgi, listeners=LISTENERS)
asgi = AsgiRaindrops(_asgi, listeners=LISTENERS)
