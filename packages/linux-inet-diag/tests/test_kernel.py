"""Sans-IO core: requests and parsers on bytes captured from Linux 6.18."""

from __future__ import annotations

import errno
import functools
import socket
import struct
from itertools import count

import pytest
from linux_inet_diag import (
    DumpInterruptedError,
    ListenStats,
    NetlinkError,
    TcpCaState,
    TcpInfo,
    TcpInfoLengthError,
    TcpState,
    _count,
    _stats,
)
from linux_inet_diag import _kernel as k
from linux_inet_diag._address import parse_address
from linux_inet_diag._stats import (
    kernel_dev,
    parse_proc_net_unix,
    tally_named,
    tally_proc_unix,
    tcp_plan,
    unix_answer,
    unix_plan,
)
from linux_inet_diag._steps import MAX_ATTEMPTS, Dump
from linux_inet_diag._tcpinfo import _FIELDS

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
    records, done, interrupted = k.parse_inet_dump(RESP)
    src = b"\x7f\0\0\x01" + bytes(12)
    port = socket.htons(40123)
    assert records == [
        (socket.AF_INET, k.TCP_LISTEN, port, src, 1, 7, 213458),
        (socket.AF_INET, k.TCP_ESTABLISHED, port, src, 0, 0, 0),
    ]
    assert (done, interrupted) == (False, False)
    assert k.parse_inet_dump(DONE) == ([], True, False)


def test_tally_captured_dump() -> None:
    """The captured listener has 1 queued, 0 active (inode 0), backlog 7."""
    addr = parse_address("127.0.0.1:40123")
    stats = tally_named(["127.0.0.1:40123"], [addr], k.parse_inet_dump(RESP)[0])
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
    assert k.parse_inet_dump(ack) == ([], True, False)


def test_dump_intr_flag_is_reported() -> None:
    """NLM_F_DUMP_INTR on any message marks the chunk interrupted."""
    flagged = bytearray(RESP)
    struct.pack_into("=H", flagged, 6, k.NLM_F_MULTI | k.NLM_F_DUMP_INTR)
    records, done, interrupted = k.parse_inet_dump(bytes(flagged))
    assert (len(records), done, interrupted) == (2, False, True)


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


# -- the one walk over a datagram ----------------------------------------------


def test_messages_steps_by_nlmsg_len_and_reports_done() -> None:
    """The captured dump's two 124-byte messages are found; NLMSG_DONE ends the answer."""
    assert k.messages(RESP) == k.Messages([(0, 124), (124, 248)], done=False, interrupted=False)
    assert k.messages(RESP + DONE) == ([(0, 124), (124, 248)], True, False)
    assert k.messages(DONE) == ([], True, False)
    assert k.messages(b"") == ([], False, False)
    assert k.messages(RESP + bytes(8)) == ([(0, 124), (124, 248)], False, False)  # < a header


def test_messages_without_spans_still_checks_and_reports() -> None:
    """body=None lists no spans, yet still sees the end, NLM_F_DUMP_INTR and bad lengths."""
    assert k.messages(RESP + DONE, body=None) == ([], True, False)
    flagged = bytearray(RESP)
    struct.pack_into("=H", flagged, 124 + 6, k.NLM_F_MULTI | k.NLM_F_DUMP_INTR)
    assert k.messages(bytes(flagged), body=None) == ([], False, True)
    with pytest.raises(NetlinkError, match=r"at byte 0 of 100: length 124"):
        k.messages(RESP[:100], body=None)


def test_messages_reports_dump_intr_on_any_message() -> None:
    """NLM_F_DUMP_INTR on any one message, NLMSG_DONE's included, marks the datagram."""
    for at in (6, 124 + 6, 248 + 6):
        flagged = bytearray(RESP + DONE)
        struct.pack_into("=H", flagged, at, k.NLM_F_MULTI | k.NLM_F_DUMP_INTR)
        assert k.messages(bytes(flagged)) == ([(0, 124), (124, 248)], True, True)


def test_messages_rejects_truncated_messages() -> None:
    """A message cut short, shorter than its header or than its struct raises EPROTO saying so."""
    with pytest.raises(NetlinkError, match=r"at byte 0 of 100: length 124, expected 16 to 100"):
        k.messages(RESP[:100])
    tiny = bytearray(RESP)
    struct.pack_into("=I", tiny, 124, 8)  # nlmsg_len 8: less than the header itself
    with pytest.raises(NetlinkError, match=r"at byte 124 of 248: length 8, expected 16 to 124"):
        k.messages(bytes(tiny))
    with pytest.raises(NetlinkError, match=r"at byte 0 of 248: length 124, expected 216") as err:
        k.messages(RESP, body=200)
    assert err.value.errno == errno.EPROTO
    assert k.messages(RESP, body=k.INET_DIAG_MSG.size).spans == [(0, 124), (124, 248)]


