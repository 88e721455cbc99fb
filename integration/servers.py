"""Start real servers (gunicorn, uvicorn, hypercorn) the way their users do.

The server's own command line binds: ``-b 127.0.0.1:PORT``, ``--host ::1
--port PORT``, ``--uds PATH``, ``-b unix:PATH``, several ``-b``; a free port
is picked just before the start and the start is retried on a fresh one if
something took it meanwhile (``Address already in use``). Two more rows
start from descriptors, as users do too: ``fd://N``/``--fd N`` with a socket
the test bound (what a supervisor such as circus does), and systemd socket
activation (``LISTEN_FDS``, through ``activate.py``). The test waits until a
worker answers HTTP, and stops the whole process group in ``finally``.
Nothing is ever killed by name.

Example::

    with launch("uvicorn", "raindrops_app:asgi", tcp("127.0.0.1"), workers=4) as srv:
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
from dataclasses import dataclass, field, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
APPS_DIR = HERE / "apps"
ACTIVATE = HERE / "activate.py"

#: Server kinds a test can ask for, and what each one is.
KINDS: Mapping[str, str] = {
    "gunicorn-sync": "gunicorn, sync workers (forked, one request at a time each)",
    "gunicorn-gthread": "gunicorn, gthread workers (forked, threads inside)",
    "gunicorn-uvicorn": "gunicorn with uvicorn-worker's UvicornWorker (forked, ASGI)",
    "uvicorn": "uvicorn --workers N (spawned workers, ASGI)",
    "hypercorn": "hypercorn --workers N (spawned workers, ASGI)",
}

ASGI_KINDS = frozenset({"gunicorn-uvicorn", "uvicorn", "hypercorn"})

#: How many times a start is tried on a fresh port when the port was taken.
START_ATTEMPTS = 5


class ServerStartError(RuntimeError):
    """The server did not answer HTTP before the deadline (its output is attached)."""


@dataclass(frozen=True)
class Bind:
    """One address a server listens on, as its user gives it.

    ``how`` is ``"tcp"`` (``host``: ``127.0.0.1``, ``::1``, ``0.0.0.0``,
    ``::``; ``port`` 0 until picked), ``"unix"`` (``path``), ``"fd"`` (a
    socket the test bound and listens on, handed over by number) or
    ``"systemd"`` (``activate.py`` listens on ``host``:``port``, as systemd
    does, and the server gets fd 3 and ``LISTEN_FDS``).
    """

    how: str
    host: str = ""
    port: int = 0
    path: str = ""
    sock: socket.socket | None = field(default=None, compare=False)

    @property
    def family(self) -> int:
        if self.how == "unix":
            return socket.AF_UNIX
        if self.how == "fd" and self.sock is not None:
            return int(self.sock.family)
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    @property
    def address(self) -> object:
        """Where a client connects: the path, or a loopback address for a wildcard."""
        if self.how == "unix":
            return self.path
        if self.how == "fd" and self.sock is not None:
            name = self.sock.getsockname()
            if self.sock.family == socket.AF_UNIX:
                return name
            host, port = name[:2]
            return (_loopback(host), port)
        return (_loopback(self.host), self.port)

    @property
    def name(self) -> str:
        """The listener name as raindrops spells it: ``127.0.0.1:P``, ``[::]:P``, a path."""
        if self.how == "fd" and self.sock is not None:
            return listener_name(self.sock)
        if self.how == "unix":
            return self.path
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def flag(self) -> str:
        """This address in gunicorn's and hypercorn's ``-b`` spelling."""
        if self.how == "unix":
            return f"unix:{self.path}"
        if self.how == "fd":
            assert self.sock is not None
            return f"fd://{self.sock.fileno()}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _loopback(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def tcp(host: str = "127.0.0.1", port: int = 0) -> Bind:
    """The server binds ``host`` on ``port`` (``--port``, ``-b host:port``); 0: a free one.

    A port given here is kept (a test that must name it before the start);
    0 is picked at the start, and picked again if the start finds it taken.
    """
    return Bind("tcp", host=host, port=port)


def unix(path: str | os.PathLike[str]) -> Bind:
    """The server binds a Unix socket at ``path`` (``--uds``, ``-b unix:``)."""
    return Bind("unix", path=os.fspath(path))


def fd(sock: socket.socket) -> Bind:
    """The server serves a listening socket the test bound (``fd://N``, ``--fd N``)."""
    return Bind("fd", sock=sock)


def systemd(host: str = "127.0.0.1") -> Bind:
    """systemd socket activation: ``activate.py`` listens, the server gets ``LISTEN_FDS``."""
    return Bind("systemd", host=host)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the kernel's pick for port 0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def bind_tcp(host: str = "127.0.0.1", backlog: int = 1024) -> Iterator[socket.socket]:
    """Bind and listen on ``host`` port 0; the descriptor is inheritable (for :func:`fd`)."""
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


def _uvicorn_bind(bind: Bind) -> list[str]:
    if bind.how == "unix":
        return ["--uds", bind.path]
    if bind.how == "fd":
        assert bind.sock is not None
        return ["--fd", str(bind.sock.fileno())]
    if bind.how == "tcp":
        return ["--host", bind.host, "--port", str(bind.port)]
    raise ValueError(f"uvicorn cannot take {bind.how!r} binds")


def server_argv(
    kind: str,
    app: str,
    binds: Sequence[Bind],
    *,
    workers: int,
    threads: int,
    extra: Sequence[str],
) -> list[str]:
    """The command line that starts ``kind`` serving ``app`` on ``binds`` (ports picked)."""
    py = sys.executable
    activated = [b for b in binds if b.how == "systemd"]
    if activated and (len(activated) != len(binds) or not kind.startswith("gunicorn")):
        raise ValueError("socket activation is a gunicorn row, with every bind activated")
    if kind.startswith("gunicorn"):
        argv = [py, "-m", "gunicorn", "--workers", str(workers)]
        for bind in binds:
            if bind.how != "systemd":
                argv += ["--bind", bind.flag]
        argv += ["--graceful-timeout", "2", "--keep-alive", "2"]
        if kind == "gunicorn-gthread":
            argv += ["--worker-class", "gthread", "--threads", str(threads)]
        elif kind == "gunicorn-uvicorn":
            argv += ["--worker-class", "uvicorn_worker.UvicornWorker"]
        elif kind != "gunicorn-sync":
            raise ValueError(f"unknown server kind {kind!r}; known: {sorted(KINDS)}")
        argv = [*argv, *extra, app]
        if activated:
            listen = [f"--listen={b.flag}" for b in activated]
            argv = [py, str(ACTIVATE), *listen, "--", *argv]
        return argv
    if kind == "uvicorn":
        if len(binds) != 1:
            raise ValueError("uvicorn listens on one address")
        argv = [py, "-m", "uvicorn", *_uvicorn_bind(binds[0]), "--workers", str(workers)]
        return [*argv, "--no-access-log", "--timeout-graceful-shutdown", "2", *extra, app]
    if kind == "hypercorn":
        argv = [py, "-m", "hypercorn", "--workers", str(workers)]
        for bind in binds:
            argv += ["--bind", bind.flag]
        return [*argv, *extra, app]
    raise ValueError(f"unknown server kind {kind!r}; known: {sorted(KINDS)}")


@dataclass
class Server:
    """A running server: its process, the addresses it listens on, and a small HTTP client."""

    kind: str
    proc: subprocess.Popen[bytes]
    binds: tuple[Bind, ...]
    log_path: Path
    timeout: float = 10.0
    _closed: bool = field(default=False, repr=False)

    @property
    def bind(self) -> Bind:
        """The first address (the one requests go to)."""
        return self.binds[0]

    @property
    def name(self) -> str:
        """The first listener's name, as raindrops spells it."""
        return self.bind.name

    @property
    def names(self) -> list[str]:
        """Every listener's name, in the order given."""
        return [b.name for b in self.binds]

    @property
    def family(self) -> int:
        return self.bind.family

    @property
    def address(self) -> object:
        """What a client connects to (``(host, port)`` or a path)."""
        return self.bind.address

    def connect(self, timeout: float | None = None, bind: Bind | None = None) -> socket.socket:
        """A new client connection to the server's (first, or ``bind``'s) listener."""
        target = bind or self.bind
        conn = socket.socket(target.family, socket.SOCK_STREAM)
        conn.settimeout(self.timeout if timeout is None else timeout)
        try:
            conn.connect(target.address)  # type: ignore[arg-type]
        except BaseException:
            conn.close()
            raise
        return conn

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        timeout: float | None = None,
        bind: Bind | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """One HTTP/1.1 request on a fresh connection; returns status, headers, body."""
        conn = _HTTPConnection(self, timeout if timeout is not None else self.timeout, bind)
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

    def __init__(self, server: Server, timeout: float, bind: Bind | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._server = server
        self._bind = bind

    def connect(self) -> None:
        self.sock = self._server.connect(self.timeout, self._bind)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return sorted(int(p) for p in path.read_text().split())
    except OSError:
        return []


def _pick_ports(binds: Sequence[Bind]) -> tuple[Bind, ...]:
    """Each TCP/systemd bind without a port given, with one free right now."""
    return tuple(
        replace(b, port=free_port(b.host)) if b.how in ("tcp", "systemd") and not b.port else b
        for b in binds
    )


def _port_taken(log: str) -> bool:
    return "Address already in use" in log or "[Errno 98]" in log


@contextlib.contextmanager
def launch(
    kind: str,
    app: str,
    *binds: Bind | socket.socket,
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
    """Run ``kind`` serving ``app`` (``module:attr``) on ``binds`` until the block ends.

    ``binds`` are :class:`Bind` (``tcp()``, ``unix()``, ``fd()``, ``systemd()``;
    default ``tcp("127.0.0.1")``); a plain socket means ``fd(sock)``. Waits
    until a request to ``ready_path`` gets any HTTP answer and, with
    ``wait_workers``, until ``workers`` worker processes exist. A start that
    fails because a picked port was taken meanwhile is retried on fresh
    ports. ``wrapper`` is a command that execs the rest of the command line
    (for example ``["setpriv", "--bounding-set=-dac_override"]``): it must
    ``exec``, not fork, so that the process the test started is still the
    server's master.
    """
    wanted = tuple(fd(b) if isinstance(b, socket.socket) else b for b in binds) or (tcp(),)
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(app_dir), *filter(None, [full_env.get("PYTHONPATH")])]
    )
    full_env["PYTHONUNBUFFERED"] = "1"
    full_env.update(env or {})
    pass_fds = tuple(b.sock.fileno() for b in wanted if b.how == "fd" and b.sock is not None)
    with tempfile.TemporaryDirectory(prefix="rd-log-") as logdir:
        for attempt in range(1, START_ATTEMPTS + 1):
            chosen = _pick_ports(wanted)
            argv = [
                *wrapper,
                *server_argv(kind, app, chosen, workers=workers, threads=threads, extra=extra),
            ]
            log_path = Path(logdir) / f"{kind}-{attempt}.log"
            with log_path.open("wb") as log:
                proc = subprocess.Popen(
                    argv,
                    pass_fds=pass_fds,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=full_env,
                    cwd=str(app_dir),
                    start_new_session=True,
                )
            server = Server(kind, proc, chosen, log_path)
            try:
                _wait_ready(server, ready_path, workers if wait_workers else 0, startup_timeout)
            except ServerStartError:
                server.stop()
                if attempt < START_ATTEMPTS and _port_taken(server.log()):
                    continue
                raise
            except BaseException:
                server.stop()
                raise
            try:
                yield server
            finally:
                server.stop()
            return


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
