"""The pure ASGI middleware, driven with Starlette's TestClient and by hand."""

from __future__ import annotations

import asyncio
import errno
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from linux_inet_diag import ListenOverflows, UnavailableError
from raindrops_asgi import ConfigError, RaindropsMiddleware
from raindrops_core import ANONYMOUS, RaindropsState
from raindrops_core.adapter import Kernel, Steps
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

LOCAL = ("127.0.0.1", 50000)


def _middleware(app: Any, **kwargs: Any) -> RaindropsMiddleware:
    kwargs.setdefault("listeners", [])
    kwargs.setdefault("segment", ANONYMOUS)
    return RaindropsMiddleware(app, **kwargs)


def _app(seen: list[tuple[int, int]]) -> RaindropsMiddleware:
    async def hello(request: Request) -> Response:
        seen.append(mw.state.counts())
        return PlainTextResponse("hello\n")

    async def stream(request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(2):
                seen.append(mw.state.counts())
                yield f"chunk {i}\n".encode()

        return StreamingResponse(chunks(), media_type="text/plain")

    async def fail(request: Request) -> Response:
        raise RuntimeError("app failed")

    routes = [Route("/", hello), Route("/stream", stream), Route("/fail", fail)]
    mw = _middleware(Starlette(routes=routes))
    return mw


def test_endpoint_answers_ruby_text_with_exact_headers() -> None:
    """GET /_raindrops answers the plain text with Content-Type and Content-Length only."""
    mw = _app([])
    with TestClient(mw, client=LOCAL) as client:
        resp = client.get("/_raindrops")
    assert (resp.status_code, resp.content) == (200, b"calling: 0\nwriting: 0\n")
    assert resp.headers.multi_items() == [
        ("content-type", "text/plain"),
        ("content-length", "22"),
    ]


def test_calling_inside_the_app_and_writing_while_streaming() -> None:
    """``calling`` is 1 inside the app; ``writing`` is 1 while the body streams; then 0."""
    seen: list[tuple[int, int]] = []
    mw = _app(seen)
    with TestClient(mw, client=LOCAL) as client:
        assert client.get("/").text == "hello\n"
        assert client.get("/stream").text == "chunk 0\nchunk 1\n"
        stats = client.get("/_raindrops").content
    assert seen == [(1, 0), (0, 1), (0, 1)]
    assert stats == b"calling: 0\nwriting: 0\n"


def test_app_exception_propagates_and_leaves_gauges_at_zero() -> None:
    """An exception from the app reaches the server and both gauges return to 0."""
    mw = _app([])
    with TestClient(mw, client=LOCAL) as client, pytest.raises(RuntimeError, match="app failed"):
        client.get("/fail")
    assert mw.state.counts() == (0, 0)


def test_endpoint_formats_head_and_access() -> None:
    """Accept/format pick JSON or Prometheus; HEAD has no body; others get 403 or 400."""
    mw = _app([])
    with TestClient(mw, client=LOCAL) as client:
        doc = client.get("/_raindrops", headers={"accept": "application/json"}).json()
        prom = client.get("/_raindrops?format=prometheus")
        head = client.head("/_raindrops")
        post = client.post("/_raindrops")
        bad = client.get("/_raindrops?format=xml")
    assert doc == {
        "calling": 0,
        "writing": 0,
        "listeners": {},
        "listen_overflows": doc["listen_overflows"],
        "unavailable": doc["unavailable"],
    }
    assert prom.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert b"\nraindrops_writing 0.0\n" in prom.content
    assert (head.status_code, head.content, head.headers["content-length"]) == (200, b"", "22")
    assert post.content == b"calling: 0\nwriting: 0\n"
    assert bad.status_code == 400
    with TestClient(mw, client=("192.0.2.9", 1)) as client:
        denied = client.get("/_raindrops")
    assert (denied.status_code, denied.content) == (
        403,
        b"403 Forbidden: client 192.0.2.9 is not in the allow-list (loopback only by default); "
        b"to allow more, pass allow=['10.0.0.0/8', ...] or allow=ALLOW_ALL\n",
    )


def _scope(path: str = "/x") -> dict[str, Any]:
    return {"type": "http", "path": path, "method": "GET", "headers": [], "query_string": b""}


async def _no_receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def test_cancelled_app_leaves_gauges_exact() -> None:
    """Cancelling a request inside the app or mid-body brings both gauges back to 0."""
    started = asyncio.Event()
    phase: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/body":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"a", "more_body": True})
        phase.append(str(mw.state.counts()))
        started.set()
        await asyncio.sleep(30)

    mw = _middleware(app)

    async def sent(message: Any) -> None:
        return None

    async def run(path: str) -> None:
        started.clear()
        task = asyncio.ensure_future(mw(_scope(path), _no_receive, sent))
        await asyncio.wait_for(started.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    async def main() -> None:
        await run("/x")
        await run("/body")

    asyncio.run(main())
    assert phase == ["(1, 0)", "(0, 1)"]
    assert mw.state.counts() == (0, 0)


@pytest.mark.parametrize(
    ("messages", "writing_after"),
    [
        ([{"type": "http.response.pathsend", "path": "/etc/hostname"}], [0]),
        (
            [
                {"type": "http.response.body", "body": b"a", "more_body": True},
                {"type": "http.response.body", "body": b"b"},
            ],
            [1, 0],
        ),
    ],
)
def test_writing_ends_at_the_last_body_message(
    messages: list[dict[str, Any]], writing_after: list[int]
) -> None:
    """``writing`` ends once the final body (or pathsend) message has been sent."""
    after: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for message in messages:
            await send(message)
            after.append(mw.state.counts()[1])

    mw = _middleware(app)

    async def sent(message: Any) -> None:
        return None

    asyncio.run(mw(_scope(), _no_receive, sent))
    assert after == writing_after


def test_trailers_end_writing_after_the_last_trailers() -> None:
    """With ``trailers: True`` the response ends at the last trailers message, not the body."""
    after: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.body", "body": b"a"})
        after.append(mw.state.counts()[1])
        await send({"type": "http.response.trailers", "headers": []})
        after.append(mw.state.counts()[1])

    mw = _middleware(app)

    async def sent(message: Any) -> None:
        return None

    asyncio.run(mw(_scope(), _no_receive, sent))
    assert after == [1, 0]


def test_lifespan_and_websocket_scopes_pass_through_untouched() -> None:
    """Non-HTTP scopes reach the app with the very same receive and send callables."""
    calls: list[tuple[str, bool, bool]] = []

    async def receive() -> dict[str, Any]:
        return {}

    async def send(message: Any) -> None:
        return None

    async def app(scope: Any, r: Any, s: Any) -> None:
        calls.append((scope["type"], r is receive, s is send))

    mw = _middleware(app)
    asyncio.run(mw({"type": "lifespan"}, receive, send))
    asyncio.run(mw({"type": "websocket", "path": "/_raindrops"}, receive, send))
    assert calls == [("lifespan", True, True), ("websocket", True, True)]
    assert mw.state.counts() == (0, 0)


def test_malformed_listener_fails_at_construction() -> None:
    """A bad listener name is a ConfigError when the middleware is built."""
    with pytest.raises(ConfigError, match=r"malformed listener '1\.2\.3\.4'"):
        RaindropsMiddleware(_app([]), listeners=["1.2.3.4"])


def test_endpoint_under_a_mount_point() -> None:
    """Mounted at /ops, the endpoint answers at /ops/_raindrops; the app keeps its other paths."""
    seen: list[tuple[int, int]] = []
    mw = _app(seen)
    outer = Starlette(routes=[Mount("/ops", app=mw)])
    with TestClient(outer, client=LOCAL) as client:
        stats = client.get("/ops/_raindrops")
        hello = client.get("/ops/")
        unmounted = client.get("/_raindrops")
    assert (stats.status_code, stats.content) == (200, b"calling: 0\nwriting: 0\n")
    assert (hello.text, seen) == ("hello\n", [(1, 0)])
    assert unmounted.status_code == 404


@pytest.mark.parametrize(
    ("path", "root_path", "endpoint"),
    [
        ("/ops/_raindrops", "/ops", True),  # uvicorn --root-path /ops: path includes it
        ("/_raindrops", "/ops", True),  # a server that strips root_path itself
        ("/_raindrops", "", True),
        ("/ops/_raindrops/x", "/ops", False),
        ("/opsx/_raindrops", "/ops", False),
        ("/x/_raindrops", "", False),
    ],
)
def test_root_path_is_stripped_before_matching(path: str, root_path: str, endpoint: bool) -> None:
    """Only the path below ``root_path`` is compared with the endpoint's path."""
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message: Any) -> None:
        sent.append(message)

    scope = _scope(path)
    scope["root_path"] = root_path
    scope["client"] = LOCAL
    asyncio.run(_middleware(app)(scope, _no_receive, send))
    assert sent[0]["status"] == (200 if endpoint else 204)


def _unavailable(*args: object, **kwargs: object) -> None:
    raise UnavailableError(errno.ENOSYS, "netlink sock_diag needs Linux")


@pytest.mark.parametrize(
    ("query", "broken", "header"),
    [
        ("", (), None),
        ("?format=json", (), None),
        ("", ("listeners", "overflows"), "listeners"),
        ("?format=json", ("listeners",), "listeners"),
        ("?format=json", ("overflows",), "overflows"),
        ("?format=json", ("listeners", "overflows"), "listeners, overflows"),
        ("?format=prometheus", ("listeners", "overflows"), "listeners, overflows"),
        ("?format=openmetrics", ("overflows",), "overflows"),
    ],
)
def test_unavailable_header_names_what_is_missing(
    query: str, broken: tuple[str, ...], header: str | None
) -> None:
    """x-raindrops-unavailable names the parts this answer lacks (GET and HEAD); else absent."""

    class Diag:
        async def tcp_listener_stats(self, names: list[str]) -> dict[str, Any]:
            if "listeners" in broken:
                _unavailable()
            return {}

        def close(self) -> None:
            return None

    def read() -> ListenOverflows:
        if "overflows" in broken:
            _unavailable()
        return ListenOverflows(listen_overflows=1, listen_drops=2)

    kernel = Kernel(adiag=Diag, listen_overflows=read)  # type: ignore[arg-type]
    state = RaindropsState(listeners=["127.0.0.1:9"], segment=ANONYMOUS, kernel=kernel)
    mw = RaindropsMiddleware(Starlette(), state=state)
    with TestClient(mw, client=LOCAL) as client:
        answers = [client.get(f"/_raindrops{query}"), client.head(f"/_raindrops{query}")]
    for resp in answers:
        assert resp.status_code == 200
        assert resp.headers.get("x-raindrops-unavailable") == header


def _record_prepare(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    threads: list[int] = []
    original = RaindropsState.prepare

    def prepare(self: RaindropsState) -> Steps:
        threads.append(threading.get_ident())
        return original(self)

    monkeypatch.setattr(RaindropsState, "prepare", prepare)
    return threads


def test_lifespan_startup_prepares_the_state_in_a_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """At lifespan startup the scoreboard is opened off the event loop, before any request."""
    threads = _record_prepare(monkeypatch)
    loop_threads: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        loop_threads.append(threading.get_ident())
        assert (await receive())["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.complete"})

    mw = _middleware(app)
    messages = iter([{"type": "lifespan.startup"}])

    async def receive() -> Any:
        return next(messages)

    async def send(message: Any) -> None:
        return None

    asyncio.run(mw({"type": "lifespan"}, receive, send))
    assert mw.state.steps is not None
    assert len(threads) == 1
    assert threads[0] != loop_threads[0]


def test_first_request_prepares_the_state_in_a_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without lifespan, the first request opens the scoreboard off the loop, once."""
    threads = _record_prepare(monkeypatch)
    loop_threads: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        loop_threads.append(threading.get_ident())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    mw = _middleware(app)

    async def sent(message: Any) -> None:
        return None

    async def main() -> None:
        await mw(_scope(), _no_receive, sent)
        await mw(_scope(), _no_receive, sent)

    asyncio.run(main())
    assert len(threads) == 1
    assert threads[0] not in loop_threads
    assert mw.state.counts() == (0, 0)
