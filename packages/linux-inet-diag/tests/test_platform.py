"""Behaviour off Linux, simulated in a subprocess that pretends to be macOS."""

from __future__ import annotations

import errno
import subprocess
import sys

SCRIPT = """
import sys
sys.platform = "darwin"
import linux_inet_diag as lid
print(lid.AVAILABLE, lid.available())
print(lid.parse_address("[::1]:80").name)
try:
    lid.tcp_listener_stats("127.0.0.1:1")
except lid.UnavailableError as e:
    print(type(e).__name__, isinstance(e, OSError), e)
"""


def test_imports_and_refuses_clearly_off_linux() -> None:
    """Off Linux the package imports, parses names, and queries raise UnavailableError."""
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=True
    ).stdout.splitlines()
    assert out[0] == "False False"
    assert out[1] == "[::1]:80"
    assert out[2].startswith(
        f"UnavailableError True [Errno {errno.EAFNOSUPPORT}] "
        "netlink sock_diag is unavailable on this platform"
    )
