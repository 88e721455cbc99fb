"""raindrops-wsgi: the raindrops stats middleware for WSGI servers (gunicorn, ...).

Example::

    from raindrops_wsgi import RaindropsMiddleware

    app = RaindropsMiddleware(app)
    # curl http://127.0.0.1:8000/_raindrops
    # calling: 2
    # writing: 1
    # 127.0.0.1:8000 active: 3
    # 127.0.0.1:8000 queued: 0
"""

from __future__ import annotations

from raindrops_core import ALLOW_ALL, RaindropsCollector, RaindropsState, Snapshot

from ._errors import ConfigError, FormatError, RaindropsError
from ._middleware import RaindropsMiddleware
from .watcher import LastDataRecv, Watcher, set_defer_accept

__version__ = "0.1.0"

__all__ = [
    "ALLOW_ALL",
    "ConfigError",
    "FormatError",
    "LastDataRecv",
    "RaindropsCollector",
    "RaindropsError",
    "RaindropsMiddleware",
    "RaindropsState",
    "Snapshot",
    "Watcher",
    "set_defer_accept",
]
