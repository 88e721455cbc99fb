"""A WSGI and an ASGI app whose prometheus_client metrics are shared by prometheus-shm.

``prometheus_shm.install()`` runs at import, in every worker (gunicorn's
forked ones and uvicorn's spawned ones import the app); the segment is the
server's own, found from the listening socket the worker inherited.

Routes (both apps):

- ``/`` and ``/slow``: a request, counted in ``requests_total{route}``, timed in
  ``request_seconds``, ``inprogress`` (livesum) up while it runs; ``/slow``
  sleeps ``?ms=`` (default 200) milliseconds, ``holding{pid}`` (liveall) up
  meanwhile. Answers the worker's PID.
- ``/metrics``: the merged exposition (``prometheus_shm.Collector``).
- ``/segment``: JSON of ``prometheus_shm.segment_info()`` and the worker's PID.

Scrapes are not counted, so ``requests_total`` equals the requests a test sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

import prometheus_shm
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

prometheus_shm.install(capacity=512, processes=64)

REQUESTS = Counter("requests", "Requests served.", ["route"])
INPROGRESS = Gauge("inprogress", "Requests in flight.", multiprocess_mode="livesum")
SECONDS = Histogram("request_seconds", "Time to answer.", buckets=[0.01, 0.1, 1.0])
HOLDING = Gauge("holding", "Slow requests in flight, per worker.", multiprocess_mode="liveall")
WORKER = Gauge("worker_started", "When each worker started.", multiprocess_mode="all")
WORKER.set(time.time())


def _metrics() -> bytes:
    registry = CollectorRegistry()
    prometheus_shm.Collector(registry)
    return generate_latest(registry)


def _segment() -> bytes:
    info = dataclasses.asdict(prometheus_shm.segment_info())
    info["pid"] = os.getpid()
    return json.dumps(info).encode()


def _delay(query: str) -> float:
    values = parse_qs(query).get("ms", ["200"])
    try:
        return min(5000.0, max(0.0, float(values[0]))) / 1000
    except ValueError:
        return 0.2


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The WSGI app (gunicorn)."""
    path = environ.get("PATH_INFO", "/")
    if path == "/metrics":
        body, kind = _metrics(), "text/plain; version=0.0.4"
    elif path == "/segment":
        body, kind = _segment(), "application/json"
    elif path in ("/", "/slow"):
        start = time.perf_counter()
        with INPROGRESS.track_inprogress():
            if path == "/slow":
                with HOLDING.track_inprogress():
                    time.sleep(_delay(environ.get("QUERY_STRING", "")))
            REQUESTS.labels(path).inc()
        SECONDS.observe(time.perf_counter() - start)
        body, kind = str(os.getpid()).encode(), "text/plain"
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]
    start_response("200 OK", [("Content-Type", kind), ("Content-Length", str(len(body)))])
    return [body]


async def asgi_app(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    """The ASGI app (uvicorn)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path = scope["path"]
    status = 200
    if path == "/metrics":
        body, kind = _metrics(), b"text/plain; version=0.0.4"
    elif path == "/segment":
        body, kind = _segment(), b"application/json"
    elif path in ("/", "/slow"):
        start = time.perf_counter()
        with INPROGRESS.track_inprogress():
            if path == "/slow":
                with HOLDING.track_inprogress():
                    await asyncio.sleep(_delay(scope.get("query_string", b"").decode()))
            REQUESTS.labels(path).inc()
        SECONDS.observe(time.perf_counter() - start)
        body, kind = str(os.getpid()).encode(), b"text/plain"
    else:
        status, body, kind = 404, b"not found", b"text/plain"
    headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