def test_messages_raises_the_kernels_error_and_takes_an_ack_as_done() -> None:
    """NLMSG_ERROR raises its errno; error 0 (an ACK) ends the answer; a cut one is EPROTO."""
    err = k.nlmsg(k.NLMSG_ERROR, 0, 1, struct.pack("=i", -errno.EINVAL) + REQ[:16])
    with pytest.raises(NetlinkError, match="Invalid argument") as info:
        k.messages(RESP + err)
    assert info.value.errno == errno.EINVAL
    ack = k.nlmsg(k.NLMSG_ERROR, 0, 1, struct.pack("=i", 0) + REQ[:16])
    assert k.messages(RESP + ack) == ([(0, 124), (124, 248)], True, False)
    with pytest.raises(NetlinkError, match=r"truncated NLMSG_ERROR \(16 bytes\)") as info:
        k.messages(k.nlmsg(k.NLMSG_ERROR, 0, 1, b""))
    assert info.value.errno == errno.EPROTO


def test_messages_step_to_the_next_four_byte_boundary() -> None:
    """After a message whose nlmsg_len is not a multiple of 4, the next starts 4-aligned."""
    odd = k.nlmsg(k.SOCK_DIAG_BY_FAMILY, k.NLM_F_MULTI, 1, bytes(18))  # nlmsg_len 34
    assert len(odd) == 34
    data = odd + bytes(2) + RESP[:124] + DONE
    assert k.messages(data) == ([(0, 34), (36, 160)], True, False)
    # The payload stops at nlmsg_len: the pad is not part of the message.
    attr = k.nlattr(k.UNIX_DIAG_NAME, b"@ab")  # nla_len 7, padded to 8
    assert attr == b"\x07\x00\x00\x00@ab\x00"
    assert list(k.iter_attrs(attr + attr, 0, 16)) == [(0, b"@ab"), (0, b"@ab")]


def test_hot_records_are_named() -> None:
    """parse_inet_dump's records read by field name and unpack as the 7-tuples they equal."""
    (listen, waiting), _, _ = k.parse_inet_dump(RESP)
    assert isinstance(listen, k.InetRecord)
    assert (listen.family, listen.state, socket.ntohs(listen.sport_raw)) == (
        socket.AF_INET, k.TCP_LISTEN, 40123,
    )  # fmt: skip
    assert (listen.src, listen.rqueue, listen.wqueue, listen.inode) == (
        socket.inet_aton("127.0.0.1") + bytes(12), 1, 7, 213458,
    )  # fmt: skip
    family, state, _sport, _src, _rq, _wq, inode = waiting
    assert (family, state, inode) == (socket.AF_INET, k.TCP_ESTABLISHED, 0)
    (counted,) = _count.count_inet_dump(RESP).listeners
    assert counted == listen
    assert counted.inode == 213458


def test_full_view_of_a_message_matches_the_hot_one() -> None:
    """inet_socket reads the captured messages' fields as the hot records do, and the rest."""
    hot, _, _ = k.parse_inet_dump(RESP)
    for (start, end), rec in zip(k.messages(RESP).spans, hot, strict=True):
        s = k.inet_socket(RESP, start, end)
        assert (s.family, s.state, socket.htons(s.sport), s.src) == rec[:4]
        assert (s.rqueue, s.wqueue, s.inode) == (rec.rqueue, rec.wqueue, rec.inode)
        assert sorted(s.attrs) == [8, 15, 21, 22]  # appended unasked, as root
    listener = k.inet_socket(RESP, 0, 124)
    assert (listener.dport, listener.dst, listener.uid) == (0, bytes(16), 0)


def test_parse_inet_full_honours_dump_intr() -> None:
    """An inet_diag answer carrying NLM_F_DUMP_INTR says so (and still parses)."""
    flagged = bytearray(INFO_RESP)
    struct.pack_into("=H", flagged, 6, k.NLM_F_DUMP_INTR)
    socks, done, interrupted = k.parse_inet_full(bytes(flagged))
    assert (len(socks), done, interrupted) == (1, False, True)
    assert socks[0].inode == 303272
    assert k.parse_inet_full(INFO_RESP + DONE)[1:] == (True, False)


def test_flags_column_is_the_byte_holding_dump_intr() -> None:
    """The strided parsers read NLM_F_DUMP_INTR from the byte of nlmsg_flags that holds it."""
    header = k.NLMSGHDR.pack(16, k.NLMSG_DONE, k.NLM_F_DUMP_INTR, 0, 0)
    assert header[_count._FLAGS_LOW] == k.NLM_F_DUMP_INTR


# -- one dump's retries (_steps.Dump) ------------------------------------------


