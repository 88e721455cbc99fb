"""The accounting core, driven through the WSGI middleware with a fake clock."""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from process_utilization import (
    SEGMENT_ENV,
    ConfigError,
    MissingExtraError,
    ProcessUtilization,
    ProcessUtilizationError,
    worker_stats,
)
from process_utilization._board import response_ns
from process_utilization.wsgi import ProcessUtilization as WsgiProcessUtilization
from shm_counters import Scoreboard

from .conftest import EPOCH


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def environ(path: str = "/", **extra: Any) -> dict[str, Any]:
    """A request's environ, from a server serving one request at a time unless ``extra`` says."""
    env: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": False,
    }
    env.update(extra)
    return env


def run(
    mw: ProcessUtilization, clock: Any, start: float, end: float, **extra: Any
) -> dict[str, Any]:
    """One request from clock ``start`` to ``end``; returns its environ."""
    env = environ(**extra)
    clock.t = start
    body = mw(env, lambda *a: None)
    assert b"".join(body) == b"hello"
    clock.t = end
    body.close()  # type: ignore[attr-defined]
    return env


def test_wsgi_module_exports_the_same_class() -> None:
    """process_utilization.wsgi.ProcessUtilization is the top-level class."""
    assert WsgiProcessUtilization is ProcessUtilization


@pytest.mark.parametrize("threaded", [False, True])
def test_known_durations_give_exact_figures(clock: Any, threaded: bool) -> None:
    """Two sequential requests give exact active/idle time, %, req/s and average."""
    mw = ProcessUtilization(hello, clock=clock, wall_clock=clock.wall)
    run(mw, clock, 1000.0, 1000.25, **{"wsgi.multithread": threaded})
    run(mw, clock, 1000.5, 1001.0, **{"wsgi.multithread": threaded})
    clock.t = 1002.0
    assert mw.horizon == EPOCH + 1000.0
    assert mw.horizon_time == 2.0
    assert mw.active_time == 0.75
    assert mw.idle_time == 1.25
    assert mw.percentage_active == 37.5
    assert mw.percentage_idle == 62.5
    assert mw.requests == 2
    assert mw.total_requests == 2
    assert mw.requests_per_second == 1.0
    assert mw.average_response_time == 375.0
    assert mw.in_flight == 0


def test_request_in_flight_counts_as_busy_up_to_now(clock: Any) -> None:
    """A request not yet finished counts busy from its start to the reading."""
    mw = ProcessUtilization(hello, clock=clock)
    run(mw, clock, 1000.0, 1001.0)
    clock.t = 1002.0
    body = mw(environ(), lambda *a: None)
    clock.t = 1003.5
    assert mw.in_flight == 1
    assert mw.active_time == 2.5
    assert mw.total_requests == 2
    assert mw.requests == 1
    body.close()  # type: ignore[attr-defined]
    assert mw.in_flight == 0
    assert mw.requests == 2


