"""Forked workers: exact sums, dead workers folded with no hook, bounded memory."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import prometheus_shm
import pytest
from helpers import scrape, values
from prometheus_client import Counter, Gauge, Histogram
from prometheus_shm import ProcessTableFullError

FORK = multiprocessing.get_context("fork")
RESTARTS = str(Path(__file__).resolve().parent / "promshm_restarts.py")


def _fork(body: Callable[[], None]) -> int:
    """Fork a child that runs ``body`` and exits 0 (1 if it raised); return its pid."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            body()
        except BaseException:
            code = 1
        os._exit(code)
    return pid


def _wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_forked_workers_sum_exactly_with_floats() -> None:
    """4 forked processes x 50,000 inc(0.5) and observe(0.25) sum exactly (CAS on the bits)."""
    prometheus_shm.install("anonymous")
    c = Counter("work", "Work.", ["kind"], registry=None)
    h = Histogram("dur", "Dur.", registry=None, buckets=[0.5])

    def body() -> None:
        child = c.labels("a")
        for _ in range(50_000):
            child.inc(0.5)
            h.observe(0.25)

    pids = [_fork(body) for _ in range(4)]
    assert [_wait(p) for p in pids] == [0, 0, 0, 0]
    got = values(scrape())
    assert got[("work_total", (("kind", "a"),))] == 100_000.0
    assert got[("dur_sum", ())] == 50_000.0
    assert got[("dur_bucket", (("le", "0.5"),))] == 200_000.0


def test_a_child_starts_at_zero_and_the_parent_keeps_its_own() -> None:
    """After fork the child's values start at 0 in its own row; the parent's stay its own."""
    prometheus_shm.install("anonymous")
    c = Counter("own", "Own.", registry=None)
    c.inc(5)
    r, w = os.pipe()

    def body() -> None:
        os.close(r)
        before = c._value.get()
        c.inc(2)
        os.write(w, f"{before} {c._value.get()}".encode())

    pid = _fork(body)
    os.close(w)
    assert os.read(r, 100) == b"0.0 2.0"
    assert _wait(pid) == 0
    assert c._value.get() == 5.0
    assert values(scrape()) == {("own_total", ()): 7.0}


