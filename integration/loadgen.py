"""A bounded HTTP/1.1 load generator over loopback TCP or a Unix socket.

``run_load(address, targets, total=..., concurrency=...)`` sends ``total``
requests, ``concurrency`` at a time, each on a fresh connection with
``Connection: close``, cycling through ``targets`` (path, expected body
fragment).  It stops by itself: every request has a timeout, and the whole
run has a deadline.  A request fails if it errors, times out, answers a
status other than 200, or its body lacks the expected fragment.

Example::

    result = run_load(("127.0.0.1", 8000), [("/hello", b"hello")], total=1000, concurrency=50)
    assert result.failures == []
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LoadResult:
    """What a run did: counts by outcome, the failures, and the wall time."""

    sent: int = 0
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


async def _exchange(family: int, address: Any, path: str, box: list[asyncio.StreamWriter]) -> bytes:
    if family == socket.AF_UNIX:
        reader, writer = await asyncio.open_unix_connection(str(address))
    else:
        reader, writer = await asyncio.open_connection(address[0], address[1])
    box.append(writer)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    return await reader.read(-1)


async def _one(family: int, address: Any, path: str, expect: bytes, timeout: float) -> str | None:
    """Send one request; ``None`` if it succeeded, else why not."""
    box: list[asyncio.StreamWriter] = []
    try:
        data = await asyncio.wait_for(_exchange(family, address, path, box), timeout)
    except (OSError, asyncio.TimeoutError) as exc:
        return f"{path}: {type(exc).__name__}: {exc}"
    finally:
        for writer in box:
            writer.close()
    status_line = data.split(b"\r\n", 1)[0]
    if not status_line.startswith(b"HTTP/1.1 200"):
        return f"{path}: {status_line!r}"
    if expect not in data:
        return f"{path}: body lacks {expect!r}: {data[-200:]!r}"
    return None


async def _run(
    family: int,
    address: Any,
    targets: Sequence[tuple[str, bytes]],
    total: int,
    concurrency: int,
    timeout: float,
    deadline: float,
    on_progress: Callable[[int], None] | None,
) -> LoadResult:
    result = LoadResult()
    counter = iter(range(total))

    async def worker() -> None:
        for i in counter:
            if time.monotonic() > deadline:
                result.failures.append(f"request {i} not sent: run deadline passed")
                continue
            path, expect = targets[i % len(targets)]
            result.sent += 1
            failure = await _one(family, address, path, expect, timeout)
            if failure is None:
                result.ok += 1
            else:
                result.failures.append(failure)
            if on_progress is not None:
                on_progress(i)

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.monotonic() - start
    return result


def run_load(
    address: Any,
    targets: Sequence[tuple[str, bytes]],
    *,
    total: int,
    concurrency: int,
    family: int = socket.AF_INET,
    timeout: float = 30.0,
    max_seconds: float = 120.0,
    on_progress: Callable[[int], None] | None = None,
) -> LoadResult:
    """Send ``total`` requests ``concurrency`` at a time; never runs past ``max_seconds``.

    ``on_progress(i)`` is called in the event loop after request ``i`` ends.
    """
    if total < 1 or concurrency < 1 or not targets:
        raise ValueError(
            f"need total >= 1, concurrency >= 1 and targets, got {total}, {concurrency}"
        )
    deadline = time.monotonic() + max_seconds
    return asyncio.run(
        _run(family, address, targets, total, concurrency, timeout, deadline, on_progress)
    )
