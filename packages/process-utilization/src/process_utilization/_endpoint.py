"""The stats endpoint (``stats_path``): the table's answer, for both adapters.

The adapters only turn the :class:`~raindrops_core.adapter.Reply` into
their protocol.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import parse_qs

from raindrops_core.adapter import UNAVAILABLE_HEADER, Reply

from ._errors import ConfigError

__all__ = ["answer", "check_stats_path", "wants_json"]

_log = logging.getLogger("process_utilization")

#: ``render(want_json) -> (content_type, body)``: the table (``render_stats``).
Render = Callable[[bool], tuple[str, bytes]]


def wants_json(query: str, accept: str) -> bool:
    """JSON if ``?format=json`` (the last ``format`` wins), else if ``Accept`` names it.

    Example::

        >>> wants_json("format=json", ""), wants_json("", "text/html")
        (True, False)
    """
    fmt = parse_qs(query).get("format")
    if fmt:
        return fmt[-1] == "json"
    return "application/json" in accept


def check_stats_path(path: object) -> None:
    """``stats_path`` must be ``None`` or a path starting with ``/``."""
    if path is not None and not (isinstance(path, str) and path.startswith("/")):
        raise ConfigError(f"stats_path must be None or a path starting with '/', got {path!r}")


def answer(query: str, accept: str, render: Render, unshared: str | None) -> Reply:
    """The endpoint's answer: the table (200), or 500 if it cannot be read.

    ``unshared`` (why this worker's table is its own only) adds
    ``X-Raindrops-Unavailable: shared``.
    """
    try:
        ctype, body = render(wants_json(query, accept))
        status = 200
    except Exception as exc:
        _log.warning("process_utilization: stats endpoint failed: %r", exc)
        ctype, body, status = "text/plain; charset=utf-8", b"stats unavailable\n", 500
    headers: tuple[tuple[str, str], ...] = (
        ("Content-Type", ctype),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
    )
    if unshared is not None:
        headers += ((UNAVAILABLE_HEADER, "shared"),)
    return Reply(status, headers, body)
