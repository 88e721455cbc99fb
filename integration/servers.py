"""Start real servers (gunicorn, uvicorn, hypercorn) on sockets the test bound itself.

The test binds and listens on a loopback TCP port (port 0) or a Unix path,
hands the listening descriptor to the server by number, waits until a worker
answers HTTP, and stops the whole process group in ``finally``.  Nothing is
ever killed by name.

Example::

    with bind_tcp("127.0.0.1") as sock, launch("gunicorn-sync", "wsgi_app:app", sock) as srv:
        status, headers, body = srv.get("/_raindrops")

App modules live in ``integration/apps/`` (put on ``PYTHONPATH`` for the server)
or anywhere named by ``app_dir``.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

APPS_DIR = Path(__file__).resolve().parent / "apps"

#: Server kinds a test can ask for, and what each one is.
KINDS: Mapping[str, str] = {
    "gunicorn-sync": "gunicorn, sync workers (forked, one request at a time each)",
    "gunicorn-gthread": "gunicorn, gthread workers (forked, threads inside)",
    "gunicorn-uvicorn": "gunicorn with uvicorn-worker's UvicornWorker (forked, ASGI)",
    "uvicorn": "uvicorn --workers N (spawned workers, ASGI)",
    "hypercorn": "hypercorn --workers N (spawned workers, ASGI)",
}

ASGI_KINDS = frozenset({"gunicorn-uvicorn", "uvicorn", "hypercorn"})


class ServerStartError(RuntimeError):
    """The server did not answer HTTP before the deadline (its output is attached)."""


@contextlib.contextmanager
def bind_tcp(host: str = "127.0.0.1", backlog: int = 1024) -> Iterator[socket.socket]:
    """Bind and listen on ``host`` port 0; the descriptor is inheritable."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        sock.listen(backlog)
        sock.set_inheritable(True)
        yield sock
    finally:
        sock.close()


