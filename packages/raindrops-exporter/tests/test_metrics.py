"""The exporter's Prometheus families and JSON, exactly, from a reading built by hand."""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics
from raindrops_exporter import Reading, reading_families, reading_json, render_json


class _Fixed:
    def __init__(self, reading: Reading, per_worker: bool) -> None:
        self.reading = reading
        self.per_worker = per_worker

    def collect(self) -> list[Metric]:
        return reading_families(self.reading, per_worker=self.per_worker)


def _text(reading: Reading, per_worker: bool = False, om: bool = False) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(reading, per_worker))
    return (openmetrics if om else generate_latest)(registry).decode()


def _samples(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("#")]


S = 'server="127.0.0.1:8000,/run/a\\\\x1b.sock"'


def test_every_family_with_a_server_label_exactly(reading: Reading) -> None:
    """One sample per server (and listener); control characters in names are escaped."""
    assert _samples(_text(reading)) == [
        f"raindrops_calling{{{S}}} 4.0",
        f"raindrops_writing{{{S}}} 1.0",
        f"raindrops_shared{{{S}}} 1.0",
        f"raindrops_listeners_available{{{S}}} 1.0",
        f'raindrops_listener_active{{listener="127.0.0.1:8000",{S}}} 2.0',
        f'raindrops_listener_active{{listener="/run/a\\\\x1b.sock",{S}}} 0.0',
        f'raindrops_listener_queued{{listener="127.0.0.1:8000",{S}}} 3.0',
        f'raindrops_listener_queued{{listener="/run/a\\\\x1b.sock",{S}}} 0.0',
        f'raindrops_listener_backlog{{listener="127.0.0.1:8000",{S}}} 16.0',
        f'raindrops_listener_backlog{{listener="/run/a\\\\x1b.sock",{S}}} 8.0',
        "raindrops_listen_overflows_total 5.0",
        "raindrops_listen_drops_total 6.0",
        f"raindrops_workers{{{S}}} 2.0",
        f"raindrops_workers_busy{{{S}}} 1.0",
        f"raindrops_workers_reclaimed_total{{{S}}} 2.0",
        f"process_utilization_busy_seconds_total{{{S}}} 2.75",
        f"process_utilization_requests_total{{{S}}} 12.0",
        f"process_utilization_response_seconds_total{{{S}}} 3.5",
        f"process_utilization_in_flight{{{S}}} 1.0",
        f'process_utilization_request_duration_seconds_bucket{{le="0.1",{S}}} 9.0',
        f'process_utilization_request_duration_seconds_bucket{{le="1.0",{S}}} 11.0',
        f'process_utilization_request_duration_seconds_bucket{{le="+Inf",{S}}} 12.0',
        f"process_utilization_request_duration_seconds_count{{{S}}} 12.0",
        f"process_utilization_request_duration_seconds_sum{{{S}}} 3.5",
        "raindrops_exporter_servers 1.0",
    ]


def test_per_worker_counters_are_labelled_by_worker_and_pid_on_request(reading: Reading) -> None:
    """--per-worker: the utilization counters carry worker and pid instead of a server sum."""
    lines = [
        x for x in _samples(_text(reading, True)) if x.startswith("process_utilization_requests")
    ]
    assert lines == [f'process_utilization_requests_total{{pid="4242",{S},worker="0"}} 10.0']


def test_openmetrics_names_units_and_ends_with_eof(reading: Reading) -> None:
    """OpenMetrics output carries # UNIT for the seconds families and ends with # EOF."""
    text = _text(reading, om=True)
    assert "# UNIT process_utilization_busy_seconds seconds\n" in text
    assert "# UNIT process_utilization_request_duration_seconds seconds\n" in text
    assert text.endswith("# EOF\n")


def test_json_quotes_every_name_and_keeps_every_figure(reading: Reading) -> None:
    """The JSON holds the raw names (JSON-escaped), and the server's figures as numbers."""
    body = render_json(reading_json(reading))
    assert b"\\u001b" in body
    doc = json.loads(body)
    (server,) = doc["servers"]
    assert server["server"] == "127.0.0.1:8000,/run/a\x1b.sock"
    assert server["listeners"]["127.0.0.1:8000"] == {"active": 2, "queued": 3, "backlog": 16}
    assert (server["calling"], server["workers"], server["workers_busy"]) == (4, 2, 1)
    assert server["request_duration_seconds"]["buckets"][-1] == ["+Inf", 12]
    assert doc["listen_overflows"] == {"listen_overflows": 5, "listen_drops": 6}
