"""The big load: 20,000 requests at 100 connections, some slow, some streamed.

Four configurations on 127.0.0.1 (gunicorn sync with 4 workers, gunicorn
gthread with 2 workers of 4 threads, ``uvicorn --workers 2`` and ``hypercorn
--workers 2``) each take the whole load with raindrops and process-utilization
stacked, after a warm-up of ``WARMUP`` requests.  No request may fail;
afterwards ``calling``, ``writing`` and the listener's ``active``/``queued``
read idle, the utilization endpoint has nothing in flight and counted exactly
the requests sent; and every worker's resident memory in the last quarter of
the run is within ``RSS_BOUND_KB`` of the first quarter.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from pathlib import Path

import pytest
from loadgen import run_load
from servers import launch, tcp
from test_e2e_matrix import EXTRA, address, app_for, settled_utilization, stack_env, wait_idle

pytestmark = [
    pytest.mark.linux,
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="needs Linux (netlink, /proc)"),
    pytest.mark.timeout(300),
]

TOTAL = 20_000
CONCURRENCY = 100
#: Requests sent before the measured run.  A server's RSS climbs over its first few
#: thousand requests at this concurrency and then stays flat: hypercorn's workers
#: grow 3-6 MB over their first 5,000 requests, with or without the middlewares,
#: then under 0.4 MB over the next 55,000.  The bound is about leaks, not warm-up.
WARMUP = 5_000
#: Allowed growth of a worker's median RSS, first quarter of the run to last.
RSS_BOUND_KB = 2048
TARGETS = [
    ("/hello", b"hello from "),
    ("/hello", b"hello from "),
    ("/stream?n=8", b"chunk 7\n"),
    ("/hello", b"hello from "),
    ("/slow?ms=5", b"slept 5\n"),
    ("/hello", b"hello from "),
    ("/stream?n=3", b"chunk 2\n"),
    ("/hello", b"hello from "),
]


def _rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class _RssSampler(threading.Thread):
    """Samples each PID's RSS every 0.1 s until stopped (at most 5 minutes)."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.samples: dict[int, list[int]] = {pid: [] for pid in pids}
        self.done = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 300
        while not self.done.wait(0.1) and time.monotonic() < deadline:
            for pid in self.pids:
                rss = _rss_kb(pid)
                if rss is not None:
                    self.samples[pid].append(rss)


@pytest.mark.parametrize(
    ("kind", "workers"),
    [("gunicorn-sync", 4), ("gunicorn-gthread", 2), ("uvicorn", 2), ("hypercorn", 2)],
)
def test_big_load_no_failures_idle_after_no_rss_growth(
    kind: str, workers: int, tmp_path: Path
) -> None:
    """20,000 mixed requests at 100 connections: none fails, gauges idle, all counted, RSS flat."""
    with (
        launch(
            kind,
            app_for(kind),
            tcp("127.0.0.1"),
            workers=workers,
            threads=4,
            extra=EXTRA.get(kind, ()),
            env=stack_env(tmp_path),
        ) as server,
    ):
        family, addr = address(server)
        warmup = run_load(
            addr, TARGETS, total=WARMUP, concurrency=CONCURRENCY, family=family, max_seconds=60
        )
        assert (warmup.ok, warmup.failures[:5]) == (WARMUP, [])
        # The readiness probes and the warm-up were counted: measure from here.
        before = settled_utilization(server)["total"]["requests_total"]
        pids = server.worker_pids()
        sampler = _RssSampler(pids)
        sampler.start()
        try:
            result = run_load(
                addr, TARGETS, total=TOTAL, concurrency=CONCURRENCY, family=family, max_seconds=180
            )
        finally:
            sampler.done.set()
            sampler.join(5)
        assert (result.ok, result.failures[:5], len(result.failures)) == (TOTAL, [], 0)
        wait_idle(server, timeout=10)
        # No worker died or was replaced during the run.
        assert server.worker_pids() == pids
        doc = settled_utilization(server)
        assert (doc["total"]["in_flight"], doc["total"]["requests_total"] - before) == (0, TOTAL)
        growth = {}
        for pid, samples in sampler.samples.items():
            assert len(samples) >= 8, (pid, samples)
            quarter = len(samples) // 4
            first = statistics.median(samples[:quarter])
            last = statistics.median(samples[-quarter:])
            growth[pid] = last - first
        assert {pid: g for pid, g in growth.items() if g > RSS_BOUND_KB} == {}, (
            growth,
            result.seconds,
        )
