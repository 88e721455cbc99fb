"""Whether this platform has what the Linux-only calls need."""

from __future__ import annotations

import errno
import socket
import sys

from ._errors import UnavailableError

__all__ = ["AVAILABLE", "require_linux"]

AVAILABLE: bool = sys.platform.startswith("linux") and hasattr(socket, "AF_NETLINK")


def require_linux(what: str, err: int = errno.EAFNOSUPPORT) -> None:
    """Raise UnavailableError ``"<what> is unavailable on this platform"`` off Linux.

    Reads :data:`AVAILABLE` at call time (tests patch it).
    """
    if not AVAILABLE:
        raise UnavailableError(err, f"{what} is unavailable on this platform ({sys.platform})")
