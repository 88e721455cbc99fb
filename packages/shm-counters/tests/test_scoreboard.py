"""Scoreboard: per-process rows, dead owners dropped and reclaimed."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
import shm_counters._scoreboard
import shm_counters._segment
import shmc_test_workers as workers
from shm_counters import (
    CACHE_LINE_SIZE,
    ClosedError,
    CounterSizeError,
    CounterValueError,
    FieldNameError,
    RowInfo,
    Scoreboard,
    ScoreboardFullError,
    ScoreboardRow,
    SegmentError,
)
from shm_counters._native import lib
from shm_counters._scoreboard import process_alive

_real_process_alive = process_alive

FORK = multiprocessing.get_context("fork")
SPAWN = multiprocessing.get_context("spawn")
FIELDS = ["calling", "writing"]


def _hold(board: Scoreboard, calls: int, ready: Any, done: Any, release: bool = False) -> None:
    """Child: claim a row, count, report (index, pid, values), wait; release it if told."""
    row = board.claim()
    row.incr_calling(calls)
    row.incr_writing()
    ready.put((row.index, row.pid, row.to_dict()))
    done.wait(30)
    if release:
        row.release()


def _start_holder(
    board: Scoreboard, calls: int, *, release: bool = False
) -> tuple[Any, Any, tuple[int, int, dict[str, int]]]:
    ready, done = FORK.Queue(), FORK.Event()
    p = FORK.Process(target=_hold, args=(board, calls, ready, done, release))
    p.start()
    info = ready.get(timeout=30)
    return p, done, info


def test_claim_returns_the_same_row() -> None:
    """claim() gives this process one row, cached, with the struct interface."""
    board = Scoreboard(4, FIELDS)
    row = board.claim()
    assert isinstance(row, ScoreboardRow)
    assert board.claim() is row
    assert row.pid == os.getpid()
    assert row.index == 0
    assert row.incr_calling() == 1
    assert row.incr_writing(5) == 5
    assert row.decr_writing() == 4
    row.calling = 7
    assert row.to_dict() == {"calling": 7, "writing": 4}
    assert row[0] == 7
    assert board.totals() == {"calling": 7, "writing": 4}
    assert board.rows() == [RowInfo(0, os.getpid(), {"calling": 7, "writing": 4})]
    assert board.fields == ("calling", "writing")
    assert board.slots == 4
    assert board.path is None


def test_rowinfo_is_frozen() -> None:
    """RowInfo is a frozen dataclass."""
    info = RowInfo(1, 2, {"a": 3})
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.pid = 5  # type: ignore[misc]


def test_forked_children_claim_their_own_rows() -> None:
    """Each forked child claims a new row; totals sum parent and children."""
    board = Scoreboard(4, FIELDS)
    mine = board.claim()
    mine.incr_calling()
    holders = [_start_holder(board, 10), _start_holder(board, 20)]
    try:
        indexes = sorted(info[0] for _, _, info in holders)
        assert indexes == [1, 2]
        assert board.totals() == {"calling": 31, "writing": 2}
        rows = board.rows()
        assert [r.index for r in rows] == [0, 1, 2]
        assert {r.pid for r in rows} == {os.getpid()} | {p.pid for p, _, _ in holders}
    finally:
        for p, done, _ in holders:
            done.set()
            p.join(30)
    assert board.claim() is mine


def test_sigkilled_worker_stops_counting_and_row_is_reclaimed() -> None:
    """A worker SIGKILLed with gauges up drops out of totals; its row is reused zeroed."""
    board = Scoreboard(2, FIELDS, liveness_ttl=0)
    board.claim().incr_calling()
    p, _done, (index, pid, values) = _start_holder(board, 5)
    assert values == {"calling": 5, "writing": 1}
    assert board.totals() == {"calling": 6, "writing": 1}
    os.kill(pid, signal.SIGKILL)
    p.join(30)
    assert p.exitcode == -signal.SIGKILL
    assert board.totals() == {"calling": 1, "writing": 0}
    assert [r.index for r in board.rows()] == [0]
    # the dead row is the only one not owned by a live process: it is reclaimed
    q, done2, (index2, _pid2, values2) = _start_holder(board, 2)
    try:
        assert index2 == index
        assert values2 == {"calling": 2, "writing": 1}
        assert board.totals() == {"calling": 3, "writing": 1}
    finally:
        done2.set()
        q.join(30)


class _Clock:
    """A fake monotonic clock in ns that moves 1 us per reading, and on demand."""

    def __init__(self) -> None:
        self.now = 10**12

    def __call__(self) -> int:
        self.now += 1_000
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1e9)


class _Checks:
    """process_alive, counting the PIDs it is asked about."""

    def __init__(self) -> None:
        self.pids: list[int] = []

    def __call__(self, pid: int, start_time: int = 0) -> bool:
        self.pids.append(pid)
        return _real_process_alive(pid, start_time)

    def take(self) -> list[int]:
        """The PIDs checked since the last take()."""
        pids, self.pids = self.pids, []
        return pids


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    """Scoreboards read this fake clock for liveness expiry."""
    fake = _Clock()
    monkeypatch.setattr(shm_counters._scoreboard, "_clock", fake)
    return fake


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> _Checks:
    """Scoreboards check liveness through this counting wrapper."""
    wrapper = _Checks()
    monkeypatch.setattr(shm_counters._scoreboard, "process_alive", wrapper)
    return wrapper


def test_dead_row_stops_counting_within_ttl(clock: _Clock) -> None:
    """A dead owner's row counts until its cached liveness expires, then stops at the first call."""
    board = Scoreboard(2, FIELDS, liveness_ttl=0.5)
    p, _done, (_, pid, _) = _start_holder(board, 4)
    assert board.totals() == {"calling": 4, "writing": 1}
    os.kill(pid, signal.SIGKILL)
    p.join(30)
    clock.advance(0.4)
    assert board.totals() == {"calling": 4, "writing": 1}  # cached for liveness_ttl
    clock.advance(0.2)
    assert board.totals() == {"calling": 0, "writing": 0}


