"""Who may read the stats: one rule for the endpoint, the Watcher and any other reader.

A request is described by a :class:`Peer` (what its server says of the
client: an IP address or none, a Unix socket or not, the forwarding headers
it carries), and an :class:`AccessList` decides: loopback and local
Unix-socket peers by default, ``allow=`` to widen; a request whose client is
unknown (no address, or relayed by a proxy) is refused.  Both adapters and
other packages (process-utilization's table) call the same two steps::

    peer = Peer.from_wsgi(environ)          # or Peer.from_asgi(scope)
    reason = access.refusal(peer)           # None: allowed; else why not (403)
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from linux_inet_diag import escape_name
from shm_counters import discover_listeners

from ._errors import ConfigError

__all__ = [
    "ALLOW_ALL",
    "DEFAULT_ALLOW",
    "FORWARDING_HEADERS",
    "AccessList",
    "Peer",
    "listens_on_unix",
]

#: Loopback only: the stats show listener addresses and load, so they are not
#: served to the world unless asked.  Local Unix-socket peers are allowed too.
DEFAULT_ALLOW: tuple[str, ...] = ("127.0.0.0/8", "::1/128")

#: Every IPv4 and IPv6 client (the Ruby original's behaviour).
ALLOW_ALL: tuple[str, ...] = ("0.0.0.0/0", "::/0")

#: The request headers a proxy adds to say who its client is (lower case).
#: A request carrying any of them came through a proxy.
FORWARDING_HEADERS: tuple[str, ...] = ("forwarded", "x-forwarded-for", "x-real-ip")

_WSGI_FORWARDING = tuple(
    (name, "HTTP_" + name.upper().replace("-", "_")) for name in FORWARDING_HEADERS
)
_ASGI_FORWARDING = {name.encode(): name for name in FORWARDING_HEADERS}
_HEADER_SPELLING = {"forwarded": "Forwarded", "x-forwarded-for": "X-Forwarded-For"}
_HEADER_SPELLING["x-real-ip"] = "X-Real-IP"

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# A positive answer of listens_on_unix() is kept: listening sockets do not go
# away under a server; a negative one is asked again next time.
_unix_listening = False


def listens_on_unix() -> bool:
    """Whether this process holds a listening Unix stream socket (walks its descriptors).

    How a request that came with no client address and no word from its
    server (hypercorn over ``unix:``: ``client`` and ``server`` both
    ``None``) is still told to be a Unix-socket peer: a TCP connection
    always has an address, so a server that listens on a Unix socket and
    gives none had the request over it.  A positive answer is kept for the
    life of the process (and its forked children, which inherit the
    sockets).

    Example::

        >>> listens_on_unix()  # in a worker of hypercorn -b unix:/run/app.sock
        True
    """
    global _unix_listening
    if not _unix_listening:
        found = discover_listeners(prefer_parent=False)
        _unix_listening = any(listener.name.startswith(("/", "@")) for listener in found)
    return _unix_listening


def _forwarded_in_wsgi(environ: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(name for name, key in _WSGI_FORWARDING if key in environ)


def _forwarded_in_asgi(scope: Mapping[str, Any]) -> tuple[str, ...]:
    found: set[str] = set()
    for key, _ in scope.get("headers", ()) or ():
        name = _ASGI_FORWARDING.get(bytes(key).lower())
        if name is not None:
            found.add(name)
    return tuple(name for name in FORWARDING_HEADERS if name in found)


def _is_unix_server(server: object) -> bool:
    """The ASGI spec's spelling of a Unix-socket server: ``[path, None]``."""
    return (
        isinstance(server, (list, tuple))
        and len(server) == 2
        and isinstance(server[0], str)
        and server[1] is None
    )


