"""Who may read the table: raindrops' access rule, and the ASGI table below its mount point."""

from __future__ import annotations

import asyncio
import io
import json
import socket
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from process_utilization import ConfigError, ProcessUtilization
from process_utilization.asgi import ProcessUtilization as AsgiProcessUtilization
from raindrops_core import ALLOW_ALL, AccessList
from starlette.applications import Starlette
from starlette.routing import Mount

PATH = "/_utilization"
NOT_LISTED = (
    "403 Forbidden: client {addr} is not in the allow-list (loopback only by default); "
    "to allow more, pass allow=['10.0.0.0/8', ...] or allow=ALLOW_ALL\n"
)
NO_ADDRESS = (
    "403 Forbidden: the server gave no client address (REMOTE_ADDR, scope['client']), "
    "so the client is unknown\n"
)
RELAYED = (
    "403 Forbidden: the request came {via} with {header}: a proxy relayed it, "
    "and its client is unknown\n"
)
FORWARDING = [
    ("X-Forwarded-For", "HTTP_X_FORWARDED_FOR"),
    ("Forwarded", "HTTP_FORWARDED"),
    ("X-Real-IP", "HTTP_X_REAL_IP"),
]


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def wsgi_get(
    mw: ProcessUtilization, path: str = PATH, **environ: Any
) -> tuple[str, dict[str, str], bytes]:
    """One GET as a WSGI server makes it (``environ`` as given: no REMOTE_ADDR unless said)."""
    got: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        got["status"], got["headers"] = status, dict(headers)
        return lambda data: None

    env: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": False,
        **environ,
    }
    body = mw(env, start_response)
    data = b"".join(body)
    getattr(body, "close", lambda: None)()
    return got["status"], got["headers"], data


@pytest.fixture
def unix_socket() -> Iterator[socket.socket]:
    """A connected AF_UNIX socket: what gunicorn puts in ``environ["gunicorn.socket"]``."""
    a, b = socket.socketpair(socket.AF_UNIX)
    try:
        yield a
    finally:
        a.close()
        b.close()


def assert_refused(status: str, headers: dict[str, str], body: bytes, text: str) -> None:
    assert status == "403 Forbidden"
    assert headers["Content-Type"] == "text/plain"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Length"] == str(len(body))
    assert body.decode() == text


@pytest.mark.parametrize("addr", ["127.0.0.1", "::1", "::ffff:127.0.0.1"])
def test_loopback_reads_the_table(clock: Any, addr: str) -> None:
    """A loopback client gets the table."""
    mw = ProcessUtilization(hello, clock=clock, stats_path=PATH)
    status, headers, body = wsgi_get(mw, REMOTE_ADDR=addr)
    assert (status, headers["Content-Type"]) == ("200 OK", "text/plain; charset=utf-8")
    assert body.startswith(b"worker ")


def test_another_client_is_refused_and_its_requests_still_served(clock: Any) -> None:
    """A client outside the allow-list gets 403 for the table, and its own requests as usual."""
    mw = ProcessUtilization(hello, clock=clock, stats_path=PATH)
    assert_refused(*wsgi_get(mw, REMOTE_ADDR="192.0.2.1"), NOT_LISTED.format(addr="192.0.2.1"))
    assert wsgi_get(mw, "/", REMOTE_ADDR="192.0.2.1")[::2] == ("200 OK", b"hello")
    assert mw.total_requests == 1


def test_a_request_without_remote_addr_is_refused(clock: Any) -> None:
    """No REMOTE_ADDR at all: the client is unknown, 403."""
    mw = ProcessUtilization(hello, clock=clock, stats_path=PATH)
    assert_refused(*wsgi_get(mw), NO_ADDRESS)


@pytest.mark.parametrize(("header", "key"), FORWARDING)
def test_no_address_with_a_forwarding_header_is_refused(clock: Any, header: str, key: str) -> None:
    """No client address and a forwarding header: a proxy relayed it, 403."""
    mw = ProcessUtilization(hello, clock=clock, stats_path=PATH)
    text = RELAYED.format(via="with no client address", header=header)
    assert_refused(*wsgi_get(mw, **{key: "203.0.113.9"}), text)


def test_a_unix_peer_as_gunicorn_sets_it_is_allowed(clock: Any, unix_socket: socket.socket) -> None:
    """REMOTE_ADDR '' over an AF_UNIX gunicorn.socket (a local curl) reads the table."""
    mw = ProcessUtilization(hello, clock=clock, stats_path=PATH)
    status, _, body = wsgi_get(mw, REMOTE_ADDR="", **{"gunicorn.socket": unix_socket})
    assert status == "200 OK"
    assert body.startswith(b"worker ")


@pytest.mark.parametrize(("header", "key"), FORWARDING)
def test_a_unix_peer_relayed_by_a_proxy_is_refused(
    clock: Any, unix_socket: socket.socket, header: str, key: str
) -> None:
    """Over a Unix socket with a forwarding header (nginx -> unix:), the client is unknown: 403."""
    mw = ProcessUtilization(hello, clock=clock, stats_path=PATH)
    env = {"REMOTE_ADDR": "", "gunicorn.socket": unix_socket, key: "203.0.113.9"}
    text = RELAYED.format(via="over a Unix socket", header=header)
    assert_refused(*wsgi_get(mw, **env), text)