@pytest.fixture
def eight_rows() -> Iterator[tuple[Scoreboard, list[Any]]]:
    """A scoreboard (ttl 0, 3 checks per call) with 8 owned rows: this process's, 7 children's.

    Row 0 is this process's (calling 1); row k is child k's (calling k + 1).
    """
    board = Scoreboard(16, FIELDS, liveness_ttl=0, checks_per_call=3)
    board.claim().incr_calling()
    holders = [_start_holder(board, k + 1) for k in range(1, 8)]
    assert [info[0] for _, _, info in holders] == list(range(1, 8))
    try:
        yield board, holders
    finally:
        for p, _done, _info in holders:
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
            p.join(30)


def test_totals_checks_at_most_checks_per_call_rows(
    eight_rows: tuple[Scoreboard, list[Any]], clock: _Clock, checks: _Checks
) -> None:
    """Each totals() checks at most checks_per_call owners, the ones due longest, in turn."""
    board, holders = eight_rows
    pids = [os.getpid()] + [p.pid for p, _, _ in holders]
    per_call = []
    for _ in range(6):
        assert board.totals() == {"calling": 36, "writing": 7}
        per_call.append([pids.index(pid) for pid in checks.take()])
    # due longest first, ties by row: rows checked in one call come due together
    assert [sorted(rows) for rows in per_call] == [
        [0, 1, 2],
        [3, 4, 5],
        [0, 6, 7],
        [1, 2, 3],
        [0, 4, 5],
        [1, 6, 7],
    ]
    assert len(board.rows()) == 8
    assert len(checks.take()) == 3


def test_killed_owner_stops_counting_within_the_stated_bound(
    eight_rows: tuple[Scoreboard, list[Any]], clock: _Clock, checks: _Checks
) -> None:
    """With 8 owned rows, 3 checks per call, a SIGKILLed owner drops out within ceil(8/3) calls."""
    board, holders = eight_rows
    for _ in range(6):  # rows 1, 6, 7 are checked last: row 7 is the last due
        board.totals()
    victim, _done, (index, pid, _) = holders[6]
    assert index == 7
    os.kill(pid, signal.SIGKILL)
    victim.join(30)
    seen = [board.totals()["calling"] for _ in range(3)]
    assert seen == [36, 36, 28]  # counted by its last known liveness until checked
    assert board.totals()["calling"] == 28
    assert [r.index for r in board.rows()] == [0, 1, 2, 3, 4, 5, 6]


@pytest.mark.linux
def test_dead_owner_is_not_checked_again(clock: _Clock, checks: _Checks) -> None:
    """On Linux a dead (PID, start time) stays dead: once found, it costs no more checks."""
    board = Scoreboard(2, FIELDS, liveness_ttl=0)
    p, _done, (_, pid, _) = _start_holder(board, 2)
    assert board.totals() == {"calling": 2, "writing": 1}
    os.kill(pid, signal.SIGKILL)
    p.join(30)
    assert board.totals() == {"calling": 0, "writing": 0}
    assert checks.take() == [pid, pid]
    for _ in range(3):
        assert board.totals() == {"calling": 0, "writing": 0}
    assert checks.take() == []


