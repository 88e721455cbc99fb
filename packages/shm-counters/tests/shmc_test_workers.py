"""Worker functions for spawned processes (importable by module name)."""

from __future__ import annotations

from typing import Any


def incr_counters(path: str, index: int, times: int) -> None:
    """Attach to the counters at ``path`` and increment ``index`` ``times`` times."""
    from shm_counters import Counters

    c = Counters.attach(path)
    incr = c.incr
    for _ in range(times):
        incr(index)
    c.close()


def create_and_incr(path: str, size: int, start: Any) -> None:
    """Wait for ``start``, then create-or-attach ``path`` and increment counter 0."""
    from shm_counters import Counters

    start.wait(30)
    c = Counters(size, path=path)
    c.incr(0)
    c.close()


def record_histogram(path: str, values: list[int]) -> None:
    """Attach to the histogram at ``path`` and record ``values``."""
    from shm_counters import Histogram

    h = Histogram.attach(path)
    for v in values:
        h.record(v)
    h.close()


def hold_scoreboard_row(path: str, fields: list[str], ready: Any, done: Any) -> None:
    """Claim a row, count 3 calls and 1 write, report the row, wait for ``done``."""
    from shm_counters import Scoreboard

    board = Scoreboard(4, fields, path=path, liveness_ttl=0)
    row = board.claim()
    row.incr_calling(3)
    row.incr_writing()
    ready.put(row.index)
    done.wait(30)


def fadd_cells(path: str, tag: str, index: int, amount: float, times: int) -> None:
    """Attach to the cells at ``path``; add ``amount`` to double cell ``index``, ``times`` times."""
    from shm_counters import Cells

    cells = Cells.attach(path, tag=tag)
    add = cells.bind_fadd(index)
    for _ in range(times):
        add(amount)
    cells.close()
