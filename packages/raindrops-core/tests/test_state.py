"""RaindropsState: where the gauges live, across fork and SIGKILL, and the endpoint's answers."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import raindrops_core._state as state_module
from linux_inet_diag import ListenOverflows, UnavailableError
from raindrops_core import ANONYMOUS, SEGMENT_ENV, ConfigError, Format, RaindropsState
from raindrops_core.adapter import SEGMENT_NAME, Kernel, Steps, app_path, unavailable_header
from shm_counters import SERVER_DIR_ENV, InheritedListener


def _wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise TimeoutError(f"not true within {timeout}s")


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock
    finally:
        sock.close()


def _name(sock: socket.socket) -> str:
    host, port = sock.getsockname()
    return f"{host}:{port}"


# -- configuration -----------------------------------------------------------


def test_malformed_listener_is_a_config_error_at_construction() -> None:
    """A listener name that is no address raises ConfigError naming it, not a silent drop."""
    with pytest.raises(ConfigError) as info:
        RaindropsState(listeners=["127.0.0.1:8080", "localhost:http"])
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert message.startswith("malformed listener 'localhost:http': ")
    assert message.endswith("or a Unix socket path ('/path/to/unix.sock', '@abstract')")
    assert message.count("expected") == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"listeners": "127.0.0.1:80"},
            "listeners must be a list of names, not the single string '127.0.0.1:80'",
        ),
        (
            {"segment": "rd.shm"},
            "segment 'rd.shm' is not an absolute path; give one like "
            "'/dev/shm/myapp.raindrops', or 'anonymous'",
        ),
        ({"path": "_raindrops"}, "path must be a string starting with '/', not '_raindrops'"),
        ({"slots": 0}, "slots must be an int >= 1, not 0"),
        (
            {"allow": ["nope"]},
            "allow entry 'nope' is not an IP network like '10.0.0.0/8' or '::1/128'",
        ),
    ],
)
def test_bad_options_raise_config_error(kwargs: dict[str, object], message: str) -> None:
    """Every option is checked when the state is built, with a message naming the value."""
    with pytest.raises(ConfigError) as info:
        RaindropsState(**kwargs)  # type: ignore[arg-type]
    assert str(info.value) == message


def test_duplicate_listeners_are_reported_once_tcp_first() -> None:
    """Listener names keep their given order, TCP before Unix, each once."""
    state = RaindropsState(
        listeners=["/run/a.sock", "127.0.0.1:80", "[::1]:80", "127.0.0.1:80"], segment=ANONYMOUS
    )
    assert state.listener_names() == ("127.0.0.1:80", "[::1]:80", "/run/a.sock")


# -- where the scoreboard lives ----------------------------------------------


@pytest.fixture
def shm_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Server segments go to a temp directory ($RAINDROPS_SHM_DIR): never the real /dev/shm."""
    where = tmp_path / "shm"
    where.mkdir()
    monkeypatch.setenv(SERVER_DIR_ENV, str(where))
    return where / f"raindrops-{os.geteuid()}"


