"""The ASGI Watcher and LastDataRecv apps, driven by hand-made ASGI messages (no server)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from raindrops_asgi.watcher import LastDataRecv, Watcher
from raindrops_core.watcher import histogram_text

L = "127.0.0.1:8080"


@dataclass(frozen=True)
class Stats:
    active: int
    queued: int


class Feed:
    """An async fetch returning whatever the test set last, counting calls."""

    def __init__(self, values: Mapping[str, tuple[int, int]]) -> None:
        self.values = dict(values)
        self.calls = 0

    async def __call__(self, names: Sequence[str] | None) -> Mapping[str, Stats]:
        self.calls += 1
        return {k: Stats(*v) for k, v in self.values.items()}


def scope(path: str, method: str = "GET", query: bytes = b"", **extra: Any) -> dict[str, Any]:
    """An HTTP scope from a loopback client (the Watcher answers no one else by default)."""
    return {
        "type": "http",
        "method": method,
        "path": path,
        "root_path": extra.pop("root_path", ""),
        "query_string": query,
        "headers": extra.pop("headers", [(b"host", b"testserver")]),
        "client": extra.pop("client", ("127.0.0.1", 50000)),
        "server": extra.pop("server", ("127.0.0.1", 8000)),
        **extra,
    }


async def call(app: Any, sc: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(sc, receive, send)
    start = sent[0]
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], headers, body


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def make(**kw: Any) -> Watcher:
    return Watcher([L], delay=3600, afetch=Feed({L: (1, 2)}), **kw)


def test_lifespan_starts_and_stops_the_sampler() -> None:
    """Lifespan startup starts one sampler task; shutdown cancels it."""
    app = make()

    async def main() -> tuple[bool, bool, int]:
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        sent: list[str] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message["type"])

        await inbox.put({"type": "lifespan.startup"})
        task = asyncio.ensure_future(app({"type": "lifespan"}, inbox.get, send))
        while not sent:
            await asyncio.sleep(0.001)
        running = app.engine.task_running
        status, _, _ = await call(app, scope("/"))
        await inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(task, 5)
        assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
        return running, app.engine.task_running, status

    assert run(main()) == (True, False, 200)
    assert app.engine._afetch.calls == 1  # type: ignore[union-attr]


def test_first_request_starts_sampler_without_lifespan() -> None:
    """Without lifespan the first request starts the task; later ones reuse it."""
    app = make()

    async def main() -> tuple[int, bytes]:
        for _ in range(3):
            status, _, body = await call(app, scope("/"))
        await app.aclose()
        return status, body

    status, body = run(main())
    assert status == 200
    assert b'<a href="/queued/127.0.0.1%3A8080.html">2</a>' in body
    assert app.engine._afetch.calls == 1  # type: ignore[union-attr]


def test_queued_txt_headers_and_head() -> None:
    """GET /queued/<L>.txt answers the X-* headers; HEAD the same without body."""
    app = make()

    async def main() -> Any:
        await call(app, scope("/"))
        app.engine.record({L: Stats(0, 6)})
        got = await call(app, scope("/queued/127.0.0.1:8080.txt"))
        head = await call(app, scope("/queued/127.0.0.1:8080.txt", "HEAD"))
        await app.aclose()
        return got, head

    (status, headers, body), (hstatus, hheaders, hbody) = run(main())
    assert (status, headers["content-type"]) == (200, "text/plain")
    assert (headers["x-count"], headers["x-min"], headers["x-max"]) == ("2", "2", "6")
    assert (headers["x-mean"], headers["x-std-dev"], headers["x-current"]) == (
        "4.0", "2.8284271247461903", "6",
    )  # fmt: skip
    assert headers["content-length"] == str(len(body))
    assert body == histogram_text([(2, 4, 1), (4, 8, 1)]).encode()
    assert (hstatus, hbody, hheaders["content-length"]) == (200, b"", str(len(body)))


def test_mounted_under_root_path() -> None:
    """Under a root_path, links and redirects carry the prefix."""
    app = make()

    async def main() -> Any:
        page = await call(app, scope("/mon/", root_path="/mon"))
        reset = await call(app, scope("/mon/reset/127.0.0.1:8080", "POST", root_path="/mon"))
        js = await call(app, scope("/mon/active/127.0.0.1:8080.json", root_path="/mon"))
        await app.aclose()
        return page, reset, js

    page, reset, js = run(main())
    assert b'href="/mon/active/127.0.0.1%3A8080.html"' in page[2]
    assert (reset[0], reset[1]["location"], reset[2]) == (302, "/mon/", b"Redirecting to /mon/")
    assert json.loads(js[2])["count"] == 0  # no round came in the bounded wait after the reset


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/queued/10.0.0.9:1.txt", 404),
        ("GET", "/queued/\ufffd.txt", 404),
        ("GET", "/nothing", 404),
        ("GET", "/reset/127.0.0.1:8080", 404),
        ("POST", "/queued/127.0.0.1:8080.txt", 404),
        ("PATCH", "/", 405),
    ],
)
def test_errors(method: str, path: str, status: int) -> None:
    """Unknown or malformed names are 404, methods but GET/HEAD/POST 405 with Allow, never 500."""
    app = make()

    async def main() -> Any:
        got = await call(app, scope(path, method))
        await app.aclose()
        return got

    got_status, headers, _ = run(main())
    assert got_status == status
    assert ("allow" in headers) is (status == 405)


def test_tail_streams_until_disconnect() -> None:
    """The tail streams qualifying lines and ends cleanly on http.disconnect."""
    app = make()

    async def main() -> tuple[list[bytes], int, bool]:
        await call(app, scope("/"))
        disconnect = asyncio.Event()
        bodies: list[bytes] = []

        async def receive() -> dict[str, Any]:
            await disconnect.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                bodies.append(message["body"])
                if len(bodies) == 2:
                    disconnect.set()

        sc = scope("/tail/127.0.0.1:8080.txt", query=b"active_min=2")
        task = asyncio.ensure_future(app(sc, receive, send))
        await asyncio.sleep(0.05)
        for at, active in ((0.0, 1), (1.0, 2), (2.0, 3)):
            app.engine.record({L: Stats(active, 0)}, at=at)
            await asyncio.sleep(0.01)
        await asyncio.wait_for(task, 5)
        subs = app.engine.subscribers
        await app.aclose()
        return bodies, subs, task.done()

    bodies, subs, done = run(main())
    assert bodies == [
        b"1970-01-01T00:00:01Z 127.0.0.1:8080          2          0\n",
        b"1970-01-01T00:00:02Z 127.0.0.1:8080          3          0\n",
    ]
    assert (subs, done) == (0, True)


def test_tail_max_seconds_ends_with_final_message() -> None:
    """With tail_max_seconds the stream ends itself with a final empty body message."""
    app = make(tail_max_seconds=0.1)

    async def main() -> Any:
        got = await call(app, scope("/tail/127.0.0.1:8080.json"))
        await app.aclose()
        return got

    status, headers, body = run(main())
    assert (status, headers["content-type"], body) == (200, "application/x-ndjson", b"")
    assert (headers["cache-control"], headers["expires"]) == (
        "no-transform", "Thu, 01 Jan 1970 00:00:00 GMT",
    )  # fmt: skip


# -- LastDataRecv ---------------------------------------------------------------


async def hello(sc: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hi"})


def test_last_data_recv_records_first_requests() -> None:
    """A sample per connection's first request, looked up by the scope's address pair."""
    seen: list[tuple[Any, Any]] = []

    @dataclass
    class Info:
        last_data_recv: int
        data_segs_out: int

    async def lookup(local: Any, remote: Any) -> Info:
        seen.append((local, remote))
        port = remote[1]
        return Info(10 * len(seen), data_segs_out=1 if port == 5009 else 0)

    app = LastDataRecv(hello, segment="anonymous", tcp_info_for=lookup)

    async def main() -> Any:
        for port in (5001, 5002, 5003, 5009):
            extra = {"server": ("127.0.0.1", 8000), "client": ("127.0.0.1", port)}
            assert (await call(app, scope("/", **extra)))[2] == b"hi"
        return await call(app, scope("/raindrops/last_data_recv"))

    status, headers, body = run(main())
    assert seen[0] == (("127.0.0.1", 8000), ("127.0.0.1", 5001))
    assert len(seen) == 4  # the report itself is not looked up
    assert (status, headers["x-count"], headers["x-min"], headers["x-max"]) == (
        200,
        "3",
        "10",
        "30",
    )
    assert (headers["x-mean"], headers["x-std-dev"]) == ("20", "10")
    assert body == histogram_text([(8, 16, 1), (16, 32, 2)]).encode()


def test_last_data_recv_json_and_passthrough() -> None:
    """.json answers JSON; unknown connections are not recorded; lifespan reaches the app."""
    lifespans: list[str] = []

    async def lookup(local: Any, remote: Any) -> None:
        return None

    async def inner(sc: Any, receive: Any, send: Any) -> None:
        if sc["type"] == "lifespan":
            message = await receive()
            lifespans.append(message["type"])
            await send({"type": "lifespan.startup.complete"})
            return
        await hello(sc, receive, send)

    app = LastDataRecv(inner, segment="anonymous", tcp_info_for=lookup)

    async def main() -> Any:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "lifespan.startup"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app({"type": "lifespan"}, receive, send)
        await call(app, scope("/", server=("127.0.0.1", 1), client=("127.0.0.1", 2)))
        return sent, await call(app, scope("/raindrops/last_data_recv.json"))

    sent, (status, headers, body) = run(main())
    assert (lifespans, sent) == (["lifespan.startup"], [{"type": "lifespan.startup.complete"}])
    assert (status, headers["content-type"], json.loads(body)["count"]) == (
        200,
        "application/json",
        0,
    )


def test_last_data_recv_without_app_answers_lifespan_and_404() -> None:
    """With app=None it completes lifespan itself, reports on any method, 404s elsewhere."""
    app = LastDataRecv(None, segment="anonymous", tcp_info_for=lambda *a: _none())
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    async def main() -> Any:
        sent: list[str] = []

        async def receive() -> dict[str, Any]:
            return inbox.pop(0)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message["type"])

        await app({"type": "lifespan"}, receive, send)
        post = await call(app, scope("/raindrops/last_data_recv", "POST"))
        other = await call(app, scope("/x", server=("127.0.0.1", 1), client=("127.0.0.1", 2)))
        return sent, post, other

    sent, post, other = run(main())
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert (post[0], post[1]["x-count"]) == (200, "0")
    assert (other[0], other[2]) == (404, b"Not Found")


async def _none() -> None:
    return None


@pytest.mark.linux
def test_last_data_recv_finds_the_connection_by_address_pair() -> None:
    """The default netlink lookup records the first request's tcpi_last_data_recv (ms) only."""
    import socket
    import time

    from linux_inet_diag import TcpInfo

    app = LastDataRecv(hello, segment="anonymous")
    with socket.create_server(("127.0.0.1", 0)) as srv:
        client = socket.create_connection(srv.getsockname())
        conn, _ = srv.accept()
        with client, conn:
            client.sendall(b"GET / HTTP/1.1\r\n\r\n")
            conn.recv(100)
            time.sleep(0.25)  # so the request's wait is well above 0
            extra = {"server": conn.getsockname(), "client": conn.getpeername()}
            # The kernel is the oracle: the value recorded lies between
            # tcpi_last_data_recv read just before and just after the request.
            bounds: list[int] = []

            async def main() -> Any:
                bounds.append(TcpInfo.from_socket(conn).last_data_recv)
                await call(app, scope("/", **extra))
                bounds.append(TcpInfo.from_socket(conn).last_data_recv)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
                client.recv(100)
                client.sendall(b"GET / HTTP/1.1\r\n\r\n")  # a keep-alive request
                conn.recv(100)
                await call(app, scope("/", **extra))
                return await call(app, scope("/raindrops/last_data_recv"))

            try:
                status, headers, _ = run(main())
            finally:
                app.close()
    assert (status, headers["x-count"]) == (200, "1")
    before, after = bounds
    assert before > 0
    assert before <= app.core.histogram.snapshot().min <= after


