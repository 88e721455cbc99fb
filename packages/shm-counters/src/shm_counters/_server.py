"""Segments shared by the workers of one server, found with no configuration.

Every preforking server (gunicorn, uvicorn ``--workers``, hypercorn
``--workers``) creates its listening sockets in the master and hands them to
each worker, by ``fork()`` or by passing the descriptor to a spawned child.
A socket's inode is the same in every process holding it and unique on the
machine while it is open, so every worker of one server derives the same
path, ``<shm>/raindrops-<euid>/<name>-<inode>``, whatever the start order,
with nothing to configure. That is the one discovery every package of the
family uses (raindrops' gauges, process-utilization's table, prometheus-shm).

Finding the sockets does not wait for ``listen()``: uvicorn's and
hypercorn's masters bind their sockets but leave ``listen()`` to the
workers, so a worker starting before any sibling listens holds a bound,
unconnected socket. Such a socket counts when the worker's parent (the
master) holds it too; listening sockets count always. An app may open a
listening socket of its own inside one worker; the parent does not hold it,
so when the parent holds some of the sockets found, only those are kept and
every worker agrees.

The per-user directory (``raindrops-<euid>``, mode 0700) is checked before
any name in it is used: a directory, not a symbolic link, owned by the
effective uid, with no group or other write permission. Another user can
neither see the names in it nor create a file there first. (They can create
the directory itself first, under the sticky ``/dev/shm``: it is then
refused, with an error naming its owner, and the caller falls back to
private memory, saying so.)

Nothing removes a server's files when it stops (no worker knows it is the
last), so the process that is about to create a new one sweeps, in a
background thread, this user's files named after a socket that no longer
listens in this network namespace and that are older than
:data:`SWEEP_GRACE` seconds (a server whose workers have not called
``listen()`` yet is not listed as listening).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ._errors import SegmentError

__all__ = [
    "SERVER_DIR_ENV",
    "SWEEP_GRACE",
    "InheritedListener",
    "ServerSegment",
    "discover_listeners",
    "listening_inodes",
    "owner_text",
    "server_directory",
    "server_segment",
    "socket_name",
    "sweep_server_segments",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

#: The environment variable naming the directory that holds the per-user
#: directory (default ``/dev/shm``, the temp directory where there is none).
SERVER_DIR_ENV = "RAINDROPS_SHM_DIR"

#: A file younger than this (seconds) is never swept, listening socket or not.
SWEEP_GRACE = 300.0

# Probe at most this many descriptors where no fd directory can be listed.
_PROBE_LIMIT = 1024
# /proc/net/unix "Flags" bit of a listening socket (__SO_ACCEPTCON, linux/net.h).
_SO_ACCEPTCON = 0x10000
# /proc/net/tcp "st" of a listening socket (TCP_LISTEN, include/net/tcp_states.h).
_TCP_LISTEN = "0A"
_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}\Z")
_FILE = re.compile(r"([a-z][a-z0-9-]{0,31})-([0-9]+)\Z")
# Segment._create's temporary names: .<final name>.<pid>.<8 hex>.tmp
_TEMP = re.compile(r"\..+\.([0-9]+)\.[0-9a-f]{8}\.tmp\Z")


@dataclass(frozen=True, slots=True)
class InheritedListener:
    """A server socket found among the process's own descriptors.

    ``name`` is spelled as raindrops spells listeners (``127.0.0.1:8000``,
    ``[::1]:8000``, ``/run/app.sock``, ``@abstract``); ``inode`` is the
    socket's inode, shared by every process holding the same socket;
    ``listening`` is false for a socket bound but not yet listening (a
    uvicorn or hypercorn worker that starts before any sibling listens).

    Example::

        >>> InheritedListener(3, "127.0.0.1:8000", 81234).listening
        True
    """

    fd: int
    name: str
    inode: int
    listening: bool = True


def socket_name(family: int, address: object) -> str | None:
    """The listener name of a socket address, or ``None`` for an unnamed one.

    A Unix path that is not valid UTF-8 keeps its bytes as surrogate
    escapes (``os.fsdecode``); an abstract name's bytes that are not UTF-8
    are backslash-escaped.

    Example::

        >>> socket_name(socket.AF_INET6, ("fe80::1%eth0", 80, 0, 2))
        '[fe80::1]:80'
    """
    if family == socket.AF_INET and isinstance(address, tuple):
        return f"{address[0]}:{address[1]}"
    if family == socket.AF_INET6 and isinstance(address, tuple):
        host = str(address[0]).split("%", 1)[0]
        return f"[{host}]:{address[1]}"
    if family == socket.AF_UNIX:
        if isinstance(address, bytes):
            if not address:
                return None
            if address[:1] == b"\0":
                return "@" + address[1:].decode("utf-8", "backslashreplace")
            return address.decode("utf-8", "surrogateescape")
        if isinstance(address, str) and address:
            return "@" + address[1:] if address[0] == "\0" else address
    return None


def _candidate_fds() -> list[int]:
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            entries = os.listdir(directory)
        except OSError:
            continue
        return sorted(int(e) for e in entries if e.isdigit())
    return list(range(_PROBE_LIMIT))


def _bound(family: int, address: object) -> bool:
    """Whether ``address`` (a getsockname() answer) names something: a port or a path."""
    if family in (socket.AF_INET, socket.AF_INET6):
        return isinstance(address, tuple) and address[1] != 0
    return bool(address)


def _probe(fd: int) -> InheritedListener | None:
    """The server socket at ``fd``: listening, or bound and not connected; else ``None``."""
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    if not stat.S_ISSOCK(st.st_mode):
        return None
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        if sock.type != socket.SOCK_STREAM:
            return None
        if sock.family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
            return None
        listening = bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
        address = sock.getsockname()
        if not listening:
            if not _bound(sock.family, address):
                return None
            try:
                sock.getpeername()
            except OSError as exc:
                if exc.errno != errno.ENOTCONN:
                    return None
            else:
                return None  # connected: a client's socket, not a server's
        name = socket_name(sock.family, address)
    except OSError:
        return None
    finally:
        sock.detach()
    if name is None:
        return None
    return InheritedListener(fd=fd, name=name, inode=st.st_ino, listening=listening)


def _parent_socket_inodes() -> frozenset[int] | None:
    """Inodes of the sockets the parent process holds; ``None`` if they cannot be read."""
    ppid = os.getppid()
    if ppid <= 0:
        return None
    directory = f"/proc/{ppid}/fd"
    try:
        entries = os.listdir(directory)
    except OSError:  # not Linux, or another user's process (a master running as root)
        return None
    inodes: set[int] = set()
    for entry in entries:
        try:
            target = os.readlink(f"{directory}/{entry}")
        except OSError:
            continue
        if target.startswith("socket:[") and target.endswith("]"):
            inodes.add(int(target[8:-1]))
    return frozenset(inodes)


@dataclass(frozen=True, slots=True)
class _Scan:
    """What one look through this process's descriptors found, for the answer and the log."""

    found: tuple[InheritedListener, ...]
    examined: int
    others: tuple[str, ...]  # server-like sockets not kept (the parent does not hold them)
    parent: frozenset[int] | None


