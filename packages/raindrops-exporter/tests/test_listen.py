"""The LISTEN-only sock_diag dump: the kernel's listening sockets, as linux-inet-diag reads them."""

from __future__ import annotations

import socket
import struct

import pytest
from linux_inet_diag import TcpState, inet_diag_records
from raindrops_exporter._listen import TcpListener, parse_dump

pytestmark = pytest.mark.linux


def test_the_dump_equals_linux_inet_diags_records_of_listen_sockets() -> None:
    """Inode, name, queued and backlog of every listener equal inet_diag_records(LISTEN)'s."""
    from raindrops_exporter._listen import tcp_listeners

    with (
        socket.create_server(("127.0.0.1", 0), backlog=7) as v4,
        socket.create_server(("::1", 0), family=socket.AF_INET6, backlog=3) as v6,
    ):
        waiting = socket.create_connection(v4.getsockname())
        try:
            ours = sorted((s.inode, s.name, s.queued, s.backlog) for s in tcp_listeners())
            records = inet_diag_records(states=[TcpState.LISTEN])
            theirs = sorted(
                (r.inode, r.local, r.receive_queue, r.send_queue) for r in records if r.inode
            )
        finally:
            waiting.close()
        assert ours == theirs
        names = {s[1]: s for s in ours}
        assert names[f"127.0.0.1:{v4.getsockname()[1]}"][2:] == (1, 7)
        assert names[f"[::1]:{v6.getsockname()[1]}"][2:] == (0, 3)


def _message(family: int, port: int, address: bytes, rq: int, wq: int, inode: int) -> bytes:
    body = struct.pack(
        "=BBBB2s2s16s16sI8sIIIII",
        family,
        10,
        0,
        0,
        port.to_bytes(2, "big"),
        b"\0\0",
        address.ljust(16, b"\0"),
        b"\0" * 16,
        0,
        b"\0" * 8,
        0,
        rq,
        wq,
        0,
        inode,
    )
    return struct.pack("=IHHII", 16 + len(body), 20, 2, 1, 0) + body


def test_messages_parse_to_names_queues_and_inodes() -> None:
    """Captured-shape messages: IPv4 and IPv6 names, queue and backlog, DONE ends the dump."""
    data = (
        _message(socket.AF_INET, 8000, bytes([127, 0, 0, 1]), 3, 16, 4242)
        + _message(socket.AF_INET6, 8001, socket.inet_pton(socket.AF_INET6, "::1"), 0, 5, 4243)
        + _message(socket.AF_INET, 8002, bytes(4), 0, 5, 0)  # no inode: not a socket of a process
        + struct.pack("=IHHII", 20, 3, 2, 1, 0)
        + b"\0\0\0\0"
    )
    out: list[TcpListener] = []
    assert parse_dump(data, out) == (True, False)
    assert out == [
        TcpListener(4242, "127.0.0.1:8000", 3, 16),
        TcpListener(4243, "[::1]:8001", 0, 5),
    ]


def test_a_netlink_error_is_raised_with_its_errno() -> None:
    """An NLMSG_ERROR answer raises OSError carrying the kernel's errno."""
    data = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -13) + b"\0" * 16
    with pytest.raises(PermissionError) as caught:
        parse_dump(data, [])
    assert caught.value.errno == 13


def test_unix_listeners_equal_linux_inet_diags_queues(tmp_path: object) -> None:
    """A Unix listener with one waiting peer: queued 1 and backlog, as unix_listener_stats says."""
    import os

    from linux_inet_diag import unix_listener_stats
    from raindrops_exporter._listen import unix_listeners

    path = os.path.join(str(tmp_path), "srv.sock")
    with socket.socket(socket.AF_UNIX) as srv, socket.socket(socket.AF_UNIX) as peer:
        srv.bind(path)
        srv.listen(6)
        peer.connect(path)
        (ours,) = [s for s in unix_listeners() if s.name == path]
        theirs = unix_listener_stats([path])[path]
        assert (ours.queued, ours.backlog) == (theirs.queued, theirs.backlog) == (1, 6)
        assert ours.inode == os.fstat(srv.fileno()).st_ino
