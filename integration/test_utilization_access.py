"""Who may read process-utilization's table, under real servers started by their own CLI.

The table lists every worker's PID and load, so it answers whom
``/_raindrops`` answers (raindrops-core's access rule): a local client over
the server's Unix socket (``gunicorn -b unix:PATH``, ``uvicorn --uds PATH``,
``hypercorn -b unix:PATH``) and one on ``127.0.0.1`` read it; a request a
proxy relayed (``X-Forwarded-For``, ``Forwarded``, ``X-Real-IP``) is 403.
Each server tells the app about a Unix peer its own way (gunicorn: an
``AF_UNIX`` ``gunicorn.socket``; uvicorn: ``scope["server"] == [path,
None]``; hypercorn: nothing, so the worker's own listening Unix socket
says it); these requests are the ones a ``curl --unix-socket`` makes.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import ASGI_KINDS, KINDS, launch, tcp, unix

pytestmark = [
    pytest.mark.linux,
    pytest.mark.skipif(sys.platform != "linux", reason="needs Linux"),
    pytest.mark.timeout(120),
]

APP = textwrap.dedent(
    """
    from process_utilization import ProcessUtilization
    from process_utilization.asgi import ProcessUtilization as AsgiProcessUtilization


    def hello(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello"]


    async def asgi_hello(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hello"})


    wsgi = ProcessUtilization(hello, stats_path="/_utilization")
    asgi = AsgiProcessUtilization(asgi_hello, stats_path="/_utilization")
    """
)

RELAYED_OVER_UNIX = (
    "403 Forbidden: the request came over a Unix socket with {header}: a proxy relayed it, "
    "and its client is unknown\n"
)
FORWARDING = [
    ("X-Forwarded-For", "203.0.113.9"),
    ("Forwarded", "for=203.0.113.9"),
    ("X-Real-IP", "203.0.113.9"),
]


@pytest.fixture
def app_dir() -> Iterator[Path]:
    """The app module in a fresh directory with a short path (a Unix socket path is short)."""
    path = Path(tempfile.mkdtemp(prefix="pu-acc-"))
    try:
        (path / "pu_access_app.py").write_text(APP)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _app(kind: str) -> str:
    return "pu_access_app:asgi" if kind in ASGI_KINDS else "pu_access_app:wsgi"


def _assert_table(status: int, headers: dict[str, str], body: bytes) -> None:
    assert (status, headers["content-type"]) == (200, "text/plain; charset=utf-8"), body
    assert body.startswith(b"worker ")


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_unix_peer_reads_the_table_and_a_relayed_one_is_refused(kind: str, app_dir: Path) -> None:
    """Over the server's Unix socket a local client reads; with a forwarding header, 403."""
    sock = str(app_dir / "app.sock")
    with launch(kind, _app(kind), unix(sock), app_dir=app_dir) as srv:
        _assert_table(*srv.get("/_utilization"))
        status, _, body = srv.get("/_utilization?format=json")
        assert status == 200
        assert json.loads(body)["total"]["requests_total"] >= 0
        for header, value in FORWARDING:
            for target in ("/_utilization", "/_utilization?format=json"):
                status, headers, body = srv.request("GET", target, headers={header: value})
                assert (target, status, body.decode()) == (
                    target, 403, RELAYED_OVER_UNIX.format(header=header),
                )  # fmt: skip
                assert headers["content-type"] == "text/plain"
                assert headers["x-content-type-options"] == "nosniff"
        # The app itself still serves the relayed client.
        assert srv.request("GET", "/", headers={"X-Forwarded-For": "203.0.113.9"})[0] == 200
        assert "Traceback" not in srv.log()


@pytest.mark.parametrize("kind", ["gunicorn-sync", "gunicorn-gthread", "uvicorn", "hypercorn"])
def test_a_loopback_client_reads_the_table_and_a_proxied_one_is_refused(
    kind: str, app_dir: Path
) -> None:
    """On 127.0.0.1 a direct client reads; one a local proxy relayed is 403."""
    with launch(kind, _app(kind), tcp("127.0.0.1"), app_dir=app_dir) as srv:
        _assert_table(*srv.get("/_utilization"))
        status, headers, body = srv.request(
            "GET", "/_utilization", headers={"X-Forwarded-For": "203.0.113.9"}
        )
        assert status == 403, body
        assert body.startswith(b"403 Forbidden: the request carries X-Forwarded-For")
        assert headers["x-content-type-options"] == "nosniff"
        assert "Traceback" not in srv.log()


def test_uvicorn_root_path_finds_the_table_below_it(app_dir: Path) -> None:
    """``uvicorn --root-path /ops``: the table is at /_utilization below the mount point."""
    with launch(
        "uvicorn", _app("uvicorn"), tcp("127.0.0.1"), app_dir=app_dir, extra=["--root-path", "/ops"]
    ) as srv:
        _assert_table(*srv.get("/_utilization"))
        assert srv.get("/elsewhere")[2] == b"hello"
