"""Watcher and LastDataRecv apps for the integration tests, configured by environment.

``WATCH_LISTENERS`` (comma-separated names), ``WATCH_DELAY`` (seconds) and
``WATCH_TAIL_MAX`` (seconds) configure both Watchers; ``LDR_SEGMENT`` names
LastDataRecv's shared histogram (default: derived from the inherited listener).
"""

from __future__ import annotations

import os

from hello import asgi as hello_asgi
from hello import wsgi as hello_wsgi
from raindrops_asgi.watcher import LastDataRecv as AsgiLastDataRecv
from raindrops_asgi.watcher import Watcher as AsgiWatcher
from raindrops_wsgi.watcher import LastDataRecv as WsgiLastDataRecv
from raindrops_wsgi.watcher import Watcher as WsgiWatcher

_LISTENERS = [n for n in os.environ.get("WATCH_LISTENERS", "").split(",") if n] or None
_DELAY = float(os.environ.get("WATCH_DELAY", "0.1"))
_TAIL_MAX = float(os.environ.get("WATCH_TAIL_MAX", "30"))
_SEGMENT = os.environ.get("LDR_SEGMENT") or None

wsgi_watcher = WsgiWatcher(_LISTENERS, delay=_DELAY, tail_max_seconds=_TAIL_MAX)
asgi_watcher = AsgiWatcher(_LISTENERS, delay=_DELAY, tail_max_seconds=_TAIL_MAX)
wsgi_ldr = WsgiLastDataRecv(hello_wsgi, segment=_SEGMENT)
asgi_ldr = AsgiLastDataRecv(hello_asgi, segment=_SEGMENT)
