"""Errors raised by linux_inet_diag, split by who is at fault."""

from __future__ import annotations

__all__ = [
    "AddressError",
    "ArgumentError",
    "DumpInterruptedError",
    "LinuxInetDiagError",
    "NetlinkError",
    "NetstatFormatError",
    "TcpInfoLengthError",
    "UnavailableError",
]


class LinuxInetDiagError(Exception):
    """Base of every error this package raises; never raised directly."""


class AddressError(LinuxInetDiagError, ValueError):
    """A listener name or address is malformed (the caller's fault)."""


class ArgumentError(LinuxInetDiagError, ValueError):
    """An argument other than a name is out of range or of the wrong type."""


class TcpInfoLengthError(LinuxInetDiagError, ValueError):
    """Bytes given as ``struct tcp_info`` are shorter than its Linux 2.6 core.

    ``length`` is how many bytes were given, ``needed`` the minimum (104).
    """

    def __init__(self, length: int, needed: int) -> None:
        super().__init__(f"tcp_info of {length} bytes is too short: at least {needed} bytes needed")
        self.length = length
        self.needed = needed


class NetstatFormatError(LinuxInetDiagError, ValueError):
    """Text given as /proc/net/netstat is not pairs of header and value lines."""


class UnavailableError(LinuxInetDiagError, OSError):
    """Netlink sock_diag (or /proc, or TCP_INFO) is unavailable on this platform."""


class NetlinkError(LinuxInetDiagError, OSError):
    """The kernel answered a request with NLMSG_ERROR; ``errno`` is its error."""


class DumpInterruptedError(LinuxInetDiagError, OSError):
    """A dump kept being interrupted (NLM_F_DUMP_INTR) after every retry."""
