"""Server segments: the sockets a worker inherited, the per-user directory, the sweep."""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from shm_counters import (
    SERVER_DIR_ENV,
    InheritedListener,
    Scoreboard,
    SegmentError,
    discover_listeners,
    listening_inodes,
    server_directory,
    server_segment,
    socket_name,
    sweep_server_segments,
)

pytestmark = pytest.mark.linux

NOBODY = 65534
EUID = os.geteuid()


@pytest.fixture
def listeners(tmp_path: Path) -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    try:
        v4 = socket.socket(socket.AF_INET)
        socks.append(v4)
        v4.bind(("127.0.0.1", 0))
        v4.listen(8)
        v6 = socket.socket(socket.AF_INET6)
        socks.append(v6)
        v6.bind(("::1", 0))
        v6.listen(8)
        unix = socket.socket(socket.AF_UNIX)
        socks.append(unix)
        unix.bind(str(tmp_path / "s.sock"))
        unix.listen(8)
        abstract = socket.socket(socket.AF_UNIX)
        socks.append(abstract)
        abstract.bind(f"\0shmc-test-{os.getpid()}")
        abstract.listen(8)
        yield socks
    finally:
        for s in socks:
            s.close()


@pytest.fixture
def base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$RAINDROPS_SHM_DIR points at a temp directory: no test touches the real /dev/shm."""
    where = tmp_path / "shm"
    where.mkdir()
    monkeypatch.setenv(SERVER_DIR_ENV, str(where))
    return where


def _inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def _mine(socks: list[socket.socket], **kw: bool) -> list[InheritedListener]:
    fds = {s.fileno() for s in socks}
    return [found for found in discover_listeners(**kw) if found.fd in fds]


def _in_child(job: object) -> object:
    """Run ``job()`` in a forked child; return what it returned (as JSON)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.write(w, json.dumps(job()).encode())  # type: ignore[operator]
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    try:
        answer = os.read(r, 1 << 20).decode()
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    return json.loads(answer)


# -- discovery ----------------------------------------------------------------


def test_finds_tcp_v4_v6_unix_and_abstract_listeners(
    listeners: list[socket.socket], tmp_path: Path
) -> None:
    """Every listening stream socket is found, named as raindrops names listeners."""
    v4, v6, _, _ = listeners
    assert [(f.fd, f.name, f.inode, f.listening) for f in _mine(listeners)] == [
        (s.fileno(), name, _inode(s), True)
        for s, name in zip(
            listeners,
            [
                f"127.0.0.1:{v4.getsockname()[1]}",
                f"[::1]:{v6.getsockname()[1]}",
                str(tmp_path / "s.sock"),
                f"@shmc-test-{os.getpid()}",
            ],
            strict=True,
        )
    ]