def test_environ_keys_set_and_request_start_header_removed(clock: Any) -> None:
    """The environ gets request_start (wall clock) and total_requests; X-Request-Start goes."""
    mw = ProcessUtilization(hello, clock=clock, wall_clock=lambda: 1700000000.5)
    seen: dict[str, Any] = {}

    def app(env: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        seen.update(env)
        return hello(env, start_response)

    mw.app = app
    env = environ(HTTP_X_REQUEST_START="t=123")
    list(mw(env, lambda *a: None))
    assert seen["process.request_start"] == 1700000000.5
    assert seen["process.total_requests"] == 1
    assert "HTTP_X_REQUEST_START" not in seen


def test_first_request_starts_the_horizon(clock: Any) -> None:
    """The horizon starts at the first request, not at construction; first_request() restarts it."""
    clock.t = 5.0
    mw = ProcessUtilization(hello, clock=clock, wall_clock=clock.wall)
    assert mw.horizon is None
    assert mw.horizon_time == 0.0
    assert mw.percentage_active == 0.0
    assert mw.percentage_idle == 100.0
    run(mw, clock, 7.0, 8.0)
    run(mw, clock, 8.5, 9.0)
    assert mw.horizon == EPOCH + 7.0
    assert mw.requests == 2
    clock.t = 9.0
    mw.first_request()
    assert (mw.horizon, mw.requests, mw.total_requests) == (EPOCH + 9.0, 0, 2)


def test_horizon_is_wall_clock_time_and_durations_are_monotonic(clock: Any) -> None:
    """horizon is wall-clock time (the seed's Time.now); a wall-clock step changes no duration."""
    wall = [1_800_000_000.0]
    mw = ProcessUtilization(hello, clock=clock, wall_clock=lambda: wall[0])
    run(mw, clock, 1000.0, 1001.0)
    wall[0] = 1_000_000_000.0  # the wall clock is stepped back by years
    run(mw, clock, 1002.0, 1003.0)
    clock.t = 1004.0
    assert mw.horizon == 1_800_000_000.0
    assert (mw.horizon_time, mw.active_time, mw.average_response_time) == (4.0, 2.0, 1000.0)


def test_horizon_resets_after_window(clock: Any) -> None:
    """A request ending more than ``window`` seconds after the horizon starts a new one."""
    mw = ProcessUtilization(hello, clock=clock, wall_clock=clock.wall, window=10)
    run(mw, clock, 1000.0, 1001.0)
    run(mw, clock, 1009.0, 1010.0)  # exactly window: no reset
    assert mw.horizon == EPOCH + 1000.0
    assert mw.requests == 2
    run(mw, clock, 1010.0, 1010.5)
    assert mw.horizon == EPOCH + 1010.5
    assert mw.requests == 0
    assert mw.total_requests == 3
    clock.t = 1011.5
    assert mw.active_time == 0.0
    assert mw.horizon_time == 1.0
    run(mw, clock, 1011.5, 1012.0)
    clock.t = 1012.5
    assert mw.active_time == 0.5
    assert mw.percentage_active == 25.0
    assert mw.average_response_time == 500.0


def test_horizon_reset_with_a_request_in_flight_keeps_its_tail(clock: Any) -> None:
    """A request spanning a horizon reset counts only its part after the reset."""
    mw = ProcessUtilization(hello, clock=clock, wall_clock=clock.wall, window=10)
    clock.t = 1000.0
    long_body = mw(environ(), lambda *a: None)
    run(mw, clock, 1001.0, 1011.0)  # ends after the window: reset at 1011
    assert mw.horizon == EPOCH + 1011.0
    clock.t = 1012.0
    long_body.close()  # type: ignore[attr-defined]
    clock.t = 1013.0
    assert mw.active_time == 1.0
    assert mw.horizon_time == 2.0


def test_request_start_reads_the_wall_clock_per_request(clock: Any) -> None:
    """process.request_start is the wall clock at each request's start, steps included."""
    wall = [1_800_000_000.0]
    mw = ProcessUtilization(hello, clock=clock, wall_clock=lambda: wall[0] + clock.t)
    first = run(mw, clock, 1000.0, 1001.0)
    wall[0] = 1_000_000_000.0  # the wall clock is stepped back
    second = run(mw, clock, 1002.0, 1003.0)
    assert [e["process.request_start"] for e in (first, second)] == [
        1_800_001_000.0,
        1_000_001_002.0,
    ]


def test_reset_horizon_zeroes_the_horizon_figures(clock: Any) -> None:
    """reset_horizon() makes horizon now and requests and active_time zero, as in the seed."""
    mw = ProcessUtilization(hello, clock=clock, wall_clock=clock.wall)
    run(mw, clock, 1000.0, 1001.0)
    clock.t = 1002.0
    mw.reset_horizon()
    assert (mw.horizon, mw.requests, mw.active_time, mw.total_requests) == (
        EPOCH + 1002.0,
        0,
        0.0,
        1,
    )
    assert mw.stats().busy_seconds_total == 1.0


def test_reset_stats_starts_the_clock_and_record_request_records(clock: Any) -> None:
    """reset_stats() starts a request's clock (as in the seed); record_request() records it."""
    mw = ProcessUtilization(hello, clock=clock)
    clock.t = 1000.0
    assert mw.reset_stats() == 1_000_000_000_000
    assert (mw.in_flight, mw.total_requests, mw.requests) == (1, 0, 0)
    clock.t = 1000.5
    assert mw.record_request() is None
    clock.t = 1001.0
    assert (mw.in_flight, mw.total_requests, mw.requests) == (0, 0, 1)
    assert (mw.active_time, mw.average_response_time) == (0.5, 500.0)


def test_record_request_takes_the_start_of_its_own_thread(clock: Any) -> None:
    """reset_stats()/record_request() pairs in two threads each record their own start."""
    mw = ProcessUtilization(hello, clock=clock)
    started = threading.Barrier(2, timeout=10)
    ended = threading.Event()
    errors: list[BaseException] = []

    def first() -> None:
        try:
            mw.reset_stats()  # at 1000
            started.wait()
            assert ended.wait(10)
            clock.t = 1004.0
            mw.record_request()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    clock.t = 1000.0
    t = threading.Thread(target=first)
    t.start()
    started.wait()
    clock.t = 1001.0
    mw.reset_stats()
    clock.t = 1002.0
    mw.record_request()  # this thread's request: 1001..1002
    ended.set()
    t.join(10)
    assert errors == []
    assert (mw.requests, mw.in_flight) == (2, 0)
    assert mw.average_response_time == (1000.0 + 4000.0) / 2
    assert mw.active_time == 4.0


def test_record_request_without_a_start_warns_once(
    clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """record_request() with no reset_stats() before it records nothing and warns once."""
    mw = ProcessUtilization(hello, clock=clock)
    with caplog.at_level(logging.WARNING, logger="process_utilization"):
        assert mw.record_request() is None
        mw.reset_stats()
        mw.record_request()
        assert mw.record_request() is None
    assert (mw.requests, mw.in_flight) == (1, 0)
    assert [r.getMessage() for r in caplog.records] == [
        "process_utilization: record_request failed (logged once per process): "
        "RuntimeError('record_request() without a reset_stats() before it')"
    ]


@pytest.mark.parametrize("threaded", [False, True])
def test_interleaved_requests_count_overlap_once(clock: Any, threaded: bool) -> None:
    """Overlapping requests count their union as busy time, never above 100 %."""
    mw = ProcessUtilization(hello, clock=clock)
    clock.t = 1000.0
    a = mw(environ(**{"wsgi.multithread": threaded}), lambda *x: None)
    clock.t = 1000.5
    b = mw(environ(**{"wsgi.multithread": threaded}), lambda *x: None)
    clock.t = 1001.0
    a.close()  # type: ignore[attr-defined]
    clock.t = 1002.0
    b.close()  # type: ignore[attr-defined]
    assert mw.active_time == 2.0
    assert mw.percentage_active == 100.0
    assert mw.average_response_time == 1250.0
    clock.t = 1004.0
    assert mw.percentage_active == 50.0


def test_overlapping_requests_in_threads_count_once(clock: Any) -> None:
    """Two requests inside the app in two threads at once count busy time once."""
    inside = threading.Barrier(3, timeout=10)
    release = threading.Event()

    def slow(env: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        inside.wait()
        assert release.wait(10)
        return hello(env, start_response)

    mw = ProcessUtilization(slow, clock=clock)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            body = mw(environ(**{"wsgi.multithread": True}), lambda *a: None)
            body.close()  # type: ignore[attr-defined]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    clock.t = 1000.0
    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    inside.wait()
    assert mw.in_flight == 2
    clock.t = 1003.0
    release.set()
    for t in threads:
        t.join(10)
    assert errors == []
    clock.t = 1004.0
    assert mw.active_time == 3.0
    assert mw.percentage_active == 75.0
    assert mw.requests == 2
    assert mw.average_response_time == 3000.0


def test_many_threads_leave_consistent_counts() -> None:
    """8 threads x 200 requests leave 0 in flight, exact counts, busy <= horizon."""
    mw = ProcessUtilization(hello)

    def worker() -> None:
        for _ in range(200):
            list(body := mw(environ(**{"wsgi.multithread": True}), lambda *a: None))
            body.close()  # type: ignore[attr-defined]

    threads = [threading.Thread(target=worker) for _ in range(8)]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        sys.setswitchinterval(old)
    s = mw.stats()
    assert (s.in_flight, s.total_requests, s.requests) == (0, 1600, 1600)
    assert s.active_time <= s.horizon_time
    row = mw.scoreboard.rows()[0].values
    assert (row["entered"], row["requests"]) == (1600, 1600)
    [w] = worker_stats(mw.scoreboard)
    assert response_ns(row) / 1e9 == w.response_seconds_total
    assert w.average_response_time == pytest.approx(s.average_response_time)


def test_app_exception_still_records_the_request(clock: Any) -> None:
    """An exception from the app ends the request in the accounting and propagates."""

    def boom(env: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        clock.t = 1000.5
        raise RuntimeError("boom")

    mw = ProcessUtilization(boom, clock=clock)
    clock.t = 1000.0
    with pytest.raises(RuntimeError, match="boom"):
        mw(environ(), lambda *a: None)
    assert (mw.in_flight, mw.requests) == (0, 1)
    assert mw.active_time == 0.5


def test_body_close_calls_inner_close_and_records_once(clock: Any) -> None:
    """Closing the body closes the app's iterable, records once even if close raises."""
    closed: list[int] = []

    class Body:
        def __iter__(self) -> Any:
            return iter([b"a", b"b"])

        def close(self) -> None:
            closed.append(1)
            raise OSError("inner close failed")

    def app(env: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        return Body()

    mw = ProcessUtilization(app, clock=clock)
    body = mw(environ(), lambda *a: None)
    assert list(body) == [b"a", b"b"]
    with pytest.raises(OSError, match="inner close failed"):
        body.close()  # type: ignore[attr-defined]
    body.close()  # type: ignore[attr-defined]
    assert closed == [1]
    assert (mw.in_flight, mw.requests) == (0, 1)


def test_report_line_appears_when_due_and_not_before(clock: Any) -> None:
    """The report goes to wsgi.errors once report_interval has passed, then again later."""
    mw = ProcessUtilization(hello, clock=clock, report_interval=60, window=1000)
    first = run(mw, clock, 1000.0, 1000.5)
    early = run(mw, clock, 1059.0, 1059.5)
    assert first["wsgi.errors"].getvalue() == ""
    assert early["wsgi.errors"].getvalue() == ""
    due = run(mw, clock, 1059.5, 1060.0)
    line = due["wsgi.errors"].getvalue()
    assert line == (
        f"process-utilization pid={os.getpid()} worker=0 requests=3"
        " total_requests=3 in_flight=0 horizon=60.000s active=1.500s idle=58.500s"
        " util=2.5% rps=0.05 avg=500.0ms\n"
    )
    after = run(mw, clock, 1061.0, 1062.0)
    assert after["wsgi.errors"].getvalue() == ""
    again = run(mw, clock, 1119.0, 1120.0)
    assert again["wsgi.errors"].getvalue().startswith("process-utilization pid=")


def test_report_disabled_with_none(clock: Any) -> None:
    """report_interval=None never writes a report."""
    mw = ProcessUtilization(hello, clock=clock, report_interval=None)
    run(mw, clock, 1000.0, 1000.5)
    env = run(mw, clock, 5000.0, 5000.5)
    assert env["wsgi.errors"].getvalue() == ""


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"window": 0}, "window must be a positive number of seconds, got 0"),
        ({"window": True}, "window must be a positive number of seconds, got True"),
        (
            {"report_interval": -1},
            "report_interval must be a positive number of seconds or None, got -1",
        ),
        (
            {"stats_path": "stats"},
            "stats_path must be None or a path starting with '/', got 'stats'",
        ),
        ({"statsd": "nohost"}, "statsd must be a client or 'host:port', got 'nohost'"),
        ({"statsd": ":8125"}, "statsd must be a client or 'host:port', got ':8125'"),
        ({"statsd": "host:http"}, "statsd must be a client or 'host:port', got 'host:http'"),
        ({"statsd": "127.0.0.1:99999"}, "statsd port must be 1..65535, got '127.0.0.1:99999'"),
        ({"statsd": "127.0.0.1:0"}, "statsd port must be 1..65535, got '127.0.0.1:0'"),
        (
            {"statsd": "::1:8125"},
            "statsd IPv6 address must be in brackets like '[::1]:8125', got '::1:8125'",
        ),
        (
            {"statsd": "[localhost]:8125"},
            "statsd brackets must hold an IPv6 address like '[::1]:8125', got '[localhost]:8125'",
        ),
        (
            {"statsd": "[::1:8125"},
            "statsd brackets must hold an IPv6 address like '[::1]:8125', got '[::1:8125'",
        ),
        (
            {"statsd": "stats host:8125"},
            "statsd host must be a host name or an IP address, got 'stats host:8125'",
        ),
        (
            {"statsd": 8125},
            "statsd must be None, 'host:port' or a client with timing() and incr(), got 8125",
        ),
        ({"clock": "x"}, "clock must be a callable returning seconds, got 'x'"),
        ({"wall_clock": 1.5}, "wall_clock must be a callable returning seconds, got 1.5"),
        (
            {"report_to": "stderr"},
            "report_to must be None, a logging.Logger or a writable stream "
            "(an object with write()), got 'stderr'",
        ),
        ({"proctitle_prefix": 7}, "proctitle_prefix must be None or a string, got 7"),
        (
            {"segment": "utilization.seg"},
            "segment 'utilization.seg' is not an absolute path; give one like "
            "'/dev/shm/myapp-utilization', or 'anonymous'",
        ),
        ({"segment": 3}, "segment must be an absolute path or 'anonymous', got 3"),
        ({"slots": 0}, "slots must be a positive integer, got 0"),
    ],
)
def test_bad_options_raise_config_error(options: dict[str, Any], message: str) -> None:
    """Bad option values raise ConfigError (a ValueError) naming the value."""
    with pytest.raises(ConfigError) as info:
        ProcessUtilization(hello, **options)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, ProcessUtilizationError)


