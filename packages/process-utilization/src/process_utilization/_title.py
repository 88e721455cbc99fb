"""The process title: the worker's figures in ``ps`` (``proctitle=True``, the setproctitle extra).

At most once per ``proctitle_interval`` seconds, at the end of a request::

    gunicorn: worker [app] worker[00]: 3 reqs, 1.5 req/s, 417ms avg, 62.5% util
"""

from __future__ import annotations

from collections.abc import Callable

from ._accounting import NEVER
from ._extras import require
from ._figures import UtilizationStats

__all__ = ["Title", "title_text"]


def title_text(base: str, stats: UtilizationStats, worker: int | None) -> str:
    """The title: ``base``, the worker's row (``-1`` without one), then its figures.

    Example::

        title_text("web", stats, 0)  # 'web worker[00]: 3 reqs, 1.5 req/s, 417ms avg, 62.5% util'
    """
    number = -1 if worker is None else worker
    return (
        f"{base} worker[{number:02d}]: "
        f"{stats.total_requests} reqs, {stats.requests_per_second:.1f} req/s, "
        f"{stats.average_response_time:.0f}ms avg, "
        f"{stats.percentage_active:.1f}% util"
    ).lstrip()


class Title:
    """Whether and when the title is set, and the title the worker had.

    Disabled (``enabled=False``), it is never due and imports nothing.

    Example::

        title = Title(True, "web", 10**9)
        title.start(now)
        if now >= title.due_ns:
            title.next(now)
            title.show(title_text(title.base, stats, 0))
    """

    __slots__ = ("_get", "_set", "base", "due_ns", "interval_ns", "prefix")

    def __init__(self, enabled: bool, prefix: str | None, interval_ns: int) -> None:
        self._set: Callable[[str], None] | None = None
        self._get: Callable[[], str] | None = None
        if enabled:
            mod = require("setproctitle", feature="proctitle=True", extra="setproctitle")
            self._set = mod.setproctitle
            self._get = mod.getproctitle
        self.prefix = prefix
        self.interval_ns = interval_ns
        self.base = ""
        self.due_ns = NEVER

    @property
    def enabled(self) -> bool:
        """Whether the title is set at all."""
        return self._set is not None

    def start(self, now: int) -> None:
        """The first request: remember the title the worker had (may raise); due at once."""
        if self._get is None:
            return
        self.due_ns = now
        self.base = self.prefix or self._get()

    def reset(self) -> None:
        """Nothing due (in a forked child, until its first request)."""
        self.due_ns = NEVER

    def next(self, now: int) -> None:
        """A title is set at ``now``: the next is due one interval later."""
        self.due_ns = now + self.interval_ns

    def show(self, text: str) -> None:
        """Set the process title to ``text`` (may raise)."""
        if self._set is not None:
            self._set(text)
