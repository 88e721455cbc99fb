"""Listener statistics and listener inodes: queries as steps, tallies (pure), /proc fallback."""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ._address import AF_INET, AF_INET6, AF_UNIX, Address, name_from_packed, parse_address
from ._count import (
    CountChunk,
    Target,
    TargetChunk,
    count_inet_dump,
    count_targets,
    count_unix_names,
    count_unix_stream_names,
    unix_name_attr,
)
from ._errors import AddressError, ArgumentError
from ._kernel import (
    LISTEN_AND_ESTABLISHED,
    SOCK_STREAM,
    TCP_ESTABLISHED,
    TCP_LISTEN,
    UDIAG_SHOW_NAME,
    UDIAG_SHOW_RQLEN,
    UDIAG_SHOW_VFS,
    HostCond,
    InetRecord,
    UnixSocket,
    inet_dump_request,
    parse_inet_dump,
    parse_unix_dump,
    source_filter,
    unix_dump_request,
)
from ._steps import Parser, Steps

__all__ = ["ListenStats"]


@dataclass(frozen=True, slots=True)
class ListenStats:
    """Connections on one listener name.

    ``active``: accepted and not yet closed; ``queued``: waiting in the listen
    queue, not yet accepted; ``backlog``: the listen queue limit (summed over
    SO_REUSEPORT listeners), None when the kernel does not say (nothing
    listening, or the /proc/net/unix fallback).

    >>> ListenStats(active=3, queued=1, backlog=128).total
    4
    """

    active: int
    queued: int
    backlog: int | None = None

    @property
    def total(self) -> int:
        """``active + queued``."""
        return self.active + self.queued


EMPTY = ListenStats(0, 0, None)


def names_arg(names: object, what: str) -> list[str] | None:
    """Normalise the ``addrs``/``paths`` argument: None, one str, or strings."""
    if names is None:
        return None
    if isinstance(names, str):
        return [names]
    if isinstance(names, (bytes, bytearray)) or not isinstance(names, Iterable):
        raise AddressError(f"{what} must be None, a name or an iterable of names, not {names!r}")
    return list(names)


def host_cond(family: int, packed: bytes, port: int) -> HostCond:
    """The bytecode condition for one name: its address (any for a wildcard), port."""
    width = 4 if family == AF_INET else 16
    prefix = 0 if packed == bytes(16) else width * 8
    return HostCond(family, prefix, port, packed[:width])


def tcp_plan(addrs: list[Address]) -> list[tuple[int, bytes, bool]]:
    """(family, bytecode, single) per dump: filter on each name's address/port.

    ``bytecode`` is empty (no filter) when the names do not fit in one
    inet_diag program (see :data:`MAX_BYTECODE`). ``single`` is true when
    the family has one distinct condition, so every socket the kernel
    returns belongs to that one name and can be counted without classifying
    it.
    """
    plan = []
    for family in (AF_INET, AF_INET6):
        conds = list(
            dict.fromkeys(
                host_cond(a.family, a.packed, a.port) for a in addrs if a.family == family
            )
        )
        if conds:
            bc = source_filter(conds)
            # Too many conditions for one 16-bit program: dump the family
            # unfiltered; tally_named keeps only the names asked (exact).
            plan.append((family, b"" if bc is None else bc, len(conds) == 1))
    return plan


def _counts(data: bytes) -> tuple[list[Any], bool, bool]:
    c = count_inet_dump(data)
    return [c], c.done, c.interrupted


def _targeted(targets: list[Target], data: bytes) -> tuple[list[Any], bool, bool]:
    c = count_targets(targets, data)
    return [c], c.done, c.interrupted


Counted = dict[tuple[int, bytes | None, int], int]


