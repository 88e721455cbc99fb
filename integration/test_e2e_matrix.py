"""Every server kind on every transport, raindrops and process-utilization stacked.

Each case starts a server running ``apps/e2e_stack.py`` with its own command
line binding 127.0.0.1 (``tcp4``), ::1 (``tcp6``) or a Unix socket
(``unix``), or serving a socket the test bound (``fd``); no segment is
configured, so every worker finds the shared state by itself. It sends a
small mixed load (plain, slow and streamed responses), and checks that no
request failed, that ``calling``, ``writing`` and the listener's
``active``/``queued`` are back to idle, and that the utilization endpoint
lists every worker that served, has nothing in flight, and counted exactly
the requests the test sent.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loadgen import run_load
from servers import ASGI_KINDS, Bind, Server, bind_tcp, fd, launch, tcp, unix, wait_until

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
#: Transport ids (plain words, usable in node ids and ``-k``) and each one's address.
TRANSPORTS = {
    "tcp4": "127.0.0.1 (--host/--port, -b HOST:PORT)",
    "tcp6": "::1",
    "unix": "app.sock in the test's tmp_path (--uds, -b unix:)",
    "fd": "a socket on 127.0.0.1 the test bound (--fd, -b fd://)",
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
    """No segment named: the workers find their server's; its directory is under ``tmp_path``."""
    shm = tmp_path / "shm"
    shm.mkdir(exist_ok=True)
    return {"RAINDROPS_SHM_DIR": str(shm), "RD_GATE_DIR": str(tmp_path), **extra}


def server_segments(tmp_path: Path) -> dict[str, Path]:
    """The segments the server's workers found for themselves, by name (``raindrops``, ...)."""
    directory = tmp_path / "shm" / f"raindrops-{os.geteuid()}"
    return {entry.rsplit("-", 1)[0]: directory / entry for entry in sorted(os.listdir(directory))}


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


def utilization(server: Server) -> dict[str, Any]:
    """The utilization endpoint's JSON document (the endpoint's own request is not counted)."""
    status, _, body = server.get("/_utilization?format=json", headers={"Connection": "close"})
    assert status == 200, body
    doc: dict[str, Any] = json.loads(body)
    return doc


def settled_utilization(server: Server, timeout: float = 5.0) -> dict[str, Any]:
    """The utilization document once no worker has a request in flight.

    A worker records a request after the client may already have its
    response (when the body is closed, or the ASGI app returns), so totals are
    read only once every row's ``in_flight`` is 0: then every request the
    test has seen answered is counted.
    """
    docs: list[dict[str, Any]] = []

    def settled() -> bool:
        docs.append(utilization(server))
        return bool(docs[-1]["total"]["in_flight"] == 0)

    try:
        wait_until(settled, timeout=timeout)
    except TimeoutError:
        pytest.fail(f"utilization still has requests in flight after {timeout}s: {docs[-1]}")
    return docs[-1]


def address(server: Server) -> tuple[int, object]:
    """``(family, address)`` of the server's listener, for the load generator."""
    return server.family, server.address


@contextlib.contextmanager
def listener(transport: str, tmp_path: Path) -> Iterator[Bind]:
    """The address for ``transport``: the server binds it, or serves the test's socket (``fd``)."""
    if transport == "fd":
        with bind_tcp("127.0.0.1") as sock:
            yield fd(sock)
    elif transport == "unix":
        yield unix(tmp_path / "app.sock")
    else:
        yield tcp("::1" if transport == "tcp6" else "127.0.0.1")


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
@pytest.mark.parametrize("kind", sorted(WORKERS))
def test_small_load_then_idle_everywhere(kind: str, transport: str, tmp_path: Path) -> None:
    """400 mixed requests at 40 connections all succeed and every gauge returns to idle."""
    workers = WORKERS[kind]
    with (
        listener(transport, tmp_path) as bind,
        launch(
            kind,
            app_for(kind),
            bind,
            workers=workers,
            threads=4,
            extra=EXTRA.get(kind, ()),
            env=stack_env(tmp_path),
        ) as server,
    ):
        # The readiness probes were counted: measure from here.
        before = settled_utilization(server)["total"]["requests_total"]
        family, addr = address(server)
        result = run_load(addr, TARGETS, total=400, concurrency=40, family=family, max_seconds=60)
        assert (result.ok, result.failures) == (400, [])
        served = {int(server.get("/hello")[2].split()[-1]) for _ in range(8)}
        # Only the stats request's own connection is left.
        wait_idle(server, timeout=10)
        doc = settled_utilization(server)
        pids = {w["pid"] for w in doc["workers"]}
        # Every worker that served is listed; no row outlives the live workers.
        assert served <= pids
        assert pids <= set(server.worker_pids())
        assert len(pids) <= workers
        # Exactly the 400 + 8 requests sent (the stats endpoints are not counted).
        assert doc["total"]["in_flight"] == 0
        assert doc["total"]["requests_total"] - before == 400 + 8
        assert sum(w["requests_total"] for w in doc["workers"]) == doc["total"]["requests_total"]
        # Every worker joined the server's own segments, found by itself: one of each.
        assert "in its own memory" not in server.log()
        names = sorted(os.listdir(tmp_path / "shm" / f"raindrops-{os.geteuid()}"))
        assert [n.rsplit("-", 1)[0] for n in names] == ["latency", "raindrops", "utilization"]
        assert len({n.rsplit("-", 1)[1] for n in names}) == 1
