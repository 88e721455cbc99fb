"""raindrops-core: the framework-neutral core of the raindrops stats endpoint.

The shared ``calling``/``writing`` gauges (a shm-counters scoreboard, one row
per worker), one :class:`Snapshot` of them and of the listeners' queues, and
its renderers: the Ruby original's plain text, JSON and Prometheus.  The WSGI
and ASGI middleware (raindrops-wsgi, raindrops-asgi) are thin adapters over
it; what adapter authors need beyond this page is in
:mod:`raindrops_core.adapter`, the Watcher's engines in
:mod:`raindrops_core.watcher`.

Example::

    from raindrops_core import RaindropsState, render_text

    state = RaindropsState(listeners=["127.0.0.1:8080"])
    print(render_text(state.snapshot()).decode())
"""

from __future__ import annotations

from ._access import ALLOW_ALL, DEFAULT_ALLOW, AccessList
from ._errors import ConfigError, FormatError, RaindropsError, TailStreamsFullError
from ._prometheus import RaindropsCollector, SnapshotSource, render_prometheus
from ._render import render_json, render_text
from ._snapshot import CONTENT_TYPES, Format, Snapshot, negotiate
from ._state import DEFAULT_PATH, DEFAULT_SLOTS, SEGMENT_ENV, RaindropsState
from ._validate import ANONYMOUS

__version__ = "0.1.0"

__all__ = [
    "ALLOW_ALL",
    "ANONYMOUS",
    "CONTENT_TYPES",
    "DEFAULT_ALLOW",
    "DEFAULT_PATH",
    "DEFAULT_SLOTS",
    "SEGMENT_ENV",
    "AccessList",
    "ConfigError",
    "Format",
    "FormatError",
    "RaindropsCollector",
    "RaindropsError",
    "RaindropsState",
    "Snapshot",
    "SnapshotSource",
    "TailStreamsFullError",
    "negotiate",
    "render_json",
    "render_prometheus",
    "render_text",
]
