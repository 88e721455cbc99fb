"""Netlink sockets (sync and asyncio) and the module-level entry points."""

from __future__ import annotations

import abc
import asyncio
import errno
import functools
import logging
import os
import socket
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar

from . import _kernel as k
from . import _platform
from ._address import AF_UNIX, Address, parse_address
from ._errors import AddressError, NetlinkError, UnavailableError
from ._lookup import HostPort, lookup_steps
from ._records import SocketRecord, record_args, record_steps
from ._stats import (
    ListeningSocket,
    ListenStats,
    inode_families,
    inodes_of,
    names_arg,
    parse_proc_net_unix,
    tally_proc_unix,
    tcp_listening_steps,
    tcp_steps,
    unix_keys,
    unix_listening,
    unix_listening_steps,
    unix_steps,
)
from ._steps import Dump, Parser, Steps
from ._tcpinfo import TcpInfo, TcpState

__all__ = [
    "AVAILABLE",
    "AsyncDiagSocket",
    "DiagSocket",
    "available",
    "inet_diag_records",
    "listener_inodes",
    "tcp_info_for",
    "tcp_listener_stats",
    "unix_listener_stats",
]

log = logging.getLogger(__name__)

AVAILABLE: bool = _platform.AVAILABLE
_RECV_SIZE = 1 << 16
_WHAT = "netlink sock_diag"
PROC_NET_UNIX = "/proc/net/unix"
# The errors of a kernel built without unix_diag (CONFIG_UNIX_DIAG=n).
_NO_UNIX_DIAG = (errno.ENOENT, errno.EOPNOTSUPP, errno.EINVAL)

T = TypeVar("T")


def available() -> bool:
    """True when netlink sock_diag can be used here (Linux)."""
    return _platform.AVAILABLE


#: errno values that mean "this process may not", not "this system cannot".
_REFUSED = frozenset({errno.EPERM, errno.EACCES})


def _unavailable(e: OSError, call: str) -> UnavailableError:
    """The UnavailableError for a failed ``call``, saying whether it was refused or missing."""
    if e.errno in _REFUSED:
        return UnavailableError(
            e.errno,
            f"{_WHAT} was refused: {call} failed with {e.strerror} (the kernel has netlink, "
            "but this process may not use it: a seccomp filter, a container or "
            "sandbox policy)",
        )
    return UnavailableError(e.errno, f"{_WHAT} is unavailable here: {call} failed: {e.strerror}")


def _open() -> socket.socket:
    _platform.require_linux(_WHAT)
    try:
        s = socket.socket(
            socket.AF_NETLINK,  # type: ignore[attr-defined,unused-ignore]
            socket.SOCK_RAW | socket.SOCK_CLOEXEC,
            k.NETLINK_SOCK_DIAG,
        )
    except OSError as e:
        raise _unavailable(e, "socket(AF_NETLINK, SOCK_RAW, NETLINK_SOCK_DIAG)") from e
    try:
        s.bind((0, 0))
    except OSError as e:
        s.close()
        raise _unavailable(e, "bind() of the netlink socket") from e
    return s


