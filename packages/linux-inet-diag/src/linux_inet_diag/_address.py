"""Listener names: parse and canonicalise, on every platform (pure parsing)."""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass

from ._errors import AddressError

__all__ = ["Address", "parse_address"]

AF_INET = int(socket.AF_INET)
AF_INET6 = int(socket.AF_INET6)
AF_UNIX = int(getattr(socket, "AF_UNIX", 1))

_ACCEPTED = (
    "expected 'IPV4:PORT' (e.g. '127.0.0.1:8080', '0.0.0.0:8080'), "
    "'[IPV6]:PORT' (e.g. '[::1]:8080', '[::]:8080') with PORT 1-65535, "
    "or a Unix socket path ('/path/to/unix.sock', '@abstract')"
)
_V4 = re.compile(r"([0-9.]+):([0-9]+)")
_V6 = re.compile(r"\[([0-9A-Fa-f:.]+)(?:%[^\]]*)?\]:([0-9]+)")


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed listener name.

    ``family`` is ``socket.AF_INET``, ``AF_INET6`` or ``AF_UNIX``; ``host``
    is the canonical IP text (no brackets, no scope id) or the Unix path
    (``@name`` for abstract sockets); ``port`` is 0 for Unix sockets;
    ``packed`` is the address as the kernel writes it in ``inet_diag_sockid``
    (16 bytes, IPv4 in the first 4, zeros after).

    >>> parse_address("[::1]:8080").name
    '[::1]:8080'
    """

    family: int
    host: str
    port: int
    packed: bytes

    @property
    def name(self) -> str:
        """The canonical spelling: ``1.2.3.4:80``, ``[::1]:80`` or the path."""
        if self.family == AF_INET:
            return f"{self.host}:{self.port}"
        if self.family == AF_INET6:
            return f"[{self.host}]:{self.port}"
        return self.host

    @property
    def is_wildcard(self) -> bool:
        """True for ``0.0.0.0:PORT`` and ``[::]:PORT`` (any local address)."""
        return self.family != AF_UNIX and self.packed == bytes(16)

    @property
    def is_unix(self) -> bool:
        """True for a Unix socket path or abstract name."""
        return self.family == AF_UNIX


def _bad(name: object, why: str) -> AddressError:
    return AddressError(f"invalid listener name {name!r}: {why}; {_ACCEPTED}")


def _port(name: str, text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise _bad(name, f"port {port} out of range 1-65535")
    return port


def parse_address(name: object) -> Address:
    """Parse a listener name into an :class:`Address`, or raise AddressError.

    Accepted forms: ``"127.0.0.1:8080"``, ``"0.0.0.0:8080"``,
    ``"[::1]:8080"``, ``"[::]:8080"`` (an IPv6 scope id ``%eth0`` is
    dropped), ``"/path/to/unix.sock"`` and ``"@abstract"``.

    >>> parse_address("127.0.0.1:8080").port
    8080
    >>> parse_address("::1:80")
    Traceback (most recent call last):
    ...
    linux_inet_diag._errors.AddressError: invalid listener name '::1:80': ...
    """
    if not isinstance(name, str):
        raise _bad(name, f"not a string but {type(name).__name__}")
    if not name:
        raise _bad(name, "empty name")
    if name[0] in "/@":
        if name == "@" or (name[0] == "/" and "\0" in name):
            raise _bad(name, "empty abstract name or NUL in path")
        return Address(AF_UNIX, name, 0, b"")
    if name[0] == "[":
        m6 = _V6.fullmatch(name)
        if m6 is None:
            raise _bad(name, "not of the form '[IPV6]:PORT'")
        try:
            ip6 = ipaddress.IPv6Address(m6.group(1))
        except ValueError:
            raise _bad(name, f"{m6.group(1)!r} is not an IPv6 address") from None
        return Address(AF_INET6, ip6.compressed, _port(name, m6.group(2)), ip6.packed)
    m4 = _V4.fullmatch(name)
    if m4 is None:
        if name.count(":") > 1:
            raise _bad(name, "an IPv6 address needs brackets")
        raise _bad(name, "not of the form 'IPV4:PORT'")
    try:
        ip4 = ipaddress.IPv4Address(m4.group(1))
    except ValueError:
        raise _bad(name, f"{m4.group(1)!r} is not an IPv4 address") from None
    return Address(AF_INET, str(ip4), _port(name, m4.group(2)), ip4.packed + bytes(12))


def name_from_packed(family: int, packed: bytes, port: int) -> str:
    """The canonical name of a socket address read from the kernel."""
    if family == AF_INET:
        return f"{socket.inet_ntop(socket.AF_INET, packed[:4])}:{port}"
    return f"[{socket.inet_ntop(socket.AF_INET6, packed)}]:{port}"
