"""The server harness itself: every server kind serves where its own command line binds."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import ASGI_KINDS, KINDS, Bind, bind_tcp, fd, launch, tcp, unix


@contextlib.contextmanager
def _bind(where: str, tmp_path: Path) -> Iterator[Bind]:
    if where == "fd":
        with bind_tcp("127.0.0.1") as sock:
            yield fd(sock)
    elif where == "unix":
        yield unix(tmp_path / "s.sock")
    else:
        yield tcp(where)


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("where", ["127.0.0.1", "::1", "unix", "fd"])
def test_every_kind_serves_where_it_was_told(kind: str, where: str, tmp_path: Path) -> None:
    """Each server answers from one of its own worker processes on the address it was given."""
    app = "hello:asgi" if kind in ASGI_KINDS else "hello:wsgi"
    with _bind(where, tmp_path) as bind, launch(kind, app, bind, workers=2) as server:
        assert server.family == (socket.AF_UNIX if where == "unix" else bind.family)
        status, headers, body = server.get("/")
        assert status == 200
        assert headers["content-type"] == "text/plain"
        pid = int(body.split()[-1])
        assert pid in server.worker_pids()
        if where != "fd":
            assert server.name in (
                "127.0.0.1:" + str(server.bind.port),
                f"[::1]:{server.bind.port}",
                str(tmp_path / "s.sock"),
            )
