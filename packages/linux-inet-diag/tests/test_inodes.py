"""listener_inodes(): every listener's socket inode and name; the kernel is the oracle."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from linux_inet_diag import (
    ArgumentError,
    AsyncDiagSocket,
    DiagSocket,
    NetlinkError,
    listener_inodes,
)

pytestmark = pytest.mark.linux


def inode(s: socket.socket) -> int:
    """The socket's inode as the kernel gives it to ``fstat`` (and ``/proc/PID/fd``)."""
    return os.fstat(s.fileno()).st_ino


class Sockets:
    """Sockets made for one test, closed at its end."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self.stack = stack

    def make(self, family: int, kind: int = socket.SOCK_STREAM) -> socket.socket:
        s = socket.socket(family, kind)
        self.stack.callback(s.close)
        return s

    def listener(
        self, family: int, addr: object, *, kind: int = socket.SOCK_STREAM,
        reuseport: bool = False, v6only: bool | None = None,
    ) -> socket.socket:  # fmt: skip
        s = self.make(family, kind)
        if reuseport:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if v6only is not None:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        s.bind(addr)  # type: ignore[arg-type]
        s.listen(8)
        return s


@pytest.fixture
def sockets() -> Iterator[Sockets]:
    with contextlib.ExitStack() as stack:
        yield Sockets(stack)


def port(s: socket.socket) -> int:
    return int(s.getsockname()[1])


@dataclass
class Machine:
    """What a test made: ``listeners`` (inode -> canonical name) and ``others``' inodes."""

    listeners: dict[int, str]
    others: list[int]


@pytest.fixture
def machine(sockets: Sockets, tmp_path: os.PathLike[str]) -> Machine:
    """Listeners of every kind, and sockets that are not listeners."""
    v4 = sockets.listener(socket.AF_INET, ("127.0.0.1", 0))
    v6 = sockets.listener(socket.AF_INET6, ("::1", 0))
    any4 = sockets.listener(socket.AF_INET, ("0.0.0.0", 0))
    dual = sockets.listener(socket.AF_INET6, ("::", 0), v6only=False)
    pair = sockets.listener(socket.AF_INET, ("127.0.0.1", 0), reuseport=True)
    twin = sockets.listener(socket.AF_INET, ("127.0.0.1", port(pair)), reuseport=True)
    path = os.path.join(tmp_path, "app.sock")
    unix = sockets.listener(socket.AF_UNIX, path)
    abstract = f"@linux-inet-diag-inodes-{os.getpid()}"
    abs_srv = sockets.listener(socket.AF_UNIX, "\0" + abstract[1:])
    listeners = {
        inode(v4): f"127.0.0.1:{port(v4)}",
        inode(v6): f"[::1]:{port(v6)}",
        inode(any4): f"0.0.0.0:{port(any4)}",
        inode(dual): f"[::]:{port(dual)}",
        inode(pair): f"127.0.0.1:{port(pair)}",
        inode(twin): f"127.0.0.1:{port(pair)}",
        inode(unix): path,
        inode(abs_srv): abstract,
    }
    client = sockets.make(socket.AF_INET)
    client.settimeout(5)
    client.connect(v4.getsockname())
    v4.settimeout(5)
    accepted, _ = v4.accept()
    sockets.stack.callback(accepted.close)
    bound = sockets.make(socket.AF_INET)  # bound, never listening
    bound.bind(("127.0.0.1", 0))
    seq = sockets.listener(
        socket.AF_UNIX, os.path.join(tmp_path, "seq.sock"), kind=socket.SOCK_SEQPACKET
    )
    udp = sockets.make(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    return Machine(listeners, [inode(s) for s in (client, accepted, bound, seq, udp)])


def mine(got: dict[int, str], want: dict[int, str]) -> dict[int, str]:
    """The entries of ``got`` for the inodes of ``want``."""
    return {ino: got[ino] for ino in want if ino in got}


def test_every_listener_by_its_inode(machine: Machine) -> None:
    """Each listener's fstat inode maps to its canonical name; other sockets are absent."""
    want = machine.listeners
    got = listener_inodes()
    assert mine(got, want) == want
    assert not set(machine.others) & set(got)


def test_one_family_at_a_time(machine: Machine) -> None:
    """family= keeps one family: IPv4, IPv6 (dual-stack [::] included) or Unix listeners."""
    want = machine.listeners

    def of(pick: Callable[[str], bool]) -> dict[int, str]:
        return {ino: name for ino, name in want.items() if pick(name)}

    v4 = listener_inodes(socket.AF_INET)
    v6 = listener_inodes(socket.AF_INET6)
    unix = listener_inodes(socket.AF_UNIX)
    assert mine(v4, want) == of(lambda n: n[0].isdigit())
    assert mine(v6, want) == of(lambda n: n.startswith("["))
    assert mine(unix, want) == of(lambda n: n[0] in "/@")
    assert all(name[0].isdigit() for name in v4.values())
    assert all(name.startswith("[") for name in v6.values())
    assert all(name[0] in "/@" for name in unix.values())


def tcp_listening_inodes() -> set[int]:
    """Inodes of LISTEN sockets in /proc/net/tcp and tcp6 (st 0A, inode column 9)."""
    out = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(path) as f:
            next(f)
            for line in f:
                cols = line.split()
                if cols[3] == "0A":
                    out.add(int(cols[9]))
    return out


def test_every_tcp_listener_of_proc_net_tcp(machine: Machine) -> None:
    """Every TCP listener /proc/net/tcp{,6} shows before and after the call is in the answer."""
    before = tcp_listening_inodes()
    got = listener_inodes()
    after = tcp_listening_inodes()
    assert before & after <= set(got)


def test_async_socket_agrees(machine: Machine) -> None:
    """AsyncDiagSocket.listener_inodes gives the same names as DiagSocket's."""
    want = machine.listeners

    async def main() -> dict[int, str]:
        async with AsyncDiagSocket() as diag:
            return await diag.listener_inodes()

    with DiagSocket() as diag:
        assert mine(diag.listener_inodes(), want) == want
    assert mine(asyncio.run(main()), want) == want


def test_unix_listeners_from_proc_without_unix_diag(
    machine: Machine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without unix_diag, Unix listeners come from /proc/net/unix, with a RuntimeWarning."""
    want = machine.listeners
    real = DiagSocket._dump

    def no_unix_diag(self: DiagSocket, make: Callable[[int], bytes], parse: object) -> object:
        if make(0)[16] == socket.AF_UNIX:  # sdiag_family, after the 16-byte nlmsghdr
            raise NetlinkError(errno.ENOENT, "No such file or directory")
        return real(self, make, parse)  # type: ignore[arg-type]

    monkeypatch.setattr(DiagSocket, "_dump", no_unix_diag)
    with pytest.warns(RuntimeWarning, match="falling back to scanning /proc/net/unix"):
        got = listener_inodes()
    assert mine(got, want) == want
    assert not set(machine.others) & set(got)


def test_bad_family() -> None:
    """A family other than AF_INET, AF_INET6, AF_UNIX or None raises ArgumentError naming it."""
    for bad in (99, "AF_INET", True, socket.AF_PACKET):
        with pytest.raises(ArgumentError, match=r"invalid family .*: expected socket.AF_INET, "):
            listener_inodes(bad)  # type: ignore[arg-type]
