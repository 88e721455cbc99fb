"""Apps for the fleet test (``test_fleet.py``): raindrops over process-utilization, WSGI and ASGI.

``wsgi`` is ``e2e_stack.wsgi`` (``/slow?ms=N`` sleeps N ms, at most 200;
``/hello``). ``asgi`` answers:

- ``/slow?ms=N``: awaits N ms (at most 200), as a handler waiting on I/O;
- ``/block?gate=G&id=I``: writes this worker's PID to ``$RD_GATE_DIR/pid-I``,
  then waits for ``$RD_GATE_DIR/G`` *without yielding to the event loop* (at
  most 20 s), as a CPU-bound handler does: the worker accepts nothing more,
  so with every worker blocked the listen queue fills;
- anything else: ``hello from PID``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from e2e_stack import wsgi
from process_utilization.asgi import ProcessUtilization
from raindrops_asgi import RaindropsMiddleware

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

GATES = Path(os.environ.get("RD_GATE_DIR", tempfile.gettempdir()))
WAIT_LIMIT = 20.0

__all__ = ["asgi", "wsgi"]


def _note_pid(name: str) -> None:
    tmp = GATES / f".{name}.{os.getpid()}.tmp"
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, GATES / name)


async def _inner(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    args = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
    if scope["path"] == "/slow":
        ms = min(int(args.get("ms", "10")), 200)
        await asyncio.sleep(ms / 1000)
        body = f"slept {ms}\n".encode()
    elif scope["path"] == "/block":
        _note_pid(f"pid-{args['id']}")
        deadline = time.monotonic() + WAIT_LIMIT
        while not (GATES / args["gate"]).exists() and time.monotonic() < deadline:
            time.sleep(0.01)  # blocks the loop on purpose: nothing else runs in this worker
        body = b"released\n"
    else:
        body = f"hello from {os.getpid()}\n".encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


asgi = RaindropsMiddleware(ProcessUtilization(_inner))
