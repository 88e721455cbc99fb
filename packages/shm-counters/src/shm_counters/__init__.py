"""Lock-free atomic counters in shared memory.

``Counters`` (one unsigned 64-bit counter per cache line), ``counter_struct``
(named counters), ``Scoreboard`` (one row of counters per worker process,
dead workers' rows drop out), ``Histogram`` (lock-free shared histogram)
and ``BusyTimer`` (time with work in flight, one C call per step),
all in anonymous shared memory inherited across fork or in a named segment
file that spawned processes attach to. ``server_segment`` finds the path
every worker of one server shares (forked or spawned), with no
configuration.
"""

from __future__ import annotations

from ._busy import BusyTimer, monotonic_ns
from ._cells import Cells
from ._counters import Counters
from ._errors import (
    BoundsError,
    CapacityError,
    ClosedError,
    CounterIndexError,
    CounterSizeError,
    CounterValueError,
    FieldNameError,
    ScoreboardFullError,
    SegmentError,
    ShmCountersError,
)
from ._histogram import Histogram, HistogramSnapshot
from ._liveness import process_alive, process_start_time
from ._native import CACHE_LINE_SIZE, MAX, PAGE_SIZE
from ._scoreboard import RowInfo, Scoreboard, ScoreboardRow
from ._segment import unlink
from ._server import (
    SERVER_DIR_ENV,
    SWEEP_GRACE,
    InheritedListener,
    ServerSegment,
    discover_listeners,
    listening_inodes,
    server_directory,
    server_segment,
    socket_name,
    sweep_server_segments,
)
from ._struct import CounterStruct, counter_struct

__version__ = "0.1.0"

__all__ = [
    "CACHE_LINE_SIZE",
    "MAX",
    "PAGE_SIZE",
    "SERVER_DIR_ENV",
    "SWEEP_GRACE",
    "BoundsError",
    "BusyTimer",
    "CapacityError",
    "Cells",
    "ClosedError",
    "CounterIndexError",
    "CounterSizeError",
    "CounterStruct",
    "CounterValueError",
    "Counters",
    "FieldNameError",
    "Histogram",
    "HistogramSnapshot",
    "InheritedListener",
    "RowInfo",
    "Scoreboard",
    "ScoreboardFullError",
    "ScoreboardRow",
    "SegmentError",
    "ServerSegment",
    "ShmCountersError",
    "__version__",
    "counter_struct",
    "discover_listeners",
    "listening_inodes",
    "monotonic_ns",
    "process_alive",
    "process_start_time",
    "server_directory",
    "server_segment",
    "socket_name",
    "sweep_server_segments",
    "unlink",
]
