"""Hostile neighbours and proxies, against real servers started the way users start them.

Every server here is started by its own command line binding its own socket
(``-b unix:PATH``, ``--uds PATH``, ``-b 127.0.0.1:PORT``), not handed one by
the test, because what a server tells the app about its client depends on
how it bound: over a Unix socket gunicorn sets ``REMOTE_ADDR`` to ``""``,
uvicorn sets ``scope["client"]`` to ``None`` and ``scope["server"]`` to
``[path, None]``, hypercorn sets both to ``None``.  Requests go over that
socket, as ``curl --unix-socket`` (or nginx's ``proxy_pass
http://unix:...``) sends them, with and without the headers a proxy adds.

The launcher for these CLI-bound servers is in this file (``cli_server``):
a new process group per server, a bounded wait until it answers, SIGTERM
then SIGKILL of that group only.  A TCP port is picked free and the start
retried on ``EADDRINUSE``.  Apps: ``apps/security_apps.py``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from servers import APPS_DIR

pytestmark = [pytest.mark.linux, pytest.mark.timeout(180)]

PY = sys.executable
#: kind -> (command line before the bind option, app); the bind option is added per test.
KINDS: Mapping[str, tuple[tuple[str, ...], str]] = {
    "gunicorn-sync": ((PY, "-m", "gunicorn", "--workers", "1"), "security_apps:wsgi"),
    "gunicorn-gthread": (
        (PY, "-m", "gunicorn", "--workers", "1", "-k", "gthread", "--threads", "4"),
        "security_apps:wsgi",
    ),
    "gunicorn-uvicorn": (
        (PY, "-m", "gunicorn", "--workers", "1", "-k", "uvicorn_worker.UvicornWorker"),
        "security_apps:asgi",
    ),
    "uvicorn": ((PY, "-m", "uvicorn", "--no-access-log"), "security_apps:asgi"),
    "hypercorn": ((PY, "-m", "hypercorn"), "security_apps:asgi"),
}

RELAYED_OVER_UNIX = (
    "403 Forbidden: the request came over a Unix socket with {headers}: a proxy relayed it, "
    "and its client is unknown\n"
)
PROXIED_TCP = (
    "403 Forbidden: the request carries X-Forwarded-For: a proxy relayed it (peer {peer}); to "
    "check the client address your server resolves from it, pass "
    "allow=AccessList.parse([...], proxied=True)\n"
)


def _bind_args(kind: str, unix: str | bytes | None, port: int | None) -> list[str | bytes]:
    """The server's own option binding a Unix path or 127.0.0.1:PORT."""
    if unix is not None:
        path = os.fsencode(unix)
        if kind == "uvicorn":
            return ["--uds", path]
        return ["-b", b"unix:" + path]
    if kind == "uvicorn":
        return ["--host", "127.0.0.1", "--port", str(port)]
    return ["-b", f"127.0.0.1:{port}"]


class _UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix socket path, as ``curl --unix-socket PATH``."""

    def __init__(self, path: bytes, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


@dataclass
class CliServer:
    """A server started by its own CLI, reached over its Unix path or its TCP port."""

    kind: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    unix: bytes | None
    port: int | None
    stopped_log: str | None = None

    def request(
        self, method: str, target: str, headers: Mapping[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """One request on a new connection: status, lower-cased headers, body."""
        if self.unix is not None:
            conn: http.client.HTTPConnection = _UnixHTTPConnection(self.unix, 10.0)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10.0)
        try:
            conn.request(method, target, headers=dict(headers or {}))
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def get(self, target: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
        """``GET target`` with ``headers`` (underscores in names become dashes)."""
        return self.request("GET", target, {k.replace("_", "-"): v for k, v in headers.items()})

    def log(self) -> str:
        """Everything the server printed (kept once it stopped)."""
        if self.stopped_log is not None:
            return self.stopped_log
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM this server's process group, SIGKILL it if it lingers."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.stopped_log is None:
            self.stopped_log = self.log_path.read_text(errors="replace")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def cli_server(
    kind: str,
    *,
    unix: str | bytes | None = None,
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Iterator[CliServer]:
    """Start ``kind`` by its own CLI on ``unix`` (a path) or on a free 127.0.0.1 port."""
    base, app = KINDS[kind]
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    full_env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(APPS_DIR), os.environ.get("PYTHONPATH")])
    )
    for _attempt in range(5):
        port = None if unix is not None else _free_port()
        argv = [*base, *_bind_args(kind, unix, port), *extra, app]
        with tempfile.TemporaryDirectory(prefix="rd-sec-log-") as logdir:
            log_path = Path(logdir) / "server.log"
            with log_path.open("wb") as log:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env=full_env, cwd=str(APPS_DIR), start_new_session=True,
                )  # fmt: skip
            server = CliServer(
                kind, proc, log_path, None if unix is None else os.fsencode(unix), port
            )
            try:
                if _wait_ready(server):
                    yield server
                    return
            finally:
                server.stop()
            if "already in use" not in server.log():
                raise AssertionError(f"{kind} did not start:\n{server.log()}")
    raise AssertionError(f"{kind}: no free port after 5 tries")


def _wait_ready(server: CliServer, timeout: float = 30.0) -> bool:
    """Until the server answers HTTP (True) or exits (False); bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            return False
        try:
            server.get("/_raindrops")
        except (OSError, http.client.HTTPException):
            time.sleep(0.05)
            continue
        return True
    raise AssertionError(f"{server.kind} did not answer in {timeout}s:\n{server.log()}")


