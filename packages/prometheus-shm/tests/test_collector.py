"""Collector: spawned workers by path, an outside reader, per-worker process figures."""

from __future__ import annotations

import gc
import multiprocessing
import os

import prometheus_shm
from helpers import scrape, values
from prometheus_client import Counter
from promshm_workers import spawned_worker

SPAWN = multiprocessing.get_context("spawn")
FORK = multiprocessing.get_context("fork")


def test_spawned_workers_share_a_named_segment_read_from_outside(seg_path: str) -> None:
    """Spawned workers install on one path; a process that never installed reads their sum."""
    ctx = [(SPAWN.Event(), SPAWN.Event()) for _ in range(3)]
    procs = [
        SPAWN.Process(target=spawned_worker, args=(seg_path, 1000, 0.25, ready, go))
        for ready, go in ctx
    ]
    for p in procs:
        p.start()
    try:
        assert all(ready.wait(60) for ready, _ in ctx)
        got = values(scrape(path=seg_path))
        assert got == {
            ("spawned_requests_total", (("route", "/"),)): 750.0,
            ("spawned_busy", ()): 3.0,
        }
    finally:
        for _, go in ctx:
            go.set()
        for p in procs:
            p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    # every worker gone: the counter stays, the live gauge has no process left to show
    assert values(scrape(path=seg_path)) == {("spawned_requests_total", (("route", "/"),)): 750.0}


def _hold(ready: object, go: object) -> None:
    Counter("held", "Held.", registry=None).inc()
    gc.collect()
    ready.set()  # type: ignore[attr-defined]
    go.wait(30)  # type: ignore[attr-defined]


def test_process_metrics_are_per_worker_and_labelled_by_pid() -> None:
    """process_metrics=True: each live worker's process_* and python_gc_* figures, with pid."""
    prometheus_shm.install("anonymous", process_metrics=True)
    c = Counter("own", "Own.", registry=None)
    c.inc()
    ready, go = FORK.Event(), FORK.Event()
    proc = FORK.Process(target=_hold, args=(ready, go))
    proc.start()
    try:
        assert ready.wait(30)
        got = values(scrape())
    finally:
        go.set()
        proc.join(30)
    pids = {os.getpid(), proc.pid}
    cpu = {dict(k[1])["pid"] for k in got if k[0] == "process_cpu_seconds_total"}
    assert cpu == {str(p) for p in pids}
    rss = [v for k, v in got.items() if k[0] == "process_resident_memory_bytes"]
    assert len(rss) == 2
    assert all(v > 1_000_000 for v in rss)
    gen2 = {
        dict(k[1])["pid"]: v
        for k, v in got.items()
        if k[0] == "python_gc_collections_total" and dict(k[1])["generation"] == "2"
    }
    assert set(gen2) == {str(p) for p in pids}
    assert gen2[str(proc.pid)] >= 1.0
    assert got[("own_total", ())] == 1.0
    assert got[("held_total", ())] == 1.0
