"""The gunicorn recipe's hooks: the exporter in the arbiter, and what a forked worker inherits."""

from __future__ import annotations

import http.client
import logging
import os
import socket
from dataclasses import dataclass, field

import pytest
from raindrops_exporter.gunicorn import exporter_hooks, running

pytestmark = pytest.mark.linux


@dataclass
class Arbiter:
    """What the hooks read of gunicorn's arbiter: its listeners and its logger."""

    LISTENERS: list[socket.socket] = field(default_factory=list)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("test-arbiter"))


def _status(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/json")
        return conn.getresponse().status
    finally:
        conn.close()


def test_a_forked_worker_keeps_no_exporter_socket_and_the_arbiter_keeps_serving() -> None:
    """After fork() the child has closed the exporter's socket; the arbiter serves."""
    listener = socket.create_server(("127.0.0.1", 0))
    arbiter = Arbiter([listener])
    when_ready, on_exit = exporter_hooks("127.0.0.1:0")
    when_ready(arbiter)
    try:
        served = running()
        assert served is not None
        fd = served.fileno()
        port = int(served.url.rsplit(":", 1)[1].rstrip("/"))
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                try:
                    os.fstat(fd)
                except OSError:
                    code = 0 if running() is None else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert _status(port) == 200
    finally:
        on_exit(arbiter)
        listener.close()
    assert running() is None


def test_a_bad_address_is_logged_and_gunicorn_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    """A bind that cannot be used logs one error through the arbiter's logger; nothing starts."""
    when_ready, _ = exporter_hooks("not-an-address")
    with caplog.at_level(logging.ERROR, logger="test-arbiter"):
        when_ready(Arbiter())
    assert running() is None
    assert caplog.messages == [
        "raindrops-exporter: not started: bind 'not-an-address' must be HOST:PORT, [IPV6]:PORT, "
        "unix:PATH or /absolute/path (port 0-65535)"
    ]
