"""The Watcher engine: Ruby's aggregation, peaks, resets, routing, pages, tails, LastDataRecv."""

from __future__ import annotations

import asyncio
import json
import math
import os
import select
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import pytest
from raindrops_core import ConfigError
from raindrops_core.adapter import LastDataRecvCore, Reply, TailPlan, WatcherCore, client_gone_probe
from raindrops_core.watcher import (
    PAGE_SCRIPT,
    Aggregate,
    WatcherEngine,
    format_number,
    histogram_text,
    http_date,
    listener_url,
    ruby_round,
    set_defer_accept,
    tail_line,
)

L = "127.0.0.1:8080"
#: The peer every request here comes from: a loopback client, whom the Watcher answers.
LOCAL = "127.0.0.1"


@dataclass(frozen=True)
class Stats:
    active: int
    queued: int


class Clock:
    """A settable wall clock."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def fixed(values: Mapping[str, tuple[int, int]]):  # type: ignore[no-untyped-def]
    def fetch(names: Sequence[str] | None) -> Mapping[str, Stats]:
        return {k: Stats(*v) for k, v in values.items()}

    return fetch


def engine_with(seq: Sequence[tuple[int, int]], clock: Clock | None = None) -> WatcherEngine:
    clock = clock or Clock()
    engine = WatcherEngine([L], clock=clock, fetch=fixed({}), delay=1.0)
    for active, queued in seq:
        engine.record({L: Stats(active, queued)})
        clock.now += 1
    return engine


def headers(reply: Reply) -> dict[str, str]:
    return dict(reply.headers)


# -- aggregation ---------------------------------------------------------------


def test_aggregate_known_sequence_exact_statistics() -> None:
    """A known sequence gives count, sum, min, max, mean and the gem's sample std dev exactly."""
    agg = Aggregate(reset_at=0.0)
    for t, v in enumerate([2, 4, 4, 4, 5, 5, 7, 9]):
        agg.add(v, float(t))
    s = agg.stats()
    assert (s.count, s.sum, s.min, s.max, s.current) == (8, 40, 2, 9, 9)
    assert s.mean == 5.0
    assert format_number(s.std_dev) == "2.138089935299395"  # Ruby: agg.std_dev.to_s
    assert (s.outliers_low, s.outliers_high) == (0, 0)


def test_aggregate_log2_buckets_as_the_gem() -> None:
    """Bucket k holds [2**k, 2**(k+1)) for 128 buckets; 0 is a low outlier, as in the gem."""
    agg = Aggregate(reset_at=0.0)
    for v in [0, 1, 2, 3, 4, 7, 8, 1023, 1024]:
        agg.add(v, 0.0)
    s = agg.stats()
    used = [(lo, hi, c) for lo, hi, c in s.buckets if c]
    assert used == [(1, 2, 1), (2, 4, 2), (4, 8, 2), (8, 16, 1), (512, 1024, 1), (1024, 2048, 1)]
    assert (len(s.buckets), s.buckets[-1][:2], s.outliers_low) == (128, (2**127, 2**128), 1)


def test_aggregate_outliers_count_in_totals() -> None:
    """Samples below 1 are low outliers, from 2**127 high ones; both count in the totals."""
    agg = Aggregate(reset_at=0.0)
    for v in [-1, 0, 5, 2**127]:
        agg.add(v, 0.0)
    s = agg.stats()
    assert (s.outliers_low, s.outliers_high, s.count, s.min, s.max) == (2, 1, 4, -1, 2**127)
    assert sum(c for _, _, c in s.buckets) == 1


def test_aggregate_peaks_as_the_ruby_watcher() -> None:
    """Peak times move when a sample above 0 reaches the earlier maximum (first: exceeds it)."""
    agg = Aggregate(reset_at=5.0)
    for t, v in enumerate([1, 3, 2, 3, 1]):
        agg.add(v, 10.0 + t)
    s = agg.stats()
    assert (s.max, s.first_peak_at, s.last_peak_at) == (3, 11.0, 13.0)
    agg.add(4, 20.0)
    s = agg.stats()
    assert (s.max, s.first_peak_at, s.last_peak_at) == (4, 20.0, 20.0)
    zeros = Aggregate(reset_at=5.0)
    for t in range(3):
        zeros.add(0, 10.0 + t)
    s = zeros.stats()
    assert (s.max, s.first_peak_at, s.last_peak_at) == (0, 5.0, 5.0)


def test_aggregate_empty_and_single() -> None:
    """No sample: no min/max/mean/std dev, peaks at the reset; one sample: no std dev yet."""
    agg = Aggregate(reset_at=5.0)
    s = agg.stats()
    assert (s.count, s.min, s.max, s.mean, s.std_dev, s.current, s.last_reset) == (
        0, None, None, None, None, None, 5.0,
    )  # fmt: skip
    assert (s.first_peak_at, s.last_peak_at) == (5.0, 5.0)
    agg.add(3, 6.0)
    s = agg.stats()
    assert (s.count, s.mean, s.std_dev, s.first_peak_at) == (1, 3.0, None, 5.0)