def interrupted(datagram: bytes) -> bytes:
    """``datagram`` with NLM_F_DUMP_INTR set on its first message, as the kernel sets it."""
    out = bytearray(datagram)
    (flags,) = struct.unpack_from("=H", out, 6)
    struct.pack_into("=H", out, 6, flags | k.NLM_F_DUMP_INTR)
    return bytes(out)


def listen_dump() -> Dump:
    """One LISTEN dump's bookkeeping, its datagrams parsed by parse_inet_dump."""
    return Dump(
        functools.partial(k.inet_dump_request, socket.AF_INET, 1 << k.TCP_LISTEN), k.parse_inet_dump
    )


def test_an_uninterrupted_dump_is_run_once() -> None:
    """Datagrams fed until NLMSG_DONE are the answer; no second request is made."""
    dump = listen_dump()
    seq = count(1).__next__
    assert dump.request(seq) == k.inet_dump_request(socket.AF_INET, 1 << k.TCP_LISTEN, 1)
    assert dump.feed(RESP) is False
    assert dump.feed(DONE) is True
    assert dump.request(seq) is None
    assert [r.inode for r in dump.items] == [213458, 0]
    assert dump.attempts == 1


def test_an_interrupted_dump_is_run_again_and_its_items_dropped() -> None:
    """A datagram with NLM_F_DUMP_INTR makes a new request; only the clean attempt's items stay."""
    dump = listen_dump()
    seq = count(1).__next__
    dump.request(seq)
    dump.feed(interrupted(RESP))
    dump.feed(DONE)
    again = dump.request(seq)
    assert again == k.inet_dump_request(socket.AF_INET, 1 << k.TCP_LISTEN, 2)
    assert dump.items == []
    dump.feed(RESP + DONE)
    assert dump.request(seq) is None
    assert len(dump.items) == 2
    assert dump.attempts == 2


def test_a_dump_interrupted_every_time_gives_up() -> None:
    """After MAX_ATTEMPTS interrupted attempts in a row, DumpInterruptedError (EINTR) is raised."""
    dump = listen_dump()
    seq = count(1).__next__
    for _ in range(MAX_ATTEMPTS):
        assert dump.request(seq) is not None
        dump.feed(RESP)
        dump.feed(interrupted(DONE))  # the flag on NLMSG_DONE counts too
    with pytest.raises(DumpInterruptedError, match="interrupted 5 times in a row") as err:
        dump.request(seq)
    assert err.value.errno == errno.EINTR
    assert isinstance(err.value, OSError)


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
    """A 104-byte (Linux 2.6) struct decodes with later fields None; less is an error."""
    info = TcpInfo.from_bytes(bytes([1]) + bytes(103))
    assert (info.size, info.total_retrans, info.pacing_rate) == (104, 0, None)
    with pytest.raises(TcpInfoLengthError) as err:
        TcpInfo.from_bytes(bytes(50))
    assert isinstance(err.value, ValueError)
    assert (err.value.length, err.value.needed) == (50, 104)
    assert str(err.value) == "tcp_info of 50 bytes is too short: at least 104 bytes needed"


def test_tcp_info_unknown_states_stay_ints() -> None:
    """A state number newer than TcpState (and a ca_state beyond TcpCaState) stays an int."""
    info = TcpInfo.from_bytes(bytes([42, 9]) + bytes(102))
    assert (info.state, info.ca_state) == (42, 9)
    assert type(info.state) is int
    assert type(info.ca_state) is int
    known = TcpInfo.from_bytes(bytes([10, 3]) + bytes(102))
    assert known.state is TcpState.LISTEN
    assert known.ca_state is TcpCaState.RECOVERY


def test_count_uniform_datagram() -> None:
    """Same-sized messages are counted by strided columns: inode 0 is not active."""
    chunk = _count.count_inet_dump(RESP)
    assert (chunk.active, chunk.done, chunk.interrupted) == (0, False, False)
    assert [r[1] for r in chunk.listeners] == [k.TCP_LISTEN]
    accepted = bytearray(RESP)
    struct.pack_into("=I", accepted, 124 + 84, 99)  # give the 2nd socket an inode
    struct.pack_into("=H", accepted, 124 + 6, k.NLM_F_MULTI | k.NLM_F_DUMP_INTR)
    chunk = _count.count_inet_dump(bytes(accepted * 3))
    assert (chunk.active, len(chunk.listeners), chunk.interrupted) == (3, 3, True)


@pytest.mark.parametrize("inode", [1, 1 << 8, 1 << 16, 1 << 24, 0xFFFFFFFF])
def test_count_uniform_sees_every_byte_of_the_inode(inode: int) -> None:
    """An inode whose only set bits are in any one of its four bytes counts as accepted."""
    accepted = bytearray(RESP)
    struct.pack_into("=I", accepted, 124 + 84, inode)
    other = bytearray(RESP)  # inode 0: not yet accepted
    chunk = _count.count_inet_dump(bytes(accepted + other + accepted))
    assert (chunk.active, len(chunk.listeners), chunk.interrupted) == (2, 3, False)