# Sockets to reset in a forked child, the family's one fork-safety pattern:
# a module-level WeakSet of live instances and one os.register_at_fork hook
# calling each one's _forked(). The hook runs in the child before any other
# thread exists there, so a lock another thread of the parent held at
# fork() time cannot deadlock the child; no PID is checked per query.
_live: weakref.WeakSet[_Core] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for core in list(_live):
        core._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _Core(abc.ABC):
    """Request building and result assembly shared by the sync and async sockets."""

    def __init__(self) -> None:
        _platform.require_linux(_WHAT)
        self._seq = 0
        self._sock: socket.socket | None = None
        _live.add(self)

    def __repr__(self) -> str:
        state = "closed" if self._sock is None else f"fd={self._sock.fileno()}"
        return f"<{type(self).__name__} {state}>"

    @abc.abstractmethod
    def _forked(self) -> None:
        """Reset in a forked child: a new lock, the inherited descriptor closed."""

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    @staticmethod
    def _tcp_args(addrs: object) -> tuple[list[str] | None, list[Address] | None]:
        asked = names_arg(addrs, "addrs")
        if asked is None:
            return None, None
        parsed = [parse_address(a) for a in asked]
        for name, a in zip(asked, parsed, strict=True):
            if a.is_unix:
                raise AddressError(
                    f"invalid TCP listener name {name!r}: a Unix path; use unix_listener_stats"
                )
        return asked, parsed

    @staticmethod
    def _unix_args(paths: object) -> list[str] | None:
        wanted = names_arg(paths, "paths")
        if wanted is not None:
            unix_keys(wanted)  # validate before any I/O
        return wanted

    @staticmethod
    def _unix_fallback(err: NetlinkError, answer: Callable[[list[k.UnixSocket]], T]) -> T:
        """``answer`` of /proc/net/unix's sockets where the kernel lacks unix_diag.

        Re-raises ``err`` when it says anything else.
        """
        if err.errno not in _NO_UNIX_DIAG:
            raise err
        warnings.warn(
            f"netlink unix_diag is unavailable ({err.strerror}); falling back to "
            f"scanning {PROC_NET_UNIX}, which is slower and gives no backlog",
            RuntimeWarning,
            stacklevel=4,
        )
        with open(PROC_NET_UNIX, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
        return answer(parse_proc_net_unix(text))


class DiagSocket(_Core):
    """One reusable netlink sock_diag socket for repeated queries.

    Thread-safe (a lock serialises queries), usable from inside a running
    asyncio loop (it is a plain blocking socket that never touches the loop;
    a query blocks the caller for as long as the kernel takes to answer), and
    reopened automatically in a forked child. Off Linux, constructing one
    raises UnavailableError.

    >>> with DiagSocket() as diag:
    ...     stats = diag.tcp_listener_stats(["127.0.0.1:1"])
    >>> stats["127.0.0.1:1"]
    ListenStats(active=0, queued=0, backlog=None)
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def __enter__(self) -> DiagSocket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the netlink socket; the next query opens a new one."""
        with self._lock:
            self._drop()

    def __del__(self) -> None:
        # Thread-local default sockets die with their thread: close quietly.
        sock = getattr(self, "_sock", None)
        if sock is not None:
            sock.close()

    def _forked(self) -> None:
        self._lock = threading.Lock()
        self._drop()

    def _drop(self) -> None:
        # In a forked child this closes the child's copy of the descriptor
        # only; the parent's socket and any dump it is running are untouched.
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _socket(self) -> socket.socket:
        if self._sock is None:
            self._sock = _open()
        return self._sock

    def _run(self, request: bytes, feed: Callable[[bytes], bool]) -> None:
        """Send ``request`` and feed each answer datagram until feed says done."""
        sock = self._socket()
        try:
            sock.send(request)
            while not feed(sock.recv(_RECV_SIZE)):
                pass
        except BaseException:
            self._drop()  # leftovers of this dump must not reach the next one
            raise

    def _dump(self, make: Callable[[int], bytes], parse: Parser) -> list[Any]:
        """Run one dump to NLMSG_DONE, again if NLM_F_DUMP_INTR (see Dump)."""
        dump = Dump(make, parse)
        while (request := dump.request(self._next_seq)) is not None:
            self._run(request, dump.feed)
        return dump.items

    def _drive(self, steps: Steps[T]) -> T:
        """Run a query's dumps (see _steps) under the lock."""
        with self._lock:
            try:
                make, parse = next(steps)
                while True:
                    make, parse = steps.send(self._dump(make, parse))
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]

    def tcp_listener_stats(
        self, addrs: Iterable[str] | str | None = None
    ) -> dict[str, ListenStats]:
        """Active/queued/backlog per TCP listener; see :func:`tcp_listener_stats`."""
        asked, parsed = self._tcp_args(addrs)
        return self._drive(tcp_steps(asked, parsed))

    def unix_listener_stats(
        self, paths: Iterable[str] | str | None = None
    ) -> dict[str, ListenStats]:
        """Active/queued/backlog per Unix listener; see :func:`unix_listener_stats`."""
        wanted = self._unix_args(paths)
        try:
            return self._drive(unix_steps(wanted))
        except NetlinkError as e:
            return self._unix_fallback(e, functools.partial(tally_proc_unix, wanted))

    def listening_sockets(self, family: int | None = None) -> list[ListeningSocket]:
        """Every listening socket with its inode and queue; see :func:`listening_sockets`."""
        families = inode_families(family)
        found = self._drive(tcp_listening_steps(families))
        if AF_UNIX in families:
            try:
                found += self._drive(unix_listening_steps())
            except NetlinkError as e:
                found += self._unix_fallback(e, unix_listening)
        return found

    def listener_inodes(self, family: int | None = None) -> dict[int, str]:
        """Inode -> canonical name of every listener; see :func:`listener_inodes`."""
        return inodes_of(self.listening_sockets(family))

    def tcp_info_for(self, local: HostPort, remote: HostPort) -> TcpInfo | None:
        """TcpInfo of the connection ``local`` <-> ``remote``, None if absent."""
        return self._drive(lookup_steps(local, remote))

    def records(
        self,
        local: Iterable[str] | str | None = None,
        *,
        states: Iterable[TcpState | int] | None = None,
        family: int | None = None,
    ) -> list[SocketRecord]:
        """Full TCP socket records, every attribute; see :func:`inet_diag_records`."""
        addrs, mask, families = record_args(local, states, family)
        return self._drive(record_steps(addrs, mask, families))


