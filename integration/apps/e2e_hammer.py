"""Worker functions for the exact-count test: importable by spawned processes."""

from __future__ import annotations

from shm_counters import Counters


def hammer(counters: Counters | None, path: str | None, n: int) -> None:
    """Increment counter 0 by 1 and counter 1 by 3, ``n`` times each.

    Forked children get the parent's ``counters``; spawned ones attach to ``path``.
    """
    c = counters if counters is not None else Counters.attach(path)  # type: ignore[arg-type]
    incr = c.incr
    for _ in range(n):
        incr(0)
        incr(1, 3)
