"""Listener counting straight off a dump's bytes: strided columns, name search.

The counting queries need a few fields of every socket (its state, whether
it has an inode, its local address), not a record per socket. When a
datagram is a run of same-sized inet_diag messages (the usual case, see
:func:`uniform_shape`) each field is a strided column, ``buf[offset::stride]``,
counted at C speed (``bytes.count``, ``bytes.translate``, big-integer
bit masks): no Python code runs per socket. Anything else goes through
:func:`~linux_inet_diag._kernel.parse_inet_dump`. Unix sockets are counted
by searching each name's exact UNIX_DIAG_NAME attribute in the datagram.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
from typing import NamedTuple

from ._kernel import (
    INET_DIAG_MSG,
    INET_RECORD,
    NLATTR,
    NLM_F_DUMP_INTR,
    NLMSG_HDRLEN,
    NLMSGHDR,
    SOCK_DIAG_BY_FAMILY,
    SOCK_STREAM,
    TCP_ESTABLISHED,
    TCP_LISTEN,
    UNIX_DIAG_NAME,
    InetRecord,
    messages,
    nlmsg_align,
    parse_inet_dump,
    parse_unix_dump,
)

# -- inet_diag: counting over strided columns ----------------------------------

# Where the counted fields sit in one message: the nlmsghdr, then
# inet_diag_msg's idiag_family (+0), idiag_state (+1), id.idiag_sport (+4, 2
# bytes big-endian), id.idiag_src (+8, 16 bytes) and idiag_inode (+68, u32).
_FAMILY = NLMSG_HDRLEN + 0
_STATE = NLMSG_HDRLEN + 1
_SPORT = NLMSG_HDRLEN + 4
_SRC = NLMSG_HDRLEN + 8
_INODE = NLMSG_HDRLEN + 68
# nlmsg_len and nlmsg_type: the first 6 bytes of every message.
_LEN_AND_TYPE = struct.calcsize("=IH")
# The byte of nlmsghdr's native u16 nlmsg_flags that holds NLM_F_DUMP_INTR
# (0x10): its low byte, the first of the two on a little-endian machine.
_FLAGS_LOW = 6 if sys.byteorder == "little" else 7
# bytes.translate tables: _IS[v] maps byte v to 1 and every other byte to 0;
# _NONZERO maps 0 to 0 and every other byte to 1.
_IS = [bytes(1 if b == v else 0 for b in range(256)) for v in range(256)]
_NONZERO = bytes(1 if b else 0 for b in range(256))


class CountChunk(NamedTuple):
    """One datagram of a single-name dump: its listeners and a count."""

    listeners: list[InetRecord]
    active: int
    done: bool
    interrupted: bool


def uniform_shape(buf: bytes) -> tuple[int, int] | None:
    """``(stride, n)`` when ``buf`` is n inet_diag messages of one size, else None.

    The kernel usually fills a datagram with same-sized messages; then each
    field is a strided column (``buf[offset::stride]``) read at C speed.
    Checked: the first message is SOCK_DIAG_BY_FAMILY and long enough, the
    datagram is a whole number of messages, and nlmsg_len and nlmsg_type
    (bytes 0-5) are identical in every one.
    """
    size = len(buf)
    if size < NLMSG_HDRLEN + INET_DIAG_MSG.size:
        return None
    length, mtype, _flags, _seq, _pid = NLMSGHDR.unpack_from(buf, 0)
    stride = nlmsg_align(length)
    if mtype != SOCK_DIAG_BY_FAMILY or length < NLMSG_HDRLEN + INET_DIAG_MSG.size or size % stride:
        return None
    n = size // stride
    if all(buf[j::stride] == buf[j : j + 1] * n for j in range(_LEN_AND_TYPE)):
        return stride, n
    return None


def count_inet_dump(buf: bytes) -> CountChunk:
    """Parse a datagram of a dump whose sockets all belong to one name.

    ``active`` counts ESTABLISHED sockets with an inode (accepted); LISTEN
    records come back whole. When every message in the datagram has the same
    ``nlmsg_len`` and type (the usual case: the kernel fills a datagram with
    same-sized inet_diag_msg records) the columns are read with strided
    slices, at C speed; anything else goes through :func:`parse_inet_dump`.
    """
    shape = uniform_shape(buf)
    if shape is not None:
        return _count_uniform(buf, *shape)
    records, done, interrupted = parse_inet_dump(buf)
    active = 0
    listeners = []
    for rec in records:
        if rec.state == TCP_LISTEN:
            listeners.append(rec)
        elif rec.state == TCP_ESTABLISHED and rec.inode:
            active += 1
    return CountChunk(listeners, active, done, interrupted)


def _interrupted(flags: bytes) -> bool:
    """Whether any message's flags (low bytes, a strided column) carry NLM_F_DUMP_INTR."""
    first = flags[0]
    if flags.count(first) == len(flags):  # the usual case: one value throughout
        return bool(first & NLM_F_DUMP_INTR)
    return any(f & NLM_F_DUMP_INTR for f in set(flags))