class AsyncDiagSocket(_Core):
    """The asyncio twin of :class:`DiagSocket`: ``async`` query methods.

    The netlink socket is non-blocking and read through the running loop
    (``loop.sock_recv``, i.e. ``add_reader``), so no thread is involved and
    the loop is never blocked waiting for the kernel; parsing runs on the loop
    like any other Python code. Concurrent coroutines are serialised by an
    ``asyncio.Lock``. Like :class:`DiagSocket` it reopens its socket (and
    renews its lock) in a forked child. Off Linux, constructing one raises
    UnavailableError.

    >>> async def main():
    ...     async with AsyncDiagSocket() as diag:
    ...         return await diag.tcp_listener_stats("127.0.0.1:1")
    >>> asyncio.run(main())["127.0.0.1:1"].total
    0
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> AsyncDiagSocket:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the netlink socket; the next query opens a new one."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _forked(self) -> None:
        # The parent's asyncio.Lock may be bound to the parent's loop.
        self._lock = asyncio.Lock()
        self.close()

    def _socket(self) -> socket.socket:
        if self._sock is None:
            sock = _open()
            sock.setblocking(False)
            self._sock = sock
        return self._sock

    async def _run(self, request: bytes, feed: Callable[[bytes], bool]) -> None:
        loop = asyncio.get_running_loop()
        sock = self._socket()
        try:
            await loop.sock_sendall(sock, request)
            while not feed(await loop.sock_recv(sock, _RECV_SIZE)):
                pass
        except BaseException:
            self._sock = None
            sock.close()
            raise

    async def _dump(self, make: Callable[[int], bytes], parse: Parser) -> list[Any]:
        dump = Dump(make, parse)
        while (request := dump.request(self._next_seq)) is not None:
            await self._run(request, dump.feed)
        return dump.items

    def _checked_lock(self) -> asyncio.Lock:
        """The lock (renewed, with the socket, in a forked child by the module's fork hook)."""
        return self._lock

    async def _drive(self, steps: Steps[T]) -> T:
        async with self._checked_lock():
            try:
                make, parse = next(steps)
                while True:
                    make, parse = steps.send(await self._dump(make, parse))
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]

    async def tcp_listener_stats(
        self, addrs: Iterable[str] | str | None = None
    ) -> dict[str, ListenStats]:
        """Async :func:`tcp_listener_stats`."""
        asked, parsed = self._tcp_args(addrs)
        return await self._drive(tcp_steps(asked, parsed))

    async def unix_listener_stats(
        self, paths: Iterable[str] | str | None = None
    ) -> dict[str, ListenStats]:
        """Async :func:`unix_listener_stats`."""
        wanted = self._unix_args(paths)
        try:
            return await self._drive(unix_steps(wanted))
        except NetlinkError as e:
            return self._unix_fallback(e, functools.partial(tally_proc_unix, wanted))

    async def listening_sockets(self, family: int | None = None) -> list[ListeningSocket]:
        """Async :func:`listening_sockets`."""
        families = inode_families(family)
        found = await self._drive(tcp_listening_steps(families))
        if AF_UNIX in families:
            try:
                found += await self._drive(unix_listening_steps())
            except NetlinkError as e:
                found += self._unix_fallback(e, unix_listening)
        return found

    async def listener_inodes(self, family: int | None = None) -> dict[int, str]:
        """Async :func:`listener_inodes`."""
        return inodes_of(await self.listening_sockets(family))

    async def tcp_info_for(self, local: HostPort, remote: HostPort) -> TcpInfo | None:
        """Async :func:`tcp_info_for`: one small round trip read through the loop."""
        return await self._drive(lookup_steps(local, remote))

    async def records(
        self,
        local: Iterable[str] | str | None = None,
        *,
        states: Iterable[TcpState | int] | None = None,
        family: int | None = None,
    ) -> list[SocketRecord]:
        """Async :func:`inet_diag_records` (decoding runs on the loop)."""
        addrs, mask, families = record_args(local, states, family)
        return await self._drive(record_steps(addrs, mask, families))


