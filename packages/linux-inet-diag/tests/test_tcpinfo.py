"""TcpInfo against getsockopt(TCP_INFO) and inet_diag on the same connection."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest
from linux_inet_diag import AddressError, TcpInfo, TcpState, tcp_info_for

pytestmark = pytest.mark.linux


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    srv = socket.create_server(("127.0.0.1", 0))
    cli = socket.create_connection(srv.getsockname(), timeout=5)
    srv.settimeout(5)
    conn, _ = srv.accept()
    try:
        cli.sendall(b"x" * 1000)
        assert conn.recv(2000)
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


def test_wscale_nibbles_follow_the_kernel(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """Loopback negotiates window scaling: rcv_wscale is the high nibble."""
    conn, _ = pair
    info = TcpInfo.from_socket(conn)
    assert info.options & 4  # TCPI_OPT_WSCALE
    assert info.rcv_wscale > 0
    assert (info.snd_wscale, info.rcv_wscale) != (0, 0)


def test_tcp_info_for_matches_getsockopt(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """The inet_diag lookup by address pair returns the same connection's info."""
    conn, _ = pair
    local, remote = conn.getsockname(), conn.getpeername()
    via_diag = tcp_info_for(local, remote)
    direct = TcpInfo.from_socket(conn)
    assert via_diag is not None
    stable = ("state", "snd_wscale", "rcv_wscale", "snd_mss", "rcv_mss", "advmss",
              "pmtu", "options", "bytes_received", "segs_in", "size")  # fmt: skip
    assert {f: getattr(via_diag, f) for f in stable} == {f: getattr(direct, f) for f in stable}
    as_strings = tcp_info_for(f"{local[0]}:{local[1]}", f"{remote[0]}:{remote[1]}")
    assert as_strings is not None
    assert as_strings.bytes_received == 1000


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