@dataclass(frozen=True, slots=True)
class Peer:
    """The client of one request, as its server reported it.

    ``address`` is the client's IP address as the server gave it
    (``REMOTE_ADDR``, ``scope["client"][0]``; servers that resolve
    forwarding headers, such as uvicorn, give the resolved client), ``""``
    when the server said the peer has none (a Unix socket), ``None`` when
    it said nothing.  ``unix`` is whether the request came over a Unix
    socket, i.e. from a process on this machine, or from a proxy on it.
    ``forwarded`` names the forwarding headers the request carries (lower
    case, in :data:`FORWARDING_HEADERS` order): a proxy relayed it.

    Build it from the request with :meth:`from_wsgi` or :meth:`from_asgi`;
    a bare address string (``Peer("127.0.0.1")``) is a direct TCP client.

    Example::

        >>> Peer.from_asgi({"client": None, "server": ["/run/app.sock", None],
        ...                 "headers": [(b"x-forwarded-for", b"203.0.113.9")]})
        Peer(address=None, unix=True, forwarded=('x-forwarded-for',))
    """

    address: str | None
    unix: bool = False
    forwarded: tuple[str, ...] = ()

    @classmethod
    def from_wsgi(cls, environ: Mapping[str, Any]) -> Peer:
        """The peer of a WSGI request.

        ``REMOTE_ADDR`` is the address; a missing one is no address at all
        (refused).  An empty one is how gunicorn (sync, gthread) says the
        peer came over a Unix socket; it is believed when the server's
        client socket says so (``environ["gunicorn.socket"]`` is
        ``AF_UNIX``) or, for servers that expose none, when this process
        listens on a Unix socket (:func:`listens_on_unix`).  Forwarding
        headers are ``HTTP_FORWARDED``, ``HTTP_X_FORWARDED_FOR``,
        ``HTTP_X_REAL_IP``.

        Example::

            >>> Peer.from_wsgi({"REMOTE_ADDR": "127.0.0.1", "HTTP_X_REAL_IP": "192.0.2.7"})
            Peer(address='127.0.0.1', unix=False, forwarded=('x-real-ip',))
        """
        forwarded = _forwarded_in_wsgi(environ)
        address = environ.get("REMOTE_ADDR")
        if not isinstance(address, str):
            return cls(None, False, forwarded)
        sock = environ.get("gunicorn.socket")
        family = getattr(sock, "family", None)
        if family is not None:
            unix = family == socket.AF_UNIX
        else:
            unix = address == "" and listens_on_unix()
        return cls(address, unix, forwarded)

    @classmethod
    def from_asgi(cls, scope: Mapping[str, Any]) -> Peer:
        """The peer of an ASGI request.

        ``scope["client"][0]`` is the address.  With no client (``None`` or
        missing), the request came over a Unix socket if the server says so
        with ``scope["server"] == [path, None]`` (the ASGI spec's form:
        uvicorn ``--uds``, gunicorn's ``UvicornWorker`` on ``unix:``) or,
        when the server gives no ``server`` either (hypercorn ``unix:``), if
        this process listens on a Unix socket (:func:`listens_on_unix`).
        A client resolved from forwarding headers over a Unix socket
        (uvicorn ``--uds --forwarded-allow-ips='*'``) keeps ``unix`` true.

        Example::

            >>> Peer.from_asgi({"client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)})
            Peer(address='127.0.0.1', unix=False, forwarded=())
        """
        forwarded = _forwarded_in_asgi(scope)
        client = scope.get("client")
        server = scope.get("server")
        address: str | None = None
        if isinstance(client, (list, tuple)) and client and isinstance(client[0], str):
            address = client[0]
        if _is_unix_server(server):
            return cls(address, True, forwarded)
        if address is None and server is None:
            return cls(None, listens_on_unix(), forwarded)
        return cls(address, False, forwarded)


def _headers_named(names: tuple[str, ...]) -> str:
    return ", ".join(_HEADER_SPELLING[name] for name in names)