def _sum_targets(
    family: int, targets: list[Target], chunks: list[TargetChunk]
) -> tuple[list[InetRecord], Counted]:
    """The listeners of a dump's datagrams and each target's total count."""
    listeners = [r for c in chunks for r in c.listeners]
    counted = {
        (family, src, sport): sum(c.counts[i] for c in chunks)
        for i, (src, sport) in enumerate(targets)
    }
    return listeners, counted


def tcp_steps(
    asked: list[str] | None, addrs: list[Address] | None
) -> Steps[dict[str, ListenStats]]:
    """The dumps a TCP query needs, as a generator: yields (request, parser),
    is sent each dump's parsed items, returns the answer. No I/O inside."""
    if asked is None or addrs is None:
        return (yield from _all_steps())
    listeners: list[InetRecord] = []
    counted: Counted = {}
    active: dict[int, int] = {}
    for family, bc, single in tcp_plan(addrs):
        make = functools.partial(inet_dump_request, family, LISTEN_AND_ESTABLISHED, bytecode=bc)
        if single:
            chunks: list[CountChunk] = yield (make, _counts)
            listeners += [r for c in chunks for r in c.listeners]
            active[family] = sum(c.active for c in chunks)
        else:
            targets = list(
                dict.fromkeys(
                    (None if a.is_wildcard else a.packed, socket.htons(a.port))
                    for a in addrs
                    if a.family == family
                )
            )
            found, counts = _sum_targets(
                family, targets, (yield (make, functools.partial(_targeted, targets)))
            )
            listeners += found
            counted.update(counts)
    result = tally_named(asked, addrs, listeners, counted)
    for name, a in zip(asked, addrs, strict=True):
        if a.family in active:
            s = result[name]
            result[name] = ListenStats(s.active + active[a.family], s.queued, s.backlog)
    return result


def _listen_steps(families: Iterable[int]) -> Steps[list[InetRecord]]:
    """Every TCP LISTEN socket of ``families``, one dump each.

    Asked for LISTEN alone, the kernel walks only its table of listening
    sockets and skips the established ones (inet_diag_dump_icsk: ``if
    (!(idiag_states & ~TCPF_LISTEN)) goto out``): the cost does not grow
    with the connections.
    """
    listeners: list[InetRecord] = []
    for family in families:
        make = functools.partial(inet_dump_request, family, 1 << TCP_LISTEN)
        listeners += yield (make, parse_inet_dump)
    return listeners


def _all_steps() -> Steps[dict[str, ListenStats]]:
    listeners = yield from _listen_steps((AF_INET, AF_INET6))
    per_listener: dict[tuple[int, bytes, int], int] = {}
    extra: dict[tuple[int, bytes, int], int] = {}
    for family in (AF_INET, AF_INET6):
        keys = list(dict.fromkeys((r.src, r.sport_raw) for r in listeners if r.family == family))
        if not keys:
            continue
        bc = source_filter(host_cond(family, src, socket.ntohs(sport)) for src, sport in keys)
        # None: more listeners than one program holds; dump every
        # established socket and let tally_all keep the listeners' (exact).
        make = functools.partial(
            inet_dump_request, family, 1 << TCP_ESTABLISHED, bytecode=bc or b""
        )
        if len(keys) == 1:
            chunks: list[CountChunk] = yield (make, _counts)
            extra[(family, keys[0][0], keys[0][1])] = sum(c.active for c in chunks)
        else:
            # A socket counts for its own address's listener if there is one,
            # else for the port's wildcard listener: take the exact counts off
            # the wildcard's (which matched every address of the port).
            targets: list[Target] = [
                (None if src == bytes(16) else src, sport) for src, sport in keys
            ]
            found, counts = _sum_targets(
                family, targets, (yield (make, functools.partial(_targeted, targets)))
            )
            listeners += found  # none: only ESTABLISHED was asked for
            for (f, addr, sport), n in counts.items():
                if addr is None:
                    n -= sum(m for (_, a, p), m in counts.items() if a is not None and p == sport)
                per_listener[(f, bytes(16) if addr is None else addr, sport)] = n
    result = tally_all(listeners, per_listener)
    for (family, src, sport), n in extra.items():
        name = name_from_packed(family, src, socket.ntohs(sport))
        s = result[name]
        result[name] = ListenStats(s.active + n, s.queued, s.backlog)
    return result


