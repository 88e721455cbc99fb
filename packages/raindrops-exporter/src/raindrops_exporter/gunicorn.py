"""Run the exporter inside gunicorn's arbiter: ``/metrics`` on its own port, no extra process.

In ``gunicorn.conf.py``::

    from raindrops_exporter.gunicorn import on_exit, when_ready

or, to choose the address (default ``$RAINDROPS_EXPORTER_BIND``, else
``127.0.0.1:9873``) and who may read::

    from raindrops_exporter.gunicorn import exporter_hooks

    when_ready, on_exit = exporter_hooks("127.0.0.1:9873", allow=["10.0.0.0/8"])

``when_ready`` starts the exporter's sampler and HTTP server in two daemon
threads of the arbiter, showing this gunicorn's own server only (the
segments named after its listening sockets); ``on_exit`` stops them. The
arbiter answers while every worker is busy: it accepts no request itself.

Fork safety. The arbiter forks every worker, after ``when_ready``. A thread
is not inherited by ``fork()``, but what it holds at that moment is: a lock
held by an exporter thread would stay held forever in the worker, and the
worker would inherit the exporter's listening socket (and would then count
it among its server's listeners) and its clients' connections. So, with
``os.register_at_fork``: before each fork the exporter's read lock is taken
(no read is half done while the arbiter forks), released after it in the
arbiter, and in the child the inherited sockets are closed and the
exporter object forgotten. The exporter's other state (attached segments,
a netlink socket per thread) is only touched under that lock, and
linux-inet-diag reopens its sockets after fork by itself.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

from raindrops_core import DEFAULT_ALLOW

from ._exporter import Exporter
from ._http import DEFAULT_BIND, ExporterServer

__all__ = ["BIND_ENV", "exporter_hooks", "on_exit", "running", "when_ready"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

#: Environment variable naming where the arbiter's exporter listens.
BIND_ENV = "RAINDROPS_EXPORTER_BIND"

_server: ExporterServer | None = None
_guard = threading.Lock()  # held around fork() with the exporter's lock
_registered = False


def _before_fork() -> None:
    _guard.acquire()
    if _server is not None:
        _server.exporter.lock.acquire()


def _after_fork_parent() -> None:
    if _server is not None:
        _server.exporter.lock.release()
    _guard.release()


def _after_fork_child() -> None:
    global _server, _guard
    server, _server = _server, None
    if server is not None:
        server.close_in_child()
        server.exporter.forget_after_fork()
    _guard = threading.Lock()


def running() -> ExporterServer | None:
    """The exporter this arbiter runs, if any."""
    return _server


def _listener_inodes(server: Any) -> list[int]:
    inodes = []
    for listener in getattr(server, "LISTENERS", []):
        try:
            inodes.append(os.fstat(listener.fileno()).st_ino)
        except (OSError, AttributeError):
            continue
    return inodes


def exporter_hooks(
    bind: str | None = None, *, allow: Sequence[str] = DEFAULT_ALLOW
) -> tuple[Callable[[Any], None], Callable[[Any], None]]:
    """gunicorn's ``when_ready`` and ``on_exit`` hooks for an exporter on ``bind``.

    ``bind`` defaults to ``$RAINDROPS_EXPORTER_BIND``, else ``127.0.0.1:9873``;
    ``allow`` lists the client networks that may read (default loopback).

    Example::

        # gunicorn.conf.py
        from raindrops_exporter.gunicorn import exporter_hooks

        when_ready, on_exit = exporter_hooks("127.0.0.1:9873")
    """

    def ready(server: Any) -> None:
        _start(server, bind or os.environ.get(BIND_ENV) or DEFAULT_BIND, list(allow))

    return ready, on_exit


def _start(server: Any, bind: str, allow: list[str]) -> None:
    global _server, _registered
    log = getattr(server, "log", logger)
    inodes = _listener_inodes(server)
    try:
        # Every worker names its segments after the lowest inode of the sockets it inherits.
        exporter = Exporter(inodes=[min(inodes)] if inodes else None)
        exporter_server = ExporterServer(exporter, bind, allow=allow)
    except Exception as exc:
        log.error("raindrops-exporter: not started: %s", exc)
        return
    with _guard:
        if not _registered:
            os.register_at_fork(
                before=_before_fork,
                after_in_parent=_after_fork_parent,
                after_in_child=_after_fork_child,
            )
            _registered = True
        _server = exporter_server
    exporter_server.start()
    log.info("raindrops-exporter: serving on %s", exporter_server.url)


def when_ready(server: Any) -> None:
    """gunicorn hook: start the exporter in the arbiter (its own server's segments only).

    It listens on ``$RAINDROPS_EXPORTER_BIND``, else ``127.0.0.1:9873``, for
    loopback clients (:func:`exporter_hooks` takes other values). A failure
    to start is logged by gunicorn's logger; gunicorn goes on without it.

    Example::

        # gunicorn.conf.py
        from raindrops_exporter.gunicorn import on_exit, when_ready
    """
    _start(server, os.environ.get(BIND_ENV) or DEFAULT_BIND, list(DEFAULT_ALLOW))


def on_exit(server: Any) -> None:
    """gunicorn hook: stop the arbiter's exporter (threads joined, socket closed).

    Example::

        # gunicorn.conf.py
        from raindrops_exporter.gunicorn import on_exit, when_ready
    """
    global _server
    with _guard:
        exporter_server, _server = _server, None
    if exporter_server is not None:
        exporter_server.stop()
