"""What the raindrops ASGI middleware costs per request, against its floor and prometheus_client.

Run: ``python bench/bench_middleware.py`` (or ``nox -s bench``); about 10 s.
A trivial ASGI app (``http.response.start`` + one body) is awaited in-process
on one event loop, bare and wrapped by:

- the floor: a pure ASGI wrapper doing the four atomic operations as bare
  cffi calls on shm-counters cells, with the same send closure;
- raindrops: ``RaindropsMiddleware``;
- prometheus_client: the same wrapper with two multiprocess ``Gauge``s.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

ROUNDS = 7
REQUESTS = 20_000
_KEEP: list[object] = []  # what the measured apps use stays alive to the end

App = Callable[[Any, Any, Any], Awaitable[None]]
START = {"type": "http.response.start", "status": 200, "headers": []}
BODY = {"type": "http.response.body", "body": b"ok"}
SCOPE = {"type": "http", "path": "/", "method": "GET", "headers": [], "query_string": b""}


async def _app(scope: Any, receive: Any, send: Any) -> None:
    await send(START)
    await send(BODY)


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b""}


async def _send(message: Any) -> None:
    return None


async def _drive(app: App, n: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(n):
        await app(SCOPE, _receive, _send)
    return (time.perf_counter_ns() - start) / n


def _best_of(apps: dict[str, App]) -> dict[str, float]:
    """Best ns/request of each app, the rounds interleaved so noise hits all alike."""

    async def run() -> dict[str, float]:
        for app in apps.values():
            await _drive(app, 2_000)
        best = dict.fromkeys(apps, float("inf"))
        for _ in range(ROUNDS):
            for name, app in apps.items():
                best[name] = min(best[name], await _drive(app, REQUESTS))
        return best

    gc.disable()
    try:
        return asyncio.run(run())
    finally:
        gc.enable()


def _wrap(incr_c: Any, decr_c: Any, incr_w: Any, decr_w: Any) -> App:
    async def wrapper(scope: Any, receive: Any, send: Any) -> None:
        phase = 1

        async def counted(message: Any) -> None:
            nonlocal phase
            if phase == 1 and message["type"] == "http.response.start":
                phase = 2
                decr_c()
                incr_w()
            await send(message)
            if phase == 2 and not message.get("more_body", False):
                phase = 3
                decr_w()

        incr_c()
        try:
            await _app(scope, receive, counted)
        finally:
            if phase == 1:
                decr_c()
            elif phase == 2:
                decr_w()

    return wrapper


def _floor() -> App:
    from shm_counters import Scoreboard
    from shm_counters._native import lib

    board = Scoreboard(4, ["calling", "writing"])
    _KEEP.append(board)
    row = board.claim()
    calling, writing = row._cells[0][0], row._cells[1][0]
    # functools.partial over the cffi functions: no Python frame per operation.
    inc = getattr(lib, "shmc_inc1", None)
    dec = getattr(lib, "shmc_dec1", None)
    if inc is None or dec is None:
        return _wrap(
            partial(lib.shmc_add, calling, 1),
            partial(lib.shmc_sub, calling, 1),
            partial(lib.shmc_add, writing, 1),
            partial(lib.shmc_sub, writing, 1),
        )
    return _wrap(
        partial(inc, calling), partial(dec, calling), partial(inc, writing), partial(dec, writing)
    )


def _prometheus(tmp: str) -> App:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tmp
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    calling = Gauge("calling", "in app", multiprocess_mode="livesum", registry=registry)
    writing = Gauge("writing", "writing", multiprocess_mode="livesum", registry=registry)
    return _wrap(calling.inc, calling.dec, writing.inc, writing.dec)


def main() -> None:
    from raindrops_asgi import RaindropsMiddleware

    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs\n")
    with tempfile.TemporaryDirectory(prefix="rd-bench-prom-") as tmp:
        middleware = RaindropsMiddleware(_app, listeners=[], segment="anonymous")
        _KEEP.append(middleware)
        best = _best_of(
            {
                "bare": _app,
                "floor (4 bare cffi atomics + send closure)": _floor(),
                "raindrops RaindropsMiddleware": middleware,
                "prometheus_client multiprocess Gauge x2": _prometheus(tmp),
            }
        )
    bare = best.pop("bare")
    added = {name: cost - bare for name, cost in best.items()}
    floor = next(iter(added.values()))
    mine = added["raindrops RaindropsMiddleware"]
    print("### Per-request cost added to a trivial ASGI app (in-process)\n")
    print(f"Trivial app alone: {bare:.0f} ns/request.\n")
    print("| what | added ns/request | vs floor | vs raindrops |")
    print("| --- | ---: | ---: | ---: |")
    for name, cost in added.items():
        print(f"| {name} | {cost:.0f} | {cost / floor:.2f}x | {cost / mine:.2f}x |")
    print()


if __name__ == "__main__":
    main()
