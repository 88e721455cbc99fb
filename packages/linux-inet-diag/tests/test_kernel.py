"""Sans-IO core: requests and parsers on bytes captured from Linux 6.18."""

from __future__ import annotations

import errno
import socket
import struct

import pytest
from linux_inet_diag import NetlinkError, TcpInfo, TcpState
from linux_inet_diag import _kernel as k
from linux_inet_diag._address import parse_address
from linux_inet_diag._stats import tally_named, tcp_plan

# Request for "127.0.0.1:40123" (seq 1) and the kernel's two answer datagrams,
# captured as root: one LISTEN (backlog 7, inode 213458) and one not yet
# accepted ESTABLISHED socket (inode 0); each inet_diag_msg is 124 bytes
# because the kernel appended attributes nobody asked for.
REQ = bytes.fromhex(
    "600000001400010301000000000000000206000002040000000000000000000000000000"
    "00000000000000000000000000000000000000000000000000000000ffffffffffffffff"
    "180001000710180002200000bb9c00007f00000101040400"
)
RESP = bytes.fromhex(
    "7c00000014000200010000004f4d0000020a00009cbb00007f0000010000000000000000"
    "0000000000000000000000000000000000000000000000004b0000000000000000000000"
    "010000000700000000000000d2410300050008000000000008000f00000000000c001500"
    "010000000000000006001600520000007c00000014000200010000004f4d000002010000"
    "9cbbc36e7f0000010000000000000000000000007f000001000000000000000000000000"
    "000000004c00000000000000000000000000000000000000000000000000000005000800"
    "0000000008000f00000000000c00150001000000000000000600160052000000"
)
DONE = bytes.fromhex("1400000003000200010000004f4d000000000000")


def test_request_bytes() -> None:
    """The dump request with its source filter matches the captured bytes."""
    ((family, bc, single),) = tcp_plan([parse_address("127.0.0.1:40123")])
    assert single
    assert k.inet_dump_request(family, k.LISTEN_AND_ESTABLISHED, 1, bc) == REQ


def test_source_filter_bytecode() -> None:
    """Two conditions compile to S_COND/JMP pairs with exact jump offsets."""
    v4 = k.HostCond(socket.AF_INET, 32, 80, b"\x7f\0\0\x01")
    any4 = k.HostCond(socket.AF_INET, 0, 81, bytes(4))
    bc = k.source_filter([v4, any4, v4])  # duplicates dropped
    assert bc == (
        struct.pack("=BBH", 7, 16, 20) + struct.pack("=BBxxi", 2, 32, 80) + b"\x7f\0\0\x01"
        + struct.pack("=BBH", 1, 4, 24)
        + struct.pack("=BBH", 7, 16, 24) + struct.pack("=BBxxi", 2, 0, 81) + bytes(4)
        + struct.pack("=BBH", 1, 4, 4)
    )  # fmt: skip


def test_parse_captured_dump() -> None:
    """A captured 124-byte-per-socket dump is stepped by nlmsg_len."""
    chunk = k.parse_inet_dump(RESP)
    src = b"\x7f\0\0\x01" + bytes(12)
    port = socket.htons(40123)
    assert chunk.records == [
        (socket.AF_INET, k.TCP_LISTEN, port, src, 1, 7, 213458),
        (socket.AF_INET, k.TCP_ESTABLISHED, port, src, 0, 0, 0),
    ]
    assert (chunk.done, chunk.interrupted) == (False, False)
    assert k.parse_inet_dump(DONE).done


def test_tally_captured_dump() -> None:
    """The captured listener has 1 queued, 0 active (inode 0), backlog 7."""
    addr = parse_address("127.0.0.1:40123")
    stats = tally_named(["127.0.0.1:40123"], [addr], k.parse_inet_dump(RESP).records)
    assert (stats["127.0.0.1:40123"].active, stats["127.0.0.1:40123"].queued) == (0, 1)
    assert stats["127.0.0.1:40123"].backlog == 7


def test_nlmsg_error_raises_oserror_with_errno() -> None:
    """NLMSG_ERROR with -ENOENT raises NetlinkError carrying errno ENOENT."""
    err = k.nlmsg(k.NLMSG_ERROR, 0, 1, struct.pack("=i", -errno.ENOENT) + REQ[:16])
    with pytest.raises(NetlinkError) as info:
        k.parse_inet_dump(err)
    assert info.value.errno == errno.ENOENT
    assert isinstance(info.value, OSError)


def test_ack_is_not_an_error() -> None:
    """NLMSG_ERROR with error 0 (an ACK) ends the answer without raising."""
    ack = k.nlmsg(k.NLMSG_ERROR, 0, 1, struct.pack("=i", 0) + REQ[:16])
    assert k.parse_inet_dump(ack).done


def test_dump_intr_flag_is_reported() -> None:
    """NLM_F_DUMP_INTR on any message marks the chunk interrupted."""
    flagged = bytearray(RESP)
    struct.pack_into("=H", flagged, 6, k.NLM_F_MULTI | k.NLM_F_DUMP_INTR)
    assert k.parse_inet_dump(bytes(flagged)).interrupted


def test_truncated_message_is_rejected() -> None:
    """A message whose nlmsg_len runs past the datagram raises EPROTO."""
    with pytest.raises(NetlinkError) as info:
        k.parse_inet_dump(RESP[:100])
    assert info.value.errno == errno.EPROTO