def test_due_rows_are_checked_longest_due_first(
    clock: _Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Among 50 due rows, each call checks the 7 due longest, so all are checked in turn."""
    asked: list[int] = []

    def alive(pid: int, start_time: int = 0) -> bool:
        asked.append(pid)
        return True

    monkeypatch.setattr(shm_counters._scoreboard, "process_alive", alive)
    board = Scoreboard(64, FIELDS, liveness_ttl=0, checks_per_call=7)
    for r in range(50):  # owners 1000 + r, as if 50 processes held rows
        lib.shmc_store_sc(board._cell(r, 2), 1)
        lib.shmc_store_sc(board._cell(r, 0), 1000 + r)
    per_call = []
    for _ in range(9):
        assert board.totals() == {"calling": 50, "writing": 0}
        per_call.append(sorted(pid - 1000 for pid in asked))
        asked.clear()
    assert per_call == [
        *(list(range(k, k + 7)) for k in range(0, 49, 7)),
        [0, 1, 2, 3, 4, 5, 49],
        [6, 7, 8, 9, 10, 11, 12],
    ]


def test_rows_of_one_process_share_one_check(clock: _Clock, checks: _Checks) -> None:
    """Rows with the same owner and start time cost one liveness check per call."""
    board = Scoreboard(4, FIELDS, liveness_ttl=0)
    row = board.claim()
    row.incr_calling()
    for cell in (1, 0):  # copy the owner into row 2, start time first (as claim does)
        lib.shmc_store_sc(board._cell(2, cell), lib.shmc_load_sc(board._cell(0, cell)))
    lib.shmc_store_sc(board._cell(2, 2), 5)
    assert board.totals() == {"calling": 6, "writing": 0}
    assert checks.take() == [os.getpid()]


def test_reap_frees_dead_rows() -> None:
    """reap() frees dead owners' rows now and counts them."""
    board = Scoreboard(3, FIELDS)
    killed = []
    for _ in range(2):
        p, _done, (_, pid, _) = _start_holder(board, 1)
        os.kill(pid, signal.SIGKILL)
        p.join(30)
        killed.append(pid)
    board.claim()
    assert board.reap() == 2
    assert board.reap() == 0
    assert [r.pid for r in board.rows()] == [os.getpid()]


def _claim_in_full(board: Scoreboard, out: Any) -> None:
    try:
        board.claim()
    except ScoreboardFullError as exc:
        out.put(str(exc))
    else:
        out.put("claimed")


def test_full_scoreboard_raises() -> None:
    """When every row belongs to a live process, claim() raises ScoreboardFullError."""
    board = Scoreboard(1, FIELDS)
    board.claim()
    out = FORK.Queue()
    p = FORK.Process(target=_claim_in_full, args=(board, out))
    p.start()
    assert out.get(timeout=30) == "all 1 scoreboard rows are owned by live processes"
    p.join(30)
    assert issubclass(ScoreboardFullError, RuntimeError)


def test_release_frees_and_zeroes_the_row() -> None:
    """release() zeroes the row, frees it and closes the row object."""
    board = Scoreboard(2, FIELDS)
    row = board.claim()
    row.incr_calling(3)
    leave = row.bind_decr("calling")
    row.release()
    assert row.closed
    for op in (row.incr_calling, leave):
        with pytest.raises(ClosedError, match=r"^operation on closed ScoreboardRow$"):
            op()
    assert board.totals() == {"calling": 0, "writing": 0}
    assert board.rows() == []
    again = board.claim()
    assert again is not row
    assert again.to_dict() == {"calling": 0, "writing": 0}


def _row_after_fork(board: Scoreboard, row: ScoreboardRow, out: Any) -> None:
    child = board.claim()
    out.put((row.index, row.pid, child.index, child.pid, child is row))


def test_row_from_before_fork_keeps_pointing_at_parent_row() -> None:
    """After fork, claim() in the child gives a new row; the old object is the parent's."""
    board = Scoreboard(3, FIELDS)
    row = board.claim()
    out = FORK.Queue()
    p = FORK.Process(target=_row_after_fork, args=(board, row, out))
    p.start()
    old_index, old_pid, new_index, new_pid, same = out.get(timeout=30)
    p.join(30)
    assert (old_index, old_pid) == (0, os.getpid())
    assert (new_index, new_pid, same) == (1, p.pid, False)


def test_another_object_in_same_process_gets_same_row(shm_path: str) -> None:
    """Two Scoreboard objects on one path in one process share the process's row."""
    a = Scoreboard(4, FIELDS, path=shm_path)
    b = Scoreboard(4, FIELDS, path=shm_path)
    ra = a.claim()
    rb = b.claim()
    assert ra.index == rb.index
    ra.incr_calling()
    assert rb.calling == 1


def test_spawned_worker_on_named_scoreboard(shm_path: str) -> None:
    """A spawned worker's row counts while it lives and not after it is killed."""
    board = Scoreboard(4, FIELDS, path=shm_path, liveness_ttl=0)
    ready, done = SPAWN.Queue(), SPAWN.Event()
    p = SPAWN.Process(target=workers.hold_scoreboard_row, args=(shm_path, FIELDS, ready, done))
    p.start()
    try:
        index = ready.get(timeout=60)
        assert board.totals() == {"calling": 3, "writing": 1}
        assert board.rows() == [RowInfo(index, p.pid, {"calling": 3, "writing": 1})]
        os.kill(p.pid, signal.SIGKILL)
        p.join(30)
        assert board.totals() == {"calling": 0, "writing": 0}
    finally:
        # Event.set() would wait for a killed waiter forever: kill instead
        if p.is_alive():
            os.kill(p.pid, signal.SIGKILL)
        p.join(30)


def test_named_scoreboard_layout_mismatch(shm_path: str) -> None:
    """Attaching with other fields or another row count is a SegmentError."""
    Scoreboard(4, FIELDS, path=shm_path)
    with pytest.raises(SegmentError) as info:
        Scoreboard(4, ["calling"], path=shm_path)
    assert info.value.strerror == "scoreboard fields are (calling, writing), not (calling)"
    with pytest.raises(SegmentError, match="scoreboard has 4 rows, not 8"):
        Scoreboard(8, FIELDS, path=shm_path)
    with pytest.raises(SegmentError) as info:
        Scoreboard(4, FIELDS, path=shm_path + ".missing", create=False)
    assert info.value.filename == shm_path + ".missing"


@pytest.mark.parametrize(
    ("slots", "exc"), [(0, CounterSizeError), (2**21, CounterSizeError), ("2", CounterSizeError)]
)
def test_bad_slots(slots: object, exc: type[Exception]) -> None:
    """Slot counts outside 1..2**20 or not ints raise CounterSizeError."""
    with pytest.raises(exc):
        Scoreboard(slots, FIELDS)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "exc", "message"),
    [
        (
            0,
            CounterValueError,
            "checks_per_call 0 out of range: allowed 1 <= checks_per_call <= 1048576",
        ),
        (
            2**20 + 1,
            CounterValueError,
            f"checks_per_call {2**20 + 1} out of range: allowed 1 <= checks_per_call <= 1048576",
        ),
        (True, TypeError, "checks_per_call must be an int, not bool"),
        (2.0, TypeError, "checks_per_call must be an int, not float"),
    ],
)
def test_bad_checks_per_call(value: object, exc: type[Exception], message: str) -> None:
    """checks_per_call outside 1..2**20 or not an int is refused, saying what is allowed."""
    with pytest.raises(exc) as info:
        Scoreboard(2, FIELDS, checks_per_call=value)  # type: ignore[arg-type]
    assert str(info.value) == message