@dataclass(frozen=True, slots=True)
class AccessList:
    """Who may read the stats: client networks, and whether proxied requests count.

    The rule, in order (:meth:`refusal`):

    1. A request that carries a forwarding header (:data:`FORWARDING_HEADERS`)
       and came over a Unix socket or with no address is refused: a proxy
       relayed it (``nginx -> unix:/run/app.sock``) and who its client is, is
       unknown.
    2. Any other request carrying one is refused unless ``proxied`` is true:
       the address the server gives is then the proxy's (gunicorn's
       ``REMOTE_ADDR``) or one the server resolved from those very headers
       (uvicorn's ``--forwarded-allow-ips``); with ``proxied=True`` that
       address is checked against the networks.
    3. A peer without an address is allowed if it came over a Unix socket
       (a local process), refused otherwise (the server gave none).
    4. An address is allowed if it is in one of the networks (IPv4-mapped
       IPv6 addresses, ``::ffff:127.0.0.1``, are checked as IPv4; a scope id
       is ignored); an address that is not an IP at all (a test client's
       ``"testclient"``) is refused.

    Unlike the Ruby original, which serves everyone, the default is loopback
    and local Unix peers only.  raindrops never reads the forwarding headers'
    values.

    Example::

        >>> acl = AccessList.parse(["10.0.0.0/8", "::1"])
        >>> acl.allows("10.1.2.3"), acl.allows("192.0.2.1")
        (True, False)
        >>> acl.refusal(Peer("", unix=True)) is None
        True
        >>> print(acl.refusal(Peer("", unix=True, forwarded=("x-real-ip",))))  # doctest: +ELLIPSIS
        the request came over a Unix socket with X-Real-IP: a proxy relayed it, ...
    """

    networks: tuple[_Network, ...]
    proxied: bool = False

    @classmethod
    def parse(cls, allow: Iterable[str] | AccessList, *, proxied: bool = False) -> AccessList:
        """Build from network strings (``"10.0.0.0/8"``, ``"::1/128"``, ``"127.0.0.1"``).

        ``proxied=True`` admits requests relayed by a proxy over TCP, checking
        the address the server gives (rule 2).  An :class:`AccessList` is
        returned as it is, so every ``allow=`` option takes either.  Raises
        :class:`ConfigError` naming the first malformed entry.
        """
        if isinstance(allow, AccessList):
            return allow
        if isinstance(allow, (str, bytes)):
            raise ConfigError(f"allow must be a list of networks, not the single string {allow!r}")
        if not isinstance(proxied, bool):
            raise ConfigError(f"proxied must be True or False, not {proxied!r}")
        networks: list[_Network] = []
        for item in allow:
            if not isinstance(item, str):
                raise ConfigError(f"allow entry {item!r} is not a string like '10.0.0.0/8'")
            try:
                networks.append(ipaddress.ip_network(item.strip(), strict=False))
            except ValueError as exc:
                raise ConfigError(
                    f"allow entry {item!r} is not an IP network like '10.0.0.0/8' or '::1/128'"
                ) from exc
        return cls(tuple(networks), proxied)

    def allows(self, address: str | None) -> bool:
        """Whether the IP address ``address`` is in one of the networks (no address: no).

        Only the network part of the rule; a request is decided by
        :meth:`refusal` (or :meth:`allows_request`).
        """
        if not address:
            return False
        try:
            addr = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.networks)

    def refusal(self, peer: Peer | str | None) -> str | None:
        """``None`` if ``peer`` may read the stats, else the reason it may not (for a 403).

        ``peer`` is a :class:`Peer`, or a bare address string (a direct TCP
        client), or ``None`` (no address).  The reason is one line of plain
        text; any client text in it is escaped
        (:func:`linux_inet_diag.escape_name`).
        """
        if not isinstance(peer, Peer):
            peer = Peer(peer)
        forwarded = peer.forwarded
        if forwarded and (peer.unix or not peer.address):
            via = "over a Unix socket" if peer.unix else "with no client address"
            return (
                f"the request came {via} with {_headers_named(forwarded)}: a proxy "
                "relayed it, and its client is unknown"
            )
        if forwarded and not self.proxied:
            return (
                f"the request carries {_headers_named(forwarded)}: a proxy relayed it "
                f"(peer {escape_name(str(peer.address))}); to check the client address "
                "your server resolves from it, pass "
                "allow=AccessList.parse([...], proxied=True)"
            )
        if not peer.address:
            if peer.unix:
                return None
            return (
                "the server gave no client address (REMOTE_ADDR, scope['client']), "
                "so the client is unknown"
            )
        if self.allows(peer.address):
            return None
        return (
            f"client {escape_name(peer.address)} is not in the allow-list (loopback only "
            "by default); to allow more, pass allow=['10.0.0.0/8', ...] or allow=ALLOW_ALL"
        )

    def allows_request(self, peer: Peer | str | None) -> bool:
        """Whether ``peer`` may read the stats: :meth:`refusal` is ``None``.

        Example::

            >>> AccessList.parse(DEFAULT_ALLOW).allows_request(Peer.from_wsgi({}))
            False
        """
        return self.refusal(peer) is None
