"""Scoreboard: one row of named counters per worker process.

Row layout (``row_bytes`` = the cells rounded up to whole cache lines, so
rows of different processes never share a line)::

    cell 0  owner       PID of the owner; 0 when free; CLAIMING bit set
                        (bit 63) while a process is zeroing it for itself
    cell 1  start time  the owner's start time (Linux: /proc/<pid>/stat
                        field 22, clock ticks since boot; 0 elsewhere)
    cell 2+ fields      one unsigned 64-bit counter per field

Only the owner writes its row's counters, so they share the row's cache
lines; the owner cell changes by compare-and-swap only.

One more cell counts the rows taken back from dead owners (by
:meth:`Scoreboard.claim` or :meth:`Scoreboard.reap`), each death once: the
workers that went away without releasing their row. A named segment keeps
it in its header (offset 48, see ``_segment.py``); anonymous memory in one
cache line after the rows.

Each reader (each Scoreboard object) caches every row's owner liveness,
because checking it costs system calls (``kill`` and a ``/proc`` read).
``shmc_sb_scan`` sums the rows cached as alive and picks the rows due for a
check: a cache entry expires ``liveness_ttl`` after its check, and a row
with a new owner is presumed alive (its owner was alive to claim it) and
due at once. A call checks at most ``checks_per_call`` due rows, those due
longest, so its cost is bounded whatever the number of rows.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import time
import weakref
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from ._counters import CLOSED
from ._errors import (
    ClosedError,
    CounterSizeError,
    CounterValueError,
    ScoreboardFullError,
    SegmentError,
)
from ._native import CACHE_LINE_SIZE, CLAIMING, MAX, cas, ffi, lib, new_u8, new_u64
from ._segment import (
    MAX_BYTES,
    RECLAIMED_OFFSET,
    Kind,
    Layout,
    PathArg,
    Segment,
    encode_names,
    format_names,
)
from ._struct import FieldBank, check_fields

__all__ = ["RowInfo", "Scoreboard", "ScoreboardRow", "process_alive"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

_LINUX = sys.platform.startswith("linux")
_HIDDEN = 2  # owner, start time
_MAX_ROWS = 2**20
_PID_MASK = CLAIMING - 1
# The reader's clock for liveness expiry (tests replace it).
_clock = time.monotonic_ns


def _proc_stat(pid: int) -> tuple[bytes, int] | None:
    """Return (state, start time) of ``pid`` from /proc, None if it is gone.

    /proc/<pid>/stat: field 2 (comm) is in parentheses and may hold spaces,
    so fields are counted after the last ')': field 3 is the state, field 22
    the start time in clock ticks after boot (proc(5)).
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rfind(b")") + 2 :].split()
    try:
        return rest[0], int(rest[19])
    except (IndexError, ValueError):
        return None


_self_stime: list[int] = [-1, 0]  # [pid, start time] of this process


def _my_start_time(pid: int) -> int:
    if _self_stime[0] != pid:
        stat = _proc_stat(pid) if _LINUX else None
        _self_stime[0] = pid
        _self_stime[1] = stat[1] if stat is not None else 0
    return _self_stime[1]


