"""The kernel reads of the endpoint and the Watcher: described once, run blocking or on a loop.

A read is a generator of *steps* (as linux-inet-diag's own queries are):
it yields ``(query, names)``, a ``DiagSocket``/``AsyncDiagSocket`` method
name and its argument, receives that query's answer, and returns the
result. :func:`run` drives it with a blocking ``DiagSocket``, :func:`arun`
with an ``AsyncDiagSocket`` on the running event loop (never blocking
it); nothing else differs between the two, so the split of names into
TCP and Unix queries, and their order, are written once
(:func:`listener_stats_steps`).

Example::

    >>> from linux_inet_diag import DiagSocket
    >>> with DiagSocket() as diag:  # doctest: +SKIP
    ...     run(listener_stats_steps(["127.0.0.1:8080"]), diag)
    {'127.0.0.1:8080': ListenStats(active=0, queued=0, backlog=None)}
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from linux_inet_diag import (
    AsyncDiagSocket,
    DiagSocket,
    ListenOverflows,
    ListenStats,
    listen_overflows,
)

from ._validate import split_names

__all__ = ["Kernel", "ReadSteps", "arun", "listener_stats_steps", "run"]


@dataclass(frozen=True, slots=True)
class Kernel:
    """Where the kernel's figures come from: the one seam to replace them.

    ``diag()`` makes a blocking ``linux_inet_diag.DiagSocket`` (one is kept
    per thread), ``adiag()`` an ``AsyncDiagSocket`` (one per query, on the
    running loop), ``listen_overflows()`` reads the machine's listen-queue
    overflow counters. The default reads the real kernel; tests, and hosts
    where netlink is refused on purpose, pass their own (any object with the
    same methods: ``tcp_listener_stats(names)``, ``unix_listener_stats(names)``,
    ``close()``).

    Example::

        >>> from raindrops_core import RaindropsState
        >>> def refused():
        ...     raise PermissionError(1, "netlink refused")
        >>> state = RaindropsState(segment="anonymous", kernel=Kernel(diag=refused))
    """

    diag: Callable[[], DiagSocket] = DiagSocket
    adiag: Callable[[], AsyncDiagSocket] = AsyncDiagSocket
    listen_overflows: Callable[[], ListenOverflows] = listen_overflows


T = TypeVar("T")

#: A read: yields ``(query method name, argument)``, is sent the answer, returns ``T``.
ReadSteps = Generator[tuple[str, Any], Any, T]


def listener_stats_steps(
    names: Sequence[str] | None,
) -> ReadSteps[dict[str, ListenStats]]:
    """The listeners' ``active``/``queued``/``backlog``: TCP names first, then Unix ones.

    ``names=None`` asks for every TCP and Unix listener; an empty list asks
    the kernel nothing.
    """
    if names is None:
        tcp: list[str] | None = None
        unix: list[str] | None = None
    else:
        tcp, unix = split_names(names)
    found: dict[str, ListenStats] = {}
    if tcp is None or tcp:
        answer: Mapping[str, ListenStats] = yield ("tcp_listener_stats", tcp)
        found.update(answer)
    if unix is None or unix:
        answer = yield ("unix_listener_stats", unix)
        found.update(answer)
    return found


def run(steps: ReadSteps[T], diag: DiagSocket) -> T:
    """Drive ``steps`` with a blocking ``DiagSocket`` (one query after another)."""
    try:
        query, arg = next(steps)
        while True:
            query, arg = steps.send(getattr(diag, query)(arg))
    except StopIteration as done:
        result: T = done.value
        return result


async def arun(steps: ReadSteps[T], diag: AsyncDiagSocket) -> T:
    """Drive ``steps`` with an ``AsyncDiagSocket`` on the running loop (never blocking it)."""
    try:
        query, arg = next(steps)
        while True:
            query, arg = steps.send(await getattr(diag, query)(arg))
    except StopIteration as done:
        result: T = done.value
        return result
