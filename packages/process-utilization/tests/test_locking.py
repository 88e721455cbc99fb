"""Threads, tasks and readers: exact totals, no lost update, no request half counted."""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from process_utilization import ProcessUtilization, UtilizationStats, response_ns, worker_stats
from process_utilization.asgi import ProcessUtilization as AsgiProcessUtilization


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def environ(**extra: Any) -> dict[str, Any]:
    env: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": False,
    }
    env.update(extra)
    return env


def start(mw: ProcessUtilization, **extra: Any) -> Any:
    """Start one request (its body not yet closed)."""
    return mw(environ(**extra), lambda *a: None)


class Ticks:
    """A clock that moves 1 ms at every reading, from any thread (never the same time twice)."""

    def __init__(self) -> None:
        self._next = itertools.count(1_000_000)

    def __call__(self) -> float:
        return next(self._next) / 1000


class GateClock:
    """A settable clock whose next call from the thread named ``stop_in`` waits for ``go``."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.stop_in: str | None = None
        self.stopped = threading.Event()
        self.go = threading.Event()

    def __call__(self) -> float:
        if self.stop_in is not None and threading.current_thread().name == self.stop_in:
            self.stop_in = None
            self.stopped.set()
            if not self.go.wait(10):  # pragma: no cover - the test failed elsewhere
                raise TimeoutError("the test never released the clock")
        return self.t


def in_thread(name: str, target: Callable[[], object], out: list[Any]) -> threading.Thread:
    t = threading.Thread(target=lambda: out.append(target()), name=name)
    t.start()
    return t


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Threads switch every microsecond, so races have every chance to show."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def run_threads(*targets: Callable[[], None]) -> None:
    """Run each target in its own thread; re-raise the first failure."""
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        return run

    threads = [threading.Thread(target=guarded(t)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []


def assert_row_agrees(mw: ProcessUtilization) -> None:
    """The row other processes read holds the figures this process reads of itself."""
    s = mw.stats()
    row = mw.scoreboard.rows()[0].values
    assert (row["entered"] - row["requests"], row["requests"]) == (s.in_flight, s.requests)
    assert row["busy_ns"] / 1e9 == s.busy_seconds_total
    [w] = worker_stats(mw.scoreboard)
    assert w.response_seconds_total == response_ns(row) / 1e9


@pytest.mark.usefixtures("fast_switching")
@pytest.mark.parametrize("says", [True, None])
def test_requests_in_threads_lose_no_update(says: bool | None) -> None:
    """8 threads x 300 requests of a threaded server (or one that does not say) count exactly."""
    mw = ProcessUtilization(hello, clock=Ticks())
    extra = {} if says is None else {"wsgi.multithread": says}

    def worker() -> None:
        for _ in range(300):
            env = environ(**extra)
            if says is None:
                del env["wsgi.multithread"]
            body = mw(env, lambda *a: None)
            list(body)
            body.close()  # type: ignore[attr-defined]

    run_threads(*[worker] * 8)
    s = mw.stats()
    assert (s.in_flight, s.total_requests, s.requests) == (0, 2400, 2400)
    assert 0 < s.active_time <= s.horizon_time
    assert_row_agrees(mw)


@pytest.mark.usefixtures("fast_switching")
def test_lock_free_requests_and_callers_in_another_thread_lose_no_update() -> None:
    """A sync server's lock-free requests and reset_stats()/stats() in another thread stay exact."""
    mw = ProcessUtilization(hello, clock=Ticks())
    readings: list[UtilizationStats] = []

    def requests() -> None:
        for _ in range(3000):
            start(mw).close()

    def others() -> None:
        for _ in range(1000):
            mw.reset_stats()
            readings.append(mw.stats())
            mw.record_request()

    run_threads(requests, others)
    s = mw.stats()
    assert (s.in_flight, s.total_requests, s.requests) == (0, 3000, 4000)
    assert s.active_time <= s.horizon_time
    assert {r.in_flight for r in readings} <= {1, 2}
    busy = [r.busy_seconds_total for r in readings]
    assert busy == sorted(busy)
    assert_row_agrees(mw)


def test_a_reader_never_sees_a_request_start_half_counted() -> None:
    """stats() in another thread, while a request's start is half done, sees it done."""
    gate = GateClock()
    mw = ProcessUtilization(hello, clock=gate)
    start(mw).close()
    gate.stop_in = "request"
    bodies: list[Iterable[bytes]] = []
    request = in_thread("request", lambda: start(mw), bodies)
    assert gate.stopped.wait(10)
    # The request thread is inside its start, reading the clock: counted in
    # total_requests, not yet in flight.
    assert (mw.total_requests, mw.in_flight) == (2, 0)
    seen: list[UtilizationStats] = []
    reader = in_thread("reader", mw.stats, seen)
    time.sleep(0.05)  # the reader waits for the start to end
    assert seen == []
    gate.go.set()
    request.join(10)
    reader.join(10)
    assert [(s.total_requests, s.in_flight) for s in seen] == [(2, 1)]
    bodies[0].close()  # type: ignore[attr-defined]
    assert (mw.requests, mw.in_flight) == (2, 0)


