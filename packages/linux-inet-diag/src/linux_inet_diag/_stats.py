"""Listener statistics: tallies over parsed dumps (pure) and /proc fallback."""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Any

from ._address import AF_INET, AF_INET6, Address, name_from_packed, parse_address
from ._errors import AddressError
from ._kernel import (
    LISTEN_AND_ESTABLISHED,
    TCP_ESTABLISHED,
    TCP_LISTEN,
    UDIAG_SHOW_NAME,
    UDIAG_SHOW_RQLEN,
    CountChunk,
    HostCond,
    UnixSocket,
    count_inet_dump,
    count_unix_names,
    inet_dump_request,
    parse_inet_dump,
    parse_unix_dump,
    source_filter,
    unix_dump_request,
    unix_name_attr,
)

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
Record = tuple[int, int, int, bytes, int, int, int]


def names_arg(names: object, what: str) -> list[str] | None:
    """Normalise the ``addrs``/``paths`` argument: None, one str, or strings."""
    if names is None:
        return None
    if isinstance(names, str):
        return [names]
    if isinstance(names, (bytes, bytearray)) or not isinstance(names, Iterable):
        raise AddressError(f"{what} must be None, a name or an iterable of names, not {names!r}")
    return list(names)


def _cond(family: int, packed: bytes, port: int) -> HostCond:
    width = 4 if family == AF_INET else 16
    prefix = 0 if packed == bytes(16) else width * 8
    return HostCond(family, prefix, port, packed[:width])


def tcp_plan(addrs: list[Address]) -> list[tuple[int, bytes, bool]]:
    """(family, bytecode, single) per dump: filter on each name's address/port.

    ``single`` is true when the family has one distinct condition, so every
    socket the kernel returns belongs to that one name and can be counted
    without classifying it.
    """
    plan = []
    for family in (AF_INET, AF_INET6):
        conds = list(
            dict.fromkeys(_cond(a.family, a.packed, a.port) for a in addrs if a.family == family)
        )
        if conds:
            plan.append((family, source_filter(conds), len(conds) == 1))
    return plan


Parser = Callable[[bytes], tuple[list[Any], bool, bool]]
Step = tuple[Callable[[int], bytes], Parser]
Steps = Generator[Step, list[Any], dict[str, ListenStats]]


def _records(data: bytes) -> tuple[list[Any], bool, bool]:
    c = parse_inet_dump(data)
    return c.records, c.done, c.interrupted


def _counts(data: bytes) -> tuple[list[Any], bool, bool]:
    c = count_inet_dump(data)
    return [c], c.done, c.interrupted


def tcp_steps(asked: list[str] | None, addrs: list[Address] | None) -> Steps:
    """The dumps a TCP query needs, as a generator: yields (request, parser),
    is sent each dump's parsed items, returns the answer. No I/O inside."""
    if asked is None or addrs is None:
        return (yield from _all_steps())
    listeners: list[Record] = []
    records: list[Record] = []
    active: dict[int, int] = {}
    for family, bc, single in tcp_plan(addrs):
        make = functools.partial(inet_dump_request, family, LISTEN_AND_ESTABLISHED, bytecode=bc)
        if single:
            chunks: list[CountChunk] = yield (make, _counts)
            listeners += [r for c in chunks for r in c.listeners]
            active[family] = sum(c.active for c in chunks)
        else:
            records += yield (make, _records)
    result = tally_named(asked, addrs, listeners + records)
    for name, a in zip(asked, addrs, strict=True):
        if a.family in active:
            s = result[name]
            result[name] = ListenStats(s.active + active[a.family], s.queued, s.backlog)
    return result


def _all_steps() -> Steps:
    listeners: list[Record] = []
    for family in (AF_INET, AF_INET6):
        make = functools.partial(inet_dump_request, family, 1 << TCP_LISTEN)
        listeners += yield (make, _records)
    records: list[Record] = []
    extra: dict[tuple[int, bytes, int], int] = {}
    for family in (AF_INET, AF_INET6):
        keys = list(
            dict.fromkeys((src, sport) for f, _, sport, src, *_ in listeners if f == family)
        )
        if not keys:
            continue
        bc = source_filter(_cond(family, src, socket.ntohs(sport)) for src, sport in keys)
        make = functools.partial(inet_dump_request, family, 1 << TCP_ESTABLISHED, bytecode=bc)
        if len(keys) == 1:
            chunks: list[CountChunk] = yield (make, _counts)
            extra[(family, keys[0][0], keys[0][1])] = sum(c.active for c in chunks)
        else:
            records += yield (make, _records)
    result = tally_all(listeners + records)
    for (family, src, sport), n in extra.items():
        name = name_from_packed(family, src, socket.ntohs(sport))
        s = result[name]
        result[name] = ListenStats(s.active + n, s.queued, s.backlog)
    return result


def tally_named(
    asked: list[str], addrs: list[Address], records: Iterable[Record]
) -> dict[str, ListenStats]:
    """Count ``records`` (parse_inet_dump tuples) for each name asked."""
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
    return {
        name: ListenStats(c[0], c[1], c[2] if c[3] else None)
        for name, c in zip(asked, acc, strict=True)
    }


def tally_all(records: Iterable[Record]) -> dict[str, ListenStats]:
    """Every TCP listener in ``records`` by canonical name, with its counts."""
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
    return {
        name_from_packed(f, src, socket.ntohs(p)): ListenStats(c[0], c[1], c[2])
        for (f, src, p), c in cells.items()
    }


