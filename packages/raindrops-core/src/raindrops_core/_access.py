"""Who may read the stats endpoint: an allow-list of client networks."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from ._errors import ConfigError

__all__ = ["ALLOW_ALL", "DEFAULT_ALLOW", "AccessList"]

#: Loopback only: the endpoint shows listener addresses and load, so it is not
#: served to the world unless asked.  Unix-socket clients (no address) are local.
DEFAULT_ALLOW: tuple[str, ...] = ("127.0.0.0/8", "::1/128")

#: Every IPv4 and IPv6 client (the Ruby original's behaviour).
ALLOW_ALL: tuple[str, ...] = ("0.0.0.0/0", "::/0")

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class AccessList:
    """Client networks allowed to read the endpoint.

    Clients without an IP address (Unix-socket peers, which are on this
    machine by construction) are allowed; a client address that is not an IP
    address at all (a test client's ``"testclient"``) is refused.  IPv4-mapped
    IPv6 addresses (``::ffff:127.0.0.1``) are checked as IPv4.  The address
    checked is the one the server hands the app: raindrops never reads
    ``X-Forwarded-For``, but uvicorn rewrites ``scope["client"]`` from it for
    trusted peers (``--forwarded-allow-ips``, loopback by default), so there
    the list applies to the forwarded client; gunicorn's ``REMOTE_ADDR`` is
    the peer (the proxy).  Unlike the Ruby original, which serves everyone,
    the default is loopback only.

    Example::

        >>> acl = AccessList.parse(["10.0.0.0/8", "::1"])
        >>> acl.allows("10.1.2.3"), acl.allows("192.0.2.1"), acl.allows(None)
        (True, False, True)
    """

    networks: tuple[_Network, ...]

    @classmethod
    def parse(cls, allow: Iterable[str]) -> AccessList:
        """Build from network strings (``"10.0.0.0/8"``, ``"::1/128"``, ``"127.0.0.1"``).

        Raises :class:`ConfigError` naming the first malformed entry.
        """
        if isinstance(allow, (str, bytes)):
            raise ConfigError(f"allow must be a list of networks, not the single string {allow!r}")
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
        return cls(tuple(networks))

    def allows(self, client: str | None) -> bool:
        """Whether a client at address ``client`` may read the endpoint.

        ``None`` or ``""`` means a peer without an IP address (a Unix socket).
        """
        if not client:
            return True
        try:
            addr = ipaddress.ip_address(client.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.networks)
