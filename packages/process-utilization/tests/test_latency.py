"""The request-duration histogram: every worker's requests, Prometheus-shaped buckets."""

from __future__ import annotations

import io
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from process_utilization import (
    DEFAULT_LATENCY_BUCKETS,
    ConfigError,
    ProcessUtilization,
    ProcessUtilizationCollector,
    cumulative_buckets,
    latency_edges,
)
from shm_counters import Histogram


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def _serve(mw: ProcessUtilization, clock: Any, seconds: float) -> None:
    env = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.errors": io.StringIO()}
    env["wsgi.multithread"] = False
    body = mw(env, lambda *a: None)
    clock.t += seconds
    body.close()  # type: ignore[attr-defined]


def test_edges_make_le_buckets_inclusive() -> None:
    """Each bound b (seconds) becomes the edge b ns + 1, so a request of exactly b is ``le=b``."""
    assert latency_edges([0.1, 1.0]) == (0, 100_000_001, 1_000_000_001)
    assert latency_edges(None) is None
    assert len(latency_edges(DEFAULT_LATENCY_BUCKETS) or ()) == 15


@pytest.mark.parametrize(
    "bad", [[], [0.5, 0.1], [0.0], [-1.0], [float("nan")], [True], "0.1", [0.1, 0.1], 5]
)
def test_bad_buckets_are_refused_naming_the_value(bad: object) -> None:
    """Buckets must be increasing positive finite seconds; anything else is a ConfigError."""
    with pytest.raises(ConfigError) as info:
        ProcessUtilization(hello, latency_buckets=bad)  # type: ignore[arg-type]
    message = str(info.value)
    assert message.startswith("latency_buckets must be a non-empty, strictly increasing list")
    assert repr(bad) in message


def test_requests_land_in_their_buckets(clock: Any) -> None:
    """Each request's duration on the middleware clock is counted once, le-inclusive."""
    mw = ProcessUtilization(hello, clock=clock, latency_buckets=[0.1, 1.0])
    for seconds in (0.05, 0.1, 0.5, 1.0, 3.0):
        _serve(mw, clock, seconds)
    assert mw.latency is not None
    snap = mw.latency.snapshot()
    assert (snap.count, snap.sum) == (5, round(4.65e9))
    assert cumulative_buckets(snap) == [(0.1, 2), (1.0, 4), (float("inf"), 5)]


def test_no_histogram_when_asked(clock: Any) -> None:
    """latency_buckets=None records nothing and keeps no histogram."""
    mw = ProcessUtilization(hello, clock=clock, latency_buckets=None)
    _serve(mw, clock, 0.2)
    assert mw.latency is None
    assert mw.requests == 1


@pytest.mark.linux
def test_forked_workers_share_one_histogram(tmp_path: Path) -> None:
    """With a named segment, the histogram beside it holds every worker's requests exactly."""
    path = str(tmp_path / "board")
    mw = ProcessUtilization(hello, segment=path, latency_buckets=[10.0])
    pids = []
    for _ in range(3):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 1
            try:
                child = ProcessUtilization(hello, segment=path, latency_buckets=[10.0])
                for _ in range(100):
                    env = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.multithread": False}
                    child(env, lambda *a: None).close()  # type: ignore[attr-defined]
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    assert mw.latency is not None
    assert mw.latency.snapshot().count == 300
    assert Histogram.attach(path + ".latency").snapshot().count == 300


def test_other_buckets_in_the_segment_are_said_and_kept_private(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A histogram file made with other buckets is not written: one warning, a private one."""
    path = str(tmp_path / "board")
    ProcessUtilization(hello, segment=path, latency_buckets=[1.0])
    with caplog.at_level(logging.WARNING, logger="process_utilization"):
        mw = ProcessUtilization(hello, segment=path, latency_buckets=[2.0])
    [record] = caplog.records
    assert record.getMessage() == (
        f"process_utilization: cannot use the latency histogram {path}.latency ([Errno 22] "
        f"histogram segment has other buckets than asked for: '{path}.latency'); this "
        "worker's request durations are kept in its own memory"
    )
    assert mw.latency is not None
    assert mw.latency.path is None


def test_collector_exposes_the_histogram(clock: Any) -> None:
    """The collector adds request_duration_seconds with cumulative le buckets and the sum."""
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry, generate_latest

    mw = ProcessUtilization(hello, clock=clock, latency_buckets=[0.1, 1.0])
    for seconds in (0.05, 0.5, 2.0):
        _serve(mw, clock, seconds)
    registry = CollectorRegistry()
    registry.register(ProcessUtilizationCollector(mw))
    text = generate_latest(registry).decode()
    wanted = [
        'process_utilization_request_duration_seconds_bucket{le="0.1"} 1.0',
        'process_utilization_request_duration_seconds_bucket{le="1.0"} 2.0',
        'process_utilization_request_duration_seconds_bucket{le="+Inf"} 3.0',
        "process_utilization_request_duration_seconds_count 3.0",
        "process_utilization_request_duration_seconds_sum 2.55",
    ]
    assert [
        line
        for line in text.splitlines()
        if "request_duration" in line and not line.startswith("#")
    ] == wanted


@pytest.mark.linux
def test_a_killed_worker_keeps_its_requests_in_the_histogram(tmp_path: Path) -> None:
    """Durations are counts, not gauges: a SIGKILLed worker's requests stay counted."""
    path = str(tmp_path / "board")
    mw = ProcessUtilization(hello, segment=path, latency_buckets=[10.0])
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        child = ProcessUtilization(hello, segment=path, latency_buckets=[10.0])
        for _ in range(7):
            env = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.multithread": False}
            child(env, lambda *a: None).close()  # type: ignore[attr-defined]
        os.write(w, b"x")
        time.sleep(30)
        os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"x"
    os.close(r)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert mw.latency is not None
    assert mw.latency.snapshot().count == 7
