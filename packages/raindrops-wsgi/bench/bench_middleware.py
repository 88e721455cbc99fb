"""What the raindrops WSGI middleware costs, against its floor and prometheus_client.

Run: ``python bench/bench_middleware.py`` (or ``nox -s bench``); bounded to
about a minute.  Prints Markdown tables:

1. The per-request cost added to a trivial WSGI app called in-process (app
   call, iterate the body, ``close()``), for
   - the floor: the four atomic operations (incr/decr ``calling``,
     incr/decr ``writing``) as bare cffi calls on shm-counters cells, plus a
     minimal body proxy;
   - raindrops: ``RaindropsMiddleware``;
   - prometheus_client: two multiprocess ``Gauge``s (``livesum``) doing the
     same job, with the same body proxy.
2. The endpoint's own latency with 2 listeners and 1,000 connections.
3. gunicorn throughput with and without the middleware under a bounded
   load generator (Linux; skipped if gunicorn is missing).
"""

from __future__ import annotations

import gc
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROUNDS = 7
REQUESTS = 20_000
_KEEP: list[object] = []  # what the measured apps use stays alive to the end


def _app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
    return None


def _drive(app: Callable[..., Iterable[bytes]], environ: dict[str, Any], n: int) -> float:
    """ns per request: call, iterate, close, as a server does."""
    start = time.perf_counter_ns()
    for _ in range(n):
        body = app(environ, _start_response)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return (time.perf_counter_ns() - start) / n


def _best_of(
    apps: dict[str, Callable[..., Iterable[bytes]]], environ: dict[str, Any]
) -> dict[str, float]:
    """Best ns/request of each app, the rounds interleaved so noise hits all alike."""
    for app in apps.values():
        _drive(app, environ, 2_000)
    best = dict.fromkeys(apps, float("inf"))
    gc.disable()
    try:
        for _ in range(ROUNDS):
            for name, app in apps.items():
                best[name] = min(best[name], _drive(app, environ, REQUESTS))
    finally:
        gc.enable()
    return best


