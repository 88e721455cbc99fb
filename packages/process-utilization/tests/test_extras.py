"""The process title, statsd, GC tracking, Prometheus, the endpoint and the table."""

from __future__ import annotations

import gc
import io
import json
import os
import socket
import time
import wsgiref.util
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import setproctitle
from process_utilization import (
    FIELDS,
    ProcessUtilization,
    ProcessUtilizationCollector,
    WorkerStats,
    render_json,
    render_text,
    worker_stats,
)
from prometheus_client import CollectorRegistry, generate_latest
from shm_counters import RowInfo
from statsd import StatsClient


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("201 Created", [("Content-Type", "text/plain")])
    return [b"hello"]


def request(
    mw: ProcessUtilization,
    clock: Any,
    start: float,
    end: float,
    path: str = "/",
    **extra: Any,
) -> tuple[list[Any], bytes]:
    """One request from clock ``start`` to ``end``, closed in ``finally`` as servers do."""
    env: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "wsgi.errors": io.StringIO(),
        "wsgi.file_wrapper": wsgiref.util.FileWrapper,
        "wsgi.multithread": False,
        **extra,
    }
    got: list[Any] = []
    clock.t = start
    body = mw(env, lambda status, headers, exc_info=None: got.extend([status, headers]))
    try:
        data = b"".join(body)
    finally:
        clock.t = end
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return got, data


@pytest.fixture
def restore_title() -> Iterator[None]:
    title = setproctitle.getproctitle()
    try:
        yield
    finally:
        setproctitle.setproctitle(title)


@pytest.mark.linux
@pytest.mark.usefixtures("restore_title")
def test_process_title_shows_worker_stats(clock: Any) -> None:
    """With proctitle=True, /proc/<pid>/cmdline shows worker, reqs, req/s, avg and util."""
    mw = ProcessUtilization(hello, clock=clock, proctitle=True, proctitle_prefix="web")
    request(mw, clock, 1000.0, 1000.5)  # first title at the first request end
    with open(f"/proc/{os.getpid()}/cmdline", "rb") as f:
        first = f.read().rstrip(b"\0").decode()
    assert first == "web worker[00]: 1 reqs, 2.0 req/s, 500ms avg, 100.0% util"
    request(mw, clock, 1000.75, 1001.0)  # within proctitle_interval: unchanged
    with open(f"/proc/{os.getpid()}/cmdline", "rb") as f:
        assert f.read().rstrip(b"\0").decode() == first
    request(mw, clock, 1001.5, 1002.0)
    with open(f"/proc/{os.getpid()}/cmdline", "rb") as f:
        title = f.read().rstrip(b"\0").decode()
    assert title == "web worker[00]: 3 reqs, 1.5 req/s, 417ms avg, 62.5% util"


def statsd_lines(
    app: Callable[..., Any], clock: Any, method: str = "POST", prefix: str | None = "web"
) -> tuple[list[str] | None, BaseException | None]:
    """One WSGI request with a real statsd client: its packet's lines (None if none), any error.

    A marker counter sent after the request shows whether the request sent
    anything before it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        sink.settimeout(5)
        client = StatsClient("127.0.0.1", sink.getsockname()[1], prefix=prefix)
        mw = ProcessUtilization(app, clock=clock, statsd=client)
        error: BaseException | None = None
        try:
            try:
                request(mw, clock, 1000.0, 1000.125, REQUEST_METHOD=method)
            except Exception as exc:
                error = exc
            client.incr("end")
            lines = sink.recv(65536).decode().split("\n")
        finally:
            client.close()
    assert mw.in_flight == 0
    if lines == [f"{prefix}.end:1|c" if prefix else "end:1|c"]:
        return None, error
    return lines, error


def test_statsd_packets_reach_a_udp_socket(clock: Any) -> None:
    """rack-statsd's names arrive in one packet: response_time, per method, status_code.<name>."""
    lines, error = statsd_lines(hello, clock)
    assert error is None
    assert lines == [
        "web.response_time:125.000000|ms",
        "web.response_time.post:125.000000|ms",
        "web.status_code.created:1|c",
    ]