def test_relative_segment_creates_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative segment= is refused before anything is created in the cwd."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError):
        ProcessUtilization(hello, segment="utilization.seg")
    assert list(tmp_path.iterdir()) == []


def test_relative_segment_from_env_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative $PROCESS_UTILIZATION_SEGMENT is refused, naming the variable."""
    monkeypatch.setenv(SEGMENT_ENV, "rel/seg")
    with pytest.raises(ConfigError) as info:
        ProcessUtilization(hello)
    assert str(info.value) == (
        "$PROCESS_UTILIZATION_SEGMENT 'rel/seg' is not an absolute path; give one like "
        "'/dev/shm/myapp-utilization', or 'anonymous'"
    )


def test_anonymous_segment_ignores_the_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """segment='anonymous' uses anonymous memory even when the env names a file."""
    monkeypatch.setenv(SEGMENT_ENV, str(tmp_path / "never.seg"))
    mw = ProcessUtilization(hello, segment="anonymous")
    assert mw.scoreboard.path is None
    assert list(tmp_path.iterdir()) == []


def test_statsd_accepts_an_ipv6_address_in_brackets() -> None:
    """statsd='[::1]:8125' builds an IPv6 client for ::1 port 8125."""
    mw = ProcessUtilization(hello, statsd="[::1]:8125")
    try:
        assert mw._statsd._addr[:2] == ("::1", 8125)
    finally:
        mw.close()


def test_missing_extra_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Enabling proctitle without setproctitle installed raises MissingExtraError."""
    monkeypatch.setitem(sys.modules, "setproctitle", None)
    with pytest.raises(MissingExtraError) as info:
        ProcessUtilization(hello, proctitle=True)
    assert str(info.value) == (
        "proctitle=True needs the 'setproctitle' module, which is not installed; "
        "install it with: pip install 'process-utilization[setproctitle]'"
    )
    assert isinstance(info.value, ImportError)
    assert info.value.extra == "setproctitle"


