"""Lazy imports of the optional extras, with an error that names the extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from ._errors import MissingExtraError

__all__ = ["require"]


def require(module: str, *, feature: str, extra: str) -> ModuleType:
    """Import ``module`` for ``feature``, or raise :class:`MissingExtraError`.

    Example::

        setproctitle = require("setproctitle", feature="proctitle=True",
                               extra="setproctitle")
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name is not None and exc.name != module:
            raise
        raise MissingExtraError(feature, extra, module) from exc
