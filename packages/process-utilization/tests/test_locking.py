"""Which callers take the lock, and how the unlocked path and the locked callers meet."""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from process_utilization import ProcessUtilization, UtilizationStats
from process_utilization import _core as core
from process_utilization._board import response_ns
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


class RecordingLock:
    """A real lock that notes the name of every thread that acquires it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.acquired: list[str] = []

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        self.acquired.append(threading.current_thread().name)
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()


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


def wait_until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (bounded: 10 s), for a state another thread reaches."""
    for _ in range(10_000):
        if condition():
            return
        time.sleep(0.001)
    raise AssertionError("condition not reached in 10 s")  # pragma: no cover


def in_thread(name: str, target: Callable[[], object], out: list[Any]) -> threading.Thread:
    t = threading.Thread(target=lambda: out.append(target()), name=name)
    t.start()
    return t


def test_one_request_at_a_time_takes_no_lock(clock: Any) -> None:
    """With wsgi.multithread false, requests (nested ones too) never take the lock."""
    mw = ProcessUtilization(hello, clock=clock)
    lock = RecordingLock()
    mw._lock = lock  # type: ignore[assignment]
    clock.t = 1000.0
    first = start(mw)
    clock.t = 1001.0
    first.close()
    clock.t = 1002.0
    a = start(mw)
    clock.t = 1002.5
    b = start(mw)  # overlapping in the same thread: a nested call of the app
    clock.t = 1003.0
    a.close()
    clock.t = 1004.0
    b.close()
    assert lock.acquired == []
    assert (mw.requests, mw.in_flight, mw.total_requests) == (3, 0, 3)
    row = mw.scoreboard.rows()[0].values
    assert (row["entered"], row["requests"], row["busy_ns"]) == (3, 3, 3_000_000_000)
    assert response_ns(row) == 3_500_000_000
    assert mw.active_time == 3.0  # a reader: it takes the lock
    assert lock.acquired == ["MainThread"]


def test_threaded_server_takes_the_lock_for_every_section(clock: Any) -> None:
    """With wsgi.multithread true the instance is shared: every start and end locks."""
    mw = ProcessUtilization(hello, clock=clock)
    lock = RecordingLock()
    mw._lock = lock  # type: ignore[assignment]
    for t in (1000.0, 1002.0):
        clock.t = t
        body = start(mw, **{"wsgi.multithread": True})
        clock.t = t + 1.0
        body.close()
    # one to share the instance, then one per start and per end
    assert lock.acquired == ["MainThread"] * 5
    assert mw._shared
    start(mw).close()  # a later request saying false still locks: shared for good
    assert lock.acquired == ["MainThread"] * 7
    assert (mw.requests, mw.in_flight, mw.total_requests) == (3, 0, 3)


def test_server_not_saying_is_taken_as_threaded(clock: Any) -> None:
    """An environ without wsgi.multithread shares the instance (the safe reading)."""
    mw = ProcessUtilization(hello, clock=clock)
    env = environ()
    del env["wsgi.multithread"]
    mw(env, lambda *a: None).close()  # type: ignore[attr-defined]
    assert mw._shared
    assert (mw.requests, mw.in_flight) == (1, 0)


