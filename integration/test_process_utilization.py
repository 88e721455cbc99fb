"""process-utilization under real servers: every worker's busy time on the scoreboard.

Each request to the test app sleeps a known time and answers the pid that
served it and the worker's own clock readings (``time.monotonic``, one
clock for every process on Linux) at the start and end of the sleep. The
union of those intervals per pid is the busy time that worker must show;
the test reads it from the shared segment (as the CLI or a Prometheus
collector would) and from the stats endpoint, over the same period.
"""

from __future__ import annotations

import json
import sys
import textwrap
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
from servers import ASGI_KINDS, Server, bind_tcp, launch

pytestmark = [
    pytest.mark.linux,
    pytest.mark.skipif(sys.platform != "linux", reason="needs Linux"),
    pytest.mark.timeout(60),
]

APP = textwrap.dedent(
    """
    import asyncio, json, os, time

    from process_utilization import ProcessUtilization
    from process_utilization.asgi import ProcessUtilization as AsgiProcessUtilization


    def _answer(t0, t1):
        return json.dumps({"pid": os.getpid(), "start": t0, "end": t1}).encode()


    def _ms(query):
        return int(query[3:]) if query.startswith("ms=") else 0


    def inner(environ, start_response):
        t0 = time.monotonic()
        time.sleep(_ms(environ.get("QUERY_STRING", "")) / 1000)
        body = _answer(t0, time.monotonic())
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]


    async def asgi_inner(scope, receive, send):
        t0 = time.monotonic()
        await asyncio.sleep(_ms(scope["query_string"].decode()) / 1000)
        body = _answer(t0, time.monotonic())
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


    wsgi = ProcessUtilization(inner, stats_path="/_utilization")
    asgi = AsgiProcessUtilization(asgi_inner, stats_path="/_utilization")
    """
)

SLEEP_MS = 40
PAUSE_S = 0.04
PER_CLIENT = 12


def _union(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of ``intervals``."""
    total = 0.0
    end = float("-inf")
    for a, b in sorted(intervals):
        if a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


def _busy_by_pid(segment: str) -> dict[int, float]:
    from process_utilization import open_scoreboard, worker_stats

    board = open_scoreboard(segment, create=False)
    return {w.pid: w.busy_seconds_total for w in worker_stats(board)}


def _drive(server: Server, clients: int) -> dict[int, list[tuple[float, float]]]:
    """``clients`` threads each send PER_CLIENT sleeping requests, pausing between."""
    served: dict[int, list[tuple[float, float]]] = defaultdict(list)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client() -> None:
        try:
            for _ in range(PER_CLIENT):
                status, _, body = server.get(f"/work?ms={SLEEP_MS}")
                assert status == 200
                doc = json.loads(body)
                with lock:
                    served[doc["pid"]].append((doc["start"], doc["end"]))
                time.sleep(PAUSE_S)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    return served


def _busy_from_endpoint(server: Server) -> dict[int, float]:
    status, _, body = server.get("/_utilization?format=json")
    assert status == 200
    return {w["pid"]: w["busy_seconds_total"] for w in json.loads(body)["workers"]}


@pytest.mark.parametrize(
    ("kind", "preload"),
    [
        ("gunicorn-sync", False),
        ("gunicorn-sync", True),
        ("gunicorn-gthread", False),
        ("uvicorn", False),
    ],
)
def test_every_worker_shows_its_busy_fraction(kind: str, preload: bool, tmp_path: Path) -> None:
    """Each worker's scoreboard busy time matches the union of its requests' sleeps.

    With ``--preload`` the anonymous scoreboard made in the master is shared
    by inheritance and read through the endpoint; otherwise every worker
    opens the segment named by the environment and the test reads the file.
    """
    (tmp_path / "pu_app.py").write_text(APP)
    segment = str(tmp_path / "utilization.seg")
    app = "pu_app:asgi" if kind in ASGI_KINDS else "pu_app:wsgi"
    env = {} if preload else {"PROCESS_UTILIZATION_SEGMENT": segment}
    extra = ["--preload"] if preload else []
    with (
        bind_tcp() as sock,
        launch(
            kind, app, sock, workers=2, threads=4, env=env, app_dir=tmp_path, extra=extra
        ) as srv,
    ):
        read = (lambda: _busy_from_endpoint(srv)) if preload else (lambda: _busy_by_pid(segment))
        before = read()
        t0 = time.monotonic()
        served = _drive(srv, clients=3)
        t1 = time.monotonic()
        after = read()
        status, headers, body = srv.get("/_utilization?format=json")
        workers = set(srv.worker_pids())

    assert set(served) <= workers
    assert sum(len(v) for v in served.values()) == 3 * PER_CLIENT
    elapsed = t1 - t0
    for pid in workers:
        expected = _union(served.get(pid, []))
        measured = after.get(pid, 0.0) - before.get(pid, 0.0)
        # The middleware's interval wraps the app's own by a little.
        assert expected - 0.002 <= measured <= expected * 1.10 + 0.05, (pid, kind)
        assert abs(measured / elapsed - expected / elapsed) <= 0.05, (pid, kind)
    # The pooled busy fraction is what the clients asked for, bounded by overlap.
    pooled = sum(_union(v) for v in served.values()) / elapsed
    assert 0.3 <= pooled <= 3 * SLEEP_MS / (SLEEP_MS + PAUSE_S * 1000) + 0.05

    assert status == 200
    assert headers["content-type"] == "application/json"
    table = json.loads(body)
    assert {w["pid"] for w in table["workers"]} >= set(served)
    assert table["total"]["requests_total"] >= 3 * PER_CLIENT
