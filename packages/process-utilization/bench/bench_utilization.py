"""Per-request cost of the middleware, in process, against a bare app.

Run: ``python bench/bench_utilization.py`` (or ``nox -s bench``). Prints a
Markdown table of ns per request and the cost added over the bare app,
for WSGI and ASGI, with peers measured in the same run:

- the bare app;
- a naive single-threaded port of the Ruby middleware (a closure that adds
  ``now - start`` to a float, no lock, no sharing), as the floor any
  accounting costs;
- this middleware with its accounting local only (scoreboard row refused);
- this middleware publishing to its shared-memory scoreboard row (default).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from process_utilization import ProcessUtilization
from process_utilization.asgi import ProcessUtilization as AsgiProcessUtilization

HEADERS = [("Content-Type", "text/plain")]
BODY = [b"hello"]


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", HEADERS)
    return BODY


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


class NaiveSeedPort:
    """What a line-by-line port of Rack::ProcessUtilization costs (not thread safe)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.active_time = 0.0
        self.requests = 0
        self.total_requests = 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        start = time.time()
        self.total_requests += 1
        environ["process.request_start"] = start
        environ["process.total_requests"] = self.total_requests
        environ.pop("HTTP_X_REQUEST_START", None)
        body = self.app(environ, start_response)
        return _NaiveBody(body, self, start)


class _NaiveBody:
    __slots__ = ("_it", "_mw", "_start")

    def __init__(self, it: Any, mw: NaiveSeedPort, start: float) -> None:
        self._it, self._mw, self._start = it, mw, start

    def __iter__(self) -> Any:
        return iter(self._it)

    def close(self) -> None:
        mw = self._mw
        mw.active_time += time.time() - self._start
        mw.requests += 1


class RefusingBoard:
    """A scoreboard that gives no row: the middleware keeps local stats only."""

    def claim(self) -> Any:
        raise RuntimeError("no row")

    def rows(self) -> list[Any]:
        return []


def _start_response(status: str, headers: Any, exc_info: Any = None) -> None:
    return None


def wsgi_loop(app: Any, n: int) -> float:
    environ: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": "/"}
    sr = _start_response
    t0 = time.perf_counter()
    for _ in range(n):
        body = app(environ, sr)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return time.perf_counter() - t0


def asgi_loop(app: Any, n: int) -> float:
    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    t0 = time.perf_counter()
    for _ in range(n):
        scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
        coro = app(scope, receive, send)
        try:
            coro.send(None)
        except StopIteration:
            pass
    return time.perf_counter() - t0


def best_ns(loop: Callable[[Any, int], float], app: Any, n: int, repeat: int) -> float:
    loop(app, n // 10)  # warm up (claims the scoreboard row)
    times = []
    gc.disable()
    try:
        for _ in range(repeat):
            times.append(loop(app, n) / n * 1e9)
    finally:
        gc.enable()
    return min(times), statistics.median(times)  # type: ignore[return-value]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200_000, help="requests per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs (best is kept)")
    args = parser.parse_args()

    cases: list[tuple[str, str, Callable[[Any, int], float], Any]] = [
        ("WSGI", "bare app", wsgi_loop, wsgi_app),
        ("WSGI", "naive seed port (no lock, not shared)", wsgi_loop,
         NaiveSeedPort(wsgi_app)),
        ("WSGI", "ProcessUtilization, local only", wsgi_loop,
         ProcessUtilization(wsgi_app, scoreboard=RefusingBoard())),
        ("WSGI", "ProcessUtilization + scoreboard (default)", wsgi_loop,
         ProcessUtilization(wsgi_app)),
        ("ASGI", "bare app", asgi_loop, asgi_app),
        ("ASGI", "ProcessUtilization, local only", asgi_loop,
         AsgiProcessUtilization(asgi_app, scoreboard=RefusingBoard())),
        ("ASGI", "ProcessUtilization + scoreboard (default)", asgi_loop,
         AsgiProcessUtilization(asgi_app)),
    ]  # fmt: skip
    print(f"Python {sys.version.split()[0]}, {args.n} requests x {args.repeat} runs, "
          "best run (median in brackets)\n")  # fmt: skip
    print("| protocol | variant | ns/request | added ns | ratio to bare |")
    print("| --- | --- | ---: | ---: | ---: |")
    bare: dict[str, float] = {}
    for proto, name, loop, app in cases:
        best, median = best_ns(loop, app, args.n, args.repeat)  # type: ignore[misc]
        base = bare.setdefault(proto, best)
        print(
            f"| {proto} | {name} | {best:.0f} ({median:.0f}) | {best - base:.0f} "
            f"| {best / base:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
