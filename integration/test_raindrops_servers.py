"""The raindrops endpoint under real servers: held requests, streams, queues, SIGKILL.

Each test starts a server with its own command line binding a loopback
port (or a Unix path) and running ``apps/raindrops_app.py``, holds requests
inside the app (the app waits for a gate file the test creates), and checks
``/_raindrops`` against what the test itself did. No segment is configured
unless a test says so: the workers find their server's by themselves (in a
server directory under the test's ``tmp_path``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from servers import (
    ASGI_KINDS,
    Server,
    bind_tcp,
    free_port,
    launch,
    listener_name,
    tcp,
    unix,
    wait_until,
)

pytestmark = [pytest.mark.linux, pytest.mark.timeout(120)]

# kind -> (workers, requests held at once)
KINDS = {
    "gunicorn-sync": (4, 3),
    "gunicorn-gthread": (2, 3),  # fewer than the 4 threads of any one worker
    "uvicorn": (2, 4),
    "gunicorn-uvicorn": (2, 4),
    "hypercorn": (2, 4),
}


def _app(kind: str) -> str:
    return "raindrops_app:asgi" if kind in ASGI_KINDS else "raindrops_app:wsgi"


def _stats(server: Server) -> dict[str, int]:
    status, headers, body = server.get("/_raindrops")
    assert (status, headers["content-type"]) == (200, "text/plain")
    assert headers["content-length"] == str(len(body))
    values = {}
    for line in body.decode().splitlines():
        key, _, value = line.rpartition(": ")
        values[key] = int(value)
    return values


def _gauges(server: Server) -> tuple[int, int, int, int]:
    """``(calling, writing, active, queued)`` of the server's own listener."""
    stats = _stats(server)
    name = server.name
    return stats["calling"], stats["writing"], stats[f"{name} active"], stats[f"{name} queued"]


