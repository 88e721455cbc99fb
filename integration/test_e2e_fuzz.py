"""Bad input: the stats endpoint, the Watcher and the utilization endpoint, fuzzed.

In-process (a WSGI environ built from ``webob.Request.blank``, an ASGI scope
called directly) for volume, then a handful of hostile requests against a
real server.  Whatever the method, path (``..``, percent-encoding, markup),
query string or headers (very long values included): never a 500, never a
traceback in the body, and markup from the request never appears unescaped
in an HTML page.  Malformed configuration is rejected at construction with
the exact messages below.
"""

from __future__ import annotations

import asyncio
import math
import re
import socket
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from linux_inet_diag import ListenStats
from process_utilization import ConfigError as PuConfigError
from process_utilization import ProcessUtilization
from process_utilization.asgi import ProcessUtilization as AsgiProcessUtilization
from raindrops_asgi import RaindropsMiddleware as AsgiRaindrops
from raindrops_asgi.watcher import Watcher as AsgiWatcher
from raindrops_core import ConfigError as RdConfigError
from raindrops_core.watcher import PAGE_SCRIPT
from servers import bind_tcp, launch, tcp

with warnings.catch_warnings():
    # WebOb 1.8 imports the stdlib ``cgi`` module, deprecated since Python 3.11: not ours.
    warnings.filterwarnings("ignore", "'cgi' is deprecated", DeprecationWarning)
    from raindrops_wsgi import RaindropsMiddleware as WsgiRaindrops
    from raindrops_wsgi.watcher import Watcher as WsgiWatcher
    from webob import Request  # type: ignore[import-untyped]

pytestmark = [pytest.mark.timeout(300)]

LISTENERS = ["127.0.0.1:8080", "[::1]:8080", "/run/app.sock"]
FUZZ = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _fetch(names: Any) -> dict[str, ListenStats]:
    return {n: ListenStats(2, 1, 128) for n in (names or LISTENERS)}


def _hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello\n"]


async def _ahello(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello\n"})


# -- strategies ----------------------------------------------------------------

NASTY = [
    "..",
    "%2e%2e",
    "%2F",
    "%00",
    "<script>x</script>",
    "\"'&",
    "%3Cb%3E",
    "é",
    "\u2028",
    ";",
    "//",
]
segment = st.one_of(st.sampled_from(NASTY), st.text(min_size=0, max_size=20))
METHODS = st.sampled_from(
    ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "BREW"]
)
QUERY = st.one_of(
    st.just(""),
    st.sampled_from(
        [
            "format=json",
            "format=prometheus",
            "format=html",
            "format=<b>",
            "format=",
            "format=json&format=text",
            "queued_min=x",
            "queued_min=-1",
            "active_min=99999999999999999999",
            "%ff%fe",
            "a=%3Cscript%3E",
        ]
    ),
    st.text(max_size=60),
)
ACCEPT = st.one_of(
    st.none(),
    st.sampled_from(
        ["text/html", "application/json", "text/plain;version=0.0.4", "*/*", "<x>", "text/html;q=x"]
    ),
    st.text(max_size=40),
)
LONG = st.integers(min_value=1, max_value=20_000).map(lambda n: "x" * n)


def _wsgi_path(parts: list[str]) -> str:
    """A WSGI ``PATH_INFO``: text as latin-1 decoded bytes, as servers give it."""
    return ("/" + "/".join(parts)).encode("utf-8", "surrogatepass").decode("latin-1")


def _watcher_paths() -> st.SearchStrategy[str]:
    name = st.one_of(st.sampled_from([*LISTENERS, "127.0.0.1%3A8080", "nope", "<x>"]), segment)
    kind = st.sampled_from(["active", "queued", "tail", "reset", "", "index.json", "x"])
    ext = st.sampled_from([".txt", ".html", ".json", "", ".<b>", "/.."])
    return st.builds(lambda k, n, e: _wsgi_path([k, f"{n}{e}"]), kind, name, ext)


# -- in-process callers ----------------------------------------------------------


