"""The WSGI Watcher and LastDataRecv apps, driven with WebOb's Request.blank (no server)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from linux_inet_diag import TcpInfo
from raindrops_core.watcher import histogram_text, http_date
from raindrops_wsgi.watcher import LastDataRecv, Watcher
from webob import Request

L = "127.0.0.1:8080"


def blank(path: str, **kw: Any) -> Request:
    """``Request.blank`` from a loopback client (the Watcher answers no one else by default)."""
    kw.setdefault("remote_addr", "127.0.0.1")
    return Request.blank(path, **kw)


@dataclass(frozen=True)
class Stats:
    active: int
    queued: int


class Feed:
    """A fetch returning whatever the test set last, counting calls."""

    def __init__(self, values: Mapping[str, tuple[int, int]]) -> None:
        self.values = dict(values)
        self.calls = 0

    def __call__(self, names: Sequence[str] | None) -> Mapping[str, Stats]:
        self.calls += 1
        return {k: Stats(*v) for k, v in self.values.items()}


@pytest.fixture
def watcher() -> Iterator[Watcher]:
    app = Watcher([L], delay=3600, fetch=Feed({L: (1, 2)}), tail_max_seconds=2)
    try:
        yield app
    finally:
        app.close()


def test_index_starts_one_sampler(watcher: Watcher) -> None:
    """The first request starts the sampler once; GET / lists the listener's current counts."""
    for _ in range(3):
        resp = blank("/").get_response(watcher)
    assert (resp.status_int, resp.headers["Content-Type"]) == (200, "text/html")
    assert '<a href="/active/127.0.0.1%3A8080.html">1</a>' in resp.text
    assert '<a href="/queued/127.0.0.1%3A8080.html">2</a>' in resp.text
    assert watcher.engine._fetch.calls == 1  # type: ignore[attr-defined]
    assert sum(t.name == "raindrops-watcher" for t in threading.enumerate()) == 1


def test_queued_txt_headers(watcher: Watcher) -> None:
    """GET /queued/<escaped L>.txt answers the X-* headers and the text histogram."""
    blank("/").get_response(watcher)
    watcher.engine.record({L: Stats(0, 6)})
    resp = blank("/queued/127.0.0.1%3A8080.txt").get_response(watcher)
    assert (resp.status_int, resp.headers["Content-Type"]) == (200, "text/plain")
    assert resp.headers["X-Count"] == "2"
    assert (resp.headers["X-Min"], resp.headers["X-Max"], resp.headers["X-Mean"]) == (
        "2", "6", "4.0",
    )  # fmt: skip
    assert resp.headers["X-Std-Dev"] == "2.8284271247461903"  # Ruby: agg.std_dev.to_s
    assert resp.headers["X-Current"] == "6"
    assert resp.headers["Content-Length"] == str(len(resp.body))
    assert resp.body == histogram_text([(2, 4, 1), (4, 8, 1)]).encode()
    assert resp.headers["Expires"] == http_date(watcher.engine.next_sample_at())
    assert resp.headers["X-Last-Reset"] == http_date(watcher.engine.report(L).queued.last_reset)  # type: ignore[union-attr]


def test_head_has_headers_no_body(watcher: Watcher) -> None:
    """HEAD answers GET's status and headers with an empty body."""
    get = blank("/active/127.0.0.1%3A8080.html").get_response(watcher)
    head = blank("/active/127.0.0.1%3A8080.html", method="HEAD").get_response(watcher)
    assert (head.status_int, head.body) == (200, b"")
    assert head.headers["Content-Length"] == str(len(get.body))
    assert head.headers["X-Count"] == get.headers["X-Count"]


def test_json_variant(watcher: Watcher) -> None:
    """GET /active/<L>.json answers the statistics as JSON."""
    resp = blank("/active/127.0.0.1%3A8080.json").get_response(watcher)
    doc = json.loads(resp.body)
    assert (resp.content_type, doc["count"], doc["current"]) == ("application/json", 1, 1)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/queued/10.0.0.9%3A1.txt", 404),
        ("GET", "/queued/%ff%fe.txt", 404),
        ("GET", "/elsewhere", 404),
        ("GET", "/reset/127.0.0.1%3A8080", 404),
        ("PUT", "/", 405),
    ],
)
def test_errors(watcher: Watcher, method: str, path: str, status: int) -> None:
    """Unknown or malformed names are 404 and methods other than GET/HEAD/POST 405, never 500."""
    resp = blank(path, method=method).get_response(watcher)
    assert resp.status_int == status
    assert resp.headers.get("Allow") == ("GET, HEAD, POST" if status == 405 else None)


def test_reset_redirects_under_prefix(watcher: Watcher) -> None:
    """POST /reset/<L> under a mount point clears the listener, awaits a round, 302s back."""
    blank("/").get_response(watcher)
    req = blank("/mon/reset/127.0.0.1%3A8080", method="POST")
    req.script_name, req.path_info = "/mon", "/reset/127.0.0.1:8080"
    feeder = threading.Timer(0.05, watcher.engine.record, ({L: Stats(0, 9)},))
    feeder.start()
    resp = req.get_response(watcher)
    feeder.join()
    assert (resp.status_int, resp.headers["Location"]) == (302, "http://localhost/mon/")
    assert resp.body == b"Redirecting to /mon/"
    report = watcher.engine.report(L)
    assert report is not None
    assert (report.queued.count, report.queued.max) == (1, 9)


