"""How the exporter finds every server of this user, and names it.

Every worker of one server shares segments named after the lowest inode of
the server's sockets, in this user's directory (``shm_counters``):
``<shm>/raindrops-<euid>/<kind>-<inode>``, ``kind`` being ``raindrops``
(calling/writing), ``utilization`` (process-utilization's table),
``latency`` (its request-duration histogram) or ``ldr``. The files of one
inode are one server, shown while a socket with that inode listens in this
network namespace; once the server's sockets close, it is no longer listed
(its files stay until a server start sweeps them).

A segment names one inode only. The server's listener *names* come from a
live worker: the socket inodes among its descriptors (``/proc/PID/fd``),
kept when they listen (the kernel's LISTEN sockets, TCP and Unix, over
netlink: ``linux_inet_diag.listening_sockets``). They are looked up once
per server and kept; until a worker has claimed a row, the listener with the segment's inode alone
names it. A server is labelled by its listener names, TCP first, then
Unix, comma-joined: ``server="127.0.0.1:8000"``,
``server="127.0.0.1:8000,/run/app.sock"``.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from linux_inet_diag import listening_sockets as _kernel_listening

__all__ = [
    "KINDS",
    "ListeningSocket",
    "label_of",
    "listening_sockets",
    "segment_groups",
    "socket_inodes",
]

#: The segment kinds the exporter reads, by file-name prefix.
KINDS = ("raindrops", "utilization", "latency", "ldr")

_FILE = re.compile(r"([a-z][a-z0-9-]{0,31})-([0-9]+)\Z")


@dataclass(frozen=True, slots=True)
class ListeningSocket:
    """One listening socket of this network namespace.

    ``name`` is spelled as raindrops spells listeners (``127.0.0.1:8000``,
    ``[::1]:8000``, ``/run/app.sock``, ``@abstract``); ``queued`` and
    ``backlog`` are the kernel's accept queue and its limit, read with the
    socket.

    Example::

        >>> ListeningSocket(81234, "127.0.0.1:8000", unix=False, queued=0, backlog=16).name
        '127.0.0.1:8000'
    """

    inode: int
    name: str
    unix: bool
    queued: int | None = None
    backlog: int | None = None


def listening_sockets() -> dict[int, ListeningSocket]:
    """Every listening TCP (IPv4, IPv6) and Unix stream socket here, by inode.

    linux-inet-diag's LISTEN-only query (``linux_inet_diag.listening_sockets``:
    the kernel then skips its table of connections, so it is cheap whatever
    the number of connections; Unix sockets from one ``unix_diag`` dump).
    Raises :class:`OSError` when it cannot be read.

    Example::

        listening = listening_sockets()
        {s.name for s in listening.values()}  # {'127.0.0.1:8000', '/run/app.sock'}
    """
    return {
        s.inode: ListeningSocket(s.inode, s.name, unix=s.unix, queued=s.queued, backlog=s.backlog)
        for s in _kernel_listening()
    }


def socket_inodes(pid: int) -> frozenset[int]:
    """The inodes of the sockets process ``pid`` holds (``/proc/PID/fd``); empty if unreadable.

    Example::

        socket_inodes(os.getpid())  # frozenset({81234, ...})
    """
    directory = f"/proc/{pid}/fd"
    try:
        entries = os.listdir(directory)
    except OSError:
        return frozenset()
    inodes: set[int] = set()
    for entry in entries:
        try:
            target = os.readlink(f"{directory}/{entry}")
        except OSError:
            continue
        if target.startswith("socket:[") and target.endswith("]"):
            inodes.add(int(target[8:-1]))
    return frozenset(inodes)


def segment_groups(directory: str) -> dict[int, dict[str, str]]:
    """This user's server segments in ``directory``, by inode: ``{inode: {kind: path}}``.

    Only regular files owned by the effective uid named ``<kind>-<inode>``
    with a kind in :data:`KINDS` (temporary files of creators are left out;
    each segment is checked again when opened).

    Example::

        segment_groups("/dev/shm/raindrops-1000")
        # {81234: {'raindrops': '/dev/shm/raindrops-1000/raindrops-81234', ...}}
    """
    euid = os.geteuid()
    groups: dict[int, dict[str, str]] = {}
    for entry in sorted(os.listdir(directory)):
        match = _FILE.match(entry)
        if match is None or match.group(1) not in KINDS:
            continue
        path = os.path.join(directory, entry)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_uid != euid:
            continue
        groups.setdefault(int(match.group(2)), {})[match.group(1)] = path
    return groups


def order_names(names: Iterable[str]) -> tuple[str, ...]:
    """Listener names TCP first, then Unix, each sorted, once each.

    Example::

        >>> order_names(["/run/a.sock", "127.0.0.1:8000", "127.0.0.1:8000"])
        ('127.0.0.1:8000', '/run/a.sock')
    """
    unique = set(names)
    tcp = sorted(n for n in unique if not _is_unix(n))
    return (*tcp, *sorted(n for n in unique if _is_unix(n)))


def _is_unix(name: str) -> bool:
    return name.startswith(("/", "@"))


def label_of(names: Iterable[str]) -> str:
    """The ``server`` label of a server with these listeners: their names, comma-joined.

    Example::

        >>> label_of(["/run/a.sock", "127.0.0.1:8000"])
        '127.0.0.1:8000,/run/a.sock'
    """
    return ",".join(order_names(names))


def names_held(pids: Iterable[int], listening: Mapping[int, ListeningSocket]) -> tuple[str, ...]:
    """The listener names of the first of ``pids`` whose descriptors hold listening sockets.

    Example::

        names_held([4242], listening_sockets())  # ('127.0.0.1:8000',)
    """
    for pid in pids:
        held = [listening[i].name for i in socket_inodes(pid) if i in listening]
        if held:
            return order_names(held)
    return ()


def directory_error(path: str, exc: OSError) -> str:
    """Why ``path`` could not be listed, for the ``unavailable`` notes."""
    code = exc.errno if exc.errno is not None else errno.EIO
    return f"cannot list {path!r}: {os.strerror(code)}"


def parent_pid(pid: int) -> int | None:
    """The parent of ``pid`` (``/proc/PID/stat`` field 4), ``None`` if it is gone.

    Example::

        parent_pid(os.getpid()) == os.getppid()  # True
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rfind(b")") + 2 :].split()
    return int(rest[1]) if len(rest) > 1 else None


def children(pid: int) -> tuple[int, ...] | None:
    """The children of ``pid`` (``/proc/PID/task/PID/children``), ``None`` if unreadable."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as f:
            return tuple(int(p) for p in f.read().split())
    except OSError:
        return None


def worker_processes(
    known: Iterable[int], inodes: frozenset[int], cache: dict[int, bool]
) -> tuple[int, ...] | None:
    """Every worker of a server: the master's children that hold one of its listening sockets.

    ``known`` are PIDs of workers seen in a scoreboard (their parent is the
    master: gunicorn's arbiter, uvicorn's or hypercorn's supervisor);
    ``inodes`` the server's listening sockets; ``cache`` remembers which
    PIDs were checked (a worker that has not served a request yet has no
    scoreboard row, but it is counted). ``None`` when no master is known.
    """
    for pid in known:
        master = parent_pid(pid)
        if master is None or master <= 1:
            continue
        kids = children(master)
        if kids is None:
            return None
        out = []
        for kid in kids:
            held = cache.get(kid)
            if held is None:
                held = cache[kid] = bool(socket_inodes(kid) & inodes)
            if held:
                out.append(kid)
        for stale in set(cache) - set(kids):
            del cache[stale]
        return tuple(sorted(out))
    return None
