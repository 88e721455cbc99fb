"""The end-to-end stack: raindrops middleware over process-utilization over a small app.

Routes of the inner app (WSGI ``wsgi`` and ASGI ``asgi`` alike):

- ``/hello``: ``hello from PID``.
- ``/slow?ms=N``: sleeps N ms (at most 200), then answers ``slept N``.
- ``/stream?n=N``: N chunks of ``chunk I`` (at most 50), a short pause between.
- ``/hold?gate=G&id=I``: writes this worker's PID to ``$RD_GATE_DIR/pid-I``, waits
  (at most 20 s) until ``$RD_GATE_DIR/G`` exists, answers ``released``.
- ``/hstream?gate=G&id=I``: sends ``first`` at once, writes ``spid-I``, then
  ``last`` once ``G`` exists.
- ``/rss``: this worker's resident set size in kB (from ``/proc/self/status``).

``/_raindrops`` is the raindrops endpoint, ``/_utilization`` the process-utilization one.
With ``E2E_STARTUP_JITTER=1`` the ASGI app's lifespan startup sleeps up to 1 s
(a random time per worker), so workers start listening at different moments.
With ``E2E_BREAK_NETLINK=1`` every netlink query of raindrops-core raises
``PermissionError`` in the worker, as under a seccomp filter or a container
without netlink (through the state's public ``kernel=`` seam).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from process_utilization import ProcessUtilization
from process_utilization.asgi import ProcessUtilization as AsgiProcessUtilization
from raindrops_asgi import RaindropsMiddleware as AsgiRaindrops
from raindrops_core import RaindropsState
from raindrops_core.adapter import Kernel
from raindrops_wsgi import RaindropsMiddleware as WsgiRaindrops

# As an operator would: the libraries' warnings go to the server's stderr.
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _refuse(*args: object, **kwargs: object) -> Any:
    raise PermissionError(1, "netlink refused by the test")


# Netlink refused, as under a seccomp filter or a container without it: the
# blocking and the asyncio sockets, and the overflow counters.
KERNEL = (
    Kernel(diag=_refuse, adiag=_refuse, listen_overflows=_refuse)
    if os.environ.get("E2E_BREAK_NETLINK") == "1"
    else None
)

GATES = Path(os.environ.get("RD_GATE_DIR", tempfile.gettempdir()))
WAIT_LIMIT = 20.0


def _args(query: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(query).items()}


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def _note_pid(name: str) -> None:
    """Write this worker's PID to ``$RD_GATE_DIR/name`` atomically: never seen empty."""
    tmp = GATES / f".{name}.{os.getpid()}.tmp"
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, GATES / name)


def _wait_gate(name: str) -> None:
    deadline = time.monotonic() + WAIT_LIMIT
    while not (GATES / name).exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def _chunks(n: int) -> Iterator[bytes]:
    for i in range(min(n, 50)):
        if i:
            time.sleep(0.001)
        yield f"chunk {i}\n".encode()


def _hstream(args: dict[str, str]) -> Iterator[bytes]:
    yield b"first\n"
    _note_pid(f"spid-{args['id']}")
    _wait_gate(args["gate"])
    yield b"last\n"


def _inner_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
    path = environ.get("PATH_INFO", "/")
    args = _args(environ.get("QUERY_STRING", ""))
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _chunks(int(args.get("n", "3")))
    if path == "/hstream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _hstream(args)
    if path == "/slow":
        ms = min(int(args.get("ms", "10")), 200)
        time.sleep(ms / 1000)
        body = f"slept {ms}\n".encode()
    elif path == "/hold":
        _note_pid(f"pid-{args['id']}")
        _wait_gate(args["gate"])
        body = b"released\n"
    elif path == "/rss":
        body = f"{_rss_kb()}\n".encode()
    else:
        body = f"hello from {os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


async def _await_gate(name: str) -> None:
    deadline = time.monotonic() + WAIT_LIMIT
    while not (GATES / name).exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


async def _inner_asgi(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if os.environ.get("E2E_STARTUP_JITTER") == "1":
                    # Workers finish starting (and listen()) at different moments.
                    await asyncio.sleep(random.uniform(0.0, 1.0))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    args = _args(scope.get("query_string", b"").decode("latin-1"))
    headers = [(b"content-type", b"text/plain")]
    if path in ("/stream", "/hstream"):
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if path == "/stream":
            n = min(int(args.get("n", "3")), 50)
            for i in range(n):
                if i:
                    await asyncio.sleep(0.001)
                chunk = f"chunk {i}\n".encode()
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.body", "body": b"first\n", "more_body": True})
        _note_pid(f"spid-{args['id']}")
        await _await_gate(args["gate"])
        await send({"type": "http.response.body", "body": b"last\n"})
        return
    if path == "/slow":
        ms = min(int(args.get("ms", "10")), 200)
        await asyncio.sleep(ms / 1000)
        body = f"slept {ms}\n".encode()
    elif path == "/hold":
        _note_pid(f"pid-{args['id']}")
        await _await_gate(args["gate"])
        body = b"released\n"
    elif path == "/rss":
        body = f"{_rss_kb()}\n".encode()
    else:
        body = f"hello from {os.getpid()}\n".encode()
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


wsgi = WsgiRaindrops(
    ProcessUtilization(_inner_wsgi, stats_path="/_utilization"),
    state=RaindropsState(kernel=KERNEL),
)
asgi = AsgiRaindrops(
    AsgiProcessUtilization(_inner_asgi, stats_path="/_utilization"),
    state=RaindropsState(kernel=KERNEL),
)