def tally_named(
    asked: list[str],
    addrs: list[Address],
    records: Iterable[InetRecord],
    active: Mapping[tuple[int, bytes | None, int], int] | None = None,
) -> dict[str, ListenStats]:
    """Count ``records`` (parse_inet_dump's) for each name asked.

    ``active`` adds accepted ESTABLISHED sockets already counted per target
    ``(family, src16, sport_raw)``, ``src16`` None for every address of the
    port (:func:`count_targets`).
    """
    port_raw = {a.port: socket.htons(a.port) for a in addrs}
    exact: dict[tuple[int, bytes, int], list[int]] = {}
    wild: dict[tuple[int, int], list[int]] = {}
    acc: list[list[int]] = []
    for a in addrs:
        cell = [0, 0, 0, 0]  # active, queued, backlog, listeners
        acc.append(cell)
        key = (a.family, a.packed, port_raw[a.port])
        cell = exact.setdefault(key, cell)
        acc[-1] = cell
        if a.is_wildcard:
            wild[(a.family, port_raw[a.port])] = cell
    wildcard_keys = {(f, bytes(16), p) for f, p in wild}
    for family, state, sport, src, rq, wq, inode in records:
        if state == TCP_ESTABLISHED:
            if not inode:
                continue
            key = (family, src, sport)
            if key not in wildcard_keys:
                hit = exact.get(key)
                if hit is not None:
                    hit[0] += 1
            hit = wild.get((family, sport))
            if hit is not None:
                hit[0] += 1
        elif state == TCP_LISTEN:
            hit = exact.get((family, src, sport))
            if hit is not None:
                hit[1] += rq
                hit[2] += wq
                hit[3] += 1
    for (family, addr, sport), n in (active or {}).items():
        hit = wild.get((family, sport)) if addr is None else exact.get((family, addr, sport))
        if hit is not None:
            hit[0] += n
    return {
        name: ListenStats(c[0], c[1], c[2] if c[3] else None)
        for name, c in zip(asked, acc, strict=True)
    }


def tally_all(
    records: Iterable[InetRecord], active: Mapping[tuple[int, bytes, int], int] | None = None
) -> dict[str, ListenStats]:
    """Every TCP listener in ``records`` by canonical name, with its counts.

    ``active``: accepted ESTABLISHED sockets already counted per listener
    ``(family, src16, sport_raw)`` (all zeros for a wildcard listener), each
    socket once: for its own address's listener, else the wildcard's.
    """
    records = list(records)
    cells: dict[tuple[int, bytes, int], list[int]] = {}
    wild: dict[tuple[int, int], list[int]] = {}
    for family, state, sport, src, rq, wq, _inode in records:
        if state == TCP_LISTEN:
            cell = cells.setdefault((family, src, sport), [0, 0, 0])
            cell[1] += rq
            cell[2] += wq
            if src == bytes(16):
                wild[(family, sport)] = cell
    for family, state, sport, src, _rq, _wq, inode in records:
        if state == TCP_ESTABLISHED and inode:
            hit = cells.get((family, src, sport)) or wild.get((family, sport))
            if hit is not None:
                hit[0] += 1
    for (family, src, sport), n in (active or {}).items():
        hit = cells.get((family, src, sport)) or wild.get((family, sport))
        if hit is not None:
            hit[0] += n
    return {
        name_from_packed(f, src, socket.ntohs(p)): ListenStats(c[0], c[1], c[2])
        for (f, src, p), c in cells.items()
    }


