"""TcpInfo against getsockopt(TCP_INFO) and inet_diag on the same connection."""

from __future__ import annotations

import asyncio
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator

import pytest
from linux_inet_diag import AddressError, AsyncDiagSocket, TcpInfo, TcpState, tcp_info_for

# Receive buffers set before listen()/connect() fix each end's window scale
# (tcp_select_initial_window): the server end gets a larger one than the
# client end, so a snd/rcv swap cannot go unnoticed.
SERVER_RCVBUF = 1 << 20
CLIENT_RCVBUF = 1 << 16
pytestmark = pytest.mark.linux
STABLE = ("state", "ca_state", "snd_wscale", "rcv_wscale", "snd_mss", "rcv_mss", "advmss",
          "pmtu", "options", "bytes_received", "segs_in", "data_segs_in", "size")  # fmt: skip


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(accepted server end, client end) of a loopback connection; 1000 bytes sent."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SERVER_RCVBUF)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    cli = socket.socket()
    cli.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)
    cli.settimeout(5)
    cli.connect(srv.getsockname())
    srv.settimeout(5)
    conn, _ = srv.accept()
    try:
        cli.sendall(b"x" * 1000)
        assert conn.recv(2000)
        # Wait (bounded) for the client to see its data acknowledged, so no
        # segment is in flight while tests compare two reads of a counter.
        deadline = time.monotonic() + 5
        while TcpInfo.from_socket(cli).unacked and time.monotonic() < deadline:
            time.sleep(0.01)
        yield conn, cli
    finally:
        for s in (conn, cli, srv):
            s.close()


def test_from_socket_matches_raw_getsockopt(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """Every field decoded equals the raw struct read by hand at its offset."""
    conn, _ = pair
    raw = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 512)
    info = TcpInfo.from_socket(conn)
    assert info.size == len(raw)
    assert info.state is TcpState.ESTABLISHED
    assert info.snd_wscale == raw[6] & 0x0F
    assert info.rcv_wscale == raw[6] >> 4
    assert info.rto == struct.unpack_from("=I", raw, 8)[0]
    assert info.snd_mss == struct.unpack_from("=I", raw, 16)[0]
    assert info.pmtu == struct.unpack_from("=I", raw, 60)[0]
    assert info.total_retrans == struct.unpack_from("=I", raw, 100)[0]
    assert info.bytes_received == struct.unpack_from("=Q", raw, 128)[0] == 1000
    if info.size >= 168:
        assert info.delivery_rate == struct.unpack_from("=Q", raw, 160)[0]
    n_fields = sum(v is not None for v in info.as_dict().values()) - 1  # minus size
    assert n_fields >= 60 if info.size >= 248 else n_fields >= 32


def ss_wscale(local: tuple[str, int], remote: tuple[str, int]) -> str:
    """The ``wscale:SND,RCV`` that ``ss -ti`` prints for one connection."""
    out = subprocess.run(
        ["ss", "-Htni", "state", "established",
         "sport", f"= :{local[1]}", "dport", f"= :{remote[1]}"],
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout  # fmt: skip
    (field,) = [w for w in out.split() if w.startswith("wscale:")]
    return field


def test_wscales_differ_per_end_and_match_ss(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """Each end's snd/rcv window scales are the other's rcv/snd, as ss -ti reports them."""
    if shutil.which("ss") is None:
        pytest.skip("ss (iproute2) is not installed")
    conn, cli = pair
    server, client = TcpInfo.from_socket(conn), TcpInfo.from_socket(cli)
    assert server.options & 4
    assert client.options & 4
    assert server.snd_wscale != server.rcv_wscale
    assert (server.snd_wscale, server.rcv_wscale) == (client.rcv_wscale, client.snd_wscale)
    assert server.rcv_wscale > client.rcv_wscale  # the bigger buffer, the bigger scale
    assert ss_wscale(conn.getsockname(), conn.getpeername()) == (
        f"wscale:{server.snd_wscale},{server.rcv_wscale}"
    )
    assert ss_wscale(cli.getsockname(), cli.getpeername()) == (
        f"wscale:{client.snd_wscale},{client.rcv_wscale}"
    )
    via_diag = tcp_info_for(conn.getsockname(), conn.getpeername())
    assert via_diag is not None
    assert (via_diag.snd_wscale, via_diag.rcv_wscale) == (server.snd_wscale, server.rcv_wscale)


def test_tcp_info_for_matches_getsockopt(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """The inet_diag lookup by address pair returns the same connection's info."""
    conn, _ = pair
    local, remote = conn.getsockname(), conn.getpeername()
    via_diag = tcp_info_for(local, remote)
    direct = TcpInfo.from_socket(conn)
    assert via_diag is not None
    assert {f: getattr(via_diag, f) for f in STABLE} == {f: getattr(direct, f) for f in STABLE}
    as_strings = tcp_info_for(f"{local[0]}:{local[1]}", f"{remote[0]}:{remote[1]}")
    assert as_strings is not None
    assert as_strings.bytes_received == 1000


def test_async_tcp_info_for_finds_the_connection(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """AsyncDiagSocket.tcp_info_for finds a real connection; fields match getsockopt."""
    conn, cli = pair

    async def main() -> tuple[TcpInfo | None, TcpInfo | None]:
        async with AsyncDiagSocket() as diag:
            server = await diag.tcp_info_for(conn.getsockname(), conn.getpeername())
            client = await diag.tcp_info_for(cli.getsockname(), cli.getpeername())
            return server, client

    server, client = asyncio.run(main())
    assert server is not None
    assert client is not None
    for got, sock in ((server, conn), (client, cli)):
        direct = TcpInfo.from_socket(sock)
        assert {f: getattr(got, f) for f in STABLE} == {f: getattr(direct, f) for f in STABLE}
    assert server.bytes_received == 1000
    assert (server.snd_wscale, server.rcv_wscale) == (client.rcv_wscale, client.snd_wscale)


def test_tcp_info_for_absent_and_bad_input() -> None:
    """No such connection gives None; malformed pairs raise AddressError."""
    assert tcp_info_for(("127.0.0.1", 1), ("127.0.0.1", 2)) is None
    with pytest.raises(AddressError, match="expected \\(host, port\\)"):
        tcp_info_for(("127.0.0.1",), ("127.0.0.1", 2))  # type: ignore[arg-type]
    with pytest.raises(AddressError, match="'localhost' is not an IP"):
        tcp_info_for(("localhost", 80), ("127.0.0.1", 2))
    with pytest.raises(AddressError, match="different families"):
        tcp_info_for(("::1", 80), ("127.0.0.1", 2))


def test_listener_state_name() -> None:
    """A listening socket reports TcpState.LISTEN with the kernel's name."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        assert TcpInfo.from_socket(srv).state.name == "LISTEN"
