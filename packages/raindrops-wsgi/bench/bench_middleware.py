"""What the raindrops WSGI middleware costs, against its floor and prometheus_client.

Run: ``python bench/bench_middleware.py`` (or ``nox -s bench``); bounded to
about two minutes.  Prints Markdown tables, then the targets table:

1. The per-request cost added to a trivial WSGI app called in-process (app
   call, iterate the body, ``close()``), for
   - the floor: the four atomic operations (incr/decr ``calling``,
     incr/decr ``writing``) as bare cffi calls on shm-counters cells, plus a
     minimal body proxy;
   - raindrops: ``RaindropsMiddleware``;
   - prometheus_client: two multiprocess ``Gauge``s (``livesum``) doing the
     same job, with the same body proxy;
   - the floor with the guard that ends ``writing`` for a body never closed:
     a ``__del__`` as the middleware's proxy has, and ``weakref.finalize``,
     the alternative it was measured against.
2. The endpoint's own latency with 2 listeners and 1,000 connections.
3. gunicorn throughput with and without the middleware (Linux; skipped if
   gunicorn is missing): both servers run side by side, and an
   out-of-process load generator (``wrk`` if installed, else
   ``integration/loadgen.py`` in its own process) drives them in
   interleaved rounds (A B B A ...); the ratio is the median of the
   per-pair ratios, with their spread.

``--instructions`` (needs valgrind) measures part 1 in CPU instructions
instead of time, which a busy machine does not disturb: each app is run
for N and 6N requests under ``valgrind --tool=callgrind`` and the
difference divided by 5N.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROUNDS = 7
REQUESTS = 20_000
FLOOR = "floor (4 bare cffi atomics + body proxy)"
FLOOR_OWN = "same floor on shm-counters' own calls (GIL kept)"
FLOOR_DEL = "floor + __del__ guard (the proxy ends writing if never closed)"
FLOOR_FINALIZE = "floor + weakref.finalize guard (the alternative)"
OURS = "raindrops RaindropsMiddleware"
PROM = "prometheus_client multiprocess Gauge x2"
# Targets (issue 4): cost vs floor at most, prometheus_client/ours at least,
# endpoint median latency at most (ms), gunicorn throughput ratio at least.
TARGET_FLOOR = 1.4
TARGET_PROM = 3.0
TARGET_LATENCY_MS = 2.0
TARGET_THROUGHPUT = 0.98
INTEGRATION = Path(__file__).resolve().parents[3] / "integration"
_KEEP: list[object] = []  # what the measured apps use stays alive to the end
_RESULTS: dict[str, tuple[str, str, bool | None]] = {}


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


def _standard_atomics() -> tuple[Any, Any, Any] | None:
    """``(inc, dec, cast)``: +1/-1 atomics compiled by cffi the standard way.

    The floor the issue names, "bare cffi calls", as cffi ships them: each
    wrapper releases and retakes the GIL and saves errno. shm-counters keeps
    the GIL in its own calls (packages/shm-counters/src/_ffi_build.py), so
    the floor built on them is measured too. ``cast`` turns a shm-counters
    cell into this module's pointer type. None without a compiler.
    """
    import importlib.util

    from cffi import FFI  # type: ignore[import-untyped,unused-ignore]

    ref = FFI()
    ref.cdef("uint64_t inc(uint64_t *cell); uint64_t dec(uint64_t *cell);")
    ref.set_source(
        "_rd_bench_ref",
        "#include <stdint.h>\n"
        "static uint64_t inc(uint64_t *c) { return __atomic_add_fetch(c, 1, __ATOMIC_RELAXED); }\n"
        "static uint64_t dec(uint64_t *c) { return __atomic_sub_fetch(c, 1, __ATOMIC_RELAXED); }\n",
    )
    try:
        built = ref.compile(tmpdir=tempfile.mkdtemp(prefix="rd-bench-ref-"))
    except Exception as exc:  # no compiler: the row is skipped
        print(f"<!-- standard cffi reference not built: {exc} -->")
        return None
    spec = importlib.util.spec_from_file_location("_rd_bench_ref", built)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _KEEP.append(module)
    from shm_counters._native import ffi

    def cast(cell: Any) -> Any:
        return module.ffi.cast("uint64_t *", int(ffi.cast("uintptr_t", cell)))

    return module.lib.inc, module.lib.dec, cast


def _floor_app(
    standard: bool = True, guard: str | None = None
) -> Callable[..., Iterable[bytes]] | None:
    """The floor; ``guard`` adds what ends ``writing`` for a body never closed.

    ``"del"``: a ``__del__`` as the middleware's proxy has (a slot stored
    per request, a check when collected); ``"finalize"``: a
    ``weakref.finalize`` per body, cancelled by ``close()``.
    """
    from shm_counters import Scoreboard
    from shm_counters._native import lib

    board = Scoreboard(4, ["calling", "writing"])
    row = board.claim()
    calling = row._cells[0][0]
    writing = row._cells[1][0]
    if standard:
        ref = _standard_atomics()
        if ref is None:
            return None
        inc, dec, cast = ref
        calling, writing = cast(calling), cast(writing)
    else:
        inc, dec = lib.shmc_inc1, lib.shmc_dec1

    class Body:
        __slots__ = ("body",)

        def __init__(self, body: Iterable[bytes]) -> None:
            self.body = body

        def __iter__(self) -> Any:
            return iter(self.body)

        def close(self) -> None:
            dec(writing)

    epoch = 0

    class DelBody:
        __slots__ = ("body", "done", "epoch")

        def __init__(self, body: Iterable[bytes]) -> None:
            self.body = body
            self.done: bool = True
            self.epoch = epoch

        def __iter__(self) -> Any:
            return iter(self.body)

        def close(self) -> None:
            if self.done:
                self.done = False
                dec(writing)

        def __del__(self) -> None:
            if self.done and self.epoch == epoch:
                self.done = False
                dec(writing)

    class FinalizedBody:
        __slots__ = ("__weakref__", "body", "final")

        def __init__(self, body: Iterable[bytes]) -> None:
            self.body = body
            self.final = weakref.finalize(self, dec, writing)

        def __iter__(self) -> Any:
            return iter(self.body)

        def close(self) -> None:
            self.final()

    proxy = {None: Body, "del": DelBody, "finalize": FinalizedBody}[guard]

    def floor(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        inc(calling)
        body = _app(environ, start_response)
        dec(calling)
        inc(writing)
        return proxy(body)

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


def _in_process_apps(tmp: str) -> dict[str, Callable[..., Iterable[bytes]]]:
    from raindrops_wsgi import RaindropsMiddleware

    middleware = RaindropsMiddleware(_app, listeners=[], segment="anonymous")
    _KEEP.append(middleware)
    apps: dict[str, Callable[..., Iterable[bytes]] | None] = {
        "bare": _app,
        FLOOR: _floor_app(standard=True),
        FLOOR_OWN: _floor_app(standard=False),
        FLOOR_DEL: _floor_app(standard=True, guard="del"),
        FLOOR_FINALIZE: _floor_app(standard=True, guard="finalize"),
        OURS: middleware,
        PROM: _prometheus_app(tmp),
    }
    return {name: app for name, app in apps.items() if app is not None}


def _record_in_process(added: dict[str, float], unit: str) -> None:
    floor, mine, prom = added.get(FLOOR, added[FLOOR_OWN]), added[OURS], added[PROM]
    vs_floor, vs_prom = mine / floor, prom / mine
    _RESULTS[f"added cost vs floor ({unit})"] = (
        f"<= {TARGET_FLOOR}x",
        f"{vs_floor:.2f}x",
        vs_floor <= TARGET_FLOOR,
    )
    _RESULTS[f"prometheus_client vs raindrops ({unit})"] = (
        f">= {TARGET_PROM}x cheaper",
        f"{vs_prom:.2f}x",
        vs_prom >= TARGET_PROM,
    )


def _print_added(title: str, bare: float, added: dict[str, float], unit: str) -> None:
    mine = added[OURS]
    print(f"### {title}\n")
    print(f"Trivial app alone: {bare:.0f} {unit}/request.\n")
    print(f"| what | added {unit}/request | vs floor | vs raindrops |")
    print("| --- | ---: | ---: | ---: |")
    floor = added.get(FLOOR, added[FLOOR_OWN])
    for name, cost in added.items():
        print(f"| {name} | {cost:.0f} | {cost / floor:.2f}x | {cost / mine:.2f}x |")
    print()


def bench_in_process() -> None:
    environ = {"PATH_INFO": "/", "REQUEST_METHOD": "GET"}
    with tempfile.TemporaryDirectory(prefix="rd-bench-prom-") as tmp:
        best = _best_of(_in_process_apps(tmp), environ)
    bare = best.pop("bare")
    added = {name: cost - bare for name, cost in best.items()}
    _print_added("Per-request cost added to a trivial WSGI app (in-process)", bare, added, "ns")
    _record_in_process(added, "time")


def _callgrind_total(name: str, n: int) -> int:
    """CPU instructions of a whole run of this script driving app ``name`` ``n`` times."""
    argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    argv += [sys.executable, __file__, "--drive", name, str(n)]
    env = dict(os.environ, PYTHONHASHSEED="0")
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600, check=True)
    for line in done.stderr.splitlines():
        if "Collected :" in line:
            return int(line.rsplit(":", 1)[1])
    raise RuntimeError(f"no instruction count from valgrind:\n{done.stderr[-2000:]}")


def bench_instructions(n: int = 3_000) -> None:
    """Part 1 in instructions: (run(6N) - run(N)) / 5N per app, all runs in parallel."""
    if shutil.which("valgrind") is None:
        print("(valgrind not installed: instruction counts skipped)\n")
        return
    from concurrent.futures import ThreadPoolExecutor

    names = ["bare", FLOOR, FLOOR_OWN, OURS, PROM]
    jobs = [(name, k) for name in names for k in (n, 6 * n)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        totals = list(pool.map(lambda job: _callgrind_total(*job), jobs))
    per = {name: (totals[2 * i + 1] - totals[2 * i]) / (5 * n) for i, name in enumerate(names)}
    bare = per.pop("bare")
    added = {name: cost - bare for name, cost in per.items()}
    title = "Per-request cost added to a trivial WSGI app (in-process, CPU instructions)"
    _print_added(title, bare, added, "instructions")
    _record_in_process(added, "instructions")


def _drive_one(name: str, n: int) -> None:
    """``--drive NAME N``: warm up, then run one app N times (under valgrind)."""
    environ = {"PATH_INFO": "/", "REQUEST_METHOD": "GET"}
    with tempfile.TemporaryDirectory(prefix="rd-bench-prom-") as tmp:
        app = _in_process_apps(tmp)[name]
        _drive(app, environ, 200)
        gc.disable()
        _drive(app, environ, n)


def _sockstat() -> str:
    """The TCP line of /proc/net/sockstat: every dump walks all of these sockets."""
    try:
        with open("/proc/net/sockstat", encoding="ascii") as f:
            for line in f:
                if line.startswith("TCP:"):
                    return line.strip()
    except OSError:
        pass
    return "unknown"


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
        print(f"Sockets on the machine while measuring (/proc/net/sockstat): {_sockstat()}\n")
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
        median_ms = statistics.median(times) / 1e6
        _RESULTS["endpoint latency, median"] = (
            f"<= {TARGET_LATENCY_MS} ms",
            f"{median_ms:.3f} ms",
            median_ms <= TARGET_LATENCY_MS,
        )
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

# Run in its own process: integration/loadgen.py, N requests, C at a time.
_LOADGEN = """
import sys
sys.path.insert(0, sys.argv[1])
from loadgen import run_load
result = run_load(("127.0.0.1", int(sys.argv[2])), [("/", b"ok")],
                  total=int(sys.argv[3]), concurrency=int(sys.argv[4]), max_seconds=60)
