"""The pure ASGI middleware, driven directly and through Starlette/httpx."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from typing import Any

import httpx
import pytest
from process_utilization.asgi import ProcessUtilization
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from statsd import StatsClient


async def hello(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


def http_scope(path: str = "/", headers: list[tuple[bytes, bytes]] | None = None) -> Any:
    return {
        "type": "http",
        "method": "GET",
        "path": path,
        "query_string": b"",
        "headers": headers or [],
    }


async def noop_receive() -> Any:
    return {"type": "http.request", "body": b"", "more_body": False}


def test_known_durations_give_exact_figures(clock: Any) -> None:
    """Sequential ASGI requests give exact active time, % and average."""

    async def timed(scope: Any, receive: Any, send: Any) -> None:
        clock.t += scope["duration"]
        await hello(scope, receive, send)

    mw = ProcessUtilization(timed, clock=clock)
    sent: list[Any] = []

    async def send(msg: Any) -> None:
        sent.append(msg)

    async def main() -> None:
        clock.t = 1000.0
        await mw({**http_scope(), "duration": 0.25}, noop_receive, send)
        clock.t = 1001.0
        await mw({**http_scope(), "duration": 0.75}, noop_receive, send)

    asyncio.run(main())
    clock.t = 1002.0
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"] * 2
    assert (mw.requests, mw.total_requests, mw.in_flight) == (2, 2, 0)
    assert mw.active_time == 1.0
    assert mw.percentage_active == 50.0
    assert mw.requests_per_second == 1.0
    assert mw.average_response_time == 500.0


def test_overlapping_tasks_count_once(clock: Any) -> None:
    """Two requests awaiting inside the app at once count their union as busy time."""
    gate: dict[str, asyncio.Event] = {}

    async def waiting(scope: Any, receive: Any, send: Any) -> None:
        await gate[scope["path"]].wait()
        await hello(scope, receive, send)

    mw = ProcessUtilization(waiting, clock=clock)

    async def send(msg: Any) -> None:
        return None

    async def main() -> None:
        gate["/a"] = asyncio.Event()
        gate["/b"] = asyncio.Event()
        clock.t = 1000.0
        a = asyncio.create_task(mw(http_scope("/a"), noop_receive, send))
        await asyncio.sleep(0)
        clock.t = 1001.0
        b = asyncio.create_task(mw(http_scope("/b"), noop_receive, send))
        await asyncio.sleep(0)
        assert mw.in_flight == 2
        clock.t = 1002.0
        gate["/a"].set()
        await a
        clock.t = 1004.0
        gate["/b"].set()
        await b

    asyncio.run(main())
    assert mw.in_flight == 0
    assert mw.active_time == 4.0
    assert mw.percentage_active == 100.0
    assert mw.average_response_time == 2500.0


def test_scope_keys_and_request_start_header(clock: Any) -> None:
    """The scope gets request_start and total_requests; x-request-start is removed."""
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.update(scope)
        await hello(scope, receive, send)

    mw = ProcessUtilization(app, clock=clock, wall_clock=lambda: 1700000000.25)

    async def send(msg: Any) -> None:
        return None

    headers = [(b"host", b"x"), (b"x-request-start", b"t=1"), (b"accept", b"*/*")]
    asyncio.run(mw(http_scope(headers=headers), noop_receive, send))
    assert seen["process.request_start"] == 1700000000.25
    assert seen["process.total_requests"] == 1
    assert seen["headers"] == [(b"host", b"x"), (b"accept", b"*/*")]


def test_non_http_scopes_pass_through_uncounted(clock: Any) -> None:
    """Lifespan and websocket scopes reach the app and are not counted."""
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    mw = ProcessUtilization(app, clock=clock)
    asyncio.run(mw({"type": "lifespan"}, noop_receive, hello))
    assert seen == ["lifespan"]
    assert mw.total_requests == 0


REPORT = (
    "process-utilization pid={pid} worker=0 requests=1"
    " total_requests=1 in_flight=0 horizon=61.000s active=61.000s idle=0.000s"
    " util=100.0% rps=0.02 avg=61000.0ms"
)


async def boom_after(clock: Any, scope: Any, receive: Any, send: Any) -> None:
    clock.t += 61
    raise RuntimeError("boom")


def test_app_exception_still_records_and_reports_to_stderr(
    clock: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failing app ends the request; a due report goes to sys.stderr, one line."""

    async def boom(scope: Any, receive: Any, send: Any) -> None:
        await boom_after(clock, scope, receive, send)

    mw = ProcessUtilization(boom, clock=clock, report_interval=60, window=1000)
    clock.t = 1000.0
    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(mw(http_scope(), noop_receive, hello))
    assert (mw.in_flight, mw.requests) == (0, 1)
    captured = capsys.readouterr()
    assert captured.err == REPORT.format(pid=os.getpid()) + "\n"
    assert captured.out == ""


def test_report_to_a_logger_instead_of_stderr(
    clock: Any, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """report_to=a logger sends the ASGI report line there at INFO, nothing to stderr."""

    async def boom(scope: Any, receive: Any, send: Any) -> None:
        await boom_after(clock, scope, receive, send)

    logger = logging.getLogger("test.pu.asgi")
    mw = ProcessUtilization(boom, clock=clock, report_interval=60, window=1000, report_to=logger)
    clock.t = 1000.0
    with (
        caplog.at_level(logging.INFO, logger="test.pu.asgi"),
        pytest.raises(RuntimeError, match="boom"),
    ):
        asyncio.run(mw(http_scope(), noop_receive, hello))
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("test.pu.asgi", "INFO", REPORT.format(pid=os.getpid()))
    ]
    assert capsys.readouterr().err == ""


