"""Listener statistics against scenarios built on loopback; the kernel is the oracle."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import shutil
import socket
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
    tcp_listener_stats,
    unix_listener_stats,
)

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
        v6only: bool | None = None,
    ) -> socket.socket:  # fmt: skip
        s = self.keep(socket.socket(family, socket.SOCK_STREAM))
        if reuseport:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if v6only is not None:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        s.bind(addr)  # type: ignore[arg-type]
        s.listen(backlog)
        return s

    def connect(self, family: int, addr: object, n: int) -> None:
        for _ in range(n):
            c = self.keep(socket.socket(family, socket.SOCK_STREAM))
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

    monkeypatch.setattr(DiagSocket, "_dump", no_unix_diag)
    with pytest.warns(RuntimeWarning, match="falling back to scanning /proc/net/unix"):
        got = unix_listener_stats([path])
    assert got == {path: ListenStats(2, 1, None)}


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
    """Where netlink is absent, queries raise UnavailableError saying so."""
    monkeypatch.setattr(_api, "AVAILABLE", False)
    with pytest.raises(UnavailableError, match="netlink sock_diag is unavailable"):
        DiagSocket().tcp_listener_stats("127.0.0.1:1")
    assert isinstance(UnavailableError(), OSError)
    assert lid.available() is False


def test_dump_intr_retries(monkeypatch: pytest.MonkeyPatch, scenario: Scenario) -> None:
    """An interrupted dump is retried; a dump interrupted every time raises."""
    srv = scenario.listener(socket.AF_INET, ("127.0.0.1", 0), backlog=3)
    name = f"127.0.0.1:{port_of(srv)}"
    real = _api.k.parse_inet_dump
    calls = {"n": 0}

    def flaky(data: bytes) -> object:
        chunk = real(data)
        calls["n"] += 1
        if calls["n"] == 1:
            chunk.interrupted = True
        return chunk

    monkeypatch.setattr(_api.k, "parse_inet_dump", flaky)
    with DiagSocket() as diag:
        assert tcp_listener_stats(name, sock=diag)[name] == ListenStats(0, 0, 3)
    assert calls["n"] >= 2  # the interrupted dump was run again

    def always(data: bytes) -> object:
        chunk = real(data)
        chunk.interrupted = True
        return chunk

    monkeypatch.setattr(_api.k, "parse_inet_dump", always)
    with DiagSocket() as diag, pytest.raises(lid.DumpInterruptedError, match="interrupted 5 times"):
        tcp_listener_stats(name, sock=diag)


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
