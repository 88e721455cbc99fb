"""Sans-IO netlink sock_diag core: requests are built and answers parsed as bytes.

Nothing here touches a socket. Struct layouts mirror the kernel headers named
next to them. Every datagram is walked once, by :func:`messages`, which steps
by ``nlmsg_len`` (the kernel may append attributes nobody asked for: an
``inet_diag_msg`` is 124 bytes, not 88, when the reader is root) and reports
NLMSG_DONE, NLMSG_ERROR and NLM_F_DUMP_INTR. The counting parsers, which
read whole datagrams as columns instead of records, are in ``_count``.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from ._errors import NetlinkError

# linux/netlink.h
NETLINK_SOCK_DIAG = 4
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_DUMP_INTR = 0x10
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
# struct nlmsghdr { __u32 nlmsg_len; __u16 nlmsg_type; __u16 nlmsg_flags;
#                   __u32 nlmsg_seq; __u32 nlmsg_pid; };  (16 bytes, NLMSG_HDRLEN)
NLMSGHDR = struct.Struct("=IHHII")
NLMSG_HDRLEN = NLMSGHDR.size
# The fields of nlmsghdr a reader steps by: nlmsg_len, nlmsg_type, nlmsg_flags.
NLMSGHDR_LEN_TYPE_FLAGS = struct.Struct("=IHH")
# struct nlattr { __u16 nla_len; __u16 nla_type; };  (4 bytes, NLA_HDRLEN)
NLATTR = struct.Struct("=HH")
# nla_type's top two bits are NLA_F_NESTED and NLA_F_NET_BYTEORDER.
NLA_TYPE_MASK = 0x3FFF
# struct nlmsgerr { int error; struct nlmsghdr msg; }: only ``error`` is read.
NLMSGERR = struct.Struct("=i")

# linux/sock_diag.h
SOCK_DIAG_BY_FAMILY = 20

# linux/tcp_states.h (TCP_* states, also used by AF_UNIX sockets)
TCP_ESTABLISHED = 1
TCP_LISTEN = 10

# linux/inet_diag.h
INET_DIAG_REQ_BYTECODE = 1
INET_DIAG_INFO = 2
INET_DIAG_NOCOOKIE = 0xFFFFFFFF
INET_DIAG_BC_JMP = 1
INET_DIAG_BC_S_COND = 7
# struct inet_diag_req_v2 { __u8 sdiag_family; __u8 sdiag_protocol;
#   __u8 idiag_ext; __u8 pad; __u32 idiag_states; struct inet_diag_sockid id; };
# struct inet_diag_sockid { __be16 idiag_sport; __be16 idiag_dport;
#   __be32 idiag_src[4]; __be32 idiag_dst[4]; __u32 idiag_if;
#   __u32 idiag_cookie[2]; };
INET_DIAG_REQ_V2 = struct.Struct("=BBBxI2s2s16s16sIII")
# struct inet_diag_msg { __u8 idiag_family, idiag_state, idiag_timer,
#   idiag_retrans; struct inet_diag_sockid id; __u32 idiag_expires,
#   idiag_rqueue, idiag_wqueue, idiag_uid, idiag_inode; };  (72 bytes)
INET_DIAG_MSG = struct.Struct("=BBBB2s2s16s16sIIIIIIII")
# The hot-path view of one message, from the start of its nlmsghdr: only the
# fields counted, in InetRecord's order. nlmsghdr skipped; idiag_family,
# idiag_state; timer, retrans skipped; id.idiag_sport (raw be16 read as a
# native u16); dport skipped; id.idiag_src; dst, if, cookie, expires
# skipped; idiag_rqueue, idiag_wqueue; uid skipped; idiag_inode.
INET_RECORD = struct.Struct(f"={NLMSG_HDRLEN}xBB2xH2x16s16x4x8x4xII4xI")
# struct inet_diag_bc_op { unsigned char code; unsigned char yes;
#                          unsigned short no; };
BC_OP = struct.Struct("=BBH")
# struct inet_diag_hostcond { __u8 family; __u8 prefix_len; int port;
#                             __be32 addr[0]; };
BC_HOSTCOND = struct.Struct("=BBxxi")
# The bytecode travels in one netlink attribute whose nla_len is a u16, and
# its jump offsets (bc_op.no) are u16 too: at most 65535 - 4 bytes, i.e.
# 3,276 IPv4 or 2,047 IPv6 conditions as source_filter lays them out.
MAX_BYTECODE = 0xFFFF - NLATTR.size

# linux/net.h (enum sock_type): the type unix_diag_msg.udiag_type reports
SOCK_STREAM = 1

# linux/unix_diag.h
UDIAG_SHOW_NAME = 0x01
UDIAG_SHOW_VFS = 0x02
UDIAG_SHOW_RQLEN = 0x10
UNIX_DIAG_NAME = 0
UNIX_DIAG_VFS = 1
UNIX_DIAG_RQLEN = 4
# struct unix_diag_req { __u8 sdiag_family; __u8 sdiag_protocol; __u16 pad;
#   __u32 udiag_states; __u32 udiag_ino; __u32 udiag_show;
#   __u32 udiag_cookie[2]; };
UNIX_DIAG_REQ = struct.Struct("=BBxxIIIII")
# struct unix_diag_msg { __u8 udiag_family, udiag_type, udiag_state, pad;
#   __u32 udiag_ino; __u32 udiag_cookie[2]; };
UNIX_DIAG_MSG = struct.Struct("=BBBxIII")
# struct unix_diag_rqlen { __u32 udiag_rqueue; __u32 udiag_wqueue; };
UNIX_DIAG_RQLEN_S = struct.Struct("=II")
# struct unix_diag_vfs { __u32 udiag_vfs_ino; __u32 udiag_vfs_dev; };
# udiag_vfs_dev is the superblock's kernel dev_t (major << 20 | minor,
# linux/kdev_t.h), not stat()'s st_dev encoding.
UNIX_DIAG_VFS_S = struct.Struct("=II")

LISTEN_AND_ESTABLISHED = (1 << TCP_LISTEN) | (1 << TCP_ESTABLISHED)
ALL_STATES = 0xFFFFFFFF


def nlmsg_align(n: int) -> int:
    """``n`` rounded up to netlink's 4-byte alignment (NLMSG_ALIGN, NLA_ALIGN)."""
    return (n + 3) & ~3