def test_aggregate_std_dev_is_the_gems_sample_one() -> None:
    """The standard deviation divides by count - 1, as the aggregate gem's std_dev."""
    agg = Aggregate(reset_at=0.0)
    for v in [1, 2, 3]:
        agg.add(v, 0.0)
    assert agg.stats().std_dev == 1.0  # the population one would be sqrt(6) / 3


def test_aggregate_reset_keeps_current() -> None:
    """A reset forgets the samples but not the current value (Ruby's comes from the snapshot)."""
    agg = Aggregate(reset_at=0.0)
    agg.add(7, 1.0)
    agg.reset(2.0)
    s = agg.stats()
    assert (s.count, s.current, s.last_reset, s.first_peak_at) == (0, 7, 2.0, 2.0)


def test_engine_record_and_report() -> None:
    """Rounds recorded through the engine reach both aggregates and the history ring."""
    clock = Clock(100.0)
    engine = engine_with([(1, 0), (3, 2), (2, 5)], clock)
    rep = engine.report(L)
    assert rep is not None
    assert (rep.active.count, rep.active.max, rep.active.current) == (3, 3, 2)
    assert (rep.queued.max, rep.queued.first_peak_at) == (5, 102.0)
    assert [(s.at, s.active, s.queued) for s in rep.history] == [
        (100.0, 1, 0),
        (101.0, 3, 2),
        (102.0, 2, 5),
    ]
    assert engine.updated_at == 102.0
    assert engine.next_sample_at() == 103.0
    assert engine.current() == {L: (2, 5)}


def test_engine_reset_clears_one_listener() -> None:
    """Reset forgets that listener's samples and stamps the reset time."""
    clock = Clock(50.0)
    engine = engine_with([(4, 4)], clock)
    clock.now = 77.0
    assert engine.reset(L) is True
    rep = engine.report(L)
    assert rep is not None
    assert (rep.active.count, rep.queued.count, rep.history, rep.active.last_reset) == (
        0, 0, (), 77.0,
    )  # fmt: skip
    assert rep.active.current == 4
    assert engine.reset("10.0.0.1:1") is False


def test_engine_history_is_bounded() -> None:
    """The ring keeps only the last ``history`` samples; aggregates keep counting."""
    engine = WatcherEngine([L], history=3, clock=Clock(), fetch=fixed({}))
    for i in range(10):
        engine.record({L: Stats(i, 0)}, at=float(i))
    rep = engine.report(L)
    assert rep is not None
    assert [s.active for s in rep.history] == [7, 8, 9]
    assert rep.active.count == 10


def test_engine_explicit_listeners_ignore_others_and_all_mode_adds() -> None:
    """An explicit list ignores other names; watching everything adds names as seen."""
    explicit = WatcherEngine([L], clock=Clock(), fetch=fixed({}))
    explicit.record({L: Stats(1, 1), "10.0.0.1:80": Stats(1, 1)})
    assert explicit.names() == (L,)
    everything = WatcherEngine(None, clock=Clock(), fetch=fixed({}))
    everything.record({"b:1": Stats(1, 1)})
    everything.record({"a:2": Stats(1, 1)})
    assert everything.names() == ("b:1", "a:2")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"listeners": "127.0.0.1:80"}, "single string"),
        ({"listeners": ["nope"]}, "malformed listener 'nope'"),
        ({"listeners": [80]}, "listener 80 is not a string"),
        ({"delay": 0}, "delay must be a positive, finite number of seconds, not 0"),
        ({"delay": math.inf}, "delay must be"),
        ({"history": 0}, "history must be a positive int, not 0"),
    ],
)
def test_engine_bad_options(kwargs: dict[str, object], message: str) -> None:
    """Bad options raise ConfigError naming the value."""
    with pytest.raises(ConfigError, match=message):
        WatcherEngine(**kwargs)  # type: ignore[arg-type]


def test_engine_sample_error_kept_not_raised() -> None:
    """A failing fetch is remembered as last_error and the next good round clears it."""
    calls = []

    def fetch(names: Sequence[str] | None) -> Mapping[str, Stats]:
        calls.append(names)
        if len(calls) == 1:
            raise OSError("netlink down")
        return {L: Stats(1, 2)}

    engine = WatcherEngine([L], clock=Clock(), fetch=fetch)
    engine.sample()
    assert engine.last_error == "OSError: netlink down"
    engine.sample()
    assert engine.last_error is None
    assert calls == [(L,), (L,)]