def _call_wsgi(
    app: Any, method: str, path: str, query: str, headers: dict[str, str]
) -> tuple[int, str, bytes]:
    environ = Request.blank("/").environ
    environ.update(
        REQUEST_METHOD=method, PATH_INFO=path, QUERY_STRING=query, REMOTE_ADDR="127.0.0.1"
    )
    for key, value in headers.items():
        environ["HTTP_" + key.upper().replace("-", "_")] = value
    got: list[Any] = []

    def start_response(status: str, hdrs: list[tuple[str, str]], exc_info: Any = None) -> Any:
        got[:] = [status, hdrs]
        return lambda data: None

    body = app(environ, start_response)
    data = b""
    try:
        for chunk in body:
            data += chunk
            if len(data) > 1_000_000:
                break
    finally:
        if hasattr(body, "close"):
            body.close()
    ctype = {k.lower(): v for k, v in got[1]}.get("content-type", "")
    return int(got[0].split()[0]), ctype, data


def _call_asgi(
    app: Any, method: str, path: str, query: str, headers: dict[str, str]
) -> tuple[int, str, bytes]:
    raw_path = path.encode("latin-1")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": raw_path.decode("utf-8", "replace"),
        "raw_path": raw_path,
        "root_path": "",
        "query_string": query.encode("utf-8", "surrogatepass"),
        "headers": [
            (k.lower().encode(), v.encode("latin-1", "replace")) for k, v in headers.items()
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
    }
    messages: list[dict[str, Any]] = []
    sent_request = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_request
        if not sent_request:
            sent_request = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(0.02)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    async def main() -> None:
        await asyncio.wait_for(app(scope, receive, send), 10)

    asyncio.run(main())
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    hdrs = {k.decode().lower(): v.decode() for k, v in start.get("headers", [])}
    return start["status"], hdrs.get("content-type", ""), body


def _check(status: int, ctype: str, body: bytes, inputs: list[str]) -> None:
    assert status < 500, (status, body[:500])
    assert b"Traceback" not in body
    if ctype.startswith("text/html"):
        for text in inputs:
            if "<" in text:
                assert text.encode("utf-8", "replace") not in body, (text, body[:500])
                assert text.encode("latin-1", "replace") not in body, (text, body[:500])


# -- the fuzz tests ----------------------------------------------------------------

wsgi_stats = WsgiRaindrops(_hello, listeners=LISTENERS, segment="anonymous")
asgi_stats = AsgiRaindrops(_ahello, listeners=LISTENERS, segment="anonymous")


@FUZZ
@given(
    method=METHODS,
    suffix=st.one_of(
        st.just(""), st.builds(lambda p: _wsgi_path(p)[0:], st.lists(segment, max_size=3))
    ),
    query=QUERY,
    accept=ACCEPT,
    long=LONG,
    asgi=st.booleans(),
)
def test_stats_endpoint_fuzzed(
    method: str, suffix: str, query: str, accept: str | None, long: str, asgi: bool
) -> None:
    """The /_raindrops endpoint (and paths near it) never answers 500 or a traceback."""
    path = "/_raindrops" + (suffix if suffix != "/" else "")
    headers = {"X-Long": long, "User-Agent": long[:300]}
    if accept is not None:
        headers["Accept"] = accept
    call = _call_asgi if asgi else _call_wsgi
    status, ctype, body = call(asgi_stats if asgi else wsgi_stats, method, path, query, headers)
    _check(status, ctype, body, [path, query, accept or ""])


@FUZZ
@given(method=METHODS, path=_watcher_paths(), query=QUERY, accept=ACCEPT, asgi=st.booleans())
def test_watcher_fuzzed(method: str, path: str, query: str, accept: str | None, asgi: bool) -> None:
    """The Watcher never answers 500 or a traceback, and escapes request text in HTML."""
    headers = {} if accept is None else {"Accept": accept}
    call = _call_asgi if asgi else _call_wsgi
    status, ctype, body = call(ASGI_WATCHER if asgi else WSGI_WATCHER, method, path, query, headers)
    _check(status, ctype, body, [path, query, accept or ""])


