"""Watcher and LastDataRecv under real servers: queues the test built, tails, one sample each."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from urllib.parse import quote, urlsplit

import pytest
from servers import Server, bind_tcp, launch, listener_name, wait_until

pytestmark = [pytest.mark.linux, pytest.mark.slow]

HELD = 3


@contextlib.contextmanager
def held_queue(n: int) -> Iterator[socket.socket]:
    """A listener of our own with ``n`` connections waiting in its queue, never accepted."""
    with bind_tcp("127.0.0.1") as held, contextlib.ExitStack() as stack:
        for _ in range(n):
            client = stack.enter_context(socket.create_connection(held.getsockname(), timeout=5))
            client.sendall(b"GET / HTTP/1.0\r\n\r\n")
        yield held


def read_tail(server: Server, path: str, lines: int, timeout: float = 10.0) -> list[str]:
    """Open a tail stream, read ``lines`` body lines, then drop the connection."""
    conn = server.connect(timeout)
    try:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        data = b""
        deadline = time.monotonic() + timeout
        pattern = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \S+ \d+ \d+$", re.M)
        while len(pattern.findall(data)) < lines and time.monotonic() < deadline:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        assert data.startswith(b"HTTP/1.1 200"), data[:200]
        return [m.decode() for m in pattern.findall(data)][:lines]
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("kind", "app"),
    [("gunicorn-gthread", "watcher_apps:wsgi_watcher"), ("uvicorn", "watcher_apps:asgi_watcher")],
)
def test_watcher_sees_the_queue_and_tails_it(kind: str, app: str) -> None:
    """queued/<L>.txt and the tail stream report the connections the test holds queued."""
    with held_queue(HELD) as held, bind_tcp("127.0.0.1") as sock:
        name = listener_name(held)
        env = {"WATCH_LISTENERS": f"{name},{listener_name(sock)}", "WATCH_DELAY": "0.1"}
        # One worker, so every request (and the tail stream) meets the same sampler;
        # uvicorn runs a single worker in its own process, with no child to wait for.
        single = kind == "uvicorn"
        with launch(kind, app, sock, workers=1, env=env, wait_workers=not single) as server:
            url = quote(name, safe="")

            def current() -> str | None:
                status, headers, _ = server.get(f"/queued/{url}.txt")
                return headers.get("x-current") if status == 200 else None

            wait_until(lambda: current() == str(HELD), timeout=10)
            status, headers, body = server.get(f"/queued/{url}.txt")
            assert (status, headers["x-max"], headers["x-current"]) == (200, "3", "3")
            assert int(headers["x-count"]) >= 1
            assert body.startswith(b"value |")
            assert re.search(rb"^    2 \|@+ +\d+$", body, re.M), body
            _, aheaders, _ = server.get(f"/active/{url}.txt")
            assert aheaders["x-max"] == "0"

            lines = read_tail(server, f"/tail/{url}.txt?queued_min={HELD}", 2)
            assert [line.split()[1:] for line in lines] == [[name, "0", "3"]] * 2

            def streams() -> int:
                return int(json.loads(server.get("/index.json")[2])["tail_streams"])

            wait_until(lambda: streams() == 0, timeout=10)

            status, headers, _ = server.request("POST", f"/reset/{url}")
            assert (status, urlsplit(headers["location"]).path) == (303, "/")
            status, _, _ = server.get("/queued/10.9.9.9%3A1.txt")
            assert status == 404


@pytest.mark.parametrize(
    ("kind", "app"),
    [("gunicorn-sync", "watcher_apps:wsgi_ldr"), ("uvicorn", "watcher_apps:asgi_ldr")],
)
def test_last_data_recv_one_sample_per_request_across_workers(
    kind: str, app: str, tmp_path: object
) -> None:
    """N requests spread over two workers give X-Count N in every worker's report."""
    ready = "/raindrops/last_data_recv"
    env = {"LDR_SEGMENT": os.path.join(str(tmp_path), "ldr.seg")}
    with (
        bind_tcp("127.0.0.1") as sock,
        launch(kind, app, sock, workers=2, ready_path=ready, env=env) as srv,
    ):
        _, headers, _ = srv.get("/raindrops/last_data_recv")
        before = int(headers["x-count"])
        n = 20
        for _ in range(n):
            assert srv.get("/")[0] == 200
        counts = reports_from_each_worker(srv) if kind == "gunicorn-sync" else set()
        counts |= {srv.get("/raindrops/last_data_recv")[1]["x-count"] for _ in range(6)}
        assert counts == {str(before + n)}


def reports_from_each_worker(server: Server) -> set[str]:
    """X-Count as answered by each of two sync workers (each holds one of two connections)."""
    head = b"GET /raindrops/last_data_recv HTTP/1.0\r\n"
    conns = [server.connect(10.0), server.connect(10.0)]
    try:
        for conn in conns:
            conn.sendall(head)  # incomplete: the worker that accepted it waits for the rest
        time.sleep(0.3)
        for conn in conns:
            conn.sendall(b"\r\n")
        out = set()
        for conn in conns:
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
            match = re.search(rb"(?im)^x-count: (\d+)\r$", data)
            assert match is not None, data[:300]
            out.add(match.group(1).decode())
        return out
    finally:
        for conn in conns:
            conn.close()
