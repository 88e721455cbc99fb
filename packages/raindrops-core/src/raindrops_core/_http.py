"""HTTP, framework-neutral: the final replies every endpoint gives, and mount paths.

The core decides everything an answer holds, ``HEAD`` included (the same
headers, no body), so adapters only copy a :class:`Reply` onto their
protocol; :func:`app_path` is the one rule for the path below a mount
point, for every endpoint.
"""

from __future__ import annotations

import http
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["NOSNIFF", "Reply", "app_path", "plain", "reply", "text_reply"]

#: Refusals and rejections may quote the client (``format=<script>``): never sniffed.
NOSNIFF = ("X-Content-Type-Options", "nosniff")


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer: status, headers, body; final, ``HEAD`` already applied.

    Example::

        >>> Reply(200, (("Content-Type", "text/plain"),), b"calling: 0\\n").status_line
        '200 OK'
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def status_line(self) -> str:
        """``"200 OK"``: the WSGI status string."""
        return f"{self.status} {http.HTTPStatus(self.status).phrase}"

    def for_method(self, method: str) -> Reply:
        """This reply for ``method``: without its body for ``HEAD`` (headers kept)."""
        return Reply(self.status, self.headers, b"") if method == "HEAD" else self


def reply(
    status: int,
    body: bytes,
    ctype: str,
    extra: Sequence[tuple[str, str]] = (),
    *,
    lead: Sequence[tuple[str, str]] = (),
) -> Reply:
    """A reply with ``lead`` headers, ``Content-Type``, ``Content-Length``, then ``extra``.

    ``lead`` is for answers whose own headers come first: the Ruby
    Watcher's ``X-*`` headers, in its order.

    Example::

        >>> reply(200, b"{}", "application/json", lead=[("X-Count", "0")]).headers
        (('X-Count', '0'), ('Content-Type', 'application/json'), ('Content-Length', '2'))
    """
    headers = [*lead, ("Content-Type", ctype), ("Content-Length", str(len(body))), *extra]
    return Reply(status, tuple(headers), body)


def plain(status: int, text: str, extra: Sequence[tuple[str, str]] = ()) -> Reply:
    """A plain-text refusal or rejection the browser must not sniff (it may quote the client)."""
    return reply(status, text.encode(), "text/plain", (*extra, NOSNIFF))


def text_reply(status: int, text: str, lead: Sequence[tuple[str, str]] = ()) -> Reply:
    """A plain-text answer of the Watcher apps: ``lead`` headers first, then type and length.

    The Watcher and LastDataRecv put their own headers first (the Ruby
    originals' order); an error (4xx, 5xx) may quote the client, so
    ``X-Content-Type-Options: nosniff`` follows ``lead`` there.

    Example::

        >>> [name for name, _ in text_reply(404, "Not Found").headers]
        ['X-Content-Type-Options', 'Content-Type', 'Content-Length']
    """
    if status >= 400:
        lead = (*lead, NOSNIFF)
    return reply(status, text.encode(), "text/plain", lead=lead)


def app_path(path: str, root_path: str) -> str:
    """The path below the mount point: ``path`` without its ``root_path`` prefix.

    For ASGI, where ``scope["path"]`` includes ``scope["root_path"]`` (the
    app mounted with Starlette's ``Mount("/ops", app)``, or served behind
    ``uvicorn --root-path /ops``): the path the app routes on.  The prefix
    is removed only on a segment boundary (``/ops`` from ``/ops/x``, not from
    ``/opsx``), and a path not below ``root_path`` (a server that already
    strips it) is returned as it is.

    Example::

        >>> app_path("/ops/_raindrops", "/ops"), app_path("/opsx/_raindrops", "/ops")
        ('/_raindrops', '/opsx/_raindrops')
    """
    if not root_path or not path.startswith(root_path):
        return path
    rest = path[len(root_path) :]
    if rest and rest[0] != "/":
        return path
    return rest
