"""LastDataRecv without a framework: ``tcpi_last_data_recv`` in a shared histogram, reported.

:class:`LastDataRecvCore` decides which requests count (a connection's
first), records the wait into a ``shm_counters.Histogram`` every worker
shares, and answers the report at its path, final for every method; the
adapters only find the client's ``tcp_info`` (the socket under WSGI, the
address pair under ASGI) and move bytes.  :func:`set_defer_accept` is the
Ruby original's ``TCP_DEFER_ACCEPT`` for gunicorn's config hook.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from linux_inet_diag import AsyncDiagSocket, TcpInfo
from shm_counters import Histogram, ShmCountersError, server_segment

from ._errors import ConfigError, FormatError
from ._fork import LiveInstances
from ._http import Reply, reply, text_reply
from ._reads import Kernel
from ._snapshot import UNAVAILABLE_HEADER, Format, negotiate
from ._validate import ANONYMOUS, check_path, check_segment
from ._watch_render import histogram_text, ruby_round
from ._watch_stats import sample_std_dev

__all__ = [
    "DEFAULT_LAST_DATA_RECV_PATH",
    "LAST_DATA_RECV_SEGMENT_ENV",
    "LAST_DATA_RECV_SEGMENT_NAME",
    "LastDataRecvCore",
    "TcpInfoFor",
    "last_data_recv_ms",
    "set_defer_accept",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

#: Finds a connection's ``tcp_info`` by its address pair: ``await tcp_info_for(local, remote)``.
TcpInfoFor = Callable[[Any, Any], Awaitable[Any]]

#: The report's default path, as in the Ruby original.
DEFAULT_LAST_DATA_RECV_PATH = "/raindrops/last_data_recv"
#: The environment variable naming LastDataRecv's histogram segment (or ``anonymous``).
LAST_DATA_RECV_SEGMENT_ENV = "RAINDROPS_LAST_DATA_RECV_SEGMENT"
_INET_FAMILIES = (socket.AF_INET, socket.AF_INET6)


def last_data_recv_ms(info: object) -> int | None:
    """``tcpi_last_data_recv`` (milliseconds) from a ``linux_inet_diag.TcpInfo``, if present."""
    for attr in ("last_data_recv", "last_data_recv_ms", "tcpi_last_data_recv"):
        value = getattr(info, attr, None)
        if isinstance(value, int):
            return value
    return None


#: LastDataRecv's default segment name in the server's directory.
LAST_DATA_RECV_SEGMENT_NAME = "ldr"


#: The Ruby ``aggregate`` gem's log2 buckets that a millisecond count can reach:
#: ``[2**k, 2**(k+1))`` for k in 0..62; 0 is a low outlier.
_LDR_BOUNDS = tuple(2**k for k in range(64))


def _sample_std_dev_of(snap: Any) -> float | None:
    """The aggregate gem's (sample) standard deviation from a histogram snapshot.

    ``shm_counters`` reports the population one, ``sqrt(n*S2 - S*S) / n``; the
    integer under the root is recovered by rounding (exact while it stays
    below 2**50, far beyond any count of milliseconds), then the gem's own
    floating-point steps are replayed on the exact sums.
    """
    count, total, pop = snap.count, snap.sum, snap.stddev
    if count < 2 or pop is None:
        return None
    spread = round((pop * count) ** 2)  # n * S2 - S * S
    squares, rest = divmod(spread + total * total, count)
    if rest:
        return math.sqrt(spread / (count * (count - 1)))
    return sample_std_dev(count, total, squares)


_LIVE: LiveInstances[LastDataRecvCore] = LiveInstances()


class LastDataRecvCore:
    """Records each request's ``tcpi_last_data_recv`` (ms) in a shared histogram; reports it.

    The Ruby original's ``Raindrops::LastDataRecv`` without its message
    queue: the histogram is a ``shm_counters.Histogram`` shared by every
    worker, with the ``aggregate`` gem's log2 buckets (``[2**k, 2**(k+1))``;
    0 ms counts as a low outlier, as in Ruby).  Where: ``segment=`` (an
    absolute path, or ``"anonymous"``; checked as the middleware's
    ``segment``), else ``$RAINDROPS_LAST_DATA_RECV_SEGMENT``, else a path
    under ``/dev/shm`` derived from the listening socket the worker
    inherited (so forked and spawned workers agree with no configuration),
    else anonymous memory (shared across fork only).  It is opened on first
    use, after the server has set up.  ``histogram=`` supplies one directly
    (anything with ``record`` and a ``snapshot`` like shm-counters').

    Only the first request of each connection is recorded
    (:meth:`record_info`): WSGI adapters pass the client socket
    (:meth:`record_socket`), ASGI ones its address pair
    (:meth:`arecord_address`; ``tcp_info_for(local, remote)`` replaces the
    lookup, by default one ``AsyncDiagSocket`` per process from
    ``kernel``).  The report is at ``path`` (text) and ``path + ".json"``:
    :meth:`answer`, final for the request's method.

    Example::

        >>> ldr = LastDataRecvCore(segment="anonymous")
        >>> ldr.record(3); ldr.record(5)
        >>> dict(ldr.reply("", None, as_json=False).headers)["X-Mean"]
        '4'
    """

    def __init__(
        self,
        *,
        path: str = DEFAULT_LAST_DATA_RECV_PATH,
        segment: str | os.PathLike[str] | None = None,
        histogram: Any = None,
        tcp_info_for: TcpInfoFor | None = None,
        kernel: Kernel | None = None,
    ) -> None:
        self.path = check_path(path)
        self.json_path = path + ".json"
        checked: str | None
        if segment is not None:
            checked = check_segment(segment, LAST_DATA_RECV_SEGMENT_ENV)
        else:
            env = os.environ.get(LAST_DATA_RECV_SEGMENT_ENV) or None
            try:
                checked = None if env is None else check_segment(env, LAST_DATA_RECV_SEGMENT_ENV)
            except ConfigError as exc:
                raise ConfigError(f"${LAST_DATA_RECV_SEGMENT_ENV}: {exc}") from None
        self._segment = checked
        self._hist: Any = histogram
        #: Why this process's histogram is its own only (``None``: it is shared).
        self.unshared: str | None = None
        self._lock = threading.Lock()
        #: Where the connections' ``tcp_info`` comes from (:class:`raindrops_core.adapter.Kernel`).
        self.kernel = Kernel() if kernel is None else kernel
        self._tcp_info_for = tcp_info_for  # None: the default lookup (_atcp_info)
        self._asock: AsyncDiagSocket | None = None  # this process's, for the default lookup
        _LIVE.add(self)

    def __repr__(self) -> str:
        return f"<LastDataRecvCore path={self.path!r} segment={self._segment!r}>"

    @property
    def histogram(self) -> Any:
        """The shared histogram (opened on first use)."""
        hist = self._hist
        if hist is None:
            hist = self._open()
        return hist

    def _after_fork(self) -> None:
        # In a forked child: the parent's netlink socket is not ours to use; a
        # lock held at the fork stays held.  The histogram is shared on purpose.
        self._lock = threading.Lock()
        self._asock = None

    def _open(self) -> Any:
        with self._lock:
            if self._hist is not None:
                return self._hist
            path = self._segment
            if path is None:
                found = server_segment(LAST_DATA_RECV_SEGMENT_NAME)
                path = found.path
                if path is None:
                    self.unshared = found.reason
                    logger.warning(
                        "raindrops LastDataRecv: %s; this process records into its own "
                        "memory, so the report misses other workers (name a segment: "
                        "segment='/dev/shm/NAME' or $%s)",
                        found.reason,
                        LAST_DATA_RECV_SEGMENT_ENV,
                    )
            if path == ANONYMOUS:
                path = None
            try:
                hist = Histogram(_LDR_BOUNDS, path=path)
            except (ShmCountersError, OSError) as exc:
                logger.warning(
                    "raindrops LastDataRecv: cannot open %s (%s); using memory shared "
                    "across fork() only",
                    path,
                    exc,
                )
                hist = Histogram(_LDR_BOUNDS)
            self._hist = hist
            return hist

    # -- recording -------------------------------------------------------------

    def record(self, ms: int) -> None:
        """Record one wait, in milliseconds (lock-free, one C call)."""
        hist = self._hist
        if hist is None:
            hist = self._open()
        hist.record(ms)

    def record_info(self, info: Any) -> bool:
        """Record ``tcpi_last_data_recv`` of a request's connection if it is its first request.

        The Ruby original read it once per connection, at ``accept()``; here
        it is read when a request reaches the app, so a later request on a
        keep-alive (or pipelined) connection would add a wait of about 0
        that is no queue wait.  The kernel tells them apart:
        ``tcpi_data_segs_out`` (Linux 4.6+) is 0 until the server first
        writes on the connection, i.e. during its first request only.
        Recorded: requests where it is 0, or where the kernel lacks it.  Not
        recorded: later requests; and also first requests after the server
        already wrote (an ``Expect: 100-continue`` answered before the app
        runs, a TLS handshake done by the server itself), whose last data
        is no longer the request's arrival.  ``True`` if recorded.
        """
        if info is None:
            return False
        ms = last_data_recv_ms(info)
        if ms is None or getattr(info, "data_segs_out", None):
            return False
        self.record(ms)
        return True

    def record_socket(self, sock: Any) -> bool:
        """:meth:`record_info` from a TCP client socket (``getsockopt(TCP_INFO)``).

        Anything else (a Unix socket, a closed one, not Linux) is not recorded.
        """
        if getattr(sock, "family", None) not in _INET_FAMILIES:
            return False
        try:
            info = TcpInfo.from_socket(sock)
        except (ImportError, OSError, ValueError):
            return False
        return self.record_info(info)

    async def arecord_address(self, local: Any, remote: Any) -> bool:
        """:meth:`record_info` for the connection between ``local`` and ``remote`` (ASGI).

        ASGI servers expose no client socket: the connection is found by its
        address pair (``scope["server"]``, ``scope["client"]``) with
        ``tcp_info_for``, never blocking the loop.  One that cannot be found
        (a Unix socket, a proxy in between) is not recorded.
        """
        try:
            info = await (self._tcp_info_for or self._atcp_info)(local, remote)
        except (ImportError, OSError, ValueError):
            info = None
        return self.record_info(info)

    async def _atcp_info(self, local: Any, remote: Any) -> Any:
        """The default lookup: ``AsyncDiagSocket.tcp_info_for``, one socket per process."""
        sock = self._asock
        if sock is None:
            sock = self._asock = self.kernel.adiag()
        return await sock.tcp_info_for(local, remote)

    def close(self) -> None:
        """Close this process's netlink socket (reopened when needed), or ``tcp_info_for``'s.

        A ``tcp_info_for`` given with a ``close()`` of its own is closed too.
        """
        sock, self._asock = self._asock, None
        if sock is not None:
            sock.close()
        closer = getattr(self._tcp_info_for, "close", None)
        if closer is not None:
            closer()

    # -- reporting -------------------------------------------------------------

    def answer(
        self, path: str, query: str, accept: str | None, *, method: str = "GET"
    ) -> Reply | None:
        """The report if ``path`` is the report's (or its ``.json`` twin), else ``None``.

        ``None`` means: not for us, record the request and pass it on.  Any
        method gets the report, as in Ruby; the reply is final (no body for
        ``HEAD``, its headers kept).
        """
        if path == self.path:
            return self.reply(query, accept, as_json=False).for_method(method)
        if path == self.json_path:
            return self.reply(query, accept, as_json=True).for_method(method)
        return None

    def not_found(self, method: str = "GET") -> Reply:
        """The answer to every other path when there is no app behind: 404 ``Not Found``."""
        return text_reply(404, "Not Found").for_method(method)

    def reply(self, query: str, accept: str | None, *, as_json: bool) -> Reply:
        """The report, as the Ruby original's: ``X-Count``, and when count > 1 the rest.

        ``X-Min``, ``X-Max``, ``X-Mean`` (rounded, halves away from zero, as
        Ruby's ``round``), ``X-Std-Dev`` (the gem's sample standard deviation,
        rounded), ``X-Outliers-Low`` (0 ms waits), ``X-Outliers-High``; the
        gem's text histogram.  JSON (an addition) when ``as_json`` (the
        ``.json`` path) or asked by ``?format=json`` or ``Accept``; a bad
        ``format`` is 400. A process that could not join its server's
        segment adds ``X-Raindrops-Unavailable: shared`` (and, in JSON,
        ``"unavailable": {"shared": REASON}``).
        """
        if not as_json:
            try:
                as_json = negotiate(accept, query) is Format.JSON
            except FormatError as exc:
                return text_reply(400, f"400 Bad Request: {exc}\n")
        snap = self.histogram.snapshot()
        std_dev = _sample_std_dev_of(snap)
        headers = [("X-Count", str(snap.count))]
        unavailable = {} if self.unshared is None else {"shared": self.unshared}
        if snap.count > 1:
            headers += [
                ("X-Min", str(snap.min)),
                ("X-Max", str(snap.max)),
                ("X-Mean", str(ruby_round(snap.mean))),
                ("X-Std-Dev", str(ruby_round(std_dev or 0.0))),
                ("X-Outliers-Low", str(snap.outliers_low)),
                ("X-Outliers-High", str(snap.outliers_high)),
            ]
        if as_json:
            doc = {
                "count": snap.count,
                "sum": snap.sum,
                "min": snap.min,
                "max": snap.max,
                "mean": snap.mean,
                "std_dev": std_dev,
                "outliers_low": snap.outliers_low,
                "outliers_high": snap.outliers_high,
                "buckets": [{"low": lo, "high": hi, "count": c} for lo, hi, c in snap.buckets if c],
                "unavailable": unavailable,
            }
            if unavailable:
                headers.append((UNAVAILABLE_HEADER, "shared"))
            return reply(200, (json.dumps(doc) + "\n").encode(), "application/json", lead=headers)
        if unavailable:
            headers.append((UNAVAILABLE_HEADER, "shared"))
        body = histogram_text(snap.buckets).encode()
        return reply(200, body, "text/plain", lead=headers)


def set_defer_accept(sock: Any, seconds: int = 1) -> bool:
    """Set ``TCP_DEFER_ACCEPT`` on a listening TCP socket; ``False`` where unsupported.

    The kernel then keeps a connection out of the accept queue (and out of
    ``queued``) until the client has sent data, for up to about ``seconds``,
    so no worker accepts a connection that has nothing to read.  The Ruby
    original needed it because it read ``tcpi_last_data_recv`` at
    ``accept()``; LastDataRecv here reads it when the request reaches the
    app, which is the time since the request's last bytes arrived with or
    without it.  Unix sockets and systems without the option are left alone.
    For gunicorn, in ``gunicorn.conf.py``::

        from raindrops_core.watcher import set_defer_accept

        def when_ready(server):
            for listener in server.LISTENERS:
                set_defer_accept(listener.sock)
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 1:
        raise ConfigError(f"seconds must be a positive int, not {seconds!r}")
    opt = getattr(socket, "TCP_DEFER_ACCEPT", None)
    if opt is None or getattr(sock, "family", None) not in _INET_FAMILIES:
        return False
    sock.setsockopt(socket.IPPROTO_TCP, opt, seconds)
    return True