def test_skips_datagram_connected_unbound_and_unshared_bound_sockets() -> None:
    """UDP, connected, unbound sockets, and bound ones the parent does not hold, are not servers."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    bound = socket.socket(socket.AF_INET)
    unbound = socket.socket(socket.AF_INET)
    a, b = socket.socketpair()
    try:
        udp.bind(("127.0.0.1", 0))
        bound.bind(("127.0.0.1", 0))
        assert _mine([udp, bound, unbound, a, b]) == []
        assert _mine([udp, bound, unbound, a, b], prefer_parent=False) == []
    finally:
        for s in (udp, bound, unbound, a, b):
            s.close()


def test_a_bound_socket_the_parent_holds_is_found_before_anyone_listens(tmp_path: Path) -> None:
    """A worker whose master bound but did not listen yet (uvicorn, hypercorn) still finds it."""
    tcp = socket.socket(socket.AF_INET)
    unix = socket.socket(socket.AF_UNIX)
    try:
        tcp.bind(("127.0.0.1", 0))
        unix.bind(str(tmp_path / "u.sock"))
        fds = {tcp.fileno(), unix.fileno()}

        def child() -> object:
            return [[f.name, f.inode, f.listening] for f in discover_listeners() if f.fd in fds]

        assert _in_child(child) == [
            [f"127.0.0.1:{tcp.getsockname()[1]}", _inode(tcp), False],
            [str(tmp_path / "u.sock"), _inode(unix), False],
        ]
    finally:
        tcp.close()
        unix.close()


def test_a_duplicated_descriptor_counts_once(listeners: list[socket.socket]) -> None:
    """The same socket under two descriptors is one listener, the lowest fd kept."""
    v4 = listeners[0]
    dup = os.dup(v4.fileno())
    try:
        found = [f for f in discover_listeners() if f.fd in (v4.fileno(), dup)]
        assert [f.fd for f in found] == [min(v4.fileno(), dup)]
    finally:
        os.close(dup)


def test_probing_leaves_the_descriptors_open(listeners: list[socket.socket]) -> None:
    """Discovery detaches its probe sockets: the listeners still accept afterwards."""
    discover_listeners()
    v4 = listeners[0]
    with socket.create_connection(v4.getsockname(), timeout=5):
        conn, _ = v4.accept()
        conn.close()


def test_socket_name_drops_ipv6_scope_and_keeps_odd_bytes() -> None:
    """Scope ids are dropped; unnamed Unix sockets have no name; odd bytes survive."""
    assert socket_name(socket.AF_INET6, ("fe80::1%eth0", 80, 0, 2)) == "[fe80::1]:80"
    assert socket_name(socket.AF_INET, ("0.0.0.0", 8000)) == "0.0.0.0:8000"
    assert socket_name(socket.AF_UNIX, "") is None
    assert socket_name(socket.AF_UNIX, b"") is None
    assert socket_name(socket.AF_UNIX, b"\0abc") == "@abc"
    assert socket_name(socket.AF_UNIX, b"\0a\xff") == "@a\\xff"
    assert socket_name(socket.AF_UNIX, b"/tmp/caf\xe9.sock") == "/tmp/caf\udce9.sock"


def test_a_worker_ignores_a_listener_it_opened_after_fork(listeners: list[socket.socket]) -> None:
    """In a forked child, only the listeners its parent also holds are reported, unless asked."""

    def child() -> object:
        own = socket.socket(socket.AF_INET)
        own.bind(("127.0.0.1", 0))
        own.listen(1)
        inherited = {f.inode for f in discover_listeners()}
        every = {f.inode for f in discover_listeners(prefer_parent=False)}
        return [_inode(own) in inherited, _inode(own) in every, sorted(inherited)]

    own_reported, own_found, inherited = _in_child(child)  # type: ignore[misc]
    assert (own_reported, own_found) == (False, True)
    assert {_inode(s) for s in listeners} <= set(inherited)


def test_without_a_parent_holding_them_every_listener_is_reported(
    listeners: list[socket.socket],
) -> None:
    """This test process's parent holds none of its sockets: all of them are reported."""
    ours = {_inode(s) for s in listeners}
    assert ours <= {f.inode for f in discover_listeners()}
    assert {f.inode for f in discover_listeners()} == {
        f.inode for f in discover_listeners(prefer_parent=False)
    }


# -- the per-user directory ----------------------------------------------------


