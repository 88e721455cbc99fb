"""The ASGI apps against proxies and other users: access by scope, hostile names, forged resets."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from raindrops_asgi import RaindropsMiddleware
from raindrops_asgi.watcher import Watcher
from raindrops_core import ANONYMOUS

RELAYED = (
    b"403 Forbidden: the request came over a Unix socket with X-Forwarded-For: a proxy "
    b"relayed it, and its client is unknown\n"
)
UNIX_SERVER = ("/run/app.sock", None)  # what uvicorn --uds (and UvicornWorker) set


async def _hello(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello\n"})


def scope(path: str, method: str = "GET", **extra: Any) -> dict[str, Any]:
    headers = [(k.lower().encode(), v.encode()) for k, v in extra.pop("headers", {}).items()]
    return {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": extra.pop("raw_path", path.encode()),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        **extra,
    }


def call(app: Any, sc: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def run() -> None:
        await app(sc, receive, send)
        stop = getattr(app, "aclose", None)
        if stop is not None:
            await stop()

    asyncio.run(run())
    headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    return sent[0]["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        ({"client": None, "server": UNIX_SERVER}, 200),
        ({"client": None, "server": UNIX_SERVER, "headers": {"X-Forwarded-For": "1.2.3.4"}}, 403),
        (
            {  # uvicorn --uds --forwarded-allow-ips='*': the client taken from the header
                "client": ("127.0.0.1", 0),
                "server": UNIX_SERVER,
                "headers": {"X-Forwarded-For": "127.0.0.1"},
            },
            403,
        ),
        ({"server": ("127.0.0.1", 8000)}, 403),  # no client at all
        ({"client": ("127.0.0.1", 5), "server": ("127.0.0.1", 8000)}, 200),
        (
            {
                "client": ("127.0.0.1", 5),
                "server": ("127.0.0.1", 8000),
                "headers": {"X-Real-IP": "203.0.113.9"},
            },
            403,
        ),
    ],
)
def test_endpoint_decides_by_the_scope(extra: dict[str, Any], status: int) -> None:
    """A Unix peer reads the endpoint; relayed, or without a client, it is refused."""
    mw = RaindropsMiddleware(_hello, listeners=[], segment=ANONYMOUS)
    got, headers, body = call(mw, scope("/_raindrops", **extra))
    assert got == status
    if status == 403:
        assert headers["x-content-type-options"] == "nosniff"
    else:
        assert body == b"calling: 0\nwriting: 0\n"


def test_relayed_unix_peer_gets_the_reason() -> None:
    """nginx -> unix socket -> uvicorn: the 403 says a proxy relayed it."""
    mw = RaindropsMiddleware(_hello, listeners=[], segment=ANONYMOUS)
    extra = {"client": None, "server": UNIX_SERVER, "headers": {"X-Forwarded-For": "1.2.3.4"}}
    assert call(mw, scope("/_raindrops", **extra))[2] == RELAYED


@dataclass(frozen=True)
class Stats:
    active: int
    queued: int


LATIN1 = os.fsdecode(b"/tmp/caf\xe9.sock")
FORGED = "@rd\nforged 1 1\x1b[2J"


def watcher() -> Watcher:
    values = {"127.0.0.1:8080": (1, 2), LATIN1: (3, 4), FORGED: (5, 6)}

    def fetch(names: Sequence[str] | None) -> Mapping[str, Stats]:
        return {k: Stats(*v) for k, v in values.items()}

    return Watcher(None, delay=3600, fetch=fetch)


LOOPBACK = {"client": ("127.0.0.1", 5), "server": ("127.0.0.1", 9000)}


def test_watcher_refuses_like_the_endpoint() -> None:
    """The Watcher answers loopback and Unix peers, refuses others and relayed ones."""
    assert call(watcher(), scope("/", **LOOPBACK))[0] == 200
    assert call(watcher(), scope("/", client=None, server=UNIX_SERVER))[0] == 200
    other = call(watcher(), scope("/", client=("192.0.2.1", 5), server=("0.0.0.0", 9000)))
    assert other[0] == 403
    relayed = scope("/", client=None, server=UNIX_SERVER, headers={"X-Forwarded-For": "1.2.3.4"})
    assert call(watcher(), relayed)[::2] == (403, RELAYED)


def test_watcher_reset_needs_the_same_origin() -> None:
    """A POST from another site is 403; from the Watcher's own page it redirects."""
    evil = {"Origin": "http://evil.example", "Host": "127.0.0.1:9000"}
    status, _, body = call(
        watcher(), scope("/reset/127.0.0.1:8080", "POST", **LOOPBACK, headers=evil)
    )
    assert (status, body) == (
        403,
        b"403 Forbidden: cross-origin request refused: Origin 'http://evil.example' is not "
        b"this site (Host '127.0.0.1:9000')\n",
    )
    own = {"Origin": "http://127.0.0.1:9000", "Host": "127.0.0.1:9000"}
    assert (
        call(watcher(), scope("/reset/127.0.0.1:8080", "POST", **LOOPBACK, headers=own))[0] == 302
    )


def test_watcher_tail_and_pages_of_hostile_names() -> None:
    """A non-UTF-8 path routes back from its raw bytes; a forged name is escaped on the page."""
    raw = b"/queued/%2Ftmp%2Fcaf%E9.sock.html"
    page = scope("/queued/\ufffd", raw_path=raw, **LOOPBACK)
    page["path"] = "/queued//tmp/caf\ufffd.sock.html"  # as uvicorn decodes it
    status, _, body = call(watcher(), page)
    assert status == 200
    assert b"<h1>/tmp/caf\\xe9.sock queued</h1>" in body
    status, _, body = call(watcher(), scope("/", **LOOPBACK))
    assert status == 200
    assert b"@rd\\nforged 1 1\\x1b[2J" in body
    assert b"\x1b" not in body
