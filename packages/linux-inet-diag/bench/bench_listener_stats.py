"""Benchmark listener statistics against peers on the same scenario, same run.

Scenario: one TCP listener on 127.0.0.1 with N (10,000) accepted connections
held open by a child process (the clients live in this process), then a Unix
listener with 1,000 accepted connections; in each, ``listener_inodes()`` (every
listener's inode and name) against the same map read from /proc. Peers are
measured in interleaved rounds (the kernel's socket table changes while
TIME_WAIT sockets expire, so every peer must see the same machine). Prints
Markdown tables of ms/op and ratios, then the targets table (target,
measured, met). Run:
``python bench/bench_listener_stats.py`` (or ``nox -s bench``); ``-n``, ``-u``
and ``--budget`` shrink the run for a smoke test.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable

import linux_inet_diag as lid
from linux_inet_diag._stats import parse_proc_net_unix, tally_proc_unix

SERVER = textwrap.dedent(
    """
    import socket, sys
    kind, where, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if kind == "tcp":
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
    else:
        srv = socket.socket(socket.AF_UNIX)
        srv.bind(where)
    srv.listen(4096)
    print(srv.getsockname()[1] if kind == "tcp" else where, flush=True)
    held = []
    while len(held) < n:
        held.append(srv.accept()[0])
    print("ready", flush=True)
    sys.stdin.read()  # hold everything until the parent closes stdin
    # Reset rather than close: 10,000 sockets in TIME_WAIT would sit in the
    # kernel's table for a minute and slow every dump that follows.
    import struct
    for s in held:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    """
)

RUBY = textwrap.dedent(
    """
    require "raindrops"
    $stdout.sync = true
    $stdin.each_line do |line|
      key, n, arg = line.split(" ", 3)
      arg = arg.strip
      f = case key
          when "tcp" then lambda { Raindrops::Linux.tcp_listener_stats([arg]) }
          when "tcpall" then lambda { Raindrops::Linux.tcp_listener_stats }
          when "unix" then lambda { Raindrops::Linux.unix_listener_stats([arg]) }
          end
      t = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      n.to_i.times { f.call }
      puts(Process.clock_gettime(Process::CLOCK_MONOTONIC) - t)
    end
    """
)

Batch = Callable[[int], float]  # run n operations, return the seconds taken


def raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def py_batch(fn: Callable[[], object]) -> Batch:
    def batch(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return time.perf_counter() - t0

    return batch


class Ruby:
    """A persistent ``ruby`` running Raindrops::Linux calls on demand."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.why = ""
        if shutil.which("ruby") is None:
            self.why = "ruby is not installed"
            return
        check = subprocess.run(
            ["ruby", "-e", 'require "raindrops"'],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if check.returncode != 0:
            self.why = "ruby-raindrops is not installed"
            return
        self.proc = subprocess.Popen(
            ["ruby", "-e", RUBY], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip

    def batch(self, key: str, arg: str) -> Batch | None:
        proc = self.proc
        if proc is None:
            return None

        def run(n: int) -> float:
            assert proc.stdin is not None
            assert proc.stdout is not None
            proc.stdin.write(f"{key} {n} {arg}\n")
            proc.stdin.flush()
            return float(proc.stdout.readline())

        return run

    def close(self) -> None:
        if self.proc is not None and self.proc.stdin is not None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def measure(peers: list[tuple[str, Batch | None]], budget: float) -> list[float | None]:
    """Median seconds/op per peer over interleaved rounds."""
    rounds = 5
    sizes = []
    for _, batch in peers:
        if batch is None:
            sizes.append(0)
            continue
        batch(1)
        one = max(batch(1), 1e-7)
        sizes.append(max(1, int(budget / rounds / one)))
    samples: list[list[float]] = [[] for _ in peers]
    for _ in range(rounds):
        for i, (_, batch) in enumerate(peers):
            if batch is not None:
                samples[i].append(batch(sizes[i]) / sizes[i])
    return [statistics.median(s) if s else None for s in samples]


def start_server(kind: str, where: str, n: int) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, kind, where, str(n)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def stop_server(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=30)
    if proc.stdout is not None:
        proc.stdout.close()


def connect_all(family: int, addr: object, n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        c = socket.socket(family, socket.SOCK_STREAM)
        c.connect(addr)  # type: ignore[arg-type]
        out.append(c)
    return out


def proc_net_tcp(port: int) -> tuple[int, int]:
    """Active/queued from /proc/net/tcp{,6} parsed in Python."""
    hexport = f":{port:04X}"
    active = queued = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(path) as f:
            next(f)
            for line in f:
                cols = line.split()
                if not cols[1].endswith(hexport):
                    continue
                if cols[3] == "0A":
                    queued += int(cols[4].split(":")[1], 16)
                elif cols[3] == "01" and cols[9] != "0":
                    active += 1
    return active, queued


def proc_listener_inodes() -> dict[int, str]:
    """Inode -> name of every TCP and Unix stream listener, from /proc/net/* in Python."""
    out: dict[int, str] = {}
    for path, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        with open(path) as f:
            next(f)
            for line in f:
                cols = line.split()
                if cols[3] != "0A":
                    continue
                hexaddr, hexport = cols[1].split(":")
                # each 32-bit word of the address is printed as a native u32
                raw = b"".join(
                    bytes.fromhex(hexaddr[i : i + 8])[:: -1 if sys.byteorder == "little" else 1]
                    for i in range(0, len(hexaddr), 8)
                )
                host = socket.inet_ntop(family, raw)
                port = int(hexport, 16)
                out[int(cols[9])] = (
                    f"{host}:{port}" if family == socket.AF_INET else f"[{host}]:{port}"
                )
    with open("/proc/net/unix", encoding="utf-8", errors="surrogateescape") as f:
        next(f)
        for line in f:
            cols = line.split(None, 7)
            if len(cols) == 8 and int(cols[3], 16) & 0x10000 and cols[4] == "0001":
                out[int(cols[6])] = cols[7].rstrip("\n")
    return out


Results = dict[str, float | None]  # label -> seconds per operation


def table(title: str, rows: list[tuple[str, float | None]]) -> Results:
    base = rows[0][1]
    assert base is not None
    print(f"\n### {title}\n")
    print(f"| implementation | ms/op | ratio to {rows[0][0]} |")
    print("| --- | ---: | ---: |")
    for name, secs in rows:
        if secs is None:
            print(f"| {name} | skipped | |")
        else:
            print(f"| {name} | {secs * 1e3:.3f} | {secs / base:.2f}x |")
    return dict(rows)


# (target, peer label, ours label, minimum peer/ours ratio): the targets of
# the package README, as ratios of the peer's time to ours in the same run.
TARGETS = [
    ("one listener within 1.1x of Ruby raindrops (C) (Ruby / ours >= 0.91)",
     "Ruby raindrops (C), one listener", "linux_inet_diag, one listener", 1 / 1.1),
    ("one listener at least 30x faster than psutil.net_connections",
     "psutil.net_connections", "linux_inet_diag, one listener", 30.0),
    ("one listener at least 50x faster than plain pyroute2",
     "pyroute2 DiagSocket, plain get_sock_stats", "linux_inet_diag, one listener", 50.0),
    ("Unix at least 3x faster than Ruby raindrops' /proc/net/unix scan",
     "Ruby raindrops (/proc/net/unix scan)", "linux_inet_diag (unix_diag)", 3.0),
]  # fmt: skip


def targets(results: Results) -> None:
    """Print the targets table: each target, the measured ratio, met or not."""
    print("\n#### Targets\n")
    print("| target | measured | met |")
    print("| --- | ---: | :---: |")
    for target, peer, ours, minimum in TARGETS:
        p, o = results.get(peer), results.get(ours)
        if p is None or o is None:
            print(f"| {target} | skipped | n/a |")
        else:
            print(f"| {target} | {p / o:.2f}x | {'yes' if p / o >= minimum else 'NO'} |")


def bench_inodes(scenario: str, name: str, budget: float, diag: lid.DiagSocket) -> None:
    """listener_inodes() against the same inode -> name map read from /proc."""
    assert name in diag.listener_inodes().values(), name
    assert name in proc_listener_inodes().values(), name
    peers: list[tuple[str, Batch | None]] = [
        ("linux_inet_diag listener_inodes()", py_batch(diag.listener_inodes)),
        ("/proc/net/{tcp,tcp6,unix} listeners parsed in Python", py_batch(proc_listener_inodes)),
    ]
    try:
        from shm_counters import listening_inodes

        peers.append(("shm_counters.listening_inodes() (/proc, inodes only)",
                      py_batch(listening_inodes)))  # fmt: skip
    except ImportError:
        peers.append(("shm_counters (not installed)", None))
    times = measure(peers, budget)
    table(
        f"Listener inodes (inode -> name, every listener), {scenario}",
        [(label, t) for (label, _), t in zip(peers, times, strict=True)],
    )


def bench_tcp(n: int, budget: float, diag: lid.DiagSocket, ruby: Ruby) -> Results:
    proc, port_s = start_server("tcp", "", n)
    port = int(port_s)
    clients = connect_all(socket.AF_INET, ("127.0.0.1", port), n)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    name = f"127.0.0.1:{port}"
    got = diag.tcp_listener_stats([name])[name]
    assert (got.active, got.queued) == (n, 0), got
    peers: list[tuple[str, Batch | None]] = [
        ("linux_inet_diag, one listener",
         py_batch(lambda: diag.tcp_listener_stats([name]))),
        ("linux_inet_diag, all listeners", py_batch(diag.tcp_listener_stats)),
        ("Ruby raindrops (C), one listener", ruby.batch("tcp", name)),
        ("Ruby raindrops (C), all listeners", ruby.batch("tcpall", "-")),
    ]  # fmt: skip
    try:
        import psutil

        def ps() -> int:
            return sum(
                1
                for c in psutil.net_connections("tcp")
                if c.laddr and c.laddr.port == port and c.status == "ESTABLISHED"
            )

        peers.append(("psutil.net_connections", py_batch(ps)))
    except ImportError:
        peers.append(("psutil.net_connections (not installed)", None))
    peers.append(("/proc/net/tcp parsed in Python", py_batch(lambda: proc_net_tcp(port))))
    if shutil.which("ss"):
        cmd = ["ss", "-Htnae", "state", "established", "state", "listening",
               "sport", f"= :{port}"]  # fmt: skip

        def ss() -> int:
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            return sum(" ino:0 " not in ln for ln in out.splitlines())

        peers.append(("ss subprocess (-e, inode check)", py_batch(ss)))
    else:
        peers.append(("ss subprocess (not installed)", None))
    pyr = None
    try:
        from pyroute2 import DiagSocket as PyrDiag

        pyr = PyrDiag()
        pyr.bind()

        def plain() -> tuple[int, int]:
            assert pyr is not None
            active = queued = 0
            for fam in (socket.AF_INET, socket.AF_INET6):
                for m in pyr.get_sock_stats(family=fam, states=(1 << 1) | (1 << 10)):
                    if m["idiag_sport"] != port:
                        continue
                    if m["idiag_state"] == 10:
                        queued += m["idiag_rqueue"]
                    elif m["idiag_inode"]:
                        active += 1
            return active, queued

        assert plain() == (n, 0)
        peers.append(("pyroute2 DiagSocket, plain get_sock_stats", py_batch(plain)))
    except ImportError:
        peers.append(("pyroute2 (not installed)", None))
    times = measure(peers, budget)
    if pyr is not None:
        pyr.close()
    results = table(
        f"TCP: one listener, {n} accepted connections",
        [(label, t) for (label, _), t in zip(peers, times, strict=True)],
    )
    bench_inodes(f"{n} TCP connections held", name, budget, diag)
    for c in clients:
        c.close()
    stop_server(proc)
    return results


def bench_unix(n: int, budget: float, diag: lid.DiagSocket, ruby: Ruby) -> Results:
    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "bench.sock")
    proc, _ = start_server("unix", path, n)
    clients = connect_all(socket.AF_UNIX, path, n)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    assert diag.unix_listener_stats(path)[path].active == n

    def fallback() -> object:
        with open("/proc/net/unix", encoding="utf-8", errors="surrogateescape") as f:
            return tally_proc_unix([path], parse_proc_net_unix(f.read()))

    peers: list[tuple[str, Batch | None]] = [
        ("linux_inet_diag (unix_diag)", py_batch(lambda: diag.unix_listener_stats(path))),
        ("linux_inet_diag /proc/net/unix fallback", py_batch(fallback)),
        ("Ruby raindrops (/proc/net/unix scan)", ruby.batch("unix", path)),
    ]
    times = measure(peers, budget)
    results = table(
        f"Unix: one listener, {n} accepted connections",
        [(label, t) for (label, _), t in zip(peers, times, strict=True)],
    )
    bench_inodes(f"{n} Unix connections held", path, budget, diag)
    for c in clients:
        c.close()
    stop_server(proc)
    os.unlink(path)
    os.rmdir(tmp)
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("-n", type=int, default=10_000, help="TCP connections")
    p.add_argument("-u", type=int, default=1_000, help="Unix connections")
    p.add_argument("--budget", type=float, default=2.0, help="seconds per peer")
    args = p.parse_args()
    raise_nofile()
    print(
        f"Python {platform.python_version()}, Linux {platform.release()}, "
        f"{args.n} TCP / {args.u} Unix connections held open"
    )
    ruby = Ruby()
    if ruby.proc is None:
        print(f"(Ruby raindrops peers skipped: {ruby.why})")
    with lid.DiagSocket() as diag:
        results = bench_tcp(args.n, args.budget, diag, ruby)
        results.update(bench_unix(args.u, args.budget, diag, ruby))
    ruby.close()
    targets(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