@pytest.fixture
def short_dir() -> Iterator[str]:
    """A fresh directory with a short path (a Unix socket path has at most 107 bytes)."""
    path = tempfile.mkdtemp(prefix="rd-sec-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- item: a Unix peer relayed by a proxy ---------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_unix_socket_peer_reads_and_a_relayed_one_is_refused(kind: str, short_dir: str) -> None:
    """Over ``unix:``: a local curl reads the endpoint and the Watcher; a proxy's request is 403.

    The setup ``nginx -> unix:/run/app.sock -> server`` adds ``X-Forwarded-For``
    (or ``Forwarded``, ``X-Real-IP``); the server gives the app no client
    address, so the request is the proxy's and its client unknown.
    """
    sock = os.path.join(short_dir, "app.sock")
    with cli_server(kind, unix=sock) as srv:
        status, headers, body = srv.get("/_raindrops")
        assert (status, headers["content-type"]) == (200, "text/plain"), body
        assert body.startswith(b"calling: ")
        assert srv.get("/watch/index.json")[0] == 200
        for header, value in (
            ("X-Forwarded-For", "203.0.113.9"),
            ("Forwarded", "for=203.0.113.9"),
            ("X-Real-IP", "203.0.113.9"),
        ):
            for target in (
                "/_raindrops",
                "/_raindrops?format=json",
                "/watch/",
                "/watch/index.json",
            ):
                status, headers, body = srv.request("GET", target, {header: value})
                assert (target, status, body.decode()) == (
                    target, 403, RELAYED_OVER_UNIX.format(headers=header),
                )  # fmt: skip
                assert headers["x-content-type-options"] == "nosniff"
        # A proxy rule matching the raw path "/_raindrops" misses this spelling:
        # every server decodes it to the endpoint's path.
        status, _, body = srv.get("/%5Fraindrops")
        assert (status, body[:9]) == (200, b"calling: ")
        status, _, body = srv.get("/%5Fraindrops", X_Forwarded_For="203.0.113.9")
        assert status == 403
        assert "Traceback" not in srv.log()


@pytest.mark.parametrize(
    ("kind", "resolved"),
    [
        ("gunicorn-sync", "127.0.0.1"),  # REMOTE_ADDR is the TCP peer: the proxy
        ("gunicorn-uvicorn", "203.0.113.9"),  # rewrites client from the header (peer trusted)
        ("uvicorn", "203.0.113.9"),  # the same: --forwarded-allow-ips defaults to loopback
        ("hypercorn", "127.0.0.1"),  # the peer
    ],
)
def test_tcp_loopback_reads_and_a_proxied_request_is_refused(kind: str, resolved: str) -> None:
    """On 127.0.0.1:PORT a direct client reads; one relayed by a local proxy is 403.

    The 403 names the peer address the server gave the app: gunicorn and
    hypercorn the proxy's (so an allow-list alone would let every client of
    a local proxy in), uvicorn the client it took from ``X-Forwarded-For``.
    """
    with cli_server(kind) as srv:
        assert srv.get("/_raindrops")[0] == 200
        assert srv.get("/watch/")[0] == 200
        for target in ("/_raindrops", "/watch/"):
            status, _, body = srv.get(target, X_Forwarded_For="203.0.113.9")
            assert (status, body.decode()) == (403, PROXIED_TCP.format(peer=resolved))


@pytest.mark.parametrize(
    ("kind", "flag"),
    [
        ("uvicorn", "--forwarded-allow-ips=*"),
        ("gunicorn-sync", "--forwarded-allow-ips=*"),
        ("gunicorn-uvicorn", "--forwarded-allow-ips=*"),
    ],
)
def test_trusting_every_proxy_over_unix_is_still_refused(
    kind: str, flag: str, short_dir: str
) -> None:
    """``--forwarded-allow-ips='*'`` over a Unix socket: a forged loopback client stays out.

    uvicorn (and gunicorn's UvicornWorker) then put the header's address in
    ``scope["client"]``, so ``X-Forwarded-For: 127.0.0.1`` would look like
    loopback; gunicorn's own workers leave ``REMOTE_ADDR`` empty.  Both are
    a proxy's requests over a Unix socket, and refused.
    """
    sock = os.path.join(short_dir, "app.sock")
    with cli_server(kind, unix=sock, extra=[flag]) as srv:
        assert srv.get("/_raindrops")[0] == 200
        status, _, body = srv.get("/_raindrops", X_Forwarded_For="127.0.0.1")
        assert (status, body.decode()) == (
            403, RELAYED_OVER_UNIX.format(headers="X-Forwarded-For"),
        )  # fmt: skip


# -- item: hostile listener names ------------------------------------------------------

FORGED = f"@rd-sec-{os.getpid()}\ncalling: 0\n\x1b[2J\x1b]0;pwned\x07"
FORGED_SHOWN = f"@rd-sec-{os.getpid()}\\ncalling: 0\\n\\x1b[2J\\x1b]0;pwned\\x07"


@contextlib.contextmanager
def hostile_listeners(directory: str) -> Iterator[tuple[str, str]]:
    """What any local user can bind: an abstract name with a newline and ESC, a non-UTF-8 path."""
    raw_path = os.path.join(os.fsencode(directory), b"caf\xe9.sock")
    with socket.socket(socket.AF_UNIX) as abstract, socket.socket(socket.AF_UNIX) as latin:
        abstract.bind("\0" + FORGED[1:])
        abstract.listen(2)
        latin.bind(raw_path)
        latin.listen(3)
        yield FORGED, os.fsdecode(raw_path)


def _lines(body: bytes) -> list[str]:
    return body.decode().splitlines()


@pytest.mark.parametrize("kind", ["gunicorn-gthread", "uvicorn", "hypercorn"])
def test_hostile_listener_names_are_escaped_everywhere(kind: str, short_dir: str) -> None:
    """Text, Prometheus, Watcher pages and tail: one escaped line per value, no ESC, no 500."""
    with hostile_listeners(short_dir) as (forged, latin):
        latin_shown = (
            latin.encode("utf-8", "surrogateescape").decode("latin-1").replace("\xe9", "\\xe9")
        )
        env = {"SEC_LISTENERS": json.dumps([forged, latin])}
        with cli_server(kind, env=env) as srv:
            status, _, body = srv.get("/_raindrops")
            assert (status, _lines(body)) == (200, [
                "calling: 0", "writing: 0",
                f"{FORGED_SHOWN} active: 0", f"{FORGED_SHOWN} queued: 0",
                f"{latin_shown} active: 0", f"{latin_shown} queued: 0",
            ])  # fmt: skip
            status, _, body = srv.get("/_raindrops?format=prometheus")
            assert status == 200
            backlog = [
                line for line in _lines(body) if line.startswith("raindrops_listener_backlog")
            ]
            forged_label, latin_label = (
                s.replace("\\", "\\\\") for s in (FORGED_SHOWN, latin_shown)
            )
            assert backlog == [
                f'raindrops_listener_backlog{{listener="{forged_label}"}} 2.0',
                f'raindrops_listener_backlog{{listener="{latin_label}"}} 3.0',
            ]
            status, _, body = srv.get("/_raindrops?format=json")
            assert set(json.loads(body)["listeners"]) == {forged, latin}

            def index_has_both() -> bool:
                doc = json.loads(srv.get("/watch/index.json")[2])
                return {forged, latin} <= set(doc["listeners"])

            _until(index_has_both)
            status, _, page = srv.get("/watch/")
            assert status == 200
            assert FORGED_SHOWN.encode() in page
            assert latin_shown.encode() in page
            assert b"\x1b" not in page
            url = quote(forged.encode(), safe="")
            status, _, page = srv.get(f"/watch/queued/{url}.html")
            assert (status, b"\x1b" in page) == (200, False)
            assert f"<h1>{FORGED_SHOWN} queued</h1>".encode() in page
            latin_url = quote(latin.encode("utf-8", "surrogateescape"), safe="")
            status, headers, _ = srv.get(f"/watch/queued/{latin_url}.txt")
            assert (status, headers["x-current"]) == (200, "0")
            line = _first_tail_line(srv, f"/watch/tail/{url}.txt")
            assert re.fullmatch(
                rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ " + re.escape(FORGED_SHOWN.encode())
                + rb" +0 +0\n",
                line,
            ), line  # fmt: skip
        assert "Traceback" not in srv.log()


def _until(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s")
        time.sleep(0.05)


def _first_tail_line(srv: CliServer, target: str) -> bytes:
    """The first body line of a tail stream, read off the raw connection."""
    conn = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    try:
        conn.sendall(f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        data = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            data += conn.recv(4096)
            head, sep, rest = data.partition(b"\r\n\r\n")
            if sep:
                assert head.startswith(b"HTTP/1.1 200"), head
                lines = [ln for ln in _dechunk(rest).split(b"\n") if ln]
                if lines and _dechunk(rest).count(b"\n"):
                    return lines[0] + b"\n"
        raise AssertionError(f"no tail line: {data!r}")
    finally:
        conn.close()


def _dechunk(data: bytes) -> bytes:
    """The bytes of complete chunks of a chunked body (what arrived so far)."""
    out = b""
    while True:
        size_line, sep, rest = data.partition(b"\r\n")
        if not sep:
            return out
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            return out + data  # not chunked: the raw stream
        if size == 0 or len(rest) < size + 2:
            return out
        out += rest[:size]
        data = rest[size + 2 :]


@pytest.mark.parametrize("kind", ["uvicorn", "gunicorn-sync"])
def test_a_server_on_a_non_utf8_unix_path_answers_every_format(kind: str, short_dir: str) -> None:
    """``uvicorn --uds $'/tmp/caf\\xe9.sock'``: text and Prometheus no longer answer 500."""
    sock = os.path.join(os.fsencode(short_dir), b"caf\xe9.sock")
    shown = os.fsdecode(short_dir) + "/caf\\xe9.sock"
    with cli_server(kind, unix=sock) as srv:
        status, _, body = srv.get("/_raindrops")
        assert status == 200, body
        assert _lines(body)[2:] == [f"{shown} active: 1", f"{shown} queued: 0"]
        status, _, body = srv.get("/_raindrops?format=prometheus")
        assert status == 200, body
        label = shown.replace("\\", "\\\\")
        assert f'raindrops_listener_active{{listener="{label}"}} 1.0' in _lines(body)
        assert "Traceback" not in srv.log()


# -- item: forged resets ----------------------------------------------------------------


def test_watcher_reset_refuses_a_cross_site_form() -> None:
    """gunicorn gthread: a reset posted from another site is 403; from the Watcher's page, 302."""
    with cli_server("gunicorn-gthread") as srv:
        host = f"127.0.0.1:{srv.port}"
        name = quote(host, safe="")
        _until(lambda: srv.get(f"/watch/queued/{name}.txt")[0] == 200)
        evil = {"Host": host, "Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
        status, headers, body = srv.request("POST", f"/watch/reset/{name}", evil)
        assert (status, body) == (
            403, b"403 Forbidden: cross-origin request refused: Sec-Fetch-Site is 'cross-site'\n",
        )  # fmt: skip
        assert headers["x-content-type-options"] == "nosniff"
        own = {"Host": host, "Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"}
        status, headers, _ = srv.request("POST", f"/watch/reset/{name}", own)
        assert (status, urlsplit(headers["location"]).path) == (302, "/watch/")
        status, _, _ = srv.request("POST", f"/watch/reset/{name}", {"Host": host})  # curl
        assert status == 302


# -- the CLI at the end of a pipe -----------------------------------------------------------


def test_linux_listener_stats_into_head_exits_quietly() -> None:
    """``linux-listener-stats -d 0.1 | head -1`` in a shell: one line, no traceback, status 0."""
    cli = Path(PY).with_name("linux-listener-stats")
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", f"'{cli}' -d 0.1 127.0.0.1:1 | head -1"],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (
        0, b"timestamp address active queued backlog\n", b"",
    )  # fmt: skip
