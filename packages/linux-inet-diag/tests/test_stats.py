"""Listener statistics against scenarios built on loopback; the kernel is the oracle."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import resource
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import linux_inet_diag as lid
import pytest
from linux_inet_diag import (
    AddressError,
    AsyncDiagSocket,
    DiagSocket,
    ListenStats,
    NetlinkError,
    UnavailableError,
    _api,
    _platform,
    tcp_listener_stats,
    unix_listener_stats,
)

NLM_F_DUMP_INTR = 0x10  # linux/netlink.h

pytestmark = pytest.mark.linux


class Scenario:
    """A listener with ``accepted`` connections held and ``queued`` waiting."""

    def __init__(self) -> None:
        self.stack = contextlib.ExitStack()

    def keep(self, s: socket.socket) -> socket.socket:
        self.stack.callback(s.close)
        return s

    def listener(
        self, family: int, addr: object, backlog: int = 32, reuseport: bool = False,
        v6only: bool | None = None, kind: int = socket.SOCK_STREAM,
    ) -> socket.socket:  # fmt: skip
        s = self.keep(socket.socket(family, kind))
        if reuseport:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if v6only is not None:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        s.bind(addr)  # type: ignore[arg-type]
        s.listen(backlog)
        return s

    def connect(self, family: int, addr: object, n: int, kind: int = socket.SOCK_STREAM) -> None:
        for _ in range(n):
            c = self.keep(socket.socket(family, kind))
            c.settimeout(5)
            c.connect(addr)  # type: ignore[arg-type]

    def accept(self, listener: socket.socket, n: int) -> None:
        listener.settimeout(5)
        for _ in range(n):
            self.keep(listener.accept()[0])


@pytest.fixture
def scenario() -> Iterator[Scenario]:
    sc = Scenario()
    with sc.stack:
        yield sc


def settle(get: Callable[[], object], want: object, timeout: float = 3.0) -> object:
    """Poll ``get`` until it returns ``want`` (handshakes finish asynchronously)."""
    deadline = time.monotonic() + timeout
    got = get()
    while got != want and time.monotonic() < deadline:
        time.sleep(0.01)
        got = get()
    return got


def port_of(s: socket.socket) -> int:
    return int(s.getsockname()[1])


def test_ipv4_active_and_queued(scenario: Scenario) -> None:
    """3 accepted-and-held plus 2 waiting connections read as 3 active, 2 queued."""
    srv = scenario.listener(socket.AF_INET, ("127.0.0.1", 0), backlog=16)
    name = f"127.0.0.1:{port_of(srv)}"
    scenario.connect(socket.AF_INET, srv.getsockname(), 5)
    scenario.accept(srv, 3)
    want = {name: ListenStats(active=3, queued=2, backlog=16)}
    assert settle(lambda: tcp_listener_stats([name]), want) == want
    assert tcp_listener_stats(name) == want  # one name or many alike
    assert want[name].total == 5


def test_several_names_match_one_name_each(scenario: Scenario) -> None:
    """Several names in one query (one dump, counted per address) equal one query per name."""
    want = {}
    for k, (accepted, waiting) in enumerate([(3, 2), (0, 4), (5, 0), (1, 1)]):
        srv = scenario.listener(socket.AF_INET, ("127.0.0.1", 0), backlog=16 + k)
        scenario.connect(socket.AF_INET, srv.getsockname(), accepted + waiting)
        scenario.accept(srv, accepted)
        want[f"127.0.0.1:{port_of(srv)}"] = ListenStats(accepted, waiting, 16 + k)
    six = scenario.listener(socket.AF_INET6, ("::1", 0), backlog=9)
    scenario.connect(socket.AF_INET6, six.getsockname()[:2], 3)
    scenario.accept(six, 2)
    want[f"[::1]:{port_of(six)}"] = ListenStats(2, 1, 9)
    names = list(want)
    assert settle(lambda: tcp_listener_stats(names), want) == want
    assert {name: tcp_listener_stats(name)[name] for name in names} == want


def test_ipv6_and_spelling_as_asked(scenario: Scenario) -> None:
    """An IPv6 listener answers under the spelling asked and under canonical."""
    srv = scenario.listener(socket.AF_INET6, ("::1", 0), backlog=8)
    port = port_of(srv)
    scenario.connect(socket.AF_INET6, ("::1", port), 3)
    scenario.accept(srv, 1)
    names = [f"[::1]:{port}", f"[0:0::1]:{port}"]
    want = dict.fromkeys(names, ListenStats(1, 2, 8))
    assert settle(lambda: tcp_listener_stats(names), want) == want


def test_wildcard_counts_every_local_address(scenario: Scenario) -> None:
    """0.0.0.0:P counts accepted connections to 127.0.0.1 and 127.0.0.2 alike."""
    srv = scenario.listener(socket.AF_INET, ("0.0.0.0", 0), backlog=10)
    port = port_of(srv)
    scenario.connect(socket.AF_INET, ("127.0.0.1", port), 2)
    scenario.connect(socket.AF_INET, ("127.0.0.2", port), 2)
    scenario.accept(srv, 3)
    names = [f"0.0.0.0:{port}", f"127.0.0.2:{port}"]
    got = settle(lambda: tcp_listener_stats(names)[names[0]], ListenStats(3, 1, 10))
    assert got == ListenStats(3, 1, 10)
    # 127.0.0.2:P has no listener of its own: its accepted connections only.
    assert tcp_listener_stats(names)[names[1]].queued == 0
    assert tcp_listener_stats(names)[names[1]].backlog is None


def test_dual_stack_wildcard_counts_ipv4_mapped(scenario: Scenario) -> None:
    """[::]:P on a dual-stack socket counts IPv4-mapped and IPv6 connections."""
    srv = scenario.listener(socket.AF_INET6, ("::", 0), backlog=9, v6only=False)
    port = port_of(srv)
    scenario.connect(socket.AF_INET, ("127.0.0.1", port), 2)
    scenario.connect(socket.AF_INET6, ("::1", port), 2)
    scenario.accept(srv, 4)
    name = f"[::]:{port}"
    want = {name: ListenStats(4, 0, 9)}
    assert settle(lambda: tcp_listener_stats([name]), want) == want
    everything = tcp_listener_stats()
    assert everything[name] == want[name]


def test_reuseport_listeners_add_up(scenario: Scenario) -> None:
    """Two SO_REUSEPORT listeners on one name add active, queued and backlog."""
    # The kernel hashes each connection to one of the pair, so either may get
    # all 8: both backlogs must hold 8, or a SYN is dropped and connect hangs.
    a = scenario.listener(socket.AF_INET, ("127.0.0.1", 0), 10, reuseport=True)
    port = port_of(a)
    b = scenario.listener(socket.AF_INET, ("127.0.0.1", port), 12, reuseport=True)
    scenario.connect(socket.AF_INET, ("127.0.0.1", port), 8)
    a.setblocking(False)
    b.setblocking(False)
    accepted = 0
    deadline = time.monotonic() + 5
    while accepted < 4 and time.monotonic() < deadline:
        for s in (a, b):
            with contextlib.suppress(BlockingIOError):
                if accepted < 4:
                    scenario.keep(s.accept()[0])
                    accepted += 1
    name = f"127.0.0.1:{port}"
    want = {name: ListenStats(4, 4, 22)}
    assert settle(lambda: tcp_listener_stats([name]), want) == want
    assert tcp_listener_stats()[name] == want[name]


def test_unknown_names_are_zero() -> None:
    """A name nothing listens on answers 0/0 with backlog None, one or many."""
    want = ListenStats(0, 0, None)
    assert tcp_listener_stats("127.0.0.1:1") == {"127.0.0.1:1": want}
    got = tcp_listener_stats(["127.0.0.1:1", "[::1]:1", "0.0.0.0:1"])
    assert got == dict.fromkeys(["127.0.0.1:1", "[::1]:1", "0.0.0.0:1"], want)


def test_all_listeners_match_ss(scenario: Scenario) -> None:
    """With no names, every listener ss reports is answered with ss's queue."""
    srv = scenario.listener(socket.AF_INET, ("127.0.0.1", 0), backlog=4)
    scenario.connect(socket.AF_INET, srv.getsockname(), 1)
    name = f"127.0.0.1:{port_of(srv)}"
    settle(lambda: tcp_listener_stats([name])[name].queued, 1)
    if shutil.which("ss") is None:
        pytest.skip("ss is not installed")
    out = subprocess.run(
        ["ss", "-Hltn"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    ours = tcp_listener_stats()
    for line in out.splitlines():
        _state, recvq, sendq, local, *_ = line.split()
        local = re.sub(r"%[^\]:]*", "", local)
        local = local.replace("*:", "0.0.0.0:")
        if local.startswith("[::ffff:"):
            continue
        assert local in ours, local
        if local == name:
            assert (ours[local].queued, ours[local].backlog) == (int(recvq), int(sendq))


def test_active_matches_ss_with_inodes(scenario: Scenario) -> None:
    """Active equals ss's established sockets with a non-zero inode (accepted)."""
    if shutil.which("ss") is None:
        pytest.skip("ss (iproute2) is not installed")
    srv = scenario.listener(socket.AF_INET, ("127.0.0.1", 0), backlog=8)
    port = port_of(srv)
    scenario.connect(socket.AF_INET, ("127.0.0.1", port), 4)
    scenario.accept(srv, 2)
    name = f"127.0.0.1:{port}"
    settle(lambda: tcp_listener_stats([name])[name], ListenStats(2, 2, 8))
    out = subprocess.run(
        ["ss", "-Htne", "state", "established", "sport", f"= :{port}"],
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout  # fmt: skip
    with_inode = [ln for ln in out.splitlines() if " ino:0 " not in ln]
    assert len(out.splitlines()) == 4
    assert tcp_listener_stats([name])[name].active == len(with_inode) == 2


def test_unix_path_and_abstract(scenario: Scenario, tmp_path: os.PathLike[str]) -> None:
    """Unix path and abstract listeners report accepted and waiting connections."""
    path = os.path.join(tmp_path, "app.sock")
    srv = scenario.listener(socket.AF_UNIX, path, backlog=6)
    scenario.connect(socket.AF_UNIX, path, 3)
    scenario.accept(srv, 1)
    abstract = f"@linux-inet-diag-test-{os.getpid()}"
    asrv = scenario.listener(socket.AF_UNIX, "\0" + abstract[1:], backlog=3)
    scenario.connect(socket.AF_UNIX, "\0" + abstract[1:], 2)
    scenario.accept(asrv, 2)
    got = unix_listener_stats([path, abstract])
    assert got == {path: ListenStats(1, 2, 6), abstract: ListenStats(2, 0, 3)}
    every = unix_listener_stats()
    assert every[path] == got[path]
    assert every[abstract] == got[abstract]
    assert unix_listener_stats(path + ".none") == {path + ".none": ListenStats(0, 0, None)}


def test_unix_symlink_answers_both_names(scenario: Scenario, tmp_path: os.PathLike[str]) -> None:
    """A symlinked path is resolved and answered under both names."""
    real = os.path.join(os.path.realpath(tmp_path), "real.sock")
    link = os.path.join(tmp_path, "link.sock")
    srv = scenario.listener(socket.AF_UNIX, real, backlog=4)
    os.symlink(real, link)
    scenario.connect(socket.AF_UNIX, real, 2)
    scenario.accept(srv, 1)
    want = ListenStats(1, 1, 4)
    assert unix_listener_stats(link) == {link: want, real: want}


def test_unix_bound_under_symlinked_directory(
    scenario: Scenario, tmp_path: os.PathLike[str]
) -> None:
    """Bound at link/s (link -> real): link/s and real/s both carry the listener's numbers."""
    base = os.path.realpath(tmp_path)
    os.mkdir(os.path.join(base, "real"))
    os.symlink(os.path.join(base, "real"), os.path.join(base, "link"))
    bound = os.path.join(base, "link", "s")
    resolved = os.path.join(base, "real", "s")
    srv = scenario.listener(socket.AF_UNIX, bound, backlog=8)
    scenario.connect(socket.AF_UNIX, bound, 3)
    scenario.accept(srv, 1)
    want = ListenStats(1, 2, 8)
    # by the name it was bound with: the resolved path is answered too
    assert unix_listener_stats(bound) == {bound: want, resolved: want}
    # by the resolved name only (the kernel reports the name it was bound with)
    assert unix_listener_stats(resolved) == {resolved: want}
    # every listener: under the name the kernel reports
    assert unix_listener_stats()[bound] == want
    assert resolved not in unix_listener_stats()


def test_unix_several_names_at_once(scenario: Scenario, tmp_path: os.PathLike[str]) -> None:
    """Bound name, resolved name, a symlink to the socket, abstract and absent names in one call."""
    base = os.path.realpath(tmp_path)
    os.mkdir(os.path.join(base, "real"))
    os.symlink(os.path.join(base, "real"), os.path.join(base, "link"))
    bound = os.path.join(base, "link", "s")
    resolved = os.path.join(base, "real", "s")
    alias = os.path.join(base, "alias.sock")
    srv = scenario.listener(socket.AF_UNIX, bound, backlog=8)
    os.symlink(bound, alias)
    scenario.connect(socket.AF_UNIX, bound, 4)
    scenario.accept(srv, 3)
    abstract = f"@linux-inet-diag-many-{os.getpid()}"
    asrv = scenario.listener(socket.AF_UNIX, "\0" + abstract[1:], backlog=5)
    scenario.connect(socket.AF_UNIX, "\0" + abstract[1:], 2)
    scenario.accept(asrv, 2)
    other = os.path.join(base, "other.sock")
    osrv = scenario.listener(socket.AF_UNIX, other, backlog=2)
    scenario.connect(socket.AF_UNIX, other, 1)
    scenario.accept(osrv, 1)
    missing = os.path.join(base, "missing.sock")
    names = [resolved, alias, abstract, bound, missing, other]
    with DiagSocket() as diag:
        got = diag.unix_listener_stats(names)
    want = ListenStats(3, 1, 8)
    assert got == {
        resolved: want,
        alias: want,
        bound: want,
        abstract: ListenStats(2, 0, 5),
        missing: ListenStats(0, 0, None),
        other: ListenStats(1, 0, 2),
    }
    assert list(got) == names  # asked names in order, nothing else (alias resolves to resolved)


def test_seqpacket_listeners_are_not_stream_listeners(
    scenario: Scenario, tmp_path: os.PathLike[str]
) -> None:
    """SOCK_SEQPACKET listeners (path and abstract) never appear; asked for, they are 0/0."""
    seq = socket.SOCK_SEQPACKET
    path = os.path.join(tmp_path, "seq.sock")
    psrv = scenario.listener(socket.AF_UNIX, path, backlog=4, kind=seq)
    scenario.connect(socket.AF_UNIX, path, 2, kind=seq)
    scenario.accept(psrv, 1)
    abstract = f"@linux-inet-diag-seq-{os.getpid()}"
    asrv = scenario.listener(socket.AF_UNIX, "\0" + abstract[1:], backlog=3, kind=seq)
    scenario.connect(socket.AF_UNIX, "\0" + abstract[1:], 2, kind=seq)
    scenario.accept(asrv, 2)
    stream = os.path.join(tmp_path, "stream.sock")
    ssrv = scenario.listener(socket.AF_UNIX, stream, backlog=6)
    scenario.connect(socket.AF_UNIX, stream, 2)
    scenario.accept(ssrv, 1)
    every = unix_listener_stats()
    assert every[stream] == ListenStats(1, 1, 6)
    assert path not in every
    assert abstract not in every
    assert unix_listener_stats([path, abstract, stream]) == {
        path: ListenStats(0, 0, None),
        abstract: ListenStats(0, 0, None),
        stream: ListenStats(1, 1, 6),
    }


def test_stream_and_seqpacket_sharing_an_abstract_name(scenario: Scenario) -> None:
    """A stream and a seqpacket listener on one abstract name: only the stream one counts."""
    name = f"@linux-inet-diag-shared-{os.getpid()}"
    raw = "\0" + name[1:]
    ssrv = scenario.listener(socket.AF_UNIX, raw, backlog=4)
    qsrv = scenario.listener(socket.AF_UNIX, raw, backlog=7, kind=socket.SOCK_SEQPACKET)
    scenario.connect(socket.AF_UNIX, raw, 3)
    scenario.accept(ssrv, 1)
    scenario.connect(socket.AF_UNIX, raw, 3, kind=socket.SOCK_SEQPACKET)
    scenario.accept(qsrv, 2)
    want = ListenStats(1, 2, 4)
    assert unix_listener_stats(name) == {name: want}
    assert unix_listener_stats()[name] == want


def test_unix_proc_fallback(
    scenario: Scenario, tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without unix_diag, /proc/net/unix is scanned, with a RuntimeWarning."""
    path = os.path.join(tmp_path, "fb.sock")
    srv = scenario.listener(socket.AF_UNIX, path, backlog=6)
    scenario.connect(socket.AF_UNIX, path, 3)
    scenario.accept(srv, 2)

    def no_unix_diag(self: DiagSocket, make: object, parse: object) -> list[object]:
        raise NetlinkError(errno.ENOENT, "No such file or directory")

    base = os.path.realpath(tmp_path)
    os.mkdir(os.path.join(base, "real"))
    os.symlink(os.path.join(base, "real"), os.path.join(base, "link"))
    bound = os.path.join(base, "link", "s")
    resolved = os.path.join(base, "real", "s")
    lsrv = scenario.listener(socket.AF_UNIX, bound, backlog=8)
    scenario.connect(socket.AF_UNIX, bound, 3)
    scenario.accept(lsrv, 1)
    seq = os.path.join(tmp_path, "seq.sock")
    qsrv = scenario.listener(socket.AF_UNIX, seq, backlog=4, kind=socket.SOCK_SEQPACKET)
    scenario.connect(socket.AF_UNIX, seq, 2, kind=socket.SOCK_SEQPACKET)
    scenario.accept(qsrv, 1)

    monkeypatch.setattr(DiagSocket, "_dump", no_unix_diag)
    with pytest.warns(RuntimeWarning, match="falling back to scanning /proc/net/unix"):
        got = unix_listener_stats([path, resolved, seq])
    assert got == {
        path: ListenStats(2, 1, None),
        resolved: ListenStats(1, 2, None),
        seq: ListenStats(0, 0, None),
    }
    with pytest.warns(RuntimeWarning, match="falling back"):
        every = unix_listener_stats()
    assert every[bound] == ListenStats(1, 2, None)
    assert seq not in every


def test_bad_input_to_stats() -> None:
    """Malformed names and argument types raise AddressError before any I/O."""
    with pytest.raises(AddressError, match=r"invalid listener name 'foo'"):
        tcp_listener_stats(["foo"])
    with pytest.raises(AddressError, match=r"a Unix path; use unix_listener_stats"):
        tcp_listener_stats(["/tmp/x"])
    with pytest.raises(AddressError, match=r"must be None, a name or an iterable"):
        tcp_listener_stats(8080)  # type: ignore[arg-type]
    with pytest.raises(AddressError, match=r"invalid Unix socket name '127.0.0.1:80'"):
        unix_listener_stats("127.0.0.1:80")


def test_unavailable_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where netlink is absent, opening a socket raises UnavailableError saying so."""
    monkeypatch.setattr(_platform, "AVAILABLE", False)
    with pytest.raises(UnavailableError, match="netlink sock_diag is unavailable") as err:
        DiagSocket()
    assert err.value.errno == errno.EAFNOSUPPORT
    assert isinstance(UnavailableError(), OSError)
    assert lid.available() is False


def raise_nofile(scenario: Scenario, need: int) -> None:
    """Raise RLIMIT_NOFILE's soft limit to ``need`` for the scenario (skip if hard < need)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"needs {need} open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    # registered first, so it runs after every socket is closed
    scenario.stack.callback(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))


def test_names_beyond_one_bytecode_program(scenario: Scenario) -> None:
    """3,300 IPv4 and 2,100 IPv6 names (past the 16-bit filter) are each answered exactly."""
    v4 = scenario.listener(socket.AF_INET, ("127.0.0.1", 0), backlog=9)
    p4 = port_of(v4)
    scenario.connect(socket.AF_INET, ("127.0.0.1", p4), 3)
    scenario.accept(v4, 2)
    v6 = scenario.listener(socket.AF_INET6, ("::1", 0), backlog=7)
    p6 = port_of(v6)
    scenario.connect(socket.AF_INET6, ("::1", p6), 2)
    scenario.accept(v6, 2)
    # Addresses nothing listens on, on the same ports: every one must be 0/0.
    empty4 = [f"127.1.{i // 250}.{i % 250 + 1}:{p4}" for i in range(3300)]
    empty6 = [f"[fd00::{i + 1:x}]:{p6}" for i in range(2100)]
    real = {f"127.0.0.1:{p4}": ListenStats(2, 1, 9), f"[::1]:{p6}": ListenStats(2, 0, 7)}
    assert settle(lambda: tcp_listener_stats(list(real)), real) == real  # filtered path
    names = [*empty4[:1650], *real, *empty6, *empty4[1650:]]
    got = tcp_listener_stats(names)
    assert list(got) == names
    assert {n: got[n] for n in real} == real
    assert {got[n] for n in empty4 + empty6} == {ListenStats(0, 0, None)}


def test_every_listener_beyond_one_bytecode_program(scenario: Scenario) -> None:
    """With 2,100 IPv6 listeners (past the 16-bit filter) every one is answered exactly."""
    raise_nofile(scenario, 4096)
    listeners = [scenario.listener(socket.AF_INET6, ("::1", 0), backlog=3) for _ in range(2100)]
    busy, waiting = listeners[0], listeners[-1]
    scenario.connect(socket.AF_INET6, ("::1", port_of(busy)), 2)
    scenario.accept(busy, 2)
    scenario.connect(socket.AF_INET6, ("::1", port_of(waiting)), 1)
    want = {f"[::1]:{port_of(s)}": ListenStats(0, 0, 3) for s in listeners}
    want[f"[::1]:{port_of(busy)}"] = ListenStats(2, 0, 3)
    want[f"[::1]:{port_of(waiting)}"] = ListenStats(0, 1, 3)

    def mine() -> dict[str, ListenStats]:
        every = tcp_listener_stats()
        return {n: every[n] for n in want if n in every}

    assert settle(mine, want) == want


class Interrupting:
    """A netlink socket whose first ``times`` answer datagrams say NLM_F_DUMP_INTR.

    The kernel's own bytes, with the flag the kernel sets when its socket
    table changed during a dump added to each datagram's first message.
    """

    def __init__(self, sock: socket.socket, times: int) -> None:
        self.sock = sock
        self.times = times
        self.requests = 0

    def send(self, data: bytes) -> int:
        self.requests += 1
        return self.sock.send(data)

    def recv(self, size: int) -> bytes:
        data = bytearray(self.sock.recv(size))
        if self.times:
            self.times -= 1
            (flags,) = struct.unpack_from("=H", data, 6)  # nlmsghdr.nlmsg_flags
            struct.pack_into("=H", data, 6, flags | NLM_F_DUMP_INTR)
        return bytes(data)

    def __getattr__(self, name: str) -> object:  # fileno, close, setblocking, ...
        return getattr(self.sock, name)


def interrupting(monkeypatch: pytest.MonkeyPatch, times: int) -> list[Interrupting]:
    """Make every DiagSocket opened from now on an :class:`Interrupting` one."""
    real_open = _api._open
    opened: list[Interrupting] = []

    def open_interrupting() -> Interrupting:
        opened.append(Interrupting(real_open(), times))
        return opened[-1]

    monkeypatch.setattr(_api, "_open", open_interrupting)
    return opened


def test_dump_intr_retries(monkeypatch: pytest.MonkeyPatch, scenario: Scenario) -> None:
    """An interrupted dump is retried; a dump interrupted every time raises."""
    srv = scenario.listener(socket.AF_INET, ("127.0.0.1", 0), backlog=3)
    name = f"127.0.0.1:{port_of(srv)}"
    opened = interrupting(monkeypatch, times=1)
    with DiagSocket() as diag:
        assert tcp_listener_stats(name, sock=diag)[name] == ListenStats(0, 0, 3)
    assert opened[0].requests == 2  # the interrupted dump was run again
    opened = interrupting(monkeypatch, times=10**6)
    with DiagSocket() as diag, pytest.raises(lid.DumpInterruptedError, match="interrupted 5 times"):
        tcp_listener_stats(name, sock=diag)
    assert opened[0].requests == 5


def test_async_dump_intr_retries(monkeypatch: pytest.MonkeyPatch, scenario: Scenario) -> None:
    """AsyncDiagSocket retries an interrupted dump as DiagSocket does, and gives up alike."""
    srv = scenario.listener(socket.AF_INET, ("127.0.0.1", 0), backlog=3)
    name = f"127.0.0.1:{port_of(srv)}"

    async def query() -> dict[str, ListenStats]:
        async with AsyncDiagSocket() as diag:
            return await diag.tcp_listener_stats(name)

    opened = interrupting(monkeypatch, times=1)
    assert asyncio.run(query()) == {name: ListenStats(0, 0, 3)}
    assert opened[0].requests == 2
    interrupting(monkeypatch, times=10**6)
    with pytest.raises(lid.DumpInterruptedError, match="interrupted 5 times"):
        asyncio.run(query())


def test_tcp_info_lookup_honours_dump_intr(
    monkeypatch: pytest.MonkeyPatch, scenario: Scenario
) -> None:
    """An exact tcp_info lookup whose answer says NLM_F_DUMP_INTR is asked again."""
    srv = scenario.listener(socket.AF_INET, ("127.0.0.1", 0), backlog=3)
    scenario.connect(socket.AF_INET, srv.getsockname(), 1)
    srv.settimeout(5)
    conn, peer = srv.accept()
    scenario.keep(conn)
    opened = interrupting(monkeypatch, times=1)
    with DiagSocket() as diag:
        info = lid.tcp_info_for(conn.getsockname(), peer, sock=diag)
    assert info is not None
    assert info.state is lid.TcpState.ESTABLISHED
    assert opened[0].requests == 2


def test_sync_socket_inside_running_loop_and_threads(scenario: Scenario) -> None:
    """DiagSocket works from a coroutine's sync call and from 4 threads at once."""
    srv = scenario.listener(socket.AF_INET, ("127.0.0.1", 0), backlog=5)
    name = f"127.0.0.1:{port_of(srv)}"
    want = {name: ListenStats(0, 0, 5)}
    diag = DiagSocket()

    async def inside() -> dict[str, ListenStats]:
        return diag.tcp_listener_stats([name])

    assert asyncio.run(inside()) == want
    results: list[object] = []

    def worker() -> None:
        for _ in range(20):
            results.append(diag.tcp_listener_stats([name]))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == [want] * 80
    diag.close()


def test_async_socket(scenario: Scenario, tmp_path: os.PathLike[str]) -> None:
    """AsyncDiagSocket answers TCP, Unix and tcp_info queries, concurrently too."""
    srv = scenario.listener(socket.AF_INET, ("127.0.0.1", 0), backlog=5)
    port = port_of(srv)
    scenario.connect(socket.AF_INET, ("127.0.0.1", port), 2)
    scenario.accept(srv, 1)
    name = f"127.0.0.1:{port}"
    path = os.path.join(tmp_path, "a.sock")
    scenario.listener(socket.AF_UNIX, path, backlog=2)
    settle(lambda: tcp_listener_stats(name)[name], ListenStats(1, 1, 5))

    async def main() -> tuple[object, ...]:
        async with AsyncDiagSocket() as diag:
            many = await asyncio.gather(*(diag.tcp_listener_stats(name) for _ in range(5)))
            unix = await diag.unix_listener_stats(path)
            info = await diag.tcp_info_for(("127.0.0.1", port), ("127.0.0.1", 1))
            return many, unix, info

    many, unix, info = asyncio.run(main())
    assert many == [{name: ListenStats(1, 1, 5)}] * 5
    assert unix == {path: ListenStats(0, 0, 2)}
    assert info is None  # a listener on the local address is no connection


def test_async_socket_after_fork(scenario: Scenario) -> None:
    """An AsyncDiagSocket used before fork() answers in the child on a socket of its own."""
    srv = scenario.listener(socket.AF_INET, ("127.0.0.1", 0), backlog=6)
    name = f"127.0.0.1:{port_of(srv)}"
    diag = AsyncDiagSocket()
    assert asyncio.run(diag.tcp_listener_stats(name))[name].backlog == 6
    assert diag._sock is not None
    parent_socket = os.fstat(diag._sock.fileno()).st_ino
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            ok = asyncio.run(diag.tcp_listener_stats(name))[name].backlog == 6
            own = diag._sock is not None and os.fstat(diag._sock.fileno()).st_ino != parent_socket
            os.write(w, b"1" if ok and own else b"0")
        finally:
            os._exit(0)
    os.close(w)
    try:
        assert os.read(r, 1) == b"1"
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    assert asyncio.run(diag.tcp_listener_stats(name))[name].backlog == 6
    assert os.fstat(diag._sock.fileno()).st_ino == parent_socket  # the parent's is intact
    diag.close()


def test_fork_reopens_socket(scenario: Scenario) -> None:
    """A DiagSocket used before fork() gives correct answers in the child."""
    srv = scenario.listener(socket.AF_INET, ("127.0.0.1", 0), backlog=6)
    name = f"127.0.0.1:{port_of(srv)}"
    diag = DiagSocket()
    assert diag.tcp_listener_stats(name)[name].backlog == 6
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            ok = diag.tcp_listener_stats(name)[name].backlog == 6
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(w)
    try:
        assert os.read(r, 1) == b"1"
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    assert diag.tcp_listener_stats(name)[name].backlog == 6
    diag.close()


UNPRIVILEGED = """
import sys
import linux_inet_diag as lid
s = lid.tcp_listener_stats([sys.argv[1]])[sys.argv[1]]
print(s.active, s.queued, s.backlog)
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to drop CAP_NET_ADMIN",
)
def test_reader_without_net_admin_sees_the_same(scenario: Scenario) -> None:
    """Without CAP_NET_ADMIN (other appended attributes, other lengths) counts agree."""
    srv = scenario.listener(socket.AF_INET, ("127.0.0.1", 0), backlog=9)
    port = port_of(srv)
    scenario.connect(socket.AF_INET, ("127.0.0.1", port), 3)
    scenario.accept(srv, 2)
    name = f"127.0.0.1:{port}"
    settle(lambda: tcp_listener_stats(name)[name], ListenStats(2, 1, 9))
    out = subprocess.run(
        ["setpriv", "--bounding-set", "-net_admin", "--inh-caps", "-net_admin",
         sys.executable, "-c", UNPRIVILEGED, name],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert out.stdout.split() == ["2", "1", "9"], out.stderr
