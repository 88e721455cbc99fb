"""Restart a forked worker N times in a small interpreter; print the totals seen (JSON).

``python promshm_restarts.py SEGMENT N``: installs prometheus-shm on the
named SEGMENT (8 process rows), then N times forks a worker that counts one
request, sets its "all" and "livesum" gauges and exits. After 10, 1,000 and
N restarts (and every 500) it scrapes and records the counter, the live
gauge, the file's size and the segment's own figures. A small interpreter
forks faster than the test runner's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import prometheus_shm
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families


def _scrape() -> dict[str, float]:
    registry = CollectorRegistry()
    prometheus_shm.Collector(registry)
    text = generate_latest(registry).decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = s.name if s.name != "pidg" else f"pidg:{s.labels['pid']}"
            out[key] = s.value
    return out


def main() -> None:
    path, n = sys.argv[1], int(sys.argv[2])
    prometheus_shm.install(path, capacity=64, processes=8, liveness_ttl=0)
    c = Counter("served", "Served.", ["route"], registry=None)
    g = Gauge("pidg", "Per worker.", registry=None, multiprocess_mode="all")
    live = Gauge("inflight", "In flight.", registry=None, multiprocess_mode="livesum")
    checkpoints = []
    for done in range(1, n + 1):
        pid = os.fork()
        if pid == 0:
            c.labels("/").inc()
            g.set(1)
            live.inc()
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            raise SystemExit(f"worker {done} exited with status {status}")
        if done in (10, 1000, n) or done % 500 == 0:
            got = _scrape()
            checkpoints.append(
                {
                    "restarts": done,
                    "served": got["served_total"],
                    "inflight": got["inflight"],
                    "all_samples": sum(1 for k in got if k.startswith("pidg:")),
                    "size": os.stat(path).st_size,
                }
            )
    stats = dataclasses.asdict(prometheus_shm.segment_info())
    json.dump({"checkpoints": checkpoints, "stats": stats}, sys.stdout)


if __name__ == "__main__":
    main()