def _scan(prefer_parent: bool) -> _Scan:
    fds = _candidate_fds()
    probed: list[InheritedListener] = []
    seen: set[tuple[int, str]] = set()
    for fd in fds:
        listener = _probe(fd)
        if listener is None:
            continue
        key = (listener.inode, listener.name)
        if key in seen:
            continue
        seen.add(key)
        probed.append(listener)
    # The parent is read even when nothing was found: the reason says what it holds.
    parent = _parent_socket_inodes()
    held = parent or frozenset()
    # A socket that is not listening is a server's only if the master holds it.
    usable = [p for p in probed if p.listening or p.inode in held]
    if prefer_parent:
        shared = [p for p in usable if p.inode in held]
        if shared:
            usable = shared
    kept = {p.inode for p in usable}
    others = tuple(p.name for p in probed if p.inode not in kept)
    return _Scan(tuple(usable), len(fds), others, parent)


def discover_listeners(*, prefer_parent: bool = True) -> tuple[InheritedListener, ...]:
    """The server sockets this process inherited from its server.

    Listening stream sockets (TCP over IPv4 and IPv6, Unix), and stream
    sockets bound but not listening yet that the parent process also holds
    (uvicorn's and hypercorn's masters bind, their workers listen). One
    entry per socket (descriptors duplicated by the server count once, the
    lowest kept), in descriptor order.

    With ``prefer_parent`` (the default), when the parent process (the
    server's master, or the supervisor of spawned workers) holds some of the
    sockets found, only those are returned: a socket the app opened in this
    worker after fork is left out, so every worker of one server reports
    (and names its segment after) the same sockets. When the parent holds
    none of them (a single-process server run from a shell) or its
    descriptors cannot be read (``/proc/<ppid>/fd`` of another user, e.g. a
    master running as root; or not Linux), every listening socket found is
    returned. ``prefer_parent=False`` returns every listening socket of this
    process and the bound ones its parent holds.

    Example::

        >>> [listener.name for listener in discover_listeners()]  # in a gunicorn worker
        ['0.0.0.0:8000']
    """
    return _scan(prefer_parent).found


def _base_directory() -> str:
    chosen = os.environ.get(SERVER_DIR_ENV)
    if chosen:
        return chosen
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK):
        return "/dev/shm"
    return tempfile.gettempdir()


