"""Faults under real servers: SIGKILLed workers, recycled workers, bad segments, no netlink.

Every case runs ``apps/e2e_stack.py`` (raindrops over process-utilization).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest
from loadgen import run_load
from servers import Server, ServerStartError, bind_tcp, launch, wait_until
from test_e2e_matrix import address, app_for, stack_env, stats, wait_idle

pytestmark = [
    pytest.mark.linux,
    pytest.mark.skipif(sys.platform != "linux", reason="needs Linux (netlink, /proc)"),
    pytest.mark.timeout(120),
]

# kind -> (workers, requests held at once)
KILL_KINDS = {"gunicorn-sync": (4, 3), "gunicorn-uvicorn": (2, 4), "uvicorn": (2, 4)}


def _send(server_conn: socket.socket, target: str) -> socket.socket:
    server_conn.sendall(f"GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    return server_conn


def _drain(conn: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(OSError):
        while chunk := conn.recv(65536):
            data += chunk
    conn.close()
    return data


def _read_until(conn: socket.socket, marker: bytes) -> bytes:
    data = b""
    deadline = time.monotonic() + 15
    while marker not in data and time.monotonic() < deadline:
        chunk = conn.recv(65536)
        assert chunk, f"connection closed before {marker!r}: {data!r}"
        data += chunk
    return data


def _pids(gates: Path, prefix: str, n: int) -> list[int]:
    wait_until(lambda: len(list(gates.glob(f"{prefix}-*"))) == n, timeout=15)
    return [int((gates / f"{prefix}-{i}").read_text()) for i in range(n)]


def _wait_respawned(server: Server, victim: int, children: int) -> None:
    """Wait until the victim is reaped and the server has as many children as before."""

    def respawned() -> bool:
        pids = server.worker_pids()
        return victim not in pids and len(pids) == children

    wait_until(respawned, timeout=15)


@pytest.mark.parametrize("kind", sorted(KILL_KINDS))
def test_sigkill_worker_holding_requests(kind: str, tmp_path: Path) -> None:
    """A worker SIGKILLed inside the app is respawned and within 1 s calling drops its requests."""
    workers, held = KILL_KINDS[kind]
    env = stack_env(tmp_path)
    with bind_tcp() as sock, launch(kind, app_for(kind), sock, workers=workers, env=env) as server:
        before = server.worker_pids()
        conns = [_send(server.connect(20), f"/hold?gate=hold&id={i}") for i in range(held)]
        try:
            pids = _pids(tmp_path, "pid", held)
            wait_until(lambda: stats(server)["calling"] == held, timeout=5)
            victim = pids[0]
            survivors = sum(1 for p in pids if p != victim)
            os.kill(victim, signal.SIGKILL)
            wait_until(lambda: stats(server)["calling"] == survivors, timeout=1.0)
            _wait_respawned(server, victim, len(before))
        finally:
            (tmp_path / "hold").touch()
            bodies = [_drain(c) for c in conns]
        released = [b for b, p in zip(bodies, pids, strict=True) if p != victim]
        assert all(b.endswith(b"released\n") for b in released), bodies
        wait_idle(server)


@pytest.mark.parametrize("kind", sorted(KILL_KINDS))
def test_sigkill_worker_writing_a_stream(kind: str, tmp_path: Path) -> None:
    """A worker SIGKILLed mid-body is respawned and within 1 s writing drops its streams."""
    workers, held = KILL_KINDS[kind]
    env = stack_env(tmp_path)
    with bind_tcp() as sock, launch(kind, app_for(kind), sock, workers=workers, env=env) as server:
        before = server.worker_pids()
        conns = [_send(server.connect(20), f"/hstream?gate=go&id={i}") for i in range(held)]
        try:
            for c in conns:
                _read_until(c, b"first\n")
            pids = _pids(tmp_path, "spid", held)
            wait_until(lambda: (stats(server)["calling"], stats(server)["writing"]) == (0, held))
            victim = pids[0]
            survivors = sum(1 for p in pids if p != victim)
            os.kill(victim, signal.SIGKILL)
            wait_until(lambda: stats(server)["writing"] == survivors, timeout=1.0)
            _wait_respawned(server, victim, len(before))
        finally:
            (tmp_path / "go").touch()
            bodies = [_drain(c) for c in conns]
        finished = [b for b, p in zip(bodies, pids, strict=True) if p != victim]
        assert all(b"last\n" in b for b in finished), bodies
        wait_idle(server)


def test_max_requests_recycling_does_not_drift(tmp_path: Path) -> None:
    """Workers recycled every 25 requests leave no drift in calling, writing or the worker rows."""
    env = stack_env(tmp_path)
    extra = ["--max-requests", "25", "--max-requests-jitter", "0"]
    with (
        bind_tcp() as sock,
        launch("gunicorn-sync", "e2e_stack:wsgi", sock, workers=2, extra=extra, env=env) as server,
    ):
        first = set(server.worker_pids())
        family, addr = address(server)
        targets = [("/hello", b"hello from "), ("/stream?n=5", b"chunk 4\n")]
        result = run_load(addr, targets, total=600, concurrency=10, family=family, max_seconds=90)
        assert (result.ok, result.failures) == (600, [])
        wait_until(lambda: len(server.worker_pids()) == 2, timeout=15)
        # 600 requests over 2 workers recycled every 25: every original worker is gone.
        assert first.isdisjoint(server.worker_pids())
        wait_idle(server)
        conn = _send(server.connect(20), "/hold?gate=hold&id=0")
        try:
            _pids(tmp_path, "pid", 1)
            wait_until(lambda: (stats(server)["calling"], stats(server)["writing"]) == (1, 0))
        finally:
            (tmp_path / "hold").touch()
            assert _drain(conn).endswith(b"released\n")
        wait_idle(server)
        status, _, body = server.get("/_utilization?format=json")
        assert status == 200
        # Dead workers' rows are not listed: at most the two live workers.
        assert {w["pid"] for w in json.loads(body)["workers"]} <= set(server.worker_pids())


@pytest.mark.parametrize("why", ["directory removed", "parent is a file"])
def test_unusable_raindrops_segment_warns_and_serves(why: str, tmp_path: Path) -> None:
    """An unusable raindrops segment logs a clear warning per worker and fails no request."""
    if why == "directory removed":
        segment = tmp_path / "gone" / "raindrops.seg"
        reason = f"[Errno 2] cannot create segment: No such file or directory: '{segment}'"
    else:
        (tmp_path / "plain").write_text("")
        segment = tmp_path / "plain" / "raindrops.seg"
        reason = f"[Errno 20] cannot open segment: Not a directory: '{segment}'"
    env = stack_env(tmp_path, RAINDROPS_SEGMENT=str(segment))
    with (
        bind_tcp() as sock,
        launch("gunicorn-sync", "e2e_stack:wsgi", sock, workers=2, env=env) as server,
    ):
        family, addr = address(server)
        targets = [("/hello", b"hello from "), ("/stream?n=4", b"chunk 3\n")]
        result = run_load(addr, targets, total=200, concurrency=10, family=family, max_seconds=60)
        assert (result.ok, result.failures) == (200, [])
        wait_idle(server)
        warning = (
            f"raindrops: cannot use the shared segment {segment} ({reason}); this process "
            "counts in its own anonymous memory, so totals miss other workers"
        )
        log = server.log()
        assert warning in log, log
        assert log.count(warning) <= 2  # once per worker at most
        assert "Traceback" not in log


def test_raindrops_segment_removed_while_running_keeps_counting(tmp_path: Path) -> None:
    """Unlinking the segment file under running workers changes nothing: they keep the mapping."""
    env = stack_env(tmp_path)
    with (
        bind_tcp() as sock,
        launch("gunicorn-sync", "e2e_stack:wsgi", sock, workers=3, env=env) as server,
    ):
        # Three held requests: every sync worker has served one, so opened the segment.
        warm = [_send(server.connect(20), f"/hold?gate=warm&id={i}") for i in range(3)]
        assert len(set(_pids(tmp_path, "pid", 3))) == 3
        (tmp_path / "warm").touch()
        assert all(_drain(c).endswith(b"released\n") for c in warm)
        for i in range(3):
            (tmp_path / f"pid-{i}").unlink()
        os.unlink(tmp_path / "raindrops.seg")
        conns = [_send(server.connect(20), f"/hold?gate=hold&id={i}") for i in range(2)]
        try:
            # Sync workers serve one request each: two different workers hold them.
            assert len(set(_pids(tmp_path, "pid", 2))) == 2
            wait_until(lambda: stats(server)["calling"] == 2, timeout=5)
        finally:
            (tmp_path / "hold").touch()
            assert all(_drain(c).endswith(b"released\n") for c in conns)
        wait_idle(server)


def test_unusable_utilization_segment_is_a_clear_startup_error(tmp_path: Path) -> None:
    """An unusable process-utilization segment stops the server at boot, naming the path."""
    (tmp_path / "plain").write_text("")
    segment = tmp_path / "plain" / "utilization.seg"
    env = stack_env(tmp_path, PROCESS_UTILIZATION_SEGMENT=str(segment))
    with (
        bind_tcp() as sock,
        pytest.raises(ServerStartError) as info,
        launch("gunicorn-sync", "e2e_stack:wsgi", sock, workers=1, env=env, startup_timeout=20),
    ):
        pass
    message = str(info.value)
    assert (
        f"SegmentError: [Errno 20] cannot open segment: Not a directory: '{segment}'" in message
    ), message


@pytest.mark.parametrize("kind", ["gunicorn-sync", "uvicorn"])
def test_netlink_unavailable_still_serves_calling_and_writing(kind: str, tmp_path: Path) -> None:
    """With netlink refused the endpoint still serves the gauges and names what is missing."""
    env = stack_env(tmp_path, E2E_BREAK_NETLINK="1")
    with bind_tcp() as sock, launch(kind, app_for(kind), sock, workers=2, env=env) as server:
        conn = _send(server.connect(20), "/hold?gate=hold&id=0")
        try:
            _pids(tmp_path, "pid", 1)
            status, _, body = server.get("/_raindrops")
            assert (status, body) == (200, b"calling: 1\nwriting: 0\n")
            status, _, body = server.get("/_raindrops?format=json")
            assert status == 200
            doc = json.loads(body)
            assert (doc["calling"], doc["writing"], doc["listeners"]) == (1, 0, {})
            reason = "[Errno 1] netlink refused by the test"
            assert doc["unavailable"] == {"listeners": reason, "overflows": reason}
        finally:
            (tmp_path / "hold").touch()
            assert _drain(conn).endswith(b"released\n")
        wait_until(lambda: server.get("/_raindrops")[2] == b"calling: 0\nwriting: 0\n")
        log = server.log()
        assert f"raindrops: listeners unavailable: {reason}" in log, log
        assert "Traceback" not in log
