"""The server harness itself: every server kind serves on a socket the test bound."""

from __future__ import annotations

import socket

import pytest
from servers import ASGI_KINDS, KINDS, bind_tcp, bind_unix, launch


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("where", ["127.0.0.1", "::1", "unix"])
def test_every_kind_serves_on_the_socket_the_test_bound(kind: str, where: str) -> None:
    """Each server answers from one of its own worker processes on our listener."""
    app = "hello:asgi" if kind in ASGI_KINDS else "hello:wsgi"
    binder = bind_unix() if where == "unix" else bind_tcp(where)
    with binder as sock, launch(kind, app, sock, workers=2) as server:
        if where == "unix":
            assert sock.family == socket.AF_UNIX
        status, headers, body = server.get("/")
        assert status == 200
        assert headers["content-type"] == "text/plain"
        pid = int(body.split()[-1])
        assert pid in server.worker_pids()
