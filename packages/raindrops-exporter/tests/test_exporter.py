"""The reader: a server's segments and the kernel's figures, found and named by themselves."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from linux_inet_diag import ListenStats
from process_utilization import DEFAULT_LATENCY_BUCKETS, latency_edges, open_scoreboard
from raindrops_core.adapter import FIELDS
from raindrops_exporter import ConfigError, Exporter
from shm_counters import Histogram, Scoreboard

pytestmark = pytest.mark.linux


@dataclass
class FakeServer:
    """A listening socket and the three segments its workers would share, in a test directory."""

    sock: socket.socket
    name: str
    directory: Path
    raindrops: Scoreboard
    utilization: Scoreboard
    latency: Histogram


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FakeServer]:
    """This process plays a worker: it holds the socket and a row in each scoreboard."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    inode = os.fstat(sock.fileno()).st_ino
    rd = Scoreboard(4, FIELDS, path=tmp_path / f"raindrops-{inode}")
    util = open_scoreboard(str(tmp_path / f"utilization-{inode}"), slots=4)
    edges = latency_edges(DEFAULT_LATENCY_BUCKETS)
    assert edges is not None
    hist = Histogram(edges, path=tmp_path / f"latency-{inode}")
    name = f"127.0.0.1:{sock.getsockname()[1]}"
    try:
        yield FakeServer(sock, name, tmp_path, rd, util, hist)
    finally:
        for seg in (rd, util, hist):
            seg.close()
        sock.close()


def test_a_server_is_found_named_by_its_listener_and_read_exactly(server: FakeServer) -> None:
    """calling, the workers' counters, the histogram and the listener are read as written."""
    row = server.raindrops.claim()
    row.incr_calling(3)
    row.incr_writing()
    urow = server.utilization.claim()
    urow.requests, urow.entered, urow.busy_ns = 5, 6, 2_000_000_000
    server.latency.record(3_000_000)  # 3 ms
    server.latency.record(700_000_000)  # 0.7 s
    client = socket.create_connection(server.sock.getsockname())
    accepted, _ = server.sock.accept()
    waiting = socket.create_connection(server.sock.getsockname())
    try:
        reading = Exporter(directory=str(server.directory)).read(walk=True)
    finally:
        for s in (client, accepted, waiting):
            s.close()
    (got,) = reading.servers
    assert got.server == server.name
    assert dict(got.listeners) == {server.name: ListenStats(active=1, queued=1, backlog=8)}
    assert (got.calling, got.writing, got.in_flight) == (3, 1, 1)
    assert (got.requests_total, got.busy_seconds_total) == (5, 2.0)
    assert got.worker_pids == (os.getpid(),)
    assert got.busy_pids == (os.getpid(),)
    assert got.reclaimed == 0
    assert got.latency is not None
    assert (got.latency.count, got.latency.sum_seconds) == (2, 0.703)
    assert got.latency.buckets[0] == (0.005, 1)
    assert got.latency.buckets[-1] == (float("inf"), 2)
    assert dict(got.segments) == {
        kind: str(server.directory / f"{kind}-{os.fstat(server.sock.fileno()).st_ino}")
        for kind in ("latency", "raindrops", "utilization")
    }


def test_a_dead_workers_counts_stay_in_the_sums_and_its_death_is_counted(
    server: FakeServer,
) -> None:
    """A worker gone without releasing its row: requests_total does not drop; reclaimed is 1."""
    server.utilization.claim().requests = 5
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: another worker, that dies holding its row
        try:
            row = server.utilization.claim()
            row.requests = row.entered = 7
            os.write(ready_w, b"x")
            os.read(go_r, 1)
        finally:
            os._exit(0)
    os.read(ready_r, 1)
    exporter = Exporter(directory=str(server.directory))
    assert exporter.read().servers[0].requests_total == 12
    os.write(go_w, b"x")
    os.waitpid(pid, 0)
    reading = exporter.sample()
    (got,) = reading.servers
    assert (got.requests_total, got.reclaimed) == (12, 1)
    assert got.worker_pids == (os.getpid(),)
    for fd in (ready_r, ready_w, go_r, go_w):
        os.close(fd)


def test_a_server_whose_sockets_closed_is_gone_at_the_next_read(server: FakeServer) -> None:
    """Its files stay, but no socket with the inode listens: no server is shown."""
    exporter = Exporter(directory=str(server.directory))
    assert [s.server for s in exporter.read().servers] == [server.name]
    server.sock.close()
    assert exporter.read().servers == ()


def test_servers_are_selected_by_label_or_listener_name(server: FakeServer) -> None:
    """--server keeps the servers it names; others are left out."""
    assert len(Exporter(directory=str(server.directory), servers=[server.name]).read().servers) == 1
    assert Exporter(directory=str(server.directory), servers=["127.0.0.1:1"]).read().servers == ()


def test_a_file_that_is_no_segment_is_said_and_the_rest_is_read(server: FakeServer) -> None:
    """A broken utilization file: the server is shown from its other segments, with the reason."""
    inode = os.fstat(server.sock.fileno()).st_ino
    path = server.directory / f"utilization-{inode}"
    path.unlink()
    path.write_bytes(b"not a segment")
    server.raindrops.claim().incr_calling()
    (got,) = Exporter(directory=str(server.directory)).read().servers
    assert got.calling == 1
    assert list(got.unavailable) == ["segment utilization"]
    assert got.workers == ()


def test_an_explicit_segment_is_read_by_its_header(tmp_path: Path) -> None:
    """--segment attaches to a named scoreboard whatever its file name; kind from its fields."""
    board = Scoreboard(2, FIELDS, path=tmp_path / "myapp-gauges")
    board.claim().incr_calling(2)
    try:
        (got,) = (
            Exporter(directory=str(tmp_path / "none"), segments=[str(tmp_path / "myapp-gauges")])
            .read()
            .servers
        )
        assert got.calling == 2
        assert dict(got.segments) == {"raindrops": str(tmp_path / "myapp-gauges")}
    finally:
        board.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"interval": 0}, "interval must be a finite number of seconds >= 0.05, not 0"),
        ({"history": float("nan")}, "history must be a finite number of seconds >= 0.0, not nan"),
        ({"segments": ["rel/path"]}, "segment 'rel/path' must be an absolute path"),
        (
            {"servers": "127.0.0.1:8000"},
            "servers and segments must be lists of strings, not one string",
        ),
    ],
)
def test_bad_options_name_the_value_and_what_is_allowed(
    kwargs: dict[str, object], message: str
) -> None:
    """Exporter's options are checked at construction with exact messages."""
    with pytest.raises(ConfigError) as caught:
        Exporter(**kwargs)  # type: ignore[arg-type]
    assert str(caught.value) == message


def test_history_is_bounded_and_numbered(tmp_path: Path) -> None:
    """history/interval samples are kept at most, numbered; after=N gives the newer ones."""
    exporter = Exporter(directory=str(tmp_path), interval=1.0, history=3.0)
    for _ in range(5):
        exporter.sample()
    assert [s["seq"] for s in exporter.history()] == [3, 4, 5]
    assert [s["seq"] for s in exporter.history(after=4)] == [5]
