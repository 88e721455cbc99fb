"""Every server kind on every transport, raindrops and process-utilization stacked.

Each case starts a server running ``apps/e2e_stack.py`` on 127.0.0.1, ::1 or a
Unix socket, sends a small mixed load (plain, slow and streamed responses),
and checks that no request failed, that ``calling``, ``writing`` and the
listener's ``active``/``queued`` are back to idle, and that the utilization
endpoint lists every worker.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from loadgen import run_load
from servers import ASGI_KINDS, Server, bind_tcp, bind_unix, launch, wait_until

pytestmark = [
    pytest.mark.linux,
    pytest.mark.skipif(sys.platform != "linux", reason="needs Linux (netlink, /proc)"),
    pytest.mark.timeout(90),
]

WORKERS = {
    "gunicorn-sync": 4,
    "gunicorn-gthread": 2,
    "gunicorn-uvicorn": 2,
    "uvicorn": 2,
    "hypercorn": 2,
}
TARGETS = [
    ("/hello", b"hello from "),
    ("/slow?ms=20", b"slept 20\n"),
    ("/stream?n=20", b"chunk 19\n"),
    ("/hello", b"hello from "),
]


#: hypercorn keeps an idle keep-alive connection open until its timer fires.
EXTRA = {"hypercorn": ["--keep-alive", "1"]}


def app_for(kind: str) -> str:
    """The stacked app's ``module:attr`` for a server kind."""
    return "e2e_stack:asgi" if kind in ASGI_KINDS else "e2e_stack:wsgi"


def stack_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Segments for both middlewares in ``tmp_path``, so spawned workers share them."""
    return {
        "RAINDROPS_SEGMENT": str(tmp_path / "raindrops.seg"),
        "PROCESS_UTILIZATION_SEGMENT": str(tmp_path / "utilization.seg"),
        "RD_GATE_DIR": str(tmp_path),
        **extra,
    }


def stats(server: Server) -> dict[str, int]:
    """The ``/_raindrops`` text body as a dict of ints."""
    # Connection: close, or hypercorn keeps each poll's idle connection open (and
    # truthfully counted as active) until its keep-alive timer fires.
    status, _, body = server.get("/_raindrops", headers={"Connection": "close"})
    assert status == 200, body
    values = {}
    for line in body.decode().splitlines():
        key, _, value = line.rpartition(": ")
        values[key] = int(value)
    return values


def gauges(server: Server) -> tuple[int, int, int, int]:
    """``(calling, writing, active, queued)`` of the server's own listener."""
    s = stats(server)
    return s["calling"], s["writing"], s[f"{server.name} active"], s[f"{server.name} queued"]


def wait_idle(server: Server, timeout: float = 5.0) -> None:
    """Wait until the gauges read idle: nothing calling or writing, only our own connection."""
    seen: list[tuple[int, int, int, int]] = []

    def idle() -> bool:
        seen.append(gauges(server))
        return seen[-1] == (0, 0, 1, 0)

    try:
        wait_until(idle, timeout=timeout)
    except TimeoutError:
        pytest.fail(
            f"gauges not idle within {timeout}s: last (calling, writing, active, queued) {seen[-1]}"
        )


def address(server: Server) -> tuple[int, object]:
    """``(family, address)`` of the server's listener, for the load generator."""
    name = server.sock.getsockname()
    family = server.sock.family
    return family, (name if family == socket.AF_UNIX else name[:2])


@contextlib.contextmanager
def listener(transport: str, tmp_path: Path) -> Iterator[socket.socket]:
    """A listening socket for ``transport``: ``127.0.0.1``, ``::1`` or ``unix``."""
    if transport == "unix":
        with bind_unix(str(tmp_path / "app.sock")) as sock:
            yield sock
    else:
        with bind_tcp(transport) as sock:
            yield sock


@pytest.mark.parametrize("transport", ["127.0.0.1", "::1", "unix"])
@pytest.mark.parametrize("kind", sorted(WORKERS))
def test_small_load_then_idle_everywhere(kind: str, transport: str, tmp_path: Path) -> None:
    """400 mixed requests at 40 connections all succeed and every gauge returns to idle."""
    workers = WORKERS[kind]
    with (
        listener(transport, tmp_path) as sock,
        launch(
            kind,
            app_for(kind),
            sock,
            workers=workers,
            threads=4,
            extra=EXTRA.get(kind, ()),
            env=stack_env(tmp_path),
        ) as server,
    ):
        family, addr = address(server)
        result = run_load(addr, TARGETS, total=400, concurrency=40, family=family, max_seconds=60)
        assert (result.ok, result.failures) == (400, [])
        # Only the stats request's own connection is left.
        wait_idle(server, timeout=10)
        status, _, body = server.get("/_utilization?format=json")
        assert status == 200
        pids = {w["pid"] for w in json.loads(body)["workers"]}
        served = {int(server.get("/hello")[2].split()[-1]) for _ in range(8)}
        # Every worker that served is listed; no row outlives the live workers.
        assert served <= pids
        assert len(pids) <= workers
