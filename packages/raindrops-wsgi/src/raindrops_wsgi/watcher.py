"""WSGI apps watching the server over time: :class:`Watcher` and :class:`LastDataRecv`.

Protocol glue only: sampling, statistics, pages and routing are
:mod:`raindrops_core.watcher`.
"""

from __future__ import annotations

import atexit
import itertools
import os
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from raindrops_core import DEFAULT_ALLOW, AccessList
from raindrops_core.adapter import Peer, Reply
from raindrops_core.watcher import (
    DEFAULT_DELAY,
    DEFAULT_HISTORY,
    DEFAULT_LAST_DATA_RECV_PATH,
    Fetch,
    LastDataRecvCore,
    TailPlan,
    WatcherCore,
    client_gone_probe,
    set_defer_accept,
)
from webob import Request, Response

__all__ = ["LastDataRecv", "Watcher", "set_defer_accept"]

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

_LIVE: weakref.WeakSet[Watcher] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for watcher in list(_LIVE):
        watcher.close()


def _respond(reply: Reply, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    response = Response(status=reply.status_line, headerlist=list(reply.headers))
    response.body = reply.body  # WebOb answers HEAD without it, headers kept
    response.headers["Content-Length"] = str(len(reply.body))
    result: Iterable[bytes] = response(environ, start_response)
    return result


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


class Watcher:
    """The Ruby original's Raindrops::Watcher as a WSGI app (mount it under any prefix).

    Samples ``listeners`` (default: every listener on the machine) every
    ``delay`` seconds in one background thread per process, started on the
    first request and stopped by :meth:`close` (also run at exit).  Serves
    ``GET /`` (HTML index), ``/index.json``, ``/active/<L>.txt|.html|.json``,
    ``/queued/<L>.txt|.html|.json``, ``/tail/<L>.txt|.json?active_min=N&
    queued_min=N`` (streamed: needs a threaded server, e.g. gunicorn
    ``gthread``, as the Ruby one did) and ``POST /reset/<L>`` (302 back).
    ``<L>`` is the URL-escaped listener name (``0.0.0.0%3A80``).  A tail
    stream ends when its client goes away, seen on the client socket the
    server exposes (gunicorn's ``environ["gunicorn.socket"]``) even while
    no line is written; on servers that expose none, after
    ``tail_max_seconds`` or else
    :data:`~raindrops_core.watcher.UNPROBED_TAIL_SECONDS`.  ``fetch`` and
    ``clock`` replace the netlink query and the wall clock (tests).

    ``allow`` is who may use it, as for the stats endpoint (loopback and
    local Unix-socket peers by default; networks or a
    :class:`raindrops_core.AccessList`): the pages list every listener of
    the machine, other users' included.  A reset from another site's page
    (a cross-site form) is refused; see
    :func:`raindrops_core.watcher.cross_origin_refusal`.

    Example::

        # watcher.py, served with: gunicorn -k gthread --threads 8 watcher:app
        from raindrops_wsgi.watcher import Watcher

        app = Watcher(["0.0.0.0:8080"], delay=1.0)
    """

    def __init__(
        self,
        listeners: Sequence[str] | None = None,
        *,
        delay: float = DEFAULT_DELAY,
        history: int = DEFAULT_HISTORY,
        tail_max_seconds: float | None = None,
        fetch: Fetch | None = None,
        clock: Callable[[], float] | None = None,
        allow: Iterable[str] | AccessList = DEFAULT_ALLOW,
    ) -> None:
        kwargs: dict[str, Any] = {} if clock is None else {"clock": clock}
        self.core = WatcherCore(
            listeners,
            delay=delay,
            history=history,
            fetch=fetch,
            tail_max_seconds=tail_max_seconds,
            allow=allow,
            **kwargs,
        )
        self.engine = self.core.engine
        _LIVE.add(self)

    def __repr__(self) -> str:
        return f"<Watcher {self.engine!r}>"

    def start(self) -> None:
        """Start this process's sampler unless it runs (the first request does it too)."""
        self.core.start_thread()

    def close(self) -> None:
        """Stop the sampler thread (a later request starts it again)."""
        self.engine.stop_thread()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        req = Request(environ)
        method = req.method.upper()
        answer = self.core.serve(
            method,
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
            return _respond(answer, environ, start_response)
        return self._tail(answer, method, environ, start_response)

    def _tail(
        self, plan: TailPlan, method: str, environ: Environ, start_response: StartResponse
    ) -> Iterable[bytes]:
        start_response("200 OK", list(plan.headers))
        if method == "HEAD":
            return []
        gone = client_gone_probe(environ.get("gunicorn.socket"))
        return _TailBody(self.core.tail(plan, gone))


class LastDataRecv:
    """Records how long each request waited to be accepted; reports it at ``path``.

    For the first request of each connection (but those to ``path``) it
    reads ``tcpi_last_data_recv`` (ms) of the client socket that gunicorn
    exposes as ``environ["gunicorn.socket"]`` and records it in a histogram
    shared by every worker (see
    :class:`raindrops_core.watcher.LastDataRecvCore` for ``segment`` and for
    which requests count), then calls ``app``.  Requests without a TCP
    client socket are not recorded.  Any request to ``path`` answers, as the
    Ruby original, ``X-Count`` (and ``X-Min``, ``X-Max``, ``X-Mean``,
    ``X-Std-Dev``, ``X-Outliers-Low``, ``X-Outliers-High`` once count > 1)
    and a text histogram; ``path.json`` (or ``?format=json``, or ``Accept:
    application/json``) answers JSON.  With ``app=None`` it only reports
    (404 elsewhere).  See :func:`set_defer_accept` for ``TCP_DEFER_ACCEPT``.

    Example::

        from raindrops_wsgi.watcher import LastDataRecv

        application = LastDataRecv(application)   # GET /raindrops/last_data_recv
    """

    def __init__(
        self,
        app: WSGIApp | None = None,
        *,
        path: str = DEFAULT_LAST_DATA_RECV_PATH,
        segment: str | os.PathLike[str] | None = None,
        histogram: Any = None,
    ) -> None:
        self.app = app
        self.core = LastDataRecvCore(path=path, segment=segment, histogram=histogram)
        self.path = self.core.path

    def __repr__(self) -> str:
        return f"<LastDataRecv {self.app!r} path={self.path!r}>"

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        reply = self.core.answer(
            environ.get("PATH_INFO", ""),
            environ.get("QUERY_STRING", ""),
            environ.get("HTTP_ACCEPT"),
        )
        if reply is not None:
            return _respond(reply, environ, start_response)
        sock = environ.get("gunicorn.socket")
        if sock is not None:
            self.core.record_socket(sock)
        if self.app is None:
            return _respond(self.core.not_found(), environ, start_response)
        return self.app(environ, start_response)