print(result.ok, len(result.failures), result.seconds)
"""

LOAD_SECONDS = 2  # wrk: duration of one round
LOAD_REQUESTS = 2_000  # loadgen: requests in one round
LOAD_CONNECTIONS = 8
THROUGHPUT_PAIRS = 6  # rounds A B, B A, ... per app pair
THROUGHPUT_BUDGET = 90.0  # seconds for the whole part, at most


def _requests_per_second(port: int) -> float:
    """One round of out-of-process load against 127.0.0.1:``port``."""
    wrk = shutil.which("wrk")
    if wrk is not None:
        argv = [wrk, "-t1", f"-c{LOAD_CONNECTIONS}", f"-d{LOAD_SECONDS}s"]
        out = subprocess.run(
            [*argv, f"http://127.0.0.1:{port}/"],
            capture_output=True,
            text=True,
            timeout=LOAD_SECONDS + 30,
            check=True,
        ).stdout
        for line in out.splitlines():
            if line.startswith("Requests/sec:"):
                return float(line.split(":", 1)[1])
        raise RuntimeError(f"no Requests/sec in wrk output:\n{out}")
    argv = [sys.executable, "-c", _LOADGEN, str(INTEGRATION), str(port)]
    argv += [str(LOAD_REQUESTS), str(LOAD_CONNECTIONS)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=True).stdout
    ok, failed, seconds = out.split()
    if int(failed):
        raise RuntimeError(f"{failed} requests failed against port {port}")
    return int(ok) / float(seconds)


def _wait_http(port: int, deadline: float) -> None:
    request = b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                conn.sendall(request)
                if conn.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"gunicorn on port {port} did not answer in time")


@contextmanager
def _gunicorn(attr: str, tmp: str) -> Iterator[int]:
    """gunicorn, 2 sync workers, serving ``bench_app:<attr>`` on a port we bound."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.set_inheritable(True)
    env = dict(os.environ, PYTHONPATH=tmp, RAINDROPS_SEGMENT=os.path.join(tmp, f"board-{attr}"))
    argv = [sys.executable, "-m", "gunicorn", "--bind", f"fd://{sock.fileno()}"]
    argv += ["--workers", "2", "--log-level", "warning", f"bench_app:{attr}"]
    proc = subprocess.Popen(
        argv, pass_fds=(sock.fileno(),), env=env, cwd=tmp, start_new_session=True
    )
    try:
        port = sock.getsockname()[1]
        _wait_http(port, time.monotonic() + 30)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
        sock.close()


