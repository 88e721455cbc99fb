"""The stats endpoint (``stats_path``): who may read the table, and the answer, for both adapters.

The table lists every worker's PID and load, so it answers the readers
raindrops' ``/_raindrops`` answers, under raindrops-core's one access rule
(:class:`raindrops_core.adapter.AccessList`): loopback and local
Unix-socket peers by default, ``allow=`` to widen; a request whose client
address is unknown, or that came over a Unix socket (or with no address)
carrying ``X-Forwarded-For``, ``Forwarded`` or ``X-Real-IP``, is refused.
A refused request gets ``403`` with the reason, as plain text the browser
must not sniff. The adapters only turn the request into a
:class:`~raindrops_core.adapter.Peer` and the
:class:`~raindrops_core.adapter.Reply` into their protocol.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from urllib.parse import parse_qs

from raindrops_core.adapter import UNAVAILABLE_HEADER, AccessList, Peer, Reply, plain, reply

from ._errors import ConfigError

__all__ = ["StatsEndpoint", "check_stats_path", "wants_json"]

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


class StatsEndpoint:
    """The table, for the peers ``allow`` admits.

    ``allow`` is what raindrops' middleware takes: networks
    (``["10.0.0.0/8", "::1"]``; default ``DEFAULT_ALLOW``, loopback) or an
    :class:`~raindrops_core.adapter.AccessList`. Raises :class:`ConfigError`
    naming a malformed entry.

    Example::

        endpoint = StatsEndpoint(DEFAULT_ALLOW)
        reply = endpoint.answer(Peer.from_wsgi(environ), query, accept, mw.render_stats, None)
    """

    __slots__ = ("access",)

    def __init__(self, allow: Iterable[str] | AccessList) -> None:
        try:
            self.access = AccessList.parse(allow)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc

    def answer(
        self, peer: Peer, query: str, accept: str, render: Render, unshared: str | None
    ) -> Reply:
        """The answer to ``peer``: 403, the table (200), or 500 if it cannot be read.

        ``unshared`` (why this worker's table is its own only) adds
        ``X-Raindrops-Unavailable: shared``.
        """
        reason = self.access.refusal(peer)
        if reason is not None:
            return plain(403, f"403 Forbidden: {reason}\n")
        try:
            ctype, body = render(wants_json(query, accept))
            status = 200
        except Exception as exc:
            _log.warning("process_utilization: stats endpoint failed: %r", exc)
            ctype, body, status = "text/plain; charset=utf-8", b"stats unavailable\n", 500
        extra = [("Cache-Control", "no-store")]
        if unshared is not None:
            extra.append((UNAVAILABLE_HEADER, "shared"))
        return reply(status, body, ctype, extra)