STATUS_NAMES = [
    (200, "ok"),
    (201, "created"),
    (202, "accepted"),
    (301, "moved_permanently"),
    (302, "found"),
    (303, "see_other"),
    (304, "not_modified"),
    (305, "use_proxy"),
    (307, "temporary_redirect"),
    (400, "bad_request"),
    (401, "unauthorized"),
    (402, "payment_required"),
    (403, "forbidden"),
    (404, "missing"),
    (410, "gone"),
    (422, "invalid"),
    (500, "error"),
    (502, "bad_gateway"),
    (503, "node_down"),
    (504, "gateway_timeout"),
]


@pytest.mark.parametrize(("code", "name"), STATUS_NAMES)
def test_statsd_status_counter_names(clock: Any, code: int, name: str) -> None:
    """Each status in rack-statsd's table is counted under its name."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response(f"{code} Whatever", [])
        return []

    lines, _ = statsd_lines(app, clock, method="GET", prefix=None)
    assert lines == [
        "response_time:125.000000|ms",
        "response_time.get:125.000000|ms",
        f"status_code.{name}:1|c",
    ]


@pytest.mark.parametrize("status", ["418 I'm a teapot", "206 Partial Content", "xyz Bad"])
def test_statsd_status_outside_the_table_sends_no_counter(clock: Any, status: str) -> None:
    """A status rack-statsd has no name for (or no number at all) sends the timings only."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response(status, [])
        return []

    lines, _ = statsd_lines(app, clock, method="PUT", prefix=None)
    assert lines == ["response_time:125.000000|ms", "response_time.put:125.000000|ms"]


@pytest.mark.parametrize(
    ("method", "per_method"),
    [
        ("GET", "response_time.get"),
        ("HEAD", "response_time.head"),
        ("POST", "response_time.post"),
        ("PUT", "response_time.put"),
        ("DELETE", "response_time.delete"),
        ("PATCH", None),
        ("OPTIONS", None),
        ("get", None),
        ("X-EVIL.METRIC", None),
    ],
)
def test_statsd_per_method_timing_only_for_rack_statsds_methods(
    clock: Any, method: str, per_method: str | None
) -> None:
    """Only GET, HEAD, POST, PUT, DELETE get a per-method timing; no client text becomes a name."""
    lines, _ = statsd_lines(hello, clock, method=method, prefix=None)
    expected = ["response_time:125.000000|ms"]
    if per_method is not None:
        expected.append(f"{per_method}:125.000000|ms")
    expected.append("status_code.created:1|c")
    assert lines == expected


def test_statsd_sends_nothing_for_a_failing_app(clock: Any) -> None:
    """An app that raises sends no statsd metric (as rack-statsd), yet the request is recorded."""

    def boom(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [])
        raise RuntimeError("boom")

    lines, error = statsd_lines(boom, clock)
    assert lines is None
    assert isinstance(error, RuntimeError)


def test_statsd_counts_a_body_that_fails_while_iterated(clock: Any) -> None:
    """A body raising while the server iterates it is still sent, with its status, on close."""

    def failing() -> Iterator[bytes]:
        yield b"part"
        raise OSError("disk gone")

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("503 Service Unavailable", [])
        return failing()

    lines, error = statsd_lines(app, clock, method="HEAD")
    assert isinstance(error, OSError)
    assert lines == [
        "web.response_time:125.000000|ms",
        "web.response_time.head:125.000000|ms",
        "web.status_code.node_down:1|c",
    ]


def test_statsd_with_a_file_wrapper_body(clock: Any) -> None:
    """A wsgi.file_wrapper body keeps its type with statsd on and is sent on close."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](io.BytesIO(b"data"))

    lines, _ = statsd_lines(app, clock, method="GET", prefix=None)
    assert lines == [
        "response_time:125.000000|ms",
        "response_time.get:125.000000|ms",
        "status_code.ok:1|c",
    ]


def test_statsd_from_host_port_string(clock: Any) -> None:
    """statsd='127.0.0.1:PORT' builds a statsd.StatsClient with statsd_prefix."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        sink.settimeout(5)
        port = sink.getsockname()[1]
        mw = ProcessUtilization(hello, clock=clock, statsd=f"127.0.0.1:{port}", statsd_prefix="app")
        try:
            request(mw, clock, 1000.0, 1000.5)
            packet = sink.recv(65536)
        finally:
            mw.close()
    assert mw._statsd is None
    assert packet.decode().split("\n")[0] == "app.response_time:500.000000|ms"