def _euid() -> int:
    return os.geteuid() if hasattr(os, "geteuid") else 0


def owner_text(uid: int) -> str:
    """``uid 1000 (alice)``: a uid with its user name where one is known.

    Example::

        >>> owner_text(0)
        'uid 0 (root)'
    """
    try:
        import pwd

        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _check_directory(path: str) -> None:
    """Refuse ``path`` unless it is a directory (not a symlink) this user alone may write."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        code = exc.errno if exc.errno is not None else errno.EIO
        raise SegmentError(
            code, f"cannot use the segment directory: {os.strerror(code)}", path
        ) from None
    euid = _euid()
    if stat.S_ISLNK(st.st_mode):
        raise SegmentError(
            errno.ELOOP,
            "the segment directory is a symbolic link; it must be a real directory "
            f"owned by {owner_text(euid)} with mode 0700",
            path,
        )
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != euid or st.st_mode & 0o022:
        what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a directory"
        raise SegmentError(
            errno.EPERM,
            f"the segment directory is {what} owned by {owner_text(st.st_uid)} with mode "
            f"0o{stat.S_IMODE(st.st_mode):03o}; it must be a directory owned by "
            f"{owner_text(euid)} with no group or other write permission (0700)",
            path,
        )


def server_directory(*, create: bool = True) -> str:
    """This user's directory of server segments: ``/dev/shm/raindrops-<euid>``, checked.

    Created with mode 0700 when missing (``create``). It must be a
    directory, not a symbolic link, owned by the effective uid, with no
    group or other write permission; otherwise :class:`SegmentError`
    (``EPERM``, ``ELOOP``) names the path, its owner and mode, and what is
    required. ``$RAINDROPS_SHM_DIR`` replaces ``/dev/shm`` (the temp
    directory where there is no ``/dev/shm``).

    Example::

        >>> server_directory()  # doctest: +SKIP
        '/dev/shm/raindrops-1000'
    """
    path = os.path.join(_base_directory(), f"raindrops-{_euid()}")
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            code = exc.errno if exc.errno is not None else errno.EIO
            raise SegmentError(
                code, f"cannot create the segment directory: {os.strerror(code)}", path
            ) from None
    _check_directory(path)
    return path


@dataclass(frozen=True, slots=True)
class ServerSegment:
    """Where the workers of this process's server share ``name``'s segment.

    ``path`` is the same absolute path in every worker of one server, or
    ``None`` when this process cannot find its server's shared state;
    ``reason`` then says what was looked for and what was found (for the
    one log line, and for the outputs that say the figures are this
    process's only). ``listeners`` are the server sockets found.

    Example::

        >>> found = server_segment("raindrops")  # in a gunicorn worker  # doctest: +SKIP
        >>> found.path  # doctest: +SKIP
        '/dev/shm/raindrops-1000/raindrops-81234'
    """

    path: str | None
    listeners: tuple[InheritedListener, ...]
    reason: str = ""


def _why_none(scan: _Scan) -> str:
    parent = os.getppid()
    if scan.parent is None:
        holds = f"its parent (PID {parent}) could not be read"
    else:
        holds = f"its parent (PID {parent}) holds {len(scan.parent)} sockets"
    others = ""
    if scan.others:
        shown = ", ".join(repr(n) for n in scan.others[:4])
        others = f"; bound sockets its parent does not hold: {shown}"
    return (
        f"found no listening socket inherited from a server among the "
        f"{scan.examined} descriptors of PID {os.getpid()} ({holds}{others})"
    )


def server_segment(
    name: str, listeners: Sequence[InheritedListener] | None = None
) -> ServerSegment:
    """The path of ``name``'s segment for this process's server, found with no configuration.

    ``<server_directory()>/<name>-<inode>``, the inode being the lowest of
    ``listeners`` (default: :func:`discover_listeners`). ``name`` is a
    short lower-case word (``raindrops``, ``utilization``, ``prometheus``).
    No listener, or an unusable directory, gives ``path=None`` and the
    ``reason``. When the file does not exist yet (this process is about to
    create it: a server start), stale files of stopped servers are swept in
    a background thread (:func:`sweep_server_segments`).

    Example::

        >>> server_segment("utilization").path  # in a uvicorn worker  # doctest: +SKIP
        '/dev/shm/raindrops-1000/utilization-81234'
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise SegmentError(
            errno.EINVAL,
            f"server segment name {name!r} must be 1-32 lower-case letters, digits "
            "or '-', starting with a letter",
        )
    if listeners is None:
        scan = _scan(prefer_parent=True)
        found = scan.found
        if not found:
            return ServerSegment(None, (), _why_none(scan))
    else:
        found = tuple(listeners)
        if not found:
            return ServerSegment(None, (), "no server socket was given")
    try:
        directory = server_directory()
    except SegmentError as exc:
        return ServerSegment(None, found, str(exc))
    path = os.path.join(directory, f"{name}-{min(listener.inode for listener in found)}")
    if not os.path.lexists(path):
        _start_sweep(directory, path)
    return ServerSegment(path, found)


def _table_inodes(
    path: str, state_col: int, inode_col: int, listening: Callable[[str], bool]
) -> set[int]:
    inodes: set[int] = set()
    with open(path, encoding="ascii", errors="replace") as table:
        next(table, None)  # the header
        for line in table:
            cols = line.split()
            if len(cols) <= max(state_col, inode_col):
                continue
            if listening(cols[state_col]):
                inodes.add(int(cols[inode_col]))
    return inodes


def listening_inodes() -> frozenset[int]:
    """The inodes of every listening TCP (IPv4, IPv6) and Unix stream socket here.

    Read from ``/proc/net/tcp``, ``/proc/net/tcp6`` and ``/proc/net/unix``
    (this network namespace). A missing ``tcp6`` (IPv6 disabled) counts as
    none; anything else unreadable raises :class:`OSError` (off Linux: always).

    Example::

        >>> 0 in listening_inodes()  # doctest: +SKIP
        False
    """
    # /proc/net/tcp: "sl local rem st tx:rx tr:when retrnsmt uid timeout inode ..."
    inodes = _table_inodes("/proc/net/tcp", 3, 9, _TCP_LISTEN.__eq__)
    try:
        inodes |= _table_inodes("/proc/net/tcp6", 3, 9, _TCP_LISTEN.__eq__)
    except FileNotFoundError:
        pass
    # /proc/net/unix: "Num RefCount Protocol Flags Type St Inode [Path]"
    inodes |= _table_inodes(
        "/proc/net/unix", 3, 6, lambda flags: int(flags, 16) & _SO_ACCEPTCON != 0
    )
    return frozenset(inodes)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_server_segments(
    directory: str | None = None,
    *,
    keep: str | None = None,
    live: Iterable[int] | None = None,
    grace: float | None = None,
    now: float | None = None,
) -> list[str]:
    """Remove this user's server segments named after sockets that no longer listen.

    Looks in ``directory`` (default :func:`server_directory`) for regular
    files owned by this user named ``<name>-<inode>``, and unlinks those
    whose inode is not among ``live`` (default :func:`listening_inodes`)
    and that were last modified (``st_mtime``: a segment's is its creation,
    stores through the mapping do not move it) more than ``grace`` seconds
    (default :data:`SWEEP_GRACE`) before ``now``;
    also the temporary files of creators that died mid-creation. ``keep``
    is never removed. If the listeners cannot be read, nothing is removed.
    Best effort: errors are logged at debug level, never raised. Returns
    the paths removed.

    Example::

        >>> sweep_server_segments()  # doctest: +SKIP
        ['/dev/shm/raindrops-1000/raindrops-48211']
    """
    try:
        where = server_directory(create=False) if directory is None else directory
        alive = frozenset(listening_inodes() if live is None else live)
        names = sorted(os.listdir(where))
    except (OSError, SegmentError, ValueError) as exc:
        logger.debug("shm_counters: not sweeping server segments: %s", exc)
        return []
    clock = time.time() if now is None else now
    young = SWEEP_GRACE if grace is None else grace
    kept = os.path.abspath(keep) if keep is not None else None
    euid = _euid()
    removed: list[str] = []
    for entry in names:
        match = _FILE.match(entry)
        if match is not None:
            if int(match.group(2)) in alive:
                continue
        else:
            temp = _TEMP.match(entry)
            if temp is None or _pid_alive(int(temp.group(1))):
                continue
        path = os.path.join(where, entry)
        if os.path.abspath(path) == kept:
            continue
        try:
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != euid:
                continue
            if clock - st.st_mtime < young:
                continue
            os.unlink(path)
        except OSError as exc:
            logger.debug("shm_counters: cannot sweep %s: %s", path, exc)
            continue
        logger.debug("shm_counters: swept stale server segment %s", path)
        removed.append(path)
    return removed


def _sweep_quietly(directory: str, keep: str) -> None:
    try:
        sweep_server_segments(directory, keep=keep)
    except Exception as exc:  # best effort, in a background thread: never raise
        logger.debug("shm_counters: sweep failed: %s", exc)


def _start_sweep(directory: str, keep: str) -> None:
    """Sweep stale segments beside ``keep`` in a daemon thread (serving never waits)."""
    threading.Thread(
        target=_sweep_quietly, args=(directory, keep), name="shm-counters-sweep", daemon=True
    ).start()
