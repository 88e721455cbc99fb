"""Faults under real servers: SIGKILLed workers, recycled workers, bad segments, no netlink.

Every case runs ``apps/e2e_stack.py`` (raindrops over process-utilization).
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
import time
from pathlib import Path

import pytest
from loadgen import run_load
from process_utilization import open_scoreboard, worker_stats
from servers import Server, ServerStartError, launch, tcp, wait_for_value, wait_until
from test_e2e_matrix import (
    address,
    app_for,
    server_segments,
    settled_utilization,
    stack_env,
    stats,
    utilization,
    wait_idle,
)

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


def _pid_of(gates: Path, name: str) -> int:
    wait_until(lambda: (gates / name).exists(), timeout=15)
    return int((gates / name).read_text())


def _hold_on_two_workers(
    server: Server, gates: Path, route: str, gate: str, n: int
) -> tuple[list[socket.socket], list[int]]:
    """Open ``n`` requests that ``route`` holds until ``gate``, on at least two workers.

    Async workers accept as many connections as come, and one of them may
    win every accept, so the second request is sent while the worker holding
    the first is stopped (SIGSTOP, then SIGCONT once another worker has
    taken it).  Sync workers take one request each anyway.  Returns the
    connections and, per request, the PID of the worker holding it.
    """
    prefix = "spid" if route == "/hstream" else "pid"
    conns: list[socket.socket] = []
    pids: list[int] = []
    try:
        for i in range(n):
            stopped = pids[0] if i == 1 else None
            if stopped is not None:
                os.kill(stopped, signal.SIGSTOP)
            try:
                conn = _send(server.connect(20), f"{route}?gate={gate}&id={i}")
                conns.append(conn)
                if route == "/hstream":
                    _read_until(conn, b"first\n")
                pids.append(_pid_of(gates, f"{prefix}-{i}"))
            finally:
                if stopped is not None:
                    os.kill(stopped, signal.SIGCONT)
    except BaseException:
        (gates / gate).touch()
        for conn in conns:
            _drain(conn)
        raise
    return conns, pids


def _view(server: Server, gauge: str, victim: int) -> tuple[int, bool, int]:
    """``(gauge, victim still listed, total in_flight)`` from the two endpoints."""
    doc = utilization(server)
    listed = victim in {w["pid"] for w in doc["workers"]}
    return stats(server)[gauge], listed, doc["total"]["in_flight"]


def _wait_respawned(server: Server, victim: int, children: int) -> None:
    """Wait until the victim is reaped and the server has as many children as before."""

    def respawned() -> bool:
        pids = server.worker_pids()
        return victim not in pids and len(pids) == children

    wait_until(respawned, timeout=15)


@pytest.mark.parametrize("kind", sorted(KILL_KINDS))
def test_sigkill_worker_holding_requests(kind: str, tmp_path: Path) -> None:
    """A worker SIGKILLed inside the app is respawned and within 1 s both endpoints drop it."""
    workers, held = KILL_KINDS[kind]
    env = stack_env(tmp_path)
    with launch(kind, app_for(kind), tcp(), workers=workers, env=env) as server:
        before = server.worker_pids()
        conns, pids = _hold_on_two_workers(server, tmp_path, "/hold", "hold", held)
        try:
            assert len(set(pids)) >= 2, pids
            victim = pids[0]
            survivors = sum(1 for p in pids if p != victim)
            wait_for_value(lambda: _view(server, "calling", victim), (held, True, held), 5)
            os.kill(victim, signal.SIGKILL)
            # calling, the killed worker's row and in_flight: the truth within 1 s.
            truth = (survivors, False, survivors)
            wait_for_value(lambda: _view(server, "calling", victim), truth, 1.0)
            _wait_respawned(server, victim, len(before))
        finally:
            (tmp_path / "hold").touch()
            bodies = [_drain(c) for c in conns]
        released = [b for b, p in zip(bodies, pids, strict=True) if p != victim]
        assert all(b.endswith(b"released\n") for b in released), bodies
        wait_idle(server)
        doc = settled_utilization(server)
        assert victim not in {w["pid"] for w in doc["workers"]}


@pytest.mark.parametrize("kind", sorted(KILL_KINDS))
def test_sigkill_worker_writing_a_stream(kind: str, tmp_path: Path) -> None:
    """A worker SIGKILLed mid-body is respawned and within 1 s writing and in_flight drop it."""
    workers, held = KILL_KINDS[kind]
    env = stack_env(tmp_path)
    with launch(kind, app_for(kind), tcp(), workers=workers, env=env) as server:
        before = server.worker_pids()
        conns, pids = _hold_on_two_workers(server, tmp_path, "/hstream", "go", held)
        try:
            assert len(set(pids)) >= 2, pids
            wait_for_value(lambda: (stats(server)["calling"], stats(server)["writing"]), (0, held))
            victim = pids[0]
            survivors = sum(1 for p in pids if p != victim)
            # A stream is in flight for process-utilization until its body is done.
            wait_for_value(lambda: _view(server, "writing", victim), (held, True, held), 5)
            os.kill(victim, signal.SIGKILL)
            # writing, the killed worker's row and in_flight: the truth within 1 s.
            truth = (survivors, False, survivors)
            wait_for_value(lambda: _view(server, "writing", victim), truth, 1.0)
            _wait_respawned(server, victim, len(before))
        finally:
            (tmp_path / "go").touch()
            bodies = [_drain(c) for c in conns]
        finished = [b for b, p in zip(bodies, pids, strict=True) if p != victim]
        assert all(b"last\n" in b for b in finished), bodies
        wait_idle(server)
        doc = settled_utilization(server)
        assert victim not in {w["pid"] for w in doc["workers"]}


def test_max_requests_recycling_does_not_drift(tmp_path: Path) -> None:
    """Workers recycled every 25 requests leave no drift in calling, writing or the worker rows."""
    env = stack_env(tmp_path)
    extra = ["--max-requests", "25", "--max-requests-jitter", "0"]
    with launch(
        "gunicorn-sync", "e2e_stack:wsgi", tcp(), workers=2, extra=extra, env=env
    ) as server:
        first = set(server.worker_pids())
        family, addr = address(server)
        targets = [("/hello", b"hello from "), ("/stream?n=5", b"chunk 4\n")]
        result = run_load(addr, targets, total=600, concurrency=10, family=family, max_seconds=90)
        assert (result.ok, result.failures) == (600, [])
        wait_until(lambda: len(server.worker_pids()) == 2, timeout=15)
        # 600 requests over 2 workers recycled every 25: every original worker is gone.
        assert first.isdisjoint(server.worker_pids())
        wait_idle(server)

        # Both sync workers hold a request: both are live, have served, and can
        # not be recycled meanwhile.  The table, read from the segment file (no
        # worker is free to answer), lists exactly them, one request in flight each.
        both = [_send(server.connect(20), f"/hold?gate=both&id={i}") for i in range(2)]
        try:
            holders = set(_pids(tmp_path, "pid", 2))
            assert holders == set(server.worker_pids())
            board = open_scoreboard(str(server_segments(tmp_path)["utilization"]), create=False)
            try:
                rows = {w.pid: w.in_flight for w in worker_stats(board)}
            finally:
                board.close()
            assert rows == dict.fromkeys(holders, 1)
        finally:
            (tmp_path / "both").touch()
            assert all(_drain(c).endswith(b"released\n") for c in both)
        for i in range(2):
            (tmp_path / f"pid-{i}").unlink()
        wait_idle(server)

        # One held request, seen through the endpoint served by the other worker.
        conn = _send(server.connect(20), "/hold?gate=hold&id=0")
        try:
            (holder,) = _pids(tmp_path, "pid", 1)
            wait_until(lambda: (stats(server)["calling"], stats(server)["writing"]) == (1, 0))
            live = set(server.worker_pids())
            doc = utilization(server)
        finally:
            (tmp_path / "hold").touch()
            assert _drain(conn).endswith(b"released\n")
        listed = {w["pid"]: w["in_flight"] for w in doc["workers"]}
        # The holder is listed with its request; any other row is a live worker
        # (every worker that could have served was alive when `live` was read).
        assert listed[holder] == 1
        assert doc["total"]["in_flight"] == 1
        assert set(listed) <= live
        wait_idle(server)


#: Drops the capabilities that let root ignore file permissions, then execs the server.
NO_DAC_OVERRIDE = [
    "--bounding-set=-dac_override,-dac_read_search",
    "--inh-caps=-dac_override,-dac_read_search",
]


def _unwritable_dir(tmp_path: Path) -> tuple[Path, list[str]]:
    """A directory the server cannot create files in (EACCES), and the wrapper that makes it so.

    The directory is mode 0o555.  An ordinary user gets EACCES there; root
    does not (CAP_DAC_OVERRIDE), so as root the server runs under ``setpriv``
    (util-linux) with that capability dropped from its bounding set, still as
    uid 0 so it can read everything else the test made.
    """
    directory = tmp_path / "readonly"
    directory.mkdir()
    directory.chmod(0o555)
    if os.geteuid() != 0:
        return directory, []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("EACCES as root needs CAP_DAC_OVERRIDE dropped: setpriv (util-linux) missing")
    wrapper = [setpriv, *NO_DAC_OVERRIDE]
    probe = subprocess.run(
        [*wrapper, sys.executable, "-c", f"open({str(directory / 'probe')!r}, 'x')"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if "PermissionError: [Errno 13]" not in probe.stderr:
        pytest.skip(
            "EACCES cannot be produced as root here: dropping CAP_DAC_OVERRIDE with setpriv "
            f"did not forbid the write (exit {probe.returncode}: {probe.stderr.strip()[-200:]})"
        )
    return directory, wrapper


@pytest.mark.parametrize("why", ["directory removed", "parent is a file", "directory not writable"])
def test_unusable_raindrops_segment_warns_and_serves(why: str, tmp_path: Path) -> None:
    """An unusable raindrops segment logs a clear warning per worker and fails no request."""
    wrapper: list[str] = []
    if why == "directory removed":
        segment = tmp_path / "gone" / "raindrops.seg"
        reason = f"[Errno 2] cannot create segment: No such file or directory: '{segment}'"
    elif why == "parent is a file":
        (tmp_path / "plain").write_text("")
        segment = tmp_path / "plain" / "raindrops.seg"
        reason = f"[Errno 20] cannot open segment: Not a directory: '{segment}'"
    else:
        directory, wrapper = _unwritable_dir(tmp_path)
        segment = directory / "raindrops.seg"
        reason = f"[Errno 13] cannot create segment: Permission denied: '{segment}'"
    env = stack_env(tmp_path, RAINDROPS_SEGMENT=str(segment))
    with launch(
        "gunicorn-sync", "e2e_stack:wsgi", tcp(), workers=2, env=env, wrapper=wrapper
    ) as server:
        family, addr = address(server)
        targets = [("/hello", b"hello from "), ("/stream?n=4", b"chunk 3\n")]
        result = run_load(addr, targets, total=200, concurrency=10, family=family, max_seconds=60)
        assert (result.ok, result.failures) == (200, [])
        wait_idle(server)
        warning = (
            f"raindrops: cannot use the shared segment {segment} ({reason}); this process "
            "counts calling/writing in its own memory, so its figures miss every other "
            "worker. To share them, name one segment for every worker: "
            "RaindropsMiddleware(app, segment='/dev/shm/NAME') or $RAINDROPS_SEGMENT"
        )
        log = server.log()
        assert warning in log, log
        assert log.count(warning) <= 2  # once per worker at most
        assert "Traceback" not in log
    assert not segment.exists()


def test_raindrops_segment_removed_while_running_keeps_counting(tmp_path: Path) -> None:
    """Unlinking the segment file under running workers changes nothing: they keep the mapping."""
    env = stack_env(tmp_path)
    with launch("gunicorn-sync", "e2e_stack:wsgi", tcp(), workers=3, env=env) as server:
        # Three held requests: every sync worker has served one, so opened the segment.
        warm = [_send(server.connect(20), f"/hold?gate=warm&id={i}") for i in range(3)]
        assert len(set(_pids(tmp_path, "pid", 3))) == 3
        (tmp_path / "warm").touch()
        assert all(_drain(c).endswith(b"released\n") for c in warm)
        for i in range(3):
            (tmp_path / f"pid-{i}").unlink()
        os.unlink(server_segments(tmp_path)["raindrops"])
        conns = [_send(server.connect(20), f"/hold?gate=hold&id={i}") for i in range(2)]
        try:
            # Sync workers serve one request each: two different workers hold them.
            assert len(set(_pids(tmp_path, "pid", 2))) == 2
            wait_until(lambda: stats(server)["calling"] == 2, timeout=5)
        finally:
            (tmp_path / "hold").touch()
            assert all(_drain(c).endswith(b"released\n") for c in conns)
        wait_idle(server)


def test_segments_removed_then_worker_respawned_keeps_one_table(tmp_path: Path) -> None:
    """After both segment files are unlinked, a respawned worker adopts them: nothing splits.

    shm-counters maps the deleted file a sibling still holds (/proc/PID/fd)
    instead of creating a new one at the path, so the new worker's requests
    are seen by the old workers and the utilization table lists every worker.
    """
    env = stack_env(tmp_path)
    with launch("gunicorn-sync", "e2e_stack:wsgi", tcp(), workers=3, env=env) as server:
        # Three held requests: every sync worker has served one, so opened both segments.
        warm = [_send(server.connect(20), f"/hold?gate=warm&id={i}") for i in range(3)]
        assert len(set(_pids(tmp_path, "pid", 3))) == 3
        (tmp_path / "warm").touch()
        assert all(_drain(c).endswith(b"released\n") for c in warm)
        for i in range(3):
            (tmp_path / f"pid-{i}").unlink()
        before = server.worker_pids()
        segments = list(server_segments(tmp_path).values())
        assert len(segments) == 3  # raindrops, utilization, latency
        for segment in segments:
            os.unlink(segment)
        victim = before[0]
        os.kill(victim, signal.SIGKILL)
        _wait_respawned(server, victim, len(before))
        (newcomer,) = set(server.worker_pids()) - set(before)
        old = sorted(set(server.worker_pids()) - {newcomer})
        # The newcomer holds one request (the old workers are stopped meanwhile,
        # so only it can accept), then an old worker holds another.
        for pid in old:
            os.kill(pid, signal.SIGSTOP)
        try:
            first = _send(server.connect(20), "/hold?gate=hold&id=0")
            assert _pid_of(tmp_path, "pid-0") == newcomer
        finally:
            for pid in old:
                os.kill(pid, signal.SIGCONT)
        conns = [first, _send(server.connect(20), "/hold?gate=hold&id=1")]
        try:
            assert _pid_of(tmp_path, "pid-1") in old
            # The third worker (an old one) answers: it sees the newcomer's request.
            wait_until(lambda: stats(server)["calling"] == 2, timeout=5)
        finally:
            (tmp_path / "hold").touch()
            assert all(_drain(c).endswith(b"released\n") for c in conns)
        wait_idle(server)
        live = set(server.worker_pids())
        # Whichever worker answers, the table lists every live worker: all have served.
        answers = [{w["pid"] for w in settled_utilization(server)["workers"]} for _ in range(6)]
        assert answers == [live] * 6
        # And no second file was made at any of the paths.
        assert [segment.exists() for segment in segments] == [False, False, False]


@pytest.mark.parametrize("why", ["parent is a file", "directory not writable"])
def test_unusable_utilization_segment_is_a_clear_startup_error(why: str, tmp_path: Path) -> None:
    """An unusable process-utilization segment stops the server at boot, naming the path."""
    wrapper: list[str] = []
    if why == "parent is a file":
        (tmp_path / "plain").write_text("")
        segment = tmp_path / "plain" / "utilization.seg"
        error = f"SegmentError: [Errno 20] cannot open segment: Not a directory: '{segment}'"
    else:
        directory, wrapper = _unwritable_dir(tmp_path)
        segment = directory / "utilization.seg"
        error = f"SegmentError: [Errno 13] cannot create segment: Permission denied: '{segment}'"
    env = stack_env(tmp_path, PROCESS_UTILIZATION_SEGMENT=str(segment))
    with (
        pytest.raises(ServerStartError) as info,
        launch(
            "gunicorn-sync",
            "e2e_stack:wsgi",
            tcp(),
            workers=1,
            env=env,
            startup_timeout=20,
            wrapper=wrapper,
        ),
    ):
        pass
    message = str(info.value)
    assert error in message, message


@pytest.mark.parametrize("kind", ["gunicorn-sync", "uvicorn"])
def test_netlink_unavailable_still_serves_calling_and_writing(kind: str, tmp_path: Path) -> None:
    """With netlink refused the endpoint still serves the gauges and names what is missing."""
    env = stack_env(tmp_path, E2E_BREAK_NETLINK="1")
    with launch(kind, app_for(kind), tcp(), workers=2, env=env) as server:
        conn = _send(server.connect(20), "/hold?gate=hold&id=0")
        try:
            _pids(tmp_path, "pid", 1)
            status, headers, body = server.get("/_raindrops")
            assert (status, body) == (200, b"calling: 1\nwriting: 0\n")
            # The text format never reads the overflow counters: only listeners are missing.
            assert headers["x-raindrops-unavailable"] == "listeners"
            status, headers, body = server.get("/_raindrops?format=json")
            assert status == 200
            assert headers["x-raindrops-unavailable"] == "listeners, overflows"
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