def test_count_uniform_every_message_interrupted() -> None:
    """NLM_F_DUMP_INTR on every message (one flags value throughout) is seen too."""
    flagged = bytearray(RESP)
    for at in (6, 124 + 6):
        struct.pack_into("=H", flagged, at, k.NLM_F_MULTI | k.NLM_F_DUMP_INTR)
    assert _count.count_inet_dump(bytes(flagged)).interrupted
    assert _count.count_targets([(None, 1)], bytes(flagged)).interrupted


def test_count_targets_compares_only_the_four_bytes_an_ipv4_address_has() -> None:
    """In AF_INET messages a target whose bytes after the fourth are not zero matches nothing."""
    accepted = bytearray(RESP)
    struct.pack_into("=I", accepted, 124 + 84, 99)
    loopback = socket.inet_aton("127.0.0.1") + bytes(12)
    stray = socket.inet_aton("127.0.0.1") + b"\1" + bytes(11)
    chunk = _count.count_targets(
        [(loopback, _raw(40123)), (stray, _raw(40123))], bytes(accepted * 2)
    )
    assert chunk.counts == [2, 0]


def test_count_targets_ipv6_compares_all_sixteen_bytes() -> None:
    """AF_INET6 messages: addresses differing only in their last byte are told apart."""
    v6 = bytearray(RESP)
    struct.pack_into("=I", v6, 124 + 84, 99)
    for at in (16, 124 + 16):
        v6[at] = socket.AF_INET6
    here = socket.inet_pton(socket.AF_INET6, "fd00::1")
    there = socket.inet_pton(socket.AF_INET6, "fd00::2")
    v6[124 + 24 : 124 + 40] = here
    chunk = _count.count_targets([(here, _raw(40123)), (there, _raw(40123))], bytes(v6))
    assert chunk.counts == [1, 0]


def test_count_mixed_datagram_falls_back() -> None:
    """A datagram with NLMSG_DONE appended is stepped message by message."""
    accepted = bytearray(RESP)
    struct.pack_into("=I", accepted, 124 + 84, 99)
    chunk = _count.count_inet_dump(bytes(accepted) + DONE)
    assert (chunk.active, len(chunk.listeners), chunk.done) == (1, 1, True)


def _raw(port: int) -> int:
    """A port as parse_inet_dump's records hold it: big-endian bytes read natively."""
    return int(struct.unpack("=H", struct.pack("!H", port))[0])


def test_count_targets_on_a_uniform_datagram() -> None:
    """Same-sized messages are counted per target by bit masks; inode 0 is not active."""
    loopback = socket.inet_aton("127.0.0.1") + bytes(12)
    other = socket.inet_aton("127.0.0.2") + bytes(12)
    targets = [(loopback, _raw(40123)), (None, _raw(40123)), (other, _raw(40123))]
    chunk = _count.count_targets(targets, RESP)
    assert (chunk.counts, chunk.done, chunk.interrupted) == ([0, 0, 0], False, False)
    assert [r[1] for r in chunk.listeners] == [k.TCP_LISTEN]
    accepted = bytearray(RESP)
    struct.pack_into("=I", accepted, 124 + 84, 99)  # give the 2nd socket an inode
    moved = bytearray(accepted)  # and a copy on another address and port
    struct.pack_into("!H", moved, 124 + 20, 8080)
    moved[124 + 24 : 124 + 28] = socket.inet_aton("127.0.0.2")
    struct.pack_into("=H", moved, 124 + 6, k.NLM_F_MULTI | k.NLM_F_DUMP_INTR)
    data = bytes(accepted * 2 + moved)
    targets += [(other, _raw(8080)), (None, _raw(8080)), (loopback, _raw(8080))]
    chunk = _count.count_targets(targets, data)
    assert chunk.counts == [2, 2, 0, 1, 1, 0]
    assert (len(chunk.listeners), chunk.interrupted) == (3, True)
    # The message-by-message path (NLMSG_DONE appended) gives the same counts.
    slow = _count.count_targets(targets, data + DONE)
    assert (slow.counts, slow.listeners, slow.done) == (chunk.counts, chunk.listeners, True)