def test_the_mount_point_is_cut_on_a_segment_boundary_only() -> None:
    """``root_path`` is removed from the path only before a ``/`` (the core's app_path rule).

    A server that already strips the mount point hands ``path="/index.json"``
    with ``root_path="/index"``: that is the index's JSON, not ``".json"``;
    and ``/opsx/...`` is not below ``/ops``.
    """
    app = make()

    async def main() -> Any:
        stripped = await call(app, scope("/index.json", root_path="/index"))
        beside = await call(app, scope("/opsx/index.json", root_path="/ops"))
        below = await call(app, scope("/ops/index.json", root_path="/ops"))
        await app.aclose()
        return stripped, beside, below

    stripped, beside, below = run(main())
    assert (stripped[0], json.loads(stripped[2])["listeners"]) == (
        200,
        {L: {"active": 1, "queued": 2}},
    )
    assert (beside[0], below[0]) == (404, 200)


def test_last_data_recv_head_of_a_404_has_no_body() -> None:
    """With app=None a HEAD elsewhere is 404 with GET's headers and no body (the core's reply)."""
    app = LastDataRecv(None, segment="anonymous", tcp_info_for=lambda *a: _none())

    async def main() -> Any:
        get = await call(app, scope("/x", server=("127.0.0.1", 1), client=("127.0.0.1", 2)))
        head = await call(
            app, scope("/x", "HEAD", server=("127.0.0.1", 1), client=("127.0.0.1", 3))
        )
        report = await call(app, scope("/raindrops/last_data_recv", "HEAD"))
        return get, head, report

    get, head, report = run(main())
    assert (get[0], get[2], head[0], head[1], head[2]) == (404, b"Not Found", 404, get[1], b"")
    assert (report[0], report[1]["x-count"], report[2]) == (200, "0", b"")
