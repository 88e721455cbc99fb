"""Behaviour off Linux, simulated in a subprocess that pretends to be macOS.

The subprocess sets ``sys.platform = "darwin"`` before importing the
package, which is what the package reads to decide whether netlink, /proc
and Linux's TCP_INFO are there.
"""

from __future__ import annotations

import errno
import subprocess
import sys

SCRIPT = """
import asyncio, socket, sys
sys.platform = "darwin"
import linux_inet_diag as lid
print(lid.AVAILABLE, lid.available())
print(lid.parse_address("[::1]:80").name)
with socket.socket() as s:
    calls = {
        "tcp_listener_stats": lambda: lid.tcp_listener_stats("127.0.0.1:1"),
        "unix_listener_stats": lambda: lid.unix_listener_stats("/tmp/x.sock"),
        "DiagSocket": lid.DiagSocket,
        "AsyncDiagSocket": lid.AsyncDiagSocket,
        "tcp_info_for": lambda: lid.tcp_info_for(("127.0.0.1", 1), ("127.0.0.1", 2)),
        "TcpInfo.from_socket": lambda: lid.TcpInfo.from_socket(s),
        "listen_overflows": lid.listen_overflows,
        "inet_diag_records": lid.inet_diag_records,
    }
    for name, call in calls.items():
        try:
            call()
            print(name, "returned")
        except lid.UnavailableError as e:
            print(name, type(e).__name__, isinstance(e, OSError), e.errno, e.strerror, sep="|")
"""

UNAVAILABLE = "is unavailable on this platform (darwin)"


def test_imports_and_refuses_clearly_off_linux() -> None:
    """Off Linux the package imports and parses names; every query raises UnavailableError."""
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=True
    ).stdout.splitlines()
    assert out[0] == "False False"
    assert out[1] == "[::1]:80"
    netlink = f"{errno.EAFNOSUPPORT}|netlink sock_diag {UNAVAILABLE}"
    assert out[2:] == [
        f"tcp_listener_stats|UnavailableError|True|{netlink}",
        f"unix_listener_stats|UnavailableError|True|{netlink}",
        f"DiagSocket|UnavailableError|True|{netlink}",
        f"AsyncDiagSocket|UnavailableError|True|{netlink}",
        f"tcp_info_for|UnavailableError|True|{netlink}",
        f"TcpInfo.from_socket|UnavailableError|True|{errno.ENOPROTOOPT}|"
        f"TCP_INFO (Linux struct tcp_info) {UNAVAILABLE}",
        f"listen_overflows|UnavailableError|True|{errno.ENOENT}|"
        f"/proc/net/netstat (TcpExt counters) {UNAVAILABLE}",
        f"inet_diag_records|UnavailableError|True|{netlink}",
    ]


def test_listener_inodes_refuses_clearly_off_linux() -> None:
    """Off Linux listener_inodes() raises UnavailableError, as every other query does."""
    script = (
        "import sys\n"
        "sys.platform = 'darwin'\n"
        "import linux_inet_diag as lid\n"
        "try:\n"
        "    lid.listener_inodes()\n"
        "except lid.UnavailableError as e:\n"
        "    print(e.errno, e.strerror, sep='|')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out == f"{errno.EAFNOSUPPORT}|netlink sock_diag {UNAVAILABLE}\n"
