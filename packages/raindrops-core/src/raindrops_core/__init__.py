"""raindrops-core: the framework-neutral core of the raindrops stats endpoint.

The shared ``calling``/``writing`` gauges (a shm-counters scoreboard, one row
per worker), listener discovery, the :class:`Snapshot` and its renderers:
the Ruby original's plain text, JSON and Prometheus.  The WSGI and ASGI
middleware (raindrops-wsgi, raindrops-asgi) are thin adapters over it.

Example::

    from raindrops_core import RaindropsState, render_text

    state = RaindropsState(listeners=["127.0.0.1:8080"])
    print(render_text(state.snapshot()).decode())
"""

from __future__ import annotations

from shm_counters import InheritedListener, discover_listeners, socket_name

from ._access import (
    ALLOW_ALL,
    DEFAULT_ALLOW,
    FORWARDING_HEADERS,
    AccessList,
    Peer,
    listens_on_unix,
)
from ._errors import ConfigError, FormatError, RaindropsError, TailStreamsFullError
from ._prometheus import RaindropsCollector, render_prometheus
from ._render import render_json, render_text
from ._snapshot import CONTENT_TYPES, Format, Snapshot, negotiate
from ._state import (
    ANONYMOUS,
    DEFAULT_PATH,
    DEFAULT_SLOTS,
    FIELDS,
    SEGMENT_ENV,
    SEGMENT_NAME,
    UNAVAILABLE_HEADER,
    UNAVAILABLE_PARTS,
    RaindropsState,
    Reply,
    Steps,
    app_path,
    unavailable_header,
)

__version__ = "0.1.0"

__all__ = [
    "ALLOW_ALL",
    "ANONYMOUS",
    "CONTENT_TYPES",
    "DEFAULT_ALLOW",
    "DEFAULT_PATH",
    "DEFAULT_SLOTS",
    "FIELDS",
    "FORWARDING_HEADERS",
    "SEGMENT_ENV",
    "SEGMENT_NAME",
    "UNAVAILABLE_HEADER",
    "UNAVAILABLE_PARTS",
    "AccessList",
    "ConfigError",
    "Format",
    "FormatError",
    "InheritedListener",
    "Peer",
    "RaindropsCollector",
    "RaindropsError",
    "RaindropsState",
    "Reply",
    "Snapshot",
    "Steps",
    "TailStreamsFullError",
    "app_path",
    "discover_listeners",
    "listens_on_unix",
    "negotiate",
    "render_json",
    "render_prometheus",
    "render_text",
    "socket_name",
    "unavailable_header",
]
