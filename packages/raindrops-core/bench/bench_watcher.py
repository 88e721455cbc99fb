"""Benchmark the Watcher's per-sample and per-page costs and LastDataRecv's per-request cost.

Run: ``python bench/bench_watcher.py`` (or ``nox -s bench``); bounded to well
under two minutes. Prints a Markdown table of ns/op (µs for pages) with
ratios against the peers measured in the same run:

- one sample into the aggregates vs keeping raw samples and computing the
  same statistics (the sample standard deviation, as the Ruby ``aggregate``
  gem's) with the ``statistics`` module when read;
- one ``tcpi_last_data_recv`` record into the shared histogram vs
  ``prometheus_client.Histogram.observe`` (in-process), and the whole
  per-request step (the first-request check, then the record);
- rendering a listener's text, JSON and HTML page (for a loopback client:
  the Watcher refuses everyone else);
- one sample round read from the kernel (netlink, one named listener),
  blocking and on an event loop, vs the round recorded from a given
  ``fetch`` (no I/O);
- how soon a waiter wakes once a round is recorded from another thread: a
  coroutine awaiting ``await_round`` vs a thread in ``wait_round``.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from raindrops_core.adapter import LastDataRecvCore, WatcherCore
from raindrops_core.watcher import Aggregate, WatcherEngine


@dataclass(frozen=True)
class _Stats:
    active: int
    queued: int


@dataclass(frozen=True)
class _Info:
    last_data_recv: int
    data_segs_out: int


def _ns_per_op(fn: Callable[[], object], *, budget: float = 1.0) -> float:
    n = 1
    while True:
        began = time.perf_counter_ns()
        for _ in range(n):
            fn()
        took = time.perf_counter_ns() - began
        if took > budget * 1e9 / 4 or n >= 1 << 24:
            break
        n *= 2
    best = took / n
    for _ in range(3):
        began = time.perf_counter_ns()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter_ns() - began) / n)
    return best


def main() -> None:
    rows: list[tuple[str, float, str, str]] = []

    agg = Aggregate(reset_at=0.0)
    values = [i % 17 for i in range(4096)]
    it = iter(range(1 << 62))

    def add() -> None:
        agg.add(values[next(it) & 4095], 0.0)

    raw: list[int] = []

    def append() -> None:
        raw.append(values[next(it) & 4095])

    ours_add = _ns_per_op(add)
    peer_add = _ns_per_op(append)
    rows.append(("record one sample: Aggregate.add", ours_add, "ns", "1.00"))
    rows.append(("peer: list.append (raw samples)", peer_add, "ns", f"{peer_add / ours_add:.2f}"))

    full = Aggregate(reset_at=0.0)
    window = values[:3600]
    for v in window:
        full.add(v, 0.0)

    def peer_read() -> object:
        return (
            len(window),
            min(window),
            max(window),
            statistics.fmean(window),
            statistics.stdev(window),
        )

    ours_read = _ns_per_op(full.stats)
    peer_read_ns = _ns_per_op(peer_read)
    rows.append(("read stats (3600 samples): Aggregate.stats", ours_read, "ns", "1.00"))
    rows.append(
        ("peer: statistics over raw samples", peer_read_ns, "ns", f"{peer_read_ns / ours_read:.2f}")
    )

    ldr = LastDataRecvCore(segment="anonymous")
    ldr.record(1)
    ours_ldr = _ns_per_op(lambda: ldr.record(7))
    rows.append(("LastDataRecv record (shm histogram)", ours_ldr, "ns", "1.00"))
    info = _Info(last_data_recv=7, data_segs_out=0)
    per_request = _ns_per_op(lambda: ldr.record_info(info))
    rows.append(
        (
            "LastDataRecv record_info (first-request check + record)",
            per_request,
            "ns",
            f"{per_request / ours_ldr:.2f}",
        )
    )
    try:
        from prometheus_client import CollectorRegistry, Histogram

        prom = Histogram("ldr_ms", "wait", registry=CollectorRegistry())
        peer_ldr = _ns_per_op(lambda: prom.observe(7))
        rows.append(
            (
                "peer: prometheus_client Histogram.observe",
                peer_ldr,
                "ns",
                f"{peer_ldr / ours_ldr:.2f}",
            )
        )
    except ImportError:
        rows.append(("peer: prometheus_client (not installed)", float("nan"), "ns", "-"))

    name = "127.0.0.1:8080"
    core = WatcherCore([name], fetch=lambda names: {}, history=300)
    for i in range(300):
        core.engine.record({name: _Stats(i % 7, i % 13)}, at=float(i))
    local = "127.0.0.1"
    txt = _ns_per_op(lambda: core.handle("GET", f"/queued/{name}.txt", "", peer=local), budget=0.5)
    js = _ns_per_op(lambda: core.handle("GET", f"/queued/{name}.json", "", peer=local), budget=0.5)
    page = _ns_per_op(
        lambda: core.handle("GET", f"/queued/{name}.html", "", peer=local), budget=0.5
    )
    rows.append(("page /queued/L.txt", txt / 1000, "µs", "1.00"))
    rows.append(("page /queued/L.json (300 history points)", js / 1000, "µs", f"{js / txt:.2f}"))
    rows.append(("page /queued/L.html (2 SVG charts)", page / 1000, "µs", f"{page / txt:.2f}"))

    rows += _sampling_rows()
    rows += _wake_rows()

    print("| operation | time | unit | ratio (peer / ours, or vs the row it names) |")
    print("| --- | ---: | --- | ---: |")
    for label, value, unit, ratio in rows:
        print(f"| {label} | {value:,.0f} | {unit} | {ratio} |")


def _sampling_rows() -> list[tuple[str, float, str, str]]:
    """One sample round: from the kernel (blocking, then on a loop) vs from a given fetch."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        name = f"127.0.0.1:{srv.getsockname()[1]}"
        given = {name: _Stats(1, 2)}
        fed = WatcherEngine([name], fetch=lambda names: given)
        ours_fed = _ns_per_op(fed.sample, budget=0.5)
        kernel = WatcherEngine([name])
        blocking = _ns_per_op(kernel.sample, budget=0.5)
        assert kernel.last_error is None, kernel.last_error

        async def rounds(n: int) -> float:
            began = time.perf_counter_ns()
            for _ in range(n):
                await kernel.asample()
            return (time.perf_counter_ns() - began) / n

        looped = min(asyncio.run(rounds(100)) for _ in range(3))
        assert kernel.last_error is None, kernel.last_error
    return [
        ("sample round, given fetch (record only)", ours_fed, "ns", "1.00"),
        ("sample round, netlink: sample()", blocking, "ns", f"{blocking / ours_fed:.2f}"),
        (
            "sample round, netlink on a loop: asample()",
            looped,
            "ns",
            f"{looped / blocking:.2f} (vs sample())",
        ),
    ]


