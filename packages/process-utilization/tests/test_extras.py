"""The process title, statsd, GC tracking, Prometheus, the endpoint and the table."""

from __future__ import annotations

import gc
import io
import json
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import setproctitle
from process_utilization import (
    ProcessUtilization,
    ProcessUtilizationCollector,
    WorkerStats,
    render_json,
    render_text,
    worker_stats,
)
from prometheus_client import CollectorRegistry, generate_latest
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
    env: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "wsgi.errors": io.StringIO(),
        **extra,
    }
    got: list[Any] = []
    clock.t = start
    body = mw(env, lambda status, headers, exc_info=None: got.extend([status, headers]))
    data = b"".join(body)
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


def test_statsd_packets_reach_a_udp_socket(clock: Any) -> None:
    """Timings overall and per method and a status counter arrive in one UDP packet."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        sink.settimeout(5)
        port = sink.getsockname()[1]
        client = StatsClient("127.0.0.1", port, prefix="web")
        mw = ProcessUtilization(hello, clock=clock, statsd=client)
        try:
            got, data = request(mw, clock, 1000.0, 1000.125)
            packet = sink.recv(65536)
        finally:
            client.close()
        assert got[0] == "201 Created"
        assert data == b"hello"
    assert packet.decode().split("\n") == [
        "web.request_time:125.000000|ms",
        "web.request_time.post:125.000000|ms",
        "web.status_code.201:1|c",
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
    assert packet.decode().split("\n")[0] == "app.request_time:500.000000|ms"


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
        "in_flight": 1,
        "busy_ns": 1_500_000_000,
        "busy_since_ns": 1_003_000_000_000,
        "requests": 2,
        "response_ns": 1_500_000_000,
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
        gc_seconds=0.0,
        gc_collections=0,
    )
    assert w.percentage_active == 62.5
    assert w.requests_per_second == 0.5
    assert w.average_response_time == 750.0
    body.close()  # type: ignore[attr-defined]


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


def test_render_text_and_json_exact() -> None:
    """The text table and JSON document show each worker and the totals."""
    workers = [
        WorkerStats(0, 101, 1, 10, 2.5, 1.0, 10.0, 4, 2.5, 0.0, 0),
        WorkerStats(1, 102, 0, 30, 7.5, 3.0, 10.0, 6, 7.5, 0.25, 3),
    ]
    assert render_text(workers) == (
        "worker       pid  in_flight   requests      busy_s     req/s    avg_ms   util%\n"
        "     0       101          1         10       2.500       0.4     100.0    25.0\n"
        "     1       102          0         30       7.500       0.6     100.0    75.0\n"
        " total                    1         40      10.000       1.0     100.0    50.0\n"
    )
    doc = json.loads(render_json(workers))
    assert doc["total"] == {
        "workers": 2,
        "in_flight": 1,
        "requests_total": 40,
        "busy_seconds_total": 10.0,
        "requests_per_second": 1.0,
        "average_response_time": 100.0,
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
        "gc_seconds": 0.25,
        "gc_collections": 3,
        "percentage_active": 75.0,
        "requests_per_second": 0.6,
        "average_response_time": 100.0,
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
    got, data = request(mw, clock, 1002.0, 1002.0, path="/_utilization", **extra)
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
