"""Skip ``linux`` tests elsewhere (their oracle is the kernel); a reading built by hand."""

from __future__ import annotations

import sys

import pytest
from linux_inet_diag import ListenOverflows, ListenStats
from process_utilization import WorkerStats
from raindrops_exporter import LatencyReading, Reading, ServerReading


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``@pytest.mark.linux`` tests off Linux, saying why."""
    if sys.platform.startswith("linux"):
        return
    skip = pytest.mark.skip(reason="needs Linux (netlink sock_diag, /proc)")
    for item in items:
        if "linux" in item.keywords:
            item.add_marker(skip)


WORKER = WorkerStats(
    index=0,
    pid=4242,
    in_flight=1,
    requests_total=10,
    busy_seconds_total=2.5,
    response_seconds_total=3.0,
    horizon_time=10.0,
    requests=10,
    active_time=2.5,
    response_time=3.0,
    gc_seconds=0.0,
    gc_collections=0,
)

SERVER = ServerReading(
    server="127.0.0.1:8000,/run/a\x1b.sock",
    listeners={
        "127.0.0.1:8000": ListenStats(active=2, queued=3, backlog=16),
        "/run/a\x1b.sock": ListenStats(active=0, queued=0, backlog=8),
    },
    calling=4,
    writing=1,
    workers=(WORKER,),
    worker_pids=(4242, 4243),
    busy_pids=(4242,),
    reclaimed=2,
    requests_total=12,
    busy_seconds_total=2.75,
    response_seconds_total=3.5,
    in_flight=1,
    latency=LatencyReading(((0.1, 9), (1.0, 11), (float("inf"), 12)), 12, 3.5),
    segments={},
)

READING = Reading(
    time=0.0,
    servers=(SERVER,),
    overflows=ListenOverflows(listen_overflows=5, listen_drops=6),
    duration=0.001,
)


@pytest.fixture
def reading() -> Reading:
    """One server with two listeners (one named with an ESC), one worker with a row, one without."""
    return READING
