"""Worker functions for spawned processes (importable by module name)."""

from __future__ import annotations

from typing import Any


def spawned_worker(path: str, n: int, amount: float, ready: Any, go: Any) -> None:
    """Install on ``path``, count ``n`` requests of ``amount``, set gauges, wait for ``go``."""
    import prometheus_shm
    from prometheus_client import Counter, Gauge

    prometheus_shm.install(path)
    c = Counter("spawned_requests", "Requests.", ["route"], registry=None)
    g = Gauge("spawned_busy", "Busy.", registry=None, multiprocess_mode="livesum")
    for _ in range(n):
        c.labels("/").inc(amount)
    g.inc()
    ready.set()
    go.wait(60)