def test_sampler_thread_starts_once_and_stops() -> None:
    """One sampler thread per engine: a second start is a no-op, stop joins it."""
    engine = WatcherEngine([L], delay=0.01, fetch=fixed({L: (1, 1)}))
    assert engine.start_thread() is True
    assert engine.start_thread() is False
    assert engine.wait_sampled(5.0) is True
    before = threading.active_count()
    engine.stop_thread()
    assert engine.thread_running is False
    assert threading.active_count() == before - 1


def test_sampler_task_start_and_cancel() -> None:
    """The asyncio sampler starts once per loop, samples, and is cancelled cleanly."""

    async def afetch(names: Sequence[str] | None) -> Mapping[str, Stats]:
        return {L: Stats(2, 3)}

    async def main() -> tuple[bool, bool, bool, int]:
        engine = WatcherEngine([L], delay=0.01, afetch=afetch, fetch=fixed({}))
        first = engine.ensure_task()
        second = engine.ensure_task()
        sampled = await engine.await_sampled(5.0)
        await engine.stop_task()
        rep = engine.report(L)
        assert rep is not None
        return first, second, sampled and not engine.task_running, rep.queued.max or 0

    assert asyncio.run(main()) == (True, False, True, 3)


# -- rendering -------------------------------------------------------------------


def test_format_helpers() -> None:
    """Numbers, dates, URL names and tail lines are spelled exactly as the Ruby original's."""
    assert [format_number(x) for x in (3, 1.5, 2.0, 2 / 3, None)] == [
        "3", "1.5", "2.0", "0.6666666666666666", "NaN",
    ]  # fmt: skip
    assert [format_number(x) for x in (1e15, 123456789012345.6, 1e-05, 0.0001)] == [
        "1.0e+15", "123456789012345.6", "1.0e-05", "0.0001",
    ]  # fmt: skip
    assert [ruby_round(x) for x in (2.5, 3.5, 2.4999, 0.49999999999999994)] == [3, 4, 2, 0]
    assert http_date(0.0) == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert listener_url("0.0.0.0:80") == "0.0.0.0%3A80"
    assert listener_url("/tmp/a b.sock") == "%2Ftmp%2Fa%20b.sock"
    assert tail_line(86400.0, L, 3, 4) == (
        b"1970-01-02T00:00:00Z 127.0.0.1:8080          3          4\n"
    )
    assert tail_line(0.0, L, 1234567890, 0) == (
        b"1970-01-01T00:00:00Z 127.0.0.1:8080  1234567890          0\n"
    )
    assert json.loads(tail_line(0.0, L, 1, 2, as_json=True)) == {
        "time": "1970-01-01T00:00:00Z",
        "listener": L,
        "active": 1,
        "queued": 2,
    }


def test_histogram_text_exact() -> None:
    """The text histogram is the aggregate gem's: 80 columns, ~ for gaps, a Total row."""
    text = histogram_text([(1, 2, 4), (2, 4, 0), (4, 8, 2), (8, 16, 0)])
    assert text == (
        "value |------------------------------------------------------------------| count\n"
        "    1 |@@@@                                                              |     4\n"
        "      ~\n"
        "    4 |@@                                                                |     2\n"
        "      ~\n"
        "Total |------------------------------------------------------------------|     6\n"
    )
    assert histogram_text([(1, 2, 0)]) == "Empty histogram"


def test_histogram_text_scales_bars() -> None:
    """Bars are one @ per sample until the fullest bucket outgrows the bar, then scaled down."""
    text = histogram_text([(1024, 2048, 1000), (2048, 4096, 100)])
    assert text.splitlines()[1:3] == [
        " 1024 |" + "@" * 66 + "|  1000",
        " 2048 |" + "@" * 6 + " " * 60 + "|   100",
    ]


# -- routing and endpoints ----------------------------------------------------------


def core_with(seq: Sequence[tuple[int, int]], clock: Clock | None = None) -> WatcherCore:
    clock = clock or Clock(1_000_000.0)
    core = WatcherCore([L], clock=clock, fetch=fixed({}), delay=1.0)
    for active, queued in seq:
        core.engine.record({L: Stats(active, queued)})
        clock.now += 1
    return core


def test_queued_txt_headers_and_body() -> None:
    """GET /queued/<L>.txt: the Ruby Watcher's headers, in its order and spelling, and its body."""
    core = core_with([(1, 0), (2, 4), (1, 4), (0, 2)])
    reply = core.handle("GET", "/queued/127.0.0.1:8080.txt", "", peer=LOCAL)
    assert isinstance(reply, Reply)
    assert reply.status == 200
    assert list(reply.headers) == [
        ("X-Count", "4"),
        ("X-Min", "0"),
        ("X-Max", "4"),
        ("X-Mean", "2.5"),
        ("X-Std-Dev", "1.9148542155126762"),
        ("X-Outliers-Low", "1"),
        ("X-Outliers-High", "0"),
        ("X-Last-Reset", http_date(1_000_000.0)),
        ("X-Current", "2"),
        ("X-First-Peak-At", http_date(1_000_001.0)),
        ("X-Last-Peak-At", http_date(1_000_002.0)),
        ("Expires", http_date(1_000_004.0)),
        ("Content-Type", "text/plain"),
        ("Content-Length", str(len(reply.body))),
    ]
    assert reply.body == histogram_text([(2, 4, 1), (4, 8, 2)]).encode()


