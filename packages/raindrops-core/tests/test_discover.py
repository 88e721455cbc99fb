"""Finding the listening sockets among the process's own descriptors."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from raindrops_core import InheritedListener, discover_listeners, socket_name

pytestmark = pytest.mark.linux


@pytest.fixture
def listeners(tmp_path: Path) -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    try:
        v4 = socket.socket(socket.AF_INET)
        socks.append(v4)
        v4.bind(("127.0.0.1", 0))
        v4.listen(8)
        v6 = socket.socket(socket.AF_INET6)
        socks.append(v6)
        v6.bind(("::1", 0))
        v6.listen(8)
        unix = socket.socket(socket.AF_UNIX)
        socks.append(unix)
        unix.bind(str(tmp_path / "s.sock"))
        unix.listen(8)
        abstract = socket.socket(socket.AF_UNIX)
        socks.append(abstract)
        abstract.bind(f"\0rd-test-{os.getpid()}")
        abstract.listen(8)
        yield socks
    finally:
        for s in socks:
            s.close()


def _mine(socks: list[socket.socket]) -> list[InheritedListener]:
    fds = {s.fileno() for s in socks}
    return [found for found in discover_listeners() if found.fd in fds]


def test_finds_tcp_v4_v6_unix_and_abstract_listeners(
    listeners: list[socket.socket], tmp_path: Path
) -> None:
    """Every listening stream socket is found, named as raindrops names listeners."""
    v4, v6, _, _ = listeners
    assert [(f.fd, f.name, f.inode) for f in _mine(listeners)] == [
        (s.fileno(), name, os.fstat(s.fileno()).st_ino)
        for s, name in zip(
            listeners,
            [
                f"127.0.0.1:{v4.getsockname()[1]}",
                f"[::1]:{v6.getsockname()[1]}",
                str(tmp_path / "s.sock"),
                f"@rd-test-{os.getpid()}",
            ],
            strict=True,
        )
    ]


def test_skips_non_listening_and_datagram_sockets() -> None:
    """Bound-but-not-listening, connected and UDP sockets are not listeners."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    bound = socket.socket(socket.AF_INET)
    a, b = socket.socketpair()
    try:
        udp.bind(("127.0.0.1", 0))
        bound.bind(("127.0.0.1", 0))
        assert _mine([udp, bound, a, b]) == []
    finally:
        for s in (udp, bound, a, b):
            s.close()


def test_a_duplicated_descriptor_counts_once(listeners: list[socket.socket]) -> None:
    """The same socket under two descriptors is one listener, the lowest fd kept."""
    v4 = listeners[0]
    dup = os.dup(v4.fileno())
    try:
        found = [f for f in discover_listeners() if f.fd in (v4.fileno(), dup)]
        assert [f.fd for f in found] == [min(v4.fileno(), dup)]
    finally:
        os.close(dup)


def test_probing_leaves_the_descriptors_open(listeners: list[socket.socket]) -> None:
    """Discovery detaches its probe sockets: the listeners still accept afterwards."""
    discover_listeners()
    v4 = listeners[0]
    with socket.create_connection(v4.getsockname(), timeout=5):
        conn, _ = v4.accept()
        conn.close()


def test_socket_name_drops_ipv6_scope_and_handles_unnamed_unix() -> None:
    """Scope ids are dropped from IPv6 names; an unnamed Unix socket has no name."""
    assert socket_name(socket.AF_INET6, ("fe80::1%eth0", 80, 0, 2)) == "[fe80::1]:80"
    assert socket_name(socket.AF_INET, ("0.0.0.0", 8000)) == "0.0.0.0:8000"
    assert socket_name(socket.AF_UNIX, "") is None
    assert socket_name(socket.AF_UNIX, b"\0abc") == "@abc"


def test_a_worker_ignores_a_listener_it_opened_after_fork(listeners: list[socket.socket]) -> None:
    """In a forked child, only the listeners its parent also holds are reported, unless asked."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            own = socket.socket(socket.AF_INET)
            own.bind(("127.0.0.1", 0))
            own.listen(1)
            inherited = {f.inode for f in discover_listeners()}
            every = {f.inode for f in discover_listeners(prefer_parent=False)}
            own_inode = os.fstat(own.fileno()).st_ino
            report = [own_inode in inherited, own_inode in every, sorted(inherited)]
            os.write(w, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    try:
        answer = os.read(r, 65536).decode()
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    own_reported, own_found, inherited = json.loads(answer)
    ours = {os.fstat(s.fileno()).st_ino for s in listeners}
    assert (own_reported, own_found) == (False, True)
    assert ours <= set(inherited)


def test_without_a_parent_holding_them_every_listener_is_reported(
    listeners: list[socket.socket],
) -> None:
    """This test process's parent holds none of its sockets: all of them are reported."""
    ours = {os.fstat(s.fileno()).st_ino for s in listeners}
    assert ours <= {f.inode for f in discover_listeners()}
    assert {f.inode for f in discover_listeners()} == {
        f.inode for f in discover_listeners(prefer_parent=False)
    }