def test_unix_name_attr_and_count() -> None:
    """Names are counted by their exact UNIX_DIAG_NAME attribute, paths and abstract."""
    assert _count.unix_name_attr("/a") == b"\x07\x00\x00\x00/a\x00"
    assert _count.unix_name_attr("@ab") == b"\x07\x00\x00\x00\x00ab"

    def msg(name: bytes) -> bytes:
        body = struct.pack("=BBBxIII", 1, 1, 1, 7, 0, 0) + k.nlattr(0, name)
        return k.nlmsg(20, 2, 9, body)

    data = msg(b"/a\0") + msg(b"/a\0") + msg(b"/ab\0") + msg(b"\0ab") + DONE
    needles = {n: _count.unix_name_attr(n) for n in ("/a", "/ab", "@ab", "/none")}
    counts, done, intr = _count.count_unix_names(data, needles)
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


# -- inet_diag bytecode at its 16-bit limit -----------------------------------


def run_bytecode(bc: bytes, family: int, addr: bytes, port: int) -> bool:
    """inet_diag_bc_run (net/ipv4/inet_diag.c) for S_COND/JMP programs, in Python.

    Also checks what inet_diag_bc_audit checks: every jump a multiple of 4
    that lands on an operation or at the end (accept) or 4 past it (reject).
    """
    starts = set()
    pos = 0
    while pos < len(bc):
        starts.add(pos)
        pos += struct.unpack_from("=BBH", bc, pos)[1]
    pos, length = 0, len(bc)
    while length > 0:
        code, yes, no = struct.unpack_from("=BBH", bc, pos)
        assert yes % 4 == 0
        assert no % 4 == 0
        assert pos + no in starts or pos + no in (len(bc), len(bc) + 4)
        if code == k.INET_DIAG_BC_JMP:
            ok = False
        else:
            assert code == k.INET_DIAG_BC_S_COND
            cfam, plen, cport = struct.unpack_from("=BBxxi", bc, pos + 4)
            width = 4 if cfam == socket.AF_INET else 16
            want = bc[pos + 12 : pos + 12 + width]
            bits = int.from_bytes(addr[:width], "big") ^ int.from_bytes(want, "big")
            ok = cfam == family and cport == port and bits >> (width * 8 - plen) == 0
        step = yes if ok else no
        pos += step
        length -= step
    return length == 0


def conds(family: int, n: int) -> list[k.HostCond]:
    """``n`` distinct one-address conditions on port 80 (IPv4 10.x or IPv6 fd00::x)."""
    if family == socket.AF_INET:
        return [k.HostCond(family, 32, 80, (0x0A000000 + i).to_bytes(4, "big")) for i in range(n)]
    return [k.HostCond(family, 128, 80, (0xFD << 120 | i).to_bytes(16, "big")) for i in range(n)]