def nlmsg(msg_type: int, flags: int, seq: int, payload: bytes) -> bytes:
    """Frame ``payload`` in a struct nlmsghdr (linux/netlink.h)."""
    return NLMSGHDR.pack(NLMSG_HDRLEN + len(payload), msg_type, flags, seq, 0) + payload


def nlattr(attr_type: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    size = NLATTR.size + len(payload)
    return NLATTR.pack(size, attr_type) + payload + bytes(nlmsg_align(size) - size)


@dataclass(frozen=True, slots=True)
class HostCond:
    """One ``INET_DIAG_BC_S_COND`` test: source address prefix and port."""

    family: int
    prefix_len: int
    port: int
    addr: bytes  # 4 bytes for AF_INET, 16 for AF_INET6

    def pack(self) -> bytes:
        return BC_HOSTCOND.pack(self.family, self.prefix_len, self.port) + self.addr


def source_filter(conds: Iterable[HostCond]) -> bytes | None:
    """Inet_diag bytecode accepting a socket whose source matches any condition.

    Each test is followed by a jump to the end (accept); a failed test skips
    that jump to the next test, and the last failed test jumps past the end,
    which the kernel treats as reject (linux/inet_diag.h, inet_diag_bc_run).
    ``yes`` is a u8, so tests never jump further than their own length.
    Returns None when the program would exceed :data:`MAX_BYTECODE` (its
    length and jumps are 16-bit): the caller dumps without a filter and
    filters in Python instead.
    """
    bodies = [c.pack() for c in dict.fromkeys(conds)]
    op = BC_OP.size
    total = sum(op + len(b) + op for b in bodies)  # each test and its jump
    if total > MAX_BYTECODE:
        return None
    out = bytearray()
    for i, body in enumerate(bodies):
        oplen = op + len(body)
        last = i == len(bodies) - 1
        no = total - len(out) + op if last else oplen + op
        out += BC_OP.pack(INET_DIAG_BC_S_COND, oplen, no) + body
        out += BC_OP.pack(INET_DIAG_BC_JMP, op, total - len(out))
    return bytes(out)


def inet_dump_request(
    family: int, states: int, seq: int, bytecode: bytes = b"", ext: int = 0
) -> bytes:
    """A SOCK_DIAG_BY_FAMILY dump request for TCP sockets (linux/inet_diag.h).

    ``bytecode`` empty: no filter. ``ext``: the idiag_ext bit mask
    (``1 << (INET_DIAG_* - 1)``) of extra attributes wanted.
    """
    req = INET_DIAG_REQ_V2.pack(
        family, socket.IPPROTO_TCP, ext, states,
        b"\0\0", b"\0\0", bytes(16), bytes(16), 0,
        INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE,
    )  # fmt: skip
    if bytecode:
        req += nlattr(INET_DIAG_REQ_BYTECODE, bytecode)
    return nlmsg(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, req)


def inet_lookup_request(
    family: int, src: bytes, sport: int, dst: bytes, dport: int, seq: int
) -> bytes:
    """An exact-socket request asking for INET_DIAG_INFO (struct tcp_info)."""
    req = INET_DIAG_REQ_V2.pack(
        family, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), ALL_STATES,
        sport.to_bytes(2, "big"), dport.to_bytes(2, "big"), src, dst, 0,
        INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE,
    )  # fmt: skip
    return nlmsg(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq, req)


