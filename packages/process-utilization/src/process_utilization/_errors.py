"""Errors raised by process_utilization.

Every error derives from :class:`ProcessUtilizationError` (never raised
itself) and from the builtin that matches who is at fault, so callers can
catch either.
"""

from __future__ import annotations

__all__ = ["ConfigError", "MissingExtraError", "ProcessUtilizationError"]


class ProcessUtilizationError(Exception):
    """Base class of every error raised by process_utilization."""


class ConfigError(ProcessUtilizationError, ValueError):
    """A middleware or reader option has a value that is not allowed.

    Example: ``window=0`` gives ``window must be a positive number of
    seconds, got 0``.
    """


class MissingExtraError(ProcessUtilizationError, ImportError):
    """An optional feature was enabled but its extra is not installed.

    The message names the ``pip install`` command that provides it, for
    example ``pip install 'process-utilization[statsd]'``.
    """

    def __init__(self, feature: str, extra: str, module: str) -> None:
        super().__init__(
            f"{feature} needs the {module!r} module, which is not installed; "
            f"install it with: pip install 'process-utilization[{extra}]'",
            name=module,
        )
        self.feature = feature
        self.extra = extra
