"""process-utilization under real servers: every worker's busy time on the scoreboard.

Each request to the test app sleeps a known time and answers the pid that
served it and the worker's own clock readings (``time.monotonic``, one
clock for every process on Linux) at the start and end of the sleep. The
union of those intervals per pid is the busy time that worker must show;
the test reads it from the shared segment (as the CLI or a Prometheus
collector would) and from the stats endpoint, over the same period.

``/file`` answers a ``wsgi.file_wrapper`` body over a real file whose
``read()`` lies: the client gets the file's bytes only if the server sent the
descriptor with sendfile(), which gunicorn does only for a body that is an
instance of its own ``wsgi.file_wrapper`` class. The file's ``close()``
notes how many requests the worker had in flight at that moment.
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
from servers import ASGI_KINDS, Server, launch, tcp, wait_until

pytestmark = [
    pytest.mark.linux,
    pytest.mark.skipif(sys.platform != "linux", reason="needs Linux"),
    pytest.mark.timeout(60),
]

APP = textwrap.dedent(
    """
    import asyncio, json, os, tempfile, time

    from process_utilization import ProcessUtilization
    from process_utilization.asgi import ProcessUtilization as AsgiProcessUtilization


    def _answer(t0, t1):
        return json.dumps({"pid": os.getpid(), "start": t0, "end": t1}).encode()


    def _ms(query):
        return int(query[3:]) if query.startswith("ms=") else 0


    FILE_BYTES = b"bytes sent by sendfile\\n"
    READ_BYTES = b"bytes read by iteration\\n"


    class LyingFile:
        # A real file for sendfile(), whose read() returns other bytes.

        def __init__(self):
            fd, path = tempfile.mkstemp(prefix="pu-file-")
            os.write(fd, FILE_BYTES)
            os.lseek(fd, 0, os.SEEK_SET)
            os.unlink(path)
            self._fd = fd
            self._read = False

        def fileno(self):
            return self._fd

        def read(self, size=-1):
            if self._read:
                return b""
            self._read = True
            return READ_BYTES

        def close(self):
            os.close(self._fd)
            # Written aside and renamed, so the test never reads a half-written mark.
            mark = os.path.join(os.environ["PU_MARKS"], f"closed-{os.getpid()}")
            with open(mark + ".part", "w") as f:
                f.write(str(wsgi.in_flight))
            os.replace(mark + ".part", mark)


    def inner(environ, start_response):
        if environ["PATH_INFO"] == "/file":
            start_response("200 OK", [("Content-Type", "text/plain"),
                                      ("Content-Length", str(len(FILE_BYTES)))])
            return environ["wsgi.file_wrapper"](LyingFile())
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
#: Rounds of load at most, until every worker has served in one round.
ROUNDS = 5


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


def _workers(server: Server) -> set[int]:
    """The server's worker processes (not multiprocessing's resource tracker)."""
    pids = set()
    for pid in server.worker_pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"resource_tracker" not in cmdline:
            pids.add(pid)
    return pids


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

    The load is repeated (at most ROUNDS times) until one round was served
    by every worker, so each worker's figure is checked against real work.
    With ``--preload`` (the middleware built in the master, before the
    sockets exist) every worker finds the server's own segment at its first
    request and the test reads it through the endpoint; otherwise every
    worker opens the segment named by the environment and the test reads
    the file.
    """
    (tmp_path / "pu_app.py").write_text(APP)
    segment = str(tmp_path / "utilization.seg")
    app = "pu_app:asgi" if kind in ASGI_KINDS else "pu_app:wsgi"
    env = {} if preload else {"PROCESS_UTILIZATION_SEGMENT": segment}
    extra = ["--preload"] if preload else []
    with launch(
        kind, app, tcp(), workers=2, threads=4, env=env, app_dir=tmp_path, extra=extra
    ) as srv:
        read = (lambda: _busy_from_endpoint(srv)) if preload else (lambda: _busy_by_pid(segment))
        rounds: list[set[int]] = []
        for _ in range(ROUNDS):
            before = read()
            t0 = time.monotonic()
            served = _drive(srv, clients=3)
            t1 = time.monotonic()
            after = read()
            workers = _workers(srv)
            rounds.append(set(served))
            if len(workers) == 2 and set(served) == workers:
                break
        status, headers, body = srv.get("/_utilization?format=json")

    assert len(workers) == 2, workers
    assert set(served) == workers, (kind, rounds)
    assert sum(len(v) for v in served.values()) == 3 * PER_CLIENT
    elapsed = t1 - t0
    for pid in workers:
        expected = _union(served[pid])
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
    assert {w["pid"] for w in table["workers"]} == workers
    assert table["total"]["requests_total"] >= 3 * PER_CLIENT


def _row_of(segment: str, pid: int) -> tuple[int, int] | None:
    """``(requests_total, in_flight)`` of ``pid``'s row in the segment, if it has one."""
    from process_utilization import open_scoreboard, worker_stats

    board = open_scoreboard(segment, create=False)
    try:
        for w in worker_stats(board):
            if w.pid == pid:
                return w.requests_total, w.in_flight
        return None
    finally:
        board.close()


@pytest.mark.parametrize("kind", ["gunicorn-sync", "gunicorn-gthread"])
def test_file_wrapper_body_keeps_gunicorns_sendfile_path(kind: str, tmp_path: Path) -> None:
    """A wsgi.file_wrapper body is sent with sendfile() and recorded after the server closes it."""
    (tmp_path / "pu_app.py").write_text(APP)
    marks = tmp_path / "marks"
    marks.mkdir()
    segment = str(tmp_path / "utilization.seg")
    env = {"PROCESS_UTILIZATION_SEGMENT": segment, "PU_MARKS": str(marks)}
    with launch(kind, "pu_app:wsgi", tcp(), workers=1, env=env, app_dir=tmp_path) as srv:
        status, _, body = srv.get("/file")
        # Only sendfile() on the descriptor sends these bytes (read() lies).
        assert (status, body) == (200, b"bytes sent by sendfile\n")
        wait_until(lambda: len(list(marks.glob("closed-*[0-9]"))) == 1)
        [mark] = marks.glob("closed-*[0-9]")
        pid = int(mark.name.removeprefix("closed-"))
        # The file was closed by the server while the request was still in flight...
        assert mark.read_text() == "1"
        # ...and recorded right after: one request (the readiness probe's is
        # the other), nothing left in flight.
        wait_until(lambda: _row_of(segment, pid) == (2, 0))
        assert pid in _workers(srv)
