"""WSGI middleware: ``process_utilization.wsgi.ProcessUtilization``.

The same class as ``process_utilization.ProcessUtilization``.
"""

from __future__ import annotations

from ._wsgi import ProcessUtilization

__all__ = ["ProcessUtilization"]
