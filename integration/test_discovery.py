"""Every worker joins its server's shared state by itself, however the server was started.

Each case starts a server with its own command line, the way its users do
(``uvicorn --workers N --host H --port P``, ``--uds``, ``--fd``; ``hypercorn
-b HOST:PORT``, ``-b unix:``, ``-b fd://``; ``gunicorn -b HOST:PORT``, ``-b
unix:``, several ``-b``, systemd socket activation, ``--preload``; IPv4,
IPv6, wildcard), with no segment configured. Requests are held inside the
application on at least two workers (asserted by PID), and every one of 8
reads of ``calling`` and of the utilization table's ``in_flight`` equals
the number held, from whichever worker answers; once they are released,
both read 0. uvicorn's and hypercorn's masters bind but do not listen: a
worker that starts before any sibling listens must still find the socket.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from servers import (
    ASGI_KINDS,
    Bind,
    Server,
    bind_tcp,
    bind_unix,
    fd,
    launch,
    systemd,
    tcp,
    unix,
    wait_until,
)

pytestmark = [
    pytest.mark.linux,
    pytest.mark.skipif(sys.platform != "linux", reason="needs Linux (netlink, /proc)"),
    pytest.mark.timeout(120),
]

#: Held requests at most, for servers that take any number at once.
MAX_HELD = 40
READS = 8


@dataclass(frozen=True)
class Case:
    """One way to start a server: kind, workers, how it binds, extra flags."""

    kind: str
    binds: tuple[str, ...]  # "tcp:HOST", "unix", "fd", "fd-unix", "systemd"
    workers: int = 2
    extra: tuple[str, ...] = ()
    span_all: bool = False  # hold requests on every worker, not just two
    id: str = field(default="", compare=False)


GTHREAD = ("--threads", "2", "--worker-connections", "2")

CASES = [
    Case("uvicorn", ("tcp:127.0.0.1",), id="uvicorn-port"),
    Case("uvicorn", ("tcp:::1",), id="uvicorn-port-ipv6"),
    Case("uvicorn", ("tcp:0.0.0.0",), id="uvicorn-port-wildcard"),
    Case("uvicorn", ("unix",), id="uvicorn-uds"),
    Case("uvicorn", ("fd",), id="uvicorn-fd"),
    Case("uvicorn", ("tcp:127.0.0.1",), workers=4, span_all=True, id="uvicorn-4-workers-port"),
    Case("hypercorn", ("tcp:127.0.0.1",), id="hypercorn-bind"),
    Case("hypercorn", ("tcp:::1",), id="hypercorn-bind-ipv6"),
    Case("hypercorn", ("tcp:0.0.0.0",), id="hypercorn-bind-wildcard"),
    Case("hypercorn", ("unix",), id="hypercorn-unix"),
    Case("hypercorn", ("fd",), id="hypercorn-fd"),
    Case("gunicorn-sync", ("tcp:127.0.0.1",), workers=3, id="gunicorn-sync-bind"),
    Case("gunicorn-sync", ("tcp:::1",), workers=3, id="gunicorn-sync-bind-ipv6"),
    Case("gunicorn-sync", ("tcp:::",), workers=3, id="gunicorn-sync-bind-wildcard6"),
    Case("gunicorn-sync", ("unix",), workers=3, id="gunicorn-sync-unix"),
    Case("gunicorn-sync", ("tcp:127.0.0.1", "unix"), workers=3, id="gunicorn-sync-two-binds"),
    Case("gunicorn-sync", ("systemd",), workers=3, id="gunicorn-sync-socket-activation"),
    Case("gunicorn-sync", ("fd-unix",), workers=3, id="gunicorn-sync-fd"),
    Case("gunicorn-sync", ("tcp:0.0.0.0",), workers=3, extra=("--preload",), id="gunicorn-preload"),
    # A gthread worker accepts up to --worker-connections and queues what its
    # threads cannot take yet: 2 of each, so held requests spill to the other worker.
    Case("gunicorn-gthread", ("tcp:127.0.0.1",), extra=GTHREAD, id="gunicorn-gthread-bind"),
    Case(
        "gunicorn-gthread",
        ("unix",),
        extra=(*GTHREAD, "--preload"),
        id="gunicorn-gthread-unix-preload",
    ),
    Case("gunicorn-uvicorn", ("tcp:127.0.0.1",), id="gunicorn-uvicorn-bind"),
    Case("gunicorn-uvicorn", ("tcp:::1",), extra=("--preload",), id="gunicorn-uvicorn-preload"),
    Case("gunicorn-uvicorn", ("unix",), id="gunicorn-uvicorn-unix"),
]


@contextlib.contextmanager
def _binds(case: Case, tmp_path: Path) -> Iterator[list[Bind]]:
    with contextlib.ExitStack() as stack:
        binds: list[Bind] = []
        for spec in case.binds:
            if spec.startswith("tcp:"):
                binds.append(tcp(spec[4:]))
            elif spec == "unix":
                binds.append(unix(tmp_path / f"app{len(binds)}.sock"))
            elif spec == "fd":
                binds.append(fd(stack.enter_context(bind_tcp("127.0.0.1"))))
            elif spec == "fd-unix":
                binds.append(fd(stack.enter_context(bind_unix(str(tmp_path / "fd.sock")))))
            elif spec == "systemd":
                binds.append(systemd("127.0.0.1"))
            else:
                raise ValueError(spec)
        yield binds


def _app(kind: str) -> str:
    return "e2e_stack:asgi" if kind in ASGI_KINDS else "e2e_stack:wsgi"


def _capacity(case: Case) -> int:
    """How many requests can be held while a worker is still free to answer the reads."""
    if case.kind == "gunicorn-sync":
        return case.workers - 1
    if case.kind == "gunicorn-gthread":
        return case.workers * 2 - 1  # --worker-connections 2 each
    return MAX_HELD


class Holder:
    """Requests held inside the app (``/hold``), each noting the PID of the worker holding it."""

    def __init__(self, server: Server, gates: Path) -> None:
        self.server = server
        self.gates = gates
        self.conns: list[socket.socket] = []
        self.pids: list[int] = []

    def hold_one(self) -> int:
        """Send one held request and wait until a worker has it; return that worker's PID."""
        i = len(self.conns)
        conn = self.server.connect(timeout=30)
        self.conns.append(conn)
        conn.sendall(
            f"GET /hold?gate=go&id={i} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
        )
        mark = self.gates / f"pid-{i}"
        wait_until(mark.exists, timeout=15)
        pid = int(mark.read_text())
        self.pids.append(pid)
        return pid

    def spread(self, want: int, capacity: int) -> None:
        """Hold requests until ``want`` different workers hold one (at most ``capacity``).

        Which worker accepts a connection is the kernel's and the servers'
        choice: on a busy machine one worker may win every time. So each
        worker that takes its first request is stopped (SIGSTOP) while the
        next ones are sent, and can accept nothing: the next request lands
        on a worker that holds none yet. All are resumed (SIGCONT) before
        anything is read. A stopped worker keeps its held request inside
        the app, counted.
        """
        stopped: list[int] = []
        try:
            while len(set(self.pids)) < want and len(self.pids) < capacity:
                pid = self.hold_one()
                if pid not in stopped:
                    os.kill(pid, signal.SIGSTOP)
                    stopped.append(pid)
        finally:
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)

    def release(self) -> list[bytes]:
        (self.gates / "go").write_text("")
        answers = []
        for conn in self.conns:
            chunks = []
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                chunks.append(data)
            conn.close()
            answers.append(b"".join(chunks))
        return answers


