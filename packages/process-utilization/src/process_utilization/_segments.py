"""Where the figures are shared: the scoreboard and the request-duration histogram.

By default both are named after the server's socket
(``<shm>/raindrops-<euid>/utilization-<inode>`` and ``latency-<inode>``,
:func:`shm_counters.server_segment`), opened at the first use in each
worker, when the server's sockets are there to name them. A segment given
(``segment=PATH``, ``$PROCESS_UTILIZATION_SEGMENT``) is opened at once, so
a bad one fails at boot, with its histogram at ``PATH.latency``; so is
``"anonymous"`` memory and a scoreboard passed in (their histograms are
anonymous). A worker that cannot share keeps its figures in its own memory
and says why, once (:attr:`Segments.unshared`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from shm_counters import Histogram, Scoreboard, ShmCountersError, server_segment

from ._board import (
    ANONYMOUS,
    LATENCY_NAME,
    LATENCY_SUFFIX,
    SEGMENT_ENV,
    SEGMENT_NAME,
    check_segment,
    open_scoreboard,
)

__all__ = ["Segments"]

_log = logging.getLogger("process_utilization")


class Segments:
    """This middleware's scoreboard and histogram, opened once (again after fork if unshared).

    Example::

        seg = Segments(scoreboard=None, segment=None, slots=64, edges=(0, 100_000_001))
        seg.board  # opened now, from the server's sockets
        seg.record_latency(12_000_000)  # one request of 12 ms (None when off)
    """

    __slots__ = (
        "_board",
        "_edges",
        "_open_lock",
        "_slots",
        "latency",
        "record_latency",
        "unshared",
    )

    def __init__(
        self,
        *,
        scoreboard: Scoreboard | None,
        segment: object,
        slots: int,
        edges: tuple[int, ...] | None,
    ) -> None:
        self._slots = slots
        self._edges = edges
        self._open_lock = threading.Lock()
        #: Why this worker's figures are its own only (``None``: they are shared).
        self.unshared: str | None = None
        #: Every worker's request durations (``None`` with ``latency_buckets=None``).
        self.latency: Histogram | None = None
        #: ``latency``'s bound record step (``None`` when off or closed).
        self.record_latency: Callable[[int], int] | None = None
        if scoreboard is None:
            chosen = check_segment(segment)
            if chosen is not None:
                scoreboard = open_scoreboard(chosen, slots=slots)
                self._open_latency(None if chosen == ANONYMOUS else chosen + LATENCY_SUFFIX)
        else:
            self._open_latency(None)
        self._board: Scoreboard | None = scoreboard

    @property
    def board(self) -> Scoreboard:
        """The scoreboard every worker of the server shares (opened on first use)."""
        board = self._board
        if board is None:
            with self._open_lock:
                board = self._board
                if board is None:
                    board = self._board = self._open_default()
        return board

    def after_fork(self) -> None:
        """In a forked child: a parent that found no server (a master that imported
        the app) had nothing to share; this child looks again."""
        self._open_lock = threading.Lock()
        if self.unshared is not None:
            self._board = None
            self.unshared = None
            self.latency = self.record_latency = None

    def stop_latency(self) -> None:
        """Record no more durations (the histogram is every worker's: it stays as it is)."""
        self.record_latency = None

    def _open_latency(self, path: str | None) -> None:
        """Open the histogram at ``path`` (``None``: anonymous memory).

        A segment that cannot be used (buckets other than this worker's,
        another user's file) is said once and replaced by a private one.
        """
        edges = self._edges
        if edges is None:
            return
        try:
            hist = Histogram(edges, path=path)
        except (ShmCountersError, OSError) as exc:
            _log.warning(
                "process_utilization: cannot use the latency histogram %s (%s); this "
                "worker's request durations are kept in its own memory",
                path,
                exc,
            )
            hist = Histogram(edges)
        self.latency = hist
        self.record_latency = hist.bind_record()

    def _open_default(self) -> Scoreboard:
        found = server_segment(SEGMENT_NAME)
        if found.path is not None:
            try:
                board = open_scoreboard(found.path, slots=self._slots)
            except (ShmCountersError, OSError, ValueError) as exc:
                reason = f"cannot use the shared segment {found.path} ({exc})"
            else:
                if self.latency is None:
                    self._open_latency(server_segment(LATENCY_NAME, found.listeners).path)
                return board
        else:
            reason = found.reason
        self.unshared = reason
        _log.warning(
            "process_utilization: %s; this worker keeps its figures in its own memory, so "
            "the table misses every other worker. To share them, name one segment for "
            "every worker: ProcessUtilization(app, segment='/dev/shm/NAME') or $%s",
            reason,
            SEGMENT_ENV,
        )
        if self.latency is None:
            self._open_latency(None)
        return open_scoreboard(None, slots=self._slots)