def test_tail_streams_lines_and_closes(watcher: Watcher) -> None:
    """The tail body yields a line per qualifying sample; closing it drops the subscription."""
    blank("/").get_response(watcher)
    env = blank("/tail/127.0.0.1%3A8080.txt?queued_min=3").environ
    started: list[Any] = []
    body = watcher(env, lambda status, headers: started.append((status, headers)))
    assert started == [
        (
            "200 OK",
            [
                ("Content-Type", "text/plain"),
                ("Cache-Control", "no-transform"),
                ("Expires", "Thu, 01 Jan 1970 00:00:00 GMT"),
            ],
        )
    ]
    it = iter(body)
    assert next(it) == b""  # gunicorn sends the status and headers on it

    def feed() -> None:
        time.sleep(0.05)
        watcher.engine.record({L: Stats(1, 1)}, at=0.0)
        watcher.engine.record({L: Stats(2, 3)}, at=1.0)

    threading.Thread(target=feed).start()
    assert next(it) == b"1970-01-01T00:00:01Z 127.0.0.1:8080          2          3\n"
    assert watcher.engine.subscribers == 1
    body.close()  # type: ignore[attr-defined]
    assert watcher.engine.subscribers == 0


def test_close_stops_sampler(watcher: Watcher) -> None:
    """close() stops the sampler thread; the next request starts a new one."""
    blank("/").get_response(watcher)
    assert watcher.engine.thread_running
    watcher.close()
    assert not watcher.engine.thread_running
    blank("/").get_response(watcher)
    assert watcher.engine.thread_running


def wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


@pytest.mark.linux
def test_tail_ends_when_the_gunicorn_socket_client_leaves(watcher: Watcher) -> None:
    """With thresholds unmet the tail ends once the client behind gunicorn.socket closed."""
    blank("/").get_response(watcher)
    with socket.create_server(("127.0.0.1", 0)) as srv:
        client = socket.create_connection(srv.getsockname())
        conn, _ = srv.accept()
        with client, conn:
            env = blank("/tail/127.0.0.1%3A8080.txt?queued_min=999").environ
            env["gunicorn.socket"] = conn
            body = watcher(env, lambda status, headers: None)
            got: list[bytes] = []
            server = threading.Thread(target=lambda: got.extend(body))
            server.start()
            assert wait_until(lambda: watcher.engine.subscribers == 1)
            client.close()
            watcher.engine.record({L: Stats(1, 1)})  # a round below the threshold wakes it
            server.join(10)
            body.close()  # type: ignore[attr-defined]
    assert (server.is_alive(), got, watcher.engine.subscribers) == (False, [b""], 0)


# -- LastDataRecv ---------------------------------------------------------------


def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hi\n"]


@pytest.mark.linux
def test_last_data_recv_records_first_request_per_connection() -> None:
    """A connection's first request records tcpi_last_data_recv (ms); keep-alive ones do not."""
    app = LastDataRecv(hello, segment="anonymous")
    with socket.create_server(("127.0.0.1", 0)) as srv:
        client = socket.create_connection(srv.getsockname())
        conn, _ = srv.accept()
        with client, conn:
            for n in range(3):
                client.sendall(b"GET / HTTP/1.1\r\n\r\n")
                conn.recv(100)
                if n == 0:
                    time.sleep(0.25)  # so the first request's wait is well above 0
                    # The kernel is the oracle: the value recorded lies between
                    # tcpi_last_data_recv read just before and just after.
                    before = TcpInfo.from_socket(conn).last_data_recv
                env = blank("/").environ
                env["gunicorn.socket"] = conn
                assert Request(env).get_response(app).body == b"hi\n"
                if n == 0:
                    after = TcpInfo.from_socket(conn).last_data_recv
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nhi\n")
                client.recv(100)
    snap = app.core.histogram.snapshot()
    assert snap.count == 1
    assert before > 0
    assert before <= snap.min <= after
    report = blank("/raindrops/last_data_recv").get_response(app)
    assert (report.headers["X-Count"], "X-Min" in report.headers) == ("1", False)


def test_last_data_recv_without_socket_not_recorded() -> None:
    """Requests without a client socket pass through and are not recorded."""
    app = LastDataRecv(hello, segment="anonymous")
    assert blank("/x").get_response(app).body == b"hi\n"
    report = blank("/raindrops/last_data_recv").get_response(app)
    assert (report.status_int, report.headers["X-Count"]) == (200, "0")
    assert report.headers["Content-Type"] == "text/plain"
    assert (report.body, "X-Min" in report.headers) == (b"Empty histogram", False)


def test_last_data_recv_json_any_method_and_no_app() -> None:
    """.json answers JSON; any method gets the report (as in Ruby); app=None 404s elsewhere."""

    class Fake:
        def __init__(self) -> None:
            from shm_counters import Histogram

            self.h = Histogram([1, 2, 4, 8, 16])

        def record(self, v: int) -> None:
            self.h.record(v)

        def snapshot(self) -> Any:
            return self.h.snapshot()

    app = LastDataRecv(None, histogram=Fake())
    app.core.record(4)
    app.core.record(6)
    resp = blank("/raindrops/last_data_recv.json").get_response(app)
    assert (json.loads(resp.body)["count"], resp.headers["X-Mean"]) == (2, "5")
    post = blank("/raindrops/last_data_recv", method="POST").get_response(app)
    assert (post.status_int, post.headers["X-Count"]) == (200, "2")
    head = blank("/raindrops/last_data_recv", method="HEAD").get_response(app)
    assert (head.status_int, head.body, head.headers["X-Std-Dev"]) == (200, b"", "1")
    other = blank("/other").get_response(app)
    assert (other.status_int, other.body) == (404, b"Not Found")


def test_last_data_recv_bad_path() -> None:
    """A path not starting with '/' is a ConfigError naming it."""
    from raindrops_core import ConfigError

    with pytest.raises(ConfigError, match="path must be a string starting with '/', not 'x'"):
        LastDataRecv(hello, path="x")
