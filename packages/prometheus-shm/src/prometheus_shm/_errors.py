"""Exceptions of prometheus-shm.

Every concrete error subclasses both :class:`PrometheusShmError` and the
builtin that matches the fault, so ``except ValueError`` and
``except PrometheusShmError`` both work.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "LabelValueTooLongError",
    "NotInstalledError",
    "ProcessTableFullError",
    "PrometheusShmError",
    "SegmentLayoutError",
    "SeriesTableFullError",
    "UnsafeSegmentError",
]


class PrometheusShmError(Exception):
    """Base class of every error raised by prometheus-shm; never raised itself."""


class ConfigError(PrometheusShmError, ValueError):
    """A bad argument to :func:`install` or :class:`Collector`."""


class NotInstalledError(PrometheusShmError, RuntimeError):
    """A collector with no ``path`` in a process where :func:`install` was not called."""


class SeriesTableFullError(PrometheusShmError, RuntimeError):
    """The segment's series table has no room for a new series (values or names)."""


class LabelValueTooLongError(PrometheusShmError, ValueError):
    """A label value (or a whole series key) longer than the segment accepts."""


class ProcessTableFullError(PrometheusShmError, RuntimeError):
    """Every process row of the segment is held by a live process."""


class SegmentLayoutError(PrometheusShmError, OSError):
    """A segment file that is not a prometheus-shm segment this version reads.

    Built like :class:`OSError`: ``.errno`` is ``errno.EINVAL`` and
    ``.filename`` the path.
    """


class UnsafeSegmentError(PrometheusShmError, PermissionError):
    """A segment file another user owns or may write, or not a regular file.

    Built like :class:`OSError`: ``.errno`` is ``errno.EPERM`` and
    ``.filename`` the path.
    """