def unix_keys(paths: list[str]) -> list[str]:
    """The names a Unix query answers: each name asked, then its resolved path.

    A path whose :func:`os.path.realpath` differs (a symlink, or a symlinked
    directory on the way) is answered under both names. Raises AddressError
    for a name that is not a Unix path or abstract name.
    """
    out: dict[str, None] = {}
    for p in paths:
        a = parse_address(p)
        if not a.is_unix:
            raise AddressError(
                f"invalid Unix socket name {p!r}: expected a path ('/path/to.sock') "
                "or an abstract name ('@name')"
            )
        out[p] = None
        if p.startswith("/"):
            out.setdefault(os.path.realpath(p))
    return list(out)


def kernel_dev(st_dev: int) -> int:
    """``stat()``'s st_dev in the kernel's dev_t form (linux/kdev_t.h MKDEV)."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


def _stat_id(path: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the file at ``path`` (symlinks followed), or None."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


@dataclass(frozen=True, slots=True)
class UnixPlan:
    """Which listeners answer each Unix name, and which names to count.

    ``keys`` maps each answered name to its stream listeners and to the
    bound names whose accepted connections make its ``active``; ``names``
    is every such bound name; ``exact`` is true when one of them is also a
    non-stream listener's name, so the count must check each socket's type.
    """

    keys: dict[str, tuple[list[UnixSocket], frozenset[str]]]
    names: frozenset[str]
    exact: bool


def unix_plan(paths: list[str] | None, listeners: Iterable[UnixSocket]) -> UnixPlan:
    """Match Unix *stream* listeners to the names asked (all of them if None).

    A listener answers a name when it is bound under that spelling, or when
    its bound file is the file the name leads to (UNIX_DIAG_VFS against
    ``stat``), so a socket bound through a symlinked directory answers both
    the name it was bound with and its resolved path, each with its true
    numbers. SOCK_SEQPACKET and SOCK_DGRAM sockets never answer: a name
    only they hold is 0/0. A name no stream listener answers counts the
    accepted connections still carrying it (its listener has closed).
    """
    stream = [(s.name, s) for s in listeners if s.name is not None and s.type == SOCK_STREAM]
    others = frozenset(s.name for s in listeners if s.name is not None and s.type != SOCK_STREAM)
    keys: dict[str, tuple[list[UnixSocket], frozenset[str]]] = {}
    if paths is None:
        for name, s in stream:
            keys.setdefault(name, ([], frozenset([name])))[0].append(s)
    else:
        by_name: dict[str, list[int]] = {}
        by_ino: dict[int, list[int]] = {}
        for i, (name, s) in enumerate(stream):
            by_name.setdefault(name, []).append(i)
            if s.vfs is not None:
                by_ino.setdefault(s.vfs[1], []).append(i)
        for key in unix_keys(paths):
            hits = dict.fromkeys(by_name.get(key, ()))
            ident = _stat_id(key) if key.startswith("/") else None
            if ident is not None:
                for i in by_ino.get(ident[1] & 0xFFFFFFFF, ()):
                    name, s = stream[i]
                    # The superblock's kernel dev_t equals stat()'s st_dev on
                    # most filesystems; where it does not (btrfs subvolumes,
                    # overlayfs), the listener's own bound path settles it.
                    if (s.vfs is not None and s.vfs[0] == kernel_dev(ident[0])) or (
                        name.startswith("/") and _stat_id(name) == ident
                    ):
                        hits[i] = None
            matched = [stream[i] for i in hits]
            names = frozenset(name for name, _ in matched) or frozenset([key])
            keys[key] = ([s for _, s in matched], names)
    every = frozenset(n for _, names in keys.values() for n in names)
    return UnixPlan(keys, every, bool(every & others))


def unix_answer(plan: UnixPlan, counts: dict[str, int]) -> dict[str, ListenStats]:
    """ListenStats per answered name from a plan and accepted counts by name."""
    result: dict[str, ListenStats] = {}
    for key, (matched, names) in plan.keys.items():
        active = sum(counts.get(n, 0) for n in names)
        if matched:
            queued = sum(s.rqueue for s in matched)
            backlog: int | None = sum(s.wqueue for s in matched)
        else:
            queued, backlog = 0, None
        result[key] = ListenStats(active, queued, backlog)
    return result


# /proc/net/unix: "Num RefCount Protocol Flags Type St Inode Path"; St is the
# socket state: 01 SS_UNCONNECTED, 02 SS_CONNECTING (embryonic, in a
# listener's queue), 03 SS_CONNECTED; Flags 00010000 is __SO_ACCEPTCON.
_SS_CONNECTING = "02"
_SS_CONNECTED = "03"
_ACCEPTCON = 0x10000


def parse_proc_net_unix(text: str) -> list[UnixSocket]:
    """Parse /proc/net/unix into UnixSocket records (queue lengths 0).

    Listeners come back with state TCP_LISTEN, connected sockets with
    TCP_ESTABLISHED, embryonic ones (waiting in a listener's queue) with -1.
    """
    out = []
    for line in text.splitlines()[1:]:
        cols = line.split(None, 7)
        if len(cols) < 8:
            continue
        flags = int(cols[3], 16)
        stype = int(cols[4], 16)
        st = cols[5]
        path = cols[7]
        inode = int(cols[6])
        if flags & _ACCEPTCON:
            out.append(UnixSocket(stype, TCP_LISTEN, inode, path, 0, 0))
        elif st == _SS_CONNECTED:
            out.append(UnixSocket(stype, TCP_ESTABLISHED, inode, path, 0, 0))
        elif st == _SS_CONNECTING:
            # Counted as the listener's queue below.
            out.append(UnixSocket(stype, -1, inode, path, 0, 0))
    return out


def tally_proc_unix(paths: list[str] | None, socks: list[UnixSocket]) -> dict[str, ListenStats]:
    """Listener stats from /proc/net/unix records; backlog is always None.

    Queued is taken from embryonic (SS_CONNECTING) sockets; /proc has no
    UNIX_DIAG_VFS, so each listener's path is stat()ed to match names bound
    through symlinks, as :func:`unix_plan` does with the kernel's answer.
    """
    queued: dict[str | None, int] = {}
    accepted: dict[str, int] = {}
    for s in socks:
        if s.type != SOCK_STREAM or s.name is None:
            continue
        if s.state == -1:
            queued[s.name] = queued.get(s.name, 0) + 1
        elif s.state == TCP_ESTABLISHED:
            accepted[s.name] = accepted.get(s.name, 0) + 1
    listeners = []
    for s in socks:
        if s.state != TCP_LISTEN:
            continue
        ident = _stat_id(s.name) if s.name is not None and s.name.startswith("/") else None
        vfs = None if ident is None else (kernel_dev(ident[0]), ident[1] & 0xFFFFFFFF)
        listeners.append(
            UnixSocket(s.type, s.state, s.inode, s.name, queued.get(s.name, 0), 0, vfs)
        )
    res = unix_answer(unix_plan(paths, listeners), accepted)
    return {k: ListenStats(v.active, v.queued, None) for k, v in res.items()}


def _unix_counts(needles: dict[str, bytes], data: bytes) -> tuple[list[Any], bool, bool]:
    counts, done, intr = count_unix_names(data, needles)
    return [counts], done, intr


def _unix_exact_counts(names: frozenset[str], data: bytes) -> tuple[list[Any], bool, bool]:
    counts, done, intr = count_unix_stream_names(data, names)
    return [counts], done, intr


def unix_steps(paths: list[str] | None) -> Steps[dict[str, ListenStats]]:
    """The two unix_diag dumps of a Unix query (listeners, then accepted
    connections counted by name), as a generator like :func:`tcp_steps`."""
    make = functools.partial(
        unix_dump_request, 1 << TCP_LISTEN, UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_RQLEN
    )
    listeners: list[UnixSocket] = yield (make, parse_unix_dump)
    plan = unix_plan(paths, listeners)
    counts: dict[str, int] = dict.fromkeys(plan.names, 0)
    if plan.names:
        parser: Parser
        if plan.exact:
            parser = functools.partial(_unix_exact_counts, plan.names)
        else:
            needles = {n: unix_name_attr(n) for n in plan.names}
            parser = functools.partial(_unix_counts, needles)
        make = functools.partial(unix_dump_request, 1 << TCP_ESTABLISHED, UDIAG_SHOW_NAME)
        per_datagram: list[dict[str, int]] = yield (make, parser)
        for chunk in per_datagram:
            for name, n in chunk.items():
                counts[name] += n
    return unix_answer(plan, counts)


# -- listener inodes -----------------------------------------------------------

INODE_FAMILIES = (AF_INET, AF_INET6, AF_UNIX)


def inode_families(family: object) -> tuple[int, ...]:
    """Validate ``listener_inodes``' family: None for all three, or one of them."""
    if family is None:
        return INODE_FAMILIES
    if isinstance(family, int) and not isinstance(family, bool) and family in INODE_FAMILIES:
        return (int(family),)
    raise ArgumentError(
        f"invalid family {family!r}: expected socket.AF_INET, socket.AF_INET6, "
        "socket.AF_UNIX or None"
    )


@dataclass(frozen=True, slots=True)
class ListeningSocket:
    """One listening socket, as the kernel lists its listeners.

    ``name`` is the canonical listener name (``"127.0.0.1:8080"``,
    ``"[::]:8080"``, the path a Unix socket was bound with, ``"@abstract"``),
    ``inode`` the socket's (``os.fstat(fd).st_ino``; the number in a
    ``/proc/PID/fd`` link ``socket:[INODE]``), ``unix`` whether it is a Unix
    stream socket, ``queued`` the connections waiting in its accept queue
    and ``backlog`` the queue's limit (the ``listen()`` argument capped by
    ``somaxconn``); for Unix sockets read through the /proc/net/unix
    fallback both are 0, which that file does not give.

    >>> ListeningSocket("127.0.0.1:8080", 81234, False, 0, 128).name
    '127.0.0.1:8080'
    """

    name: str
    inode: int
    unix: bool
    queued: int
    backlog: int


def tcp_listening_steps(families: tuple[int, ...]) -> Steps[list[ListeningSocket]]:
    """Every TCP listener of ``families``, as steps (one LISTEN-only dump each)."""
    listeners = yield from _listen_steps(f for f in families if f != AF_UNIX)
    return [
        ListeningSocket(
            name_from_packed(r.family, r.src, socket.ntohs(r.sport_raw)),
            r.inode,
            False,
            r.rqueue,
            r.wqueue,
        )
        for r in listeners
        if r.inode
    ]


def unix_listening(socks: Iterable[UnixSocket]) -> list[ListeningSocket]:
    """The named Unix stream listeners among ``socks`` (a unix_diag dump or /proc/net/unix).

    The name is the one the kernel reports (the path bound, or ``@name``).
    """
    return [
        ListeningSocket(s.name, s.inode, True, s.rqueue, s.wqueue)
        for s in socks
        if s.state == TCP_LISTEN and s.type == SOCK_STREAM and s.name is not None
    ]


def unix_listening_steps() -> Steps[list[ListeningSocket]]:
    """Every Unix stream listener with its queue and backlog, as steps (one unix_diag dump)."""
    make = functools.partial(unix_dump_request, 1 << TCP_LISTEN, UDIAG_SHOW_NAME | UDIAG_SHOW_RQLEN)
    return unix_listening((yield (make, parse_unix_dump)))


def inodes_of(listening: Iterable[ListeningSocket]) -> dict[int, str]:
    """Inode -> name of ``listening`` (what :func:`listener_inodes` answers)."""
    return {s.inode: s.name for s in listening}