def bench_gunicorn() -> None:
    try:
        import gunicorn  # noqa: F401
    except ImportError:
        print("(gunicorn not installed: throughput skipped)\n")
        return
    if shutil.which("wrk") is None and not (INTEGRATION / "loadgen.py").exists():
        print("(neither wrk nor integration/loadgen.py found: throughput skipped)\n")
        return
    tool = "wrk" if shutil.which("wrk") else "integration/loadgen.py (own process)"
    rates: dict[str, list[float]] = {"bare": [], "wrapped": []}
    ratios: list[float] = []
    with tempfile.TemporaryDirectory(prefix="rd-bench-") as tmp, ExitStack() as stack:
        Path(tmp, "bench_app.py").write_text(_GUNICORN_APP)
        ports = {attr: stack.enter_context(_gunicorn(attr, tmp)) for attr in ("bare", "wrapped")}
        for port in ports.values():  # warm up both
            _requests_per_second(port)
        deadline = time.monotonic() + THROUGHPUT_BUDGET
        for pair in range(THROUGHPUT_PAIRS):
            if time.monotonic() > deadline:
                break
            order = ("bare", "wrapped") if pair % 2 == 0 else ("wrapped", "bare")
            got = {attr: _requests_per_second(ports[attr]) for attr in order}
            for attr, rate in got.items():
                rates[attr].append(rate)
            ratios.append(got["wrapped"] / got["bare"])
    print(
        f"### gunicorn, 2 sync workers, load by {tool}, {LOAD_CONNECTIONS} connections, "
        f"new connection per request, {len(ratios)} interleaved pairs\n"
    )
    print("| app | requests/s median | min | max |")
    print("| --- | ---: | ---: | ---: |")
    for attr, label in (("bare", "bare WSGI app"), ("wrapped", "with RaindropsMiddleware")):
        values = rates[attr]
        print(
            f"| {label} | {statistics.median(values):.0f} | {min(values):.0f} | {max(values):.0f} |"
        )
    ratio = statistics.median(ratios)
    print(
        f"\nwith/without, per pair: median {ratio:.3f}x, "
        f"spread {min(ratios):.3f}x to {max(ratios):.3f}x\n"
    )
    _RESULTS["gunicorn throughput with/without, median"] = (
        f">= {TARGET_THROUGHPUT}x",
        f"{ratio:.3f}x ({min(ratios):.3f} to {max(ratios):.3f})",
        ratio >= TARGET_THROUGHPUT,
    )


def print_targets() -> None:
    print("### Targets\n")
    print("| target | goal | measured | met |")
    print("| --- | --- | ---: | --- |")
    for name, (goal, measured, met) in _RESULTS.items():
        print(f"| {name} | {goal} | {measured} | {'yes' if met else 'NO'} |")
    print()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--instructions", action="store_true", help="also count CPU instructions (valgrind)"
    )
    parser.add_argument("--drive", nargs=2, metavar=("APP", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.drive:
        _drive_one(args.drive[0], int(args.drive[1]))
        return
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs\n")
    bench_in_process()
    if args.instructions:
        bench_instructions()
    if sys.platform.startswith("linux"):
        bench_endpoint()
        bench_gunicorn()
    print_targets()


if __name__ == "__main__":
    main()
