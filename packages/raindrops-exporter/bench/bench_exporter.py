"""Scrape latency of raindrops-exporter against prometheus_client's MultiProcessCollector.

Run: ``python bench/bench_exporter.py`` (or ``nox -s bench -- raindrops-exporter``);
about a minute. Linux only. One run sets up, on loopback:

- 8 listening sockets and 10,000 established connections to them (a child
  process holds the client ends, this one the accepted ends);
- 64 worker processes (forked, each holding the listeners as a server's
  workers do), each owning a row of a raindrops scoreboard and of a
  process-utilization scoreboard, and recording into the shared
  request-duration histogram, in a segment directory named as servers name
  theirs (``raindrops-<lowest inode>``, ...);
- the peer: prometheus_client's multiprocess files for the same 64 PIDs,
  holding the same series (calling/writing as ``livesum`` gauges, the three
  per-worker counters, in-flight, the 14-bucket histogram, and each
  listener's active/queued/backlog gauges).

Then, in the same run, interleaved in rounds:

1. ``/metrics`` over HTTP: ``raindrops-exporter`` started from its command
  line, against a prometheus_client ``start_http_server`` process serving a
  ``MultiProcessCollector`` registry over the 64 workers' files: the latency
  of a scrape on a kept-alive connection, as Prometheus scrapes;
2. the same render in-process (no HTTP): ``generate_latest`` of a registry
  holding ``ExporterCollector``, against one holding ``MultiProcessCollector``;
3. the exporter process's RSS after the scrapes, and its CPU per scrape
  (its CPU time over the scrapes, less what its sampler spends in the same
  time, measured beside it while idle).

Prints Markdown tables and the targets (at least 10x faster than the peer,
under 5 ms at the median). ``RD_BENCH_PROFILE=1`` also prints a cProfile of
50 in-process reads.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

WORKERS = 64
LISTENERS = 8
CONNECTIONS = 10_000
ROUNDS = 5
SCRAPES = 60  # per round and side
TARGET_RATIO = 10.0
TARGET_MEDIAN_MS = 5.0
BIN = Path(sys.executable).parent


def _ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        rest = f.read().rsplit(b")", 1)[1].split()
    return int(rest[11]) + int(rest[12])  # utime + stime (fields 14, 15)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


@contextlib.contextmanager
def _listeners() -> Iterator[list[socket.socket]]:
    socks = []
    try:
        for _ in range(LISTENERS):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen(4096)
            socks.append(s)
        yield socks
    finally:
        for s in socks:
            s.close()


def _connect_child(socks: list[socket.socket]) -> tuple[int, int]:
    """Fork a child that opens CONNECTIONS connections and keeps them; return (pid, ready fd)."""
    addresses = [s.getsockname() for s in socks]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            for s in socks:  # a client, not one of the server's workers
                s.close()
            keep = []
            for i in range(CONNECTIONS):
                keep.append(socket.create_connection(addresses[i % len(addresses)]))
            os.write(w, b"x")
            signal.pause()
        finally:
            os._exit(0)
    os.close(w)
    return pid, r


def _workers(directory: Path, inode: int) -> list[int]:
    """64 forked workers, each with a row in both scoreboards; the histogram recorded into."""
    from process_utilization import DEFAULT_LATENCY_BUCKETS, latency_edges, open_scoreboard
    from raindrops_core import FIELDS
    from shm_counters import Histogram, Scoreboard

    rd = Scoreboard(256, FIELDS, path=directory / f"raindrops-{inode}")
    util = open_scoreboard(str(directory / f"utilization-{inode}"), slots=WORKERS)
    edges = latency_edges(DEFAULT_LATENCY_BUCKETS)
    assert edges is not None
    hist = Histogram(edges, path=directory / f"latency-{inode}")
    pids = []
    r, w = os.pipe()
    now = time.monotonic_ns()
    for n in range(WORKERS):
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                row = rd.claim()
                row.calling = n % 2
                urow = util.claim()
                urow.requests = 1000 + n
                urow.entered = 1000 + n + n % 2
                urow.busy_ns = 10**9 * n
                urow.horizon_ns = now - 60 * 10**9
                for k in range(50):
                    hist.record(1_000_000 * (k + n))
                os.write(w, b"x")
                signal.pause()
            finally:
                os._exit(0)
        pids.append(pid)
    os.close(w)
    for _ in range(WORKERS):
        os.read(r, 1)
    os.close(r)
    return pids


def _multiprocess_files(directory: Path, pids: list[int], names: list[str]) -> None:
    """The peer's files: for each worker PID, the same series through prometheus_client."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
    from prometheus_client.values import MultiProcessValue

    for n, pid in enumerate(pids):
        values.ValueClass = MultiProcessValue(lambda pid=pid: pid)
        reg = CollectorRegistry()
        Gauge("raindrops_calling", "c", multiprocess_mode="livesum", registry=reg).set(n % 2)
        Gauge("raindrops_writing", "w", multiprocess_mode="livesum", registry=reg).set(0)
        lab = ["worker", "pid"]
        lv = [str(n), str(pid)]
        Counter("process_utilization_busy_seconds", "b", lab, registry=reg).labels(*lv).inc(n)
        Counter("process_utilization_requests", "r", lab, registry=reg).labels(*lv).inc(1000 + n)
        Counter("process_utilization_response_seconds", "s", lab, registry=reg).labels(*lv).inc(n)
        Gauge("process_utilization_in_flight", "f", lab, registry=reg).labels(*lv).set(n % 2)
        h = Histogram("process_utilization_request_duration_seconds", "d", registry=reg)
        for k in range(50):
            h.observe((k + n) / 1000)
        for metric in ("active", "queued", "backlog"):
            g = Gauge(
                f"raindrops_listener_{metric}",
                metric,
                ["listener"],
                multiprocess_mode="liveall",
                registry=reg,
            )
            for name in names:
                g.labels(name).set(1)


