"""Exceptions of raindrops-core.

Every concrete error subclasses both :class:`RaindropsError` and the builtin
that matches the fault, so ``except ValueError`` works as well.
"""

from __future__ import annotations

__all__ = ["ConfigError", "FormatError", "RaindropsError", "TailStreamsFullError"]


class RaindropsError(Exception):
    """Base class of every error raised by raindrops-core; never raised itself."""


class ConfigError(RaindropsError, ValueError):
    """A bad option given at construction: a malformed listener, network, path, ...

    Raised when the middleware (or :class:`~raindrops_core.RaindropsState`) is
    built, never while a request is served.
    """


class FormatError(RaindropsError, ValueError):
    """An unknown ``?format=`` value asked of the stats endpoint (answered 400)."""


class TailStreamsFullError(RaindropsError, RuntimeError):
    """A Watcher engine already has its most tail streams open (the Watcher answers 503)."""
