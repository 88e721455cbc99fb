"""The middleware's shared state: gauges in a scoreboard, listeners, the endpoint's answers.

Both adapters (raindrops-wsgi, raindrops-asgi) hold one :class:`RaindropsState`
and do only their protocol's glue: every decision about counting, where the
counters live, which listeners to report, who may read the endpoint and how
to answer lives here, once.
"""

from __future__ import annotations

import http
import logging
import os
import tempfile
import threading
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from linux_inet_diag import (
    AddressError,
    AsyncDiagSocket,
    LinuxInetDiagError,
    ListenOverflows,
    ListenStats,
    listen_overflows,
    parse_address,
    tcp_listener_stats,
    unix_listener_stats,
)
from shm_counters import Scoreboard, ScoreboardFullError, ShmCountersError

from ._access import DEFAULT_ALLOW, AccessList
from ._discover import InheritedListener, discover_listeners
from ._errors import ConfigError, FormatError
from ._prometheus import render_prometheus
from ._render import render_json, render_text
from ._snapshot import CONTENT_TYPES, Format, Snapshot, negotiate

if TYPE_CHECKING:
    from shm_counters import ScoreboardRow

__all__ = [
    "ANONYMOUS",
    "DEFAULT_PATH",
    "DEFAULT_SLOTS",
    "FIELDS",
    "SEGMENT_ENV",
    "RaindropsState",
    "Reply",
    "default_segment_path",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

#: The endpoint's default path, as in the Ruby original.
DEFAULT_PATH = "/_raindrops"
#: The environment variable naming the segment (a path, or ``anonymous``).
SEGMENT_ENV = "RAINDROPS_SEGMENT"
#: ``segment=ANONYMOUS``: counters in anonymous memory, shared only across fork().
ANONYMOUS = "anonymous"
#: Scoreboard rows by default: at most this many live worker processes.
DEFAULT_SLOTS = 256
#: The scoreboard's fields, one row per worker process.
FIELDS: tuple[str, str] = ("calling", "writing")


@dataclass(frozen=True, slots=True)
class Reply:
    """The endpoint's answer, framework-neutral: status, headers, body.

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


def _shm_dir() -> str:
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK):
        return "/dev/shm"
    return tempfile.gettempdir()


def default_segment_path(listeners: Sequence[InheritedListener]) -> str | None:
    """Where the workers of one server share their counters, or ``None`` (anonymous).

    Every worker of a server holds the same listening sockets (forked or
    spawned), and a socket's inode names it uniquely while it is open, so
    ``/dev/shm/raindrops-<uid>-<inode>`` is a path all of them agree on with
    no configuration, distinct from any other server's.  Outside Linux the
    temp directory replaces ``/dev/shm``.  No inherited listener (a test
    client, an app called in-process) gives ``None``.

    Example::

        >>> default_segment_path([InheritedListener(3, "127.0.0.1:8000", 81234)])
        '/dev/shm/raindrops-0-81234'
    """
    inodes = [listener.inode for listener in listeners if listener.inode]
    if not inodes:
        return None
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return os.path.join(_shm_dir(), f"raindrops-{uid}-{min(inodes)}")


def _check_segment(segment: str | os.PathLike[str] | None) -> str | None:
    if segment is None:
        segment = os.environ.get(SEGMENT_ENV) or None
        where = f"${SEGMENT_ENV}"
    else:
        where = "segment"
    if segment is None:
        return None
    if not isinstance(segment, (str, os.PathLike)):
        raise ConfigError(f"{where} must be a path or {ANONYMOUS!r}, not {segment!r}")
    text = os.fspath(segment)
    if text == ANONYMOUS:
        return ANONYMOUS
    if not os.path.isabs(text):
        raise ConfigError(
            f"{where} {text!r} is not an absolute path; give one like "
            f"'/dev/shm/myapp.raindrops', or {ANONYMOUS!r}"
        )
    return text


def _check_listeners(listeners: Iterable[str] | None) -> tuple[str, ...] | None:
    if listeners is None:
        return None
    if isinstance(listeners, (str, bytes)):
        raise ConfigError(f"listeners must be a list of names, not the single string {listeners!r}")
    names: list[str] = []
    for name in listeners:
        if not isinstance(name, str):
            raise ConfigError(f"listener {name!r} is not a string like '127.0.0.1:8080'")
        try:
            parse_address(name)
        except AddressError as exc:
            # The AddressError already lists every accepted form.
            raise ConfigError(f"malformed listener {name!r}: {exc}") from exc
        if name not in names:
            names.append(name)
    return tuple(names)


def _check_path(path: str) -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        raise ConfigError(f"path must be a string starting with '/', not {path!r}")
    return path


def _is_unix(name: str) -> bool:
    return name.startswith(("/", "@"))


_STATES: weakref.WeakSet[RaindropsState] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for state in list(_STATES):
        state._forget_process()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class RaindropsState:
    """The gauges, the listeners and the endpoint of one app, across all its workers.

    ``calling`` and ``writing`` live in a shm-counters scoreboard, one row
    per worker process: totals are exact across every worker, and a worker
    killed mid-request stops counting (its owner PID is dead).  Where the
    scoreboard lives:

    - ``segment=`` (or ``$RAINDROPS_SEGMENT``): an absolute path, created
      (mode 0600) by whichever process comes first, opened by the others;
      or ``"anonymous"``: anonymous memory, shared only by processes forked
      after it was made (gunicorn ``--preload``).
    - By default: ``/dev/shm/raindrops-<uid>-<inode of the listening
      socket>``, a path every worker of one server derives alike, forked
      (gunicorn) or spawned (uvicorn ``--workers``); anonymous memory when
      the process inherited no listener.

    The scoreboard is opened in each process at its first request (or
    snapshot), after any fork.  If it cannot be opened, a warning is logged
    and this process counts in anonymous memory: serving never fails.

    ``listeners`` lists the names to report (``"127.0.0.1:8080"``,
    ``"[::1]:8080"``, ``"/run/app.sock"``); malformed ones raise
    :class:`ConfigError` here.  By default, the listening sockets the worker
    inherited from its server are found among its file descriptors.
    ``allow`` lists the client networks that may read the endpoint
    (loopback only by default; :data:`ALLOW_ALL` for everyone).

    Example::

        >>> state = RaindropsState(listeners=["127.0.0.1:8080"], segment="anonymous")
        >>> row = state.row or state.claim()
        >>> row.incr_calling()  # doctest: +SKIP
        >>> state.snapshot().calling  # doctest: +SKIP
        1
    """

    def __init__(
        self,
        *,
        path: str = DEFAULT_PATH,
        listeners: Iterable[str] | None = None,
        segment: str | os.PathLike[str] | None = None,
        allow: Iterable[str] = DEFAULT_ALLOW,
        slots: int = DEFAULT_SLOTS,
        liveness_ttl: float = 0.5,
    ) -> None:
        self.path = _check_path(path)
        self.listeners = _check_listeners(listeners)
        self.segment = _check_segment(segment)
        self.access = AccessList.parse(allow)
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ConfigError(f"slots must be an int >= 1, not {slots!r}")
        self.slots = slots
        self.liveness_ttl = liveness_ttl
        #: This process's scoreboard row once claimed (``None`` before, and after fork).
        self.row: ScoreboardRow | None = None
        self._board: Scoreboard | None = None
        self._board_path: str | None = None
        self._discovered: tuple[str, ...] | None = None
        self._lock = threading.Lock()
        self._warned: set[str] = set()
        _STATES.add(self)

    def __repr__(self) -> str:
        return (
            f"RaindropsState(path={self.path!r}, listeners={self.listeners!r}, "
            f"segment={self.segment!r}, slots={self.slots})"
        )

    # -- per process ---------------------------------------------------------

    def _forget_process(self) -> None:
        """In a forked child: claim a new row."""
        self.row = None
        self._lock = threading.Lock()

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)

    def _open_board(self) -> Scoreboard:
        path = self.segment
        if path is None:
            path = default_segment_path(discover_listeners())
        if path is None or path == ANONYMOUS:
            self._board_path = None
            return Scoreboard(self.slots, FIELDS, liveness_ttl=self.liveness_ttl)
        try:
            board = Scoreboard(
                self.slots,
                FIELDS,
                path=path,
                create=True,
                mode=0o600,
                liveness_ttl=self.liveness_ttl,
            )
        except (ShmCountersError, OSError) as exc:
            self._warn_once(
                "segment",
                "raindrops: cannot use the shared segment %s (%s); this process counts "
                "in its own anonymous memory, so totals miss other workers",
                path,
                exc,
            )
            self._board_path = None
            return Scoreboard(self.slots, FIELDS, liveness_ttl=self.liveness_ttl)
        self._board_path = path
        return board

    @property
    def board(self) -> Scoreboard:
        """The scoreboard (opened on first use in this process)."""
        board = self._board
        if board is None:
            with self._lock:
                if self._board is None:
                    self._board = self._open_board()
                board = self._board
        return board

    @property
    def segment_path(self) -> str | None:
        """The path of the opened segment, ``None`` for anonymous memory or not yet opened."""
        return self._board_path

    def claim(self) -> ScoreboardRow:
        """This process's scoreboard row, claimed on first use (and again after fork).

        The per-request path reads :attr:`row` and calls this only when it is
        ``None``.  A full scoreboard logs a warning and gives a private row.
        """
        board = self.board
        with self._lock:
            if self.row is None:
                try:
                    self.row = board.claim()
                except ScoreboardFullError as exc:
                    self._warn_once(
                        "full",
                        "raindrops: %s; this worker counts in private memory "
                        "(raise slots= above %d)",
                        exc,
                        self.slots,
                    )
                    self.row = Scoreboard(1, FIELDS).claim()
            return self.row

    # -- snapshot ------------------------------------------------------------

    def listener_names(self) -> tuple[str, ...]:
        """The listeners reported: the given list, else those inherited (TCP first, then Unix)."""
        names = self.listeners
        if names is None:
            names = self._discovered
            if names is None:
                found = tuple(listener.name for listener in discover_listeners())
                if found:
                    self._discovered = found
                names = found
        tcp = tuple(n for n in names if not _is_unix(n))
        return tcp + tuple(n for n in names if _is_unix(n))

    def counts(self) -> tuple[int, int]:
        """``(calling, writing)`` summed over every live worker's row."""
        totals = self.board.totals()
        return totals["calling"], totals["writing"]

    def _failed(self, unavailable: dict[str, str], part: str, exc: BaseException) -> None:
        reason = str(exc) or type(exc).__name__
        unavailable[part] = reason
        self._warn_once(
            f"{part}:{type(exc).__name__}", "raindrops: %s unavailable: %s", part, reason
        )

    def snapshot(self) -> Snapshot:
        """Read the gauges and every listener's queues now (blocking netlink query).

        Example::

            >>> state.snapshot()  # doctest: +SKIP
            Snapshot(calling=1, writing=0, listeners={'127.0.0.1:8080': ListenStats(...)}, ...)
        """
        calling, writing = self.counts()
        names = self.listener_names()
        unavailable: dict[str, str] = {}
        listeners: dict[str, ListenStats] = {}
        if names:
            tcp = [n for n in names if not _is_unix(n)]
            unix = [n for n in names if _is_unix(n)]
            # linux_inet_diag's default DiagSocket: one per thread, reused,
            # reopened after fork.
            try:
                if tcp:
                    listeners.update(tcp_listener_stats(tcp))
                if unix:
                    listeners.update(unix_listener_stats(unix))
            except (LinuxInetDiagError, OSError) as exc:
                listeners = {}
                self._failed(unavailable, "listeners", exc)
        overflows = self._overflows(unavailable)
        return Snapshot(calling, writing, listeners, overflows, unavailable)

    def _overflows(self, unavailable: dict[str, str]) -> ListenOverflows | None:
        try:
            return listen_overflows()
        except (LinuxInetDiagError, OSError) as exc:
            self._failed(unavailable, "overflows", exc)
            return None

    async def asnapshot(self) -> Snapshot:
        """:meth:`snapshot` for an event loop: the netlink query never blocks the loop."""
        calling, writing = self.counts()
        names = self.listener_names()
        unavailable: dict[str, str] = {}
        listeners: dict[str, ListenStats] = {}
        if names:
            tcp = [n for n in names if not _is_unix(n)]
            unix = [n for n in names if _is_unix(n)]
            # One socket per query: it belongs to the running loop, and a
            # query is one socket() call away from nothing.
            diag: AsyncDiagSocket | None = None
            try:
                diag = AsyncDiagSocket()
                if tcp:
                    listeners.update(await diag.tcp_listener_stats(tcp))
                if unix:
                    listeners.update(await diag.unix_listener_stats(unix))
            except (LinuxInetDiagError, OSError) as exc:
                listeners = {}
                self._failed(unavailable, "listeners", exc)
            finally:
                if diag is not None:
                    diag.close()
        overflows = self._overflows(unavailable)
        return Snapshot(calling, writing, listeners, overflows, unavailable)

    # -- the endpoint --------------------------------------------------------

    def preflight(
        self, client: str | None, accept: str | None, query: str | None
    ) -> Reply | Format:
        """Refuse (403) or reject (400) a request to the endpoint, or pick its format.

        ``client`` is the peer's IP address (``None``/``""`` for a Unix
        socket), ``accept`` the ``Accept`` header, ``query`` the raw query string.
        """
        if not self.access.allows(client):
            return _plain(403, f"403 Forbidden: client {client} is not in the allow-list\n")
        try:
            return negotiate(accept, query)
        except FormatError as exc:
            return _plain(400, f"400 Bad Request: {exc}\n")

    def reply(self, snapshot: Snapshot, fmt: Format, *, head: bool = False) -> Reply:
        """The 200 answer rendering ``snapshot`` as ``fmt`` (no body for ``HEAD``)."""
        if fmt is Format.TEXT:
            body = render_text(snapshot)
        elif fmt is Format.JSON:
            body = render_json(snapshot)
        else:
            body = render_prometheus(snapshot, openmetrics=fmt is Format.OPENMETRICS)
        headers = (("Content-Type", CONTENT_TYPES[fmt]), ("Content-Length", str(len(body))))
        return Reply(200, headers, b"" if head else body)

    def respond(
        self, method: str, client: str | None, accept: str | None, query: str | None
    ) -> Reply:
        """The whole endpoint, blocking: access, format, snapshot, rendering.

        Example::

            >>> state.respond("GET", "127.0.0.1", None, "").body  # doctest: +SKIP
            b'calling: 0\\nwriting: 0\\n'
        """
        decided = self.preflight(client, accept, query)
        if isinstance(decided, Reply):
            return _headless(decided) if method == "HEAD" else decided
        return self.reply(self.snapshot(), decided, head=method == "HEAD")

    async def arespond(
        self, method: str, client: str | None, accept: str | None, query: str | None
    ) -> Reply:
        """:meth:`respond` for an event loop (netlink through :class:`AsyncDiagSocket`)."""
        decided = self.preflight(client, accept, query)
        if isinstance(decided, Reply):
            return _headless(decided) if method == "HEAD" else decided
        return self.reply(await self.asnapshot(), decided, head=method == "HEAD")


def _plain(status: int, text: str) -> Reply:
    body = text.encode()
    return Reply(status, (("Content-Type", "text/plain"), ("Content-Length", str(len(body)))), body)


def _headless(reply: Reply) -> Reply:
    return Reply(reply.status, reply.headers, b"")
