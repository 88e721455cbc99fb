"""The exporter answers, exactly, while every worker is busy and the listen queue is full.

gunicorn (4 sync workers) and ``uvicorn --workers 4`` are started from their
own command lines with ``--backlog 16``, no segment configured. A request is
held inside the application on every worker (asserted by PID: 4 distinct
workers), then 40 more connections are opened, which wait in the listen
queue (it holds ``backlog + 1`` = 17 on Linux; the rest wait for their SYN to
be retried). Then:

- ``raindrops-exporter``, started from its own command line beside the
  server, answers 50 scrapes of ``/metrics`` in a row, each in under a
  second (:data:`SCRAPE_LIMIT`: the scrape itself takes milliseconds, see
  the package README's benchmark; the bound is two orders of magnitude
  above that, so a loaded 2-core machine does not make it flaky), each
  parsed by prometheus_client's parser, each reporting exactly 4 requests
  in the application, 4 busy workers of 4, and the listener's queue equal
  to the kernel's (read by the test over netlink at the same moment),
  at least its backlog of 16;
- the in-band ``/_raindrops`` at that moment does not answer within 2 s
  (asserted, to document the contrast: it is served by the very workers
  it measures, and waits in the very queue it reports).
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest
from exporter_harness import exporter, samples, value
from linux_inet_diag import tcp_listener_stats
from servers import launch, tcp, wait_until

pytestmark = [
    pytest.mark.linux,
    pytest.mark.skipif(sys.platform != "linux", reason="needs Linux (netlink, /proc)"),
    pytest.mark.timeout(180),
]

WORKERS = 4
BACKLOG = 16
WAITING = 40
SCRAPES = 50
#: Seconds one scrape may take under saturation ("well under a second").
SCRAPE_LIMIT = 1.0


def _hold(srv, gates: Path, path: str, i: int) -> tuple[socket.socket, int]:
    conn = srv.connect(timeout=30)
    conn.sendall(
        f"GET {path}?gate=go&id={i} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
    )
    mark = gates / f"pid-{i}"
    wait_until(mark.exists, timeout=15)
    return conn, int(mark.read_text())


CASES = [
    ("gunicorn-sync", "exporter_stack:wsgi", "/hold"),
    ("uvicorn", "exporter_stack:asgi", "/block"),
]


@pytest.mark.parametrize(("kind", "app", "hold"), CASES, ids=[c[0] for c in CASES])
def test_scrapes_answer_while_every_worker_is_busy(
    kind: str, app: str, hold: str, tmp_path: Path
) -> None:
    """50 scrapes succeed in under a second each and read 4 calling and a full queue."""
    shm = tmp_path / "shm"
    shm.mkdir()
    env = {"RAINDROPS_SHM_DIR": str(shm), "RD_GATE_DIR": str(tmp_path)}
    conns: list[socket.socket] = []
    with (
        launch(
            kind,
            app,
            tcp("127.0.0.1"),
            workers=WORKERS,
            extra=["--backlog", str(BACKLOG)],
            env=env,
            ready_path="/hello",
        ) as srv,
        exporter(env=env) as exp,
    ):
        try:
            pids = set()
            for i in range(WORKERS):
                conn, pid = _hold(srv, tmp_path, hold, i)
                conns.append(conn)
                pids.add(pid)
            assert len(pids) == WORKERS, pids
            for _ in range(WAITING):
                c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                c.setblocking(False)
                # EINPROGRESS: it waits in the queue (or for its SYN to be retried).
                c.connect_ex(srv.address)
                conns.append(c)
            name = srv.name
            wait_until(lambda: tcp_listener_stats([name])[name].queued >= BACKLOG, timeout=15)

            for _ in range(SCRAPES):
                began = time.monotonic()
                status, _, body = exp.get("/metrics", timeout=SCRAPE_LIMIT * 5)
                took = time.monotonic() - began
                kernel = tcp_listener_stats([name])[name]
                assert status == 200, body
                assert took < SCRAPE_LIMIT, f"scrape took {took:.3f} s"
                got = samples(body.decode())
                assert value(got, "raindrops_calling", server=name) == WORKERS
                assert value(got, "raindrops_workers", server=name) == WORKERS
                assert value(got, "raindrops_workers_busy", server=name) == WORKERS
                assert value(got, "process_utilization_in_flight", server=name) == WORKERS
                queued = value(got, "raindrops_listener_queued", server=name, listener=name)
                assert queued == kernel.queued >= BACKLOG
                assert (
                    value(got, "raindrops_listener_backlog", server=name, listener=name) == BACKLOG
                )

            # The in-band endpoint, served by the same busy workers, does not answer.
            with pytest.raises(TimeoutError):
                srv.get("/_raindrops", timeout=2.0)
        finally:
            (tmp_path / "go").write_text("")
            for c in conns:
                c.close()