def _calling(server: Server, bind: Bind) -> int:
    status, _, body = server.get("/_raindrops", headers={"Connection": "close"}, bind=bind)
    assert status == 200, body
    first = body.decode().splitlines()[0]
    assert first.startswith("calling: "), body
    return int(first.split(": ")[1])


def _in_flight(server: Server, bind: Bind) -> int:
    status, headers, body = server.get(
        "/_utilization?format=json", headers={"Connection": "close"}, bind=bind
    )
    assert status == 200, body
    doc = json.loads(body)
    assert doc["unavailable"] == {}, doc
    assert "x-raindrops-unavailable" not in headers
    return int(doc["total"]["in_flight"])


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_worker_shares_the_gauges(case: Case, tmp_path: Path) -> None:
    """Held requests on several workers read exactly, from any worker, on any listener."""
    shm = tmp_path / "shm"
    shm.mkdir()
    env = {"RAINDROPS_SHM_DIR": str(shm), "RD_GATE_DIR": str(tmp_path)}
    with (
        _binds(case, tmp_path) as binds,
        launch(
            case.kind,
            _app(case.kind),
            *binds,
            workers=case.workers,
            extra=case.extra,
            env=env,
            startup_timeout=45,
        ) as server,
    ):
        workers = set(server.worker_pids())
        holder = Holder(server, tmp_path)
        want = case.workers if case.span_all else 2
        try:
            holder.spread(want, _capacity(case))
            held = len(holder.pids)
            assert len(set(holder.pids)) >= want, (
                f"{held} held requests landed on {sorted(set(holder.pids))} only"
            )
            assert set(holder.pids) <= workers
            for bind in server.binds:
                reads = [_calling(server, bind) for _ in range(READS)]
                assert reads == [held] * READS, f"calling via {bind.name}"
                flights = [_in_flight(server, bind) for _ in range(READS)]
                assert flights == [held] * READS, f"in_flight via {bind.name}"
        finally:
            answers = holder.release()
        assert all(a.endswith(b"released\n") for a in answers), answers
        wait_until(lambda: _calling(server, server.bind) == 0, timeout=10)
        wait_until(lambda: _in_flight(server, server.bind) == 0, timeout=10)
        # One listener line per bind, every one of them, as raindrops names it.
        body = server.get("/_raindrops", headers={"Connection": "close"})[2].decode()
        for name in server.names:
            assert f"{name} queued: 0" in body.splitlines(), body
        log = server.log()
        assert "in its own memory" not in log, log
        # One segment of each kind, named after one of the server's sockets.
        names = sorted(os.listdir(shm / f"raindrops-{os.geteuid()}"))
        assert [n.rsplit("-", 1)[0] for n in names] == ["latency", "raindrops", "utilization"], (
            names
        )
        assert len({n.rsplit("-", 1)[1] for n in names}) == 1, names


