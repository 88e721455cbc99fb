"""The raindrops endpoint under real servers: held requests, streams, queues, SIGKILL.

Each test binds its own listener, starts a server on it running
``apps/raindrops_app.py``, holds requests inside the app (the app waits for
a gate file the test creates), and checks ``/_raindrops`` against what the
test itself did.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import ASGI_KINDS, Server, bind_tcp, bind_unix, launch, listener_name, wait_until

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


@contextlib.contextmanager
def _segment_cleanup(sock: socket.socket) -> Iterator[str]:
    """The default segment path of a server on ``sock``; removed afterwards."""
    path = f"/dev/shm/raindrops-{os.getuid()}-{os.fstat(sock.fileno()).st_ino}"
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


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
    wait_until(lambda: _stats(server)["calling"] == 0)
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
    with (
        bind_tcp("127.0.0.1") as sock,
        bind_tcp("127.0.0.1") as extra,
        _segment_cleanup(sock) as segment,
    ):
        env = {
            "RD_GATE_DIR": str(tmp_path),
            "RD_LISTENERS": f"{listener_name(sock)},{listener_name(extra)}",
        }
        with launch(kind, _app(kind), sock, workers=workers, threads=4, env=env) as server:
            _exercise(server, tmp_path, held, extra)
            # Every worker shares the default segment named after the listener.
            assert os.path.exists(segment)


def test_preloaded_app_built_before_fork(tmp_path: Path) -> None:
    """With gunicorn --preload (middleware built in the master) every worker still adds up."""
    with bind_tcp("127.0.0.1") as sock, _segment_cleanup(sock) as segment:
        env = {"RD_GATE_DIR": str(tmp_path)}
        with launch(
            "gunicorn-sync", "raindrops_app:wsgi", sock, workers=4, extra=["--preload"], env=env
        ) as server:
            _exercise(server, tmp_path, 3, None)
            assert os.path.exists(segment)


@pytest.mark.parametrize("kind", ["gunicorn-sync", "uvicorn", "hypercorn"])
def test_listeners_are_discovered_from_inherited_sockets(kind: str, tmp_path: Path) -> None:
    """With no listener named, each worker reports the socket it inherited from the server."""
    with bind_tcp("127.0.0.1") as sock, _segment_cleanup(sock):
        env = {"RD_GATE_DIR": str(tmp_path)}
        with launch(kind, _app(kind), sock, workers=2, env=env) as server:
            wait_until(lambda: _gauges(server) == (0, 0, 1, 0))
            assert len(_stats(server)) == 4  # exactly the inherited listener's two lines


def test_unix_socket_bind(tmp_path: Path) -> None:
    """On a Unix-socket bind the endpoint counts requests and the socket's queue."""
    gates = tmp_path / "gates"
    gates.mkdir()
    with bind_unix(str(tmp_path / "app.sock")) as sock:
        segment = str(tmp_path / "board")
        env = {"RD_GATE_DIR": str(gates), "RAINDROPS_SEGMENT": segment}
        with launch("gunicorn-sync", "raindrops_app:wsgi", sock, workers=3, env=env) as server:
            assert server.name == str(tmp_path / "app.sock")
            _exercise(server, gates, 2, None)
            assert os.path.exists(segment)


def test_sigkilled_worker_stops_counting(tmp_path: Path) -> None:
    """SIGKILL a worker holding a request: within about a second calling drops by one."""
    with bind_tcp("127.0.0.1") as sock, _segment_cleanup(sock):
        env = {"RD_GATE_DIR": str(tmp_path)}
        with launch("gunicorn-sync", "raindrops_app:wsgi", sock, workers=4, env=env) as server:
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
    with bind_tcp("127.0.0.1") as sock, _segment_cleanup(sock):
        env = {"RD_GATE_DIR": str(tmp_path)}
        with launch("gunicorn-sync", "raindrops_app:wsgi", sock, workers=2, env=env) as server:
            status, _, body = server.get("/file")
            assert (status, body) == (200, b"bytes sent by sendfile\n")
            wait_until(lambda: _stats(server)["writing"] == 0)
            assert _stats(server)["calling"] == 0
