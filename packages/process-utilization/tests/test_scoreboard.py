"""Sharing across processes: fork, named segments, the CLI."""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from process_utilization import (
    SEGMENT_ENV,
    ProcessUtilization,
    open_scoreboard,
    worker_stats,
)
from process_utilization._cli import main


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def serve(mw: ProcessUtilization, n: int = 1) -> None:
    for _ in range(n):
        env = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.errors": io.StringIO()}
        body = mw(env, lambda *a: None)
        list(body)
        body.close()  # type: ignore[attr-defined]


def _wait(pid: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    raise TimeoutError(f"child {pid} did not exit within {timeout}s")


@pytest.mark.linux
def test_forked_worker_claims_its_own_row(clock: Any) -> None:
    """A forked child starts its stats afresh on its own row, seen by the parent."""
    mw = ProcessUtilization(hello, clock=clock)
    serve(mw)  # the parent claims row 0 and serves one request
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.close(ready_r)
            os.close(done_w)
            fresh = mw.total_requests == 0 and mw.in_flight == 0
            clock.t = 1001.0
            serve(mw, 2)
            code = 0 if fresh and mw.total_requests == 2 else 3
            os.write(ready_w, b"x")
            os.read(done_r, 1)
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(done_r)
    try:
        assert os.read(ready_r, 1) == b"x"
        rows = {w.pid: w for w in worker_stats(mw.scoreboard, clock=clock)}
        assert set(rows) == {os.getpid(), pid}
        assert rows[pid].requests_total == 2
        assert rows[pid].index != rows[os.getpid()].index
        assert rows[os.getpid()].requests_total == 1
        assert mw.total_requests == 1
    finally:
        os.write(done_w, b"x")
        os.close(done_w)
        os.close(ready_r)
        assert _wait(pid) == 0


@pytest.mark.linux
def test_named_segment_from_env_is_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two middlewares opening the segment named by the env var share one table."""
    segment = str(tmp_path / "utilization.seg")
    monkeypatch.setenv(SEGMENT_ENV, segment)
    mw = ProcessUtilization(hello)
    serve(mw, 3)
    reader = open_scoreboard(segment, create=False)
    [w] = worker_stats(reader)
    assert (w.pid, w.requests_total, w.in_flight) == (os.getpid(), 3, 0)
    assert 0 < w.busy_seconds_total < 1


@pytest.mark.linux
def test_cli_prints_the_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """process-utilization-top SEGMENT prints every worker, as text or JSON."""
    segment = str(tmp_path / "utilization.seg")
    mw = ProcessUtilization(hello, segment=segment)
    serve(mw, 2)
    assert main([segment]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "worker", "pid", "in_flight", "requests", "busy_s", "req/s", "avg_ms", "util%"
    ]  # fmt: skip
    assert lines[1].split()[:4] == ["0", str(os.getpid()), "0", "2"]
    assert lines[2].split()[:3] == ["total", "0", "2"]
    assert len(lines) == 3
    assert main([segment, "--json", "--interval", "0.01", "--count", "2"]) == 0
    docs = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(docs) == 2
    assert docs[1]["workers"][0]["requests_total"] == 2


def test_cli_missing_segment_fails_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A segment that does not exist gives exit status 1 and one error line."""
    missing = str(tmp_path / "nope.seg")
    assert main([missing]) == 1
    err = capsys.readouterr().err
    assert err.startswith("process-utilization-top: ")
    assert err.count("\n") == 1


@pytest.mark.linux
def test_cli_slots_must_match_the_segment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A segment made with slots=8 is read with --slots 8 and refused otherwise."""
    segment = str(tmp_path / "utilization.seg")
    mw = ProcessUtilization(hello, segment=segment, slots=8)
    serve(mw)
    assert main([segment]) == 1
    assert "8 rows, not 64" in capsys.readouterr().err
    assert main([segment, "--slots", "8"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:4] == [
        "0", str(os.getpid()), "0", "1"
    ]  # fmt: skip
