"""Per-request cost of the middleware, in process, against a bare app and the seed.

Run: ``python bench/bench_utilization.py`` (or ``nox -s bench``). Prints two
Markdown tables: ns per request and the cost added over the bare app, for
WSGI and ASGI, with peers measured in the same run; then the targets, what
was measured and whether each is met. The peers:

- the bare app;
- a naive port of the seed, Rack::ProcessUtilization (two ``time.time()``
  calls, a body proxy or ``try/finally``, attributes added to without a
  lock, nothing shared): what any close-time accounting costs in Python,
  and the peer the "x the seed" ratio is taken against;
- this middleware with its accounting local only (scoreboard row refused);
- this middleware publishing to its shared-memory scoreboard row (default);
- WSGI only: the default middleware under a threaded server's promise
  (``wsgi.multithread`` true, as gunicorn gthread), where every request
  takes the lock.

The requests run one after the other, each with a fresh environ or scope
shaped as gunicorn's and uvicorn's are (their keys, five request headers).
WSGI requests carry ``wsgi.multithread`` false, as a sync worker
(gunicorn's) promises, so the middleware takes no lock; ASGI requests run
on one event loop's thread, which takes none either. Times move with the
machine's load; the ratios much less.

``--instructions`` (needs valgrind) also counts CPU instructions per
request: each case runs N and 6N requests under ``valgrind
--tool=callgrind`` and the difference, divided by 5N, is what one request
costs. Those counts do not move with the machine's load: judge a change
by them, and confirm with the times.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from process_utilization import ProcessUtilization
from process_utilization.asgi import ProcessUtilization as AsgiProcessUtilization

HEADERS = [("Content-Type", "text/plain")]
BODY = [b"hello"]

#: Target of the added per-request cost of the default middleware, ns.
TARGET_ADDED_NS = 2000


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


class AsgiNaiveSeedPort:
    """The same naive port as an ASGI middleware (the request ends when the app returns)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.active_time = 0.0
        self.requests = 0
        self.total_requests = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        start = time.time()
        self.total_requests += 1
        scope["process.request_start"] = start
        scope["process.total_requests"] = self.total_requests
        try:
            await self.app(scope, receive, send)
        finally:
            self.active_time += time.time() - start
            self.requests += 1


class RefusingBoard:
    """A scoreboard that gives no row: the middleware keeps local stats only."""

    def claim(self) -> Any:
        raise RuntimeError("no row")

    def rows(self) -> list[Any]:
        return []


def _start_response(status: str, headers: Any, exc_info: Any = None) -> None:
    return None


class FileWrapper:
    """Stands for a server's ``wsgi.file_wrapper`` class (never used as the body here)."""


#: A request's environ as gunicorn builds it (a fresh copy per request).
ENVIRON: dict[str, Any] = {
    "REQUEST_METHOD": "GET",
    "SCRIPT_NAME": "",
    "PATH_INFO": "/",
    "QUERY_STRING": "",
    "RAW_URI": "/",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "SERVER_NAME": "127.0.0.1",
    "SERVER_PORT": "8000",
    "REMOTE_ADDR": "127.0.0.1",
    "REMOTE_PORT": "50000",
    "HTTP_HOST": "127.0.0.1:8000",
    "HTTP_USER_AGENT": "bench/1.0",
    "HTTP_ACCEPT": "*/*",
    "wsgi.version": (1, 0),
    "wsgi.url_scheme": "http",
    "wsgi.input": None,
    "wsgi.errors": sys.stderr,
    "wsgi.multiprocess": True,
    "wsgi.run_once": False,
    "wsgi.file_wrapper": FileWrapper,
}

#: A request's scope as uvicorn builds it (a fresh copy per request).
SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.3"},
    "http_version": "1.1",
    "server": ("127.0.0.1", 8000),
    "client": ("127.0.0.1", 50000),
    "scheme": "http",
    "method": "GET",
    "root_path": "",
    "path": "/",
    "raw_path": b"/",
    "query_string": b"",
    "headers": [
        (b"host", b"127.0.0.1:8000"),
        (b"user-agent", b"bench/1.0"),
        (b"accept", b"*/*"),
        (b"accept-encoding", b"gzip, deflate"),
        (b"connection", b"keep-alive"),
    ],
    "state": {},
}


def wsgi_loop(app: Any, n: int, threaded: bool = False) -> float:
    # False: one request at a time, as a sync worker (gunicorn's) promises.
    template = dict(ENVIRON, **{"wsgi.multithread": threaded})
    sr = _start_response
    t0 = time.perf_counter()
    for _ in range(n):
        body = app(dict(template), sr)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return time.perf_counter() - t0


def wsgi_loop_threaded(app: Any, n: int) -> float:
    return wsgi_loop(app, n, threaded=True)


def asgi_loop(app: Any, n: int) -> float:
    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    t0 = time.perf_counter()
    for _ in range(n):
        coro = app(dict(SCOPE), receive, send)
        try:
            coro.send(None)
        except StopIteration:
            pass
    return time.perf_counter() - t0


Case = tuple[str, str, Callable[[Any, int], float], Any]


