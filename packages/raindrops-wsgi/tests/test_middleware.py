"""The WSGI middleware, driven with WebOb's Request.blank (no server)."""

from __future__ import annotations

import errno
import io
import socket
import wsgiref.util
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from linux_inet_diag import ListenOverflows, UnavailableError
from raindrops_core import ANONYMOUS, RaindropsState
from raindrops_core.adapter import Kernel
from raindrops_wsgi import ConfigError, RaindropsMiddleware
from webob import Request

Environ = dict[str, Any]


def _hello(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello\n"]


def _middleware(app: Any = _hello, **kwargs: Any) -> RaindropsMiddleware:
    kwargs.setdefault("listeners", [])
    kwargs.setdefault("segment", ANONYMOUS)
    return RaindropsMiddleware(app, **kwargs)


def _stats(mw: RaindropsMiddleware) -> bytes:
    return Request.blank(mw.state.path, remote_addr="127.0.0.1").get_response(mw).body


def test_endpoint_answers_ruby_text_with_exact_headers() -> None:
    """GET /_raindrops answers the plain text with Content-Type and Content-Length."""
    mw = _middleware()
    resp = Request.blank("/_raindrops", remote_addr="127.0.0.1").get_response(mw)
    assert (resp.status, resp.body) == ("200 OK", b"calling: 0\nwriting: 0\n")
    assert resp.headerlist == [("Content-Type", "text/plain"), ("Content-Length", "22")]


@pytest.mark.linux
def test_endpoint_lists_a_listener_with_its_queue() -> None:
    """A listener given by name gets its ``active`` and ``queued`` lines from the kernel."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        name = f"127.0.0.1:{sock.getsockname()[1]}"
        client = socket.create_connection(sock.getsockname(), timeout=5)
        try:
            mw = _middleware(listeners=[name])
            assert _stats(mw) == (
                f"calling: 0\nwriting: 0\n{name} active: 0\n{name} queued: 1\n".encode()
            )
        finally:
            client.close()
    finally:
        sock.close()


def test_calling_counts_the_request_inside_the_app() -> None:
    """While the app runs, ``calling`` is 1; the endpoint request itself is not counted."""
    seen: list[bytes] = []

    def app(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        seen.append(_stats(mw))
        return _hello(environ, start_response)

    mw = _middleware(app)
    assert Request.blank("/").get_response(mw).body == b"hello\n"
    assert seen == [b"calling: 1\nwriting: 0\n"]
    assert _stats(mw) == b"calling: 0\nwriting: 0\n"


def test_writing_lasts_until_the_server_closes_the_body() -> None:
    """``writing`` counts a body from the app's return until ``close()``, once."""
    closed: list[bool] = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            yield b"a"
            yield b"b"

        def close(self) -> None:
            closed.append(True)

    def app(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [])
        return Body()

    mw = _middleware(app)
    environ = Request.blank("/").environ
    body = mw(environ, lambda *a: None)
    assert _stats(mw) == b"calling: 0\nwriting: 1\n"
    assert list(body) == [b"a", b"b"]
    assert _stats(mw) == b"calling: 0\nwriting: 1\n"
    body.close()  # type: ignore[attr-defined]
    body.close()  # type: ignore[attr-defined]
    assert closed == [True]
    assert _stats(mw) == b"calling: 0\nwriting: 0\n"


def test_inner_close_raising_still_ends_writing() -> None:
    """If the app body's ``close()`` raises, the error propagates and ``writing`` drops."""

    class Body(list[bytes]):
        def close(self) -> None:
            raise OSError("disk on fire")

    def app(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [])
        return Body([b"x"])

    mw = _middleware(app)
    body = mw(Request.blank("/").environ, lambda *a: None)
    with pytest.raises(OSError, match="disk on fire"):
        body.close()  # type: ignore[attr-defined]
    assert _stats(mw) == b"calling: 0\nwriting: 0\n"


def test_app_exception_propagates_and_leaves_gauges_at_zero() -> None:
    """An exception from the app reaches the server; ``calling`` is back to 0."""

    def app(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        raise KeyError("boom")

    mw = _middleware(app)
    with pytest.raises(KeyError, match="boom"):
        mw(Request.blank("/").environ, lambda *a: None)
    assert _stats(mw) == b"calling: 0\nwriting: 0\n"


def test_file_wrapper_keeps_its_type_and_is_counted() -> None:
    """A ``wsgi.file_wrapper`` body comes back as the same instance, closed and counted."""
    data = io.BytesIO(b"file body")

    def app(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [])
        wrapper: Iterable[bytes] = environ["wsgi.file_wrapper"](data, 4)
        return wrapper

    mw = _middleware(app)
    environ = Request.blank("/").environ
    environ["wsgi.file_wrapper"] = wsgiref.util.FileWrapper
    body = mw(environ, lambda *a: None)
    assert type(body) is wsgiref.util.FileWrapper
    assert _stats(mw) == b"calling: 0\nwriting: 1\n"
    assert b"".join(body) == b"file body"
    body.close()  # type: ignore[attr-defined]
    assert data.closed
    assert _stats(mw) == b"calling: 0\nwriting: 0\n"


def test_slotted_file_wrapper_falls_back_to_the_proxy() -> None:
    """A file wrapper whose ``close`` cannot be replaced is proxied, still counted."""

    class Slotted:
        __slots__ = ("f",)

        def __init__(self, f: io.BytesIO, blksize: int = 8192) -> None:
            self.f = f

        def __iter__(self) -> Iterator[bytes]:
            yield self.f.read()

        def close(self) -> None:
            self.f.close()

    data = io.BytesIO(b"z")

    def app(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [])
        wrapper: Iterable[bytes] = environ["wsgi.file_wrapper"](data)
        return wrapper

    mw = _middleware(app)
    environ = Request.blank("/").environ
    environ["wsgi.file_wrapper"] = Slotted
    body = mw(environ, lambda *a: None)
    assert type(body) is not Slotted
    assert list(body) == [b"z"]
    body.close()  # type: ignore[attr-defined]
    assert data.closed
    assert _stats(mw) == b"calling: 0\nwriting: 0\n"


def test_head_any_method_json_and_prometheus() -> None:
    """Any method is answered; HEAD has no body; Accept and ?format= pick the format."""
    mw = _middleware()
    head = Request.blank("/_raindrops", method="HEAD", remote_addr="::1").get_response(mw)
    assert (head.status_int, head.body, head.headers["Content-Length"]) == (200, b"", "22")
    post = Request.blank("/_raindrops", method="POST", remote_addr="::1").get_response(mw)
    assert post.body == b"calling: 0\nwriting: 0\n"
    req = Request.blank("/_raindrops", remote_addr="127.0.0.1", accept="application/json")
    resp = req.get_response(mw)
    assert resp.content_type == "application/json"
    assert resp.json["calling"] == 0
    prom = Request.blank("/_raindrops?format=prometheus", remote_addr="127.0.0.1").get_response(mw)
    assert prom.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert b"\nraindrops_calling 0.0\n" in prom.body


def test_forbidden_client_and_bad_format() -> None:
    """Clients outside ``allow`` get 403; an unknown ``?format=`` gets 400."""
    mw = _middleware(allow=["10.0.0.0/8"])
    assert Request.blank("/_raindrops", remote_addr="127.0.0.1").get_response(mw).status_int == 403
    ok = Request.blank("/_raindrops?format=xml", remote_addr="10.2.3.4").get_response(mw)
    assert ok.status_int == 400


def test_custom_path_and_other_paths_pass_through() -> None:
    """Only PATH_INFO equal to ``path`` is the endpoint; the default path then reaches the app."""
    mw = _middleware(path="/-/stats")
    assert Request.blank("/_raindrops").get_response(mw).body == b"hello\n"
    stats = Request.blank("/-/stats", remote_addr="127.0.0.1").get_response(mw)
    assert stats.body == b"calling: 0\nwriting: 0\n"


def test_shared_state_and_repr() -> None:
    """A ready state can be shared; the repr names the app and state."""
    state = RaindropsState(listeners=[], segment=ANONYMOUS)
    mw = RaindropsMiddleware(_hello, state=state)
    assert mw.state is state
    assert repr(mw).startswith("RaindropsMiddleware(<function _hello")


def test_malformed_listener_fails_at_construction() -> None:
    """A bad listener name is a ConfigError when the middleware is built."""
    with pytest.raises(ConfigError, match="malformed listener 'nohost'"):
        RaindropsMiddleware(_hello, listeners=["nohost"])


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
    """X-Raindrops-Unavailable names the parts this answer lacks (GET and HEAD); else absent."""

    class Diag:
        def tcp_listener_stats(self, names: list[str]) -> dict[str, Any]:
            if "listeners" in broken:
                _unavailable()
            return {}

        def close(self) -> None:
            return None

    def read() -> ListenOverflows:
        if "overflows" in broken:
            _unavailable()
        return ListenOverflows(listen_overflows=1, listen_drops=2)

    kernel = Kernel(diag=Diag, listen_overflows=read)  # type: ignore[arg-type]
    state = RaindropsState(listeners=["127.0.0.1:9"], segment=ANONYMOUS, kernel=kernel)
    mw = RaindropsMiddleware(_hello, state=state)
    for method in ("GET", "HEAD"):
        req = Request.blank(f"/_raindrops{query}", method=method, remote_addr="127.0.0.1")
        resp = req.get_response(mw)
        assert resp.status_int == 200
        assert resp.headers.get("X-Raindrops-Unavailable") == header


def test_steps_are_bound_once_per_process_and_used_per_request() -> None:
    """The first request prepares the state's Steps; later requests step the same row."""
    mw = _middleware()
    before = mw.state.steps
    assert Request.blank("/").get_response(mw).body == b"hello\n"
    steps = mw.state.steps
    assert (before, steps is not None) == (None, True)
    body = mw(Request.blank("/").environ, lambda *a: None)
    assert mw.state.steps is steps
    assert mw.state.counts() == (0, 1)
    body.close()  # type: ignore[attr-defined]
    body.close()  # type: ignore[attr-defined]
    assert mw.state.counts() == (0, 0)


def test_forbidden_body_says_how_to_allow_more() -> None:
    """The 403 names the allow= option and ALLOW_ALL."""
    mw = _middleware()
    resp = Request.blank("/_raindrops", remote_addr="192.0.2.1").get_response(mw)
    assert (resp.status_int, resp.body) == (
        403,
        b"403 Forbidden: client 192.0.2.1 is not in the allow-list (loopback only by default); "
        b"to allow more, pass allow=['10.0.0.0/8', ...] or allow=ALLOW_ALL\n",
    )
