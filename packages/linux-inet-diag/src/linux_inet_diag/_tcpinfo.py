"""struct tcp_info (linux/tcp.h) decoded field by field, bit-fields included."""

from __future__ import annotations

import enum
import errno
import socket
import struct
from dataclasses import dataclass, fields
from typing import Any

from ._errors import TcpInfoLengthError
from ._platform import require_linux

__all__ = ["TcpCaState", "TcpInfo", "TcpState"]
# Also for this package's own modules: TCP_STATES, tcp_info_attr.


class TcpState(enum.IntEnum):
    """TCP states as the kernel numbers them (linux/tcp_states.h)."""

    ESTABLISHED = 1
    SYN_SENT = 2
    SYN_RECV = 3
    FIN_WAIT1 = 4
    FIN_WAIT2 = 5
    TIME_WAIT = 6
    CLOSE = 7
    CLOSE_WAIT = 8
    LAST_ACK = 9
    LISTEN = 10
    CLOSING = 11
    NEW_SYN_RECV = 12
    BOUND_INACTIVE = 13


class TcpCaState(enum.IntEnum):
    """Congestion-avoidance states (linux/tcp.h, enum tcp_ca_state)."""

    OPEN = 0
    DISORDER = 1
    CWR = 2
    RECOVERY = 3
    LOSS = 4


# struct tcp_info (linux/tcp.h), in kernel order after the 8 leading bytes:
# (field name, struct code). Bytes 0-7 are u8 fields; byte 6 holds the
# bit-fields ``__u8 tcpi_snd_wscale : 4, tcpi_rcv_wscale : 4;`` and byte 7
# ``__u8 tcpi_delivery_rate_app_limited : 1, tcpi_fastopen_client_fail : 2;``.
# On little-endian ABIs (x86, arm64) the first declared bit-field takes the
# least significant bits: snd_wscale is the low nibble, rcv_wscale the high.
_LAYOUT: tuple[tuple[str, str], ...] = (
    ("rto", "I"), ("ato", "I"), ("snd_mss", "I"), ("rcv_mss", "I"),
    ("unacked", "I"), ("sacked", "I"), ("lost", "I"), ("retrans", "I"),
    ("fackets", "I"),
    ("last_data_sent", "I"), ("last_ack_sent", "I"), ("last_data_recv", "I"),
    ("last_ack_recv", "I"),
    ("pmtu", "I"), ("rcv_ssthresh", "I"), ("rtt", "I"), ("rttvar", "I"),
    ("snd_ssthresh", "I"), ("snd_cwnd", "I"), ("advmss", "I"),
    ("reordering", "I"), ("rcv_rtt", "I"), ("rcv_space", "I"),
    ("total_retrans", "I"),
    # -- end of the Linux 2.6 struct (104 bytes); later fields may be absent
    ("pacing_rate", "Q"), ("max_pacing_rate", "Q"),
    ("bytes_acked", "Q"), ("bytes_received", "Q"),
    ("segs_out", "I"), ("segs_in", "I"),
    ("notsent_bytes", "I"), ("min_rtt", "I"),
    ("data_segs_in", "I"), ("data_segs_out", "I"),
    ("delivery_rate", "Q"),
    ("busy_time", "Q"), ("rwnd_limited", "Q"), ("sndbuf_limited", "Q"),
    ("delivered", "I"), ("delivered_ce", "I"),
    ("bytes_sent", "Q"), ("bytes_retrans", "Q"),
    ("dsack_dups", "I"), ("reord_seen", "I"),
    ("rcv_ooopack", "I"),
    ("snd_wnd", "I"), ("rcv_wnd", "I"),
    ("rehash", "I"),
    ("total_rto", "H"), ("total_rto_recoveries", "H"), ("total_rto_time", "I"),
    ("received_ce", "I"),
    ("delivered_e1_bytes", "I"), ("delivered_e0_bytes", "I"),
    ("delivered_ce_bytes", "I"),
    ("received_e1_bytes", "I"), ("received_e0_bytes", "I"),
    ("received_ce_bytes", "I"),
    ("accecn_fail_mode", "H"), ("accecn_opt_seen", "H"),
)  # fmt: skip
# The size of the Linux 2.6 struct, the fewest bytes any kernel returns.
TCP_INFO_MIN = 104
# (name, offset, Struct) for every field after the first 8 bytes.
_FIELDS: list[tuple[str, int, struct.Struct]] = []
_off = 8
for _name, _code in _LAYOUT:
    _s = struct.Struct("=" + _code)
    _off = (_off + _s.size - 1) // _s.size * _s.size
    _FIELDS.append((_name, _off, _s))
    _off += _s.size
