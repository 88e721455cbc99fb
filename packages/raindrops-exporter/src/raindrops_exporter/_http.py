"""The exporter's own HTTP server: ``/metrics``, ``/json``, ``/history`` and the dashboard.

Why the standard library's ``ThreadingHTTPServer``: the exporter answers a
handful of clients (Prometheus, a browser, curl) with small bodies built in
a few milliseconds, so a thread per connection costs nothing that matters,
needs no dependency, and one slow client never holds up another. What it
must do, it does: it runs in its own process (or in gunicorn's arbiter), not
in a worker, so it answers while every worker is busy; every connection has
a timeout (:data:`CLIENT_TIMEOUT`), so idle connections end; clients are
checked against the allow-list before anything is read for them.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import socketserver
import stat
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from raindrops_core import DEFAULT_ALLOW, AccessList
from raindrops_core.adapter import FORWARDING_HEADERS, Peer

from ._dashboard import DASHBOARD
from ._errors import ConfigError
from ._exporter import Exporter
from ._metrics import ExporterCollector, reading_json, render_json

__all__ = [
    "CLIENT_TIMEOUT",
    "DEFAULT_BIND",
    "DEFAULT_PORT",
    "Bind",
    "ExporterServer",
    "parse_bind",
    "refusal",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

#: The default port: in the gap of Prometheus' default port allocations that
#: its wiki marked free (9746-9900), used by no well-known exporter we found.
DEFAULT_PORT = 9873
#: Where the exporter listens unless told: loopback only.
DEFAULT_BIND = f"127.0.0.1:{DEFAULT_PORT}"
#: Seconds a client connection may sit idle before it is closed.
CLIENT_TIMEOUT = 10.0


def refusal(acl: AccessList, client: str | None, headers: Mapping[str, str]) -> str | None:
    """Why a request may not read the exporter, or ``None``: the middleware's very rule.

    ``client`` is the peer's IP address, ``None`` for a Unix-socket peer.
    The request is judged by raindrops-core's :meth:`AccessList.refusal`, as
    the endpoint, the Watcher and the utilization table are: TCP peers must
    be in ``acl``; Unix-socket peers are local, unless the request carries
    forwarding headers (a proxy relayed it); a request relayed by a proxy
    over TCP is refused unless ``acl`` says proxies are trusted.

    Example::

        >>> acl = AccessList.parse(DEFAULT_ALLOW)
        >>> refusal(acl, "127.0.0.1", {}) is None, refusal(acl, "192.0.2.1", {}) is None
        (True, False)
        >>> refusal(acl, None, {"X-Forwarded-For": "192.0.2.1"}) is None
        False
    """
    present = {k.lower() for k in headers}
    forwarded = tuple(h for h in FORWARDING_HEADERS if h in present)
    peer = Peer("" if client is None else client, unix=client is None, forwarded=forwarded)
    return acl.refusal(peer)


class Bind:
    """Where the exporter listens: ``HOST:PORT`` (TCP) or a Unix socket path.

    Example::

        >>> parse_bind("[::1]:9873").address, parse_bind("unix:/run/x.sock").path
        (('::1', 9873), '/run/x.sock')
    """

    __slots__ = ("address", "family", "path")

    def __init__(self, family: int, address: Any, path: str | None = None) -> None:
        self.family = family
        self.address = address
        self.path = path

    def __repr__(self) -> str:
        return f"Bind({self.path or self.address!r})"


def parse_bind(text: str) -> Bind:
    """Parse ``--bind``: ``HOST:PORT``, ``[V6]:PORT``, ``unix:PATH`` or an absolute path.

    Raises :class:`ConfigError` naming the value and what is allowed.
    """
    allowed = "HOST:PORT, [IPV6]:PORT, unix:PATH or /absolute/path"
    if not isinstance(text, str) or not text:
        raise ConfigError(f"bind must be {allowed}, not {text!r}")
    if text.startswith(("unix:", "/")):
        path = text[5:] if text.startswith("unix:") else text
        if not os.path.isabs(path):
            raise ConfigError(f"bind {text!r}: a Unix socket path must be absolute")
        return Bind(socket.AF_UNIX, path, path)
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"bind {text!r} must be {allowed} (port 0-65535)")
    if host.startswith("[") and host.endswith("]"):
        return Bind(socket.AF_INET6, (host[1:-1], int(port_text)))
    if ":" in host or not host:
        raise ConfigError(f"bind {text!r} must be {allowed}; write IPv6 hosts in brackets")
    return Bind(socket.AF_INET, (host, int(port_text)))


class _Handler(BaseHTTPRequestHandler):
    server: _TCPServer | _UnixServer
    protocol_version = "HTTP/1.1"
    timeout = CLIENT_TIMEOUT
    server_version = "raindrops-exporter"
    sys_version = ""
    # One write per answer (headers and body buffered, flushed by the request's end) and
    # no Nagle: a kept-alive scrape must not wait for the client's delayed ACK (40 ms).
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("raindrops_exporter: %s " + format, self.address_string(), *args)

    def address_string(self) -> str:
        client = self._client()
        return "unix" if client is None else client

    def _client(self) -> str | None:
        if self.server.address_family == socket.AF_UNIX:
            return None
        return str(self.client_address[0])

    def _send(
        self, status: int, body: bytes, content_type: str, head: bool = False, **extra: str
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in extra.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _refuse_method(self) -> None:
        self._send(
            405,
            b"method not allowed: GET or HEAD\n",
            "text/plain; charset=utf-8",
            Allow="GET, HEAD",
        )

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method

    def _serve(self, head: bool) -> None:
        app = self.server.app
        reason = refusal(app.acl, self._client(), dict(self.headers.items()))
        if reason is not None:
            self._send(
                403,
                f"403 Forbidden: {reason}\n".encode(),
                "text/plain; charset=utf-8",
                head,
            )
            return
        url = urlsplit(self.path)
        try:
            route = app.routes.get(url.path)
            if route is None:
                self._send(
                    404,
                    b"not found: try /, /metrics, /json or /history\n",
                    "text/plain; charset=utf-8",
                    head,
                )
                return
            status, body, ctype, extra = route(self, url.query)
        except Exception:
            logger.exception("raindrops_exporter: %s failed", url.path)
            self._send(
                500, b"internal error: see the exporter's log\n", "text/plain; charset=utf-8", head
            )
            return
        self._send(status, body, ctype, head, **extra)


class _UnixHandler(_Handler):
    disable_nagle_algorithm = False  # TCP_NODELAY is TCP's: a Unix socket refuses it


class _App:
    """What the handlers share: the exporter, its registry, the access list, the routes."""

    def __init__(self, exporter: Exporter, acl: AccessList, per_worker: bool) -> None:
        self.exporter = exporter
        self.acl = acl
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ExporterCollector(exporter, per_worker=per_worker))
        self.registry.register(ProcessCollector(namespace="raindrops_exporter", registry=None))
        Route = Callable[[_Handler, str], tuple[int, bytes, str, dict[str, str]]]
        self.routes: dict[str, Route] = {
            "/": self.dashboard,
            "/metrics": self.metrics,
            "/json": self.json,
            "/history": self.history,
        }

    def dashboard(self, handler: _Handler, query: str) -> tuple[int, bytes, str, dict[str, str]]:
        policy = (
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
            "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'"
        )
        return 200, DASHBOARD, "text/html; charset=utf-8", {"Content_Security_Policy": policy}

    def metrics(self, handler: _Handler, query: str) -> tuple[int, bytes, str, dict[str, str]]:
        encoder, ctype = choose_encoder(handler.headers.get("Accept", ""))
        return 200, encoder(self.registry), ctype, {}

    def json(self, handler: _Handler, query: str) -> tuple[int, bytes, str, dict[str, str]]:
        return 200, render_json(reading_json(self.exporter.read())), "application/json", {}

    def history(self, handler: _Handler, query: str) -> tuple[int, bytes, str, dict[str, str]]:
        after_text = parse_qs(query).get("after", ["0"])[-1]
        if not after_text.isdigit() or len(after_text) > 18:
            body = b"bad request: after must be a sample number (digits)\n"
            return 400, body, "text/plain; charset=utf-8", {}
        doc = {
            "interval": self.exporter.interval,
            "history_seconds": self.exporter.history_seconds,
            "samples": self.exporter.history(int(after_text)),
        }
        return 200, render_json(doc), "application/json", {}


class _Tracking:
    """Keeps the open client connections, so a forked child can close its copies."""

    app: _App
    open_requests: set[socket.socket]

    def process_request(self, request: Any, client_address: Any) -> None:
        self.open_requests.add(request)
        super().process_request(request, client_address)  # type: ignore[misc]

    def shutdown_request(self, request: Any) -> None:
        self.open_requests.discard(request)
        super().shutdown_request(request)  # type: ignore[misc]


class _TCPServer(_Tracking, ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _TCP6Server(_TCPServer):
    address_family = socket.AF_INET6


class _UnixServer(_Tracking, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def server_bind(self) -> None:
        path = str(self.server_address)
        _remove_stale_socket(path)
        super().server_bind()


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file nobody listens on any more (a previous exporter's)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"bind path {path!r} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        return
    except OSError:
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"another process listens on {path!r}")


class ExporterServer:
    """The exporter's HTTP server, on its own address, in threads of this process.

    Example::

        server = ExporterServer(Exporter(), "127.0.0.1:9873")
        server.start()     # the sampler and the HTTP server, in daemon threads
        print(server.url)  # http://127.0.0.1:9873/
        server.stop()
    """

    def __init__(
        self,
        exporter: Exporter,
        bind: str = DEFAULT_BIND,
        *,
        allow: tuple[str, ...] | list[str] = DEFAULT_ALLOW,
        per_worker: bool = False,
    ) -> None:
        self.exporter = exporter
        self.bind = parse_bind(bind)
        self.acl = AccessList.parse(list(allow))
        self.app = _App(exporter, self.acl, per_worker)
        httpd: _TCPServer | _UnixServer
        if self.bind.family == socket.AF_UNIX:
            httpd = _UnixServer(self.bind.address, _UnixHandler)
        else:
            cls = _TCP6Server if self.bind.family == socket.AF_INET6 else _TCPServer
            httpd = cls(self.bind.address, _Handler)
        httpd.app = self.app
        httpd.open_requests = set()
        self.httpd = httpd
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<ExporterServer {self.url}>"

    @property
    def url(self) -> str:
        """Where to point a browser or Prometheus (``unix:PATH`` for a Unix socket)."""
        if self.bind.path is not None:
            return f"unix:{self.bind.path}"
        address: Any = self.httpd.server_address
        host, port = str(address[0]), int(address[1])
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/"

    def fileno(self) -> int:
        """The listening socket's descriptor."""
        return self.httpd.fileno()

    def start(self) -> None:
        """Start the sampler, then serve in a daemon thread."""
        self.exporter.start()
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="raindrops-exporter-http", daemon=True
        )
        self._thread.start()

    def serve_forever(self) -> None:
        """Start the sampler, then serve in this thread until :meth:`stop` (or Ctrl-C)."""
        self.exporter.start()
        self.httpd.serve_forever()

    def stop(self) -> None:
        """Stop serving and sampling; close the socket (and remove a Unix socket's file)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self.httpd.shutdown()
            thread.join(timeout=5)
        self.httpd.server_close()
        self.exporter.stop()
        if self.bind.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.bind.path)

    def close_in_child(self) -> None:
        """In a forked child: close the inherited sockets (listening, clients'), nothing else."""
        for sock in [self.httpd.socket, *list(self.httpd.open_requests)]:
            with contextlib.suppress(OSError):
                sock.close()