#: Every statsd name the middleware sends must be made of these characters.
STATSD_NAME = re.compile(r"[a-z0-9_.]+")
#: The methods that may appear in a per-method timing name (rack-statsd's).
STATSD_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE"})
ANY_METHOD = st.one_of(
    METHODS,
    st.sampled_from(["get", "Get", "PROPFIND", "M-SEARCH", "<script>", "GET /x", "", "É", "a.b"]),
    st.text(min_size=1, max_size=12),
)
UTILIZATION_PATHS = st.one_of(
    st.just("/_utilization"),
    st.builds(lambda p: "/_utilization" + _wsgi_path(p), st.lists(segment, min_size=1, max_size=3)),
    st.builds(_wsgi_path, st.lists(segment, max_size=3)),
)


class _UdpStatsd:
    """A minimal statsd client: what the middleware calls (``timing``, ``incr``), one datagram each.

    Sends statsd's line format (``name:value|ms``, ``name:1|c``) to the test's
    own UDP socket on 127.0.0.1.  Unlike the ``statsd`` package, which drops a
    name that does not encode as ASCII, it delivers every name it is given,
    so every name the middleware produced reaches the check.
    """

    def __init__(self, address: tuple[str, int]) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._address = address

    def timing(self, stat: str, delta: float, rate: float = 1) -> None:
        self._send(f"{stat}:{delta:.6f}|ms")

    def incr(self, stat: str, count: int = 1, rate: float = 1) -> None:
        self._send(f"{stat}:{count}|c")

    def _send(self, line: str) -> None:
        self._sock.sendto(line.encode("utf-8", "surrogatepass"), self._address)

    def close(self) -> None:
        self._sock.close()