def _inode_column(buf: bytes, stride: int, n: int) -> bytes:
    """One byte per message, 0 exactly where idiag_inode is 0.

    The inode's four byte columns OR-ed together as big integers: no
    Python code per message.
    """
    column = _INODE
    merged = (
        int.from_bytes(buf[column::stride], "little")
        | int.from_bytes(buf[column + 1 :: stride], "little")
        | int.from_bytes(buf[column + 2 :: stride], "little")
        | int.from_bytes(buf[column + 3 :: stride], "little")
    )
    return merged.to_bytes(n, "little")


def _listeners(buf: bytes, states: bytes, stride: int) -> list[InetRecord]:
    """The LISTEN messages of a uniform datagram, whole (``states``: its state column)."""
    listeners = []
    pos = states.find(TCP_LISTEN)
    while pos >= 0:
        listeners.append(InetRecord._make(INET_RECORD.unpack_from(buf, pos * stride)))
        pos = states.find(TCP_LISTEN, pos + 1)
    return listeners


def _count_uniform(buf: bytes, stride: int, n: int) -> CountChunk:
    states = buf[_STATE::stride]  # idiag_state of each message
    interrupted = _interrupted(buf[_FLAGS_LOW::stride])
    established = states.count(TCP_ESTABLISHED)
    listeners = _listeners(buf, states, stride)
    other = n - established - len(listeners)
    if other:  # states nobody asked for: count them the slow way
        records = parse_inet_dump(buf)[0]
        active = sum(1 for r in records if r.state == TCP_ESTABLISHED and r.inode)
        return CountChunk(listeners, active, False, interrupted)
    zero_listeners = sum(1 for r in listeners if not r.inode)
    active = established - (_inode_column(buf, stride, n).count(0) - zero_listeners)
    return CountChunk(listeners, active, False, interrupted)


#: One local address to count accepted sockets of: ``(src16, sport_raw)``,
#: ``src16`` None for any address of the port (a wildcard listener).
Target = tuple[bytes | None, int]


class TargetChunk(NamedTuple):
    """One datagram of a dump for several names: listeners whole, counts per target.

    ``counts[i]`` is how many accepted ESTABLISHED sockets (inode set) the
    datagram held whose local address matches ``targets[i]``; a socket
    counts for every target it matches.
    """

    listeners: list[InetRecord]
    counts: list[int]
    done: bool
    interrupted: bool


def count_targets(targets: list[Target], buf: bytes) -> TargetChunk:
    """Parse a datagram of a dump, counting accepted sockets per target address.

    In the usual case (every message the same ``nlmsg_len`` and type) each
    condition becomes a bit mask over all messages at once: a strided
    column of bytes, mapped to 0/1 by ``bytes.translate`` and read as one
    big integer; a target's count is the popcount of the AND of its masks,
    so no Python code runs per socket. Anything else goes through
    :func:`parse_inet_dump`.
    """
    shape = uniform_shape(buf)
    if shape is not None:
        chunk = _targets_uniform(targets, buf, *shape)
        if chunk is not None:
            return chunk
    records, done, interrupted = parse_inet_dump(buf)
    listeners = []
    counts = [0] * len(targets)
    for rec in records:
        if rec.state == TCP_LISTEN:
            listeners.append(rec)
        elif rec.state == TCP_ESTABLISHED and rec.inode:
            for i, (src, sport) in enumerate(targets):
                if rec.sport_raw == sport and (src is None or rec.src == src):
                    counts[i] += 1
    return TargetChunk(listeners, counts, done, interrupted)