_local = threading.local()


def _default(sock: DiagSocket | None) -> DiagSocket:
    if sock is not None:
        return sock
    diag: DiagSocket | None = getattr(_local, "diag", None)
    if diag is None:
        diag = _local.diag = DiagSocket()
    return diag


def tcp_listener_stats(
    addrs: Iterable[str] | str | None = None, *, sock: DiagSocket | None = None
) -> dict[str, ListenStats]:
    """Active, queued and backlog for TCP listeners, from the kernel.

    ``addrs``: names such as ``"127.0.0.1:8080"``, ``"[::1]:8080"``,
    ``"0.0.0.0:8080"``, ``"[::]:8080"`` (one string or an iterable); every
    name asked for is answered, spelled as asked, ``0/0`` (backlog None) when
    nothing listens there. None: every TCP listener (IPv4 and IPv6), by
    canonical name. A wildcard name counts accepted connections on any local
    address of its port and family (IPv4-mapped ones included for ``[::]``);
    SO_REUSEPORT listeners on one name add up. Names are filtered in the
    kernel (inet_diag bytecode), so cost does not grow with unrelated sockets.

    >>> import socket
    >>> with socket.create_server(("127.0.0.1", 0), backlog=16) as srv:
    ...     name = "127.0.0.1:%d" % srv.getsockname()[1]
    ...     tcp_listener_stats([name])[name]
    ListenStats(active=0, queued=0, backlog=16)
    """
    return _default(sock).tcp_listener_stats(addrs)


def unix_listener_stats(
    paths: Iterable[str] | str | None = None, *, sock: DiagSocket | None = None
) -> dict[str, ListenStats]:
    """Active, queued and backlog for Unix stream listeners, over unix_diag.

    ``paths``: ``"/path/to.sock"`` or ``"@abstract"`` names; a symlinked path
    is resolved and answered under both names. None: every named Unix
    listener. Falls back to scanning /proc/net/unix (with a RuntimeWarning,
    backlog None) only where the kernel lacks unix_diag.

    >>> import socket, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "s")
    >>> with socket.socket(socket.AF_UNIX) as srv:
    ...     srv.bind(path)
    ...     srv.listen(8)
    ...     unix_listener_stats(path)[path]
    ListenStats(active=0, queued=0, backlog=8)
    """
    return _default(sock).unix_listener_stats(paths)


def listening_sockets(
    family: int | None = None, *, sock: DiagSocket | None = None
) -> list[ListeningSocket]:
    """Every listening socket here: name, inode, accept queue and backlog, cheaply.

    The LISTEN-only query for readers of every server of the machine (of the
    caller's network namespace) at each scrape: TCP listeners (IPv4, IPv6)
    from one LISTEN-only dump per family, which the kernel answers without
    walking the established connections, so it costs the same with 10
    connections or 10,000; Unix stream listeners, with their queues, from
    one unix_diag dump (or, where the kernel lacks unix_diag, from
    /proc/net/unix, with a RuntimeWarning and 0 for the queues it does not
    give). No ``active`` count: that needs the connections walked
    (:func:`tcp_listener_stats`). SO_REUSEPORT listeners are one entry
    each. ``family``: ``socket.AF_INET``, ``socket.AF_INET6`` or
    ``socket.AF_UNIX`` for that family only; None (default) for all three.
    A bad ``family`` raises ArgumentError.

    >>> import os, socket
    >>> with socket.create_server(("127.0.0.1", 0), backlog=7) as srv:
    ...     inode = os.fstat(srv.fileno()).st_ino
    ...     [(s.queued, s.backlog) for s in listening_sockets(socket.AF_INET) if s.inode == inode]
    [(0, 7)]
    """
    return _default(sock).listening_sockets(family)