def test_statsd_from_ipv6_host_port_string(clock: Any) -> None:
    """statsd='[::1]:PORT' sends to an IPv6 socket on the loopback."""
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sink:
        sink.bind(("::1", 0))
        sink.settimeout(5)
        port = sink.getsockname()[1]
        mw = ProcessUtilization(hello, clock=clock, statsd=f"[::1]:{port}")
        try:
            request(mw, clock, 1000.0, 1000.5)
            packet = sink.recv(65536)
        finally:
            mw.close()
    assert packet.decode().split("\n") == [
        "response_time:500.000000|ms",
        "response_time.post:500.000000|ms",
        "status_code.created:1|c",
    ]


def test_gc_tracking_counts_collections_and_time() -> None:
    """track_gc=True counts each collection and its duration by the clock."""
    ticks = iter(range(1, 1000))

    def stepping() -> float:
        return float(next(ticks))

    mw = ProcessUtilization(hello, clock=stepping, track_gc=True)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        gc.collect()
        gc.collect()
    finally:
        if was_enabled:
            gc.enable()
        mw.close()
    stats = mw.gc_stats
    assert stats.collections == 2
    assert stats.seconds == 2.0
    assert mw.track_gc is False
    gc.collect()
    assert mw.gc_stats.collections == 2


def test_scoreboard_row_and_worker_stats(clock: Any) -> None:
    """The row holds cumulative counters; worker_stats derives exact figures."""
    mw = ProcessUtilization(hello, clock=clock)
    request(mw, clock, 1000.0, 1001.0)
    request(mw, clock, 1002.0, 1002.5)
    clock.t = 1003.0
    env: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": "/"}
    body = mw(env, lambda *a: None)  # in flight since 1003
    clock.t = 1004.0
    row = mw.scoreboard.rows()[0]
    assert row.pid == os.getpid()
    assert row.values == {
        "requests": 2,
        "entered": 3,
        "busy_ns": 1_500_000_000,
        "overlapped": 0,
        "response_ns": 0,  # not written until requests overlap: it is busy_ns
        "busy_since_ns": 1_003_000_000_000,
        "horizon_ns": 1_000_000_000_000,
        "horizon_busy_ns": 0,
        "horizon_requests": 0,
        "horizon_response_ns": 0,
        "gc_ns": 0,
        "gc_collections": 0,
    }
    [w] = worker_stats(mw.scoreboard, clock=clock)
    assert w == WorkerStats(
        index=0,
        pid=os.getpid(),
        in_flight=1,
        requests_total=2,
        busy_seconds_total=2.5,
        response_seconds_total=1.5,
        horizon_time=4.0,
        requests=2,
        active_time=2.5,
        response_time=1.5,
        gc_seconds=0.0,
        gc_collections=0,
    )
    assert w.percentage_active == 62.5
    assert w.requests_per_second == 0.5
    assert w.average_response_time == 750.0
    body.close()  # type: ignore[attr-defined]


def test_default_clock_row_is_bracketed_by_the_kernel_clock() -> None:
    """With the default clock the row's times are CLOCK_MONOTONIC, read in C per step."""
    mw = ProcessUtilization(hello)
    before = time.monotonic_ns()
    env: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": "/"}
    body = mw(env, lambda *a: None)
    inside = time.monotonic_ns()
    row = mw.scoreboard.rows()[0].values
    since = row["busy_since_ns"]
    assert (row["entered"], row["requests"], row["busy_ns"]) == (1, 0, 0)
    assert before <= since <= inside
    assert list(body) == [b"hello"]
    closing = time.monotonic_ns()
    body.close()  # type: ignore[attr-defined]
    after = time.monotonic_ns()
    row = mw.scoreboard.rows()[0].values
    assert (row["entered"], row["requests"]) == (1, 1)
    assert closing - since <= row["busy_ns"] <= after - since
    assert mw.stats().busy_seconds_total == row["busy_ns"] / 1e9
    mw.close()