def unix_dump_request(states: int, show: int, seq: int) -> bytes:
    """A SOCK_DIAG_BY_FAMILY dump request for AF_UNIX (linux/unix_diag.h)."""
    req = UNIX_DIAG_REQ.pack(
        socket.AF_UNIX, 0, states, 0, show, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE
    )
    return nlmsg(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, req)


# -- the one walk over a datagram ----------------------------------------------


def raise_for_error(buf: bytes, off: int, length: int) -> None:
    """Raise NetlinkError for an NLMSG_ERROR carrying a non-zero error."""
    if length < NLMSG_HDRLEN + NLMSGERR.size:
        raise NetlinkError(
            errno.EPROTO,
            f"truncated NLMSG_ERROR ({length} bytes): at least "
            f"{NLMSG_HDRLEN + NLMSGERR.size} expected",
        )
    (err,) = NLMSGERR.unpack_from(buf, off + NLMSG_HDRLEN)
    if err:
        raise NetlinkError(-err, f"netlink sock_diag: {os.strerror(-err)}")


def _malformed(what: str, length: int, off: int, least: int, size: int) -> NetlinkError:
    return NetlinkError(
        errno.EPROTO,
        f"malformed netlink {what} at byte {off} of {size}: length {length}, "
        f"expected {least} to {size - off}",
    )


class Messages(NamedTuple):
    """What one datagram held, as :func:`messages` found it.

    ``spans``: ``(start, end)`` of each SOCK_DIAG_BY_FAMILY message (its
    nlmsghdr included); ``done``: the answer ended here (NLMSG_DONE, or an
    NLMSG_ERROR carrying 0, an acknowledgement); ``interrupted``: some
    message carried NLM_F_DUMP_INTR, i.e. the socket table changed while the
    kernel walked it and the dump must be run again.
    """

    spans: list[tuple[int, int]]
    done: bool
    interrupted: bool