def test_unix_request_and_parse_round_trip() -> None:
    """A unix_diag record with NAME and RQLEN attributes parses to its fields."""
    assert k.unix_dump_request(1 << 10, 0x11, 5) == k.nlmsg(
        20, 0x301, 5, struct.pack("=BBxxIIIII", 1, 0, 1024, 0, 0x11, 2**32 - 1, 2**32 - 1)
    )
    body = struct.pack("=BBBxIII", 1, 1, 10, 4242, 0, 0)
    body += k.nlattr(k.UNIX_DIAG_NAME, b"/tmp/x.sock\0")
    body += k.nlattr(k.UNIX_DIAG_RQLEN, struct.pack("=II", 3, 128))
    abstract = struct.pack("=BBBxIII", 1, 1, 1, 4243, 0, 0)
    abstract += k.nlattr(k.UNIX_DIAG_NAME, b"\0abs")
    data = k.nlmsg(20, 2, 5, body) + k.nlmsg(20, 2, 5, abstract) + DONE
    socks, done, intr = k.parse_unix_dump(data)
    assert socks == [
        k.UnixSocket(1, 10, 4242, "/tmp/x.sock", 3, 128),
        k.UnixSocket(1, 1, 4243, "@abs", 0, 0),
    ]
    assert (done, intr) == (True, False)


def test_tcp_info_bit_fields() -> None:
    """Byte 6 holds snd_wscale in its low nibble and rcv_wscale in its high one."""
    raw = bytearray(280)
    raw[0] = 1
    raw[6] = 0x97
    raw[7] = 0b101
    struct.pack_into("=I", raw, 8, 204000)  # rto, microseconds
    struct.pack_into("=Q", raw, 160, 12345)  # delivery_rate
    info = TcpInfo.from_bytes(bytes(raw))
    assert (info.snd_wscale, info.rcv_wscale) == (7, 9)
    assert (info.delivery_rate_app_limited, info.fastopen_client_fail) == (1, 2)
    assert (info.state, info.rto, info.delivery_rate) == (TcpState.ESTABLISHED, 204000, 12345)
    assert info.accecn_opt_seen == 0


def test_tcp_info_short_struct() -> None:
    """A 104-byte (Linux 2.6) struct decodes with later fields None."""
    info = TcpInfo.from_bytes(bytes([1]) + bytes(103))
    assert (info.size, info.total_retrans, info.pacing_rate) == (104, 0, None)
    with pytest.raises(ValueError, match="tcp_info of 50 bytes is too short"):
        TcpInfo.from_bytes(bytes(50))


def test_count_uniform_datagram() -> None:
    """Same-sized messages are counted by strided columns: inode 0 is not active."""
    chunk = k.count_inet_dump(RESP)
    assert (chunk.active, chunk.done, chunk.interrupted) == (0, False, False)
    assert [r[1] for r in chunk.listeners] == [k.TCP_LISTEN]
    accepted = bytearray(RESP)
    struct.pack_into("=I", accepted, 124 + 84, 99)  # give the 2nd socket an inode
    struct.pack_into("=H", accepted, 124 + 6, k.NLM_F_MULTI | k.NLM_F_DUMP_INTR)
    chunk = k.count_inet_dump(bytes(accepted * 3))
    assert (chunk.active, len(chunk.listeners), chunk.interrupted) == (3, 3, True)


def test_count_mixed_datagram_falls_back() -> None:
    """A datagram with NLMSG_DONE appended is stepped message by message."""
    accepted = bytearray(RESP)
    struct.pack_into("=I", accepted, 124 + 84, 99)
    chunk = k.count_inet_dump(bytes(accepted) + DONE)
    assert (chunk.active, len(chunk.listeners), chunk.done) == (1, 1, True)


def test_unix_name_attr_and_count() -> None:
    """Names are counted by their exact UNIX_DIAG_NAME attribute, paths and abstract."""
    assert k.unix_name_attr("/a") == b"\x07\x00\x00\x00/a\x00"
    assert k.unix_name_attr("@ab") == b"\x07\x00\x00\x00\x00ab"

    def msg(name: bytes) -> bytes:
        body = struct.pack("=BBBxIII", 1, 1, 1, 7, 0, 0) + k.nlattr(0, name)
        return k.nlmsg(20, 2, 9, body)

    data = msg(b"/a\0") + msg(b"/a\0") + msg(b"/ab\0") + msg(b"\0ab") + DONE
    needles = {n: k.unix_name_attr(n) for n in ("/a", "/ab", "@ab", "/none")}
    counts, done, intr = k.count_unix_names(data, needles)
    assert counts == {"/a": 2, "/ab": 1, "@ab": 1, "/none": 0}
    assert (done, intr) == (True, False)


def test_constants_match_pyroute2() -> None:
    """The mirrored kernel constants agree with pyroute2's."""
    from pyroute2 import netlink
    from pyroute2.netlink import diag

    assert k.NETLINK_SOCK_DIAG == netlink.NETLINK_SOCK_DIAG
    assert (k.NLMSG_ERROR, k.NLMSG_DONE) == (netlink.NLMSG_ERROR, netlink.NLMSG_DONE)
    assert k.NLM_F_DUMP == netlink.NLM_F_DUMP
    assert k.NLM_F_DUMP_INTR == netlink.NLM_F_DUMP_INTR
    assert k.SOCK_DIAG_BY_FAMILY == diag.SOCK_DIAG_BY_FAMILY
    assert (k.TCP_ESTABLISHED, k.TCP_LISTEN) == (diag.SS_ESTABLISHED, diag.SS_LISTEN)
    assert (k.UDIAG_SHOW_NAME, k.UDIAG_SHOW_RQLEN) == (
        diag.UDIAG_SHOW_NAME,
        diag.UDIAG_SHOW_RQLEN,
    )
