"""Full socket records (inet_diag_records) against connections the test made."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator

import pytest
from linux_inet_diag import (
    AddressError,
    ArgumentError,
    AsyncDiagSocket,
    DiagSocket,
    SocketRecord,
    TcpInfo,
    TcpState,
    inet_diag_records,
)

pytestmark = pytest.mark.linux
STABLE = ("state", "snd_wscale", "rcv_wscale", "snd_mss", "rcv_mss", "advmss", "pmtu", "options",
          "bytes_received", "data_segs_in", "size")  # fmt: skip


class Served:
    """A listener (backlog 7) with two accepted connections and one waiting."""

    def __init__(self) -> None:
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(7)
        self.srv.settimeout(5)
        self.name = f"127.0.0.1:{self.srv.getsockname()[1]}"
        self.clients = [
            socket.create_connection(self.srv.getsockname(), timeout=5) for _ in range(3)
        ]
        self.accepted = [self.srv.accept()[0] for _ in range(2)]
        self.clients[0].sendall(b"y" * 300)
        assert self.accepted[0].recv(1000) == b"y" * 300

    def close(self) -> None:
        for s in (*self.accepted, *self.clients, self.srv):
            s.close()


@pytest.fixture
def served() -> Iterator[Served]:
    sv = Served()
    try:
        yield sv
    finally:
        sv.close()


def peer_name(s: socket.socket) -> str:
    host, port = s.getpeername()[:2]
    return f"{host}:{port}"


def test_records_of_a_listener_and_its_connections(served: Served) -> None:
    """Listener, accepted and waiting sockets come back whole, checked against the kernel."""
    recs = inet_diag_records(served.name)
    listen = [r for r in recs if r.state is TcpState.LISTEN]
    established = [r for r in recs if r.state is TcpState.ESTABLISHED]
    assert len(recs) == 4
    assert [(r.local, r.receive_queue, r.send_queue) for r in listen] == [(served.name, 1, 7)]
    assert listen[0].inode == os.fstat(served.srv.fileno()).st_ino
    by_remote = {r.remote: r for r in established}
    assert sorted(by_remote) == sorted(f"127.0.0.1:{c.getsockname()[1]}" for c in served.clients)
    waiting = by_remote[f"127.0.0.1:{served.clients[2].getsockname()[1]}"]
    assert waiting.inode == 0  # not accepted yet
    for conn in served.accepted:
        rec = by_remote[peer_name(conn)]
        assert (rec.family, rec.local, rec.uid) == (socket.AF_INET, served.name, os.getuid())
        assert rec.inode == os.fstat(conn.fileno()).st_ino
        assert rec.tcp_info is not None
        direct = TcpInfo.from_socket(conn)
        assert {f: getattr(rec.tcp_info, f) for f in STABLE} == {
            f: getattr(direct, f) for f in STABLE
        }
        cong = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16)
        assert rec.attrs["INET_DIAG_CONG"] == cong.rstrip(b"\0").decode()
        assert set(rec.attrs["INET_DIAG_MEMINFO"]) == {
            "idiag_rmem", "idiag_wmem", "idiag_fmem", "idiag_tmem",
        }  # fmt: skip
        assert TcpInfo.from_bytes(rec.raw_attrs[2]) == rec.tcp_info  # INET_DIAG_INFO
    first = by_remote[peer_name(served.accepted[0])]
    assert first.tcp_info is not None
    assert first.tcp_info.bytes_received == 300


def test_records_are_read_only(served: Served) -> None:
    """A record and its attribute mappings cannot be changed."""
    rec = inet_diag_records(served.name, states=[TcpState.LISTEN])[0]
    assert isinstance(rec, SocketRecord)
    with pytest.raises(TypeError):
        rec.attrs["x"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        rec.raw_attrs[99] = b""  # type: ignore[index]
    with pytest.raises(AttributeError):
        rec.inode = 1  # type: ignore[misc]


def test_records_filtered_by_state_and_family(served: Served) -> None:
    """states and family narrow the dump; a wildcard name matches every local address."""
    port = served.srv.getsockname()[1]
    listening = inet_diag_records(served.name, states=[TcpState.LISTEN])
    assert [(r.state, r.local) for r in listening] == [(TcpState.LISTEN, served.name)]
    wild = inet_diag_records(f"0.0.0.0:{port}", states=[TcpState.ESTABLISHED])
    assert {r.remote for r in wild} == {peer_name(c) for c in served.accepted} | {
        f"127.0.0.1:{served.clients[2].getsockname()[1]}"
    }
    assert inet_diag_records(served.name, family=socket.AF_INET6) == []
    assert inet_diag_records(f"[::1]:{port}") == []


def test_records_sync_and_async_agree(served: Served) -> None:
    """DiagSocket.records and AsyncDiagSocket.records return the same sockets."""

    def key(recs: list[SocketRecord]) -> list[tuple[object, ...]]:
        return sorted((r.local, r.remote, int(r.state), r.inode) for r in recs)

    async def main() -> list[SocketRecord]:
        async with AsyncDiagSocket() as diag:
            return await diag.records([served.name])

    with DiagSocket() as diag:
        sync = diag.records([served.name])
    assert key(asyncio.run(main())) == key(sync)
    assert len(sync) == 4


def test_records_bad_arguments() -> None:
    """Bad names, states and families raise errors naming the value and what is allowed."""
    with pytest.raises(AddressError, match=r"'/tmp/x': a Unix path; records are TCP only"):
        inet_diag_records("/tmp/x")
    with pytest.raises(ArgumentError, match=r"invalid TCP state 'LISTEN': expected a TcpState"):
        inet_diag_records(states=["LISTEN"])  # type: ignore[list-item]
    with pytest.raises(ArgumentError, match=r"invalid TCP state 99"):
        inet_diag_records(states=[99])
    with pytest.raises(ArgumentError, match=r"states must be None or an iterable"):
        inet_diag_records(states=10)  # type: ignore[arg-type]
    with pytest.raises(
        ArgumentError, match=r"invalid family 99: expected socket.AF_INET, socket.AF_INET6 or None"
    ):
        inet_diag_records(family=99)