def test_overlapping_requests_publish_the_response_sum(clock: Any) -> None:
    """Once two requests overlap, response_ns is written per request and readers use it."""
    mw = ProcessUtilization(hello, clock=clock)
    request(mw, clock, 1000.0, 1001.0)  # alone: 1 s
    env: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": "/"}
    clock.t = 1002.0
    a = mw(dict(env), lambda *x: None)
    clock.t = 1003.0
    b = mw(dict(env), lambda *x: None)  # overlaps a: response_ns = 1 s, flag set
    row = mw.scoreboard.rows()[0].values
    assert (row["overlapped"], row["response_ns"]) == (1, 1_000_000_000)
    clock.t = 1004.0
    a.close()  # type: ignore[attr-defined]
    clock.t = 1006.0
    b.close()  # type: ignore[attr-defined]
    row = mw.scoreboard.rows()[0].values
    assert (row["busy_ns"], row["response_ns"]) == (5_000_000_000, 6_000_000_000)
    [w] = worker_stats(mw.scoreboard, clock=clock)
    assert (w.busy_seconds_total, w.response_seconds_total) == (5.0, 6.0)
    assert (w.requests, w.active_time, w.average_response_time) == (3, 5.0, 2000.0)
    assert mw.average_response_time == 2000.0


def test_worker_table_average_covers_the_horizon(clock: Any) -> None:
    """avg_ms in the table is the mean over the horizon, like req/s and util%, not the lifetime."""
    mw = ProcessUtilization(hello, clock=clock, window=10)
    request(mw, clock, 1000.0, 1004.0)  # 4 s, before the reset
    request(mw, clock, 1010.0, 1011.0)  # ends after the window: reset at 1011
    request(mw, clock, 1012.0, 1012.5)
    request(mw, clock, 1013.0, 1013.25)
    clock.t = 1016.0
    [w] = worker_stats(mw.scoreboard, clock=clock)
    assert (w.requests_total, w.response_seconds_total) == (4, 5.75)
    assert (w.requests, w.response_time, w.horizon_time) == (2, 0.75, 5.0)
    assert w.average_response_time == 375.0
    assert mw.average_response_time == 375.0
    assert render_text([w]).splitlines()[1:] == [
        f"     0  {os.getpid():>8}          0          4       5.750       0.4     375.0    15.0",
        " total                    0          4       5.750       0.4     375.0    15.0",
    ]


def test_worker_stats_after_horizon_reset(clock: Any) -> None:
    """After a horizon reset, readers see only what followed it."""
    mw = ProcessUtilization(hello, clock=clock, window=10)
    request(mw, clock, 1000.0, 1001.0)
    request(mw, clock, 1010.0, 1012.0)  # reset at 1012
    request(mw, clock, 1013.0, 1014.0)
    clock.t = 1016.0
    [w] = worker_stats(mw.scoreboard, clock=clock)
    assert (w.requests_total, w.requests) == (3, 1)
    assert (w.horizon_time, w.active_time) == (4.0, 1.0)
    assert w.busy_seconds_total == 4.0
    assert w.percentage_active == 25.0


class TwoReads:
    """A scoreboard whose rows() answers one snapshot, then another."""

    def __init__(self, *snapshots: dict[str, int]) -> None:
        self._snapshots = iter(snapshots)

    def rows(self) -> list[RowInfo]:
        return [RowInfo(0, 42, next(self._snapshots))]


def _row(**changes: int) -> dict[str, int]:
    values = dict.fromkeys(FIELDS, 0)
    values.update(horizon_ns=100_000_000_000, **changes)
    return values


def test_worker_stats_adds_the_in_flight_part_of_a_steady_row() -> None:
    """A request in flight counts busy up to now when the row did not change between reads."""
    row = _row(requests=1, entered=2, busy_ns=3_000_000_000, busy_since_ns=104_000_000_000)
    [w] = worker_stats(TwoReads(row, row), clock=lambda: 110.0)  # type: ignore[arg-type]
    assert (w.in_flight, w.busy_seconds_total, w.active_time) == (1, 9.0, 9.0)


def test_worker_stats_never_counts_a_settlement_twice() -> None:
    """A row read half-way through a request's end shows its settled figures only."""
    # First read: requests not yet bumped, busy already settled up to 106 s.
    torn = _row(requests=1, entered=2, busy_ns=5_000_000_000, busy_since_ns=104_000_000_000)
    done = _row(requests=2, entered=2, busy_ns=5_000_000_000, busy_since_ns=104_000_000_000)
    [w] = worker_stats(TwoReads(torn, done), clock=lambda: 110.0)  # type: ignore[arg-type]
    assert (w.in_flight, w.requests_total, w.busy_seconds_total) == (0, 2, 5.0)