@pytest.fixture(scope="module")
def statsd_stack() -> Iterator[tuple[socket.socket, Any, Any]]:
    """A UDP sink on 127.0.0.1 and WSGI and ASGI middleware sending statsd metrics to it."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setblocking(False)
    client = _UdpStatsd(sink.getsockname())
    wsgi = ProcessUtilization(_hello, stats_path="/_utilization", statsd=client)
    asgi = AsgiProcessUtilization(_ahello, stats_path="/_utilization", statsd=client)
    try:
        yield sink, wsgi, asgi
    finally:
        wsgi.close()
        asgi.close()
        client.close()
        sink.close()


def _statsd_names(sink: socket.socket) -> list[str]:
    """Drain the sink (loopback datagrams are queued by the time ``sendto`` returns)."""
    names = []
    for _ in range(10_000):
        try:
            data = sink.recv(65536)
        except BlockingIOError:
            break
        names.append(data.decode("utf-8", "surrogatepass").rpartition(":")[0])
    return names


@FUZZ
@given(
    method=ANY_METHOD,
    path=UTILIZATION_PATHS,
    query=QUERY,
    accept=ACCEPT,
    long=LONG,
    asgi=st.booleans(),
)
def test_utilization_endpoint_fuzzed(
    statsd_stack: tuple[socket.socket, Any, Any],
    method: str,
    path: str,
    query: str,
    accept: str | None,
    long: str,
    asgi: bool,
) -> None:
    """The utilization middleware with statsd on: no 500, no traceback, clean statsd names."""
    sink, wsgi_pu, asgi_pu = statsd_stack
    _statsd_names(sink)
    headers = {"X-Long": long}
    if accept is not None:
        headers["Accept"] = accept
    call = _call_asgi if asgi else _call_wsgi
    status, ctype, body = call(asgi_pu if asgi else wsgi_pu, method, path, query, headers)
    _check(status, ctype, body, [path, query, accept or ""])
    names = _statsd_names(sink)
    # The endpoint is not a counted request; anything else sends its metrics.
    assert (names == []) == (path == "/_utilization"), (path, names)
    assert [n for n in names if not STATSD_NAME.fullmatch(n)] == [], (method, names)
    if method.upper() not in STATSD_METHODS:
        # A per-method timing name never carries any other method's text.
        per_method = [n.split(".")[1:] for n in names if not n.startswith("status_code.")]
        assert [p for p in per_method if method.lower() in p] == [], (method, names)


WSGI_WATCHER = WsgiWatcher(LISTENERS, delay=0.05, tail_max_seconds=0.05, fetch=_fetch)
ASGI_WATCHER = AsgiWatcher(LISTENERS, delay=0.05, tail_max_seconds=0.05, fetch=_fetch)


@pytest.fixture(autouse=True, scope="module")
def _close_watchers() -> Any:
    yield
    WSGI_WATCHER.close()
    asyncio.run(ASGI_WATCHER.aclose())


# -- against a real server -----------------------------------------------------------

HOSTILE = [
    b"GET /_raindrops/../_raindrops HTTP/1.1\r\nHost: t\r\n",
    b"GET /_raindrops?format=%3Cscript%3E HTTP/1.1\r\nHost: t\r\n",
    b"GET /_raindrops?format=<script> HTTP/1.1\r\nHost: t\r\nAccept: <x>\r\n",
    b"DELETE /_raindrops HTTP/1.1\r\nHost: t\r\n",
    b"GET /%2e%2e/_raindrops HTTP/1.1\r\nHost: t\r\n",
    b"GET /_raindrops HTTP/1.1\r\nHost: t\r\nAccept: " + b"a" * 7000 + b"\r\n",
    b"GET /_utilization?format=<b>&format=html HTTP/1.1\r\nHost: t\r\n",
    b"POST /_utilization?%ff%fe HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",
    b"GET /_utilization HTTP/1.1\r\nHost: t\r\nAccept: text/html;q=<x>\r\n",
    b"GET /_raindrops?format=prometheus&" + b"q" * 3000 + b" HTTP/1.1\r\nHost: t\r\n",
]


@pytest.mark.linux
@pytest.mark.skipif(sys.platform != "linux", reason="needs Linux")
@pytest.mark.parametrize("kind", ["gunicorn-gthread", "uvicorn"])
def test_hostile_requests_against_a_real_server(kind: str, tmp_path: Path) -> None:
    """Hostile requests to both endpoints under a real server: no 5xx, no traceback anywhere."""
    app = "e2e_stack:asgi" if kind == "uvicorn" else "e2e_stack:wsgi"
    env = {
        "RAINDROPS_SEGMENT": str(tmp_path / "raindrops.seg"),
        "PROCESS_UTILIZATION_SEGMENT": str(tmp_path / "utilization.seg"),
    }
    with launch(kind, app, tcp(), workers=2, env=env) as server:
        for raw in HOSTILE:
            head = raw if b"\r\n\r\n" in raw else raw + b"Connection: close\r\n\r\n"
            if b"\r\n\r\n" in raw:
                head = raw.replace(b"Host: t\r\n", b"Host: t\r\nConnection: close\r\n", 1)
            conn = server.connect(10)
            try:
                conn.sendall(head)
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
            finally:
                conn.close()
            status = int(data.split(b" ", 2)[1])
            assert status < 500, (raw[:80], data[:300])
            assert b"Traceback" not in data
            head_part, _, body = data.partition(b"\r\n\r\n")
            if b"content-type: text/html" in head_part.lower():
                assert b"<script>" not in body, data[:300]
                assert b"<b>" not in body, data[:300]
        assert "Traceback" not in server.log()


WATCHER_HOSTILE = [
    b"GET /?<script>=<b> HTTP/1.1\r\nHost: t\r\nAccept: text/html\r\n",
    b"GET /active/127.0.0.1%3A1.html?<script> HTTP/1.1\r\nHost: t\r\n",
    b"GET /active/%3Cscript%3E.html HTTP/1.1\r\nHost: t\r\n",
    b"GET /queued/<script>.html HTTP/1.1\r\nHost: t\r\n",
    b"GET /queued/..%2F..%2Fetc%2Fpasswd.html HTTP/1.1\r\nHost: t\r\n",
    b"GET /../../etc/passwd HTTP/1.1\r\nHost: t\r\n",
    b"GET /tail/127.0.0.1%3A1.txt?queued_min=<b> HTTP/1.1\r\nHost: t\r\n",
    b"POST /reset/%3Cb%3E HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n",
    b"GET /index.json?x=<b> HTTP/1.1\r\nHost: t\r\n",
    b"GET /active/" + b"9" * 4000 + b".html HTTP/1.1\r\nHost: t\r\n",
    b"BREW /active/127.0.0.1%3A1.html HTTP/1.1\r\nHost: t\r\n",
]


def _raw_exchange(server: Any, raw: bytes) -> bytes:
    conn = server.connect(10)
    try:
        conn.sendall(raw + b"Connection: close\r\n\r\n")
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    finally:
        conn.close()
    return data


@pytest.mark.linux
@pytest.mark.skipif(sys.platform != "linux", reason="needs Linux")
def test_hostile_requests_against_a_real_watcher(tmp_path: Path) -> None:
    """Hostile requests to the Watcher under gunicorn gthread: no 5xx, no traceback, escaped."""
    with bind_tcp() as watched:
        env = {
            "WATCH_LISTENERS": f"127.0.0.1:{watched.getsockname()[1]},127.0.0.1:1",
            "WATCH_DELAY": "0.05",
            "WATCH_TAIL_MAX": "0.3",
        }
        with launch(
            "gunicorn-gthread", "watcher_apps:wsgi_watcher", tcp(), workers=1, env=env
        ) as server:
            for raw in WATCHER_HOSTILE:
                data = _raw_exchange(server, raw)
                status = int(data.split(b" ", 2)[1])
                assert status < 500, (raw[:80], data[:300])
                assert b"Traceback" not in data
                head_part, _, body = data.partition(b"\r\n\r\n")
                if b"content-type: text/html" in head_part.lower():
                    # The page's own self-refresh is its only script.
                    assert b"<script" not in body.replace(PAGE_SCRIPT.encode(), b""), data[:300]
                    assert b"<b>" not in body, data[:300]
            assert "Traceback" not in server.log()


# -- malformed configuration -----------------------------------------------------------

LISTENER_HELP = (
    "expected 'IPV4:PORT' (e.g. '127.0.0.1:8080', '0.0.0.0:8080'), '[IPV6]:PORT' "
    "(e.g. '[::1]:8080', '[::]:8080') with PORT 1-65535, or a Unix socket path "
    "('/path/to/unix.sock', '@abstract')"
)
RD_CASES: list[tuple[str, dict[str, Any], str]] = [
    (
        "listener no port",
        {"listeners": ["nohost"]},
        f"malformed listener 'nohost': "
        f"invalid listener name 'nohost': not of the form 'IPV4:PORT'; {LISTENER_HELP}",
    ),
    (
        "listener port range",
        {"listeners": ["127.0.0.1:99999"]},
        "malformed listener '127.0.0.1:99999': "
        f"invalid listener name '127.0.0.1:99999': "
        f"port 99999 out of range 1-65535; {LISTENER_HELP}",
    ),
    (
        "listener v6 brackets",
        {"listeners": ["::1:80"]},
        f"malformed listener '::1:80': "
        f"invalid listener name '::1:80': an IPv6 address needs brackets; {LISTENER_HELP}",
    ),
    (
        "listeners one string",
        {"listeners": "127.0.0.1:80"},
        "listeners must be a list of names, not the single string '127.0.0.1:80'",
    ),
    ("listener not str", {"listeners": [80]}, "listener 80 is not a string like '127.0.0.1:8080'"),
    ("slots zero", {"slots": 0}, "slots must be an int >= 1, not 0"),
    ("slots str", {"slots": "4"}, "slots must be an int >= 1, not '4'"),
    (
        "path relative",
        {"path": "_raindrops"},
        "path must be a string starting with '/', not '_raindrops'",
    ),
    (
        "segment relative",
        {"segment": "rel/seg"},
        "segment 'rel/seg' is not an absolute path; "
        "give one like '/dev/shm/myapp.raindrops', or 'anonymous'",
    ),
    (
        "allow",
        {"allow": ["not-a-net"]},
        "allow entry 'not-a-net' is not an IP network like '10.0.0.0/8' or '::1/128'",
    ),
]


@pytest.mark.parametrize("asgi", [False, True], ids=["wsgi", "asgi"])
@pytest.mark.parametrize(("case", "options", "message"), RD_CASES, ids=[c[0] for c in RD_CASES])
def test_raindrops_middleware_rejects_bad_config(
    case: str, options: dict[str, Any], message: str, asgi: bool
) -> None:
    """A malformed middleware option raises ConfigError (a ValueError) with this exact message."""
    cls: Any = AsgiRaindrops if asgi else WsgiRaindrops
    with pytest.raises(RdConfigError) as info:
        cls(_ahello if asgi else _hello, **options)
    assert isinstance(info.value, ValueError)
    assert str(info.value) == message


WATCHER_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("delay zero", {"delay": 0}, "delay must be a positive, finite number of seconds, not 0"),
    ("delay negative", {"delay": -1}, "delay must be a positive, finite number of seconds, not -1"),
    (
        "delay nan",
        {"delay": math.nan},
        "delay must be a positive, finite number of seconds, not nan",
    ),
    ("delay str", {"delay": "x"}, "delay must be a positive, finite number of seconds, not 'x'"),
    ("history zero", {"history": 0}, "history must be a positive int, not 0"),
    (
        "tail max",
        {"tail_max_seconds": -1},
        "tail_max_seconds must be a positive number of seconds or None, not -1",
    ),
    (
        "listener",
        {"listeners": ["bad name"]},
        f"malformed listener 'bad name': "
        f"invalid listener name 'bad name': not of the form 'IPV4:PORT'; {LISTENER_HELP}",
    ),
]


@pytest.mark.parametrize("asgi", [False, True], ids=["wsgi", "asgi"])
@pytest.mark.parametrize(
    ("case", "options", "message"), WATCHER_CASES, ids=[c[0] for c in WATCHER_CASES]
)
def test_watcher_rejects_bad_config(
    case: str, options: dict[str, Any], message: str, asgi: bool
) -> None:
    """A malformed Watcher option raises ConfigError with this exact message."""
    cls: Any = AsgiWatcher if asgi else WsgiWatcher
    options = {"listeners": ["127.0.0.1:8080"], **options}
    with pytest.raises(RdConfigError) as info:
        cls(options.pop("listeners"), **options)
    assert str(info.value) == message


PU_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("window zero", {"window": 0}, "window must be a positive number of seconds, got 0"),
    ("window inf", {"window": math.inf}, "window must be a positive number of seconds, got inf"),
    ("slots zero", {"slots": 0}, "slots must be a positive integer, got 0"),
    (
        "stats path",
        {"stats_path": "stats"},
        "stats_path must be None or a path starting with '/', got 'stats'",
    ),
    (
        "report interval",
        {"report_interval": 0},
        "report_interval must be a positive number of seconds or None, got 0",
    ),
    (
        "statsd",
        {"statsd": "nohostport"},
        "statsd must be a client or 'host:port', got 'nohostport'",
    ),
]


@pytest.mark.parametrize("asgi", [False, True], ids=["wsgi", "asgi"])
@pytest.mark.parametrize(("case", "options", "message"), PU_CASES, ids=[c[0] for c in PU_CASES])
def test_process_utilization_rejects_bad_config(
    case: str, options: dict[str, Any], message: str, asgi: bool
) -> None:
    """A malformed process-utilization option raises ConfigError with this exact message."""
    cls: Any = AsgiProcessUtilization if asgi else ProcessUtilization
    with pytest.raises(PuConfigError) as info:
        cls(_ahello if asgi else _hello, **options)
    assert isinstance(info.value, ValueError)
    assert str(info.value) == message