def test_headers_before_any_sample_as_ruby_spells_them() -> None:
    """With no sample yet: X-Count 0, empty min/max, NaN mean and std dev, peaks at the reset."""
    core = core_with([])
    reply = core.handle("GET", "/active/127.0.0.1:8080.txt", "", peer=LOCAL)
    assert isinstance(reply, Reply)
    h = headers(reply)
    assert (h["X-Count"], h["X-Min"], h["X-Max"], h["X-Mean"], h["X-Std-Dev"]) == (
        "0", "", "", "NaN", "NaN",
    )  # fmt: skip
    assert (h["X-Current"], h["X-First-Peak-At"]) == ("0", http_date(1_000_000.0))
    assert h["Expires"] == http_date(1_000_001.0)
    assert reply.body == b"Empty histogram"


def test_active_json_and_html() -> None:
    """The .json variant carries the same numbers; the .html page is Ruby's table plus SVG."""
    core = core_with([(1, 0), (3, 0)])
    reply = core.handle("GET", "/active/127.0.0.1:8080.json", "", peer=LOCAL)
    assert isinstance(reply, Reply)
    doc = json.loads(reply.body)
    assert (doc["listener"], doc["kind"], doc["count"], doc["max"], doc["mean"]) == (
        L, "active", 2, 3, 2.0,
    )  # fmt: skip
    assert doc["std_dev"] == math.sqrt(2.0)
    assert doc["buckets"] == [{"low": 1, "high": 2, "count": 1}, {"low": 2, "high": 4, "count": 1}]
    assert [v for _, v in doc["history"]] == [1, 3]
    page = core.handle("GET", "/active/127.0.0.1:8080.html", "", base="/w", peer=LOCAL)
    assert isinstance(page, Reply)
    text = page.body.decode()
    h = headers(page)
    assert (h["Content-Type"], h["X-Max"]) == ("text/html", "3")
    assert f"<title>{core.host} - {L}</title>" in text
    assert "<tr><td>Max</td><td>3</td></tr>" in text
    assert "<tr><td>Std-Dev</td><td>1.4142135623730951</td></tr>" in text
    assert text.count("<svg") == 2
    assert 'action="/w/reset/127.0.0.1%3A8080"' in text
    # The only script is the page's own self-refresh, every delay (here 1 s).
    assert "<script" not in text.replace(PAGE_SCRIPT, "")
    assert '<body data-refresh="1">' in text
    assert text.endswith(PAGE_SCRIPT + "</body></html>\n")
    assert "http://" not in text.replace('"http://www.w3.org/', "")


def test_index_lists_listeners_with_links() -> None:
    """GET / lists the last sample's listeners sorted, current counts, links under the mount."""
    clock = Clock(1_000_000.0)
    core = WatcherCore(None, clock=clock, fetch=fixed({}), delay=1.0)
    core.engine.record({"b:2": Stats(1, 1)})
    core.engine.record({L: Stats(5, 7), "10.0.0.1:9": Stats(0, 0)}, at=1_000_010.0)
    reply = core.handle("GET", "/", "", base="/mon", peer=LOCAL)
    assert isinstance(reply, Reply)
    text = reply.body.decode()
    assert '<a href="/mon/queued/127.0.0.1%3A8080.html">7</a>' in text
    assert '<a href="/mon/active/127.0.0.1%3A8080.html">5</a>' in text
    assert '<a href="/mon/tail/127.0.0.1%3A8080.txt">127.0.0.1:8080</a>' in text
    assert text.index("10.0.0.1:9") < text.index("127.0.0.1:8080")
    assert "b:2" not in text
    assert f"<title>{core.host} - all interfaces</title>" in text
    assert "<h3>Updated at 1970-01-12T13:46:50Z</h3>" in text
    h = headers(reply)
    assert (h["Last-Modified"], h["Expires"]) == (http_date(1_000_010.0), http_date(1_000_011.0))
    assert h["Content-Type"] == "text/html"
    doc = json.loads(core.handle("GET", "/index.json", "", peer=LOCAL).body)  # type: ignore[union-attr]
    assert doc["listeners"] == {
        "10.0.0.1:9": {"active": 0, "queued": 0},
        L: {"active": 5, "queued": 7},
    }


