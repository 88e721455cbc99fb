"""Watcher and LastDataRecv under real servers: queues the test built, tails, one sample each.

Also: a tail that never writes ends when its client leaves (gunicorn gthread),
every worker reports the same exact count (named and default segments), and
LastDataRecv under the documented TCP_DEFER_ACCEPT gunicorn hook.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from servers import Server, bind_tcp, free_port, launch, listener_name, tcp, wait_until

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


TAIL_LINE = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \S+ +\d+ +\d+$", re.M)


def read_tail(
    server: Server, path: str, lines: int, timeout: float = 10.0
) -> tuple[bytes, list[str]]:
    """Open a tail stream, read ``lines`` body lines, then drop the connection."""
    conn = server.connect(timeout)
    try:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        data = b""
        deadline = time.monotonic() + timeout
        while len(TAIL_LINE.findall(data)) < lines and time.monotonic() < deadline:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        assert data.startswith(b"HTTP/1.1 200"), data[:200]
        head = data.split(b"\r\n\r\n", 1)[0]
        return head, [m.decode() for m in TAIL_LINE.findall(data)][:lines]
    finally:
        conn.close()


def tail_streams(server: Server) -> int:
    """How many tail streams the (single) worker has open, from /index.json."""
    return int(json.loads(server.get("/index.json")[2])["tail_streams"])


@pytest.mark.parametrize(
    ("kind", "app"),
    [("gunicorn-gthread", "watcher_apps:wsgi_watcher"), ("uvicorn", "watcher_apps:asgi_watcher")],
)
def test_watcher_sees_the_queue_and_tails_it(kind: str, app: str) -> None:
    """queued/<L>.txt and the tail stream report the connections the test holds queued."""
    # The server's own port is picked now, so the Watcher can be told to watch it.
    bind = tcp("127.0.0.1", free_port())
    with held_queue(HELD) as held:
        name = listener_name(held)
        env = {"WATCH_LISTENERS": f"{name},{bind.name}", "WATCH_DELAY": "0.1"}
        # One worker, so every request (and the tail stream) meets the same sampler;
        # uvicorn runs a single worker in its own process, with no child to wait for.
        single = kind == "uvicorn"
        with launch(kind, app, bind, workers=1, env=env, wait_workers=not single) as server:
            url = quote(name, safe="")

            def current() -> str | None:
                status, headers, _ = server.get(f"/queued/{url}.txt")
                return headers.get("x-current") if status == 200 else None

            wait_until(lambda: current() == str(HELD), timeout=10)
            status, headers, body = server.get(f"/queued/{url}.txt")
            assert (status, headers["x-max"], headers["x-current"]) == (200, "3", "3")
            assert headers["content-type"] == "text/plain"
            assert int(headers["x-count"]) >= 1
            assert body.startswith(b"value |")
            assert re.search(rb"^    2 \|@+ +\| +\d+$", body, re.M), body
            _, aheaders, abody = server.get(f"/active/{url}.txt")
            assert (aheaders["x-max"], abody) == ("0", b"Empty histogram")
            assert aheaders["x-outliers-low"] == aheaders["x-count"]

            head, lines = read_tail(server, f"/tail/{url}.txt?queued_min={HELD}", 2)
            assert [line.split()[1:] for line in lines] == [[name, "0", "3"]] * 2
            assert b"\r\ncache-control: no-transform\r\n" in head.lower()
            wait_until(lambda: tail_streams(server) == 0, timeout=10)

            status, headers, _ = server.request("POST", f"/reset/{url}")
            assert (status, urlsplit(headers["location"]).path) == (302, "/")
            status, _, _ = server.get("/queued/10.9.9.9%3A1.txt")
            assert status == 404


def test_gthread_tail_ends_when_a_silent_client_leaves() -> None:
    """Under gunicorn gthread a tail whose threshold is never met ends once its client left.

    Nothing is ever written to it (``queued_min=999``), so gunicorn cannot
    notice the disconnect by a failed write; the Watcher's probe of
    ``gunicorn.socket`` does, and the stream's subscription goes away (no
    ``tail_max_seconds`` here).
    """
    bind = tcp("127.0.0.1", free_port())
    env = {
        "WATCH_LISTENERS": bind.name,
        "WATCH_DELAY": "0.1",
        "WATCH_TAIL_MAX": "none",
    }
    with launch("gunicorn-gthread", "watcher_apps:wsgi_watcher", bind, workers=1, env=env) as srv:
        url = quote(bind.name, safe="")
        conn = srv.connect(10.0)
        try:
            conn.sendall(f"GET /tail/{url}.txt?queued_min=999 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head and (chunk := conn.recv(4096)):
                head += chunk
            assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
            wait_until(lambda: tail_streams(srv) == 1, timeout=10)
        finally:
            conn.close()
        wait_until(lambda: tail_streams(srv) == 0, timeout=10)
        assert srv.proc.poll() is None


def request_pair(server: Server, path: str) -> list[tuple[int, dict[str, str]]]:
    """Two requests on two connections at once: each sends half its head, then the rest.

    A sync worker serves one connection at a time, so while the first
    connection's worker waits for the rest of its head, the second
    connection is left to the other worker.  Returns (pid, headers) of each.
    """
    conns = [server.connect(10.0), server.connect(10.0)]
    try:
        for conn in conns:
            conn.sendall(f"GET {path} HTTP/1.0\r\n".encode())
        time.sleep(0.2)
        for conn in conns:
            conn.sendall(b"\r\n")
        out = []
        for conn in conns:
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
            head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            assert head[0].endswith(" 200 OK"), data[:300]
            headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
            out.append((int(headers["x-pid"]), headers))
        return out
    finally:
        for conn in conns:
            conn.close()


def until_every_worker(server: Server, path: str, workers: int) -> list[dict[str, str]]:
    """Request ``path`` in pairs until each of ``workers`` workers answered (bounded)."""
    seen: set[int] = set()
    answers: list[dict[str, str]] = []
    for _ in range(50):
        for pid, headers in request_pair(server, path):
            seen.add(pid)
            answers.append(headers)
        if len(seen) == workers:
            return answers
    raise AssertionError(f"only workers {sorted(seen)} answered {len(answers)} requests")


@pytest.mark.parametrize("segment", ["named", "default"])
@pytest.mark.parametrize(
    ("kind", "app"),
    [("gunicorn-sync", "watcher_apps:wsgi_ldr"), ("uvicorn", "watcher_apps:asgi_ldr")],
)
def test_last_data_recv_one_sample_per_request_across_workers(
    kind: str, app: str, segment: str, tmp_path: Path
) -> None:
    """Requests served by both workers give exactly their number in X-Count from every worker.

    ``named``: ``LDR_SEGMENT`` given; ``default``: nothing given, so forked
    (gunicorn) or spawned (uvicorn) workers must agree on the segment named
    after the server's socket (in a server directory under ``tmp_path``).
    """
    ready = "/raindrops/last_data_recv"
    shm = tmp_path / "shm"
    shm.mkdir()
    env = {"RAINDROPS_SHM_DIR": str(shm)}
    env["LDR_SEGMENT"] = str(tmp_path / "ldr.seg") if segment == "named" else ""
    with launch(kind, app, tcp(), workers=2, ready_path=ready, env=env) as srv:
        before = int(srv.get(ready)[1]["x-count"])
        served = until_every_worker(srv, "/", 2)
        reports = until_every_worker(srv, ready, 2)
        assert {h["x-count"] for h in reports} == {str(before + len(served))}
        assert all("x-raindrops-unavailable" not in h for h in reports)
        if segment == "default":
            files = os.listdir(shm / f"raindrops-{os.geteuid()}")
            assert [f.rsplit("-", 1)[0] for f in files] == ["ldr"], files


DEFER_CONF = """\
from raindrops_wsgi import set_defer_accept


