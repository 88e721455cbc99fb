"""``tcp_info_for``: one connection found by its address pair, as steps.

An exact inet_diag request (not a dump) for the socket whose source and
destination are the pair, asking for INET_DIAG_INFO (``struct tcp_info``).
The kernel answers with that one message, or NLMSG_ERROR ``ENOENT`` when no
socket matches.
"""

from __future__ import annotations

import errno
import functools
import ipaddress

from ._address import AF_INET, AF_INET6, parse_address
from ._errors import AddressError, NetlinkError
from ._kernel import INET_DIAG_INFO, TCP_LISTEN, InetSocket, inet_lookup_request, parse_inet_full
from ._steps import Steps
from ._tcpinfo import TcpInfo, tcp_info_attr

__all__ = ["HostPort", "lookup_steps"]

#: An ASGI ``(host, port)`` pair or a ``"host:port"`` name.
HostPort = tuple[str, int] | str


def _host(value: object, what: str) -> tuple[int, bytes, int]:
    """(family, 16-byte packed, port) of an ASGI (host, port) or 'host:port'."""
    if isinstance(value, str):
        a = parse_address(value)
        if a.is_unix:
            raise AddressError(f"{what} {value!r} is a Unix socket, not TCP")
        host, port = a.host, a.port
    elif (
        isinstance(value, (tuple, list))
        and len(value) >= 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
    ):
        host, port = value[0].split("%")[0], value[1]
    else:
        raise AddressError(f"invalid {what} {value!r}: expected (host, port) or 'host:port'")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise AddressError(f"invalid {what} {value!r}: {host!r} is not an IP") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if not 0 < port < 65536:
        raise AddressError(f"invalid {what} {value!r}: port out of range 1-65535")
    if ip.version == 4:
        return AF_INET, ip.packed + bytes(12), port
    return AF_INET6, ip.packed, port


def _parse_answer(data: bytes) -> tuple[list[InetSocket], bool, bool]:
    """parse_inet_full for an exact lookup: its one message ends the answer.

    ``ENOENT`` (no socket matches, inet_diag_find_one_icsk) is an empty
    answer, not an error.
    """
    try:
        socks, done, interrupted = parse_inet_full(data)
    except NetlinkError as e:
        if e.errno == errno.ENOENT:
            return [], True, False
        raise
    return socks, done or bool(socks), interrupted


def lookup_steps(local: HostPort, remote: HostPort) -> Steps[TcpInfo | None]:
    """The one exact request of ``tcp_info_for(local, remote)``, as steps.

    Raises AddressError for a malformed address, or a pair of two families,
    when the steps are first advanced (before any I/O).
    """
    lf, lsrc, lport = _host(local, "local address")
    rf, rdst, rport = _host(remote, "remote address")
    if lf != rf:
        raise AddressError(f"local {local!r} and remote {remote!r} are of different families")
    width = 4 if lf == AF_INET else 16
    make = functools.partial(
        inet_lookup_request, lf, lsrc[:width] + bytes(16 - width), lport,
        rdst[:width] + bytes(16 - width), rport,
    )  # fmt: skip
    socks: list[InetSocket] = yield (make, _parse_answer)
    for s in socks:
        # A lookup that misses every connection falls back to a listener
        # on the local address (inet_lookup): that is not the connection.
        if s.state == TCP_LISTEN or s.dport != rport:
            continue
        info = tcp_info_attr(s.attrs.get(INET_DIAG_INFO))
        if info is not None:
            return info
    return None
