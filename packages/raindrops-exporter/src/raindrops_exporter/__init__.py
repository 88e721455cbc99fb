"""raindrops-exporter: every server's figures, out of band.

A standalone process (or a thread of gunicorn's arbiter) that finds every
gunicorn/uvicorn/hypercorn server of this user through its shared segments,
reads them and the kernel directly, and serves ``/metrics`` (Prometheus,
OpenMetrics), ``/json`` and a live dashboard on an address of its own: it
answers while every worker is busy. ``raindrops-top`` shows the same in a
terminal.

Example::

    from raindrops_exporter import Exporter, ExporterServer

    server = ExporterServer(Exporter(), "127.0.0.1:9873")
    server.serve_forever()
"""

from __future__ import annotations

import logging

from ._discovery import ListeningSocket, label_of, listening_sockets, socket_inodes
from ._errors import ConfigError, ExporterError
from ._exporter import (
    DEFAULT_HISTORY,
    DEFAULT_INTERVAL,
    Exporter,
    LatencyReading,
    Reading,
    ServerReading,
)
from ._http import (
    CLIENT_TIMEOUT,
    DEFAULT_BIND,
    DEFAULT_PORT,
    ExporterServer,
    parse_bind,
    refusal,
)
from ._metrics import ExporterCollector, reading_families, reading_json, render_json

__version__ = "0.1.0"

__all__ = [
    "CLIENT_TIMEOUT",
    "DEFAULT_BIND",
    "DEFAULT_HISTORY",
    "DEFAULT_INTERVAL",
    "DEFAULT_PORT",
    "ConfigError",
    "Exporter",
    "ExporterCollector",
    "ExporterError",
    "ExporterServer",
    "LatencyReading",
    "ListeningSocket",
    "Reading",
    "ServerReading",
    "__version__",
    "label_of",
    "listening_sockets",
    "parse_bind",
    "reading_families",
    "reading_json",
    "refusal",
    "render_json",
    "socket_inodes",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