def unix_targets(paths: list[str]) -> dict[str, list[str]]:
    """Map each socket name to look for onto the names asked that want it.

    A path that is a symlink is resolved; the answer carries both names.
    """
    out: dict[str, list[str]] = {}
    for p in paths:
        a = parse_address(p)
        if not a.is_unix:
            raise AddressError(
                f"invalid Unix socket name {p!r}: expected a path ('/path/to.sock') "
                "or an abstract name ('@name')"
            )
        out.setdefault(p, []).append(p)
        if p.startswith("/"):
            real = os.path.realpath(p)
            if real != p:
                out.setdefault(real, []).append(real)
                out[real].append(p)
    return out


def tally_unix(paths: list[str] | None, socks: Iterable[UnixSocket]) -> dict[str, ListenStats]:
    """Count Unix listeners (queued) and accepted connections (active)."""
    cells: dict[str, list[int]] = {}
    accepted: dict[str, int] = {}
    for s in socks:
        if s.name is None:
            continue
        if s.state == TCP_LISTEN:
            cell = cells.setdefault(s.name, [0, 0, 0, 0])
            cell[1] += s.rqueue
            cell[2] += s.wqueue
            cell[3] += 1
        elif s.state == TCP_ESTABLISHED and s.inode:
            accepted[s.name] = accepted.get(s.name, 0) + 1
    for name, n in accepted.items():
        if name in cells:
            cells[name][0] += n
    if paths is None:
        return {n: ListenStats(c[0], c[1], c[2]) for n, c in cells.items()}
    result: dict[str, ListenStats] = {}
    for target, askers in unix_targets(paths).items():
        c = cells.get(target)
        if c is None:
            n = accepted.get(target, 0)
            c = [n, 0, 0, 0]
        stats = ListenStats(c[0], c[1], c[2] if c[3] else None)
        for name in askers:
            result[name] = stats
    return result


# /proc/net/unix: "Num RefCount Protocol Flags Type St Inode Path"; St is the
# socket state: 01 SS_UNCONNECTED, 02 SS_CONNECTING (embryonic, in a
# listener's queue), 03 SS_CONNECTED; Flags 00010000 is __SO_ACCEPTCON.
_SS_CONNECTING = "02"
_SS_CONNECTED = "03"
_ACCEPTCON = 0x10000


def parse_proc_net_unix(text: str) -> list[UnixSocket]:
    """Parse /proc/net/unix into UnixSocket records (no queue lengths)."""
    out = []
    for line in text.splitlines()[1:]:
        cols = line.split(None, 7)
        if len(cols) < 8:
            continue
        flags = int(cols[3], 16)
        st = cols[5]
        path = cols[7]
        inode = int(cols[6])
        if flags & _ACCEPTCON:
            out.append(UnixSocket(int(cols[4], 16), TCP_LISTEN, inode, path, 0, 0))
        elif st == _SS_CONNECTED:
            out.append(UnixSocket(int(cols[4], 16), TCP_ESTABLISHED, inode, path, 0, 0))
        elif st == _SS_CONNECTING:
            # Counted as the listener's queue below.
            out.append(UnixSocket(int(cols[4], 16), -1, inode, path, 0, 0))
    return out


def tally_proc_unix(paths: list[str] | None, socks: list[UnixSocket]) -> dict[str, ListenStats]:
    """Like tally_unix, queued taken from embryonic (SS_CONNECTING) sockets."""
    queued: dict[str | None, int] = {}
    for s in socks:
        if s.state == -1:
            queued[s.name] = queued.get(s.name, 0) + 1
    fixed = [
        UnixSocket(s.type, s.state, s.inode, s.name, queued.get(s.name, 0), 0)
        if s.state == TCP_LISTEN
        else s
        for s in socks
        if s.state != -1
    ]
    res = tally_unix(paths, fixed)
    return {k: ListenStats(v.active, v.queued, None) for k, v in res.items()}


def _unix_counts(needles: dict[str, bytes], data: bytes) -> tuple[list[Any], bool, bool]:
    counts, done, intr = count_unix_names(data, needles)
    return [counts], done, intr


def unix_steps(paths: list[str] | None) -> Steps:
    """The two unix_diag dumps of a Unix query (listeners, then accepted
    connections counted by name), as a generator like :func:`tcp_steps`."""
    make = functools.partial(unix_dump_request, 1 << TCP_LISTEN, UDIAG_SHOW_NAME | UDIAG_SHOW_RQLEN)
    listeners: list[UnixSocket] = yield (make, parse_unix_dump)
    targets = (
        unix_targets(paths)
        if paths is not None
        else {s.name: [s.name] for s in listeners if s.name is not None}
    )
    needles = {t: unix_name_attr(t) for t in targets}
    make = functools.partial(unix_dump_request, 1 << TCP_ESTABLISHED, UDIAG_SHOW_NAME)
    counts: list[dict[str, int]] = yield (make, functools.partial(_unix_counts, needles))
    accepted = dict.fromkeys(targets, 0)
    for per_datagram in counts:
        for name, n in per_datagram.items():
            accepted[name] += n
    cells: dict[str, list[int]] = {}
    for s in listeners:
        if s.name is not None and s.name in accepted:
            cell = cells.setdefault(s.name, [0, 0, 0])
            cell[0] = accepted[s.name]
            cell[1] += s.rqueue
            cell[2] += s.wqueue
    result: dict[str, ListenStats] = {}
    for target, askers in targets.items():
        found = cells.get(target)
        stats = (
            ListenStats(accepted[target], 0, None)
            if found is None
            else ListenStats(found[0], found[1], found[2])
        )
        for name in askers:
            result[name] = stats
    return result
