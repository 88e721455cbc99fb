"""Full per-socket records: inet_diag messages with every attribute.

The opt-in, slower twin of the counting path: each message of the dump is
decoded whole, its attributes by pyroute2's ``inet_diag_msg`` (imported on
first use: it takes a few hundred milliseconds), ``INET_DIAG_INFO`` by
:class:`TcpInfo` (pyroute2 swaps ``rcv_wscale``). The dump itself goes
through this package's sockets, so records work from threads, after
``fork()`` and inside (or through) an asyncio loop, unlike pyroute2's own
synchronous socket.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ._address import AF_INET, AF_INET6, Address, name_from_packed, parse_address
from ._errors import AddressError, ArgumentError
from ._kernel import (
    ALL_STATES,
    INET_DIAG_INFO,
    INET_DIAG_MSG,
    NLMSG_HDRLEN,
    inet_dump_request,
    inet_socket,
    messages,
    source_filter,
)
from ._stats import host_cond, names_arg
from ._steps import Steps
from ._tcpinfo import TCP_STATES, TcpInfo, TcpState, tcp_info_attr

__all__ = ["SocketRecord"]

# idiag_ext: one bit per INET_DIAG_* attribute 1-8 (MEMINFO, INFO,
# VEGASINFO, CONG, TOS, TCLASS, SKMEMINFO, SHUTDOWN); the kernel adds the
# others it has (BBRINFO, CGROUP_ID, ...) on its own (linux/inet_diag.h).
EVERY_EXTENSION = 0xFF
Match = Callable[[int, bytes, int], bool]


@dataclass(frozen=True, slots=True)
class SocketRecord:
    """One TCP socket as inet_diag reports it, with every attribute.

    ``local``/``remote`` are canonical names (``"127.0.0.1:8080"``,
    ``"[::1]:8080"``; an IPv4 peer of a dual-stack socket is
    ``"[::ffff:127.0.0.1]:PORT"``). ``state`` is a :class:`TcpState` (an
    ``int`` for a state this package does not know). ``receive_queue`` and
    ``send_queue``: bytes not yet read / not yet acknowledged, except for a
    LISTEN socket, where they are the connections waiting to be accepted and
    the backlog. ``expires`` (milliseconds) is when the socket's ``timer``
    (0 none, 1 retransmit, 2 keepalive, 3 TIME_WAIT, 4 zero-window probe)
    fires. ``tcp_info`` is INET_DIAG_INFO decoded by :class:`TcpInfo` (None
    for sockets without one, e.g. TIME_WAIT). ``attrs`` holds every other
    attribute pyroute2 can name, decoded by it into plain values
    (``attrs["INET_DIAG_MEMINFO"]["idiag_rmem"]``, ``attrs["INET_DIAG_CONG"]``);
    ``raw_attrs`` holds every attribute's bytes by number, those pyroute2
    does not know included. Both mappings are read-only.

    >>> import socket
    >>> from linux_inet_diag import inet_diag_records
    >>> with socket.create_server(("127.0.0.1", 0), backlog=5) as srv:
    ...     name = "127.0.0.1:%d" % srv.getsockname()[1]
    ...     (rec,) = inet_diag_records(name, states=[TcpState.LISTEN])
    >>> rec.state, rec.local == name, rec.send_queue
    (<TcpState.LISTEN: 10>, True, 5)
    """

    family: int
    state: TcpState | int
    local: str
    remote: str
    receive_queue: int
    send_queue: int
    uid: int
    inode: int
    interface: int
    cookie: int
    timer: int
    retransmits: int
    expires: int
    tcp_info: TcpInfo | None
    attrs: Mapping[str, Any] = field(hash=False, repr=False)
    raw_attrs: Mapping[int, bytes] = field(hash=False, repr=False)


@functools.cache
def _pyroute2_message() -> Any:
    """pyroute2's inet_diag_msg class, imported on first use (slow import)."""
    from pyroute2.netlink.diag import (  # type: ignore[import-untyped,unused-ignore]
        inet_diag_msg,
    )

    return inet_diag_msg


