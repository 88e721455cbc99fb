"""The WSGI glue: count ``calling``/``writing`` around the app, serve the endpoint.

Everything else (where the counters live, listeners, formats, access) is
:class:`raindrops_core.RaindropsState`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from raindrops_core.adapter import Environ, Middleware, Peer, Reply, StartResponse, WSGIApp
from webob import Request, Response

__all__ = ["RaindropsMiddleware", "send_reply"]

Step = Callable[[], int]

# Bumped in every forked child: a body proxy made before the fork holds the
# parent's steps (the parent's row), which a child must never step.
_fork_epoch = 0


def _forked() -> None:
    global _fork_epoch
    _fork_epoch += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def send_reply(reply: Reply, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Send one of the core's final replies (``HEAD`` already applied) with WebOb.

    Status, headers and body go out as the core made them (WebOb only makes
    a ``Location`` absolute).
    """
    response = Response(
        status=reply.status_line, headerlist=list(reply.headers), app_iter=[reply.body]
    )
    result: Iterable[bytes] = response(environ, start_response)
    return result


def _end_uncollected(done: Step) -> None:
    """End ``writing`` for a body collected without ``close()``; never raise from a finalizer."""
    try:
        done()
    except Exception:  # its row already closed (interpreter exit): nothing left to count
        pass


class _Closer:
    """``close()`` for a body: forward to the inner one, then stop counting it as writing.

    The bookkeeping runs in ``finally``, even when the inner ``close()``
    raises, and only once however often ``close()`` is called; if nobody
    ever calls it, when the closer is collected (see :class:`_CountedBody`).
    """

    __slots__ = ("_done", "_epoch", "_inner")

    def __init__(self, inner: Callable[[], object] | None, done: Step) -> None:
        self._inner = inner
        self._done: Step | None = done
        self._epoch = _fork_epoch

    def __del__(self) -> None:
        done = self._done
        if done is not None and self._epoch == _fork_epoch:
            self._done = None
            _end_uncollected(done)

    def __call__(self) -> None:
        done = self._done
        if done is None:
            return
        self._done = None
        try:
            if self._inner is not None:
                self._inner()
        finally:
            done()


class _CountedBody:
    """The PEP 3333 body proxy: iterates the app's body, ``close()`` ends ``writing``.

    ``close()`` forwards to the body's own, then does the bookkeeping in
    ``finally`` (even when the inner ``close()`` raises), once.  ``done`` is
    this process's bound ``writing`` decrement (one C call).

    A layer outside (hand-written middleware) may drop the body without
    calling ``close()``, against PEP 3333: ``writing`` then ends when the
    proxy is collected (``__del__``; at once in CPython, by reference
    counting), not never.  The app's own ``close()`` is not called from
    there.  A proxy a forked child inherited (made before the fork) never
    steps the parent's row.
    """

    __slots__ = ("_body", "_done", "_epoch")

    def __init__(self, body: Iterable[bytes], done: Step) -> None:
        self._body = body
        self._done: Step | None = done
        self._epoch = _fork_epoch

    def __del__(self) -> None:
        done = self._done
        if done is not None and self._epoch == _fork_epoch:
            self._done = None
            _end_uncollected(done)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        """Close the app's body (if it has ``close``), then stop counting it."""
        done = self._done
        if done is None:
            return
        self._done = None
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            done()

    def __repr__(self) -> str:
        return f"<counted body of {self._body!r}>"


class _CountedList(_CountedBody):
    """:class:`_CountedBody` for a list body, which has no ``close()`` to forward."""

    __slots__ = ()

    def close(self) -> None:
        """Stop counting the body as writing (once)."""
        done = self._done
        if done is not None:
            self._done = None
            done()


def _count_file_wrapper(body: Any, done: Step) -> bool:
    """Make the server's own file wrapper end ``writing`` on close, keeping its type.

    Servers send a ``wsgi.file_wrapper`` body with sendfile() only if it is
    an instance of their wrapper class (gunicorn:
    ``isinstance(respiter, environ['wsgi.file_wrapper'])``), so a proxy
    would lose that path.  Instead the instance's ``close`` attribute is
    replaced (an instance attribute shadows the class's method); ``False``
    if the object does not allow it (``__slots__``).
    """
    closer = _Closer(getattr(body, "close", None), done)
    try:
        body.close = closer
    except (AttributeError, TypeError):
        closer._done = None  # unused: collecting it must not end writing
        return False
    return True


class RaindropsMiddleware(Middleware[WSGIApp]):
    """WSGI middleware: raindrops gauges around ``app``, the stats endpoint at ``path``.

    ``calling`` counts requests from entering ``app`` until it returns;
    ``writing`` counts their bodies until the server calls ``close()``
    (always forwarded to the app's body, PEP 3333).  A body built with the
    server's ``wsgi.file_wrapper`` keeps its type, so gunicorn still sends
    it with sendfile().  Exceptions from ``app`` propagate and leave the
    gauges exact.  A request to ``path`` (any method; no body for ``HEAD``)
    answers the snapshot of every worker and is not counted itself.

    ``RaindropsMiddleware(app, *, path="/_raindrops", listeners=None,
    segment=None, allow=DEFAULT_ALLOW, slots=256, state=None)``: the options
    of :class:`raindrops_core.RaindropsState`, or a ready ``state``.

    Example::

        from raindrops_wsgi import RaindropsMiddleware

        app = RaindropsMiddleware(app)  # then: curl http://127.0.0.1:8000/_raindrops
    """

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == self._path:
            return self._endpoint(environ, start_response)
        steps = self.state.steps
        if steps is None:
            steps = self.state.prepare()
        # The hot path: four bound C calls (no Python frame) and one proxy.
        steps.incr_calling()
        try:
            body = self.app(environ, start_response)
        finally:
            steps.decr_calling()
        steps.incr_writing()
        if type(body) is list:
            return _CountedList(body, steps.decr_writing)
        wrapper = environ.get("wsgi.file_wrapper")
        if (
            wrapper is not None
            and isinstance(wrapper, type)
            and isinstance(body, wrapper)
            and _count_file_wrapper(body, steps.decr_writing)
        ):
            return body
        return _CountedBody(body, steps.decr_writing)

    def _endpoint(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        """The core's final reply (``HEAD`` applied), sent by WebOb."""
        request = Request(environ)
        reply = self.state.respond(
            request.method,
            Peer.from_wsgi(environ),
            request.headers.get("Accept"),
            request.query_string,
        )
        return send_reply(reply, environ, start_response)