TCP_INFO_MAX = _off  # 280 on Linux 6.18
# tcpi_state / tcpi_ca_state values this package knows, by number; a value a
# newer kernel adds is kept as a plain int.
TCP_STATES: dict[int, TcpState] = {s.value: s for s in TcpState}
_CA_STATES: dict[int, TcpCaState] = {s.value: s for s in TcpCaState}
# linux/tcp.h: TCP_INFO (getsockopt option 11 at level IPPROTO_TCP)
_TCP_INFO = 11


@dataclass(frozen=True, slots=True)
class TcpInfo:
    """Every field of ``struct tcp_info`` (linux/tcp.h) the kernel returned.

    Names are the kernel's without the ``tcpi_`` prefix. Units: times
    ``rto``, ``ato``, ``rtt``, ``rttvar``, ``rcv_rtt``, ``min_rtt`` in
    microseconds; ``last_*`` in milliseconds; ``busy_time``,
    ``rwnd_limited``, ``sndbuf_limited`` in microseconds; ``total_rto_time``
    in milliseconds; ``pacing_rate``, ``max_pacing_rate``, ``delivery_rate``
    in bytes per second; ``bytes_*``, ``notsent_bytes``, ``snd_wnd``,
    ``rcv_wnd``, ``*_mss``, ``advmss``, ``pmtu``, ``rcv_space`` in bytes;
    ``snd_cwnd``, ``snd_ssthresh``, ``rcv_ssthresh`` (bytes) and the
    ``segs``/``packets`` counters in segments. ``snd_wscale``/``rcv_wscale``
    are window-scale shifts. Fields after ``total_retrans`` are ``None``
    when the running kernel's struct is too short to hold them; ``size`` is
    how many bytes it returned. ``state`` is a :class:`TcpState` and
    ``ca_state`` a :class:`TcpCaState` when the number is one this package
    knows, else the kernel's plain ``int`` (a state added by a newer kernel
    does not make decoding fail).

    >>> import socket
    >>> with socket.create_server(("127.0.0.1", 0)) as srv:
    ...     with socket.create_connection(srv.getsockname()) as cli:
    ...         TcpInfo.from_socket(cli).state
    <TcpState.ESTABLISHED: 1>
    """

    size: int
    state: TcpState | int
    ca_state: TcpCaState | int
    retransmits: int
    probes: int
    backoff: int
    options: int
    snd_wscale: int
    rcv_wscale: int
    delivery_rate_app_limited: int
    fastopen_client_fail: int
    rto: int
    ato: int
    snd_mss: int
    rcv_mss: int
    unacked: int
    sacked: int
    lost: int
    retrans: int
    fackets: int
    last_data_sent: int
    last_ack_sent: int
    last_data_recv: int
    last_ack_recv: int
    pmtu: int
    rcv_ssthresh: int
    rtt: int
    rttvar: int
    snd_ssthresh: int
    snd_cwnd: int
    advmss: int
    reordering: int
    rcv_rtt: int
    rcv_space: int
    total_retrans: int
    pacing_rate: int | None = None
    max_pacing_rate: int | None = None
    bytes_acked: int | None = None
    bytes_received: int | None = None
    segs_out: int | None = None
    segs_in: int | None = None
    notsent_bytes: int | None = None
    min_rtt: int | None = None
    data_segs_in: int | None = None
    data_segs_out: int | None = None
    delivery_rate: int | None = None
    busy_time: int | None = None
    rwnd_limited: int | None = None
    sndbuf_limited: int | None = None
    delivered: int | None = None
    delivered_ce: int | None = None
    bytes_sent: int | None = None
    bytes_retrans: int | None = None
    dsack_dups: int | None = None
    reord_seen: int | None = None
    rcv_ooopack: int | None = None
    snd_wnd: int | None = None
    rcv_wnd: int | None = None
    rehash: int | None = None
    total_rto: int | None = None
    total_rto_recoveries: int | None = None
    total_rto_time: int | None = None
    received_ce: int | None = None
    delivered_e1_bytes: int | None = None
    delivered_e0_bytes: int | None = None
    delivered_ce_bytes: int | None = None
    received_e1_bytes: int | None = None
    received_e0_bytes: int | None = None
    received_ce_bytes: int | None = None
    accecn_fail_mode: int | None = None
    accecn_opt_seen: int | None = None

    @classmethod
    def from_bytes(cls, data: bytes) -> TcpInfo:
        """Decode the bytes of ``getsockopt(TCP_INFO)`` or INET_DIAG_INFO.

        Raises TcpInfoLengthError (a ValueError) when fewer than the 104
        bytes of Linux 2.6 are given.

        >>> TcpInfo.from_bytes(bytes([1, 0, 0, 0, 0, 7, 0x97]) + bytes(97)).rcv_wscale
        9
        """
        size = len(data)
        if size < TCP_INFO_MIN:
            raise TcpInfoLengthError(size, TCP_INFO_MIN)
        b = data
        kw: dict[str, Any] = {
            "size": size,
            "state": TCP_STATES.get(b[0], b[0]),
            "ca_state": _CA_STATES.get(b[1], b[1]),
            "retransmits": b[2],
            "probes": b[3],
            "backoff": b[4],
            "options": b[5],
            "snd_wscale": b[6] & 0x0F,
            "rcv_wscale": b[6] >> 4,
            "delivery_rate_app_limited": b[7] & 0x01,
            "fastopen_client_fail": (b[7] >> 1) & 0x03,
        }
        for name, off, st in _FIELDS:
            if off + st.size > size:
                break
            kw[name] = st.unpack_from(b, off)[0]
        return cls(**kw)

    @classmethod
    def from_socket(cls, sock: socket.socket) -> TcpInfo:
        """Read ``getsockopt(IPPROTO_TCP, TCP_INFO)`` of a connected TCP socket.

        >>> import socket
        >>> with socket.create_server(("127.0.0.1", 0)) as srv:
        ...     TcpInfo.from_socket(srv).state.name
        'LISTEN'

        Off Linux raises UnavailableError (``errno.ENOPROTOOPT``): other
        systems' TCP_INFO, where it exists, is another struct.
        """
        require_linux("TCP_INFO (Linux struct tcp_info)", errno.ENOPROTOOPT)
        opt = getattr(socket, "TCP_INFO", _TCP_INFO)
        return cls.from_bytes(sock.getsockopt(socket.IPPROTO_TCP, opt, 512))

    def as_dict(self) -> dict[str, Any]:
        """All fields as a plain dict (None for fields the kernel lacks)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def tcp_info_attr(raw: bytes | None) -> TcpInfo | None:
    """An INET_DIAG_INFO attribute's payload decoded; None when absent or too short.

    A socket without ``struct tcp_info`` (TIME_WAIT, NEW_SYN_RECV) carries no
    INET_DIAG_INFO; one shorter than Linux 2.6's 104 bytes is not decoded.
    """
    if raw is None or len(raw) < TCP_INFO_MIN:
        return None
    return TcpInfo.from_bytes(raw)
