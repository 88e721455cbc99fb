"""The shared segment's layout: where everything is, in 8-byte cells.

One ``shm_counters.Cells`` block, anonymous (inherited by forked workers) or
a named file (found by spawned ones). In 8-byte cells from its start::

    cell             cells        what
    0                HEADER (32)  header, below
    OWNERS           R            owner word of each row: PID, | CLAIMING (bit 63) while
                                  being set up, | FOLDING (bit 62) while folded, |
                                  RETIRED (bit 61) once folded but kept for its "all"
                                  gauges; 0 when free
    STIMES           R            each owner's start time (shm_counters.process_start_time)
    RETIRED_AT       R            each retired row's order (header cell 14 then)
    ARCHIVE          ROW          the archive: dead processes' values, folded (a whole line)
    BACKUP           ROW          the archive as it was before the fold in progress
    ROWS             R x ROW      one row per process (ROW cells each)
    HEAP             HEAP_BYTES/8 the series table's entries, appended

    header cell  what
    0            magic, b"PROMSHM1" little-endian
    1            layout version (1)
    2            capacity C: value cells per row (the series table's size)
    3            rows R
    4            heap bytes
    5            cells per row, ROW
    6            value cells handed out to entries so far (<= C)
    7            heap bytes used by published entries (readers parse up to here)
    8            table lock: PID of the process appending an entry, 0 if none
    9            fold lock: PID of the process folding a row, 0 if none
    10           fold sequence: even when the archive is stable, odd during a fold
    11           row being folded
    12           that row's owner word before the fold
    13           fold stage: 1 while BACKUP holds the archive of the fold in progress
    14           retire sequence: the order in which rows were retired
    15           rows folded so far
    16           retired rows reused (their "all" gauges dropped)
    17           creation time (a double, Unix seconds)

    row cell     what
    0..8         GC figures: 3 generations x (collections, collected, uncollectable)
    16           presence: P = ceil(C / 64) words, bit k set when the process has value k
    16 + P       values: C doubles, entry e's at its first cell (+1: its timestamp)

Owner words and start times sit together, so a reader loads them in one call.
The archive and backup rows have the same layout as a process row.

The protocols every process follows on it are in ``_store``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._errors import ConfigError
from ._table import Merge

__all__ = [
    "ALL_MERGES",
    "CLAIMING",
    "FOLDING",
    "GC_CELLS",
    "PID_MASK",
    "RETIRED",
    "Geometry",
    "RowValues",
    "Snapshot",
    "check_geometry",
    "present",
    "round_up",
]

TAG = "prometheus_shm_v1"
MAGIC = int.from_bytes(b"PROMSHM1", "little")
VERSION = 1

HEADER = 32
H_MAGIC, H_VERSION, H_CAPACITY, H_ROWS, H_HEAP, H_ROW = 0, 1, 2, 3, 4, 5
H_USED_CELLS, H_USED_HEAP, H_TABLE_LOCK, H_FOLD_LOCK = 6, 7, 8, 9
H_SEQ, H_FOLD_ROW, H_FOLD_OWNER, H_FOLD_STAGE = 10, 11, 12, 13
H_RETIRE_SEQ, H_FOLDED, H_DROPPED, H_CREATED = 14, 15, 16, 17

ROW_HEADER = 16
R_GC = 0
GC_CELLS = 9

CLAIMING = 1 << 63
FOLDING = 1 << 62
RETIRED = 1 << 61
PID_MASK = (1 << 61) - 1

ALL_MERGES = frozenset({Merge.ALL, Merge.LIVEALL})

_MAX_CAPACITY = 1 << 24
_MAX_ROWS = 1 << 16
_CELLS_PER_LINE = 8  # rows start on 64-byte boundaries (whole lines on common machines)


def round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit


@dataclass(frozen=True, slots=True)
class Geometry:
    """Where everything is, in cells, for a capacity, a row count and a heap size."""

    capacity: int
    rows: int
    heap_bytes: int
    owners: int = field(init=False)  # owner word of row r at owners + r
    stimes: int = field(init=False)  # its start time at stimes + r
    retired_at: int = field(init=False)  # its retire order at retired_at + r
    words: int = field(init=False)  # presence words per row
    row_cells: int = field(init=False)  # cells per row: header, presence, values, whole lines
    archive: int = field(init=False)
    backup: int = field(init=False)
    first_row: int = field(init=False)
    heap: int = field(init=False)
    total_cells: int = field(init=False)

    def __post_init__(self) -> None:
        words = -(-self.capacity // 64)
        row_cells = round_up(ROW_HEADER + words + self.capacity, _CELLS_PER_LINE)
        archive = round_up(HEADER + 3 * self.rows, _CELLS_PER_LINE)
        first_row = archive + 2 * row_cells
        heap = first_row + self.rows * row_cells
        for name, value in (
            ("owners", HEADER),
            ("stimes", HEADER + self.rows),
            ("retired_at", HEADER + 2 * self.rows),
            ("words", words),
            ("row_cells", row_cells),
            ("archive", archive),
            ("backup", archive + row_cells),
            ("first_row", first_row),
            ("heap", heap),
            ("total_cells", heap + self.heap_bytes // 8),
        ):
            object.__setattr__(self, name, value)

    def row(self, r: int) -> int:
        """First cell of process row ``r``."""
        return self.first_row + r * self.row_cells

    def presence(self, row_start: int) -> int:
        return row_start + ROW_HEADER

    def values(self, row_start: int) -> int:
        return row_start + ROW_HEADER + self.words


def _bounded(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an int, not {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{name} {value} out of range: allowed {low} <= {name} <= {high}")
    return value


def check_geometry(capacity: object, processes: object, heap_bytes: object) -> Geometry:
    """Validate :func:`install`'s sizes; :class:`ConfigError` naming the bad one."""
    return Geometry(
        _bounded("capacity", capacity, 1, _MAX_CAPACITY),
        _bounded("processes", processes, 1, _MAX_ROWS),
        round_up(_bounded("heap_bytes", heap_bytes, 1024, 1 << 34), 8),
    )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one collection needs, read under one stable fold sequence.

    ``sums``/``presence``: over the archive and every counted row (live, or
    dead and not yet folded); ``live_sums``/``live_presence``: live rows
    only; ``rows``: per-row values and presence of every counted or retired
    row, by row index, with its PID and state (only when asked for).
    """

    ncells: int
    sums: list[float]
    presence: list[int]
    live_sums: list[float]
    live_presence: list[int]
    archive: list[float]
    archive_presence: list[int]
    rows: list[RowValues]
    live_pids: list[int]


@dataclass(frozen=True, slots=True)
class RowValues:
    """One process row's values as a snapshot read them."""

    index: int
    pid: int
    live: bool
    retired: bool
    values: list[float]
    presence: list[int]
    gc: list[int]


def present(words: list[int], k: int) -> bool:
    """Whether bit ``k`` is set in a presence bitmap."""
    return bool(words[k >> 6] >> (k & 63) & 1)