def measure(cases: list[Case], n: int, rounds: int) -> list[tuple[float, float]]:
    """The best and the median ns per request of each case over ``rounds`` runs of ``n``.

    The runs are interleaved (each round runs every case once), so a slow
    spell of the machine falls on every case alike, not on one.
    """
    for _proto, _name, loop, app in cases:
        loop(app, n // 10)  # warm up (claims the scoreboard row)
    times: list[list[float]] = [[] for _ in cases]
    gc.disable()
    try:
        for _ in range(rounds):
            for k, (_proto, _name, loop, app) in enumerate(cases):
                times[k].append(loop(app, n) / n * 1e9)
    finally:
        gc.enable()
    return [(min(t), statistics.median(t)) for t in times]


BARE, SEED, LOCAL, DEFAULT = "bare app", "naive seed port", "local only", "default"
THREADED = "threaded server"


def make_cases() -> list[Case]:
    """Every case, in table order (each middleware instance made afresh)."""
    return [
        ("WSGI", BARE, wsgi_loop, wsgi_app),
        ("WSGI", SEED, wsgi_loop, NaiveSeedPort(wsgi_app)),
        ("WSGI", LOCAL, wsgi_loop, ProcessUtilization(wsgi_app, scoreboard=RefusingBoard())),
        ("WSGI", DEFAULT, wsgi_loop, ProcessUtilization(wsgi_app)),
        ("WSGI", THREADED, wsgi_loop_threaded, ProcessUtilization(wsgi_app)),
        ("ASGI", BARE, asgi_loop, asgi_app),
        ("ASGI", SEED, asgi_loop, AsgiNaiveSeedPort(asgi_app)),
        ("ASGI", LOCAL, asgi_loop, AsgiProcessUtilization(asgi_app, scoreboard=RefusingBoard())),
        ("ASGI", DEFAULT, asgi_loop, AsgiProcessUtilization(asgi_app)),
    ]


LABELS = {
    BARE: "bare app",
    SEED: "naive seed port (no lock, not shared)",
    LOCAL: "ProcessUtilization, local only",
    DEFAULT: "ProcessUtilization + scoreboard (default)",
    THREADED: "ProcessUtilization + scoreboard, wsgi.multithread true (locks)",
}


def drive(k: int, n: int) -> None:
    """``--drive K N``: warm case ``k`` up, then run it ``n`` times (under valgrind)."""
    _proto, _name, loop, app = make_cases()[k]
    loop(app, 1_000)
    gc.disable()
    loop(app, n)


def _callgrind_total(k: int, n: int) -> int:
    """CPU instructions of a whole run of this script driving case ``k`` ``n`` times."""
    argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    argv += [sys.executable, __file__, "--drive", str(k), str(n)]
    env = dict(os.environ, PYTHONHASHSEED="0")
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900, check=True)
    for line in done.stderr.splitlines():
        if "Collected :" in line:
            return int(line.rsplit(":", 1)[1])
    raise RuntimeError(f"no instruction count from valgrind:\n{done.stderr[-2000:]}")


def instructions(n: int = 4_000) -> None:
    """Instructions per request of every case: (run(6N) - run(N)) / 5N, runs in parallel."""
    if shutil.which("valgrind") is None:
        print("(valgrind not installed: instruction counts skipped)\n")
        return
    from concurrent.futures import ThreadPoolExecutor

    cases = make_cases()
    jobs = [(k, m) for k in range(len(cases)) for m in (n, 6 * n)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        totals = list(pool.map(lambda job: _callgrind_total(*job), jobs))
    print(f"\nCPU instructions per request (callgrind, {n} and {6 * n} requests a case)\n")
    print("| protocol | variant | instructions | added | added, x the seed's |")
    print("| --- | --- | ---: | ---: | ---: |")
    bare: dict[str, float] = {}
    seed: dict[str, float] = {}
    for k, (proto, name, _loop, _app) in enumerate(cases):
        per = (totals[2 * k + 1] - totals[2 * k]) / (5 * n)
        base = bare.setdefault(proto, per)
        extra = per - base
        if name == SEED:
            seed[proto] = extra
        versus = "" if name == BARE or not seed.get(proto) else f"{extra / seed[proto]:.2f}x"
        print(f"| {proto} | {LABELS[name]} | {per:.0f} | {extra:.0f} | {versus} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50_000, help="requests per run")
    parser.add_argument(
        "--repeat", type=int, default=15, help="rounds, each running every case once (best kept)"
    )
    parser.add_argument(
        "--instructions", action="store_true", help="also count CPU instructions (valgrind)"
    )
    parser.add_argument("--drive", nargs=2, type=int, metavar=("CASE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        drive(*args.drive)
        return 0

    cases = make_cases()
    print(
        f"Python {sys.version.split()[0]}, {args.n} requests x {args.repeat} interleaved "
        "rounds, best run (median in brackets)\n"
    )
    print("| protocol | variant | ns/request | added ns | added, x the seed's |")
    print("| --- | --- | ---: | ---: | ---: |")
    added: dict[tuple[str, str], float] = {}
    results = measure(cases, args.n, args.repeat)
    for (proto, name, _loop, _app), (best, median) in zip(cases, results, strict=True):
        bare = added.setdefault((proto, BARE), best) if name == BARE else added[(proto, BARE)]
        extra = best - bare
        if name != BARE:
            added[(proto, name)] = extra
        seed = added.get((proto, SEED))
        versus = "" if name == BARE or not seed else f"{extra / seed:.2f}x"
        print(f"| {proto} | {LABELS[name]} | {best:.0f} ({median:.0f}) | {extra:.0f} | {versus} |")

    print()
    print("| target | measured | met |")
    print("| --- | ---: | :---: |")
    for proto in ("WSGI", "ASGI"):
        measured = added[(proto, DEFAULT)]
        met = "yes" if measured <= TARGET_ADDED_NS else "no"
        print(
            f"| {proto}: default middleware adds <= {TARGET_ADDED_NS} ns a request "
            f"| {measured:.0f} ns | {met} |"
        )
    if args.instructions:
        instructions()
    return 0


if __name__ == "__main__":
    sys.exit(main())