def test_env_var_names_the_segment_created_0600(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$RAINDROPS_SEGMENT chooses the segment file, created with mode 0600."""
    path = tmp_path / "board"
    monkeypatch.setenv(SEGMENT_ENV, str(path))
    state = RaindropsState(listeners=[])
    assert state.segment == str(path)
    state.board  # noqa: B018 - opens the segment
    assert state.segment_path == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert state.unshared is None


@pytest.mark.linux
def test_default_segment_under_a_server_listener(listener: socket.socket, shm_dir: Path) -> None:
    """With no option, a process holding a listener shares a segment named after its inode."""
    state = RaindropsState(listeners=[])
    state.board  # noqa: B018 - opens the segment
    expected = shm_dir / f"{SEGMENT_NAME}-{os.fstat(listener.fileno()).st_ino}"
    assert state.segment_path == str(expected)
    assert expected.is_file()
    assert state.unshared is None
    assert "shared" not in state.snapshot().unavailable


def test_no_server_socket_counts_privately_and_says_so(
    shm_dir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No server socket: one warning saying why and how to share; every output says so."""
    state = RaindropsState(listeners=[], kernel=Kernel(listen_overflows=lambda: OVERFLOWS))
    with caplog.at_level(logging.WARNING, logger="raindrops_core._state"):
        state.prepare().incr_calling()
        state.snapshot()
        state.respond("GET", "127.0.0.1", None, "")
    assert state.segment_path is None
    assert state.counts() == (1, 0)
    [record] = caplog.records
    reason = state.unshared
    assert reason is not None
    assert reason.startswith("found no listening socket inherited from a server among the ")
    assert record.getMessage() == (
        f"raindrops: {reason}; this process counts calling/writing in its own memory, so its "
        "figures miss every other worker. To share them, name one segment for every worker: "
        "RaindropsMiddleware(app, segment='/dev/shm/NAME') or $RAINDROPS_SEGMENT"
    )
    text = state.respond("GET", "127.0.0.1", None, "")
    assert (text.body, dict(text.headers)["X-Raindrops-Unavailable"]) == (
        b"calling: 1\nwriting: 0\n",
        "shared",
    )
    doc = json.loads(state.respond("GET", "127.0.0.1", "application/json", "").body)
    assert doc["unavailable"] == {"shared": reason}
    prom = state.respond("GET", "127.0.0.1", None, "format=prometheus").body.decode()
    assert "\nraindrops_shared 0.0\n" in prom
    assert prom.endswith(f"# shared unavailable: {reason}\n")
    assert not shm_dir.exists() or os.listdir(shm_dir) == []


def test_an_explicit_anonymous_segment_is_not_a_fallback(caplog: pytest.LogCaptureFixture) -> None:
    """segment='anonymous' is a choice: nothing logged, nothing marked unavailable."""
    state = RaindropsState(listeners=[], segment=ANONYMOUS)
    with caplog.at_level(logging.WARNING):
        state.prepare()
        snap = state.snapshot(overflows=False)
    assert (caplog.records, dict(snap.unavailable), state.unshared) == ([], {}, None)
    prom = state.respond("GET", "127.0.0.1", None, "format=prometheus").body
    assert b"\nraindrops_shared 1.0\n" in prom


def test_unusable_segment_warns_and_counts_in_anonymous_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A segment that cannot be created logs one warning; counting still works, marked private."""
    path = tmp_path / "missing-dir" / "board"
    state = RaindropsState(listeners=[], segment=path)
    with caplog.at_level(logging.WARNING, logger="raindrops_core._state"):
        row = state.claim()
    row.incr_calling()
    assert state.segment_path is None
    assert state.counts() == (1, 0)
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        f"raindrops: cannot use the shared segment {path}"
    ]
    assert state.unshared == (
        f"cannot use the shared segment {path} ([Errno 2] cannot create segment: "
        f"No such file or directory: '{path}')"
    )


@pytest.mark.linux
@pytest.mark.skipif(os.geteuid() != 0, reason="making another user's directory needs root")
def test_another_users_segment_directory_is_refused_and_said(
    listener: socket.socket, shm_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A per-user directory made first by another user is never used: private, and said."""
    shm_dir.mkdir()
    shm_dir.chmod(0o777)
    os.chown(shm_dir, 65534, 65534)
    state = RaindropsState(listeners=[])
    with caplog.at_level(logging.WARNING, logger="raindrops_core._state"):
        state.prepare()
    assert state.segment_path is None
    assert state.unshared == (
        f"[Errno 1] the segment directory is a directory owned by uid 65534 (nobody) with "
        "mode 0o777; it must be a directory owned by uid 0 (root) with no group or other "
        f"write permission (0700): '{shm_dir}'"
    )
    assert os.listdir(shm_dir) == []


@pytest.mark.linux
def test_startup_waits_for_a_server_socket(shm_dir: Path) -> None:
    """At startup with no server socket yet, nothing is decided; the first request decides."""
    state = RaindropsState(listeners=[])
    assert state.startup() is None
    assert (state.steps, state.row, state.unshared) == (None, None, None)
    with socket.socket(socket.AF_INET) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        steps = state.startup()
        assert steps is not None
        assert steps is state.steps
        assert state.segment_path == str(shm_dir / f"raindrops-{os.fstat(sock.fileno()).st_ino}")
    explicit = RaindropsState(listeners=[], segment=ANONYMOUS)
    assert explicit.startup() is explicit.steps is not None


# -- across processes --------------------------------------------------------


def _fork_holding(state: RaindropsState, calling: int, writing: int) -> tuple[int, int]:
    """Fork a child that claims a row, adds the gauges, reports its row, and waits."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(ready_r)
            row = state.row or state.claim()
            row.incr_calling(calling) if calling else None
            row.incr_writing(writing) if writing else None
            os.write(ready_w, str(row.index).encode())
            time.sleep(30)
        finally:
            os._exit(0)
    os.close(ready_w)
    try:
        index = int(os.read(ready_r, 16) or b"-1")
    finally:
        os.close(ready_r)
    return pid, index


@pytest.mark.linux
@pytest.mark.parametrize("where", ["named", "anonymous-before-fork"])
def test_gauges_add_up_across_forked_workers_and_drop_a_killed_one(
    where: str, tmp_path: Path
) -> None:
    """Children's rows add up in the parent's totals, and a SIGKILLed child stops counting."""
    segment = tmp_path / "board" if where == "named" else ANONYMOUS
    state = RaindropsState(listeners=[], segment=segment, liveness_ttl=0.1)
    state.board  # noqa: B018 - made before fork, as under gunicorn --preload
    mine = state.claim()
    mine.incr_calling()
    pids = []
    try:
        first, first_row = _fork_holding(state, 2, 1)
        pids.append(first)
        second, second_row = _fork_holding(state, 3, 0)
        pids.append(second)
        assert len({mine.index, first_row, second_row}) == 3
        assert state.counts() == (6, 1)
        os.kill(first, signal.SIGKILL)
        os.waitpid(first, 0)
        pids.remove(first)
        _wait_until(lambda: state.counts() == (4, 0), timeout=2.0)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        mine.decr_calling()


@pytest.mark.linux
def test_a_child_forgets_the_parents_row_and_steps(tmp_path: Path) -> None:
    """After fork, the cached row and steps are dropped: the child steps a row of its own."""
    state = RaindropsState(listeners=[], segment=tmp_path / "board")
    parent_steps = state.prepare()
    parent_row = state.row
    assert parent_row is not None
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            forgets = state.row is None and state.steps is None
            steps = state.prepare()
            steps.incr_calling()
            steps.incr_calling()
            row = state.row
            assert row is not None
            os.write(w, f"{forgets} {row.index} {steps is not parent_steps}".encode())
            time.sleep(30)
        finally:
            os._exit(0)
    os.close(w)
    try:
        try:
            forgot, index, fresh = os.read(r, 64).decode().split()
        finally:
            os.close(r)
        assert (forgot, int(index) != parent_row.index, fresh) == ("True", True, "True")
        assert (parent_row.calling, state.counts()) == (0, (2, 0))
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_prepare_binds_the_four_steps_once() -> None:
    """prepare() gives this process's Steps, the same object every time, stepping its row."""
    state = RaindropsState(listeners=[], segment=ANONYMOUS)
    before = state.steps
    steps = state.prepare()
    assert (before, isinstance(steps, Steps)) == (None, True)
    assert state.prepare() is steps is state.steps
    assert (steps.incr_calling(), steps.incr_calling(), steps.decr_calling()) == (1, 2, 1)
    assert (steps.incr_writing(), steps.decr_writing()) == (1, 0)
    assert state.counts() == (1, 0)


@pytest.mark.parametrize(
    ("path", "root_path", "expected"),
    [
        ("/ops/_raindrops", "/ops", "/_raindrops"),
        ("/_raindrops", "", "/_raindrops"),
        ("/_raindrops", "/ops", "/_raindrops"),
        ("/opsx/_raindrops", "/ops", "/opsx/_raindrops"),
        ("/ops", "/ops", ""),
        ("/a/b/_raindrops", "/a/b", "/_raindrops"),
    ],
)
def test_app_path_strips_the_mount_point(path: str, root_path: str, expected: str) -> None:
    """app_path removes root_path on a segment boundary only, and leaves other paths alone."""
    assert app_path(path, root_path) == expected


# -- snapshots and the endpoint ----------------------------------------------


@pytest.mark.linux
def test_snapshot_counts_queued_and_active_connections(listener: socket.socket) -> None:
    """Connections the test made are ``queued`` until accepted, then ``active``."""
    name = _name(listener)
    state = RaindropsState(listeners=[name], segment=ANONYMOUS)
    clients = [socket.create_connection(listener.getsockname(), timeout=5) for _ in range(3)]
    accepted: list[socket.socket] = []
    try:
        _wait_until(lambda: state.snapshot().listeners[name].queued == 3)
        snap = state.snapshot()
        assert (snap.listeners[name].active, snap.listeners[name].queued) == (0, 3)
        accepted.append(listener.accept()[0])
        snap = state.snapshot()
        assert (snap.listeners[name].active, snap.listeners[name].queued) == (1, 2)
        assert snap.unavailable == {}
    finally:
        for s in clients + accepted:
            s.close()


def _unavailable(*args: object, **kwargs: object) -> Any:
    raise UnavailableError(errno.ENOSYS, "netlink sock_diag needs Linux")


class _Diag:
    """A netlink socket stand-in: its queries answer ``answer(names)`` (blocking)."""

    def __init__(self, answer: Any = _unavailable) -> None:
        self.answer = answer

    def tcp_listener_stats(self, names: list[str]) -> Any:
        return self.answer(names)

    def unix_listener_stats(self, names: list[str]) -> Any:
        return self.answer(names)

    def close(self) -> None:
        return None


class _AsyncDiag(_Diag):
    """The same on an event loop."""

    async def tcp_listener_stats(self, names: list[str]) -> Any:  # type: ignore[override]
        return self.answer(names)

    async def unix_listener_stats(self, names: list[str]) -> Any:  # type: ignore[override]
        return self.answer(names)


def _kernel(answer: Any = _unavailable, overflows: Any = _unavailable) -> Kernel:
    """A kernel whose listener queries answer ``answer(names)``, overflows ``overflows()``."""
    return Kernel(
        diag=lambda: _Diag(answer),  # type: ignore[arg-type, return-value]
        adiag=lambda: _AsyncDiag(answer),  # type: ignore[arg-type, return-value]
        listen_overflows=overflows,
    )


def test_no_listener_means_no_netlink_query(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without listeners the snapshot holds only the gauges and asks the kernel nothing."""
    monkeypatch.setattr(state_module, "discover_listeners", lambda: ())
    state = RaindropsState(segment=ANONYMOUS, kernel=_kernel())
    snap = state.snapshot()
    assert (snap.calling, snap.writing, dict(snap.listeners)) == (0, 0, {})
    assert "listeners" not in snap.unavailable


OVERFLOWS = ListenOverflows(listen_overflows=7, listen_drops=9)


def test_netlink_failure_is_reported_not_raised() -> None:
    """A failing listener query leaves calling/writing and names the missing part."""
    state = RaindropsState(
        listeners=["127.0.0.1:9", "/run/x.sock"],
        segment=ANONYMOUS,
        kernel=_kernel(overflows=lambda: OVERFLOWS),
    )
    state.claim().incr_writing()
    reply = state.respond("GET", "127.0.0.1", None, "")
    assert reply.body == b"calling: 0\nwriting: 1\n"
    doc = json.loads(state.respond("GET", "127.0.0.1", "application/json", "").body)
    assert doc["listeners"] == {}
    assert doc["unavailable"] == {"listeners": "[Errno 38] netlink sock_diag needs Linux"}
    prom = state.respond("GET", "127.0.0.1", None, "format=prometheus").body
    assert prom.endswith(b"# listeners unavailable: [Errno 38] netlink sock_diag needs Linux\n")


@pytest.mark.parametrize(
    ("broken", "query", "header"),
    [
        ((), "", None),
        ((), "format=json", None),
        (("listeners",), "", "listeners"),
        (("overflows",), "", None),  # the text does not show overflows: not read
        (("overflows",), "format=json", "overflows"),
        (("listeners", "overflows"), "", "listeners"),
        (("overflows", "listeners"), "format=json", "listeners, overflows"),
        (("listeners", "overflows"), "format=prometheus", "listeners, overflows"),
        (("listeners", "overflows"), "format=openmetrics", "listeners, overflows"),
    ],
)
def test_unavailable_header_names_the_missing_parts(
    broken: tuple[str, ...], query: str, header: str | None
) -> None:
    """X-Raindrops-Unavailable lists what this answer lacks, in a fixed order; else absent."""

    def tcp(names: list[str]) -> dict[str, Any]:
        if "listeners" in broken:
            _unavailable()
        return {}

    def overflows() -> ListenOverflows:
        if "overflows" in broken:
            _unavailable()
        return OVERFLOWS

    state = RaindropsState(
        listeners=["127.0.0.1:9"], segment=ANONYMOUS, kernel=_kernel(tcp, overflows)
    )
    for reply in (
        state.respond("GET", "127.0.0.1", None, query),
        state.respond("HEAD", "127.0.0.1", None, query),
        asyncio.run(state.arespond("GET", "127.0.0.1", None, query)),
    ):
        assert reply.status == 200
        assert dict(reply.headers).get("X-Raindrops-Unavailable") == header
        assert len(reply.headers) == (2 if header is None else 3)


def test_unavailable_header_value_order() -> None:
    """Known parts come first in their fixed order, then any other part."""
    assert unavailable_header({}) == ""
    assert unavailable_header({"extra": "x", "overflows": "y", "listeners": "z"}) == (
        "listeners, overflows, extra"
    )


def test_text_answer_does_not_read_the_overflow_counters() -> None:
    """The raindrops text skips /proc/net/netstat; JSON and Prometheus read it once each."""
    calls: list[int] = []

    def counted() -> ListenOverflows:
        calls.append(1)
        return OVERFLOWS

    state = RaindropsState(listeners=[], segment=ANONYMOUS, kernel=_kernel(overflows=counted))
    state.respond("GET", "127.0.0.1", "text/plain", "")
    asyncio.run(state.arespond("GET", "127.0.0.1", None, ""))
    assert calls == []
    state.respond("GET", "127.0.0.1", None, "format=json")
    asyncio.run(state.arespond("GET", "127.0.0.1", None, "format=prometheus"))
    assert calls == [1, 1]


def test_async_path_does_no_blocking_io_on_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Discovery, opening the scoreboard, the gauges and the overflows run off the loop thread."""
    threads: dict[str, set[int]] = {}

    def note(what: str) -> None:
        threads.setdefault(what, set()).add(threading.get_ident())

    def discover() -> tuple[InheritedListener, ...]:
        note("discover")
        return (InheritedListener(99, "127.0.0.1:9", 4242),)

    def overflows() -> ListenOverflows:
        note("overflows")
        return OVERFLOWS

    original_counts = RaindropsState.counts
    original_open = RaindropsState._open_board

    def counts(self: RaindropsState) -> tuple[int, int]:
        note("counts")
        return original_counts(self)

    def open_board(self: RaindropsState) -> Any:
        note("open")
        return original_open(self)

    def netlink(names: list[str]) -> dict[str, Any]:
        note("netlink")
        return {}

    monkeypatch.setattr(state_module, "discover_listeners", discover)
    monkeypatch.setattr(RaindropsState, "counts", counts)
    monkeypatch.setattr(RaindropsState, "_open_board", open_board)
    state = RaindropsState(segment=ANONYMOUS, kernel=_kernel(netlink, overflows))

    async def main() -> int:
        await state.arespond("GET", "127.0.0.1", None, "format=json")
        await state.aprepare()
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert sorted(threads) == ["counts", "discover", "netlink", "open", "overflows"]
    assert threads["netlink"] == {loop_thread}
    assert all(
        loop_thread not in threads[what] for what in ("counts", "discover", "open", "overflows")
    )
    assert state.listener_names() == ("127.0.0.1:9",)


def test_async_snapshot_failure_is_reported_not_raised() -> None:
    """The async snapshot reports a failing query the same way."""
    kernel = _kernel(overflows=lambda: OVERFLOWS)
    state = RaindropsState(listeners=["127.0.0.1:9"], segment=ANONYMOUS, kernel=kernel)
    snap = asyncio.run(state.asnapshot())
    assert (dict(snap.listeners), dict(snap.unavailable)) == (
        {},
        {"listeners": "[Errno 38] netlink sock_diag needs Linux"},
    )


@pytest.mark.linux
def test_async_snapshot_matches_the_kernel(listener: socket.socket) -> None:
    """The async snapshot counts queued connections like the blocking one."""
    name = _name(listener)
    state = RaindropsState(listeners=[name], segment=ANONYMOUS)
    client = socket.create_connection(listener.getsockname(), timeout=5)
    try:
        _wait_until(lambda: state.snapshot().listeners[name].queued == 1)
        snap = asyncio.run(state.asnapshot())
        assert (snap.listeners[name].active, snap.listeners[name].queued) == (0, 1)
        assert snap.listeners[name].backlog == 16
    finally:
        client.close()


def test_endpoint_refuses_clients_outside_the_allow_list() -> None:
    """A client outside ``allow`` gets 403 text, before any snapshot is taken."""
    state = RaindropsState(listeners=[], segment=ANONYMOUS)
    reply = state.respond("GET", "192.0.2.1", None, "")
    body = (
        b"403 Forbidden: client 192.0.2.1 is not in the allow-list (loopback only by default); "
        b"to allow more, pass allow=['10.0.0.0/8', ...] or allow=ALLOW_ALL\n"
    )
    assert (reply.status_line, reply.headers, reply.body) == (
        "403 Forbidden",
        (
            ("Content-Type", "text/plain"),
            ("Content-Length", str(len(body))),
            ("X-Content-Type-Options", "nosniff"),
        ),
        body,
    )


def test_endpoint_rejects_an_unknown_format_with_400() -> None:
    """``?format=xml`` is a 400 naming the allowed formats; HEAD gets no body."""
    state = RaindropsState(listeners=[], segment=ANONYMOUS)
    reply = state.respond("GET", "127.0.0.1", None, "format=xml")
    assert reply.status == 400
    assert reply.body.startswith(b"400 Bad Request: unknown format 'xml'; allowed: json")
    head = state.respond("HEAD", "127.0.0.1", None, "format=xml")
    assert (head.status, head.body, head.headers) == (400, b"", reply.headers)


def test_head_gets_the_headers_of_get_and_no_body() -> None:
    """HEAD answers the same Content-Type and Content-Length as GET, with no body."""
    state = RaindropsState(listeners=[], segment=ANONYMOUS)
    get = state.respond("GET", "::1", None, None)
    head = state.respond("HEAD", "::1", None, None)
    assert get.body == b"calling: 0\nwriting: 0\n"
    assert get.headers == (("Content-Type", "text/plain"), ("Content-Length", "22"))
    assert (head.headers, head.body) == (get.headers, b"")


def test_preflight_picks_the_format() -> None:
    """Preflight returns the negotiated format for an allowed client."""
    state = RaindropsState(listeners=[], segment=ANONYMOUS)
    assert state.preflight("127.0.0.1", "application/json", "") is Format.JSON


@pytest.mark.linux
def test_full_scoreboard_warns_and_counts_privately(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With every row owned by a live worker, a new worker warns and still serves."""
    state = RaindropsState(listeners=[], segment=tmp_path / "board", slots=1)
    state.board  # noqa: B018 - opened before fork
    pid, _ = _fork_holding(state, 1, 0)
    try:
        with caplog.at_level(logging.WARNING, logger="raindrops_core._state"):
            row = state.claim()
        row.incr_calling()
        assert state.counts() == (1, 0)  # the child's; this process's row is private
        assert [r.getMessage() for r in caplog.records] == [
            "raindrops: all 1 scoreboard rows are owned by live processes; this worker "
            "counts in private memory (raise slots= above 1)"
        ]
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_collector_reads_a_state() -> None:
    """RaindropsCollector given a RaindropsState takes its snapshot at each collect."""
    from raindrops_core import RaindropsCollector

    state = RaindropsState(listeners=[], segment=ANONYMOUS)
    state.claim().incr_calling(2)
    metrics = {m.name: [s.value for s in m.samples] for m in RaindropsCollector(state).collect()}
    assert (metrics["raindrops_calling"], metrics["raindrops_writing"]) == ([2.0], [0.0])
    assert metrics["raindrops_listener_active"] == []
