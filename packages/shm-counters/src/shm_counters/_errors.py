"""Exceptions of shm-counters.

Every concrete error subclasses both :class:`ShmCountersError` and the
builtin that matches the fault, so ``except IndexError`` and
``except ShmCountersError`` both work.
"""

from __future__ import annotations

__all__ = [
    "BoundsError",
    "CapacityError",
    "ClosedError",
    "CounterIndexError",
    "CounterSizeError",
    "CounterValueError",
    "FieldNameError",
    "ScoreboardFullError",
    "SegmentError",
    "ShmCountersError",
]


class ShmCountersError(Exception):
    """Base class of every error raised by shm-counters; never raised itself."""


class CounterIndexError(ShmCountersError, IndexError):
    """An index outside ``0 <= i < len(counters)`` (negative ones included)."""


class CounterValueError(ShmCountersError, ValueError):
    """A value or amount outside what a counter (or histogram) accepts."""


class CounterSizeError(ShmCountersError, ValueError):
    """A size that is not an int, below 1, or absurdly large."""


class CapacityError(ShmCountersError, ValueError):
    """A resize beyond the capacity of the segment."""


class ClosedError(ShmCountersError, ValueError):
    """An operation on a closed object."""


class FieldNameError(ShmCountersError, ValueError):
    """A bad list of field names for a counter struct or a scoreboard."""


class BoundsError(ShmCountersError, ValueError):
    """Bad histogram bucket bounds."""


class ScoreboardFullError(ShmCountersError, RuntimeError):
    """Every scoreboard row is owned by a live process."""


class SegmentError(ShmCountersError, OSError):
    """A segment that cannot be used or made: missing, foreign, truncated, refused by the OS.

    Built like :class:`OSError`: ``SegmentError(errno.EINVAL, message, path)``,
    so ``.errno`` is an ``errno.*`` value and ``.filename`` the path (None
    for anonymous memory, e.g. ``ENOMEM`` when the system will not map it).
    """
