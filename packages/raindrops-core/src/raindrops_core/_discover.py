"""Find the listening sockets this process inherited from its server.

Every preforking server (gunicorn, uvicorn ``--workers``, hypercorn) binds its
listeners in the master and hands them to each worker, by ``fork()`` or by
passing the descriptor to a spawned child.  A worker therefore holds them
among its own file descriptors: walking those (``/proc/self/fd`` on Linux,
``/dev/fd`` elsewhere) and keeping the stream sockets for which
``getsockopt(SO_ACCEPTCONN)`` is 1 finds them, whatever the server.

An app may also open a listening socket of its own inside a worker (after
fork): each worker's is a different socket, so reporting it, or naming the
shared segment after it, would make workers disagree.  The server's master
(or the supervisor of spawned workers) is the worker's parent and holds the
server's listeners too, so when the parent holds some of the sockets found,
only those are kept.
"""

from __future__ import annotations

import os
import socket
import stat
from dataclasses import dataclass

__all__ = ["InheritedListener", "discover_listeners", "socket_name"]

# Probe at most this many descriptors where no fd directory can be listed.
_PROBE_LIMIT = 1024


@dataclass(frozen=True, slots=True)
class InheritedListener:
    """A listening socket found among the process's own descriptors.

    ``name`` is spelled as raindrops spells listeners (``127.0.0.1:8000``,
    ``[::1]:8000``, ``/run/app.sock``, ``@abstract``); ``inode`` is the
    socket's inode, shared by every process holding the same socket.
    """

    fd: int
    name: str
    inode: int


def socket_name(family: int, address: object) -> str | None:
    """The listener name of a socket address, or ``None`` for an unnamed one.

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


def _probe(fd: int) -> InheritedListener | None:
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
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return None
        name = socket_name(sock.family, sock.getsockname())
    except OSError:
        return None
    finally:
        sock.detach()
    if name is None:
        return None
    return InheritedListener(fd=fd, name=name, inode=st.st_ino)


def _parent_socket_inodes() -> frozenset[int]:
    """Inodes of the sockets the parent process holds; empty if they cannot be read."""
    ppid = os.getppid()
    if ppid <= 0:
        return frozenset()
    directory = f"/proc/{ppid}/fd"
    try:
        entries = os.listdir(directory)
    except OSError:  # not Linux, or another user's process
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


def discover_listeners(*, prefer_parent: bool = True) -> tuple[InheritedListener, ...]:
    """The listening stream sockets this process inherited from its server.

    One entry per socket (descriptors duplicated by the server count once, the
    lowest kept), in descriptor order.  Works under any server that passes
    its listeners to its workers: gunicorn, uvicorn, hypercorn.

    With ``prefer_parent`` (the default), when the parent process (the
    server's master, or the supervisor of spawned workers) holds some of the
    listening sockets found, only those are returned: a socket the app opened
    in this worker after fork is left out, so every worker of one server
    reports (and names its segment after) the same sockets.  When the parent
    holds none of them (a single-process server run from a shell) or its
    descriptors cannot be read (``/proc/<ppid>/fd`` of another user, e.g. a
    master running as root; or not Linux), every listener found is returned.
    ``prefer_parent=False`` returns every listening socket among this
    process's descriptors.

    Example::

        >>> [listener.name for listener in discover_listeners()]  # in a gunicorn worker
        ['0.0.0.0:8000']
    """
    found: list[InheritedListener] = []
    seen: set[tuple[int, str]] = set()
    for fd in _candidate_fds():
        listener = _probe(fd)
        if listener is None:
            continue
        key = (listener.inode, listener.name)
        if key in seen:
            continue
        seen.add(key)
        found.append(listener)
    if prefer_parent and found:
        parents = _parent_socket_inodes()
        shared = [listener for listener in found if listener.inode in parents]
        if shared:
            return tuple(shared)
    return tuple(found)