def test_the_directory_is_made_0700_for_this_user(base: Path) -> None:
    """``raindrops-<euid>`` is created with mode 0700 whatever the umask, and reused."""
    old = os.umask(0)
    try:
        path = server_directory()
    finally:
        os.umask(old)
    assert path == str(base / f"raindrops-{EUID}")
    st = os.lstat(path)
    assert (stat.S_ISDIR(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid) == (True, 0o700, EUID)
    assert server_directory() == path


def test_a_symlinked_directory_is_refused(base: Path, tmp_path: Path) -> None:
    """A symbolic link where the directory goes is ELOOP, naming what is required."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    link = base / f"raindrops-{EUID}"
    link.symlink_to(elsewhere)
    with pytest.raises(SegmentError) as info:
        server_directory()
    assert info.value.errno == errno.ELOOP
    assert str(info.value) == (
        f"[Errno {errno.ELOOP}] the segment directory is a symbolic link; it must be a real "
        f"directory owned by uid {EUID} (root) with mode 0700: '{link}'"
    )


@pytest.mark.skipif(EUID != 0, reason="making another user's directory needs root")
def test_another_users_directory_is_refused(base: Path) -> None:
    """A directory made first by another user is EPERM, naming its owner and mode."""
    path = base / f"raindrops-{EUID}"
    path.mkdir(mode=0o700)
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(SegmentError) as info:
        server_directory()
    assert info.value.errno == errno.EPERM
    assert str(info.value) == (
        f"[Errno {errno.EPERM}] the segment directory is a directory owned by uid {NOBODY} "
        "(nobody) with mode 0o700; it must be a directory owned by uid 0 (root) with no group "
        f"or other write permission (0700): '{path}'"
    )


def test_a_writable_directory_or_a_file_is_refused(base: Path) -> None:
    """Our own directory that others may write, or a file in its place, is EPERM."""
    path = base / f"raindrops-{EUID}"
    path.mkdir()
    path.chmod(0o777)
    with pytest.raises(SegmentError, match="with mode 0o777; it must be") as info:
        server_directory()
    assert info.value.errno == errno.EPERM
    path.rmdir()
    path.write_bytes(b"")
    with pytest.raises(SegmentError, match="is not a directory owned by") as info:
        server_directory()
    assert info.value.errno == errno.EPERM


# -- server_segment ------------------------------------------------------------


def test_the_path_is_named_after_the_lowest_listener_inode(base: Path) -> None:
    """Workers holding the same sockets derive the same path, whatever their order."""
    found = [InheritedListener(5, "[::]:80", 900), InheritedListener(3, "0.0.0.0:80", 700)]
    segment = server_segment("raindrops", found)
    assert segment.path == str(base / f"raindrops-{EUID}" / "raindrops-700")
    assert segment.listeners == tuple(found)
    assert segment.reason == ""
    assert server_segment("utilization", found[::-1]).path == str(
        base / f"raindrops-{EUID}" / "utilization-700"
    )


def test_no_listener_gives_no_path_and_says_why(base: Path) -> None:
    """Without a server socket there is no path, and the reason says what was looked for."""
    assert server_segment("raindrops", []).path is None
    assert server_segment("raindrops", []).reason == "no server socket was given"
    found = server_segment("raindrops")
    assert found.path is None
    assert found.reason.startswith("found no listening socket inherited from a server among the ")
    assert f"descriptors of PID {os.getpid()} (its parent (PID {os.getppid()})" in found.reason
    # This test process's parent (pytest's, readable: the same user) is read, not
    # reported unreadable, even though this process holds no server socket.
    assert "could not be read" not in found.reason
    assert found.reason.endswith(" sockets)") or " sockets; " in found.reason


def test_an_unusable_directory_gives_no_path_and_the_error(base: Path) -> None:
    """A refused directory is not an exception for the caller: no path, the error as reason."""
    (base / f"raindrops-{EUID}").write_bytes(b"")
    found = server_segment("raindrops", [InheritedListener(3, "127.0.0.1:80", 7)])
    assert found.path is None
    assert "the segment directory is not a directory owned by" in found.reason


@pytest.mark.parametrize("name", ["", "Raindrops", "a/b", "1x", "x" * 33, 5])
def test_bad_names_are_refused(name: object, base: Path) -> None:
    """A name that could not be a file name of the directory raises, naming it."""
    with pytest.raises(SegmentError) as info:
        server_segment(name, [])  # type: ignore[arg-type]
    assert str(info.value) == (
        f"[Errno {errno.EINVAL}] server segment name {name!r} must be 1-32 lower-case letters, "
        "digits or '-', starting with a letter"
    )


def test_a_spawned_style_worker_shares_the_forked_ones_scoreboard(
    base: Path, listeners: list[socket.socket]
) -> None:
    """Two processes holding one socket open one scoreboard by its server segment path."""
    path = server_segment("raindrops").path
    assert path is not None
    board = Scoreboard(4, ("calling",), path=path, create=True)
    row = board.claim()
    row.incr_calling()

    def child() -> object:
        other = server_segment("raindrops").path
        child_board = Scoreboard(4, ("calling",), path=other, create=True)
        child_row = child_board.claim()
        child_row.incr_calling()
        return [other, child_board.totals()["calling"]]

    assert _in_child(child) == [path, 2]


# -- the sweep -----------------------------------------------------------------


def _closed_inode() -> int:
    with socket.socket(socket.AF_INET) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        return _inode(sock)


def test_listening_inodes_lists_tcp_and_unix_listeners_only(
    listeners: list[socket.socket],
) -> None:
    """The socket tables give every listener's inode, and not a bound idle socket's."""
    idle = socket.socket(socket.AF_INET)
    try:
        idle.bind(("127.0.0.1", 0))
        live = listening_inodes()
        assert {_inode(s) for s in listeners} <= live
        assert _inode(idle) not in live
    finally:
        idle.close()


def test_sweep_removes_old_files_of_closed_sockets_only(
    base: Path, listeners: list[socket.socket]
) -> None:
    """Old files named after closed sockets go; live listeners', kept and other files stay."""
    directory = Path(server_directory())
    dead = _closed_inode()
    names = {
        f"raindrops-{dead}": True,
        f"ldr-{dead}": True,
        f"raindrops-{_inode(listeners[0])}": False,  # TCP listener
        f"utilization-{_inode(listeners[2])}": False,  # Unix listener
        f"kept-{dead}": False,
        f"raindrops-{dead}.bak": False,
        f"Raindrops-{dead}": False,
        f".raindrops-{dead}.999999999.0123abcd.tmp": True,  # a dead creator's
        f".raindrops-{dead}.{os.getpid()}.0123abcd.tmp": False,  # a live creator's
    }
    for name in names:
        (directory / name).write_bytes(b"x")
    (directory / f"link-{dead}").symlink_to(directory / f"kept-{dead}")
    old = time.time() - 3600
    for name in names:
        os.utime(directory / name, (old, old))
    removed = sweep_server_segments(str(directory), keep=str(directory / f"kept-{dead}"), grace=600)
    gone = sorted(str(directory / n) for n, goes in names.items() if goes)
    assert sorted(removed) == gone
    assert sorted(os.listdir(directory)) == sorted(
        [n for n, goes in names.items() if not goes] + [f"link-{dead}"]
    )


def test_sweep_spares_a_young_file(base: Path) -> None:
    """A file changed less than ``grace`` seconds ago stays, its socket closed or not."""
    directory = Path(server_directory())
    dead = _closed_inode()
    (directory / f"raindrops-{dead}").write_bytes(b"x")
    assert sweep_server_segments(str(directory)) == []
    assert sweep_server_segments(str(directory), grace=0) == [str(directory / f"raindrops-{dead}")]


@pytest.mark.skipif(EUID != 0, reason="making another user's file needs root")
def test_sweep_leaves_another_users_file(base: Path) -> None:
    """A file another user owns is never removed, even in our directory."""
    directory = Path(server_directory())
    dead = _closed_inode()
    path = directory / f"raindrops-{dead}"
    path.write_bytes(b"x")
    os.chown(path, NOBODY, NOBODY)
    assert sweep_server_segments(str(directory), grace=0, live=[]) == []
    assert path.exists()


def test_a_new_server_segment_sweeps_in_the_background(
    base: Path, listeners: list[socket.socket]
) -> None:
    """Finding a path that does not exist yet starts a sweep that removes stale files."""
    directory = Path(server_directory())
    stale = directory / f"raindrops-{_closed_inode()}"
    stale.write_bytes(b"x")
    os.utime(stale, (0, 0))
    found = server_segment("raindrops")
    deadline = time.monotonic() + 10
    while stale.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert found.path == str(directory / f"raindrops-{min(_inode(s) for s in listeners)}")
    assert not stale.exists()