@pytest.mark.parametrize(
    ("family", "fits", "size"), [(socket.AF_INET, 3276, 20), (socket.AF_INET6, 2047, 32)]
)
def test_source_filter_at_its_16_bit_limit(family: int, fits: int, size: int) -> None:
    """The largest program that fits runs right; one condition more gives None."""
    assert k.MAX_BYTECODE == 65531
    many = conds(family, fits)
    bc = k.source_filter(many)
    assert bc is not None
    assert len(bc) == fits * size <= k.MAX_BYTECODE
    for c in (many[0], many[fits // 2], many[-1]):
        assert run_bytecode(bc, family, c.addr + bytes(16 - len(c.addr)), 80)
    assert not run_bytecode(bc, family, bytes(16), 80)
    assert not run_bytecode(bc, family, many[-1].addr + bytes(16 - len(many[-1].addr)), 81)
    request = k.inet_dump_request(family, k.LISTEN_AND_ESTABLISHED, 1, bc)
    assert struct.unpack_from("=H", request, 16 + k.INET_DIAG_REQ_V2.size)[0] == len(bc) + 4
    assert k.source_filter(conds(family, fits + 1)) is None


def test_plan_without_filter_when_names_do_not_fit() -> None:
    """Names beyond one program plan an unfiltered dump of that family only."""
    v4 = [parse_address(f"10.{i >> 8}.{i & 255}.1:80") for i in range(3277)]
    v6 = [parse_address("[::1]:80")]
    plan = tcp_plan(v4 + v6)
    assert [(f, bc == b"", single) for f, bc, single in plan] == [
        (socket.AF_INET, True, False),
        (socket.AF_INET6, False, True),
    ]


def test_tally_of_unfiltered_records_is_exact() -> None:
    """Records of unrelated sockets in an unfiltered dump change no answer."""
    addr = parse_address("127.0.0.1:40123")
    other = parse_address("127.0.0.1:40124")
    unrelated = [
        (socket.AF_INET, k.TCP_LISTEN, socket.htons(40124), other.packed, 5, 9, 77),
        (socket.AF_INET, k.TCP_ESTABLISHED, socket.htons(40124), other.packed, 0, 0, 78),
        (socket.AF_INET, k.TCP_ESTABLISHED, socket.htons(40123), bytes(16), 0, 0, 79),
    ]
    records = k.parse_inet_dump(RESP)[0] + unrelated
    stats = tally_named(["127.0.0.1:40123"], [addr], records)
    assert (stats["127.0.0.1:40123"].active, stats["127.0.0.1:40123"].queued) == (0, 1)
    assert stats["127.0.0.1:40123"].backlog == 7


# -- captured answers ----------------------------------------------------------

# tcp_info_for's exact request and the kernel's answer, captured as root on
# Linux 6.18 by sending k.inet_lookup_request() for a loopback connection
# made for the purpose (127.0.0.1:42081 accepted, peer 127.0.0.1:57838,
# inode 303272; listener SO_RCVBUF 1 MiB, client 4 KiB, client had sent
# 1000 bytes) on a NETLINK_SOCK_DIAG socket and printing recv()'s bytes in
# hex. The kernel appended SHUTDOWN, MARK, CGROUP_ID and type 22 to the
# INET_DIAG_INFO asked for.
INFO_REQ = bytes.fromhex(
    "4800000014000100010000000000000002060200ffffffffa461e1ee7f00000100000000"
    "00000000000000007f00000100000000000000000000000000000000ffffffffffffffff"
)
INFO_RESP = bytes.fromhex(
    "9801000014000000010000005751000002010000a461e1ee7f0000010000000000000000"
    "000000007f00000100000000000000000000000000000000b01700000000000000000000"
    "000000000000000000000000a8a00400050008000000000008000f00000000000c001500"
    "010000000000000006001600520000001c0102000100000000075001400d0300409c0000"
    "00080000e803000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000ffff00001d5c1100170000000b000000ffffff7f0a000000cbff0000"
    "0300000000000000eefd0900000000004080ad9700000000ffffffffffffffff00000000"
    "00000000e803000000000000010000000300000000000000170000000100000000000000"
    "000000000000000000000000000000000000000000000000000000000000000001000000"
    "000000000000000000000000000000000000000000000000000000000000000000100000"
    "205c11000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000"
)


def test_lookup_request_bytes() -> None:
    """tcp_info_for's request for the captured pair matches the captured bytes."""
    lo = socket.inet_aton("127.0.0.1") + bytes(12)
    assert k.inet_lookup_request(socket.AF_INET, lo, 42081, lo, 57838, 1) == INFO_REQ


def test_parse_captured_inet_diag_info() -> None:
    """The captured INET_DIAG_INFO answer parses to that connection and its tcp_info."""
    socks, done, interrupted = k.parse_inet_full(INFO_RESP)
    assert (done, interrupted) == (False, False)  # an exact lookup ends with its one message
    (s,) = socks
    lo = socket.inet_aton("127.0.0.1") + bytes(12)
    assert (s.family, s.state, s.src, s.sport, s.dst, s.dport) == (
        socket.AF_INET, k.TCP_ESTABLISHED, lo, 42081, lo, 57838,
    )  # fmt: skip
    assert (s.rqueue, s.wqueue, s.uid, s.inode) == (0, 0, 0, 303272)
    assert sorted(s.attrs) == [2, 8, 15, 21, 22]
    info = TcpInfo.from_bytes(s.attrs[k.INET_DIAG_INFO])
    assert info.size == 280
    assert (info.state, info.ca_state, info.options) == (TcpState.ESTABLISHED, TcpCaState.OPEN, 7)
    # byte 6 is 0x50: the peer's scale (snd) 0 in the low nibble, ours (rcv) 5
    assert (info.snd_wscale, info.rcv_wscale) == (0, 5)
    assert (info.rto, info.ato, info.snd_mss, info.rcv_mss) == (200000, 40000, 2048, 1000)
    assert (info.rtt, info.rttvar, info.min_rtt, info.snd_cwnd) == (23, 11, 23, 10)
    assert (info.bytes_received, info.data_segs_in, info.segs_in) == (1000, 1, 3)
    assert (info.snd_wnd, info.rcv_wnd, info.pmtu, info.advmss) == (4096, 1137696, 65535, 65483)
    assert info.max_pacing_rate == 2**64 - 1


def test_captured_inet_diag_info_as_record() -> None:
    """The captured answer becomes a SocketRecord: names, tcp_info and pyroute2 attrs."""
    from linux_inet_diag._records import parse_records

    (rec,), done, intr = parse_records(INFO_RESP)
    assert (done, intr) == (False, False)
    assert (rec.local, rec.remote, rec.state, rec.inode) == (
        "127.0.0.1:42081", "127.0.0.1:57838", TcpState.ESTABLISHED, 303272,
    )  # fmt: skip
    assert rec.cookie == 0x17B0
    assert rec.tcp_info is not None
    assert (rec.tcp_info.snd_wscale, rec.tcp_info.rcv_wscale) == (0, 5)
    assert rec.attrs["INET_DIAG_CGROUP_ID"] == 1
    assert rec.attrs["INET_DIAG_SHUTDOWN"] == 0
    assert "INET_DIAG_INFO" not in rec.attrs  # pyroute2 swaps its wscales
    assert sorted(rec.raw_attrs) == [2, 8, 15, 21, 22]
    assert rec.raw_attrs[22] == b"\x52\x00"
    skip = parse_records(INFO_RESP, match=lambda fam, src, port: port != 42081)
    assert skip == ([], False, False)


# The listeners dump unix_listener_stats sends (SHOW_NAME | SHOW_VFS |
# SHOW_RQLEN), captured as root on Linux 6.18: recv()'s datagrams of a real
# dump, keeping, byte for byte, only the messages of two sockets made for the
# purpose and the final NLMSG_DONE. A stream listener bound at
# /tmp/tmp5tw6_4p_/link/s (link -> real; st_dev 65024, st_ino 2155969),
# backlog 8, 2 connections waiting; a SOCK_SEQPACKET listener @lid-capture,
# backlog 3.
UNIX_RESP = bytes.fromhex(
    "5c00000014000200020000005751000001010a00aaa00400b1170000000000001c000000"
    "2f746d702f746d70357477365f34705f2f6c696e6b2f73000c000100c1e520000000e00f"
    "0c0004000200000008000000050006000000000044000000140002000200000057510000"
    "01050a00aba00400b21700000000000010000000006c69642d636170747572650c000400"
    "000000000300000005000600000000001400000003000200020000005751000000000000"
)
UNIX_PATH = "/tmp/tmp5tw6_4p_/link/s"


def test_parse_captured_unix_dump() -> None:
    """The captured unix_diag dump parses to type, state, name, queues and VFS identity."""
    socks, done, intr = k.parse_unix_dump(UNIX_RESP)
    assert socks == [
        k.UnixSocket(k.SOCK_STREAM, k.TCP_LISTEN, 303274, UNIX_PATH, 2, 8, (254 << 20, 2155969)),
        k.UnixSocket(socket.SOCK_SEQPACKET, k.TCP_LISTEN, 303275, "@lid-capture", 0, 3, None),
    ]
    assert (done, intr) == (True, False)
    assert kernel_dev(65024) == 254 << 20  # stat's st_dev of the bound file


def test_unix_plan_on_captured_listeners(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bound name, resolved name (by VFS identity) and seqpacket name each answer right."""
    real = "/tmp/tmp5tw6_4p_/real/s"
    ids = {UNIX_PATH: (65024, 2155969), real: (65024, 2155969)}
    # The captured paths are gone: stat() and realpath() answer as they did.
    monkeypatch.setattr(_stats, "_stat_id", ids.get)
    monkeypatch.setattr(_stats.os.path, "realpath", lambda p: p.replace("/link/", "/real/"))
    listeners = k.parse_unix_dump(UNIX_RESP)[0]
    plan = unix_plan([UNIX_PATH, real, "@lid-capture", "/none"], listeners)
    assert list(plan.keys) == [UNIX_PATH, real, "@lid-capture", "/none"]
    assert plan.names == frozenset([UNIX_PATH, "@lid-capture", "/none"])
    assert plan.exact  # @lid-capture is a seqpacket listener's name
    got = unix_answer(plan, {UNIX_PATH: 1, "@lid-capture": 0, "/none": 0})
    assert got == {
        UNIX_PATH: ListenStats(1, 2, 8),
        real: ListenStats(1, 2, 8),
        "@lid-capture": ListenStats(0, 0, None),
        "/none": ListenStats(0, 0, None),
    }
    every = unix_plan(None, listeners)
    assert list(every.keys) == [UNIX_PATH]  # no SOCK_SEQPACKET listener
    assert not every.exact


def test_count_unix_stream_names_skips_other_types() -> None:
    """The exact count counts SOCK_STREAM sockets carrying a name, not seqpacket ones."""

    def msg(stype: int, name: bytes) -> bytes:
        body = struct.pack("=BBBxIII", 1, stype, 1, 7, 0, 0) + k.nlattr(0, name)
        return k.nlmsg(20, 2, 9, body)

    data = msg(1, b"\0ab") + msg(5, b"\0ab") + msg(1, b"\0ab") + msg(1, b"/x\0") + DONE
    counts, done, intr = _count.count_unix_stream_names(data, frozenset(["@ab", "/y"]))
    assert counts == {"@ab": 2, "/y": 0}
    assert (done, intr) == (True, False)


def test_proc_fallback_filters_type() -> None:
    """The /proc/net/unix fallback ignores SOCK_SEQPACKET listeners and their queue."""
    text = (
        "Num       RefCount Protocol Flags    Type St Inode Path\n"
        "0000000000000000: 00000002 00000000 00010000 0001 01 100 @s\n"
        "0000000000000000: 00000002 00000000 00010000 0005 01 101 @q\n"
        "0000000000000000: 00000003 00000000 00000000 0001 03 102 @s\n"
        "0000000000000000: 00000003 00000000 00000000 0001 02 103 @s\n"
        "0000000000000000: 00000003 00000000 00000000 0005 03 104 @q\n"
        "0000000000000000: 00000003 00000000 00000000 0005 02 105 @q\n"
    )
    socks = parse_proc_net_unix(text)
    assert tally_proc_unix(None, socks) == {"@s": ListenStats(1, 1, None)}
    assert tally_proc_unix(["@q", "@s"], socks) == {
        "@q": ListenStats(0, 0, None),
        "@s": ListenStats(1, 1, None),
    }


# -- struct tcp_info layout ----------------------------------------------------

# struct tcp_info of Linux 6.18, transcribed from include/uapi/linux/tcp.h:
# (field without tcpi_, byte offset, width in bytes). Bytes 0-7 are __u8
# fields; 6 and 7 hold bit-fields (tested in test_kernel.py).
TCP_H_6_18 = [
    ("rto", 8, 4), ("ato", 12, 4), ("snd_mss", 16, 4), ("rcv_mss", 20, 4),
    ("unacked", 24, 4), ("sacked", 28, 4), ("lost", 32, 4), ("retrans", 36, 4),
    ("fackets", 40, 4),
    ("last_data_sent", 44, 4), ("last_ack_sent", 48, 4), ("last_data_recv", 52, 4),
    ("last_ack_recv", 56, 4),
    ("pmtu", 60, 4), ("rcv_ssthresh", 64, 4), ("rtt", 68, 4), ("rttvar", 72, 4),
    ("snd_ssthresh", 76, 4), ("snd_cwnd", 80, 4), ("advmss", 84, 4),
    ("reordering", 88, 4), ("rcv_rtt", 92, 4), ("rcv_space", 96, 4),
    ("total_retrans", 100, 4),
    ("pacing_rate", 104, 8), ("max_pacing_rate", 112, 8), ("bytes_acked", 120, 8),
    ("bytes_received", 128, 8), ("segs_out", 136, 4), ("segs_in", 140, 4),
    ("notsent_bytes", 144, 4), ("min_rtt", 148, 4), ("data_segs_in", 152, 4),
    ("data_segs_out", 156, 4), ("delivery_rate", 160, 8), ("busy_time", 168, 8),
    ("rwnd_limited", 176, 8), ("sndbuf_limited", 184, 8), ("delivered", 192, 4),
    ("delivered_ce", 196, 4), ("bytes_sent", 200, 8), ("bytes_retrans", 208, 8),
    ("dsack_dups", 216, 4), ("reord_seen", 220, 4), ("rcv_ooopack", 224, 4),
    ("snd_wnd", 228, 4), ("rcv_wnd", 232, 4), ("rehash", 236, 4),
    ("total_rto", 240, 2), ("total_rto_recoveries", 242, 2), ("total_rto_time", 244, 4),
    ("received_ce", 248, 4), ("delivered_e1_bytes", 252, 4), ("delivered_e0_bytes", 256, 4),
    ("delivered_ce_bytes", 260, 4), ("received_e1_bytes", 264, 4),
    ("received_e0_bytes", 268, 4), ("received_ce_bytes", 272, 4),
    ("accecn_fail_mode", 276, 2), ("accecn_opt_seen", 278, 2),
]  # fmt: skip


def test_layout_matches_the_kernel_header() -> None:
    """Every field reads from its tcp.h offset with its width, and nothing else."""
    assert [(n, off, st.size) for n, off, st in _FIELDS] == TCP_H_6_18
    raw = bytearray(280)
    raw[0] = TcpState.ESTABLISHED
    want = {}
    for i, (name, off, width) in enumerate(TCP_H_6_18):
        # a distinct value per field that fills its whole width
        value = int.from_bytes(bytes([i + 1]) * width, "little")
        raw[off : off + width] = value.to_bytes(width, "little")
        want[name] = value
    info = TcpInfo.from_bytes(bytes(raw))
    assert {name: getattr(info, name) for name in want} == want
    assert info.size == 280


def test_fields_end_where_the_kernel_struct_ends() -> None:
    """A struct cut after a field decodes that field and leaves the next one None."""
    for name, off, width in TCP_H_6_18[24:]:
        info = TcpInfo.from_bytes(bytes([1]) + bytes(off + width - 1))
        assert getattr(info, name) == 0
        later = [n for n, o, _ in TCP_H_6_18 if o > off]
        assert all(getattr(info, n) is None for n in later)