def _wake_rows(n: int = 200) -> list[tuple[str, float, str, str]]:
    """Median time from record() in another thread to the waiter running again."""
    engine = WatcherEngine(["127.0.0.1:1"], fetch=lambda names: {})
    stats = {"127.0.0.1:1": _Stats(0, 0)}
    go = threading.Event()
    recorded: list[int] = []

    def recorder() -> None:  # a daemon: it ends with the benchmark
        while True:
            go.wait()
            go.clear()
            time.sleep(0.001)  # let the waiter start waiting
            recorded.append(time.perf_counter_ns())
            engine.record(stats)

    threading.Thread(target=recorder, daemon=True).start()

    async def on_loop() -> list[int]:
        waits = []
        for _ in range(n):
            after = engine.rounds
            go.set()
            await engine.await_round(after, 5.0)
            waits.append(time.perf_counter_ns() - recorded[-1])
        return waits

    aw = statistics.median(asyncio.run(on_loop())) / 1000
    waits = []
    for _ in range(n):
        after = engine.rounds
        go.set()
        engine.wait_round(after, 5.0)
        waits.append(time.perf_counter_ns() - recorded[-1])
    th = statistics.median(waits) / 1000
    return [
        ("wake on a round: thread in wait_round", th, "µs", "1.00"),
        ("wake on a round: coroutine in await_round", aw, "µs", f"{aw / th:.2f}"),
    ]


if __name__ == "__main__":
    main()
