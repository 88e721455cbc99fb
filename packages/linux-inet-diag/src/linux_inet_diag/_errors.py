"""Errors raised by linux_inet_diag, split by who is at fault."""

from __future__ import annotations

__all__ = [
    "AddressError",
    "DumpInterruptedError",
    "LinuxInetDiagError",
    "NetlinkError",
    "UnavailableError",
]


class LinuxInetDiagError(Exception):
    """Base of every error this package raises; never raised directly."""


class AddressError(LinuxInetDiagError, ValueError):
    """A listener name or address is malformed (the caller's fault)."""


class UnavailableError(LinuxInetDiagError, OSError):
    """Netlink sock_diag (or /proc) is unavailable on this platform."""


class NetlinkError(LinuxInetDiagError, OSError):
    """The kernel answered a request with NLMSG_ERROR; ``errno`` is its error."""


class DumpInterruptedError(LinuxInetDiagError, OSError):
    """A dump kept being interrupted (NLM_F_DUMP_INTR) after every retry."""
