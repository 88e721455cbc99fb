"""The WSGI apps against proxies, other users and sloppy layers: access, names, close()."""

from __future__ import annotations

import gc
import os
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from raindrops_core import ANONYMOUS, AccessList
from raindrops_wsgi import RaindropsMiddleware
from raindrops_wsgi.watcher import Watcher
from webob import Request

Environ = dict[str, Any]
RELAYED = (
    b"403 Forbidden: the request came over a Unix socket with X-Forwarded-For: a proxy "
    b"relayed it, and its client is unknown\n"
)


def _hello(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello\n"]


@pytest.fixture
def unix_client() -> Iterator[socket.socket]:
    """What gunicorn hands a worker for a request over ``-b unix:PATH``: an AF_UNIX socket."""
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        yield a


def unix_request(path: str, sock: socket.socket, **headers: str) -> Request:
    """A request as gunicorn sync/gthread builds it over a Unix socket: REMOTE_ADDR ''."""
    req = Request.blank(path, headers=headers)
    req.environ.update({"REMOTE_ADDR": "", "gunicorn.socket": sock})
    return req


def test_unix_peer_without_forwarding_headers_is_allowed(unix_client: socket.socket) -> None:
    """A local ``curl --unix-socket`` reads the endpoint."""
    mw = RaindropsMiddleware(_hello, listeners=[], segment=ANONYMOUS)
    resp = unix_request("/_raindrops", unix_client).get_response(mw)
    assert (resp.status_int, resp.body) == (200, b"calling: 0\nwriting: 0\n")


@pytest.mark.parametrize("header", ["X-Forwarded-For", "Forwarded", "X-Real-IP"])
def test_unix_peer_relayed_by_a_proxy_is_refused(unix_client: socket.socket, header: str) -> None:
    """nginx -> unix:/run/app.sock: any forwarding header makes it 403, nosniff."""
    mw = RaindropsMiddleware(_hello, listeners=[], segment=ANONYMOUS)
    resp = unix_request("/_raindrops", unix_client, **{header: "203.0.113.9"}).get_response(mw)
    assert resp.status_int == 403
    assert resp.body == RELAYED.replace(b"X-Forwarded-For", header.encode())
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


def test_no_remote_addr_and_loopback_proxies_are_refused() -> None:
    """An environ without REMOTE_ADDR, and a loopback peer relaying a client, get 403."""
    mw = RaindropsMiddleware(_hello, listeners=[], segment=ANONYMOUS)
    bare = Request.blank("/_raindrops").get_response(mw)
    assert (bare.status_int, bare.body) == (
        403,
        b"403 Forbidden: the server gave no client address (REMOTE_ADDR, scope['client']), "
        b"so the client is unknown\n",
    )
    proxied = Request.blank(
        "/_raindrops", remote_addr="127.0.0.1", headers={"X-Forwarded-For": "203.0.113.9"}
    ).get_response(mw)
    assert proxied.status_int == 403
    opted = RaindropsMiddleware(
        _hello,
        listeners=[],
        segment=ANONYMOUS,
        allow=AccessList.parse(["10.0.0.0/8"], proxied=True),
    )
    resolved = Request.blank(
        "/_raindrops", remote_addr="10.1.2.3", headers={"X-Forwarded-For": "10.1.2.3"}
    ).get_response(opted)
    assert resolved.status_int == 200


@pytest.mark.linux
def test_endpoint_escapes_a_hostile_listener_name() -> None:
    """A real abstract listener named with a newline and ESC is one escaped line per value."""
    name = f"@rd-wsgi-{os.getpid()}\ncalling: 999\x1b[2J"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("\0" + name[1:])
        sock.listen(1)
        mw = RaindropsMiddleware(_hello, listeners=[name], segment=ANONYMOUS)
        resp = Request.blank("/_raindrops", remote_addr="127.0.0.1").get_response(mw)
    shown = f"@rd-wsgi-{os.getpid()}\\ncalling: 999\\x1b[2J"
    assert resp.body == (f"calling: 0\nwriting: 0\n{shown} active: 0\n{shown} queued: 0\n".encode())


# -- the Watcher ------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    active: int
    queued: int


def fetch_of(values: Mapping[str, tuple[int, int]]) -> Callable[..., Mapping[str, Stats]]:
    def fetch(names: Sequence[str] | None) -> Mapping[str, Stats]:
        return {k: Stats(*v) for k, v in values.items()}

    return fetch


LATIN1 = os.fsdecode(b"/tmp/caf\xe9.sock")


@pytest.fixture
def watcher() -> Iterator[Watcher]:
    app = Watcher(None, delay=3600, fetch=fetch_of({"127.0.0.1:8080": (1, 2), LATIN1: (3, 4)}))
    try:
        yield app
    finally:
        app.close()


def test_watcher_refuses_like_the_endpoint(watcher: Watcher, unix_client: socket.socket) -> None:
    """Other addresses, no address and relayed Unix peers are refused; local ones read it."""
    assert Request.blank("/", remote_addr="192.0.2.1").get_response(watcher).status_int == 403
    assert Request.blank("/").get_response(watcher).status_int == 403
    relayed = unix_request("/", unix_client, **{"X-Forwarded-For": "203.0.113.9"})
    resp = relayed.get_response(watcher)
    assert (resp.status_int, resp.body) == (403, RELAYED)
    assert unix_request("/", unix_client).get_response(watcher).status_int == 200
    assert Request.blank("/", remote_addr="::1").get_response(watcher).status_int == 200


def test_watcher_reset_needs_the_same_origin(watcher: Watcher) -> None:
    """A cross-site form's POST is 403 and resets nothing; the Watcher's own form resets."""
    url = "/reset/127.0.0.1%3A8080"
    forged = Request.blank(
        url, method="POST", remote_addr="127.0.0.1",
        headers={"Origin": "http://evil.example", "Host": "127.0.0.1:9000"},
    ).get_response(watcher)  # fmt: skip
    assert (forged.status_int, forged.body) == (
        403,
        b"403 Forbidden: cross-origin request refused: Origin 'http://evil.example' is not "
        b"this site (Host '127.0.0.1:9000')\n",
    )
    assert watcher.engine.report("127.0.0.1:8080").queued.count == 1  # type: ignore[union-attr]
    own = Request.blank(
        url, method="POST", remote_addr="127.0.0.1",
        headers={"Origin": "http://127.0.0.1:9000", "Host": "127.0.0.1:9000",
                 "Sec-Fetch-Site": "same-origin"},
    ).get_response(watcher)  # fmt: skip
    assert own.status_int == 302
    assert watcher.engine.report("127.0.0.1:8080").queued.count == 0  # type: ignore[union-attr]


def test_watcher_serves_a_listener_whose_path_is_not_utf8(watcher: Watcher) -> None:
    """``/queued/%2Ftmp%2Fcaf%E9.sock.html`` finds ``/tmp/caf\\xe9.sock``, shown escaped."""
    Request.blank("/", remote_addr="127.0.0.1").get_response(watcher)
    index = Request.blank("/", remote_addr="127.0.0.1").get_response(watcher)
    assert index.status_int == 200
    assert b'href="/queued/%2Ftmp%2Fcaf%E9.sock.html">4</a>' in index.body
    page = Request.blank("/queued/%2Ftmp%2Fcaf%E9.sock.html", remote_addr="127.0.0.1")
    resp = page.get_response(watcher)
    assert resp.status_int == 200
    assert b"<h1>/tmp/caf\\xe9.sock queued</h1>" in resp.body
    text = Request.blank("/queued/%2Ftmp%2Fcaf%E9.sock.txt", remote_addr="127.0.0.1")
    assert text.get_response(watcher).headers["X-Current"] == "4"


# -- a body nobody closes -------------------------------------------------------------


def _counts(mw: RaindropsMiddleware) -> tuple[int, int]:
    return mw.state.counts()


def test_a_body_never_closed_stops_counting_when_collected() -> None:
    """An outer layer dropping the body without close() (against PEP 3333) leaks no writing."""
    mw = RaindropsMiddleware(_hello, listeners=[], segment=ANONYMOUS)

    def sloppy(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        return list(mw(environ, start_response))  # iterates, never closes

    for _ in range(3):
        assert sloppy(Request.blank("/").environ, lambda *a: None) == [b"hello\n"]
    gc.collect()
    assert _counts(mw) == (0, 0)

    def generated(environ: Environ, start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"x"

    gen_mw = RaindropsMiddleware(generated, listeners=[], segment=ANONYMOUS)
    body = gen_mw(Request.blank("/").environ, lambda *a: None)
    assert (list(body), _counts(gen_mw)) == ([b"x"], (0, 1))
    del body
    assert _counts(gen_mw) == (0, 0)


def test_closing_then_collecting_counts_once() -> None:
    """close() and then collection end writing once, never twice (no wrap to 2**64-1)."""
    mw = RaindropsMiddleware(_hello, listeners=[], segment=ANONYMOUS)
    body = mw(Request.blank("/").environ, lambda *a: None)
    body.close()  # type: ignore[attr-defined]
    del body
    gc.collect()
    assert _counts(mw) == (0, 0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_never_steps_the_parents_row() -> None:
    """A body proxy made before fork() and dropped in the child leaves the parent's count alone."""
    mw = RaindropsMiddleware(_hello, listeners=[], segment=ANONYMOUS)
    body = mw(Request.blank("/").environ, lambda *a: None)
    assert _counts(mw) == (0, 1)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            del body
            gc.collect()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert _counts(mw) == (0, 1)
    body.close()  # type: ignore[attr-defined]
    assert _counts(mw) == (0, 0)
