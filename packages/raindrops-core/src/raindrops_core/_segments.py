"""The default shared segments: their names, and sweeping the stale ones away.

Every worker of one server holds the same listening socket (forked or
spawned), and a socket's inode names it uniquely while it is open, so
``/dev/shm/<prefix>-<uid>-<inode>`` is a path all of them agree on with no
configuration.  Two prefixes are in use: ``raindrops`` (the middleware's
``calling``/``writing`` scoreboard) and ``raindrops-ldr`` (LastDataRecv's
histogram).

Nothing removes such a file when its server stops (a worker cannot know it
is the last one), so every server start would leave one behind.  Instead,
the process that creates a new default segment sweeps, in a background
thread: it unlinks this user's default segments named after a socket that
no longer listens anywhere on the machine.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
from collections.abc import Iterable, Sequence

from linux_inet_diag import LinuxInetDiagError, TcpState, inet_diag_records

from ._discover import InheritedListener, discover_listeners

__all__ = [
    "LDR_PREFIX",
    "SEGMENT_PREFIX",
    "default_segment",
    "default_segment_path",
    "listening_inodes",
    "sweep_stale_segments",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

#: The prefix of the middleware's default scoreboard segment.
SEGMENT_PREFIX = "raindrops"
#: The prefix of LastDataRecv's default histogram segment.
LDR_PREFIX = "raindrops-ldr"
_PREFIXES = (SEGMENT_PREFIX, LDR_PREFIX)

# /proc/net/unix "Flags" bit of a listening socket (__SO_ACCEPTCON, linux/net.h).
_SO_ACCEPTCON = 0x10000

#: The last background sweep started in this process (tests join it).
_sweeper: threading.Thread | None = None


def _shm_dir() -> str:
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK):
        return "/dev/shm"
    return tempfile.gettempdir()


def _uid() -> int:
    return os.getuid() if hasattr(os, "getuid") else 0


def default_segment_path(
    listeners: Sequence[InheritedListener], prefix: str = SEGMENT_PREFIX
) -> str | None:
    """Where the workers of one server share ``prefix``'s counters, or ``None`` (anonymous).

    ``/dev/shm/<prefix>-<uid>-<inode>``, the inode being the lowest of
    ``listeners`` (the sockets the worker inherited from its server; see
    :func:`discover_listeners`).  Outside Linux the temp directory replaces
    ``/dev/shm``.  No listener (a test client, an app called in-process)
    gives ``None``.  ``prefix`` is ``"raindrops"`` (the middleware) or
    ``"raindrops-ldr"`` (LastDataRecv).

    Example::

        >>> default_segment_path([InheritedListener(3, "127.0.0.1:8000", 81234)])
        '/dev/shm/raindrops-1000-81234'
    """
    inodes = [listener.inode for listener in listeners if listener.inode]
    if not inodes:
        return None
    return os.path.join(_shm_dir(), f"{prefix}-{_uid()}-{min(inodes)}")


def _unix_listening_inodes() -> set[int]:
    # linux_inet_diag answers Unix listeners by name only; /proc/net/unix has
    # their inodes: "Num RefCount Protocol Flags Type St Inode [Path]".
    inodes: set[int] = set()
    with open("/proc/net/unix", encoding="utf-8", errors="replace") as table:
        next(table, None)  # the header
        for line in table:
            cols = line.split()
            if len(cols) >= 7 and int(cols[3], 16) & _SO_ACCEPTCON:
                inodes.add(int(cols[6]))
    return inodes


def listening_inodes() -> frozenset[int]:
    """The inodes of every listening TCP (IPv4, IPv6) and Unix socket on the machine.

    TCP listeners come from netlink sock_diag (linux_inet_diag), Unix ones
    from ``/proc/net/unix``; both see this network namespace.  Raises
    :class:`linux_inet_diag.LinuxInetDiagError` or :class:`OSError` when
    either cannot be read (off Linux: always).

    Example::

        >>> 0 in listening_inodes()  # doctest: +SKIP
        False
    """
    tcp = {record.inode for record in inet_diag_records(states=[TcpState.LISTEN])}
    return frozenset(tcp | _unix_listening_inodes())


def _pattern(uid: int) -> re.Pattern[str]:
    prefixes = "|".join(re.escape(p) for p in sorted(_PREFIXES, key=len, reverse=True))
    return re.compile(rf"(?:{prefixes})-{uid}-([0-9]+)")


def sweep_stale_segments(
    keep: str | None = None,
    *,
    directory: str | None = None,
    live: Iterable[int] | None = None,
) -> list[str]:
    """Remove this user's default segments named after sockets that no longer listen.

    Looks in ``directory`` (the default segments' one, ``/dev/shm``) for
    regular files owned by this user named ``raindrops-<uid>-<inode>`` or
    ``raindrops-ldr-<uid>-<inode>`` with this user's uid, and unlinks those
    whose inode is not among ``live`` (default: :func:`listening_inodes`,
    every listener on the machine).  ``keep`` is never removed.  If the
    listeners cannot be read, nothing is removed.  Best effort: errors are
    logged at debug level, never raised.  Returns the paths removed.

    Example::

        >>> sweep_stale_segments()  # doctest: +SKIP
        ['/dev/shm/raindrops-1000-48211']
    """
    where = _shm_dir() if directory is None else directory
    if live is None:
        try:
            live = listening_inodes()
        except (LinuxInetDiagError, OSError, ValueError) as exc:
            logger.debug("raindrops: not sweeping %s: listeners unknown (%s)", where, exc)
            return []
    alive = frozenset(live)
    uid = _uid()
    pattern = _pattern(uid)
    kept = os.path.abspath(keep) if keep is not None else None
    removed: list[str] = []
    try:
        names = sorted(os.listdir(where))
    except OSError as exc:
        logger.debug("raindrops: not sweeping %s: %s", where, exc)
        return []
    for name in names:
        match = pattern.fullmatch(name)
        if match is None or int(match.group(1)) in alive:
            continue
        path = os.path.join(where, name)
        if os.path.abspath(path) == kept:
            continue
        try:
            st = os.lstat(path)
            if not os.path.isfile(path) or os.path.islink(path) or st.st_uid != uid:
                continue
            os.unlink(path)
        except OSError as exc:
            logger.debug("raindrops: cannot sweep %s: %s", path, exc)
            continue
        logger.debug("raindrops: swept stale segment %s (socket %s closed)", path, match.group(1))
        removed.append(path)
    return removed


def _sweep_quietly(keep: str) -> None:
    try:
        sweep_stale_segments(keep, directory=os.path.dirname(keep))
    except Exception as exc:  # best effort, in a background thread: never raise
        logger.debug("raindrops: sweep failed: %s", exc)


def start_sweep(keep: str) -> threading.Thread:
    """Sweep stale segments beside ``keep`` in a daemon thread (serving never waits)."""
    global _sweeper  # the one handle tests join
    thread = threading.Thread(
        target=_sweep_quietly, args=(keep,), name="raindrops-sweep", daemon=True
    )
    _sweeper = thread
    thread.start()
    return thread


def default_segment(
    prefix: str = SEGMENT_PREFIX, listeners: Sequence[InheritedListener] | None = None
) -> str | None:
    """This process's default segment path for ``prefix``; sweeps stale ones when it is new.

    ``listeners`` defaults to :func:`discover_listeners`.  When the path does
    not exist yet (this process is about to create it: a server start), the
    stale segments beside it are swept in a background thread
    (:func:`sweep_stale_segments`).  ``None``: no inherited listener.

    Example::

        >>> default_segment("raindrops-ldr")  # in a gunicorn worker  # doctest: +SKIP
        '/dev/shm/raindrops-ldr-1000-81234'
    """
    found = discover_listeners() if listeners is None else listeners
    path = default_segment_path(found, prefix)
    if path is not None and not os.path.exists(path):
        start_sweep(path)
    return path
