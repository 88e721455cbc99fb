"""Garbage-collector pauses (``track_gc=True``), timed by the middleware's clock.

A ``gc.callbacks`` entry reads the clock when a collection starts and when
it stops and hands the pause to ``on_pause``. It runs inside whatever
allocation triggered the collection, in any thread, possibly while the
accounting's lock is held: it never takes that lock.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable

__all__ = ["GcTracker"]


class GcTracker:
    """Times every collection while installed; :meth:`stop` uninstalls it.

    Example::

        tracker = GcTracker(clock_ns, on_pause=lambda ns: print(ns), warn=print)
        ...
        tracker.stop()
    """

    __slots__ = ("_clock", "_on_pause", "_started_ns", "_warn", "active")

    def __init__(
        self,
        clock: Callable[[], int],
        on_pause: Callable[[int], None],
        warn: Callable[[str, BaseException], None],
    ) -> None:
        self._clock = clock
        self._on_pause = on_pause
        self._warn = warn
        self._started_ns = 0
        self.active = True
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        try:
            if phase == "start":
                self._started_ns = self._clock()
                return
            self._on_pause(self._clock() - self._started_ns)
        except Exception as exc:  # pragma: no cover - defensive
            self._warn("GC accounting", exc)

    def stop(self) -> None:
        """Stop timing collections (idempotent)."""
        if self.active:
            with contextlib.suppress(ValueError):
                gc.callbacks.remove(self._callback)
            self.active = False