def test_a_request_starting_while_a_reader_reads_is_counted_after_it() -> None:
    """A request starting while stats() reads in another thread waits, then counts."""
    gate = GateClock()
    mw = ProcessUtilization(hello, clock=gate)
    start(mw).close()
    gate.stop_in = "reader"
    seen: list[UtilizationStats] = []
    reader = in_thread("reader", mw.stats, seen)
    assert gate.stopped.wait(10)  # the reader holds the lock, reading the clock
    bodies: list[Iterable[bytes]] = []
    request = in_thread("request", lambda: start(mw), bodies)
    time.sleep(0.05)
    assert (mw.total_requests, mw.in_flight) == (1, 0)  # it waits for the reader
    gate.go.set()
    reader.join(10)
    request.join(10)
    assert [(s.total_requests, s.in_flight) for s in seen] == [(1, 0)]
    assert (mw.total_requests, mw.in_flight) == (2, 1)
    bodies[0].close()  # type: ignore[attr-defined]
    assert (mw.requests, mw.in_flight) == (2, 0)


@pytest.mark.parametrize("reset_first", [False, True])
def test_a_reader_inside_the_requests_own_section_does_not_wait_for_itself(
    reset_first: bool,
) -> None:
    """stats() from inside a request's own section (a signal handler, say) returns at once,
    also when reset_stats() in another thread came before the first request."""
    seen: list[UtilizationStats] = []

    class ReadingClock:
        t = 1000.0
        inside = False
        read = False

        def __call__(self) -> float:
            if self.read and not self.inside:
                self.inside = True
                try:
                    seen.append(mw.stats())
                finally:
                    self.inside = False
            return self.t

    clock = ReadingClock()
    mw = ProcessUtilization(hello, clock=clock)
    if reset_first:
        other = threading.Thread(target=lambda: (mw.reset_stats(), mw.record_request()))
        other.start()
        other.join(10)
    done = 1 if reset_first else 0

    def serve() -> None:  # the server's one thread: two requests, the second one read
        start(mw).close()
        clock.read = True
        clock.t = 1001.0
        body = start(mw)
        clock.read = False
        body.close()

    requests = threading.Thread(target=serve, daemon=True)
    requests.start()
    requests.join(10)
    assert not requests.is_alive(), "the reader waited for its own request's section"
    assert [(s.total_requests, s.in_flight) for s in seen] == [(2, 0)]
    assert (mw.requests, mw.in_flight, mw.total_requests) == (2 + done, 0, 2)


def test_a_reader_sees_a_request_in_the_app_in_flight_and_busy_up_to_now(clock: Any) -> None:
    """While a request is inside the app, another thread sees it in flight, busy up to now."""
    inside, release = threading.Event(), threading.Event()

    def slow(env: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        inside.set()
        assert release.wait(10)
        return hello(env, start_response)

    mw = ProcessUtilization(slow, clock=clock)
    clock.t = 1000.0
    out: list[Any] = []
    request = in_thread("request", lambda: start(mw), out)
    assert inside.wait(10)
    clock.t = 1002.5
    seen: list[UtilizationStats] = []
    in_thread("reader", mw.stats, seen).join(10)
    release.set()
    request.join(10)
    [s] = seen
    assert (s.in_flight, s.requests, s.active_time, s.busy_seconds_total) == (1, 0, 2.5, 2.5)
    out[0].close()
    assert (mw.in_flight, mw.requests) == (0, 1)


def test_asgi_tasks_overlapping_count_exactly(clock: Any) -> None:
    """100 tasks in one event loop, each awaiting inside the app, give exact totals and busy."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(0)
        clock.t += 0.001
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    mw = AsgiProcessUtilization(app, clock=clock)

    async def send(message: Any) -> None:
        await asyncio.sleep(0)

    async def receive() -> Any:
        return {"type": "http.request"}

    async def main() -> None:
        clock.t = 1000.0
        scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
        await asyncio.gather(*(mw(dict(scope), receive, send) for _ in range(100)))

    asyncio.run(main())
    s = mw.stats()
    assert (s.in_flight, s.total_requests, s.requests) == (0, 100, 100)
    assert s.busy_seconds_total == pytest.approx(0.1)  # one union: 100 steps of 1 ms
    assert_row_agrees(mw)


@pytest.mark.usefixtures("fast_switching")
def test_asgi_requests_from_a_second_event_loop_lose_no_update(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two event loops in two threads serving at once count exactly; the second is said once."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hello"})

    mw = AsgiProcessUtilization(app, clock=Ticks())

    async def send(message: Any) -> None:
        return None

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    both = threading.Barrier(2, timeout=10)

    def serve() -> None:
        async def main() -> None:
            for k in range(500):
                await mw({"type": "http", "method": "GET", "path": "/"}, receive, send)
                if k == 0:
                    both.wait()  # both loops are serving (thread idents are reused)

        asyncio.run(main())

    with caplog.at_level(logging.INFO, logger="process_utilization"):
        run_threads(serve, serve)
    s = mw.stats()
    assert (s.in_flight, s.total_requests, s.requests) == (0, 1000, 1000)
    assert_row_agrees(mw)
    assert [r.getMessage() for r in caplog.records] == [
        "process_utilization: ASGI requests on a second thread (several event loops?): "
        "every request takes a lock from now on"
    ]


@pytest.mark.usefixtures("fast_switching")
def test_without_the_gil_every_request_locks(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a free-threaded build with the GIL off, requests in threads lose no update,
    even from a server saying it runs one at a time."""
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
    mw = ProcessUtilization(hello, clock=Ticks())

    def worker() -> None:
        for _ in range(300):
            start(mw).close()

    run_threads(*[worker] * 4)
    s = mw.stats()
    assert (s.in_flight, s.total_requests, s.requests) == (0, 1200, 1200)
    assert_row_agrees(mw)
