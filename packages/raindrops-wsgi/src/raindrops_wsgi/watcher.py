"""WSGI apps watching the server over time: :class:`Watcher` and :class:`LastDataRecv`.

Protocol glue only: sampling, statistics, pages and routing are
:mod:`raindrops_core.watcher`.
"""

from __future__ import annotations

import atexit
import os
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import Any

from raindrops_core import Reply
from raindrops_core.watcher import (
    DEFAULT_DELAY,
    DEFAULT_HISTORY,
    DEFAULT_LAST_DATA_RECV_PATH,
    Fetch,
    LastDataRecvCore,
    TailPlan,
    WatcherCore,
    last_data_recv_ms,
    set_defer_accept,
)
from webob import Request, Response

__all__ = ["LastDataRecv", "Watcher", "set_defer_accept"]

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

#: How long the first request waits for the first sample round, at most.
_FIRST_SAMPLE_WAIT = 2.0

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
    """A PEP 3333 "bytes as latin-1" path as text; undecodable bytes never raise."""
    return wsgi_str.encode("latin-1", "replace").decode("utf-8", "replace")


class _TailBody:
    """The WSGI body of a tail stream: closing it (the server does) ends the stream."""

    __slots__ = ("_gen",)

    def __init__(self, gen: Generator[bytes, None, None]) -> None:
        self._gen = gen

    def __iter__(self) -> Iterator[bytes]:
        return self._gen

    def close(self) -> None:
        self._gen.close()


class Watcher:
    """The Ruby original's Raindrops::Watcher as a WSGI app (mount it under any prefix).

    Samples ``listeners`` (default: every listener on the machine) every
    ``delay`` seconds in one background thread per process, started on the
    first request and stopped by :meth:`close` (also run at exit).  Serves
    ``GET /`` (HTML index), ``/index.json``, ``/active/<L>.txt|.html|.json``,
    ``/queued/<L>.txt|.html|.json``, ``/tail/<L>.txt|.json?active_min=N&
    queued_min=N`` (streamed: needs a threaded server, e.g. gunicorn
    ``gthread``, as the Ruby one did) and ``POST /reset/<L>`` (303 back).
    ``<L>`` is the URL-escaped listener name (``0.0.0.0%3A80``).
    ``tail_max_seconds`` ends tail streams after that long.  ``fetch`` and
    ``clock`` replace the netlink query and the wall clock (tests).

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
    ) -> None:
        kwargs: dict[str, Any] = {} if clock is None else {"clock": clock}
        self.core = WatcherCore(
            listeners,
            delay=delay,
            history=history,
            fetch=fetch,
            tail_max_seconds=tail_max_seconds,
            **kwargs,
        )
        self.engine = self.core.engine
        _LIVE.add(self)

    def __repr__(self) -> str:
        return f"<Watcher {self.engine!r}>"

    def start(self) -> None:
        """Start this process's sampler unless it runs (the first request does it too)."""
        if self.engine.start_thread():
            self.engine.wait_sampled(min(_FIRST_SAMPLE_WAIT, self.engine.delay * 2))

    def close(self) -> None:
        """Stop the sampler thread (a later request starts it again)."""
        self.engine.stop_thread()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if not self.engine.thread_running:
            self.start()
        req = Request(environ)
        method = req.method.upper()
        answer = self.core.handle(
            method,
            _text(environ.get("PATH_INFO", "")),
            req.query_string,
            base=_text(environ.get("SCRIPT_NAME", "")),
            referer=req.referer,
            host=req.host,
        )
        if isinstance(answer, Reply):
            return _respond(answer, environ, start_response)
        return self._tail(answer, method, start_response)

    def _tail(self, plan: TailPlan, method: str, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", list(plan.headers))
        if method == "HEAD":
            return []
        return _TailBody(self.core.tail(plan))


class LastDataRecv:
    """Records how long each request waited to be accepted; reports it at ``path``.

    For every request (but those to ``path``) it reads ``tcpi_last_data_recv``
    (ms) of the client socket that gunicorn exposes as
    ``environ["gunicorn.socket"]`` and records it in a histogram shared by
    every worker (see :class:`raindrops_core.watcher.LastDataRecvCore` for
    ``segment``), then calls ``app``.  Requests without a TCP client socket
    are not recorded.  ``GET path`` answers ``X-Count`` (and ``X-Min``,
    ``X-Max``, ``X-Mean``, ``X-Std-Dev``, ``X-Outliers-Low``,
    ``X-Outliers-High`` once count > 1) and a text histogram; ``path.json``
    (or ``?format=json``, or ``Accept: application/json``) answers JSON.
    With ``app=None`` it only reports (404 elsewhere).  The number means
    "time waiting in the listen queue" only with ``TCP_DEFER_ACCEPT`` on the
    listener: see :func:`set_defer_accept`.

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
        if not isinstance(path, str) or not path.startswith("/"):
            from raindrops_core import ConfigError

            raise ConfigError(f"path must be a string starting with '/', not {path!r}")
        self.app = app
        self.path = path
        self._json_path = path + ".json"
        self.core = LastDataRecvCore(segment=segment, histogram=histogram)

    def __repr__(self) -> str:
        return f"<LastDataRecv {self.app!r} path={self.path!r}>"

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == self.path or path == self._json_path:
            req = Request(environ)
            reply = self.core.reply(
                req.method.upper(),
                req.query_string,
                req.headers.get("Accept"),
                as_json=path == self._json_path,
            )
            return _respond(reply, environ, start_response)
        sock = environ.get("gunicorn.socket")
        if sock is not None:
            ms = _socket_last_data_recv(sock)
            if ms is not None:
                self.core.record(ms)
        if self.app is None:
            start_response(
                "404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "14")]
            )
            return [b"404 Not Found\n"]
        return self.app(environ, start_response)


try:
    from linux_inet_diag import TcpInfo as _TcpInfo
except ImportError:  # pragma: no cover - linux-inet-diag is a dependency of raindrops-core
    _TcpInfo = None  # type: ignore[assignment,misc]


def _socket_last_data_recv(sock: Any) -> int | None:
    if _TcpInfo is None:
        return None
    try:
        info = _TcpInfo.from_socket(sock)
    except (OSError, ValueError):
        return None
    return last_data_recv_ms(info)