def _plain(value: Any) -> Any:
    """pyroute2's decoded values as plain dicts, tuples, str, int, bytes."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items() if k not in ("header", "attrs")}
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return value


def _pyroute2_attrs(message: bytes) -> dict[str, Any]:
    msg = _pyroute2_message()(message)
    msg.decode()
    out: dict[str, Any] = {}
    for slot in msg["attrs"]:
        name = slot[0]
        if name in ("INET_DIAG_INFO", "UNKNOWN"):
            continue  # ours decodes tcp_info right; unknown ones are in raw_attrs
        out[name] = _plain(slot[1])
    return out


def parse_records(buf: bytes, match: Match | None = None) -> tuple[list[SocketRecord], bool, bool]:
    """Decode one datagram of a dump into records: records, done, interrupted.

    ``match(family, src16, sport)`` drops sockets before the (slow) attribute
    decoding when it returns False.
    """
    out: list[SocketRecord] = []
    found = messages(buf)
    for start, end in found.spans:
        if end - start < NLMSG_HDRLEN + INET_DIAG_MSG.size:
            continue
        s = inet_socket(buf, start, end)
        if match is not None and not match(s.family, s.src, s.sport):
            continue
        out.append(
            SocketRecord(
                family=s.family,
                state=TCP_STATES.get(s.state, s.state),
                local=name_from_packed(s.family, s.src, s.sport),
                remote=name_from_packed(s.family, s.dst, s.dport),
                receive_queue=s.rqueue,
                send_queue=s.wqueue,
                uid=s.uid,
                inode=s.inode,
                interface=s.interface,
                cookie=s.cookie,
                timer=s.timer,
                retransmits=s.retrans,
                expires=s.expires,
                tcp_info=tcp_info_attr(s.attrs.get(INET_DIAG_INFO)),
                attrs=MappingProxyType(_pyroute2_attrs(bytes(buf[start:end]))),
                raw_attrs=MappingProxyType(s.attrs),
            )
        )
    return out, found.done, found.interrupted


def _matcher(addrs: list[Address]) -> Match:
    exact = {(a.family, a.packed, a.port) for a in addrs if not a.is_wildcard}
    wild = {(a.family, a.port) for a in addrs if a.is_wildcard}

    def match(family: int, src: bytes, sport: int) -> bool:
        return (family, sport) in wild or (family, src, sport) in exact

    return match


def record_args(
    local: object, states: object, family: object
) -> tuple[list[Address] | None, int, tuple[int, ...]]:
    """Validate :meth:`DiagSocket.records` arguments: addresses, state mask, families."""
    addrs: list[Address] | None = None
    names = names_arg(local, "local")
    if names is not None:
        addrs = []
        for name in names:
            a = parse_address(name)
            if a.is_unix:
                raise AddressError(f"invalid TCP name {name!r}: a Unix path; records are TCP only")
            addrs.append(a)
    mask = ALL_STATES
    if states is not None:
        if isinstance(states, (str, bytes)) or not isinstance(states, Iterable):
            raise ArgumentError(f"states must be None or an iterable of TcpState, not {states!r}")
        mask = 0
        for st in states:
            if isinstance(st, bool) or not isinstance(st, int) or st not in TCP_STATES:
                raise ArgumentError(
                    f"invalid TCP state {st!r}: expected a TcpState (1-{max(TCP_STATES)})"
                )
            mask |= 1 << st
    if family is None:
        families: tuple[int, ...] = (AF_INET, AF_INET6)
    elif isinstance(family, int) and not isinstance(family, bool) and family in (AF_INET, AF_INET6):
        families = (int(family),)
    else:
        raise ArgumentError(
            f"invalid family {family!r}: expected socket.AF_INET, socket.AF_INET6 or None"
        )
    return addrs, mask, families


def record_steps(
    addrs: list[Address] | None, mask: int, families: tuple[int, ...]
) -> Steps[list[SocketRecord]]:
    """The dumps of a records query, one per family, as in :func:`tcp_steps`.

    With addresses, the kernel filters on them (bytecode) and the records
    are checked again in Python (exact, and needed when the names do not fit
    in one program).
    """
    out: list[SocketRecord] = []
    match = None if addrs is None else _matcher(addrs)
    for fam in families:
        bc = b""
        if addrs is not None:
            mine = [a for a in addrs if a.family == fam]
            if not mine:
                continue
            bc = source_filter(host_cond(a.family, a.packed, a.port) for a in mine) or b""
        make = functools.partial(inet_dump_request, fam, mask, bytecode=bc, ext=EVERY_EXTENSION)
        out += yield (make, functools.partial(parse_records, match=match))
    return out
