"""prometheus_client's metrics shared by every worker, in shared memory.

``install()`` once per server, before metrics are created; then
prometheus_client's own ``Counter``, ``Gauge``, ``Histogram``, ``Summary``,
``Info`` and ``Enum`` keep their values in one shared segment (per-process
rows, dead processes folded into an archive) instead of per-PID files, and
``Collector(registry)`` yields them merged exactly as
``MultiProcessCollector`` would.
"""

from __future__ import annotations

from ._collector import Collector, mark_process_dead
from ._errors import (
    ConfigError,
    LabelValueTooLongError,
    NotInstalledError,
    ProcessTableFullError,
    PrometheusShmError,
    SegmentLayoutError,
    SeriesTableFullError,
    UnsafeSegmentError,
)
from ._install import (
    ANONYMOUS,
    Installation,
    SegmentInfo,
    install,
    segment_info,
    uninstall,
)
from ._runtime import installed
from ._table import MAX_KEY_BYTES, MAX_LABEL_VALUE_BYTES

__version__ = "0.1.0"

__all__ = [
    "ANONYMOUS",
    "MAX_KEY_BYTES",
    "MAX_LABEL_VALUE_BYTES",
    "Collector",
    "ConfigError",
    "Installation",
    "LabelValueTooLongError",
    "NotInstalledError",
    "ProcessTableFullError",
    "PrometheusShmError",
    "SegmentInfo",
    "SegmentLayoutError",
    "SeriesTableFullError",
    "UnsafeSegmentError",
    "__version__",
    "install",
    "installed",
    "mark_process_dead",
    "segment_info",
    "uninstall",
]
