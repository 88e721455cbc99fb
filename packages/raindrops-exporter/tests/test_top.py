"""raindrops-top's frame, exactly, from a reading built by hand."""

from __future__ import annotations

import time

from raindrops_exporter import Reading
from raindrops_exporter._top import render_frame


def test_a_frame_shows_each_server_listener_and_worker(reading: Reading) -> None:
    """Header, server line, gauges, a queue bar per listener, then every live worker."""
    when = time.strftime("%H:%M:%S", time.localtime(0.0))
    assert render_frame(reading, sort="p", width=100) == [
        f"raindrops-top {when}  sort: pid  1 server(s)  listen queues: 5 overflows, 6 drops",
        "q quit  b busy%  r req/s  a avg ms  i in flight  p pid",
        "",
        "server 127.0.0.1:8000,/run/a\\x1b.sock",
        "  calling    4   writing    1   workers 1/2 busy   reclaimed 2",
        "  127.0.0.1:8000                           active     2  queued     3/16    "
        "[####................]",
        "  /run/a\\x1b.sock                          active     0  queued     0/8     "
        "[....................]",
        "  worker      pid  busy%    req/s   avg_ms in_flight  requests",
        "       0     4242   25.0      1.0    300.0         1        10",
        "       -     4243      -        -        -         -         -",
    ]
