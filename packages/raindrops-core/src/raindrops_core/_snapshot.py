"""One reading of the stats, and the choice of how to render it."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from linux_inet_diag import ListenOverflows, ListenStats

from ._errors import FormatError

__all__ = [
    "CONTENT_TYPES",
    "UNAVAILABLE_HEADER",
    "UNAVAILABLE_PARTS",
    "Format",
    "Snapshot",
    "negotiate",
    "unavailable_header",
]

#: The response header naming the parts of the stats that could not be read.
UNAVAILABLE_HEADER = "X-Raindrops-Unavailable"
#: The parts a snapshot may lack, in the order the header lists them: ``shared``
#: (the gauges are this process's only: it could not join its server's
#: segment), ``listeners`` and ``overflows`` (the kernel's figures).
UNAVAILABLE_PARTS: tuple[str, str, str] = ("shared", "listeners", "overflows")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The stats at one instant: the gauges and every listener's queues.

    ``calling`` is the number of requests inside the application and
    ``writing`` the number of responses whose body is still being sent, on
    every worker sharing the stats.  ``listeners`` maps each listener name
    to its :class:`linux_inet_diag.ListenStats` (``active``, ``queued``,
    ``backlog``), TCP listeners first, then Unix ones, as the Ruby original
    lists them.  ``overflows`` holds the machine's listen-queue overflow
    counters when they could be read.  ``unavailable`` maps each part that
    could not be read (``"listeners"``, ``"overflows"``) to the reason.

    Example::

        >>> snap = Snapshot(calling=2, writing=1, listeners={})
        >>> snap.calling, snap.unavailable
        (2, {})
    """

    calling: int
    writing: int
    listeners: Mapping[str, ListenStats]
    overflows: ListenOverflows | None = None
    unavailable: Mapping[str, str] = field(default_factory=dict)


class Format(str, enum.Enum):
    """The renderings of a snapshot the endpoint can answer with."""

    TEXT = "text"
    JSON = "json"
    PROMETHEUS = "prometheus"
    OPENMETRICS = "openmetrics"


#: The ``Content-Type`` of each format.
CONTENT_TYPES: Mapping[Format, str] = {
    Format.TEXT: "text/plain",
    Format.JSON: "application/json",
    Format.PROMETHEUS: "text/plain; version=0.0.4; charset=utf-8",
    Format.OPENMETRICS: "application/openmetrics-text; version=1.0.0; charset=utf-8",
}

_QUERY_NAMES: Mapping[str, Format] = {
    "text": Format.TEXT,
    "txt": Format.TEXT,
    "json": Format.JSON,
    "prometheus": Format.PROMETHEUS,
    "prom": Format.PROMETHEUS,
    "openmetrics": Format.OPENMETRICS,
}


def _media_format(media: str, params: Mapping[str, str]) -> Format | None:
    if media == "application/json":
        return Format.JSON
    if media == "application/openmetrics-text":
        return Format.OPENMETRICS
    if media == "text/plain":
        return Format.PROMETHEUS if "version" in params else Format.TEXT
    if media in ("text/*", "*/*"):
        return Format.TEXT
    return None


def _parse_accept(accept: str) -> list[tuple[float, int, Format]]:
    choices: list[tuple[float, int, Format]] = []
    for position, item in enumerate(accept.split(",")):
        parts = [p.strip() for p in item.split(";")]
        media = parts[0].lower()
        params: dict[str, str] = {}
        for part in parts[1:]:
            key, _, value = part.partition("=")
            params[key.strip().lower()] = value.strip().strip('"')
        try:
            quality = float(params.pop("q", "1"))
        except ValueError:
            quality = 0.0
        fmt = _media_format(media, params)
        if fmt is not None and quality > 0:
            choices.append((quality, -position, fmt))
    return choices


def negotiate(accept: str | None, query: str | None = None) -> Format:
    """The format to answer with, from ``?format=`` first, else the ``Accept`` header.

    ``?format=`` takes ``text``, ``json``, ``prometheus`` (or ``prom``) and
    ``openmetrics``; anything else raises :class:`FormatError`.  In
    ``Accept``, the media range with the highest ``q`` wins (the earliest on
    a tie): ``application/json``, ``application/openmetrics-text``,
    ``text/plain; version=0.0.4`` (Prometheus), and ``text/plain``,
    ``text/*`` or ``*/*`` (the raindrops text).  No header, or nothing
    recognised in it, gives the raindrops text, as curl expects.

    Example::

        >>> negotiate("application/json"), negotiate(None, "format=prometheus")
        (<Format.JSON: 'json'>, <Format.PROMETHEUS: 'prometheus'>)
    """
    if query:
        values = parse_qs(query, keep_blank_values=True).get("format")
        if values:
            name = values[-1].strip().lower()
            fmt = _QUERY_NAMES.get(name)
            if fmt is None:
                allowed = ", ".join(sorted(_QUERY_NAMES))
                raise FormatError(f"unknown format {values[-1]!r}; allowed: {allowed}")
            return fmt
    if accept:
        choices = _parse_accept(accept)
        if choices:
            return max(choices)[2]
    return Format.TEXT


def unavailable_header(unavailable: Mapping[str, str]) -> str:
    """The ``X-Raindrops-Unavailable`` value: missing parts, comma+space separated, or ``""``.

    Known parts in the order of :data:`UNAVAILABLE_PARTS`, then any other.

    Example::

        >>> unavailable_header({"overflows": "ENOENT", "listeners": "EPERM"})
        'listeners, overflows'
    """
    parts = [part for part in UNAVAILABLE_PARTS if part in unavailable]
    parts += [part for part in unavailable if part not in UNAVAILABLE_PARTS]
    return ", ".join(parts)