def test_names_are_escaped_in_html() -> None:
    """A listener name with markup is HTML-escaped everywhere on the pages."""
    evil = "/tmp/<b>&'\".sock"
    clock = Clock()
    core = WatcherCore(None, clock=clock, fetch=fixed({}))
    core.engine.record({evil: Stats(1, 1)})
    for path in ("/", f"/active/{evil}.html"):
        reply = core.handle("GET", path, "", peer=LOCAL)
        assert isinstance(reply, Reply)
        text = reply.body.decode()
        assert "<b>" not in text
        assert "&lt;b&gt;&amp;&#x27;&quot;.sock" in text


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nope", 404),
        ("GET", "/active/10.0.0.1:1.txt", 404),
        ("GET", "/active/%zz<>.txt", 404),
        ("GET", "/active/\udcff.html", 404),
        ("GET", "/active/127.0.0.1:8080.xml", 404),
        ("GET", "/reset/127.0.0.1:8080", 404),
        ("POST", "/active/127.0.0.1:8080.txt", 404),
        ("POST", "/reset/10.0.0.1:1", 404),
        ("PUT", "/", 405),
        ("DELETE", "/tail/127.0.0.1:8080.txt", 405),
        ("OPTIONS", "/nope", 405),
    ],
)
def test_errors(method: str, path: str, status: int) -> None:
    """As in Ruby: GET/HEAD/POST route (else 404, never 500); other methods 405, with Allow."""
    reply = core_with([(1, 1)]).handle(method, path, "", peer=LOCAL)
    assert isinstance(reply, Reply)
    h = headers(reply)
    assert reply.status == status
    if status == 404:
        assert (reply.body, "Allow" in h) == (b"Not Found", False)
    else:
        assert (reply.body, h["Allow"]) == (b"Method Not Allowed", "GET, HEAD, POST")


def test_reset_redirects() -> None:
    """POST /reset/<L> clears it and answers 302 to the same-host Referer or the index."""
    core = core_with([(1, 1)])
    reply = core.handle("POST", "/reset/127.0.0.1:8080", "", base="/w", peer=LOCAL)
    assert isinstance(reply, Reply)
    assert (reply.status, headers(reply)["Location"], reply.body) == (
        302, "/w/", b"Redirecting to /w/",
    )  # fmt: skip
    assert core.engine.report(L).active.count == 0  # type: ignore[union-attr]
    back = "http://h:1/w/queued/x.html"
    reply = core.handle("POST", "/reset/127.0.0.1:8080", "", referer=back, host="h:1", peer=LOCAL)
    assert headers(reply)["Location"] == back  # type: ignore[union-attr]
    reply = core.handle(
        "POST", "/reset/127.0.0.1:8080", "", referer="http://evil/", host="h:1", peer=LOCAL
    )
    assert headers(reply)["Location"] == "/"  # type: ignore[union-attr]


def test_serve_waits_for_the_next_round_after_a_reset() -> None:
    """serve() redirects after a reset only once a new round came in, as Ruby's reset! did."""
    core = WatcherCore([L], clock=Clock(), fetch=fixed({L: (2, 3)}), delay=3600)
    try:
        assert core.serve("GET", "/", "", peer=LOCAL).status == 200  # type: ignore[union-attr]
        assert (core.engine.thread_running, core.engine.rounds) == (True, 1)
        feeder = threading.Timer(0.05, core.engine.record, ({L: Stats(4, 5)},))
        feeder.start()
        reply = core.serve("POST", "/reset/127.0.0.1:8080", "", peer=LOCAL)
        feeder.join()
    finally:
        core.engine.stop_thread()
    assert reply.status == 302  # type: ignore[union-attr]
    report = core.engine.report(L)
    assert report is not None
    assert (report.queued.count, report.queued.current) == (1, 5)


def test_tail_plan_and_thresholds() -> None:
    """Tail lines need active >= active_min and queued >= queued_min, read as Ruby's to_i."""
    core = core_with([(1, 1)])
    plan = core.handle("GET", "/tail/127.0.0.1:8080.txt", "active_min=2&queued_min=1", peer=LOCAL)
    assert isinstance(plan, TailPlan)
    assert (plan.active_min, plan.queued_min, plan.as_json) == (2, 1, False)
    assert plan.headers == (
        ("Content-Type", "text/plain"),
        ("Cache-Control", "no-transform"),
        ("Expires", "Thu, 01 Jan 1970 00:00:00 GMT"),
    )
    assert plan.line(0.0, {L: (1, 5)}) is None
    assert plan.line(0.0, {L: (2, 0)}) is None
    assert plan.line(0.0, {L: (2, 1)}) == tail_line(0.0, L, 2, 1)
    assert plan.line(0.0, {"other:1": (9, 9)}) is None
    for query, wanted in [
        ("active_min=abc", 0),
        ("active_min=-1", -1),
        ("active_min=%203x", 3),
        ("active_min=1_000", 1000),
        ("active_min=", 0),
    ]:
        got = core.handle("GET", "/tail/127.0.0.1:8080.txt", query, peer=LOCAL)
        assert isinstance(got, TailPlan)
        assert got.active_min == wanted