def test_scoreboard_beyond_memory_is_refused() -> None:
    """A scoreboard bigger than the machine's memory raises CounterSizeError naming the bytes."""
    limit = shm_counters._segment.MAX_BYTES
    nfields = limit // 2**20 // 8 + 1
    nbytes = 2**20 * (-(-(2 + nfields) * 8 // CACHE_LINE_SIZE) * CACHE_LINE_SIZE)
    with pytest.raises(CounterSizeError) as info:
        Scoreboard(2**20, [f"f{k}" for k in range(nfields)])
    assert str(info.value) == (
        f"scoreboard of 1048576 rows of {nfields} fields needs {nbytes} bytes,"
        f" more than {limit} (this machine's memory)"
    )


def test_bad_liveness_ttl() -> None:
    """A negative or over-an-hour liveness_ttl raises CounterValueError."""
    with pytest.raises(CounterValueError) as info:
        Scoreboard(2, FIELDS, liveness_ttl=-1)
    assert str(info.value) == "liveness_ttl -1 out of range: allowed 0 <= liveness_ttl <= 3600 s"
    with pytest.raises(TypeError):
        Scoreboard(2, FIELDS, liveness_ttl="1")  # type: ignore[arg-type]


def test_bad_fields() -> None:
    """Bad scoreboard fields raise FieldNameError."""
    with pytest.raises(FieldNameError, match=r"^duplicate field name 'a'$"):
        Scoreboard(2, ["a", "a"])


def test_closed_scoreboard() -> None:
    """After close, every operation raises ClosedError and the row is released."""
    with Scoreboard(2, FIELDS) as board:
        row = board.claim()
    assert board.closed
    assert row.closed
    for op in (board.claim, board.totals, board.rows, board.reap):
        with pytest.raises(ClosedError, match=r"^operation on closed Scoreboard$"):
            op()


def test_process_alive() -> None:
    """Live, dead, zombie and reused-PID processes are told apart."""
    assert process_alive(os.getpid())
    assert not process_alive(0)
    assert not process_alive(2**40)
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    assert not process_alive(pid)


@pytest.mark.linux
def test_zombie_and_start_time_mismatch_are_dead() -> None:
    """A zombie, or a live PID with another start time (reuse), counts as dead."""
    with open(f"/proc/{os.getpid()}/stat", "rb") as f:
        stime = int(f.read().rsplit(b")", 1)[1].split()[19])
    assert process_alive(os.getpid(), stime)
    assert not process_alive(os.getpid(), stime + 1)
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with open(f"/proc/{pid}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    break
            time.sleep(0.01)
        assert not process_alive(pid)
    finally:
        os.waitpid(pid, 0)


def _claim_and_report(board: Scoreboard, start: Any, out: Any, done: Any) -> None:
    start.wait(30)
    row = board.claim()
    row.incr_calling()
    out.put(row.index)
    done.wait(30)


def test_concurrent_claims_get_distinct_rows() -> None:
    """Processes claiming at the same moment each get a row of their own."""
    board = Scoreboard(6, FIELDS)
    start, done, out = FORK.Event(), FORK.Event(), FORK.Queue()
    procs = [
        FORK.Process(target=_claim_and_report, args=(board, start, out, done)) for _ in range(6)
    ]
    for p in procs:
        p.start()
    start.set()
    try:
        indexes = sorted(out.get(timeout=30) for _ in procs)
        assert indexes == [0, 1, 2, 3, 4, 5]
        assert board.totals() == {"calling": 6, "writing": 0}
    finally:
        done.set()
        for p in procs:
            p.join(30)


@pytest.mark.parametrize("named", [False, True])
def test_reclaimed_counts_each_dead_owner_once(named: bool, shm_path: str) -> None:
    """Rows taken back from dead owners (claim or reap) are counted once each, for everyone."""
    path = shm_path if named else None
    board = Scoreboard(2, FIELDS, path=path)
    other = Scoreboard(2, FIELDS, path=shm_path) if named else board
    assert (board.reclaimed, other.reclaimed) == (0, 0)
    # A dead owner's row taken by claim() (the only row left).
    board.claim()
    p, _done, (_, pid, _) = _start_holder(board, 1)
    os.kill(pid, signal.SIGKILL)
    p.join(30)
    q, done, _ = _start_holder(board, 1)
    try:
        assert (board.reclaimed, other.reclaimed) == (1, 1)
    finally:
        done.set()
        q.join(30)
    # The holder exited without releasing its row: reap() frees and counts it.
    assert board.reap() == 1
    assert board.reap() == 0
    assert (board.reclaimed, other.reclaimed) == (2, 2)
    # A released row is not a death.
    r, done, _ = _start_holder(board, 1, release=True)
    done.set()
    r.join(30)
    assert board.reap() == 0
    assert board.reclaimed == 2
    if named:
        with open(shm_path, "rb") as f:
            assert int.from_bytes(f.read(56)[48:56], "little") == 2


def test_attach_reads_rows_and_fields_from_the_header(shm_path: str) -> None:
    """A reader that did not make the scoreboard attaches by path alone and sees the rows."""
    board = Scoreboard(5, ["calling", "writing"], path=shm_path)
    board.claim().incr_writing(3)
    other = Scoreboard.attach(shm_path)
    assert (other.slots, other.fields) == (5, ("calling", "writing"))
    assert other.totals() == {"calling": 0, "writing": 3}
    with pytest.raises(SegmentError, match="no segment to attach to"):
        Scoreboard.attach(shm_path + ".missing")
