"""Exceptions of raindrops-asgi: those of raindrops-core, re-exported.

The middleware adds no error of its own: options are checked by
:class:`raindrops_core.RaindropsState` (raising
:class:`raindrops_core.ConfigError`), and the application's own exceptions
propagate unchanged.
"""

from __future__ import annotations

from raindrops_core import ConfigError, FormatError, RaindropsError

__all__ = ["ConfigError", "FormatError", "RaindropsError"]