def test_under_starlette_with_stats_endpoint() -> None:
    """Under Starlette, requests are counted; the endpoint answers JSON and is not counted."""

    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse("home")

    inner = Starlette(routes=[Route("/", home)])
    mw = ProcessUtilization(inner, stats_path="/_utilization")

    async def main() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=mw)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            for _ in range(3):
                assert (await c.get("/")).text == "home"
            as_json = await c.get("/_utilization", params={"format": "json"})
            as_text = await c.get("/_utilization")
        return as_json, as_text

    as_json, as_text = asyncio.run(main())
    assert mw.total_requests == 3
    assert as_json.headers["content-type"] == "application/json"
    doc = json.loads(as_json.text)
    assert len(doc["workers"]) == 1
    assert doc["workers"][0]["requests_total"] == 3
    assert doc["workers"][0]["in_flight"] == 0
    assert doc["total"]["requests_total"] == 3
    assert as_text.headers["content-type"] == "text/plain; charset=utf-8"
    lines = as_text.text.splitlines()
    assert lines[0].split() == [
        "worker",
        "pid",
        "in_flight",
        "requests",
        "busy_s",
        "req/s",
        "avg_ms",
        "util%",
    ]
    assert lines[1].split()[2:4] == ["0", "3"]
    assert lines[2].split()[:3] == ["total", "0", "3"]


def test_statsd_gets_the_asgi_status_and_method(clock: Any) -> None:
    """Under ASGI, statsd receives the timing per method and the response status."""

    async def created(scope: Any, receive: Any, send: Any) -> None:
        clock.t += 0.25
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent: list[Any] = []

    async def send(msg: Any) -> None:
        sent.append(msg["type"])

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        sink.settimeout(5)
        client = StatsClient("127.0.0.1", sink.getsockname()[1])
        try:
            mw = ProcessUtilization(created, clock=clock, statsd=client)
            asyncio.run(mw({**http_scope(), "method": "PUT"}, noop_receive, send))
            packet = sink.recv(65536)
        finally:
            client.close()
    assert sent == ["http.response.start", "http.response.body"]
    assert packet.decode().split("\n") == [
        "response_time:250.000000|ms",
        "response_time.put:250.000000|ms",
        "status_code.created:1|c",
    ]


class FlakyClock:
    """A settable clock that raises while ``broken`` is true."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.broken = False

    def __call__(self) -> float:
        if self.broken:
            raise OSError("clock gone")
        return self.t


def test_clock_failing_never_breaks_an_asgi_request(caplog: pytest.LogCaptureFixture) -> None:
    """A clock raising at the start or the end serves the request and leaves nothing in flight."""
    clock = FlakyClock()
    sent: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        clock.broken = scope["path"] == "/break-at-end"
        await hello(scope, receive, send)

    async def send(msg: Any) -> None:
        sent.append(msg["type"])

    mw = ProcessUtilization(app, clock=clock)

    async def main() -> None:
        clock.broken = True  # broken at the start
        await mw(http_scope("/"), noop_receive, send)
        clock.broken = False
        await mw(http_scope("/break-at-end"), noop_receive, send)
        clock.broken = False

    with caplog.at_level(logging.WARNING, logger="process_utilization"):
        asyncio.run(main())
    assert sent == ["http.response.start", "http.response.body"] * 2
    assert (mw.in_flight, mw.requests, mw.total_requests) == (0, 1, 2)
    row = mw.scoreboard.rows()[0].values
    assert (row["entered"], row["requests"]) == (1, 1)
    assert [r.getMessage() for r in caplog.records] == [
        "process_utilization: clock failed (logged once per process): OSError('clock gone')"
    ]


def statsd_packets(
    app: Any, clock: Any, method: str = "GET"
) -> tuple[list[str] | None, BaseException | None]:
    """Run one ASGI request with statsd on; the packet's lines (None if none) and any error."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        client = StatsClient("127.0.0.1", sink.getsockname()[1])
        error: BaseException | None = None
        try:
            mw = ProcessUtilization(app, clock=clock, statsd=client)

            async def send(msg: Any) -> None:
                return None

            try:
                asyncio.run(mw({**http_scope(), "method": method}, noop_receive, send))
            except Exception as exc:
                error = exc
            client.incr("end")  # a marker: whatever came before it was sent by the request
            sink.settimeout(5)
            lines = sink.recv(65536).decode().split("\n")
        finally:
            client.close()
    assert mw.in_flight == 0
    if lines == ["end:1|c"]:
        return None, error
    return lines, error


def test_statsd_sends_nothing_for_an_app_failing_before_its_response(clock: Any) -> None:
    """An app raising before http.response.start sends no statsd packet (as rack-statsd)."""

    async def boom(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    lines, error = statsd_packets(boom, clock)
    assert lines is None
    assert isinstance(error, RuntimeError)


def test_statsd_counts_a_started_response_even_if_the_app_then_fails(clock: Any) -> None:
    """Once http.response.start went out, its status is sent, even if the app then raises."""

    async def half(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        clock.t += 0.5
        raise RuntimeError("after start")

    clock.t = 1000.0
    lines, error = statsd_packets(half, clock, method="DELETE")
    assert lines == [
        "response_time:500.000000|ms",
        "response_time.delete:500.000000|ms",
        "status_code.missing:1|c",
    ]
    assert isinstance(error, RuntimeError)