def feed_later(engine: WatcherEngine, clock: Clock, queued: Sequence[int]) -> threading.Thread:
    def feed() -> None:
        time.sleep(0.05)
        for q in queued:
            engine.record({L: Stats(1, q)})
            clock.now += 1

    thread = threading.Thread(target=feed)
    thread.start()
    return thread


def test_tail_generator_streams_and_unsubscribes() -> None:
    """The sync tail yields one line per qualifying round and unsubscribes on close."""
    clock = Clock(0.0)
    core = WatcherCore([L], clock=clock, fetch=fixed({}), delay=0.05)
    plan = core.handle("GET", "/tail/127.0.0.1:8080.txt", "queued_min=1", peer=LOCAL)
    assert isinstance(plan, TailPlan)
    gen = core.tail(plan, lambda: False)
    feeder = feed_later(core.engine, clock, (0, 2, 3))
    got = [next(gen), next(gen)]
    feeder.join()
    assert core.engine.subscribers == 1
    gen.close()
    assert core.engine.subscribers == 0
    assert got == [tail_line(1.0, L, 1, 2), tail_line(2.0, L, 1, 3)]


def test_tail_ends_when_the_probe_says_the_client_left() -> None:
    """With thresholds never met the sync tail still ends once gone() turns true."""
    clock = Clock(0.0)
    core = WatcherCore([L], clock=clock, fetch=fixed({}), delay=0.05)
    plan = core.handle("GET", "/tail/127.0.0.1:8080.txt", "queued_min=999", peer=LOCAL)
    assert isinstance(plan, TailPlan)
    asked: list[int] = []

    def gone() -> bool:
        asked.append(core.engine.subscribers)
        return len(asked) == 3

    feeder = feed_later(core.engine, clock, (1, 2, 3, 4, 5))
    assert list(core.tail(plan, gone)) == []
    feeder.join()
    assert (asked, core.engine.subscribers) == ([1, 1, 1], 0)