@contextlib.contextmanager
def bind_unix(path: str | None = None, backlog: int = 1024) -> Iterator[socket.socket]:
    """Bind and listen on a Unix stream socket (a fresh temp path by default)."""
    with contextlib.ExitStack() as stack:
        if path is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="rd-"))
            path = os.path.join(tmp, "server.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stack.callback(sock.close)
        sock.bind(path)
        sock.listen(backlog)
        sock.set_inheritable(True)
        yield sock


def listener_name(sock: socket.socket) -> str:
    """The canonical listener name of a bound socket: ``127.0.0.1:P``, ``[::1]:P``, a path."""
    if sock.family == socket.AF_UNIX:
        name = sock.getsockname()
        return name if isinstance(name, str) else name.decode()
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"


def server_argv(
    kind: str, app: str, fd: int, *, workers: int, threads: int, extra: Sequence[str]
) -> list[str]:
    """The command line that starts ``kind`` serving ``app`` on inherited ``fd``."""
    py = sys.executable
    if kind.startswith("gunicorn"):
        argv = [py, "-m", "gunicorn", "--bind", f"fd://{fd}", "--workers", str(workers)]
        argv += ["--graceful-timeout", "2", "--keep-alive", "2"]
        if kind == "gunicorn-gthread":
            argv += ["--worker-class", "gthread", "--threads", str(threads)]
        elif kind == "gunicorn-uvicorn":
            argv += ["--worker-class", "uvicorn_worker.UvicornWorker"]
        elif kind != "gunicorn-sync":
            raise ValueError(f"unknown server kind {kind!r}; known: {sorted(KINDS)}")
        return [*argv, *extra, app]
    if kind == "uvicorn":
        argv = [py, "-m", "uvicorn", "--fd", str(fd), "--workers", str(workers)]
        return [*argv, "--no-access-log", "--timeout-graceful-shutdown", "2", *extra, app]
    if kind == "hypercorn":
        argv = [py, "-m", "hypercorn", "--bind", f"fd://{fd}", "--workers", str(workers)]
        return [*argv, *extra, app]
    raise ValueError(f"unknown server kind {kind!r}; known: {sorted(KINDS)}")


@dataclass
class Server:
    """A running server: its process, its listener, and a small HTTP client."""

    kind: str
    proc: subprocess.Popen[bytes]
    sock: socket.socket
    log_path: Path
    timeout: float = 10.0
    _closed: bool = field(default=False, repr=False)

    @property
    def name(self) -> str:
        """The listener name, as raindrops spells it."""
        return listener_name(self.sock)

    def connect(self, timeout: float | None = None) -> socket.socket:
        """A new client connection to the server's listener."""
        family = self.sock.family
        conn = socket.socket(family, socket.SOCK_STREAM)
        conn.settimeout(self.timeout if timeout is None else timeout)
        conn.connect(self.sock.getsockname())
        return conn

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        timeout: float | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """One HTTP/1.1 request on a fresh connection; returns status, headers, body."""
        conn = _HTTPConnection(self, timeout if timeout is not None else self.timeout)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            resp = conn.getresponse()
            data = resp.read()
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
            return resp.status, hdrs, data
        finally:
            conn.close()

    def get(self, path: str, **kw: object) -> tuple[int, dict[str, str], bytes]:
        """``request("GET", path)``."""
        return self.request("GET", path, **kw)  # type: ignore[arg-type]

    def worker_pids(self) -> list[int]:
        """PIDs of the server's worker processes (children of the master)."""
        return _children(self.proc.pid)

    def log(self) -> str:
        """Everything the server printed so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL it if it lingers."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        # Workers of spawned servers may outlive the master by a moment.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


class _HTTPConnection(http.client.HTTPConnection):
    """http.client over the server's own listener (TCP or Unix)."""

    def __init__(self, server: Server, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._server = server

    def connect(self) -> None:
        self.sock = self._server.connect(self.timeout)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return sorted(int(p) for p in path.read_text().split())
    except OSError:
        return []


@contextlib.contextmanager
def launch(
    kind: str,
    app: str,
    sock: socket.socket,
    *,
    workers: int = 2,
    threads: int = 4,
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    app_dir: Path | str = APPS_DIR,
    ready_path: str = "/",
    startup_timeout: float = 30.0,
    wait_workers: bool = True,
    wrapper: Sequence[str] = (),
) -> Iterator[Server]:
    """Run ``kind`` serving ``app`` (``module:attr``) on ``sock`` until the block ends.

    Waits until a request to ``ready_path`` gets any HTTP answer and, with
    ``wait_workers``, until ``workers`` worker processes exist.  ``wrapper``
    is a command that execs the rest of the command line (for example
    ``["setpriv", "--bounding-set=-dac_override"]``): it must ``exec``, not
    fork, so that the process the test started is still the server's master.
    """
    fd = sock.fileno()
    argv = [*wrapper, *server_argv(kind, app, fd, workers=workers, threads=threads, extra=extra)]
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(app_dir), *filter(None, [full_env.get("PYTHONPATH")])]
    )
    full_env["PYTHONUNBUFFERED"] = "1"
    full_env.update(env or {})
    with tempfile.TemporaryDirectory(prefix="rd-log-") as logdir:
        log_path = Path(logdir) / f"{kind}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                argv,
                pass_fds=(fd,),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=str(app_dir),
                start_new_session=True,
            )
        server = Server(kind, proc, sock, log_path)
        try:
            _wait_ready(server, ready_path, workers if wait_workers else 0, startup_timeout)
            yield server
        finally:
            server.stop()


def _wait_ready(server: Server, path: str, workers: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise ServerStartError(
                f"{server.kind} exited with {server.proc.returncode}:\n{server.log()}"
            )
        try:
            server.request("GET", path, timeout=2.0)
        except (OSError, http.client.HTTPException) as exc:
            last = exc
            time.sleep(0.05)
            continue
        if len(server.worker_pids()) >= workers:
            return
        time.sleep(0.05)
    raise ServerStartError(
        f"{server.kind} did not become ready in {timeout}s ({last!r}):\n{server.log()}"
    )


def wait_for_value(
    read: Callable[[], object], expected: object, timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Poll ``read()`` until it equals ``expected``; fail with its last value at ``timeout``."""
    deadline = time.monotonic() + timeout
    value: object = None
    while True:
        value = read()
        if value == expected or time.monotonic() >= deadline:
            break
        time.sleep(interval)
    if value != expected:
        raise TimeoutError(f"expected {expected!r} within {timeout}s, last read {value!r}")


def wait_until(predicate: object, timeout: float = 10.0, interval: float = 0.02) -> None:
    """Poll ``predicate()`` until it is true; fail with its last value at ``timeout``."""
    deadline = time.monotonic() + timeout
    value: object = None
    while time.monotonic() < deadline:
        value = predicate()  # type: ignore[operator]
        if value:
            return
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout}s (last value {value!r})")