def test_uvicorn_workers_started_before_anyone_listens_still_share(tmp_path: Path) -> None:
    """uvicorn's workers find the socket its master bound without listen(): slow startups too.

    The app's lifespan startup sleeps a different time in each worker, so
    some look for their listener while no sibling has called ``listen()``.
    """
    shm = tmp_path / "shm"
    shm.mkdir()
    env = {"RAINDROPS_SHM_DIR": str(shm), "RD_GATE_DIR": str(tmp_path), "E2E_STARTUP_JITTER": "1"}
    with launch(
        "uvicorn", "e2e_stack:asgi", tcp(), workers=3, env=env, startup_timeout=45
    ) as server:
        time.sleep(1.2)  # every worker's jittered startup is over
        holder = Holder(server, tmp_path)
        try:
            holder.spread(2, MAX_HELD)
            held = len(holder.pids)
            assert [_calling(server, server.bind) for _ in range(READS)] == [held] * READS
        finally:
            holder.release()
        assert "in its own memory" not in server.log()


NOBODY = 65534


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root (to act as a second user with setpriv)",
)
@pytest.mark.parametrize("kind", ["gunicorn-sync", "uvicorn"])
def test_a_directory_another_user_made_first_is_refused_and_said(kind: str, tmp_path: Path) -> None:
    """Another user creates our per-user directory first: never used, said in log and outputs."""
    shared = Path(tempfile.mkdtemp(prefix="rd-shared-", dir="/tmp"))
    try:
        shared.chmod(0o1777)  # like /dev/shm: anyone may create names here
        taken = shared / f"raindrops-{os.geteuid()}"
        subprocess.run(
            [
                *("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"),
                *("mkdir", "-m", "777", str(taken)),
            ],
            check=True,
        )
        env = {"RAINDROPS_SHM_DIR": str(shared), "RD_GATE_DIR": str(tmp_path)}
        with launch(kind, _app(kind), tcp(), workers=2, env=env) as server:
            status, headers, _body = server.get("/_raindrops", headers={"Connection": "close"})
            assert (status, headers["x-raindrops-unavailable"]) == (200, "shared")
            doc = json.loads(server.get("/_raindrops?format=json")[2])
            reason = doc["unavailable"]["shared"]
            assert reason == (
                f"[Errno 1] the segment directory is a directory owned by uid {NOBODY} "
                "(nobody) with mode 0o777; it must be a directory owned by uid 0 (root) with "
                f"no group or other write permission (0700): '{taken}'"
            )
            prom = server.get("/_raindrops?format=prometheus")[2].decode()
            assert "\nraindrops_shared 0.0\n" in prom
            util = json.loads(server.get("/_utilization?format=json")[2])
            assert util["unavailable"] == {"shared": reason}
            assert os.listdir(taken) == []
            log = server.log()
        warnings = [line for line in log.splitlines() if "in its own memory" in line]
        # One line per middleware per worker that served, never one per request.
        assert 2 <= len(warnings) <= 4, log
        assert all(reason in line for line in warnings), warnings
        assert "Traceback" not in log
    finally:
        shutil.rmtree(shared, ignore_errors=True)
