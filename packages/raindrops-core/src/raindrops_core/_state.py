"""The middleware's shared state: gauges in a scoreboard, listeners, the endpoint's answers.

Both adapters (raindrops-wsgi, raindrops-asgi) hold one :class:`RaindropsState`
and do only their protocol's glue: every decision about counting, where the
counters live, which listeners to report, who may read the endpoint and how
to answer lives here, once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from linux_inet_diag import (
    AsyncDiagSocket,
    DiagSocket,
    LinuxInetDiagError,
    ListenOverflows,
    ListenStats,
)
from shm_counters import (
    InheritedListener,
    Scoreboard,
    ScoreboardFullError,
    ShmCountersError,
    discover_listeners,
    server_segment,
)

from ._access import DEFAULT_ALLOW, AccessList, Peer
from ._errors import ConfigError, FormatError
from ._fork import LiveInstances
from ._http import Reply, plain
from ._prometheus import render_prometheus
from ._reads import Kernel, arun, listener_stats_steps, run
from ._render import render_json, render_text
from ._snapshot import (
    CONTENT_TYPES,
    UNAVAILABLE_HEADER,
    UNAVAILABLE_PARTS,
    Format,
    Snapshot,
    negotiate,
    unavailable_header,
)
from ._validate import ANONYMOUS, check_listeners, check_path, check_segment, split_names

if TYPE_CHECKING:
    from shm_counters import ScoreboardRow

__all__ = [
    "ANONYMOUS",
    "DEFAULT_PATH",
    "DEFAULT_SLOTS",
    "FIELDS",
    "SEGMENT_ENV",
    "SEGMENT_NAME",
    "UNAVAILABLE_HEADER",
    "UNAVAILABLE_PARTS",
    "RaindropsState",
    "Steps",
    "unavailable_header",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

#: The endpoint's default path, as in the Ruby original.
DEFAULT_PATH = "/_raindrops"
#: The environment variable naming the segment (a path, or ``anonymous``).
SEGMENT_ENV = "RAINDROPS_SEGMENT"
#: The default segment's name in the server's directory (``shm_counters.server_segment``).
SEGMENT_NAME = "raindrops"
#: Scoreboard rows by default: at most this many live worker processes.
DEFAULT_SLOTS = 256
#: The scoreboard's fields, one row per worker process.
FIELDS: tuple[str, str] = ("calling", "writing")


@dataclass(frozen=True, slots=True)
class Steps:
    """This process's four per-request steps, bound once: zero-argument C-level callables.

    Each is shm-counters' ``row.bind_incr(field)``/``bind_decr(field)``: one
    cffi call and no Python frame.  The adapters call them on
    every request; :meth:`RaindropsState.prepare` makes them once per
    process (again after fork).

    Example::

        >>> steps = RaindropsState(listeners=[], segment="anonymous").prepare()
        >>> steps.incr_calling(), steps.decr_calling()
        (1, 0)
    """

    incr_calling: Callable[[], int]
    decr_calling: Callable[[], int]
    incr_writing: Callable[[], int]
    decr_writing: Callable[[], int]


_LIVE: LiveInstances[RaindropsState] = LiveInstances()


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
    - By default: ``/dev/shm/raindrops-<euid>/raindrops-<inode of the
      server socket>`` (:func:`shm_counters.server_segment`), a path every
      worker of one server derives alike, forked (gunicorn) or spawned
      (uvicorn/hypercorn ``--workers``), whatever the order they start in.
      A process that finds no server socket (an app called in-process) or
      cannot use the segment counts in its own memory: it logs why, once,
      and every snapshot says so (``unavailable["shared"]``, the
      ``X-Raindrops-Unavailable: shared`` header, ``raindrops_shared 0``).

    :meth:`prepare` opens the scoreboard, claims this process's row and binds
    its four :class:`Steps`, once per process (at its first request, after
    any fork; ASGI: at lifespan startup, in a thread, when the server's
    sockets are already there).  If the scoreboard cannot be opened, a
    warning is logged and this process counts in anonymous memory: serving
    never fails.

    ``listeners`` lists the names to report (``"127.0.0.1:8080"``,
    ``"[::1]:8080"``, ``"/run/app.sock"``); malformed ones raise
    :class:`ConfigError` here.  By default, the listening sockets the worker
    inherited from its server are found among its file descriptors, once.
    ``kernel`` replaces where the kernel's figures come from (tests; see
    :class:`raindrops_core.adapter.Kernel`).
    ``allow`` lists the client networks that may read the endpoint
    (loopback and local Unix peers by default; :data:`ALLOW_ALL` for every
    address), or is a ready :class:`AccessList`; requests are decided by
    its rule (:meth:`AccessList.refusal`).

    Example::

        >>> state = RaindropsState(listeners=["127.0.0.1:8080"], segment="anonymous")
        >>> steps = state.steps or state.prepare()
        >>> steps.incr_calling()
        1
        >>> state.snapshot().calling  # doctest: +SKIP
        1
    """

    def __init__(
        self,
        *,
        path: str = DEFAULT_PATH,
        listeners: Iterable[str] | None = None,
        segment: str | os.PathLike[str] | None = None,
        allow: Iterable[str] | AccessList = DEFAULT_ALLOW,
        slots: int = DEFAULT_SLOTS,
        liveness_ttl: float = 0.5,
        kernel: Kernel | None = None,
    ) -> None:
        self.path = check_path(path)
        self.listeners = check_listeners(listeners)
        self.segment = check_segment(segment, SEGMENT_ENV)
        self.access = AccessList.parse(allow)
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ConfigError(f"slots must be an int >= 1, not {slots!r}")
        self.slots = slots
        self.liveness_ttl = liveness_ttl
        #: Where the kernel's figures come from (:class:`raindrops_core.adapter.Kernel`).
        self.kernel = Kernel() if kernel is None else kernel
        #: This process's bound steps once prepared (``None`` before, and after fork).
        self.steps: Steps | None = None
        #: This process's scoreboard row once claimed (``None`` before, and after fork).
        self.row: ScoreboardRow | None = None
        self._board: Scoreboard | None = None
        self._board_path: str | None = None
        #: Why this process's gauges are its own only (``None``: they are shared).
        self.unshared: str | None = None
        self._found: tuple[InheritedListener, ...] | None = None
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._diag = threading.local()  # one blocking DiagSocket per thread, reused
        self._warned: set[str] = set()
        _LIVE.add(self)

    def __repr__(self) -> str:
        return (
            f"RaindropsState(path={self.path!r}, listeners={self.listeners!r}, "
            f"segment={self.segment!r}, slots={self.slots})"
        )

    # -- per process ---------------------------------------------------------

    def _after_fork(self) -> None:
        """In a forked child: claim a new row and bind new steps (the parent's are its own)."""
        self.steps = None
        self.row = None
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._diag = threading.local()

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)

    def inherited(self) -> tuple[InheritedListener, ...]:
        """The listening sockets inherited from the server, found once per state.

        :func:`discover_listeners` at first use (blocking: it walks this
        process's descriptors); an empty answer is not kept, so a process
        that gets its listeners later (gunicorn ``--preload`` imports the app
        before binding) finds them then.
        """
        found = self._found
        if found is None:
            found = discover_listeners()
            if found:
                self._found = found
        return found

    def _private_board(self, reason: str) -> Scoreboard:
        """Anonymous memory for a process that cannot share: say why, once, and keep it."""
        self.unshared = reason
        self._warn_once(
            "segment",
            "raindrops: %s; this process counts calling/writing in its own memory, so its "
            "figures miss every other worker. To share them, name one segment for every "
            "worker: RaindropsMiddleware(app, segment='/dev/shm/NAME') or $%s",
            reason,
            SEGMENT_ENV,
        )
        self._board_path = None
        return Scoreboard(self.slots, FIELDS, liveness_ttl=self.liveness_ttl)

    def _open_board(self) -> Scoreboard:
        path = self.segment
        if path is None:
            found = server_segment(SEGMENT_NAME, self._found or None)
            if found.listeners and self._found is None:
                self._found = found.listeners
            if found.path is None:
                return self._private_board(found.reason)
            path = found.path
        if path == ANONYMOUS:
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
            return self._private_board(f"cannot use the shared segment {path} ({exc})")
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

        A full scoreboard logs a warning and gives a private row.
        """
        board = self.board
        with self._lock:
            if self.row is None:
                try:
                    self.row = board.claim()
                except ScoreboardFullError as exc:
                    self.unshared = f"{exc}; raise slots= above {self.slots}"
                    self._warn_once(
                        "full",
                        "raindrops: %s; this worker counts in private memory "
                        "(raise slots= above %d)",
                        exc,
                        self.slots,
                    )
                    self.row = Scoreboard(1, FIELDS).claim()
            return self.row

    def prepare(self) -> Steps:
        """This process's :class:`Steps`: scoreboard opened, row claimed, steps bound.

        Once per process (again after fork); blocking (it may discover the
        listeners, create the segment, read ``/proc``).  The per-request path
        reads :attr:`steps` and calls this only when it is ``None``.
        """
        steps = self.steps
        if steps is not None:
            return steps
        row = self.claim()
        with self._lock:
            if self.steps is None:
                self.steps = Steps(
                    row.bind_incr("calling"),
                    row.bind_decr("calling"),
                    row.bind_incr("writing"),
                    row.bind_decr("writing"),
                )
            return self.steps

    async def aprepare(self) -> Steps:
        """:meth:`prepare` for an event loop: the blocking part runs in a thread."""
        steps = self.steps
        if steps is not None:
            return steps
        return await asyncio.get_running_loop().run_in_executor(None, self.prepare)

    def startup(self) -> Steps | None:
        """:meth:`prepare` at server startup, if this process can already find its server.

        A server that creates its sockets after the app's startup (uvicorn
        or hypercorn running one process, with no ``--workers``) has none to
        find yet: the default segment is then left for the first request,
        when the socket it came through is there. With ``segment=`` given,
        or the server's sockets found, this is :meth:`prepare`.
        """
        if self.steps is not None:
            return self.steps
        if self.segment is None and not self.inherited():
            return None
        return self.prepare()

    async def astartup(self) -> Steps | None:
        """:meth:`startup` for an event loop (ASGI lifespan): in a thread."""
        if self.steps is not None:
            return self.steps
        return await asyncio.get_running_loop().run_in_executor(None, self.startup)

    # -- snapshot ------------------------------------------------------------

    def listener_names(self) -> tuple[str, ...]:
        """The listeners reported: the given list, else those inherited (TCP first, then Unix)."""
        names = self.listeners
        if names is None:
            names = tuple(listener.name for listener in self.inherited())
        tcp, unix = split_names(names)
        return (*tcp, *unix)

    def counts(self) -> tuple[int, int]:
        """``(calling, writing)`` summed over every live worker's row."""
        board = self.board
        with self._read_lock:  # totals() reuses one buffer: one reader at a time
            totals = board.totals()
        return totals["calling"], totals["writing"]

    def _failed(self, part: str, exc: BaseException) -> str:
        reason = str(exc) or type(exc).__name__
        self._warn_once(
            f"{part}:{type(exc).__name__}", "raindrops: %s unavailable: %s", part, reason
        )
        return reason

    def _overflows(self) -> tuple[ListenOverflows | None, str | None]:
        try:
            return self.kernel.listen_overflows(), None
        except (LinuxInetDiagError, OSError) as exc:
            return None, self._failed("overflows", exc)

    def _local(self, overflows: bool) -> tuple[int, int, ListenOverflows | None, str | None]:
        """The parts read from this machine's memory and ``/proc``: gauges, overflow counters."""
        calling, writing = self.counts()
        over, reason = self._overflows() if overflows else (None, None)
        return calling, writing, over, reason

    def _unavailable(self, failure: str | None, over_failure: str | None) -> dict[str, str]:
        missing: dict[str, str] = {}
        if self.unshared is not None:
            missing["shared"] = self.unshared
        if failure is not None:
            missing["listeners"] = failure
        if over_failure is not None:
            missing["overflows"] = over_failure
        return missing

    def _blocking_diag(self) -> DiagSocket:
        diag: DiagSocket | None = getattr(self._diag, "sock", None)
        if diag is None:
            diag = self._diag.sock = self.kernel.diag()
        return diag

    def _listeners_read(self, names: tuple[str, ...]) -> tuple[dict[str, ListenStats], str | None]:
        """Every name's queues (blocking), or the reason they could not be read."""
        if not names:
            return {}, None
        try:
            return run(listener_stats_steps(names), self._blocking_diag()), None
        except (LinuxInetDiagError, OSError) as exc:
            return {}, self._failed("listeners", exc)

    async def _alisteners_read(
        self, names: tuple[str, ...]
    ) -> tuple[dict[str, ListenStats], str | None]:
        """:meth:`_listeners_read` on the running loop, never blocking it.

        One socket per query: it belongs to the running loop, and a query is
        one ``socket()`` call away from nothing.
        """
        if not names:
            return {}, None
        diag: AsyncDiagSocket | None = None
        try:
            diag = self.kernel.adiag()
            return await arun(listener_stats_steps(names), diag), None
        except (LinuxInetDiagError, OSError) as exc:
            return {}, self._failed("listeners", exc)
        finally:
            if diag is not None:
                diag.close()

    def _assemble(
        self,
        read: tuple[dict[str, ListenStats], str | None],
        local: tuple[int, int, ListenOverflows | None, str | None],
    ) -> Snapshot:
        listeners, failure = read
        calling, writing, over, over_failure = local
        return Snapshot(calling, writing, listeners, over, self._unavailable(failure, over_failure))

    def snapshot(self, *, overflows: bool = True) -> Snapshot:
        """Read the gauges and every listener's queues now (blocking netlink query).

        ``overflows=False`` skips reading the machine's listen-overflow
        counters (``/proc/net/netstat``), which the raindrops text does not show.

        Example::

            >>> state.snapshot()  # doctest: +SKIP
            Snapshot(calling=1, writing=0, listeners={'127.0.0.1:8080': ListenStats(...)}, ...)
        """
        read = self._listeners_read(self.listener_names())
        return self._assemble(read, self._local(overflows))

    async def asnapshot(self, *, overflows: bool = True) -> Snapshot:
        """:meth:`snapshot` for an event loop: nothing blocking runs on the loop.

        The netlink query goes through :class:`AsyncDiagSocket` on the loop;
        listener discovery (the first time), the gauges (their liveness
        checks read ``/proc``) and the overflow counters are read in a
        thread, concurrently with it.
        """
        loop = asyncio.get_running_loop()
        if self.listeners is None and self._found is None:
            await loop.run_in_executor(None, self.inherited)
        local = loop.run_in_executor(None, self._local, overflows)
        try:
            read = await self._alisteners_read(self.listener_names())
        finally:
            got = await local
        return self._assemble(read, got)

    # -- the endpoint --------------------------------------------------------

    def preflight(
        self, client: Peer | str | None, accept: str | None, query: str | None
    ) -> Reply | Format:
        """Refuse (403) or reject (400) a request to the endpoint, or pick its format.

        ``client`` is the request's :class:`Peer` (``Peer.from_wsgi(environ)``,
        ``Peer.from_asgi(scope)``), or a bare IP address (a direct TCP
        client), or ``None`` (no address: refused); ``accept`` the ``Accept``
        header, ``query`` the raw query string.  Both error answers are
        ``text/plain`` with ``X-Content-Type-Options: nosniff`` (the 400
        quotes the ``format`` asked for).
        """
        reason = self.access.refusal(client)
        if reason is not None:
            return plain(403, f"403 Forbidden: {reason}\n")
        try:
            return negotiate(accept, query)
        except FormatError as exc:
            return plain(400, f"400 Bad Request: {exc}\n")

    def reply(self, snapshot: Snapshot, fmt: Format, *, head: bool = False) -> Reply:
        """The 200 answer rendering ``snapshot`` as ``fmt`` (no body for ``HEAD``).

        Headers: ``Content-Type``, ``Content-Length`` and, when a part could
        not be read, ``X-Raindrops-Unavailable`` naming the missing parts
        (``listeners, overflows``, in that order).
        """
        if fmt is Format.TEXT:
            body = render_text(snapshot)
        elif fmt is Format.JSON:
            body = render_json(snapshot)
        else:
            body = render_prometheus(snapshot, openmetrics=fmt is Format.OPENMETRICS)
        headers: tuple[tuple[str, str], ...] = (
            ("Content-Type", CONTENT_TYPES[fmt]),
            ("Content-Length", str(len(body))),
        )
        missing = unavailable_header(snapshot.unavailable)
        if missing:
            headers += ((UNAVAILABLE_HEADER, missing),)
        return Reply(200, headers, b"" if head else body)

    def respond(
        self, method: str, client: Peer | str | None, accept: str | None, query: str | None
    ) -> Reply:
        """The whole endpoint, blocking: access, format, snapshot, rendering.

        Example::

            >>> state.respond("GET", "127.0.0.1", None, "").body  # doctest: +SKIP
            b'calling: 0\\nwriting: 0\\n'
        """
        decided = self.preflight(client, accept, query)
        if isinstance(decided, Reply):
            return decided.for_method(method)
        snap = self.snapshot(overflows=decided is not Format.TEXT)
        return self.reply(snap, decided, head=method == "HEAD")

    async def arespond(
        self, method: str, client: Peer | str | None, accept: str | None, query: str | None
    ) -> Reply:
        """:meth:`respond` for an event loop: nothing blocking runs on the loop."""
        decided = self.preflight(client, accept, query)
        if isinstance(decided, Reply):
            return decided.for_method(method)
        snap = await self.asnapshot(overflows=decided is not Format.TEXT)
        return self.reply(snap, decided, head=method == "HEAD")
