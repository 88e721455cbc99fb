"""WSGI middleware (PEP 3333)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, ClassVar
from urllib.parse import parse_qs

from ._core import UtilizationCore

__all__ = ["ProcessUtilization"]

_log = logging.getLogger("process_utilization")

Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]
_ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | None


def _wants_json(query: str, accept: str) -> bool:
    fmt = parse_qs(query).get("format")
    if fmt:
        return fmt[-1] == "json"
    return "application/json" in accept


class _Body:
    """The response body proxy: accounting runs when the server closes it."""

    __slots__ = ("_environ", "_it", "_mw", "_started", "_status")

    def __init__(
        self,
        it: Iterable[bytes],
        mw: ProcessUtilization,
        started: int,
        environ: Environ,
        status: list[int] | None,
    ) -> None:
        self._it = it
        self._mw = mw
        self._started = started
        self._environ: Environ | None = environ
        self._status = status

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._it)

    def close(self) -> None:
        environ = self._environ
        if environ is None:
            return
        self._environ = None
        try:
            close = getattr(self._it, "close", None)
            if close is not None:
                close()
        finally:
            mw = self._mw
            status = self._status
            if status is None:
                try:
                    line = mw.record_request(self._started)
                except Exception as exc:
                    _log.warning("process_utilization: record_request failed: %r", exc)
                else:
                    if line is not None:
                        mw._report(line, environ)
            else:
                mw._finish(self._started, environ, status)


class ProcessUtilization(UtilizationCore):
    """WSGI middleware measuring how busy this worker process is.

    Busy time is the time with at least one request in flight, so threaded
    workers (gunicorn ``gthread``) never show more than 100 %. Each worker
    shares its figures on a scoreboard (see :mod:`process_utilization`).

    Per request it sets ``environ["process.request_start"]`` (wall-clock
    seconds) and ``environ["process.total_requests"]`` and removes
    ``HTTP_X_REQUEST_START``. The request counts as finished when the server
    closes the response body.

    Example::

        from process_utilization import ProcessUtilization

        app = ProcessUtilization(app, window=100, stats_path="/_utilization")
        # later, inside a request:
        ProcessUtilization.singleton.percentage_active
    """

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
        try:
            started = self.start_request()
        except Exception as exc:  # never break a request over accounting
            _log.warning("process_utilization: start_request failed: %r", exc)
            return self.app(environ, start_response)
        environ["process.request_start"] = self._wall_clock()
        environ["process.total_requests"] = self.total_requests
        environ.pop("HTTP_X_REQUEST_START", None)
        status: list[int] | None = None
        if self._statsd is not None:
            status = [0]
            start_response = self._status_catcher(start_response, status)
        try:
            body = self.app(environ, start_response)
        except BaseException:
            self._finish(started, environ, status)
            raise
        return _Body(body, self, started, environ, status)

    @staticmethod
    def _status_catcher(start_response: StartResponse, box: list[int]) -> StartResponse:
        def catch(
            status: str, headers: list[tuple[str, str]], exc_info: _ExcInfo = None
        ) -> Callable[[bytes], object]:
            try:
                box[0] = int(status[:3])
            except ValueError:
                box[0] = 0
            if exc_info is None:
                return start_response(status, headers)
            return start_response(status, headers, exc_info)

        return catch

    def _finish(self, started: int, environ: Environ, status: list[int] | None) -> None:
        try:
            line = self.record_request(started)
            if status is not None:
                self._send_statsd(started, str(environ.get("REQUEST_METHOD", "")), status[0])
            if line is not None:
                self._report(line, environ)
        except Exception as exc:
            _log.warning("process_utilization: record_request failed: %r", exc)

    @staticmethod
    def _report(line: str, environ: Environ) -> None:
        """Write the periodic report line to ``wsgi.errors`` (or the logger)."""
        try:
            errors = environ.get("wsgi.errors")
            if errors is None:
                _log.info("%s", line)
            else:
                errors.write(line + "\n")
                errors.flush()
        except Exception as exc:
            _log.warning("process_utilization: writing the report failed: %r", exc)

    def _serve_stats(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        try:
            ctype, body = self.render_stats(
                _wants_json(
                    str(environ.get("QUERY_STRING", "")),
                    str(environ.get("HTTP_ACCEPT", "")),
                )
            )
            status = "200 OK"
        except Exception as exc:
            _log.warning("process_utilization: stats endpoint failed: %r", exc)
            ctype, body = "text/plain; charset=utf-8", b"stats unavailable\n"
            status = "500 Internal Server Error"
        start_response(
            status,
            [
                ("Content-Type", ctype),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [body]