def test_render_text_and_json_exact() -> None:
    """The text table and JSON document show each worker and the totals."""
    workers = [
        WorkerStats(0, 101, 1, 10, 2.5, 1.0, 10.0, 4, 2.5, 0.2, 0.0, 0),
        WorkerStats(1, 102, 0, 30, 7.5, 3.0, 10.0, 6, 7.5, 1.8, 0.25, 3),
    ]
    assert render_text(workers) == (
        "worker       pid  in_flight   requests      busy_s     req/s    avg_ms   util%\n"
        "     0       101          1         10       2.500       0.4      50.0    25.0\n"
        "     1       102          0         30       7.500       0.6     300.0    75.0\n"
        " total                    1         40      10.000       1.0     200.0    50.0\n"
    )
    doc = json.loads(render_json(workers))
    assert doc["total"] == {
        "workers": 2,
        "in_flight": 1,
        "requests_total": 40,
        "busy_seconds_total": 10.0,
        "requests_per_second": 1.0,
        "average_response_time": 200.0,
        "percentage_active": 50.0,
    }
    assert doc["workers"][1] == {
        "index": 1,
        "pid": 102,
        "in_flight": 0,
        "requests_total": 30,
        "busy_seconds_total": 7.5,
        "response_seconds_total": 3.0,
        "horizon_time": 10.0,
        "requests": 6,
        "active_time": 7.5,
        "response_time": 1.8,
        "gc_seconds": 0.25,
        "gc_collections": 3,
        "percentage_active": 75.0,
        "requests_per_second": 0.6,
        "average_response_time": 300.0,
    }


@pytest.mark.parametrize(
    ("extra", "ctype"),
    [
        ({"QUERY_STRING": "format=json"}, "application/json"),
        ({"HTTP_ACCEPT": "application/json"}, "application/json"),
        ({"HTTP_ACCEPT": "text/html"}, "text/plain; charset=utf-8"),
        (
            {"QUERY_STRING": "format=text", "HTTP_ACCEPT": "application/json"},
            "text/plain; charset=utf-8",
        ),
    ],
)
def test_wsgi_stats_endpoint_formats(clock: Any, extra: dict[str, str], ctype: str) -> None:
    """The endpoint answers JSON by query or Accept, text otherwise, and is not counted."""
    mw = ProcessUtilization(hello, clock=clock, stats_path="/_utilization")
    request(mw, clock, 1000.0, 1001.0)
    got, data = request(
        mw, clock, 1002.0, 1002.0, path="/_utilization", REMOTE_ADDR="127.0.0.1", **extra
    )
    assert got[0] == "200 OK"
    assert dict(got[1])["Content-Type"] == ctype
    assert dict(got[1])["Content-Length"] == str(len(data))
    assert mw.total_requests == 1
    if ctype == "application/json":
        assert json.loads(data)["workers"][0]["requests_total"] == 1
    else:
        assert data.decode().splitlines()[1].split()[2:5] == ["0", "1", "1.000"]


def test_prometheus_collector_exposition(clock: Any) -> None:
    """The collector exposes cumulative counters and in-flight per worker pid."""
    mw = ProcessUtilization(hello, clock=clock)
    request(mw, clock, 1000.0, 1001.5)
    registry = CollectorRegistry()
    registry.register(ProcessUtilizationCollector(mw.scoreboard))
    text = generate_latest(registry).decode()
    labels = f'{{pid="{os.getpid()}",worker="0"}}'
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    assert samples == [
        f"process_utilization_busy_seconds_total{labels} 1.5",
        f"process_utilization_requests_total{labels} 1.0",
        f"process_utilization_response_seconds_total{labels} 1.5",
        f"process_utilization_in_flight{labels} 0.0",
        f"process_utilization_gc_seconds_total{labels} 0.0",
        f"process_utilization_gc_collections_total{labels} 0.0",
    ]
    assert "# TYPE process_utilization_busy_seconds_total counter" in text
