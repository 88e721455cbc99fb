"""ListenOverflows/ListenDrops from /proc/net/netstat."""

from __future__ import annotations

import os
import socket
import time

import pytest
from linux_inet_diag import (
    LinuxInetDiagError,
    ListenOverflows,
    NetstatFormatError,
    UnavailableError,
    listen_overflows,
)
from linux_inet_diag._netstat import parse_netstat

CAPTURED = (
    "TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows ListenDrops TCPHPHits\n"
    "TcpExt: 0 0 17 21 990\n"
    "IpExt: InNoRoutes InOctets\n"
    "IpExt: 0 123456\n"
)


def test_parse_captured_netstat(tmp_path: os.PathLike[str]) -> None:
    """Counters are read from the TcpExt section by name."""
    assert parse_netstat(CAPTURED)["IpExt"] == {"InNoRoutes": 0, "InOctets": 123456}
    path = os.path.join(tmp_path, "netstat")
    with open(path, "w", encoding="ascii") as f:
        f.write(CAPTURED)
    assert listen_overflows(path) == ListenOverflows(listen_overflows=17, listen_drops=21)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "TcpExt: A B\n",
            r"^netstat text has 1 lines: expected header and value lines in pairs$",
        ),
        (
            "TcpExt: A B\nIpExt: 1 2\n",
            r"^mismatched netstat lines 'TcpExt: A B' / 'IpExt: 1 2': a header line must be "
            r"followed by the value line of the same section$",
        ),
        (
            "TcpExt: A B\nTcpExt: 1\n",
            r"^netstat section 'TcpExt' has 2 names and values ' 1': expected as many "
            r"non-negative integers as names$",
        ),
        (
            "TcpExt: A\nTcpExt: x\n",
            r"^netstat section 'TcpExt' has 1 names and values ' x': expected as many "
            r"non-negative integers as names$",
        ),
    ],
)
def test_malformed_netstat_text(text: str, message: str) -> None:
    """Malformed netstat text raises NetstatFormatError (a ValueError) saying what is wrong."""
    with pytest.raises(NetstatFormatError, match=message) as info:
        parse_netstat(text)
    assert isinstance(info.value, LinuxInetDiagError)
    assert isinstance(info.value, ValueError)


def test_missing_file_is_unavailable(tmp_path: os.PathLike[str]) -> None:
    """Without /proc/net/netstat, UnavailableError names the path."""
    missing = os.path.join(tmp_path, "none")
    with pytest.raises(UnavailableError, match="unavailable on this platform"):
        listen_overflows(missing)


@pytest.mark.linux
def test_overflow_counts_rise_when_the_queue_is_full() -> None:
    """Handshakes completing on a full accept queue raise both counters."""
    before = listen_overflows()
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    clients = []
    try:
        for _ in range(6):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(srv.getsockname())
            clients.append(c)
        deadline = time.monotonic() + 5
        after = listen_overflows()
        while after.listen_overflows == before.listen_overflows and (time.monotonic() < deadline):
            time.sleep(0.05)
            after = listen_overflows()
    finally:
        for c in clients:
            c.close()
        srv.close()
    assert after.listen_overflows > before.listen_overflows
    assert after.listen_drops - before.listen_drops >= 1
    assert after.listen_drops >= after.listen_overflows