def messages(buf: bytes, body: int | None = 0) -> Messages:
    """Step through one answer datagram by ``nlmsg_len`` (linux/netlink.h NLMSG_NEXT).

    ``body``: the size of the fixed struct the caller reads after each
    SOCK_DIAG_BY_FAMILY message's header; None when it reads none of them
    and wants only ``done`` and ``interrupted`` (then no spans are listed:
    the Unix name count walks 2,000 messages a query for nothing else).
    Raises NetlinkError with the kernel's errno for an NLMSG_ERROR carrying
    one, and with ``EPROTO`` for a message whose ``nlmsg_len`` is shorter
    than its header (or, for a SOCK_DIAG_BY_FAMILY message, than its header
    and ``body`` bytes) or runs past the datagram. Fewer than 16 bytes after
    the last message are ignored.

    >>> done = nlmsg(NLMSG_DONE, NLM_F_MULTI, 1, bytes(4))
    >>> messages(nlmsg(SOCK_DIAG_BY_FAMILY, NLM_F_MULTI, 1, bytes(72)) + done)
    Messages(spans=[(0, 88)], done=True, interrupted=False)
    """
    spans: list[tuple[int, int]] = []
    append = spans.append
    header = NLMSGHDR_LEN_TYPE_FLAGS.unpack_from
    listed = body is not None
    least = NLMSG_HDRLEN + (body or 0)
    size = len(buf)
    off = 0
    done = False
    flags_seen = 0
    while off + NLMSG_HDRLEN <= size:
        length, mtype, flags = header(buf, off)
        end = off + length
        if length < NLMSG_HDRLEN or end > size:
            raise _malformed("message", length, off, NLMSG_HDRLEN, size)
        flags_seen |= flags
        if mtype == SOCK_DIAG_BY_FAMILY:
            if length < least:
                raise _malformed("message", length, off, least, size)
            if listed:
                append((off, end))
        elif mtype == NLMSG_DONE:
            done = True
        elif mtype == NLMSG_ERROR:
            raise_for_error(buf, off, length)
            done = True
        # nlmsg_align(end), inlined: the call would add 10% to this loop
        # (callgrind, a 2,006-message unix_diag dump: 6.8 M instructions
        # inlined, 7.5 M called).
        off = (end + 3) & ~3
    return Messages(spans, done, bool(flags_seen & NLM_F_DUMP_INTR))


def iter_attrs(buf: bytes, off: int, end: int) -> Iterable[tuple[int, bytes]]:
    """Yield ``(nla_type, payload)`` for the attributes in ``buf[off:end]``."""
    while off + NLATTR.size <= end:
        nla_len, nla_type = NLATTR.unpack_from(buf, off)
        if nla_len < NLATTR.size or off + nla_len > end:
            raise _malformed("attribute", nla_len, off, NLATTR.size, end)
        yield nla_type & NLA_TYPE_MASK, bytes(buf[off + NLATTR.size : off + nla_len])
        off += nlmsg_align(nla_len)


# -- inet_diag: records --------------------------------------------------------


class InetRecord(NamedTuple):
    """The fields of one inet_diag_msg that listener counting reads (hot path).

    ``sport_raw`` is ``id.idiag_sport``'s big-endian bytes read as a native
    u16 (``socket.ntohs`` gives the port); ``src`` is ``id.idiag_src``'s 16
    bytes (an IPv4 address and 12 zeros for AF_INET). A NamedTuple: it
    unpacks as fast as a plain tuple, and reads by name.
    """

    family: int
    state: int
    sport_raw: int
    src: bytes
    rqueue: int
    wqueue: int
    inode: int


def parse_inet_dump(buf: bytes) -> tuple[list[InetRecord], bool, bool]:
    """Parse one datagram of an inet_diag dump: hot records, done, interrupted."""
    found = messages(buf, INET_DIAG_MSG.size)
    unpack = INET_RECORD.unpack_from
    new = tuple.__new__  # InetRecord._make without its Python-level length check
    records = [new(InetRecord, unpack(buf, start)) for start, _end in found.spans]
    return records, found.done, found.interrupted


