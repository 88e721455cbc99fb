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


def _wait(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("not true in time")
        time.sleep(0.01)


def test_listening_sockets_give_each_listener_its_queue_and_backlog(
    sockets: Sockets, tmp_path: object
) -> None:
    """Name, inode, queued (completed, not accepted) and backlog, as the kernel keeps them."""
    from linux_inet_diag import ListeningSocket, listening_sockets

    v4 = sockets.make(socket.AF_INET)
    v4.bind(("127.0.0.1", 0))
    v4.listen(5)
    path = f"{tmp_path}/q.sock"
    unix = sockets.make(socket.AF_UNIX)
    unix.bind(path)
    unix.listen(3)
    for _ in range(2):
        sockets.make(socket.AF_INET).connect(v4.getsockname())
    sockets.make(socket.AF_UNIX).connect(path)
    name = f"127.0.0.1:{v4.getsockname()[1]}"

    def mine() -> list[ListeningSocket]:
        return [s for s in listening_sockets() if s.inode in (inode(v4), inode(unix))]

    _wait(lambda: sorted(s.queued for s in mine()) == [1, 2])
    assert sorted(mine(), key=lambda s: s.unix) == [
        ListeningSocket(name, inode(v4), False, 2, 5),
        ListeningSocket(path, inode(unix), True, 1, 3),
    ]
    assert listening_sockets(socket.AF_UNIX) == [
        s for s in listening_sockets(socket.AF_UNIX) if s.unix
    ]
    with DiagSocket() as diag:
        assert {s.inode: s.name for s in diag.listening_sockets()} == diag.listener_inodes()

    async def from_the_loop() -> list[ListeningSocket]:
        async with AsyncDiagSocket() as adiag:
            return await adiag.listening_sockets(socket.AF_INET)

    assert [s for s in asyncio.run(from_the_loop()) if s.inode == inode(v4)] == [
        ListeningSocket(name, inode(v4), False, 2, 5)
    ]


def test_listening_sockets_equal_the_full_records_of_listen_sockets() -> None:
    """The cheap LISTEN-only query gives what the full records of LISTEN sockets give."""
    from linux_inet_diag import TcpState, inet_diag_records, listening_sockets

    with (
        socket.create_server(("127.0.0.1", 0), backlog=7) as v4,
        socket.create_server(("::1", 0), family=socket.AF_INET6, backlog=3) as v6,
    ):
        waiting = socket.create_connection(v4.getsockname())
        try:
            _wait(lambda: any(s.queued for s in listening_sockets(socket.AF_INET)))
            ours = sorted(
                (s.inode, s.name, s.queued, s.backlog) for s in listening_sockets() if not s.unix
            )
            records = inet_diag_records(states=[TcpState.LISTEN])
            theirs = sorted(
                (r.inode, r.local, r.receive_queue, r.send_queue) for r in records if r.inode
            )
        finally:
            waiting.close()
        assert ours == theirs
        names = {s[1]: s for s in ours}
        assert names[f"127.0.0.1:{v4.getsockname()[1]}"][2:] == (1, 7)
        assert names[f"[::1]:{v6.getsockname()[1]}"][2:] == (0, 3)