def process_alive(pid: int, start_time: int = 0) -> bool:
    """True if ``pid`` runs and (on Linux, when given) started at ``start_time``.

    ``kill(pid, 0)``: ESRCH means dead, EPERM means alive (someone else's).
    On Linux a zombie counts as dead, and so does a different start time
    (the PID was reused).
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except (OverflowError, OSError):
        return False
    if _LINUX:
        stat = _proc_stat(pid)
        if stat is None or stat[0] in (b"Z", b"X"):
            return False
        if start_time and stat[1] != start_time:
            return False
    return True


@dataclass(frozen=True, slots=True)
class RowInfo:
    """One live scoreboard row: its index, owner PID and values."""

    index: int
    pid: int
    values: dict[str, int]


class ScoreboardRow(FieldBank):
    """The row of the current process; same interface as a counter struct.

    ``row.f``, ``row.f = v``, ``row.incr_f(n=1)``, ``row.decr_f(n=1)``,
    ``row.to_dict()``, ``row.bind_incr(f)``, plus ``index``, ``pid`` and
    ``release()``.

    Example::

        >>> board = Scoreboard(2, ["calling"])
        >>> row = board.claim()
        >>> row.index, row.incr_calling()
        (0, 1)
        >>> board.close()
    """

    __slots__ = ("_board", "_owner", "index", "pid")

    def __init__(
        self, board: Scoreboard, index: int, pid: int, cells: list[Any], keep: object
    ) -> None:
        self._board = board
        self.index = index
        self.pid = pid
        self._owner = cells[0]
        self._bind(cells[_HIDDEN:], keep)

    def release(self) -> None:
        """Zero this row and free it for another process; the row is closed.

        Example::

            >>> board = Scoreboard(2, ["calling"])
            >>> row = board.claim()
            >>> row.release()
            >>> row.closed, board.rows()
            (True, [])
        """
        if self.closed:
            return
        for cell in self._cells:
            lib.shmc_store(cell[0], 0)
        cas(self._owner, self.pid, 0)
        self._unbind()
        if self._board._row is self:
            self._board._row = None

    def __repr__(self) -> str:
        base = FieldBank.__repr__(self)
        return f"{base[:-1]}, index={self.index}, pid={self.pid})" if not self.closed else base


_boards: weakref.WeakSet[Scoreboard] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    _self_stime[0] = -1
    for board in list(_boards):
        board._row = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Scoreboard:
    """One row of named counters per worker process, dead workers dropped.

    A process takes its row with :meth:`claim` (cheap after the first call:
    cached per process) and counts into it; :meth:`totals` sums the rows
    whose owner is alive, so a worker killed mid-request stops counting.
    Without ``path`` the memory is anonymous and shared with processes
    forked after construction; with ``path`` any process attaches by name.

    After ``fork()``, call ``claim()`` again in the child: it claims a new
    row for the child. A row object obtained before the fork keeps pointing
    at the parent's row.

    ``liveness_ttl`` (seconds) is how long this object trusts a row owner's
    liveness once checked; ``checks_per_call`` bounds the checks one
    :meth:`totals` or :meth:`rows` call makes (see :meth:`totals` for what
    that guarantees).

    Example::

        >>> board = Scoreboard(8, ["calling", "writing"])
        >>> row = board.claim()
        >>> row.incr_calling()
        1
        >>> board.totals()
        {'calling': 1, 'writing': 0}
        >>> board.close()
    """

    __slots__ = (
        "__weakref__",
        "_alive",
        "_due",
        "_expiry",
        "_keep",
        "_nfields",
        "_owner",
        "_path",
        "_reclaimed",
        "_row",
        "_row_bytes",
        "_row_class",
        "_rows",
        "_seg",
        "_stime",
        "_totals",
        "_ttl_ns",
        "checks_per_call",
        "fields",
        "liveness_ttl",
        "slots",
    )

    def __init__(
        self,
        slots: int,
        fields: Any,
        *,
        path: PathArg | None = None,
        create: bool = True,
        mode: int = 0o600,
        liveness_ttl: float = 0.5,
        checks_per_call: int = 32,
    ) -> None:
        if isinstance(slots, bool) or not isinstance(slots, int):
            raise CounterSizeError(f"slots must be an int, not {type(slots).__name__} {slots!r}")
        if not 1 <= slots <= _MAX_ROWS:
            raise CounterSizeError(f"slots {slots} out of range: allowed 1 <= slots <= {_MAX_ROWS}")
        names = check_fields(fields)
        if isinstance(liveness_ttl, bool) or not isinstance(liveness_ttl, (int, float)):
            raise TypeError("liveness_ttl must be a number of seconds")
        if not 0 <= liveness_ttl <= 3600:
            raise CounterValueError(
                f"liveness_ttl {liveness_ttl} out of range: allowed 0 <= liveness_ttl <= 3600 s"
            )
        if isinstance(checks_per_call, bool) or not isinstance(checks_per_call, int):
            raise TypeError(f"checks_per_call must be an int, not {type(checks_per_call).__name__}")
        if not 1 <= checks_per_call <= _MAX_ROWS:
            raise CounterValueError(
                f"checks_per_call {checks_per_call} out of range:"
                f" allowed 1 <= checks_per_call <= {_MAX_ROWS}"
            )
        nfields = len(names)
        row_bytes = -(-(_HIDDEN + nfields) * 8 // CACHE_LINE_SIZE) * CACHE_LINE_SIZE
        nbytes = slots * row_bytes
        what = f"{slots} row{'s' * (slots != 1)} of {nfields} field{'s' * (nfields != 1)}"
        if nbytes > MAX_BYTES:
            raise CounterSizeError(
                f"scoreboard of {what} needs {nbytes} bytes,"
                f" more than {MAX_BYTES} (this machine's memory)"
            )
        if path is None:
            seg = Segment.anonymous(nbytes + CACHE_LINE_SIZE, f"a scoreboard of {what}")
            reclaimed = seg.cells(nbytes)
        else:

            def want() -> Layout:
                return Layout(
                    Kind.SCOREBOARD,
                    slots,
                    nbytes // CACHE_LINE_SIZE,
                    nfields,
                    encode_names(names),
                )

            seg = Segment.named(
                path,
                kind=Kind.SCOREBOARD,
                want=want if create else None,
                mode=mode,
                what=f"a scoreboard of {what}",
            )
            theirs = seg.field_names()
            if theirs != names:
                raise SegmentError(
                    errno.EINVAL,
                    f"scoreboard fields are {format_names(theirs)}, not {format_names(names)}",
                    seg.path,
                )
            got = seg.header()
            if got.count != slots or got.capacity * CACHE_LINE_SIZE != nbytes:
                raise SegmentError(
                    errno.EINVAL,
                    f"scoreboard has {got.count} rows, not {slots}",
                    seg.path,
                )
            reclaimed = seg.header_cell(RECLAIMED_OFFSET)
        self.fields: tuple[str, ...] = names
        self.slots = slots
        self.liveness_ttl = float(liveness_ttl)
        self.checks_per_call = checks_per_call
        self._ttl_ns = int(liveness_ttl * 1e9)
        self._path = seg.path
        self._seg: Segment | None = seg
        self._nfields = nfields
        self._row_bytes = row_bytes
        self._rows: Any = seg.chars(0)
        self._reclaimed: Any = reclaimed
        self._keep = seg  # held until this object dies, even after close()
        self._row: ScoreboardRow | None = None
        self._row_class = type("ScoreboardRow", (ScoreboardRow,), ScoreboardRow._namespace(names))
        # this reader's liveness cache, kept up to date by shmc_sb_scan and _refresh
        self._owner = new_u64(slots)
        self._stime = new_u64(slots)
        self._expiry = new_u64(slots)
        self._alive = new_u8(slots)
        self._totals = new_u64(nfields)
        self._due = new_u64(checks_per_call)
        _boards.add(self)

    @classmethod
    def attach(
        cls, path: PathArg, *, liveness_ttl: float = 0.5, checks_per_call: int = 32
    ) -> Scoreboard:
        """Attach to an existing named scoreboard, with its own rows and fields.

        For a reader that did not make it (an exporter, a CLI): the slots and
        field names are read from the segment's header.

        Example::

            board = Scoreboard.attach("/dev/shm/raindrops-1000/raindrops-81234")
            board.fields, board.slots  # ('calling', 'writing'), 256
        """
        seg = Segment.named(path, kind=Kind.SCOREBOARD, want=None, mode=0o600)
        names = seg.field_names()
        slots = seg.header().count
        return cls(
            slots,
            names,
            path=path,
            create=False,
            liveness_ttl=liveness_ttl,
            checks_per_call=checks_per_call,
        )

    @property
    def path(self) -> str | None:
        """The named segment's path, or None for anonymous memory."""
        return self._path

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._seg is None

    def _check_open(self) -> Segment:
        if self._seg is None:
            raise ClosedError("operation on closed Scoreboard")
        return self._seg

    def _cell(self, r: int, c: int) -> Any:
        """A raw pointer to cell ``c`` of row ``r`` (valid while self is open)."""
        return ffi.cast("uint64_t *", self._rows + r * self._row_bytes + 8 * c)

    def _make_row(self, r: int, pid: int) -> ScoreboardRow:
        seg = self._check_open()
        cells = [seg.cells(r * self._row_bytes + 8 * c) for c in range(_HIDDEN + self._nfields)]
        row: ScoreboardRow = self._row_class(self, r, pid, cells, seg)
        self._row = row
        return row

    def claim(self) -> ScoreboardRow:
        """Return this process's row, claiming a free or dead one if needed.

        Raises :class:`ScoreboardFullError` when every row belongs to a live
        process.

        Example::

            row = board.claim()
            row.incr_calling()
        """
        self._check_open()
        if self._row is not None and not self._row.closed:
            return self._row
        pid = os.getpid()
        stime = _my_start_time(pid)
        load = lib.shmc_load_sc
        # 1. a row this process already owns (e.g. via another Scoreboard object)
        for r in range(self.slots):
            if load(self._cell(r, 0)) == pid and load(self._cell(r, 1)) == stime:
                return self._make_row(r, pid)
        # 2. a free row, then 3. a row whose owner is dead
        for r in range(self.slots):
            if load(self._cell(r, 0)) == 0 and cas(self._cell(r, 0), 0, CLAIMING | pid):
                return self._take(r, pid, stime)
        for r in range(self.slots):
            owner = load(self._cell(r, 0))
            if owner == 0:
                if cas(self._cell(r, 0), 0, CLAIMING | pid):
                    return self._take(r, pid, stime)
                continue
            if owner & CLAIMING:
                dead = not process_alive(owner & _PID_MASK)
            else:
                dead = not process_alive(owner, load(self._cell(r, 1)))
            if dead and cas(self._cell(r, 0), owner, CLAIMING | pid):
                logger.debug("row %d reclaimed from dead pid %d", r, owner & _PID_MASK)
                lib.shmc_add(self._reclaimed, 1)
                return self._take(r, pid, stime)
        raise ScoreboardFullError(f"all {self.slots} scoreboard rows are owned by live processes")

    def _take(self, r: int, pid: int, stime: int) -> ScoreboardRow:
        lib.shmc_zero_cells(self._cell(r, _HIDDEN), self._nfields)
        lib.shmc_store_sc(self._cell(r, 1), stime)
        lib.shmc_store_sc(self._cell(r, 0), pid)
        return self._make_row(r, pid)

    def _refresh(self) -> Any:
        """Sum the rows counted as alive into ``self._totals``, checking a few first.

        One C scan sums the rows cached as alive and picks at most
        ``checks_per_call`` rows due for a check; they are checked (rows of
        one process share one check) and, if any answer changed, summed again.
        """
        now = _clock()
        args = (
            self._rows,
            self.slots,
            self._row_bytes,
            self._nfields,
            now,
            self._owner,
            self._stime,
            self._expiry,
            self._alive,
            self._totals,
            self._due,
        )
        ndue = lib.shmc_sb_scan(*args, self.checks_per_call)
        if not ndue:
            return self._totals
        answers: dict[tuple[int, int], bool] = {}
        changed = False
        for j in range(ndue):
            r = self._due[j]
            key = (self._owner[r], self._stime[r])
            alive = answers.get(key)
            if alive is None:
                alive = answers[key] = process_alive(*key)
            changed = changed or alive != bool(self._alive[r])
            self._alive[r] = alive
            # On Linux a dead (pid, start time) stays dead: never check it again.
            self._expiry[r] = now + self._ttl_ns if alive or not key[1] else MAX
        if changed:
            lib.shmc_sb_scan(*args, 0)
        return self._totals

    def totals(self) -> dict[str, int]:
        """Sum every field over the rows whose owner is alive.

        Owner liveness is cached per row for ``liveness_ttl`` seconds, and
        one call checks at most ``checks_per_call`` rows (the ones due
        longest); a row with a new owner counts as alive until checked. So
        a dead owner's row stops counting in the first call made more than
        ``liveness_ttl`` after its death when no more than
        ``checks_per_call`` rows are owned, and otherwise at the latest in
        the ``ceil(owned rows / checks_per_call)``-th such call.

        Example::

            >>> Scoreboard(4, ["calling"]).totals()
            {'calling': 0}
        """
        self._check_open()
        totals = self._refresh()
        return dict(zip(self.fields, totals, strict=True))

    def rows(self) -> list[RowInfo]:
        """The rows counted in :meth:`totals`, by index, with their owner PIDs and values.

        Example::

            >>> board = Scoreboard(4, ["calling"])
            >>> board.claim().incr_calling()
            1
            >>> [(r.index, r.values) for r in board.rows()]
            [(0, {'calling': 1})]
            >>> board.close()
        """
        self._check_open()
        self._refresh()
        out = []
        load = lib.shmc_load
        load_sc = lib.shmc_load_sc
        for r in range(self.slots):
            owner = load_sc(self._cell(r, 0))
            if not owner or owner != self._owner[r] or not self._alive[r]:
                continue
            if load_sc(self._cell(r, 1)) != self._stime[r]:
                continue
            values = {f: load(self._cell(r, _HIDDEN + k)) for k, f in enumerate(self.fields)}
            out.append(RowInfo(r, owner, values))
        return out

    def reap(self) -> int:
        """Free now the rows whose owner is dead; return how many.

        Unlike :meth:`totals`, it checks every owned row.

        Example::

            >>> Scoreboard(4, ["calling"]).reap()
            0
        """
        self._check_open()
        freed = 0
        load = lib.shmc_load_sc
        for r in range(self.slots):
            owner = load(self._cell(r, 0))
            if not owner:
                continue
            if owner & CLAIMING:
                dead = not process_alive(owner & _PID_MASK)
            else:
                dead = not process_alive(owner, load(self._cell(r, 1)))
            if dead and cas(self._cell(r, 0), owner, 0):
                freed += 1
        if freed:
            lib.shmc_add(self._reclaimed, freed)
        return freed

    @property
    def reclaimed(self) -> int:
        """Rows ever taken back from dead owners: workers gone without releasing theirs.

        :meth:`claim` counts a dead owner's row it takes, :meth:`reap` every
        row it frees; each death is counted once, by whichever process frees
        the row, and the count lives in the scoreboard (every process sees
        it). Rows released with :meth:`ScoreboardRow.release` are not
        counted. A row stays owned by its dead owner until one of them runs:
        call :meth:`reap` to count deaths as they happen.

        Example::

            >>> Scoreboard(4, ["calling"]).reclaimed
            0
        """
        self._check_open()
        return int(lib.shmc_load(self._reclaimed))

    def close(self) -> None:
        """Release this process's row (if claimed) and the mapping.

        Example::

            >>> board = Scoreboard(2, ["calling"])
            >>> board.close()
            >>> board.closed
            True
        """
        if self._seg is None:
            return
        if self._row is not None:
            self._row.release()
        self._seg = None
        self._rows = CLOSED
        _boards.discard(self)

    def __enter__(self) -> Scoreboard:
        self._check_open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " closed" if self._seg is None else ""
        where = f" path={self._path!r}" if self._path else ""
        return f"<Scoreboard slots={self.slots} fields={self.fields}{where}{state}>"
