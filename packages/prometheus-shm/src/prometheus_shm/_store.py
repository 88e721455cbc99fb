"""The protocols every process follows on the shared segment (its layout: ``_layout``).

Only a row's owner writes its values; a process's values of one series are
summed with every other's only when read. A row whose owner died is *folded*
into the archive by whoever notices (a reader or a process looking for a
row): its counter, histogram and summary values are added to the archive's,
its "min"/"max"/"mostrecent" gauges merged into it, its live gauges dropped;
then the row is free again, or *retired* when it holds "all" gauges (one
sample per process, alive or dead, as prometheus_client's multiprocess mode
keeps them) until a new process needs it. Readers bracket their reads with
the fold sequence (a seqlock) so a fold never shows half done; BACKUP lets
anyone undo the fold of a folder that died in the middle of it.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Iterable
from typing import Any

from shm_counters import Cells, SegmentError, process_alive, process_start_time

from ._errors import (
    ConfigError,
    ProcessTableFullError,
    SegmentLayoutError,
    SeriesTableFullError,
    UnsafeSegmentError,
)
from ._layout import (
    ALL_MERGES,
    CLAIMING,
    FOLDING,
    GC_CELLS,
    H_CREATED,
    H_DROPPED,
    H_FOLD_LOCK,
    H_FOLD_OWNER,
    H_FOLD_ROW,
    H_FOLD_STAGE,
    H_FOLDED,
    H_RETIRE_SEQ,
    H_SEQ,
    H_TABLE_LOCK,
    H_USED_CELLS,
    H_USED_HEAP,
    MAGIC,
    PID_MASK,
    R_GC,
    RETIRED,
    TAG,
    VERSION,
    Geometry,
    RowValues,
    Snapshot,
    check_geometry,
    present,
    round_up,
)
from ._liveness import Liveness
from ._table import Entry, Merge, decode_entry

__all__ = ["Store"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

_LOCK_TIMEOUT = 5.0
# How long a reader waits for a fold in progress (by a live process) to end.
_READ_PATIENCE = 2.0


class Store:
    """One process's handle on the segment: layout, table index, rows, folds.

    Every method that changes shared state takes this process's lock first,
    so threads of one process never race each other; processes coordinate
    through the cells (compare-and-swap, the two shared locks, the seqlock).
    """

    def __init__(self, cells: Cells, geometry: Geometry, path: str | None) -> None:
        self.cells = cells
        self.geo = geometry
        self.path = path
        self.lock = threading.RLock()
        self.entries: list[Entry] = []
        self.index: dict[bytes, Entry] = {}
        self.corrupt: str | None = None
        self._parsed = 0  # heap bytes parsed into self.entries
        self._ncells = 0  # value cells covered by self.entries

    # -- opening --------------------------------------------------------------

    @staticmethod
    def _init(geo: Geometry) -> Any:
        def init(cells: Cells) -> None:
            cells.store_many(
                0, [MAGIC, VERSION, geo.capacity, geo.rows, geo.heap_bytes, geo.row_cells]
            )
            cells.fstore(H_CREATED, time.time())

        return init

    @classmethod
    def anonymous(cls, geo: Geometry) -> Store:
        """A segment in anonymous memory, shared with processes forked after this."""
        cells = Cells(geo.total_cells, tag=TAG, init=cls._init(geo))
        return cls(cells, geo, None)

    @classmethod
    def named(cls, path: str, geo: Geometry | None, mode: int = 0o600) -> Store:
        """Attach to the segment at ``path``, creating it with ``geo`` if given and missing.

        An existing segment keeps its own sizes, whatever ``geo`` says.
        """
        try:
            cells = cls._open_cells(path, geo, mode)
        except SegmentError as exc:
            # shm-counters opens without following a symlink and checks the
            # owner and mode (EPERM, ELOOP); EINVAL is a header that is not ours.
            code, message = exc.errno or errno.EIO, exc.strerror or str(exc)
            if code in (errno.EPERM, errno.ELOOP):
                raise UnsafeSegmentError(code, message, path) from None
            if code == errno.EINVAL:
                raise SegmentLayoutError(
                    code, f"not a prometheus-shm segment ({message})", path
                ) from None
            raise
        return cls(cells, cls._read_geometry(cells, path), path)

    @classmethod
    def _open_cells(cls, path: str, geo: Geometry | None, mode: int) -> Cells:
        """Attach to the file at ``path``; create it with ``geo`` if it is missing.

        An existing file keeps its own sizes (attach first); a file another
        process creates meanwhile is attached to.
        """
        for _ in range(5):
            try:
                return Cells.attach(path, tag=TAG)
            except SegmentError as exc:
                if exc.errno != errno.ENOENT or geo is None:
                    raise
            try:
                return Cells(geo.total_cells, tag=TAG, path=path, mode=mode, init=cls._init(geo))
            except SegmentError as exc:
                if exc.errno != errno.EINVAL or "asked" not in str(exc):
                    raise  # not a smaller segment made by another process meanwhile
        raise SegmentError(errno.EAGAIN, "segment keeps appearing and vanishing", path)

    @staticmethod
    def _read_geometry(cells: Cells, path: str) -> Geometry:
        head = cells.load_many(0, 6)
        if head[0] != MAGIC:
            raise SegmentLayoutError(errno.EINVAL, "not a prometheus-shm segment: bad magic", path)
        if head[1] != VERSION:
            raise SegmentLayoutError(
                errno.EINVAL, f"prometheus-shm segment layout {head[1]}, this reads {VERSION}", path
            )
        try:
            geo = check_geometry(head[2], head[3], head[4])
        except ConfigError as exc:
            raise SegmentLayoutError(
                errno.EINVAL, f"segment header is corrupt: {exc}", path
            ) from None
        if geo.row_cells != head[5] or geo.total_cells > len(cells):
            raise SegmentLayoutError(
                errno.EINVAL,
                f"segment header says {geo.total_cells} cells, the file holds {len(cells)}",
                path,
            )
        return geo

    # -- the series table ------------------------------------------------------

    @property
    def ncells(self) -> int:
        """Value cells covered by the entries this process has parsed."""
        return self._ncells

    def sync(self) -> list[Entry]:
        """Parse entries published since the last call; return the new ones.

        A malformed entry stops parsing for good (``self.corrupt`` says why):
        the entries before it stay usable.
        """
        with self.lock:
            if self.corrupt is not None:
                return []
            cells, heap = self.cells, self.geo.heap
            end = cells.load_sc(H_USED_HEAP)
            new: list[Entry] = []
            pos = self._parsed
            while pos < end:
                at = heap + pos // 8
                try:
                    if end - pos < 16:
                        raise ValueError("entry header runs past the table's end")
                    word, klen = cells.load_many(at, 2)
                    first, ncells = word & ((1 << 40) - 1), word >> 40
                    size = 16 + round_up(klen, 8)
                    if size > end - pos or first + ncells > self.geo.capacity:
                        raise ValueError("entry runs past the table's end")
                    key = cells.read_bytes(at + 2, klen)
                    entry = decode_entry(key, first, ncells)
                except ValueError as exc:
                    self.corrupt = f"series table entry at byte {pos}: {exc}"
                    logger.error("prometheus-shm: %s; later entries ignored", self.corrupt)
                    break
                self.entries.append(entry)
                self.index.setdefault(key, entry)
                self._ncells = max(self._ncells, first + ncells)
                new.append(entry)
                pos += size
            self._parsed = pos
            return new

    def add_series(self, key: bytes, ncells: int, describe: str) -> Entry:
        """The entry for ``key``, appended to the table if no process made it yet.

        Raises :class:`SeriesTableFullError` naming ``describe`` (the series)
        and what is full.
        """
        with self.lock:
            found = self.index.get(key)
            if found is not None:
                return found
            self.sync()
            found = self.index.get(key)
            if found is not None:
                return found
            cells, geo = self.cells, self.geo
            self._lock(H_TABLE_LOCK)
            try:
                self.sync()
                found = self.index.get(key)
                if found is not None:
                    return found
                used_cells = cells.load_sc(H_USED_CELLS)
                used_heap = cells.load_sc(H_USED_HEAP)
                size = 16 + round_up(len(key), 8)
                if used_cells + ncells > geo.capacity:
                    raise SeriesTableFullError(
                        f"cannot add {describe}: the series table of {self._where()} is full"
                        f" ({used_cells} of capacity={geo.capacity} values used);"
                        " install(capacity=...) sets a larger one for a new segment"
                    )
                if used_heap + size > geo.heap_bytes:
                    raise SeriesTableFullError(
                        f"cannot add {describe}: the series table of {self._where()} has no room"
                        f" for its names ({size} bytes needed, {geo.heap_bytes - used_heap} of"
                        f" heap_bytes={geo.heap_bytes} left);"
                        " install(heap_bytes=...) sets a larger one for a new segment"
                    )
                at = geo.heap + used_heap // 8
                cells.store_many(at, [used_cells | ncells << 40, len(key)])
                cells.write_bytes(at + 2, key)
                cells.store_sc(H_USED_CELLS, used_cells + ncells)
                cells.store_sc(H_USED_HEAP, used_heap + size)
            finally:
                self._unlock(H_TABLE_LOCK)
            self.sync()
            return self.index[key]

    def _where(self) -> str:
        return f"segment {self.path}" if self.path else "the anonymous segment"

    # -- shared locks ------------------------------------------------------------

    def _lock(self, cell: int) -> None:
        """Take a shared lock (a PID in ``cell``), from a dead holder if need be."""
        cells, pid = self.cells, os.getpid()
        deadline = time.monotonic() + _LOCK_TIMEOUT
        spins = 0
        while True:
            holder = cells.load_sc(cell)
            if holder == 0:
                if cells.cas(cell, 0, pid):
                    return
                continue
            if holder != pid and not process_alive(holder) and cells.cas(cell, holder, pid):
                logger.warning(
                    "prometheus-shm: lock %d of %s taken over from dead pid %d",
                    cell,
                    self._where(),
                    holder,
                )
                if cell == H_FOLD_LOCK:
                    self._recover_fold()
                return
            spins += 1
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"prometheus-shm: {self._where()}'s lock {cell} held by live pid {holder}"
                    f" for over {_LOCK_TIMEOUT} s"
                )
            time.sleep(0 if spins < 50 else 0.001)

    def _unlock(self, cell: int) -> None:
        self.cells.cas(cell, os.getpid(), 0)

    # -- process rows ---------------------------------------------------------------

    def owner(self, r: int) -> int:
        """Row ``r``'s owner word."""
        return self.cells.load_sc(self.geo.owners + r)

    def claim(self, pid: int) -> int:
        """Claim a row for process ``pid`` (the caller): free, freed by folding, or retired.

        Raises :class:`ProcessTableFullError` when every row belongs to a
        live process.
        """
        with self.lock:
            stime = process_start_time(pid)
            r = self._take_free(pid)
            if r is None:
                r = self._take_dead(pid)
            if r is None:
                r = self._take_retired(pid)
            if r is None:
                raise ProcessTableFullError(
                    f"all {self.geo.rows} process rows of {self._where()} are held by live"
                    f" processes; install(processes=...) sets more for a new segment"
                )
            cells, geo = self.cells, self.geo
            cells.zero(geo.row(r), geo.row_cells)
            cells.store(geo.retired_at + r, 0)
            cells.store_sc(geo.stimes + r, stime)
            cells.store_sc(geo.owners + r, pid)
            return r

    def _take_free(self, pid: int) -> int | None:
        cells, geo = self.cells, self.geo
        for r in range(geo.rows):
            cell = geo.owners + r
            word = cells.load_sc(cell)
            if word == 0 and cells.cas(cell, 0, CLAIMING | pid):
                return r
            # a claimer that died setting its row up: nothing in it counts yet
            if (
                word & CLAIMING
                and not process_alive(word & PID_MASK)
                and cells.cas(cell, word, CLAIMING | pid)
            ):
                return r
        return None

    def _take_dead(self, pid: int) -> int | None:
        """Fold rows of dead owners until one comes free; take it."""
        cells, geo = self.cells, self.geo
        for r in range(geo.rows):
            cell = geo.owners + r
            word = cells.load_sc(cell)
            if not word or word & (CLAIMING | FOLDING | RETIRED):
                continue
            if process_alive(word, cells.load_sc(geo.stimes + r)):
                continue
            self.fold(r, word)
            if cells.load_sc(cell) == 0 and cells.cas(cell, 0, CLAIMING | pid):
                return r
        return None

    def _take_retired(self, pid: int) -> int | None:
        cells, geo = self.cells, self.geo
        retired = []
        for r in range(geo.rows):
            word = self.owner(r)
            if word & RETIRED and not word & CLAIMING:
                retired.append((cells.load(geo.retired_at + r), r, word))
        for _, r, word in sorted(retired):
            if cells.cas(geo.owners + r, word, CLAIMING | pid):
                cells.add(H_DROPPED, 1)
                logger.info(
                    "prometheus-shm: row %d of dead pid %d reused; its 'all' gauges are dropped",
                    r,
                    word & PID_MASK,
                )
                return r
        return None

    def dead_rows(self) -> list[tuple[int, int]]:
        """Rows whose owner is dead and not yet folded, as (row, owner word); checks each."""
        out = []
        for r in range(self.geo.rows):
            word = self.owner(r)
            if not word or word & (CLAIMING | FOLDING | RETIRED):
                continue
            stime = self.cells.load_sc(self.geo.stimes + r)
            if not process_alive(word, stime):
                out.append((r, word))
        return out

    def reap(self) -> int:
        """Fold every row whose owner is dead now; return how many were folded."""
        return sum(self.fold(r, word) for r, word in self.dead_rows())

    def mark_present(self, r: int, cells_: Iterable[int], present_: bool = True) -> None:
        """Set (or clear) the presence bits of value cells ``cells_`` in row ``r``."""
        words: dict[int, int] = {}
        for c in cells_:
            words[c >> 6] = words.get(c >> 6, 0) | 1 << (c & 63)
        base = self.geo.presence(self.geo.row(r))
        for w, bits in words.items():
            if present_:
                self.cells.or_bits(base + w, bits)
            else:
                self.cells.and_bits(base + w, ~bits & ((1 << 64) - 1))

    # -- folding ------------------------------------------------------------------

    def fold(self, r: int, word: int) -> bool:
        """Fold dead row ``r`` (owner word ``word``) into the archive; False if already done.

        Counter, histogram, summary and "sum" gauge values are added to the
        archive's; "min"/"max" gauges lower/raise it; "mostrecent" ones
        replace it when newer; live gauges are dropped. The row is then free,
        or retired if it holds "all" gauges. Readers see the archive and the
        row either before or after, never half way (the fold sequence), and
        a folder that dies half way is undone by the next (the backup).
        """
        with self.lock:
            cells, geo = self.cells, self.geo
            start, owner = geo.row(r), geo.owners + r
            self._lock(H_FOLD_LOCK)
            try:
                if cells.load_sc(owner) != word:
                    return False
                self.sync()
                seq = cells.load_sc(H_SEQ)
                cells.store_sc(H_SEQ, seq + 1)
                Cells.fence()
                cells.store_sc(H_FOLD_ROW, r)
                cells.store_sc(H_FOLD_OWNER, word)
                cells.copy(geo.backup, geo.archive, geo.row_cells)
                cells.store_sc(H_FOLD_STAGE, 1)
                cells.store_sc(owner, word | FOLDING)
                keep = self._fold_values(start)
                if keep:
                    order = cells.add(H_RETIRE_SEQ, 1)
                    cells.store(geo.retired_at + r, order)
                    cells.store_sc(owner, RETIRED | word)
                else:
                    cells.store_sc(owner, 0)
                cells.store_sc(H_FOLD_STAGE, 0)
                cells.add(H_FOLDED, 1)
                Cells.fence()
                cells.store_sc(H_SEQ, seq + 2)
            finally:
                self._unlock(H_FOLD_LOCK)
            logger.debug("prometheus-shm: folded row %d of dead pid %d", r, word)
            return True

    def _fold_values(self, start: int) -> bool:
        """Merge row values into the archive; True if the row holds "all" gauges."""
        cells, geo = self.cells, self.geo
        n = self._ncells
        nwords = -(-n // 64)
        if n == 0:
            return False
        vals = cells.fload_many(geo.values(start), n)
        pres = cells.load_many(geo.presence(start), nwords)
        arch = cells.fload_many(geo.values(geo.archive), n)
        apres = cells.load_many(geo.presence(geo.archive), nwords)
        keep = False
        for e in self.entries:
            c = e.first_cell
            if not present(pres, c):
                continue
            merge = e.merge
            if merge in ALL_MERGES:
                keep = keep or merge is Merge.ALL
                continue
            if merge.live_only:
                continue
            had = present(apres, c)
            v = vals[c]
            if merge is Merge.SUM:
                arch[c] = arch[c] + v if had else v
            elif merge is Merge.MIN:
                arch[c] = v if not had or v < arch[c] else arch[c]
            elif merge is Merge.MAX:
                arch[c] = v if not had or v > arch[c] else arch[c]
            elif merge is Merge.RECENT:
                if not had or vals[c + 1] > arch[c + 1]:
                    arch[c], arch[c + 1] = v, vals[c + 1]
                apres[(c + 1) >> 6] |= 1 << ((c + 1) & 63)
            apres[c >> 6] |= 1 << (c & 63)
        cells.fstore_many(geo.values(geo.archive), arch)
        cells.store_many(geo.presence(geo.archive), apres)
        return keep

    def _recover_fold(self) -> None:
        """Finish or undo the fold of a folder that died (the fold lock is ours)."""
        cells, geo = self.cells, self.geo
        seq = cells.load_sc(H_SEQ)
        if seq % 2 == 0:
            return
        r = cells.load_sc(H_FOLD_ROW)
        word = cells.load_sc(H_FOLD_OWNER)
        owner_cell = geo.owners + r if r < geo.rows else None
        if (
            owner_cell is not None
            and cells.load_sc(H_FOLD_STAGE) == 1
            and cells.load_sc(owner_cell) == word | FOLDING
        ):
            cells.copy(geo.archive, geo.backup, geo.row_cells)
            cells.store_sc(owner_cell, word)
            logger.warning("prometheus-shm: undid the half-done fold of row %d", r)
        cells.store_sc(H_FOLD_STAGE, 0)
        Cells.fence()
        cells.store_sc(H_SEQ, seq + 1)

    # -- reading ---------------------------------------------------------------------

    def snapshot(
        self, liveness: Liveness, *, per_row: bool
    ) -> tuple[Snapshot, list[tuple[int, int]]]:
        """Read every figure under one stable fold sequence; also the dead rows seen.

        ``per_row`` also copies each counted or retired row's values (for
        "all", "min", "max" and "mostrecent" gauges, Info and Enum).
        """
        cells, geo = self.cells, self.geo
        self.sync()
        n = self._ncells
        nwords = -(-n // 64)
        deadline = time.monotonic() + _READ_PATIENCE
        waited = 0.0
        while True:
            seq = cells.load_sc(H_SEQ)
            late = time.monotonic() > deadline
            if seq % 2 and not late:
                waited = self._wait_for_fold(seq, waited)
                continue
            words = cells.load_many(geo.owners, geo.rows)
            stimes = cells.load_many(geo.stimes, geo.rows)
            owners: dict[int, tuple[int, int]] = {
                r: (word & PID_MASK, stimes[r])
                for r, word in enumerate(words)
                if word and not word & CLAIMING
            }
            alive = liveness.alive(
                (key for r, key in owners.items() if not words[r] & RETIRED), time.monotonic()
            )
            counted, live, retired, dead = [], [], [], []
            for r, key in owners.items():
                if words[r] & RETIRED:
                    retired.append(r)
                    continue
                counted.append(r)
                if alive[key]:
                    live.append(r)
                else:
                    dead.append((r, words[r]))
            vstart = geo.values(geo.first_row)
            pstart = geo.presence(geo.first_row)
            stride = geo.row_cells
            sums = cells.fsum_rows(vstart, stride, counted, n)
            pres = cells.or_rows(pstart, stride, counted, nwords)
            live_sums = cells.fsum_rows(vstart, stride, live, n)
            live_pres = cells.or_rows(pstart, stride, live, nwords)
            arch = cells.fload_many(geo.values(geo.archive), n)
            apres = cells.load_many(geo.presence(geo.archive), nwords)
            rows: list[RowValues] = []
            if per_row:
                for r in sorted(counted + retired):
                    start = geo.row(r)
                    rows.append(
                        RowValues(
                            r,
                            owners[r][0],
                            r in live,
                            r in retired,
                            cells.fload_many(geo.values(start), n),
                            cells.load_many(geo.presence(start), nwords),
                            cells.load_many(start + R_GC, GC_CELLS),
                        )
                    )
            Cells.fence()
            stable = cells.load_sc(H_SEQ) == seq and cells.load_many(geo.owners, geo.rows) == words
            if not stable and not late:
                continue
            if not stable:
                logger.warning(
                    "prometheus-shm: %s kept changing for %.0f s (a fold by PID %d);"
                    " this collection may be off by one dead process",
                    self._where(),
                    _READ_PATIENCE,
                    cells.load_sc(H_FOLD_LOCK),
                )
            total = [s + a for s, a in zip(sums, arch, strict=True)]
            presence = [p | a for p, a in zip(pres, apres, strict=True)]
            snap = Snapshot(
                n,
                total,
                presence,
                live_sums,
                live_pres,
                arch,
                apres,
                rows,
                sorted({owners[r][0] for r in live}),
            )
            return snap, dead

    def _wait_for_fold(self, seq: int, waited: float) -> float:
        """Wait a little for a fold to end; undo it if its folder died."""
        time.sleep(0.001)
        waited += 0.001
        holder = self.cells.load_sc(H_FOLD_LOCK)
        if waited >= 0.01 and holder and not process_alive(holder):
            with self.lock:
                self._lock(H_FOLD_LOCK)  # takes it over from the dead holder, recovering
                self._unlock(H_FOLD_LOCK)
        return waited

    def stats(self) -> dict[str, int]:
        """The segment's own figures: sizes, use, folds."""
        cells, geo = self.cells, self.geo
        owned = retired = 0
        for r in range(geo.rows):
            word = self.owner(r)
            if word & RETIRED:
                retired += 1
            elif word and not word & CLAIMING:
                owned += 1
        return {
            "bytes": geo.total_cells * 8,
            "capacity": geo.capacity,
            "values_used": cells.load_sc(H_USED_CELLS),
            "heap_bytes": geo.heap_bytes,
            "heap_used": cells.load_sc(H_USED_HEAP),
            "rows": geo.rows,
            "rows_owned": owned,
            "rows_retired": retired,
            "folded": cells.load_sc(H_FOLDED),
            "retired_dropped": cells.load_sc(H_DROPPED),
        }