def _floor_app() -> Callable[..., Iterable[bytes]]:
    from shm_counters import Scoreboard
    from shm_counters._native import lib

    board = Scoreboard(4, ["calling", "writing"])
    row = board.claim()
    calling = row._cells[0][0]
    writing = row._cells[1][0]
    # The cheapest atomic calls shm-counters has: one-argument +1/-1 when built in.
    inc = getattr(lib, "shmc_inc1", None) or (lambda cell: lib.shmc_add(cell, 1))
    dec = getattr(lib, "shmc_dec1", None) or (lambda cell: lib.shmc_sub(cell, 1))

    class Body:
        __slots__ = ("body",)

        def __init__(self, body: Iterable[bytes]) -> None:
            self.body = body

        def __iter__(self) -> Any:
            return iter(self.body)

        def close(self) -> None:
            dec(writing)

    def floor(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        inc(calling)
        body = _app(environ, start_response)
        dec(calling)
        inc(writing)
        return Body(body)

    _KEEP.append(board)
    return floor


def _prometheus_app(tmp: str) -> Callable[..., Iterable[bytes]]:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tmp
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    calling = Gauge("calling", "in app", multiprocess_mode="livesum", registry=registry)
    writing = Gauge("writing", "writing", multiprocess_mode="livesum", registry=registry)

    class Body:
        __slots__ = ("body",)

        def __init__(self, body: Iterable[bytes]) -> None:
            self.body = body

        def __iter__(self) -> Any:
            return iter(self.body)

        def close(self) -> None:
            writing.dec()

    def prom(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        calling.inc()
        try:
            body = _app(environ, start_response)
        finally:
            calling.dec()
        writing.inc()
        return Body(body)

    return prom


def bench_in_process() -> None:
    from raindrops_wsgi import RaindropsMiddleware

    environ = {"PATH_INFO": "/", "REQUEST_METHOD": "GET"}
    with tempfile.TemporaryDirectory(prefix="rd-bench-prom-") as tmp:
        middleware = RaindropsMiddleware(_app, listeners=[], segment="anonymous")
        _KEEP.append(middleware)
        best = _best_of(
            {
                "bare": _app,
                "floor (4 bare cffi atomics + body proxy)": _floor_app(),
                "raindrops RaindropsMiddleware": middleware,
                "prometheus_client multiprocess Gauge x2": _prometheus_app(tmp),
            },
            environ,
        )
    bare = best.pop("bare")
    added = {name: cost - bare for name, cost in best.items()}
    mine = added["raindrops RaindropsMiddleware"]
    print("### Per-request cost added to a trivial WSGI app (in-process)\n")
    print(f"Trivial app alone: {bare:.0f} ns/request.\n")
    print("| what | added ns/request | vs floor | vs raindrops |")
    print("| --- | ---: | ---: | ---: |")
    for name, cost in added.items():
        print(
            f"| {name} | {cost:.0f} | {cost / added[next(iter(added))]:.2f}x | {cost / mine:.2f}x |"
        )
    print()


def bench_endpoint() -> None:
    from raindrops_core import RaindropsState

    listeners = []
    clients = []
    accepted = []
    try:
        for _ in range(2):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen(1024)
            listeners.append(sock)
        for i in range(1000):
            target = listeners[i % 2]
            clients.append(socket.create_connection(target.getsockname(), timeout=5))
        for sock in listeners:  # half accepted (active), half left queued
            for _ in range(250):
                accepted.append(sock.accept()[0])
        names = [f"127.0.0.1:{s.getsockname()[1]}" for s in listeners]
        state = RaindropsState(listeners=names, segment="anonymous")
        _KEEP.append(state)
        first = state.snapshot()
        times = []
        for _ in range(200):
            start = time.perf_counter_ns()
            state.respond("GET", "127.0.0.1", None, "")
            times.append(time.perf_counter_ns() - start)
        times.sort()
        print("### Endpoint latency, 2 listeners, 1,000 connections (500 active, 500 queued)\n")
        print(f"Snapshot: {dict(first.listeners)} {dict(first.unavailable) or ''}\n")
        print("| measure | ms | vs 2 ms target |")
        print("| --- | ---: | ---: |")
        for label, value in (
            ("best", times[0]),
            ("median", statistics.median(times)),
            ("p95", times[int(len(times) * 0.95)]),
        ):
            print(f"| {label} | {value / 1e6:.3f} | {value / 2e6:.2f}x |")
        print()
    finally:
        for s in clients + accepted + listeners:
            s.close()


_GUNICORN_APP = """
from raindrops_wsgi import RaindropsMiddleware

def bare(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]

wrapped = RaindropsMiddleware(bare)
"""


def _load(addr: tuple[str, int], seconds: float, connections: int) -> int:
    """Requests answered in ``seconds`` by ``connections`` client threads, one at a time each."""
    stop = time.monotonic() + seconds
    counts = [0] * connections
    request = b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"

    def client(i: int) -> None:
        while time.monotonic() < stop:
            with socket.create_connection(addr, timeout=5) as conn:
                conn.sendall(request)
                while conn.recv(4096):
                    pass
            counts[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts)


def bench_gunicorn() -> None:
    try:
        import gunicorn  # noqa: F401
    except ImportError:
        print("(gunicorn not installed: throughput skipped)\n")
        return
    rates: dict[str, list[float]] = {"bare": [], "wrapped": []}
    with tempfile.TemporaryDirectory(prefix="rd-bench-") as tmp:
        Path(tmp, "bench_app.py").write_text(_GUNICORN_APP)
        env = dict(os.environ, PYTHONPATH=tmp, RAINDROPS_SEGMENT=os.path.join(tmp, "board"))
        for attr in ("bare", "wrapped") * 3:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen(1024)
            sock.set_inheritable(True)
            argv = [sys.executable, "-m", "gunicorn", "--bind", f"fd://{sock.fileno()}"]
            argv += ["--workers", "2", "--log-level", "warning", f"bench_app:{attr}"]
            proc = subprocess.Popen(argv, pass_fds=(sock.fileno(),), env=env, cwd=tmp)
            try:
                addr = sock.getsockname()
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    try:
                        _load(addr, 0.05, 1)
                        break
                    except OSError:
                        time.sleep(0.1)
                _load(addr, 0.5, 4)
                seconds = 3.0
                rates[attr].append(_load(addr, seconds, 4) / seconds)
            finally:
                proc.terminate()
                proc.wait(timeout=15)
                sock.close()
    bare, wrapped = max(rates["bare"]), max(rates["wrapped"])
    print("### gunicorn, 2 sync workers, 4 client threads, new connection per request\n")
    print("| app | requests/s (best of 3) | vs bare |")
    print("| --- | ---: | ---: |")
    print(f"| bare WSGI app | {bare:.0f} | 1.00x |")
    print(f"| with RaindropsMiddleware | {wrapped:.0f} | {wrapped / bare:.2f}x |")
    print()


def main() -> None:
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs\n")
    bench_in_process()
    if sys.platform.startswith("linux"):
        bench_endpoint()
        bench_gunicorn()


if __name__ == "__main__":
    main()
