"""The renderers of a snapshot: Ruby's text byte for byte, JSON, Prometheus."""

from __future__ import annotations

import json

from linux_inet_diag import ListenOverflows, ListenStats
from prometheus_client import CollectorRegistry, generate_latest
from raindrops_core import RaindropsCollector, Snapshot, render_json, render_prometheus, render_text

SNAP = Snapshot(
    calling=2,
    writing=1,
    listeners={
        "127.0.0.1:8080": ListenStats(active=3, queued=0, backlog=128),
        "/tmp/app.sock": ListenStats(active=1, queued=4, backlog=16),
    },
    overflows=ListenOverflows(listen_overflows=5, listen_drops=6),
)


def test_text_is_the_ruby_format_byte_for_byte() -> None:
    """Gauges first, then an ``active`` and a ``queued`` line per listener, in order."""
    assert render_text(SNAP) == (
        b"calling: 2\nwriting: 1\n"
        b"127.0.0.1:8080 active: 3\n127.0.0.1:8080 queued: 0\n"
        b"/tmp/app.sock active: 1\n/tmp/app.sock queued: 4\n"
    )


def test_text_without_listeners_keeps_only_the_gauge_lines() -> None:
    """An unavailable listener part leaves the two gauge lines, unchanged."""
    snap = Snapshot(0, 7, {}, unavailable={"listeners": "netlink needs Linux"})
    assert render_text(snap) == b"calling: 0\nwriting: 7\n"


def test_json_carries_backlog_overflows_and_unavailable_parts() -> None:
    """The JSON object holds every field of the snapshot, backlog and overflows included."""
    assert json.loads(render_json(SNAP)) == {
        "calling": 2,
        "writing": 1,
        "listeners": {
            "127.0.0.1:8080": {"active": 3, "queued": 0, "backlog": 128},
            "/tmp/app.sock": {"active": 1, "queued": 4, "backlog": 16},
        },
        "listen_overflows": {"listen_overflows": 5, "listen_drops": 6},
        "unavailable": {},
    }
    snap = Snapshot(1, 0, {}, unavailable={"listeners": "no netlink"})
    assert render_json(snap) == (
        b'{"calling": 1, "writing": 0, "listeners": {}, "listen_overflows": null, '
        b'"unavailable": {"listeners": "no netlink"}}\n'
    )


def _samples(text: bytes) -> list[str]:
    return [line for line in text.decode().splitlines() if not line.startswith("#")]


def test_prometheus_exposition_has_every_gauge_and_counter() -> None:
    """The Prometheus text lists gauges per listener and the machine's overflow counters."""
    assert _samples(render_prometheus(SNAP)) == [
        "raindrops_calling 2.0",
        "raindrops_writing 1.0",
        "raindrops_shared 1.0",
        "raindrops_listeners_available 1.0",
        'raindrops_listener_active{listener="127.0.0.1:8080"} 3.0',
        'raindrops_listener_active{listener="/tmp/app.sock"} 1.0',
        'raindrops_listener_queued{listener="127.0.0.1:8080"} 0.0',
        'raindrops_listener_queued{listener="/tmp/app.sock"} 4.0',
        'raindrops_listener_backlog{listener="127.0.0.1:8080"} 128.0',
        'raindrops_listener_backlog{listener="/tmp/app.sock"} 16.0',
        "raindrops_listen_overflows_total 5.0",
        "raindrops_listen_drops_total 6.0",
    ]


def test_prometheus_notes_an_unavailable_part_in_a_comment() -> None:
    """A missing part ends the text with ``# PART unavailable: REASON`` and a 0 gauge."""
    snap = Snapshot(1, 0, {}, unavailable={"listeners": "netlink\nneeds Linux"})
    text = render_prometheus(snap)
    assert text.endswith(
        b"raindrops_listeners_available 0.0\n# listeners unavailable: netlink needs Linux\n"
    )
    assert b"raindrops_listener_active" not in text


def test_openmetrics_ends_with_eof_and_has_no_free_comments() -> None:
    """OpenMetrics output ends with ``# EOF`` and carries the unavailability as a gauge."""
    snap = Snapshot(1, 0, {}, unavailable={"listeners": "x"})
    text = render_prometheus(snap, openmetrics=True)
    assert text.endswith(b"raindrops_listeners_available 0.0\n# EOF\n")
    assert b"unavailable:" not in text


def test_collector_registers_in_a_users_registry() -> None:
    """RaindropsCollector takes a fresh snapshot from its source at every scrape."""
    snaps = iter([Snapshot(1, 0, {}), Snapshot(4, 2, {})])
    registry = CollectorRegistry()
    registry.register(RaindropsCollector(lambda: next(snaps), namespace="web"))
    first = generate_latest(registry)
    second = generate_latest(registry)
    assert "web_calling 1.0" in _samples(first)
    assert _samples(second)[:2] == ["web_calling 4.0", "web_writing 2.0"]
