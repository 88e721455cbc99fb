"""Socket statistics over Linux netlink sock_diag.

Listener active/queued/backlog for TCP (IPv4, IPv6) and Unix sockets,
every listener's socket inode and name, ``struct tcp_info`` per connection,
full per-socket records (opt-in, decoded with pyroute2), and the kernel's
listen-overflow counters.
Imports on every platform; the Linux-only calls raise UnavailableError
elsewhere.

>>> from linux_inet_diag import tcp_listener_stats
>>> tcp_listener_stats("127.0.0.1:1")["127.0.0.1:1"].total
0
"""

from __future__ import annotations

import logging

from ._address import Address, parse_address
from ._api import (
    AVAILABLE,
    AsyncDiagSocket,
    DiagSocket,
    available,
    inet_diag_records,
    listener_inodes,
    listening_sockets,
    tcp_info_for,
    tcp_listener_stats,
    unix_listener_stats,
)
from ._errors import (
    AddressError,
    ArgumentError,
    DumpInterruptedError,
    LinuxInetDiagError,
    NetlinkError,
    NetstatFormatError,
    TcpInfoLengthError,
    UnavailableError,
)
from ._escape import escape_name
from ._netstat import ListenOverflows, listen_overflows
from ._records import SocketRecord
from ._stats import ListeningSocket, ListenStats
from ._tcpinfo import TcpCaState, TcpInfo, TcpState

__all__ = [
    "AVAILABLE",
    "Address",
    "AddressError",
    "ArgumentError",
    "AsyncDiagSocket",
    "DiagSocket",
    "DumpInterruptedError",
    "LinuxInetDiagError",
    "ListenOverflows",
    "ListenStats",
    "ListeningSocket",
    "NetlinkError",
    "NetstatFormatError",
    "SocketRecord",
    "TcpCaState",
    "TcpInfo",
    "TcpInfoLengthError",
    "TcpState",
    "UnavailableError",
    "available",
    "escape_name",
    "inet_diag_records",
    "listen_overflows",
    "listener_inodes",
    "listening_sockets",
    "parse_address",
    "tcp_info_for",
    "tcp_listener_stats",
    "unix_listener_stats",
]
__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