def test_sigkilled_worker_counters_stay_live_gauges_vanish_all_gauges_stay() -> None:
    """No hook: a killed worker's counters and histograms stay, livesum goes, "all" stays."""
    prometheus_shm.install("anonymous", liveness_ttl=0)
    c = Counter("hits", "Hits.", registry=None)
    busy = Gauge("busy", "Busy.", registry=None, multiprocess_mode="livesum")
    mem = Gauge("mem", "Mem.", registry=None, multiprocess_mode="all")
    peak = Gauge("peak", "Peak.", registry=None, multiprocess_mode="max")
    lat = Histogram("lat", "Lat.", registry=None, buckets=[1.0])
    ready, go = FORK.Event(), FORK.Event()

    def body() -> None:
        c.inc(3)
        busy.inc()
        mem.set(100)
        peak.set(9)
        lat.observe(0.5)
        ready.set()
        go.wait(30)

    proc = FORK.Process(target=body)
    proc.start()
    assert ready.wait(30)
    alive = values(scrape())
    assert alive[("busy", ())] == 1.0
    os.kill(proc.pid or 0, signal.SIGKILL)
    proc.join(30)
    dead = values(scrape())
    assert dead[("hits_total", ())] == 3.0
    assert dead[("busy", ())] == 0.0  # only the parent's 0 is left
    assert dead[("mem", (("pid", str(proc.pid)),))] == 100.0
    assert dead[("mem", (("pid", str(os.getpid())),))] == 0.0
    assert dead[("peak", ())] == 9.0
    assert dead[("lat_count", ())] == 1.0
    # the scrape folded the dead row: the same figures again, from the archive
    info = prometheus_shm.segment_info()
    assert (info.folded, info.rows_retired) == (1, 1)
    assert values(scrape()) == dead


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_totals_never_go_backwards_over_restarts_and_the_segment_stays_the_same_size(
    seg_path: str,
) -> None:
    """10,000 worker restarts: the counter equals the increments, never drops; the size is fixed."""
    proc = subprocess.run(
        [sys.executable, RESTARTS, seg_path, "10000"],
        capture_output=True,
        text=True,
        timeout=840,  # 40-160 s on the shared 2-core VM
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    points = answer["checkpoints"]
    assert [p["restarts"] for p in points][:3] == [10, 500, 1000]
    assert [p["served"] for p in points] == [float(p["restarts"]) for p in points]
    assert {p["inflight"] for p in points} == {0.0}
    assert {p["size"] for p in points} == {points[0]["size"]}
    # the "all" gauge keeps the latest dead workers' samples, at most one per row
    assert all(1 <= p["all_samples"] <= 8 for p in points)
    stats = answer["stats"]
    assert stats["folded"] == 10_000
    assert stats["rows_owned"] + stats["rows_retired"] <= 8
    assert stats["bytes"] <= points[0]["size"]


def test_a_folder_killed_mid_fold_is_undone_by_the_next_reader() -> None:
    """A folder SIGKILLed mid-fold leaves the archive half written; the next reader undoes it."""
    from prometheus_shm import _layout, _runtime, _store

    prometheus_shm.install("anonymous", liveness_ttl=0)
    c = Counter("kept", "Kept.", registry=None)
    c.inc(1)
    worker = _fork(lambda: c.inc(10))
    assert _wait(worker) == 0
    store = _runtime.active().store
    ((row, word),) = store.dead_rows()

    def fold_and_die() -> None:
        def half(self: _store.Store, start: int) -> bool:
            geo = self.geo
            self.cells.fstore(geo.values(geo.archive) + c._value.entry.first_cell, 12345.0)
            os.kill(os.getpid(), signal.SIGKILL)
            return False

        _store.Store._fold_values = half  # type: ignore[method-assign]
        store.fold(row, word)

    folder = _fork(fold_and_die)
    assert _wait(folder) == -signal.SIGKILL
    assert store.cells.load_sc(_layout.H_SEQ) % 2 == 1
    assert values(scrape()) == {("kept_total", ()): 11.0}
    assert store.cells.load_sc(_layout.H_SEQ) % 2 == 0
    assert prometheus_shm.segment_info().folded == 1
    assert values(scrape()) == {("kept_total", ()): 11.0}


def test_process_rows_full_is_a_clear_error_in_the_worker() -> None:
    """With every row held by a live process, a new worker's first use raises and says so."""
    prometheus_shm.install("anonymous", processes=2)
    c = Counter("rows", "Rows.", registry=None)
    c.inc()
    ready, go = FORK.Event(), FORK.Event()

    def hold() -> None:
        c.inc()
        ready.set()
        go.wait(30)

    holder = FORK.Process(target=hold)
    holder.start()
    assert ready.wait(30)
    r, w = os.pipe()

    def third() -> None:
        os.close(r)
        try:
            c.inc()
        except ProcessTableFullError as exc:
            os.write(w, str(exc).encode())

    pid = _fork(third)
    os.close(w)
    message = os.read(r, 1000).decode()
    assert _wait(pid) == 0
    go.set()
    holder.join(30)
    assert message == (
        "all 2 process rows of the anonymous segment are held by live processes;"
        " install(processes=...) sets more for a new segment"
    )
    assert values(scrape()) == {("rows_total", ()): 2.0}


@pytest.mark.parametrize("hook", [True, False])
def test_a_dead_worker_is_seen_at_the_next_scrape_hook_or_not(hook: bool) -> None:
    """A killed worker's live gauge is gone at the next scrape; mark_process_dead folds it now."""
    prometheus_shm.install("anonymous", liveness_ttl=3600)
    busy = Gauge("b", "B.", registry=None, multiprocess_mode="livesum")
    assert values(scrape()) == {("b", ()): 0.0}
    ready, go = FORK.Event(), FORK.Event()

    def body() -> None:
        busy.inc()
        ready.set()
        go.wait(30)

    proc = FORK.Process(target=body)
    proc.start()
    assert ready.wait(30)
    assert values(scrape()) == {("b", ()): 1.0}
    os.kill(proc.pid or 0, signal.SIGKILL)
    proc.join(30)
    if hook:
        prometheus_shm.mark_process_dead(proc.pid or 0)
        assert prometheus_shm.segment_info().folded == 1
    if not hasattr(os, "pidfd_open") and not hook:
        pytest.skip("without pidfds a live owner is trusted for liveness_ttl")
    # pidfds: the kernel says the process exited, whatever liveness_ttl says
    assert values(scrape()) == {("b", ()): 0.0}
    assert prometheus_shm.segment_info().folded == 1