@dataclass(frozen=True, slots=True)
class InetSocket:
    """One whole inet_diag_msg (linux/inet_diag.h) with its attributes by number.

    Fields in the kernel's order, named as there without ``idiag_``
    (``interface`` is ``id.idiag_if``, ``cookie`` both halves of
    ``id.idiag_cookie``); ports are host-order ints, addresses 16 bytes.
    """

    family: int
    state: int
    timer: int
    retrans: int
    sport: int
    dport: int
    src: bytes
    dst: bytes
    interface: int
    cookie: int
    expires: int
    rqueue: int
    wqueue: int
    uid: int
    inode: int
    attrs: dict[int, bytes]


def inet_socket(buf: bytes, start: int, end: int) -> InetSocket:
    """Decode the message at ``buf[start:end]`` (one of :func:`messages`' spans)."""
    body = start + NLMSG_HDRLEN
    (family, state, timer, retrans, sport, dport, src, dst, interface,
     cookie_lo, cookie_hi, expires, rqueue, wqueue, uid, inode,
     ) = INET_DIAG_MSG.unpack_from(buf, body)  # fmt: skip
    return InetSocket(
        family, state, timer, retrans,
        int.from_bytes(sport, "big"), int.from_bytes(dport, "big"), src, dst,
        interface, cookie_lo | (cookie_hi << 32), expires, rqueue, wqueue, uid, inode,
        dict(iter_attrs(buf, body + INET_DIAG_MSG.size, end)),
    )  # fmt: skip


def parse_inet_full(buf: bytes) -> tuple[list[InetSocket], bool, bool]:
    """Parse a datagram of an inet_diag answer whole: sockets, done, interrupted."""
    found = messages(buf, INET_DIAG_MSG.size)
    socks = [inet_socket(buf, start, end) for start, end in found.spans]
    return socks, found.done, found.interrupted


# -- unix_diag: records --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UnixSocket:
    """One unix_diag_msg: type, state, inode, bound name and queue lengths.

    ``vfs`` is ``(udiag_vfs_dev, udiag_vfs_ino)`` of the file a path socket
    is bound to (UNIX_DIAG_VFS), None when not asked for or not a path.
    """

    type: int
    state: int
    inode: int
    name: str | None
    rqueue: int
    wqueue: int
    vfs: tuple[int, int] | None = None


def _unix_name(raw: bytes) -> str:
    if raw[:1] == b"\0":
        return "@" + os.fsdecode(raw[1:])
    return os.fsdecode(raw.rstrip(b"\0"))


def _unix_socket(buf: bytes, start: int, end: int) -> UnixSocket:
    body = start + NLMSG_HDRLEN
    _fam, stype, state, ino, _c0, _c1 = UNIX_DIAG_MSG.unpack_from(buf, body)
    name = None
    rq = wq = 0
    vfs = None
    for atype, payload in iter_attrs(buf, body + UNIX_DIAG_MSG.size, end):
        if atype == UNIX_DIAG_NAME:
            name = _unix_name(payload)
        elif atype == UNIX_DIAG_RQLEN and len(payload) >= UNIX_DIAG_RQLEN_S.size:
            rq, wq = UNIX_DIAG_RQLEN_S.unpack_from(payload)
        elif atype == UNIX_DIAG_VFS and len(payload) >= UNIX_DIAG_VFS_S.size:
            vino, vdev = UNIX_DIAG_VFS_S.unpack_from(payload)
            vfs = (vdev, vino)
    return UnixSocket(stype, state, ino, name, rq, wq, vfs)


def parse_unix_dump(buf: bytes) -> tuple[list[UnixSocket], bool, bool]:
    """Parse one datagram of a unix_diag dump: records, done, interrupted."""
    found = messages(buf, UNIX_DIAG_MSG.size)
    socks = [_unix_socket(buf, start, end) for start, end in found.spans]
    return socks, found.done, found.interrupted