def test_tail_without_probe_has_a_bounded_lifetime(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a probe and without tail_max_seconds the stream ends after UNPROBED_TAIL_SECONDS."""
    import raindrops_core._watch_http as http

    monkeypatch.setattr(http, "UNPROBED_TAIL_SECONDS", 0.2)
    core = WatcherCore([L], clock=Clock(), fetch=fixed({}), delay=0.05)
    plan = core.handle("GET", "/tail/127.0.0.1:8080.txt", "queued_min=999", peer=LOCAL)
    assert isinstance(plan, TailPlan)
    assert (plan.max_seconds, list(core.tail(plan)), core.engine.subscribers) == (None, [], 0)


def test_tail_max_seconds_ends_stream() -> None:
    """With tail_max_seconds the stream ends by itself and leaves no subscription."""
    core = WatcherCore([L], clock=Clock(), fetch=fixed({}), delay=0.05, tail_max_seconds=0.2)
    plan = core.handle("GET", "/tail/127.0.0.1:8080.txt", "", peer=LOCAL)
    assert isinstance(plan, TailPlan)
    assert list(core.tail(plan, lambda: False)) == []
    assert core.engine.subscribers == 0


def test_async_tail_streams() -> None:
    """The async tail yields lines fed from another thread and unsubscribes on aclose."""
    core = WatcherCore([L], clock=Clock(0.0), fetch=fixed({}), delay=0.05)
    plan = core.handle("GET", "/tail/127.0.0.1:8080.json", "", peer=LOCAL)
    assert isinstance(plan, TailPlan)
    assert plan.headers[0] == ("Content-Type", "application/x-ndjson")

    async def main() -> bytes:
        agen = core.atail(plan)
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, core.engine.record, {L: Stats(4, 5)})
        line = await agen.__anext__()
        await agen.aclose()
        return line

    line = asyncio.run(main())
    assert json.loads(line) == {
        "time": "1970-01-01T00:00:00Z",
        "listener": L,
        "active": 4,
        "queued": 5,
    }
    assert core.engine.subscribers == 0


def test_tail_max_seconds_validated() -> None:
    """tail_max_seconds must be positive and finite."""
    with pytest.raises(ConfigError, match="tail_max_seconds must be"):
        WatcherCore([L], fetch=fixed({}), tail_max_seconds=0)


# -- the client-gone probe ---------------------------------------------------------


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A loopback TCP connection: (the client's end, the server's end)."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        client = socket.create_connection(srv.getsockname())
        server, _ = srv.accept()
        with client, server:
            yield client, server


def wait_for(predicate: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


@pytest.mark.linux
@pytest.mark.parametrize("poll", [True, False], ids=["pollrdhup", "peek"])
def test_probe_sees_a_client_that_left(
    tcp_pair: tuple[socket.socket, socket.socket], poll: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe says "there" for an idle or pipelining client and "gone" once it closed."""
    if not poll:
        monkeypatch.delattr(select, "POLLRDHUP", raising=False)
    client, server = tcp_pair
    gone = client_gone_probe(server)
    assert gone is not None
    assert gone() is False
    client.sendall(b"GET /next HTTP/1.1\r\n\r\n")  # a pipelined next request
    assert wait_for(lambda: server.recv(64, socket.MSG_PEEK) != b"")
    assert gone() is False
    client.close()
    if poll:  # POLLRDHUP sees the close even behind the unread request
        assert wait_for(gone) is True
        assert server.recv(64, socket.MSG_PEEK) == b"GET /next HTTP/1.1\r\n\r\n"
    else:  # a peek sees it once the server has read what came before
        assert server.recv(64) == b"GET /next HTTP/1.1\r\n\r\n"
        assert wait_for(gone) is True


@pytest.mark.linux
def test_probe_sees_a_reset(tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    """A client that resets the connection is gone too."""
    client, server = tcp_pair
    gone = client_gone_probe(server)
    assert gone is not None
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    client.close()
    assert wait_for(gone) is True


def test_probe_needs_a_socket() -> None:
    """Anything without a usable file descriptor gives no probe."""
    closed = socket.socket()
    closed.close()
    assert (client_gone_probe(None), client_gone_probe(object()), client_gone_probe(closed)) == (
        None, None, None,
    )  # fmt: skip


# -- LastDataRecv ---------------------------------------------------------------


@dataclass(frozen=True)
class Info:
    last_data_recv: int
    data_segs_out: int | None = 0


def test_last_data_recv_report() -> None:
    """As in Ruby: X-Count alone below two samples; rounded mean and sample std dev from two on."""
    ldr = LastDataRecvCore(segment="anonymous")
    ldr.record(3)
    one = ldr.reply("", None, as_json=False)
    assert list(one.headers) == [
        ("X-Count", "1"),
        ("Content-Type", "text/plain"),
        ("Content-Length", str(len(one.body))),
    ]
    ldr.record(5)
    ldr.record(10)
    reply = ldr.reply("", None, as_json=False)
    assert list(reply.headers)[:7] == [
        ("X-Count", "3"),
        ("X-Min", "3"),
        ("X-Max", "10"),
        ("X-Mean", "6"),
        ("X-Std-Dev", "4"),  # Ruby: 3.605551275463989.round
        ("X-Outliers-Low", "0"),
        ("X-Outliers-High", "0"),
    ]
    assert reply.body == histogram_text([(2, 4, 1), (4, 8, 1), (8, 16, 1)]).encode()
    doc = json.loads(ldr.reply("format=json", None, as_json=False).body)
    assert (doc["count"], doc["sum"], doc["min"], doc["max"]) == (3, 18, 3, 10)
    assert doc["std_dev"] == 3.605551275463989
    assert ldr.reply("format=xml", None, as_json=False).status == 400


def test_last_data_recv_rounds_halves_up_and_counts_zero_as_low_outlier() -> None:
    """X-Mean 2.5 rounds to 3 (Ruby, not banker's); 0 ms is a low outlier, not a bucket."""
    ldr = LastDataRecvCore(segment="anonymous")
    for ms in (0, 2, 3, 5):
        ldr.record(ms)
    h = headers(ldr.reply("", None, as_json=False))
    assert (h["X-Mean"], h["X-Std-Dev"], h["X-Outliers-Low"]) == ("3", "2", "1")


def test_last_data_recv_answer_routes_paths_and_any_method() -> None:
    """answer() is the report at path (text) and path.json, None elsewhere, for any method."""
    ldr = LastDataRecvCore(path="/ldr", segment="anonymous")
    ldr.record(4)
    text, js = ldr.answer("/ldr", "", None), ldr.answer("/ldr.json", "", None)
    assert text is not None
    assert js is not None
    assert (headers(text)["Content-Type"], json.loads(js.body)["count"]) == ("text/plain", 1)
    assert ldr.answer("/ldr", "", "application/json").body == js.body  # type: ignore[union-attr]
    assert (ldr.answer("/", "", None), ldr.answer("/ldr/x", "", None)) == (None, None)
    assert (ldr.not_found().status, ldr.not_found().body) == (404, b"Not Found")


def test_last_data_recv_records_first_requests_only() -> None:
    """A request is recorded only while the server has written nothing on its connection."""
    ldr = LastDataRecvCore(segment="anonymous")
    assert ldr.record_info(Info(7, data_segs_out=0)) is True
    assert ldr.record_info(Info(0, data_segs_out=1)) is False  # keep-alive: a later request
    assert ldr.record_info(Info(9, data_segs_out=None)) is True  # kernel older than 4.6
    assert ldr.record_info(None) is False
    snap = ldr.histogram.snapshot()
    assert (snap.count, snap.min, snap.max) == (2, 7, 9)


@pytest.mark.linux
def test_last_data_recv_record_socket_keep_alive(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    """On a real connection the first request counts and one after a response does not."""
    client, server = tcp_pair
    ldr = LastDataRecvCore(segment="anonymous")
    client.sendall(b"GET / HTTP/1.1\r\n\r\n")
    server.recv(100)
    assert ldr.record_socket(server) is True
    server.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
    client.recv(100)
    client.sendall(b"GET / HTTP/1.1\r\n\r\n")
    server.recv(100)
    assert ldr.record_socket(server) is False
    with socket.socket(socket.AF_UNIX) as unix:
        assert ldr.record_socket(unix) is False
    assert ldr.histogram.snapshot().count == 1


def test_last_data_recv_named_segment_shared(tmp_path: object) -> None:
    """Two cores on one segment path see each other's samples (as workers do)."""
    path = os.path.join(str(tmp_path), "ldr.seg")
    a = LastDataRecvCore(segment=path)
    b = LastDataRecvCore(segment=path)
    a.record(1)
    b.record(7)
    assert headers(a.reply("", None, as_json=False))["X-Count"] == "2"


@pytest.mark.parametrize(
    ("kwargs", "env", "message"),
    [
        ({"segment": 123}, None, "segment must be a path or 'anonymous', not 123"),
        (
            {"segment": "relative.seg"},
            None,
            "segment 'relative.seg' is not an absolute path; give one like "
            "'/dev/shm/myapp.raindrops', or 'anonymous'",
        ),
        (
            {},
            "rel.seg",
            "$RAINDROPS_LAST_DATA_RECV_SEGMENT: segment 'rel.seg' is not an absolute path",
        ),
        ({"path": "ldr"}, None, "path must be a string starting with '/', not 'ldr'"),
    ],
)
def test_last_data_recv_bad_options(
    kwargs: dict[str, object], env: str | None, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bad segment or path options raise ConfigError, with the middleware's segment messages."""
    if env is not None:
        monkeypatch.setenv("RAINDROPS_LAST_DATA_RECV_SEGMENT", env)
    with pytest.raises(ConfigError) as info:
        LastDataRecvCore(**kwargs)  # type: ignore[arg-type]
    assert str(info.value).startswith(message)


@pytest.mark.linux
def test_set_defer_accept() -> None:
    """TCP_DEFER_ACCEPT is set on TCP listeners and Unix sockets are left alone."""
    with socket.socket() as tcp, socket.socket(socket.AF_UNIX) as unix:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        assert tcp.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) == 0
        assert set_defer_accept(tcp, 2) is True
        assert tcp.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) > 0
        assert set_defer_accept(unix) is False
        with pytest.raises(ConfigError, match="seconds must be a positive int, not 0"):
            set_defer_accept(tcp, 0)


def test_an_idle_queue_histogram_shows_its_zero_samples() -> None:
    """Samples of 0 (the gem's low outliers) are drawn as a bar labelled 0, not "no samples"."""
    core = core_with([(1, 0), (2, 0), (1, 0), (1, 3)])
    page = core.handle("GET", f"/queued/{L}.html", "", peer=LOCAL)
    assert isinstance(page, Reply)
    text = page.body.decode()
    assert "no samples" not in text
    assert "<title>[0, 1): 3</title>" in text  # three samples of 0
    assert "<title>[2, 4): 1</title>" in text  # the one of 3
    # The gem's text histogram (the .txt page and <pre>) is left as Ruby writes it.
    assert headers(page)["X-Outliers-Low"] == "3"
    empty = core_with([])
    nothing = empty.handle("GET", f"/queued/{L}.html", "", peer=LOCAL)
    assert isinstance(nothing, Reply)
    assert "no samples" in nothing.body.decode()


def test_pages_refresh_every_sampling_delay() -> None:
    """Index and listener pages update themselves every delay (at least 1 s), JSON does not."""
    core = WatcherCore([L], clock=Clock(), fetch=fixed({}), delay=2.5)
    core.engine.record({L: Stats(1, 0)})
    for path in ("/", f"/active/{L}.html"):
        page = core.handle("GET", path, "", peer=LOCAL)
        assert isinstance(page, Reply)
        text = page.body.decode()
        assert '<body data-refresh="3">' in text
        assert '<noscript><meta http-equiv="refresh" content="3"></noscript>' in text
        assert text.endswith(PAGE_SCRIPT + "</body></html>\n")
    doc = core.handle("GET", "/index.json", "", peer=LOCAL)
    assert isinstance(doc, Reply)
    assert b"<script" not in doc.body