def test_a_loopback_proxy_relaying_a_client_is_refused(clock: Any) -> None:
    """A loopback peer carrying X-Forwarded-For is a proxy: refused unless proxied=True."""
    mw = ProcessUtilization(hello, clock=clock, stats_path=PATH)
    status, _, body = wsgi_get(mw, REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.9")
    assert status == "403 Forbidden"
    assert body.startswith(
        b"403 Forbidden: the request carries X-Forwarded-For: a proxy relayed it"
    )
    trusting = ProcessUtilization(
        hello, clock=clock, stats_path=PATH, allow=AccessList.parse(["127.0.0.1"], proxied=True)
    )
    env = {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.9"}
    assert wsgi_get(trusting, **env)[0] == "200 OK"


def test_allow_takes_networks_or_an_access_list(clock: Any) -> None:
    """allow= is what raindrops' middleware takes: networks, or an AccessList."""
    mw = ProcessUtilization(hello, clock=clock, stats_path=PATH, allow=["10.0.0.0/8"])
    assert wsgi_get(mw, REMOTE_ADDR="10.1.2.3")[0] == "200 OK"
    assert wsgi_get(mw, REMOTE_ADDR="127.0.0.1")[0] == "403 Forbidden"
    everyone = ProcessUtilization(hello, clock=clock, stats_path=PATH, allow=ALLOW_ALL)
    assert wsgi_get(everyone, REMOTE_ADDR="192.0.2.1")[0] == "200 OK"


@pytest.mark.parametrize(
    ("allow", "message"),
    [
        ("10.0.0.0/8", "allow must be a list of networks, not the single string '10.0.0.0/8'"),
        (
            ["nonsense"],
            "allow entry 'nonsense' is not an IP network like '10.0.0.0/8' or '::1/128'",
        ),
    ],
)
def test_a_bad_allow_is_a_config_error(allow: Any, message: str) -> None:
    """A malformed allow= raises ConfigError naming it."""
    with pytest.raises(ConfigError) as info:
        ProcessUtilization(hello, stats_path=PATH, allow=allow)
    assert str(info.value) == message


async def _asgi_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"app"})


def asgi_get(mw: AsgiProcessUtilization, **scope: Any) -> tuple[int, dict[bytes, bytes], bytes]:
    """One GET through the ASGI middleware; ``scope`` as given (no client unless said)."""
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    full = {"type": "http", "method": "GET", "path": PATH, "query_string": b"", "headers": []}
    full.update(scope)
    asyncio.run(mw(full, receive, send))
    return sent[0]["status"], dict(sent[0]["headers"]), sent[1]["body"]


def test_asgi_loopback_reads_and_another_client_is_refused(clock: Any) -> None:
    """Under ASGI, scope['client'] is judged as REMOTE_ADDR is."""
    mw = AsgiProcessUtilization(_asgi_app, clock=clock, stats_path=PATH)
    status, _, body = asgi_get(mw, client=("127.0.0.1", 5000), server=("127.0.0.1", 8000))
    assert (status, body[:7]) == (200, b"worker ")
    status, headers, body = asgi_get(mw, client=("192.0.2.1", 5000), server=("127.0.0.1", 8000))
    assert (status, headers[b"content-type"], headers[b"x-content-type-options"]) == (
        403,
        b"text/plain",
        b"nosniff",
    )
    assert body.decode() == NOT_LISTED.format(addr="192.0.2.1")
    assert asgi_get(mw, server=("127.0.0.1", 8000))[2].decode() == NO_ADDRESS


def test_asgi_unix_peer_as_uvicorn_sets_it(clock: Any) -> None:
    """uvicorn --uds: client None, server [path, None]; allowed, refused with X-Forwarded-For."""
    mw = AsgiProcessUtilization(_asgi_app, clock=clock, stats_path=PATH)
    unix = {"client": None, "server": ["/run/app.sock", None]}
    assert asgi_get(mw, **unix)[0] == 200
    relayed = asgi_get(mw, **unix, headers=[(b"x-forwarded-for", b"203.0.113.9")])
    assert relayed[0] == 403
    assert relayed[2].decode() == RELAYED.format(via="over a Unix socket", header="X-Forwarded-For")


@pytest.mark.parametrize(
    ("path", "root_path", "table"),
    [
        ("/ops/_utilization", "/ops", True),  # Starlette's Mount, uvicorn --root-path
        ("/_utilization", "/ops", True),  # a server that strips the root path
        ("/_utilization", "", True),
        ("/opsx/_utilization", "/ops", False),  # not below the mount point
        ("/ops/_utilization", "", False),
    ],
)
def test_asgi_table_is_found_below_its_mount_point(
    clock: Any, path: str, root_path: str, table: bool
) -> None:
    """The ASGI table is at stats_path below scope['root_path'], as raindrops' endpoint is."""
    mw = AsgiProcessUtilization(_asgi_app, clock=clock, stats_path=PATH)
    client = {"client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    _, _, body = asgi_get(mw, path=path, root_path=root_path, **client)
    assert body.startswith(b"worker ") is table
    assert mw.total_requests == (0 if table else 1)


def test_asgi_table_under_a_starlette_mount() -> None:
    """Mounted under /ops in Starlette, GET /ops/_utilization answers the table."""
    mw = AsgiProcessUtilization(_asgi_app, stats_path=PATH)
    outer = Starlette(routes=[Mount("/ops", app=mw)])

    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=outer)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.get("/ops/_utilization", params={"format": "json"})

    resp = asyncio.run(main())
    assert resp.status_code == 200
    assert json.loads(resp.text)["total"]["requests_total"] == 0