def _send(server: Server, target: str) -> socket.socket:
    conn = server.connect(timeout=20)
    conn.sendall(f"GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    return conn


def _read_all(conn: socket.socket) -> bytes:
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    conn.close()
    return data


def _read_until(conn: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = conn.recv(65536)
        assert chunk, f"connection closed before {marker!r}: {data!r}"
        data += chunk
    return data


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Gates in ``tmp_path``; the server's segment directory under it, not in /dev/shm."""
    shm = tmp_path / "shm"
    shm.mkdir(exist_ok=True)
    return {"RD_GATE_DIR": str(tmp_path), "RAINDROPS_SHM_DIR": str(shm), **extra}


def _segments(tmp_path: Path) -> list[str]:
    """The files in the server's segment directory."""
    return sorted(os.listdir(tmp_path / "shm" / f"raindrops-{os.geteuid()}"))


def _wait_for(read: Callable[[], object], expected: object, timeout: float = 10.0) -> None:
    """Poll ``read()`` until it equals ``expected``; fail showing its last value."""
    deadline = time.monotonic() + timeout
    value = read()
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.02)
        value = read()
    assert value == expected


def _exercise(server: Server, gates: Path, held: int, extra: socket.socket | None) -> None:
    """Hold, stream, queue and release, checking every gauge against what we did."""
    # 1. `held` requests inside the app at once.
    conns = [_send(server, f"/hold?gate=hold&id={i}") for i in range(held)]
    try:
        wait_until(lambda: len(list(gates.glob("pid-*"))) == held, timeout=15)
        # The held connections plus the stats request's own are accepted.
        wait_until(lambda: _gauges(server) == (held, 0, held + 1, 0))
        # 2. Connections to a listener nobody accepts on are queued.
        if extra is not None:
            extra_name = listener_name(extra)
            clients = [socket.create_connection(extra.getsockname(), timeout=5) for _ in range(3)]
            try:
                wait_until(lambda: _stats(server)[f"{extra_name} queued"] == 3)
                assert _stats(server)[f"{extra_name} active"] == 0
            finally:
                for c in clients:
                    c.close()
    finally:
        (gates / "hold").touch()
        bodies = [_read_all(c) for c in conns]
    assert all(b.endswith(b"released\n") for b in bodies), bodies
    # The client can read a whole body (and EOF) a moment before the app's
    # last send() returns in the worker (hypercorn closes the connection on
    # the body's end event): wait for writing to settle too.
    wait_until(lambda: _gauges(server)[:2] == (0, 0))
    # 3. A streaming response is `writing` until its last chunk.
    stream = _send(server, "/stream?gate=stream")
    try:
        _read_until(stream, b"first\n")
        stats = _stats(server)
        assert (stats["calling"], stats["writing"]) == (0, 1)
    finally:
        (gates / "stream").touch()
        rest = _read_all(stream)
    assert b"last\n" in rest

    # 4. Everything back to 0.
    # (The stats request's own connection is the only one left.)
    wait_until(lambda: _gauges(server) == (0, 0, 1, 0))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_gauges_and_queues_under_every_server(kind: str, tmp_path: Path) -> None:
    """calling, writing, active and queued match the requests and connections the test made."""
    workers, held = KINDS[kind]
    with bind_tcp("127.0.0.1") as extra:
        # RD_LISTENERS names the server's own listener (its port picked now, so
        # it can be named) and one nobody accepts on.
        bind = tcp("127.0.0.1", free_port())
        env = _env(tmp_path, RD_LISTENERS=f"{bind.name},{listener_name(extra)}")
        with launch(kind, _app(kind), bind, workers=workers, threads=4, env=env) as server:
            _exercise(server, tmp_path, held, extra)
            assert [n.rsplit("-", 1)[0] for n in _segments(tmp_path)] == ["raindrops"]


def test_preloaded_app_built_before_fork(tmp_path: Path) -> None:
    """With gunicorn --preload (middleware built in the master) every worker still adds up."""
    env = _env(tmp_path)
    with launch(
        "gunicorn-sync", "raindrops_app:wsgi", tcp(), workers=4, extra=["--preload"], env=env
    ) as server:
        _exercise(server, tmp_path, 3, None)
        assert [n.rsplit("-", 1)[0] for n in _segments(tmp_path)] == ["raindrops"]


@pytest.mark.parametrize("kind", ["gunicorn-sync", "uvicorn", "hypercorn"])
def test_listeners_are_discovered_from_inherited_sockets(kind: str, tmp_path: Path) -> None:
    """With no listener named, each worker reports the socket it inherited from the server."""
    with launch(kind, _app(kind), tcp(), workers=2, env=_env(tmp_path)) as server:
        wait_until(lambda: _gauges(server) == (0, 0, 1, 0))
        assert len(_stats(server)) == 4  # exactly the inherited listener's two lines


def test_unix_socket_bind(tmp_path: Path) -> None:
    """On a Unix-socket bind the endpoint counts requests and the socket's queue."""
    gates = tmp_path / "gates"
    gates.mkdir()
    segment = str(tmp_path / "board")
    env = {"RD_GATE_DIR": str(gates), "RAINDROPS_SEGMENT": segment}
    bind = unix(tmp_path / "app.sock")
    with launch("gunicorn-sync", "raindrops_app:wsgi", bind, workers=3, env=env) as server:
        assert server.name == str(tmp_path / "app.sock")
        _exercise(server, gates, 2, None)
        assert os.path.exists(segment)


def test_sigkilled_worker_stops_counting(tmp_path: Path) -> None:
    """SIGKILL a worker holding a request: within about a second calling drops by one."""
    env = _env(tmp_path)
    with launch("gunicorn-sync", "raindrops_app:wsgi", tcp(), workers=4, env=env) as server:
        conns = [_send(server, f"/hold?gate=hold&id={i}") for i in range(3)]
        try:
            wait_until(lambda: len(list(tmp_path.glob("pid-*"))) == 3, timeout=15)
            assert _stats(server)["calling"] == 3
            victim = int((tmp_path / "pid-0").read_text())
            assert victim in server.worker_pids()
            os.kill(victim, signal.SIGKILL)
            wait_until(lambda: _stats(server)["calling"] == 2, timeout=1.5)
        finally:
            (tmp_path / "hold").touch()
            for c in conns:
                with contextlib.suppress(OSError):
                    _read_all(c)
        wait_until(lambda: _stats(server)["calling"] == 0)


def test_file_wrapper_keeps_gunicorns_sendfile_path(tmp_path: Path) -> None:
    """A wsgi.file_wrapper body is sent by sendfile() (the file's bytes, not read()'s)."""
    env = _env(tmp_path)
    with launch("gunicorn-sync", "raindrops_app:wsgi", tcp(), workers=2, env=env) as server:
        status, _, body = server.get("/file")
        assert (status, body) == (200, b"bytes sent by sendfile\n")
        wait_until(lambda: _stats(server)["writing"] == 0)
        assert _stats(server)["calling"] == 0


def test_queued_while_every_sync_worker_is_busy(tmp_path: Path) -> None:
    """With every sync worker holding a request, K more connections are exactly ``queued: K``.

    A busy sync server cannot answer its own endpoint: each of its workers
    is inside the app, so a request for ``/_raindrops`` would itself wait in
    the queue.  The stats are therefore read through a second gunicorn
    dedicated to them, on its own listener, sharing the busy server's
    counters (the same ``RAINDROPS_SEGMENT``) and reporting both listeners
    by name (their ports picked before the start, so they can be named).
    Why the numbers are exact: every held request is inside the app (each
    worker wrote its pid file, and each worker is a different process), a
    sync worker accepts nothing while it holds a request, so
    each of the K connections opened afterwards stays in the busy listener's
    accept queue until the test releases the workers; the held connections
    are the busy listener's only accepted ones; and the stats request's own
    connection is the stats listener's only one.  So ``active`` sums to the
    held connections plus the stats connection, split by listener.
    """
    workers, waiting = 3, 4
    gates = tmp_path / "gates"
    gates.mkdir()
    busy_bind, stats_bind = tcp("127.0.0.1", free_port()), tcp("127.0.0.1", free_port())
    busy_name, stats_name = busy_bind.name, stats_bind.name
    env = {
        "RD_GATE_DIR": str(gates),
        "RAINDROPS_SEGMENT": str(tmp_path / "board"),
        "RD_LISTENERS": f"{busy_name},{stats_name}",
    }
    app = "raindrops_app:wsgi"
    with (
        launch("gunicorn-sync", app, busy_bind, workers=workers, env=env) as busy,
        launch("gunicorn-sync", app, stats_bind, workers=1, env=env) as stats,
    ):

        def gauges(calling: int, busy_active: int, queued: int) -> dict[str, int]:
            return {
                "calling": calling,
                "writing": 0,
                f"{busy_name} active": busy_active,
                f"{busy_name} queued": queued,
                f"{stats_name} active": 1,  # the stats request's own connection
                f"{stats_name} queued": 0,
            }

        _wait_for(lambda: _stats(stats), gauges(0, 0, 0))
        held = [_send(busy, f"/hold?gate=hold&id={i}") for i in range(workers)]
        waiting_conns: list[socket.socket] = []
        try:
            wait_until(lambda: len(list(gates.glob("pid-*"))) == workers, timeout=15)
            pids = {int(p.read_text()) for p in gates.glob("pid-*")}
            assert pids == set(busy.worker_pids())
            waiting_conns = [busy.connect(timeout=20) for _ in range(waiting)]
            _wait_for(lambda: _stats(stats), gauges(workers, workers, waiting))
        finally:
            for conn in waiting_conns:
                conn.close()
            (gates / "hold").touch()
            bodies = [_read_all(c) for c in held]
        assert all(b.endswith(b"released\n") for b in bodies), bodies
        _wait_for(lambda: _stats(stats), gauges(0, 0, 0))


def test_a_server_start_sweeps_stale_default_segments(tmp_path: Path) -> None:
    """The worker creating a new default segment removes an old one named after a closed socket."""
    with socket.socket() as gone:
        gone.bind(("127.0.0.1", 0))
        gone.listen(1)
        inode = os.fstat(gone.fileno()).st_ino
    env = _env(tmp_path)
    directory = tmp_path / "shm" / f"raindrops-{os.geteuid()}"
    directory.mkdir(mode=0o700)
    stale = directory / f"raindrops-{inode}"
    stale.write_bytes(b"left by a server that stopped")
    os.utime(stale, (0, 0))  # long ago: past the sweep's grace
    with launch("gunicorn-sync", "raindrops_app:wsgi", tcp(), workers=2, env=env) as server:
        wait_until(lambda: not stale.exists(), timeout=30)
        assert [n.rsplit("-", 1)[0] for n in _segments(tmp_path)] == ["raindrops"]
        assert _stats(server)["calling"] == 0
