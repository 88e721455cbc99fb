"""The default scoreboard: every worker of a server shares it, found from the server's sockets."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from process_utilization import (
    SEGMENT_ENV,
    ProcessUtilization,
    ProcessUtilizationCollector,
)
from process_utilization.asgi import ProcessUtilization as AsgiProcessUtilization
from shm_counters import SERVER_DIR_ENV

pytestmark = pytest.mark.linux

#: The client address of a local request (the table answers loopback peers).
LOOPBACK = ("127.0.0.1", 50000)


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def _call(
    mw: ProcessUtilization, path: str = "/", query: str = ""
) -> tuple[str, dict[str, str], bytes]:
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen["status"], seen["headers"] = status, dict(headers)
        return lambda data: None

    env = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": False,
    }
    body = mw(env, start_response)
    data = b"".join(body)
    close = getattr(body, "close", None)
    if close is not None:
        close()
    return seen["status"], seen["headers"], data


@pytest.fixture
def server_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The default is wanted: no $PROCESS_UTILIZATION_SEGMENT, a temp server directory."""
    monkeypatch.delenv(SEGMENT_ENV, raising=False)
    monkeypatch.setenv(SERVER_DIR_ENV, str(tmp_path))
    return tmp_path / f"raindrops-{os.geteuid()}"


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock
    finally:
        sock.close()


def _fork_worker(serve: int, hold: float = 30.0) -> tuple[int, int]:
    """Fork a worker that builds its own middleware (gunicorn without --preload), serves, waits.

    Returns its PID and the number of rows its own stats endpoint listed.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.close(r)
            mw = ProcessUtilization(hello, stats_path="/_utilization")
            for _ in range(serve):
                _call(mw)
            doc = json.loads(_call(mw, "/_utilization", "format=json")[2])
            os.write(w, str(len(doc["workers"])).encode())
            os.close(w)
            time.sleep(hold)
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    try:
        rows = int(os.read(r, 16) or b"-1")
    finally:
        os.close(r)
    return pid, rows


def test_workers_built_after_fork_share_one_table(
    server_dir: Path, listener: socket.socket
) -> None:
    """Each forked worker makes its own middleware; the table of any lists all of them."""
    pids: list[int] = []
    try:
        first, rows_first = _fork_worker(serve=2)
        pids.append(first)
        second, rows_second = _fork_worker(serve=3)
        pids.append(second)
        assert (rows_first, rows_second) == (1, 2)
        mine = ProcessUtilization(hello, stats_path="/_utilization")
        status, headers, body = _call(mine, "/_utilization", "format=json")
        doc = json.loads(body)
        assert status == "200 OK"
        assert "X-Raindrops-Unavailable" not in headers
        assert sorted((w["pid"], w["requests_total"]) for w in doc["workers"]) == sorted(
            [(first, 2), (second, 3)]
        )
        assert doc["unavailable"] == {}
        inode = os.fstat(listener.fileno()).st_ino
        assert sorted(os.listdir(server_dir)) == [f"latency-{inode}", f"utilization-{inode}"]
        assert mine.unshared is None
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def test_no_server_socket_is_said_once_and_in_every_output(
    server_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker with no server socket logs why once; JSON, header and Prometheus say so."""
    mw = ProcessUtilization(hello, stats_path="/_utilization")
    with caplog.at_level(logging.WARNING, logger="process_utilization"):
        _call(mw)
        _call(mw)
        status, headers, body = _call(mw, "/_utilization", "format=json")
    [record] = caplog.records
    reason = mw.unshared
    assert reason is not None
    assert reason.startswith("found no listening socket inherited from a server among the ")
    assert record.getMessage() == (
        f"process_utilization: {reason}; this worker keeps its figures in its own memory, so "
        "the table misses every other worker. To share them, name one segment for every "
        "worker: ProcessUtilization(app, segment='/dev/shm/NAME') or "
        "$PROCESS_UTILIZATION_SEGMENT"
    )
    assert (status, headers["X-Raindrops-Unavailable"]) == ("200 OK", "shared")
    doc = json.loads(body)
    assert (doc["unavailable"], doc["total"]["requests_total"]) == ({"shared": reason}, 2)
    text = _call(mw, "/_utilization")
    assert text[1]["X-Raindrops-Unavailable"] == "shared"
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(ProcessUtilizationCollector(mw))
    assert b"\nprocess_utilization_shared 0.0\n" in generate_latest(registry)


def test_asgi_table_says_when_it_is_one_workers_only(server_dir: Path) -> None:
    """The ASGI stats endpoint sends the same header when the table is private."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    mw = AsgiProcessUtilization(app, stats_path="/_utilization")
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def main() -> None:
        scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "client": LOOPBACK}
        await mw(scope, receive, send)
        await mw({**scope, "path": "/_utilization", "query_string": b"format=json"}, receive, send)

    asyncio.run(main())
    headers = dict(sent[2]["headers"])
    assert headers[b"x-raindrops-unavailable"] == b"shared"
    assert json.loads(sent[3]["body"])["unavailable"] == {"shared": mw.unshared}


def test_a_child_looks_again_when_its_parent_found_no_server(
    server_dir: Path, listener: socket.socket
) -> None:
    """The master imported the app and found nothing; the forked worker finds the server."""
    listener.close()  # the "master" holds no server socket yet
    mw = ProcessUtilization(hello, stats_path="/_utilization")
    assert mw.scoreboard is not None
    assert mw.unshared is not None
    with socket.socket(socket.AF_INET) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 1
            try:
                _call(mw)
                os.write(w, json.dumps([mw.unshared, sorted(os.listdir(server_dir))]).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        try:
            unshared, files = json.loads(os.read(r, 4096))
        finally:
            os.close(r)
            os.waitpid(pid, 0)
        inode = os.fstat(sock.fileno()).st_ino
        assert (unshared, files) == (None, [f"latency-{inode}", f"utilization-{inode}"])


def test_an_explicit_segment_still_opens_at_construction(server_dir: Path, tmp_path: Path) -> None:
    """segment= is opened when the middleware is built, so a bad one fails at boot."""
    path = tmp_path / "board"
    mw = ProcessUtilization(hello, segment=str(path))
    assert path.exists()
    assert (tmp_path / "board.latency").exists()
    assert mw.unshared is None
    assert not server_dir.exists()
