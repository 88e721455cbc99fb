"""TcpExt ListenOverflows and ListenDrops from /proc/net/netstat."""

from __future__ import annotations

import errno
from dataclasses import dataclass

from ._errors import NetstatFormatError, UnavailableError
from ._platform import require_linux

__all__ = ["ListenOverflows", "listen_overflows", "parse_netstat"]

NETSTAT_PATH = "/proc/net/netstat"


@dataclass(frozen=True, slots=True)
class ListenOverflows:
    """Kernel counters since boot, for the caller's network namespace.

    ``listen_overflows``: times a completed handshake found the accept queue
    full (TcpExt ListenOverflows). ``listen_drops``: every SYN or handshake
    dropped on a listener, overflows included (TcpExt ListenDrops), so
    ``listen_drops >= listen_overflows``.
    """

    listen_overflows: int
    listen_drops: int


def parse_netstat(text: str) -> dict[str, dict[str, int]]:
    """Parse /proc/net/netstat (or /proc/net/snmp) text: {section: {key: value}}.

    Each section is a header line ``TcpExt: Name ...`` followed by a value line
    ``TcpExt: 1 ...`` with the same prefix and as many values as names;
    anything else raises :class:`NetstatFormatError`.

    >>> parse_netstat("TcpExt: ListenOverflows ListenDrops\\nTcpExt: 3 5\\n")
    {'TcpExt': {'ListenOverflows': 3, 'ListenDrops': 5}}
    """
    out: dict[str, dict[str, int]] = {}
    lines = text.splitlines()
    if len(lines) % 2:
        raise NetstatFormatError(
            f"netstat text has {len(lines)} lines: expected header and value lines in pairs"
        )
    for head, values in zip(lines[::2], lines[1::2], strict=True):
        hp, _, hkeys = head.partition(":")
        vp, _, vvals = values.partition(":")
        if hp != vp:
            raise NetstatFormatError(
                f"mismatched netstat lines {head[:20]!r} / {values[:20]!r}: "
                "a header line must be followed by the value line of the same section"
            )
        names, numbers = hkeys.split(), vvals.split()
        if len(names) != len(numbers) or not all(n.isdigit() for n in numbers):
            raise NetstatFormatError(
                f"netstat section {hp!r} has {len(names)} names and values {vvals[:40]!r}: "
                "expected as many non-negative integers as names"
            )
        out[hp] = dict(zip(names, map(int, numbers), strict=True))
    return out


def listen_overflows(path: str = NETSTAT_PATH) -> ListenOverflows:
    """Read TcpExt ListenOverflows and ListenDrops.

    Off Linux, reading the default path raises UnavailableError
    (``errno.ENOENT``); an explicit ``path`` is read and parsed anywhere.

    >>> counters = listen_overflows()
    >>> counters.listen_drops >= counters.listen_overflows
    True
    """
    if path == NETSTAT_PATH:
        require_linux(f"{path} (TcpExt counters)", errno.ENOENT)
    try:
        with open(path, encoding="ascii") as f:
            text = f.read()
    except FileNotFoundError:
        raise UnavailableError(
            errno.ENOENT, f"{path} is unavailable on this platform (Linux only)"
        ) from None
    tcpext = parse_netstat(text).get("TcpExt", {})
    return ListenOverflows(tcpext.get("ListenOverflows", 0), tcpext.get("ListenDrops", 0))
