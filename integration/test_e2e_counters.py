"""Exact totals: 8 processes x 1,000,000 increments on shared counters, forked and spawned."""

from __future__ import annotations

import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from servers import APPS_DIR
from shm_counters import Counters

pytestmark = [
    pytest.mark.linux,
    pytest.mark.skipif(sys.platform != "linux", reason="fork and /dev/shm semantics"),
    pytest.mark.timeout(120),
]

PROCESSES = 8
PER_PROCESS = 1_000_000
#: All children together must finish within this (the test's timeout is 120 s).
JOIN_SECONDS = 90


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_eight_processes_million_increments_exact(method: str, tmp_path: Path) -> None:
    """8 processes each adding 1 and 3 a million times leave exactly 8,000,000 and 24,000,000."""
    if str(APPS_DIR) not in sys.path:
        sys.path.insert(0, str(APPS_DIR))  # spawned children inherit sys.path
    from e2e_hammer import hammer

    ctx: Any = multiprocessing.get_context(method)
    path = str(tmp_path / "hammer.seg")
    counters = Counters(2) if method == "fork" else Counters(2, path=path)
    procs: list[Any] = []
    try:
        args = (counters, None, PER_PROCESS) if method == "fork" else (None, path, PER_PROCESS)
        for _ in range(PROCESSES):
            proc = ctx.Process(target=hammer, args=args)
            proc.start()
            procs.append(proc)
        deadline = time.monotonic() + JOIN_SECONDS
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        assert [p.exitcode for p in procs] == [0] * PROCESSES
        assert counters.to_list() == [PROCESSES * PER_PROCESS, 3 * PROCESSES * PER_PROCESS]
    finally:
        _stop(procs)
        counters.close()


def _stop(procs: list[Any]) -> None:
    """Terminate, then kill, and join every process still running (10 s at most in all)."""
    for signal_them in ("terminate", "kill"):
        for p in procs:
            if p.is_alive():
                getattr(p, signal_them)()
        deadline = time.monotonic() + 5
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if not p.is_alive():
            p.close()