def when_ready(server):
    for listener in server.LISTENERS:
        set_defer_accept(listener.sock)
"""


def queue_of(sock: socket.socket) -> tuple[int, int]:
    """(active, queued) of our listener, from the kernel."""
    from linux_inet_diag import tcp_listener_stats

    stats = tcp_listener_stats([listener_name(sock)])[listener_name(sock)]
    return stats.active, stats.queued


def read_all(conn: socket.socket) -> bytes:
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    return data


def test_last_data_recv_under_tcp_defer_accept(tmp_path: Path) -> None:
    """With the documented gunicorn hook, a client that waits before sending is handled right.

    The hook sets TCP_DEFER_ACCEPT on the listener (read back with
    getsockopt).  The only sync worker is held busy by connection A (half a
    request head).  B connects and waits 300 ms: deferred, it is in no
    accept queue (queued 0, active 1: only A).  Once B sends its request the
    kernel queues it (queued 1).  The test waits 200 ms more, then lets A
    finish (and closes it: gunicorn lingers on a closing connection until
    its client is gone); the worker then accepts and serves B.  tcpi_last_data_recv is
    counted from the arrival of B's last data, so the kernel guarantees for
    B's sample: at least the time from seeing B queued to releasing A, at
    most the time from before B's send to B's answer (plus one jiffy,
    10 ms at HZ=100, either way); the 300 ms before B sent are not in it.
    A's sample is at most the time from its release to B's answer (+10 ms).
    """
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(DEFER_CONF)
    ready = "/raindrops/last_data_recv"
    env = {"LDR_SEGMENT": str(tmp_path / "ldr.seg")}
    jiffy = 10.0
    with bind_tcp("127.0.0.1") as sock:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) == 0
        extra = ["-c", str(conf)]
        with launch(
            "gunicorn-sync", "watcher_apps:wsgi_ldr", sock, workers=1, extra=extra,
            ready_path=ready, env=env,
        ) as srv:  # fmt: skip
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) > 0
            assert srv.get(ready)[1]["x-count"] == "0"
            a = srv.connect(10.0)
            b = None
            try:
                a.sendall(b"GET /a HTTP/1.0\r\n")
                wait_until(lambda: queue_of(sock) == (1, 0), timeout=10)
                b = srv.connect(10.0)
                time.sleep(0.3)
                assert queue_of(sock) == (1, 0)  # B connected, sent nothing: deferred
                sent = time.monotonic()
                b.sendall(b"GET /b HTTP/1.0\r\n\r\n")
                wait_until(lambda: queue_of(sock) == (1, 1), timeout=10)
                queued = time.monotonic()
                time.sleep(0.2)
                released = time.monotonic()
                a.sendall(b"\r\n")
                assert read_all(a).split(b"\r\n", 1)[0].endswith(b" 200 OK")
                a.close()  # gunicorn lingers on a closing connection until its client is gone
                assert read_all(b).split(b"\r\n", 1)[0].endswith(b" 200 OK")
                done = time.monotonic()
            finally:
                a.close()
                if b is not None:
                    b.close()
            _, headers, _ = srv.get(ready)
    ms = 1000.0
    assert headers["x-count"] == "2"
    b_low = (released - queued) * ms - jiffy
    b_high = (done - sent) * ms + jiffy
    a_high = (done - released) * ms + jiffy
    low, high = int(headers["x-min"]), int(headers["x-max"])
    # One of the two samples is B's, the other A's.
    assert (b_low <= high <= b_high and low <= a_high) or (
        b_low <= low <= b_high and high <= a_high
    ), (
        low,
        high,
        b_low,
        b_high,
        a_high,
    )