_PEER = r"""
import sys, time
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector
reg = CollectorRegistry()
MultiProcessCollector(reg)
server, thread = start_http_server(0, addr="127.0.0.1", registry=reg)
print(server.server_address[1], flush=True)
time.sleep(3600)
"""


def _scrape_times(port: int, n: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    out = []
    try:
        for _ in range(n):
            began = time.perf_counter()
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            resp.read()
            out.append(time.perf_counter() - began)
            assert resp.status == 200
    finally:
        conn.close()
    return out


def _inprocess(render: Callable[[], bytes], n: int) -> list[float]:
    out = []
    for _ in range(n):
        began = time.perf_counter()
        render()
        out.append(time.perf_counter() - began)
    return out


def _breakdown(local: object, directory: Path, inode: int) -> list[tuple[str, float]]:
    """The parts of a read, each timed alone (the medians of 30 calls)."""
    from linux_inet_diag import listen_overflows
    from linux_inet_diag import listening_sockets as kernel_listening
    from process_utilization import worker_stats
    from raindrops_exporter import listening_sockets
    from shm_counters import Scoreboard

    util = Scoreboard.attach(directory / f"utilization-{inode}")
    rd = Scoreboard.attach(directory / f"raindrops-{inode}")

    def timed(f: Callable[[], object]) -> float:
        return statistics.median(_inprocess(f, 30))  # type: ignore[arg-type]

    return [
        ("Exporter.read(): every figure of every server", timed(local.read)),  # type: ignore[attr-defined]
        (
            "  worker_stats() of 64 utilization rows (reads them twice)",
            timed(lambda: worker_stats(util)),
        ),
        ("  raindrops totals() (C scan of 256 rows)", timed(rd.totals)),
        ("  LISTEN sockets: the TCP and the Unix sock_diag dumps", timed(listening_sockets)),
        ("    of which the LISTEN-only dumps", timed(kernel_listening)),
        ("  listen_overflows() (/proc/net/netstat)", timed(listen_overflows)),
    ]


def _ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1000:.2f} ms"


