"""Renderings of a :class:`Snapshot`: the Ruby original's text, and JSON."""

from __future__ import annotations

import json

from linux_inet_diag import escape_name

from ._snapshot import Snapshot

__all__ = ["render_json", "render_text"]


def render_text(snapshot: Snapshot) -> bytes:
    """The Ruby raindrops middleware's plain text, byte for byte.

    ``calling`` and ``writing`` first, then two lines per listener.  A part
    that could not be read (listeners off Linux) is left out, so every line
    present keeps the original format.  Listener names are written through
    :func:`linux_inet_diag.escape_name`: a Unix socket's name is whatever
    bytes its owner chose, and a newline in it would forge a line (a
    non-UTF-8 path is written ``\\xHH``, never raising).

    Example::

        >>> from linux_inet_diag import ListenStats
        >>> snap = Snapshot(2, 1, {"127.0.0.1:8080": ListenStats(3, 0, 128)})
        >>> print(render_text(snap).decode(), end="")
        calling: 2
        writing: 1
        127.0.0.1:8080 active: 3
        127.0.0.1:8080 queued: 0
    """
    lines = [f"calling: {snapshot.calling}\n", f"writing: {snapshot.writing}\n"]
    for name, stats in snapshot.listeners.items():
        shown = escape_name(name)
        lines.append(f"{shown} active: {stats.active}\n")
        lines.append(f"{shown} queued: {stats.queued}\n")
    return "".join(lines).encode()


def render_json(snapshot: Snapshot) -> bytes:
    """The snapshot as one JSON object, with backlog and overflow counters added.

    ``{"calling": N, "writing": N, "listeners": {NAME: {"active", "queued",
    "backlog"}}, "listen_overflows": {"listen_overflows", "listen_drops"} or
    null, "unavailable": {PART: REASON}}``, followed by a newline.  Names
    are the listeners' own, JSON-escaped (ASCII only: control characters as
    ``\\u001b``, an undecodable byte as its ``surrogateescape`` code point,
    ``\\udce9``).

    Example::

        >>> import json
        >>> json.loads(render_json(Snapshot(0, 0, {})))["listeners"]
        {}
    """
    overflows = snapshot.overflows
    doc = {
        "calling": snapshot.calling,
        "writing": snapshot.writing,
        "listeners": {
            name: {"active": s.active, "queued": s.queued, "backlog": s.backlog}
            for name, s in snapshot.listeners.items()
        },
        "listen_overflows": None
        if overflows is None
        else {
            "listen_overflows": overflows.listen_overflows,
            "listen_drops": overflows.listen_drops,
        },
        "unavailable": dict(snapshot.unavailable),
    }
    return (json.dumps(doc) + "\n").encode()
