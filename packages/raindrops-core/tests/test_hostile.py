"""Hostile input: refused peers, echoed query text, listener names no one should print raw."""

from __future__ import annotations

import json
import os

import pytest
from linux_inet_diag import ListenStats
from raindrops_core import (
    ANONYMOUS,
    RaindropsState,
    Snapshot,
    render_json,
    render_prometheus,
    render_text,
)
from raindrops_core.adapter import Peer, WatcherCore
from raindrops_core.watcher import PAGE_SCRIPT, listener_url, tail_line

#: An abstract name any local user can bind: a newline forging a row, a terminal escape.
FORGED = "@rd\ncalling: 999\n\x1b[2J\x1b]0;pwned\x07"
FORGED_SHOWN = "@rd\\ncalling: 999\\n\\x1b[2J\\x1b]0;pwned\\x07"
#: A Unix path that is not UTF-8 (``uvicorn --uds $'/tmp/caf\\xe9.sock'``), as netlink decodes it.
LATIN1 = os.fsdecode(b"/tmp/caf\xe9.sock")
LATIN1_SHOWN = "/tmp/caf\\xe9.sock"
SNAP = Snapshot(
    calling=1,
    writing=0,
    listeners={FORGED: ListenStats(1, 2, 3), LATIN1: ListenStats(4, 5, 6)},
)


def test_text_escapes_names_and_never_raises() -> None:
    """The raindrops text gets one escaped line per value: no forged line, no raw ESC, no 500."""
    assert render_text(SNAP) == (
        b"calling: 1\nwriting: 0\n"
        b"@rd\\ncalling: 999\\n\\x1b[2J\\x1b]0;pwned\\x07 active: 1\n"
        b"@rd\\ncalling: 999\\n\\x1b[2J\\x1b]0;pwned\\x07 queued: 2\n"
        b"/tmp/caf\\xe9.sock active: 4\n"
        b"/tmp/caf\\xe9.sock queued: 5\n"
    )


@pytest.mark.parametrize("openmetrics", [False, True])
def test_prometheus_labels_are_the_escaped_names(openmetrics: bool) -> None:
    """The ``listener`` label is the text's spelling, quoted: UTF-8, no control byte."""
    body = render_prometheus(SNAP, openmetrics=openmetrics)
    body.decode("utf-8")  # always UTF-8 now: a surrogate raised UnicodeEncodeError (500)
    lines = [line for line in body.decode().splitlines() if "listener_active{" in line]
    assert lines == [
        'raindrops_listener_active{listener="@rd\\\\ncalling: 999\\\\n\\\\x1b[2J\\\\x1b]0;pwned'
        '\\\\x07"} 1.0',
        'raindrops_listener_active{listener="/tmp/caf\\\\xe9.sock"} 4.0',
    ]
    assert not any(ch < " " and ch != "\n" for ch in body.decode())


def test_prometheus_comment_of_an_unavailable_part_is_escaped() -> None:
    """A reason quoting a hostile name stays one comment line, with no control byte."""
    snap = Snapshot(0, 0, {}, unavailable={"listeners": f"cannot read {FORGED}"})
    assert render_prometheus(snap).endswith(
        b"# listeners unavailable: cannot read @rd calling: 999 \\x1b[2J\\x1b]0;pwned\\x07\n"
    )


def test_json_keeps_the_names_quoted_and_lossless() -> None:
    """JSON quotes control characters itself and keeps an undecodable byte as its code point."""
    body = render_json(SNAP)
    assert body.isascii()
    assert list(json.loads(body)["listeners"]) == [FORGED, LATIN1]


def test_tail_lines_and_urls_of_hostile_names() -> None:
    """Tail text lines escape the name; URLs percent-encode its exact bytes."""
    assert tail_line(0.0, FORGED, 1, 2) == (
        b"1970-01-01T00:00:00Z " + FORGED_SHOWN.encode() + b"          1          2\n"
    )
    assert json.loads(tail_line(0.0, LATIN1, 1, 2, as_json=True))["listener"] == LATIN1
    assert listener_url(LATIN1) == "%2Ftmp%2Fcaf%E9.sock"


def test_watcher_pages_of_hostile_names_are_escaped_and_served() -> None:
    """Index, listener pages and JSON of such names answer 200, escaped, no raw ESC or markup."""
    names = {FORGED: (1, 2), LATIN1: (3, 4), "@<script>alert(1)</script>": (0, 0)}
    core = WatcherCore(
        None,
        fetch=lambda asked: {n: ListenStats(a, q, 8) for n, (a, q) in names.items()},
        delay=3600,
    )
    core.engine.sample()
    index = core.handle("GET", "/", "", peer="127.0.0.1")
    page = core.handle("GET", f"/queued/{LATIN1}.html", "", peer="127.0.0.1")
    forged = core.handle("GET", f"/active/{FORGED}.html", "", peer="127.0.0.1")
    doc = core.handle("GET", "/index.json", "", peer="127.0.0.1")
    for reply in (index, page, forged, doc):
        assert reply.status == 200  # type: ignore[union-attr]
        assert b"\x1b" not in reply.body  # type: ignore[union-attr]
    for reply in (index, page, forged):
        body = reply.body  # type: ignore[union-attr]
        # The page's own self-refresh is its only script; the names are text.
        assert body.count(b"<script") == 1
        assert b"<script" not in body.replace(PAGE_SCRIPT.encode(), b"")
    assert FORGED_SHOWN.encode() in index.body  # type: ignore[union-attr]
    assert b"&lt;script&gt;" in index.body  # type: ignore[union-attr]
    assert b'href="/tail/%2Ftmp%2Fcaf%E9.sock.txt">/tmp/caf\\xe9.sock</a>' in index.body  # type: ignore[union-attr]
    assert b"<h1>/tmp/caf\\xe9.sock queued</h1>" in page.body  # type: ignore[union-attr]
    assert set(json.loads(doc.body)["listeners"]) == set(names)  # type: ignore[union-attr]


def test_endpoint_refusals_are_plain_text_never_sniffed() -> None:
    """403 and 400 say why in text/plain with nosniff; a 400 quotes ``format=<script>``."""
    state = RaindropsState(listeners=[], segment=ANONYMOUS)
    bad = state.respond("GET", "127.0.0.1", None, "format=%3Cscript%3Ealert(1)%3C/script%3E")
    assert (bad.status, bad.body) == (
        400,
        b"400 Bad Request: unknown format '<script>alert(1)</script>'; "
        b"allowed: json, openmetrics, prom, prometheus, text, txt\n",
    )
    assert dict(bad.headers)["X-Content-Type-Options"] == "nosniff"
    assert dict(bad.headers)["Content-Type"] == "text/plain"
    relayed = Peer("", unix=True, forwarded=("x-forwarded-for",))
    refused = state.respond("GET", relayed, None, "")
    assert (refused.status, refused.body) == (
        403,
        b"403 Forbidden: the request came over a Unix socket with X-Forwarded-For: a proxy "
        b"relayed it, and its client is unknown\n",
    )
    assert dict(refused.headers)["X-Content-Type-Options"] == "nosniff"
    nobody = state.respond("GET", None, None, "")
    assert nobody.body == (
        b"403 Forbidden: the server gave no client address (REMOTE_ADDR, scope['client']), "
        b"so the client is unknown\n"
    )
    local = state.respond("GET", Peer("", unix=True), None, "")
    assert (local.status, local.body) == (200, b"calling: 0\nwriting: 0\n")