def main() -> int:
    if not sys.platform.startswith("linux"):
        print("bench_exporter: Linux only (netlink, /proc); skipped")
        return 0
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < CONNECTIONS + 500:
        print(f"bench_exporter: needs {CONNECTIONS + 500} descriptors, the limit is {hard}")
        return 0
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    procs: list[subprocess.Popen[bytes]] = []
    children: list[int] = []
    with tempfile.TemporaryDirectory(prefix="rd-bench-") as tmp, _listeners() as socks:
        base = Path(tmp)
        shm = base / "shm"
        shm.mkdir()
        own = shm / f"raindrops-{os.geteuid()}"
        own.mkdir(mode=0o700)
        mp = base / "multiproc"
        mp.mkdir()
        addresses = [s.getsockname() for s in socks]
        names = [f"127.0.0.1:{a[1]}" for a in addresses]
        inode = min(os.fstat(s.fileno()).st_ino for s in socks)
        try:
            pid, ready = _connect_child(socks)
            children.append(pid)
            accepted = []
            while len(accepted) < CONNECTIONS:
                for s in socks:
                    s.setblocking(False)
                    with contextlib.suppress(BlockingIOError):
                        while True:
                            accepted.append(s.accept()[0])
                time.sleep(0.001)
            os.read(ready, 1)
            children += _workers(own, inode)
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(mp)
            _multiprocess_files(mp, children[1:], names)

            env = {**os.environ, "RAINDROPS_SHM_DIR": str(shm), "PROMETHEUS_MULTIPROC_DIR": str(mp)}
            exporter = subprocess.Popen(
                [str(BIN / "raindrops-exporter"), "--bind", "127.0.0.1:0"],
                env=env,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            procs.append(exporter)
            assert exporter.stderr is not None
            line = exporter.stderr.readline().decode()
            port = int(re.search(r":([0-9]+)/", line).group(1))  # type: ignore[union-attr]
            peer = subprocess.Popen(
                [sys.executable, "-c", _PEER],
                env=env,
                stdout=subprocess.PIPE,
                start_new_session=True,
            )
            procs.append(peer)
            assert peer.stdout is not None
            peer_port = int(peer.stdout.readline())

            # Sanity: both answer the same families; the exporter found the server.
            body = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            body.request("GET", "/metrics")
            text = body.getresponse().read().decode()
            body.close()
            found = [x for x in text.splitlines() if x.startswith("raindrops_workers{")]
            assert found == [f'raindrops_workers{{server="{",".join(sorted(names))}"}} 64.0'], found
            series = sum(1 for x in text.splitlines() if x and not x.startswith("#"))

            from prometheus_client import CollectorRegistry, generate_latest
            from prometheus_client.multiprocess import MultiProcessCollector
            from raindrops_exporter import Exporter, ExporterCollector

            ours_reg = CollectorRegistry(auto_describe=False)
            local = Exporter(directory=str(own))
            local.start()  # its sampler, as the exporter process runs it
            ours_reg.register(ExporterCollector(local))
            peer_reg = CollectorRegistry()
            MultiProcessCollector(peer_reg, path=str(mp))
            peer_series = sum(
                1
                for x in generate_latest(peer_reg).decode().splitlines()
                if x and not x.startswith("#")
            )

            if os.environ.get("RD_BENCH_PROFILE"):
                import cProfile
                import pstats

                prof = cProfile.Profile()
                prof.enable()
                for _ in range(50):
                    local.read()
                prof.disable()
                pstats.Stats(prof).sort_stats("tottime").print_stats(20)
            http_ours: list[float] = []
            http_peer: list[float] = []
            in_ours: list[float] = []
            in_peer: list[float] = []
            _scrape_times(port, 5)
            _scrape_times(peer_port, 5)
            ticks_before = _ticks(exporter.pid)
            scrape_wall = time.monotonic()
            for r in range(ROUNDS):
                first, second = (port, peer_port) if r % 2 == 0 else (peer_port, port)
                a = _scrape_times(first, SCRAPES)
                b = _scrape_times(second, SCRAPES)
                (http_ours, http_peer)[first != port].extend(a)
                (http_ours, http_peer)[second != port].extend(b)
                in_ours += _inprocess(lambda: generate_latest(ours_reg), SCRAPES // 3)
                in_peer += _inprocess(lambda: generate_latest(peer_reg), SCRAPES // 3)
            scrape_wall = time.monotonic() - scrape_wall
            parts = _breakdown(local, own, inode)
            ticks_scrapes = _ticks(exporter.pid) - ticks_before
            idle_before = _ticks(exporter.pid)
            time.sleep(5)
            idle_rate = (_ticks(exporter.pid) - idle_before) / 5  # sampler alone, per second
            hz = os.sysconf("SC_CLK_TCK")
            scrapes = ROUNDS * SCRAPES
            cpu_per_scrape = max(0.0, (ticks_scrapes - idle_rate * scrape_wall) / hz / scrapes)
            rss = _rss_kib(exporter.pid)
        finally:
            for proc in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)

    ratio_http = statistics.median(http_peer) / statistics.median(http_ours)
    ratio_in = statistics.median(in_peer) / statistics.median(in_ours)
    print(
        f"\n### raindrops-exporter: {WORKERS} workers, {LISTENERS} listeners, "
        f"{CONNECTIONS:,} connections ({ROUNDS} rounds)\n"
    )
    print("| what | raindrops-exporter | prometheus_client MultiProcessCollector | ratio |")
    print("| --- | ---: | ---: | ---: |")
    print(
        f"| `/metrics` over HTTP, median (p90) | {_ms(http_ours)} "
        f"({statistics.quantiles(http_ours, n=10)[-1] * 1000:.2f} ms) | {_ms(http_peer)} "
        f"({statistics.quantiles(http_peer, n=10)[-1] * 1000:.2f} ms) | {ratio_http:.1f}x faster |"
    )
    print(
        f"| render in-process, median | {_ms(in_ours)} | {_ms(in_peer)} | {ratio_in:.1f}x faster |"
    )
    print(f"| series in the answer | {series} | {peer_series} | |")
    print(
        f"\nexporter process: RSS {rss / 1024:.1f} MiB after {scrapes} scrapes; "
        f"CPU {cpu_per_scrape * 1000:.2f} ms per scrape "
        f"(its sampler alone: {idle_rate / hz * 1000:.0f} ms of CPU per second)"
    )
    print("\nwhere one in-process scrape's time goes (medians, same run):\n")
    print("| part | time |")
    print("| --- | ---: |")
    for what, took in parts:
        print(f"| {what} | {took * 1000:.3f} ms |")
    median_ms = statistics.median(http_ours) * 1000
    print("\n| target | measured | met |")
    print("| --- | ---: | --- |")
    print(
        f"| >= {TARGET_RATIO:g}x faster than the peer (HTTP) | {ratio_http:.1f}x | "
        f"{'yes' if ratio_http >= TARGET_RATIO else 'NO'} |"
    )
    print(
        f"| < {TARGET_MEDIAN_MS:g} ms median | {median_ms:.2f} ms | "
        f"{'yes' if median_ms < TARGET_MEDIAN_MS else 'NO'} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
