"""WSGI middleware (PEP 3333)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

from raindrops_core.adapter import Environ, ExcInfo, Peer, StartResponse, WSGIApp

from ._core import UtilizationCore

__all__ = ["ProcessUtilization"]

_new = object.__new__


class _Body:
    """The PEP 3333 body proxy: ``close()`` closes the app's body, then records the request.

    Recording runs in ``finally`` (even when the inner ``close()`` raises),
    once. ``_box`` is ``None`` without statsd, else a one-item list holding
    the response status (``None`` until ``start_response`` is called). Made
    with ``object.__new__`` and its slots set directly: no ``__init__`` frame.
    """

    __slots__ = ("_box", "_environ", "_it", "_mw", "_started")

    _it: Any
    _mw: ProcessUtilization | None
    _started: int
    _environ: Environ
    _box: list[int | None] | None

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._it)

    def close(self) -> None:
        """Close the app's body (if it has ``close``), then record the request."""
        mw = self._mw
        if mw is None:
            return
        self._mw = None
        try:
            close = getattr(self._it, "close", None)
            if close is not None:
                close()
        finally:
            box = self._box
            if box is None:
                line = mw._leave(self._started)
            else:
                line = mw._leave(self._started, self._environ.get("REQUEST_METHOD"), box[0])
            if line is not None:
                mw._write_report(line, self._environ)

    def __repr__(self) -> str:
        return f"<process_utilization body of {self._it!r}>"


class _WrapperClose:
    """A ``wsgi.file_wrapper``'s own ``close`` (or none), for the proxy that closes it."""

    __slots__ = ("close",)

    def __init__(self, close: Callable[[], object] | None) -> None:
        if close is not None:
            self.close = close


class _FileCloser:
    """``close`` of a ``wsgi.file_wrapper`` body: a proxy's close, over the wrapper's own.

    Set as an instance attribute of the server's wrapper object, so the body
    keeps its type and the server still sends it with sendfile().
    """

    __slots__ = ("_proxy",)

    def __init__(self, proxy: _Body) -> None:
        self._proxy = proxy

    def __call__(self) -> None:
        self._proxy.close()


def _close_on_file_wrapper(body: Any, closer: _FileCloser) -> bool:
    """Make the server's own file wrapper record the request on close, keeping its type.

    Servers send a ``wsgi.file_wrapper`` body with sendfile() only if it is
    an instance of their wrapper class (gunicorn:
    ``isinstance(respiter, environ['wsgi.file_wrapper'])``), so a proxy
    would lose that path. The instance's ``close`` attribute is replaced
    instead (an instance attribute shadows the class's method); ``False``
    if the object does not allow it (``__slots__``).
    """
    try:
        body.close = closer
    except (AttributeError, TypeError):
        return False
    return True


class ProcessUtilization(UtilizationCore):
    """WSGI middleware measuring how busy this worker process is.

    Busy time is the time with at least one request in flight, so threaded
    workers (gunicorn ``gthread``) never show more than 100 %. Each worker
    shares its figures on a scoreboard (see :mod:`process_utilization`).

    Per request it sets ``environ["process.request_start"]`` (wall-clock
    seconds) and ``environ["process.total_requests"]`` and removes
    ``HTTP_X_REQUEST_START``. The request counts as finished when the server
    closes the response body. A body made with the server's
    ``wsgi.file_wrapper`` is handed back as the same object (its ``close``
    replaced), so gunicorn still sends it with sendfile().

    Example::

        from process_utilization import ProcessUtilization

        app = ProcessUtilization(app, window=100, stats_path="/_utilization")
        # later, inside a request:
        ProcessUtilization.singleton.percentage_active
    """

    __slots__ = ("app",)

    singleton: ClassVar[ProcessUtilization | None] = None

    def __init__(self, app: WSGIApp, **options: Any) -> None:
        super().__init__(**options)
        self.app = app

    def __repr__(self) -> str:
        return f"<ProcessUtilization app={self.app!r} window={self.window}>"

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        stats_path = self.stats_path
        if stats_path is not None and environ.get("PATH_INFO") == stats_path:
            return self._serve_stats(environ, start_response)
        # PEP 3333: false promises that no other thread calls this app at
        # the same time (gunicorn sync), so no lock is needed; a server that
        # says true, or nothing, makes the instance threaded for good (_guard).
        try:
            threaded = environ["wsgi.multithread"]
        except KeyError:
            threaded = True
        if threaded and not self._threaded:
            self._thread_up()
        started = self._enter(environ)
        if "HTTP_X_REQUEST_START" in environ:
            del environ["HTTP_X_REQUEST_START"]
        if started is None:  # the clock failed: pass through, uncounted
            return self.app(environ, start_response)
        box: list[int | None] | None = None
        if self._statsd is not None:
            box = [None]
            start_response = self._status_catcher(start_response, box)
        try:
            body = self.app(environ, start_response)
        except BaseException:
            # As rack-statsd: an app that raises sends nothing to statsd.
            line = self._leave(started)
            if line is not None:
                self._write_report(line, environ)
            raise
        # Every body but the server's file wrapper goes back behind a proxy
        # that is not a list, even a list body: WSGI consumers (WebOb's
        # Response.body, for one) take a list's items without calling
        # close(), which would leave the request in flight for good.
        if type(body) is not list:
            wrapper = environ.get("wsgi.file_wrapper")
            if wrapper is not None and isinstance(wrapper, type) and isinstance(body, wrapper):
                proxy = _new(_Body)
                proxy._it = _WrapperClose(getattr(body, "close", None))
                proxy._mw = self
                proxy._started = started
                proxy._environ = environ
                proxy._box = box
                if _close_on_file_wrapper(body, _FileCloser(proxy)):
                    return body
        proxy = _new(_Body)
        proxy._it = body
        proxy._mw = self
        proxy._started = started
        proxy._environ = environ
        proxy._box = box
        return proxy

    @staticmethod
    def _status_catcher(start_response: StartResponse, box: list[int | None]) -> StartResponse:
        def catch(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo = None
        ) -> Callable[[bytes], object]:
            code = status[:3]
            # 0 (in no table) for a status with no number: timings only.
            box[0] = int(code) if code.isascii() and code.isdigit() else 0
            if exc_info is None:
                return start_response(status, headers)
            return start_response(status, headers, exc_info)

        return catch

    def _write_report(self, line: str, environ: Environ) -> None:
        """Write the periodic report line to ``report_to``, else ``wsgi.errors``."""
        self._emit(line, environ.get("wsgi.errors") or sys.stderr)

    def _serve_stats(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        reply = self._endpoint.answer(
            Peer.from_wsgi(environ),
            str(environ.get("QUERY_STRING", "")),
            str(environ.get("HTTP_ACCEPT", "")),
            self.render_stats,
            self.unshared,
        )
        start_response(reply.status_line, list(reply.headers))
        return [reply.body]