class BrokenBoard:
    """A scoreboard whose every operation fails."""

    def claim(self) -> Any:
        raise OSError("no shared memory here")

    def rows(self) -> list[Any]:
        raise OSError("no shared memory here")


def test_accounting_errors_never_break_a_request(
    clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A failing scoreboard logs one warning; requests and local stats go on."""
    mw = ProcessUtilization(hello, clock=clock, scoreboard=BrokenBoard())  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="process_utilization"):
        run(mw, clock, 1000.0, 1001.0)
        run(mw, clock, 1001.0, 1002.0)
    assert mw.requests == 2
    assert mw.active_time == 2.0
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "no scoreboard row" in warnings[0]
    assert "no shared memory here" in warnings[0]


def test_a_row_that_cannot_be_set_up_is_released(
    clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A claimed row missing fields is released at once; local stats go on."""
    board = Scoreboard(4, ["entered", "requests", "busy_ns"])
    mw = ProcessUtilization(hello, clock=clock, scoreboard=board)
    with caplog.at_level(logging.WARNING, logger="process_utilization"):
        run(mw, clock, 1000.0, 1001.0)
        run(mw, clock, 1002.0, 1004.0)
    assert (mw.requests, mw.active_time) == (2, 3.0)
    assert board.rows() == []
    [warning] = [r.getMessage() for r in caplog.records]
    assert "no scoreboard row for pid" in warning
    assert "no field 'busy_since_ns' in ScoreboardRow" in warning
    board.close()


def test_failing_row_write_is_dropped_not_raised(
    clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A row that starts failing mid-request is dropped with a warning; the request ends."""
    mw = ProcessUtilization(hello, clock=clock)
    run(mw, clock, 1000.0, 1001.0)
    mw.scoreboard.close()  # closes the row under the middleware: every write raises
    with caplog.at_level(logging.WARNING, logger="process_utilization"):
        run(mw, clock, 1002.0, 1003.0)
        run(mw, clock, 1004.0, 1005.0)
    assert (mw.requests, mw.in_flight, mw.active_time) == (3, 0, 3.0)
    assert mw._row is None
    assert [r.getMessage() for r in caplog.records] == [
        "process_utilization: scoreboard update failed: "
        "ClosedError('operation on closed ScoreboardRow')"
    ]


class FlakyClock:
    """A settable clock that raises while ``broken`` is true."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.broken = False

    def __call__(self) -> float:
        if self.broken:
            raise OSError("clock gone")
        return self.t


def test_clock_failing_at_the_end_still_ends_the_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A clock raising at body close ends the request (nothing in flight), warning once."""
    clock = FlakyClock()
    mw = ProcessUtilization(hello, clock=clock)
    with caplog.at_level(logging.WARNING, logger="process_utilization"):
        for start in (1000.0, 1002.0):
            clock.t = start
            body = mw(environ(), lambda *a: None)
            assert list(body) == [b"hello"]
            clock.broken = True
            body.close()  # type: ignore[attr-defined]
            clock.broken = False
    clock.t = 1004.0
    assert (mw.in_flight, mw.requests, mw.total_requests) == (0, 2, 2)
    assert mw.active_time == 0.0
    row = mw.scoreboard.rows()[0].values
    assert (row["entered"], row["requests"], row["busy_ns"]) == (2, 2, 0)
    assert [r.getMessage() for r in caplog.records] == [
        "process_utilization: clock failed (logged once per process): OSError('clock gone')"
    ]


def test_clock_failing_at_the_start_passes_the_request_through(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A clock raising at the start serves the request uncounted in flight; never breaks it."""
    clock = FlakyClock()
    mw = ProcessUtilization(hello, clock=clock, wall_clock=lambda: 1700000000.5)
    clock.broken = True
    env = environ(HTTP_X_REQUEST_START="t=1")
    with caplog.at_level(logging.WARNING, logger="process_utilization"):
        body = mw(env, lambda *a: None)
        assert list(body) == [b"hello"]
        getattr(body, "close", lambda: None)()
    clock.broken = False
    assert (mw.in_flight, mw.requests, mw.total_requests) == (0, 0, 1)
    assert env["process.total_requests"] == 1
    assert env["process.request_start"] == 1700000000.5
    assert "HTTP_X_REQUEST_START" not in env
    assert len(caplog.records) == 1
    run(mw, clock, 1000.0, 1000.0)  # the clock works again: counted
    assert (mw.in_flight, mw.requests, mw.total_requests) == (0, 1, 2)


def test_wall_clock_failing_falls_back_to_time_time(
    clock: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wall clock raising gives process.request_start from time.time(), with one warning."""

    def broken() -> float:
        raise ValueError("no wall clock")

    mw = ProcessUtilization(hello, clock=clock, wall_clock=broken)
    monkeypatch.setattr("time.time", lambda: 1234.5)
    with caplog.at_level(logging.WARNING, logger="process_utilization"):
        first = run(mw, clock, 1000.0, 1000.5)
        second = run(mw, clock, 1001.0, 1001.5)
    assert (first["process.request_start"], second["process.request_start"]) == (1234.5, 1234.5)
    assert mw.horizon == 1234.5
    assert (mw.in_flight, mw.requests) == (0, 2)
    assert [r.getMessage() for r in caplog.records] == [
        "process_utilization: wall_clock failed (logged once per process): "
        "ValueError('no wall clock')"
    ]


REPORT = (
    "process-utilization pid={pid} worker=0 requests=2 total_requests=2"
    " in_flight=0 horizon=10.000s active=2.000s idle=8.000s util=20.0% rps=0.20"
    " avg=1000.0ms"
)


def test_report_to_a_logger(clock: Any, caplog: pytest.LogCaptureFixture) -> None:
    """report_to=a logger sends the report line there at INFO, not to wsgi.errors."""
    logger = logging.getLogger("test.pu.report")
    mw = ProcessUtilization(hello, clock=clock, report_interval=10, report_to=logger)
    run(mw, clock, 1000.0, 1001.0)
    with caplog.at_level(logging.INFO, logger="test.pu.report"):
        env = run(mw, clock, 1009.0, 1010.0)
    assert env["wsgi.errors"].getvalue() == ""
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("test.pu.report", "INFO", REPORT.format(pid=os.getpid()))
    ]


def test_report_to_a_stream(clock: Any) -> None:
    """report_to=a writable stream gets the report line, one line per report."""
    stream = io.StringIO()
    mw = ProcessUtilization(hello, clock=clock, report_interval=10, report_to=stream)
    run(mw, clock, 1000.0, 1001.0)
    env = run(mw, clock, 1009.0, 1010.0)
    assert env["wsgi.errors"].getvalue() == ""
    assert stream.getvalue() == REPORT.format(pid=os.getpid()) + "\n"


def test_singleton_is_the_latest_instance(clock: Any) -> None:
    """ProcessUtilization.singleton is the instance built last in this process."""
    mw = ProcessUtilization(hello, clock=clock)
    assert ProcessUtilization.singleton is mw
    assert repr(mw).startswith("<ProcessUtilization app=<function hello")