def test_no_gil_shares_from_the_start(clock: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a free-threaded build with the GIL off every section takes the lock."""
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
    mw = ProcessUtilization(hello, clock=clock)
    lock = RecordingLock()
    mw._lock = lock  # type: ignore[assignment]
    start(mw).close()
    assert mw._shared
    assert lock.acquired == ["MainThread"] * 2


def test_reader_waits_for_the_request_section_in_progress(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """stats() in another thread never reads a request start half done."""
    monkeypatch.setattr(core, "_WAIT_SECONDS", 60.0)  # the test releases the section
    gate = GateClock()
    mw = ProcessUtilization(hello, clock=gate)
    start(mw).close()
    gate.stop_in = "request"
    bodies: list[Iterable[bytes]] = []
    request = in_thread("request", lambda: start(mw), bodies)
    assert gate.stopped.wait(10)
    # The request thread is inside its start: counted in total_requests,
    # not yet in flight. A reader now must wait for the rest.
    assert (mw.total_requests, mw.in_flight) == (2, 0)
    seen: list[UtilizationStats] = []
    reader = in_thread("reader", mw.stats, seen)
    wait_until(lambda: mw._locked == 1 or not reader.is_alive())
    gate.go.set()
    request.join(10)
    reader.join(10)
    assert [(s.total_requests, s.in_flight) for s in seen] == [(2, 1)]
    bodies[0].close()  # type: ignore[attr-defined]
    assert (mw.requests, mw.in_flight) == (2, 0)


def test_request_steps_back_while_a_reader_holds_the_lock() -> None:
    """A request starting while stats() reads waits for it, then counts under the lock."""
    gate = GateClock()
    mw = ProcessUtilization(hello, clock=gate)
    start(mw).close()
    lock = RecordingLock()
    mw._lock = lock  # type: ignore[assignment]
    gate.stop_in = "reader"
    seen: list[UtilizationStats] = []
    reader = in_thread("reader", mw.stats, seen)
    assert gate.stopped.wait(10)  # the reader holds the lock, about to read
    bodies: list[Iterable[bytes]] = []
    request = in_thread("request", lambda: start(mw), bodies)
    wait_until(lambda: "request" in lock.acquired)  # stepped back, queued for the lock
    assert (mw.total_requests, mw.in_flight) == (1, 0)
    gate.go.set()
    reader.join(10)
    request.join(10)
    assert [(s.total_requests, s.in_flight) for s in seen] == [(1, 0)]
    assert (mw.total_requests, mw.in_flight) == (2, 1)
    bodies[0].close()  # type: ignore[attr-defined]
    assert (mw.requests, mw.in_flight) == (2, 0)
    assert lock.acquired == ["reader", "request"]  # the end, alone again, did not lock


def test_asgi_second_event_loop_thread_shares_the_instance(
    clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """ASGI requests skip the lock on the first loop's thread until another thread serves one."""

    async def timed(scope: Any, receive: Any, send: Any) -> None:
        clock.t += 1.0
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hello"})

    mw = AsgiProcessUtilization(timed, clock=clock)
    lock = RecordingLock()
    mw._lock = lock  # type: ignore[assignment]

    async def send(message: Any) -> None:
        return None

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    def serve(requests: int) -> None:
        async def main() -> None:
            for _ in range(requests):
                await mw({"type": "http", "method": "GET", "path": "/"}, receive, send)

        asyncio.run(main())

    with caplog.at_level(logging.INFO, logger="process_utilization"):
        serve(3)
        assert lock.acquired == ["MainThread"]  # the first request claims its thread
        other = threading.Thread(target=serve, args=(2,), name="loop2")
        other.start()
        other.join(10)
        serve(1)
    assert lock.acquired == ["MainThread"] + ["loop2"] * 5 + ["MainThread"] * 2
    assert mw._shared
    assert (mw.requests, mw.in_flight, mw.total_requests) == (6, 0, 6)
    assert mw.stats().busy_seconds_total == 6.0
    assert [r.getMessage() for r in caplog.records] == [
        "process_utilization: ASGI requests on a second thread (several event loops?): "
        "every request takes a lock from now on"
    ]


def test_lock_free_requests_and_locked_callers_in_two_threads_stay_exact() -> None:
    """Lock-free requests in one thread and locked callers in another lose no update."""
    mw = ProcessUtilization(hello)
    errors: list[BaseException] = []
    readings: list[UtilizationStats] = []

    def requests() -> None:
        try:
            for _ in range(3000):
                start(mw).close()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def others() -> None:
        try:
            for _ in range(1000):
                mw.reset_stats()
                readings.append(mw.stats())
                mw.record_request()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=requests), threading.Thread(target=others)]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        sys.setswitchinterval(old)
    assert errors == []
    s = mw.stats()
    assert (s.in_flight, s.total_requests, s.requests) == (0, 3000, 4000)
    assert s.active_time <= s.horizon_time
    assert {r.in_flight for r in readings} <= {1, 2}
    busy = [r.busy_seconds_total for r in readings]
    assert busy == sorted(busy)
    row = mw.scoreboard.rows()[0].values
    assert (row["entered"], row["requests"]) == (4000, 4000)
    assert row["busy_ns"] == mw._timer.busy_ns