def listener_inodes(family: int | None = None, *, sock: DiagSocket | None = None) -> dict[int, str]:
    """Every listening socket's inode, mapped to its canonical listener name.

    Answers "which listener is the socket behind this descriptor?" for every
    server of the machine (of the caller's network namespace) at once: the
    inode is ``os.fstat(fd).st_ino`` of the socket, or the number in a
    ``/proc/PID/fd`` link ``socket:[INODE]``. Names are spelled as
    :func:`tcp_listener_stats` and :func:`unix_listener_stats` spell them
    with no names asked (``"127.0.0.1:8080"``, ``"[::]:8080"``, the path a
    Unix socket was bound with, ``"@abstract"``); SO_REUSEPORT listeners are
    one name under several inodes. ``family``: ``socket.AF_INET``,
    ``socket.AF_INET6`` or ``socket.AF_UNIX`` for that family only; None
    (default) for all three. TCP listeners come from one LISTEN-only dump
    per family, which the kernel answers without walking the established
    connections; Unix *stream* listeners from one unix_diag dump (or, where
    the kernel lacks unix_diag, from /proc/net/unix, with a RuntimeWarning).
    A bad ``family`` raises ArgumentError.

    >>> import os, socket
    >>> with socket.create_server(("127.0.0.1", 0)) as srv:
    ...     inode = os.fstat(srv.fileno()).st_ino
    ...     listener_inodes(socket.AF_INET)[inode] == "127.0.0.1:%d" % srv.getsockname()[1]
    True
    """
    return _default(sock).listener_inodes(family)


def tcp_info_for(
    local: HostPort, remote: HostPort, *, sock: DiagSocket | None = None
) -> TcpInfo | None:
    """TcpInfo of a connection found by its address pair (INET_DIAG_INFO).

    ``local``/``remote`` are ``(host, port)`` tuples as in an ASGI scope's
    ``"server"`` and ``"client"``, or ``"host:port"`` strings. Returns None
    when no such connection exists.

    >>> import socket
    >>> with socket.create_server(("127.0.0.1", 0)) as srv:
    ...     with socket.create_connection(srv.getsockname()) as cli:
    ...         conn, peer = srv.accept()
    ...         with conn:
    ...             tcp_info_for(conn.getsockname(), peer).state.name
    'ESTABLISHED'
    """
    return _default(sock).tcp_info_for(local, remote)


def inet_diag_records(
    local: Iterable[str] | str | None = None,
    *,
    states: Iterable[TcpState | int] | None = None,
    family: int | None = None,
    sock: DiagSocket | None = None,
) -> list[SocketRecord]:
    """Every TCP socket (or those on ``local`` names) as a full :class:`SocketRecord`.

    Opt-in and slow next to the counting queries: each socket's attributes
    are decoded by pyroute2 (imported on the first call), tcp_info by
    :class:`TcpInfo`. ``local``: names as for :func:`tcp_listener_stats`
    (filtered in the kernel; a wildcard name matches every local address of
    its port); None for every socket. ``states``: TcpState values wanted
    (default all). ``family``: ``socket.AF_INET`` or ``socket.AF_INET6``
    (default both).

    >>> import socket
    >>> with socket.create_server(("127.0.0.1", 0)) as srv:
    ...     with socket.create_connection(srv.getsockname()) as cli:
    ...         conn, peer = srv.accept()
    ...         with conn:
    ...             name = "127.0.0.1:%d" % srv.getsockname()[1]
    ...             recs = inet_diag_records(name, states=[TcpState.ESTABLISHED])
    >>> [(r.remote == "%s:%d" % peer, r.tcp_info.state.name) for r in recs]
    [(True, 'ESTABLISHED')]
    """
    return _default(sock).records(local, states=states, family=family)