def _targets_uniform(targets: list[Target], buf: bytes, stride: int, n: int) -> TargetChunk | None:
    states = buf[_STATE::stride]
    established = states.count(TCP_ESTABLISHED)
    listeners = _listeners(buf, states, stride)
    if n - established - len(listeners):
        return None  # states nobody asked for: the slow way
    interrupted = _interrupted(buf[_FLAGS_LOW::stride])
    masks: dict[tuple[int, int], int] = {}

    def equal(offset: int, value: int) -> int:
        """Bit mask (one byte per message) of messages whose byte ``offset`` is ``value``."""
        mask = masks.get((offset, value))
        if mask is None:
            column = buf[offset::stride].translate(_IS[value])
            mask = masks[offset, value] = int.from_bytes(column, "little")
        return mask

    inode_set = int.from_bytes(_inode_column(buf, stride, n).translate(_NONZERO), "little")
    accepted = equal(_STATE, TCP_ESTABLISHED) & inode_set
    # An AF_INET message's 16-byte idiag_src is the address and 12 zero
    # bytes: in a datagram of AF_INET messages only the first 4 are compared
    # (a target with more than zeros after them matches no socket).
    width = 4 if buf[_FAMILY::stride].count(socket.AF_INET) == n else 16
    counts = []
    for src, sport in targets:
        port = sport.to_bytes(2, sys.byteorder)  # back to the wire's big-endian bytes
        mask = accepted & equal(_SPORT, port[0]) & equal(_SPORT + 1, port[1])
        if src is not None:
            if any(src[width:]):
                mask = 0
            for j in range(width):
                if not mask:
                    break
                mask &= equal(_SRC + j, src[j])
        counts.append(mask.bit_count())
    return TargetChunk(listeners, counts, False, interrupted)


# -- unix_diag: counting by name -----------------------------------------------


def unix_name_attr(name: str) -> bytes:
    """The UNIX_DIAG_NAME attribute the kernel writes for a socket name.

    The kernel stores a path with its terminating NUL and an abstract name
    (``@name`` here) as a leading NUL and the name's bytes (linux/unix_diag.h,
    af_unix.c unix_mkname_bsd).
    """
    raw = b"\0" + os.fsencode(name[1:]) if name[:1] == "@" else os.fsencode(name) + b"\0"
    return NLATTR.pack(NLATTR.size + len(raw), UNIX_DIAG_NAME) + raw


def count_unix_names(buf: bytes, needles: dict[str, bytes]) -> tuple[dict[str, int], bool, bool]:
    """Count messages of a unix_diag dump (UDIAG_SHOW_NAME only) per name.

    The datagram is walked by :func:`messages` for NLMSG_DONE/NLMSG_ERROR
    and NLM_F_DUMP_INTR; each name is counted by searching its exact
    UNIX_DIAG_NAME attribute (length, type and bytes) in the datagram, which
    a path cannot contain by accident (it holds NUL bytes).
    """
    found = messages(buf, body=None)  # no message is read: only the end and NLM_F_DUMP_INTR
    counts = {name: buf.count(needle) for name, needle in needles.items()}
    return counts, found.done, found.interrupted


def count_unix_stream_names(buf: bytes, names: frozenset[str]) -> tuple[dict[str, int], bool, bool]:
    """Like :func:`count_unix_names`, message by message, SOCK_STREAM only.

    The exact (slower) count, for when a name is also carried by a socket of
    another type (a SOCK_SEQPACKET listener may share an abstract name with a
    stream one, and its accepted connections carry that name too).
    """
    socks, done, intr = parse_unix_dump(buf)
    counts = dict.fromkeys(names, 0)
    for s in socks:
        if s.type == SOCK_STREAM and s.name in counts:
            counts[s.name] += 1
    return counts, done, intr
