"""WSGI apps watching the server over time: :class:`Watcher` and :class:`LastDataRecv`.

Protocol glue only: the constructors, sampling, statistics, pages, routing
and final replies are raindrops-core's (:class:`raindrops_core.adapter.WatcherApp`,
:class:`raindrops_core.adapter.LastDataRecvApp`); this module reads the
environ, sends the replies with WebOb and streams the tail.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

from raindrops_core.adapter import (
    Environ,
    LastDataRecvApp,
    Peer,
    Reply,
    StartResponse,
    WatcherApp,
    WSGIApp,
    client_gone_probe,
)
from raindrops_core.watcher import set_defer_accept
from webob import Request

from ._middleware import send_reply

__all__ = ["LastDataRecv", "Watcher", "set_defer_accept"]


def _text(wsgi_str: str) -> str:
    """A PEP 3333 "bytes as latin-1" string as text; undecodable bytes never raise."""
    return wsgi_str.encode("latin-1", "replace").decode("utf-8", "replace")


def _path(wsgi_str: str) -> str:
    """``PATH_INFO`` as text, bytes that are not UTF-8 as ``surrogateescape`` code points.

    As listener names are decoded, so ``/queued/%2Ftmp%2Fcaf%E9.sock.txt``
    finds the socket bound at the non-UTF-8 path ``/tmp/caf\\xe9.sock``.
    """
    return wsgi_str.encode("latin-1", "replace").decode("utf-8", "surrogateescape")


class _TailBody:
    """The WSGI body of a tail stream: closing it (the server does) ends the stream.

    It starts with an empty chunk, which gunicorn takes as the moment to
    send the status and headers (a compliant server just skips it), so the
    client sees ``200`` before the first line meets the thresholds.
    """

    __slots__ = ("_gen",)

    def __init__(self, gen: Iterator[bytes]) -> None:
        self._gen = gen

    def __iter__(self) -> Iterator[bytes]:
        return itertools.chain((b"",), self._gen)

    def close(self) -> None:
        close = getattr(self._gen, "close", None)
        if close is not None:
            close()


class Watcher(WatcherApp):
    """The Ruby original's Raindrops::Watcher as a WSGI app (mount it under any prefix).

    The options, routes and access rule are
    :class:`raindrops_core.adapter.WatcherApp`'s (``afetch`` is not used
    here).  One background sampler thread per process, started on the
    first request and stopped by :meth:`close` (and at interpreter exit).
    The tail stream needs a threaded server (gunicorn ``gthread``), as the
    Ruby one did; it ends when its client goes away, seen on the client
    socket the server exposes (gunicorn's ``environ["gunicorn.socket"]``)
    even while no line is written; on servers that expose none, after
    ``tail_max_seconds`` or else
    :data:`~raindrops_core.watcher.UNPROBED_TAIL_SECONDS`.  Links and
    redirects follow ``SCRIPT_NAME``.

    Example::

        # watcher.py, served with: gunicorn -k gthread --threads 8 watcher:app
        from raindrops_wsgi.watcher import Watcher

        app = Watcher(["0.0.0.0:8080"], delay=1.0)
    """

    def start(self) -> None:
        """Start this process's sampler unless it runs (the first request does it too)."""
        self.core.start_thread()

    def close(self) -> None:
        """Stop the sampler thread (a later request starts it again)."""
        self.engine.stop_thread()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        req = Request(environ)
        answer = self.core.serve(
            req.method.upper(),
            _path(environ.get("PATH_INFO", "")),
            req.query_string,
            base=_text(environ.get("SCRIPT_NAME", "")),
            referer=req.referer,
            host=req.host,
            peer=Peer.from_wsgi(environ),
            origin=environ.get("HTTP_ORIGIN"),
            fetch_site=environ.get("HTTP_SEC_FETCH_SITE"),
        )
        if isinstance(answer, Reply):
            return send_reply(answer, environ, start_response)
        start_response("200 OK", list(answer.headers))
        gone = client_gone_probe(environ.get("gunicorn.socket"))
        return _TailBody(self.core.tail(answer, gone))


class LastDataRecv(LastDataRecvApp[WSGIApp]):
    """Records how long each request waited to be accepted; reports it at ``path``.

    The options and the report are
    :class:`raindrops_core.adapter.LastDataRecvApp`'s.  For the first
    request of each connection (but those to ``path``) it reads
    ``tcpi_last_data_recv`` of the client socket that gunicorn exposes as
    ``environ["gunicorn.socket"]``; requests without a TCP client socket are
    not recorded.  See :func:`set_defer_accept` for ``TCP_DEFER_ACCEPT``.

    Example::

        from raindrops_wsgi.watcher import LastDataRecv

        application = LastDataRecv(application)   # GET /raindrops/last_data_recv
    """

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        reply = self.core.answer(
            environ.get("PATH_INFO", ""),
            environ.get("QUERY_STRING", ""),
            environ.get("HTTP_ACCEPT"),
            method=method,
        )
        if reply is not None:
            return send_reply(reply, environ, start_response)
        sock = environ.get("gunicorn.socket")
        if sock is not None:
            self.core.record_socket(sock)
        if self.app is None:
            return send_reply(self.core.not_found(method), environ, start_response)
        return self.app(environ, start_response)
