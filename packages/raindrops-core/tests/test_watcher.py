"""The Watcher engine: exact aggregation, peaks, resets, routing, pages, tails, LastDataRecv."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pytest
from raindrops_core import ConfigError, Reply
from raindrops_core.watcher import (
    Aggregate,
    LastDataRecvCore,
    TailPlan,
    WatcherCore,
    WatcherEngine,
    format_number,
    histogram_text,
    http_date,
    listener_url,
    set_defer_accept,
    tail_line,
)

L = "127.0.0.1:8080"


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
    """A known sequence gives exact count, sum, min, max, mean and population std dev."""
    agg = Aggregate(reset_at=0.0)
    for t, v in enumerate([2, 4, 4, 4, 5, 5, 7, 9]):
        agg.add(v, float(t))
    s = agg.stats()
    assert (s.count, s.sum, s.min, s.max, s.current) == (8, 40, 2, 9, 9)
    assert s.mean == 5.0
    assert s.std_dev == 2.0
    assert (s.outliers_low, s.outliers_high) == (0, 0)


def test_aggregate_log2_buckets() -> None:
    """Bucket 0 holds 0 and 1, bucket k holds [2**k, 2**(k+1))."""
    agg = Aggregate(reset_at=0.0)
    for v in [0, 1, 2, 3, 4, 7, 8, 1023, 1024]:
        agg.add(v, 0.0)
    used = [(lo, hi, c) for lo, hi, c in agg.stats().buckets if c]
    assert used == [(0, 2, 2), (2, 4, 2), (4, 8, 2), (8, 16, 1), (512, 1024, 1), (1024, 2048, 1)]
    assert len(agg.stats().buckets) == 32


def test_aggregate_outliers_count_in_totals() -> None:
    """Negative samples are low outliers, samples >= 2**32 high ones; both count in totals."""
    agg = Aggregate(reset_at=0.0)
    for v in [-1, 5, 2**32]:
        agg.add(v, 0.0)
    s = agg.stats()
    assert (s.outliers_low, s.outliers_high, s.count, s.min, s.max) == (1, 1, 3, -1, 2**32)
    assert sum(c for _, _, c in s.buckets) == 1


def test_aggregate_peaks_first_and_last() -> None:
    """The peak times are when the maximum was first reached and last reached again."""
    agg = Aggregate(reset_at=0.0)
    for t, v in enumerate([1, 3, 2, 3, 1]):
        agg.add(v, 10.0 + t)
    s = agg.stats()
    assert (s.max, s.first_peak_at, s.last_peak_at) == (3, 11.0, 13.0)
    agg.add(4, 20.0)
    s = agg.stats()
    assert (s.max, s.first_peak_at, s.last_peak_at) == (4, 20.0, 20.0)


def test_aggregate_empty_and_single() -> None:
    """No sample: no min/max/mean/std dev; one sample: no std dev yet."""
    agg = Aggregate(reset_at=5.0)
    s = agg.stats()
    assert (s.count, s.min, s.max, s.mean, s.std_dev, s.current, s.last_reset) == (
        0, None, None, None, None, None, 5.0,
    )  # fmt: skip
    agg.add(3, 6.0)
    s = agg.stats()
    assert (s.count, s.mean, s.std_dev) == (1, 3.0, None)


def test_aggregate_std_dev_is_population() -> None:
    """The standard deviation divides by count, not count - 1."""
    agg = Aggregate(reset_at=0.0)
    for v in [1, 2, 3]:
        agg.add(v, 0.0)
    assert agg.stats().std_dev == math.sqrt(6) / 3  # sample std dev would be 1.0


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
    """Numbers, dates, URL names and tail lines are spelled exactly."""
    assert [format_number(x) for x in (3, 1.5, 2.0, 2 / 3)] == ["3", "1.5", "2", "0.666667"]
    assert http_date(0.0) == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert listener_url("0.0.0.0:80") == "0.0.0.0%3A80"
    assert listener_url("/tmp/a b.sock") == "%2Ftmp%2Fa%20b.sock"
    assert tail_line(86400.0, L, 3, 4) == b"1970-01-02T00:00:00Z 127.0.0.1:8080 3 4\n"
    assert json.loads(tail_line(0.0, L, 1, 2, as_json=True)) == {
        "time": "1970-01-01T00:00:00Z",
        "listener": L,
        "active": 1,
        "queued": 2,
    }


def test_histogram_text_exact() -> None:
    """The text histogram shows used buckets, bars scaled to the fullest, and outliers."""
    text = histogram_text([(0, 2, 4), (2, 4, 0), (4, 8, 2), (8, 16, 0)], 0, 1)
    assert text == (
        "value |-------------------------------------------------- count\n"
        "    0 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@ 4\n"
        "    2 |                                                   0\n"
        "    4 |@@@@@@@@@@@@@@@@@@@@@@@@@                          2\n"
        "outliers high: 1\n"
    )


# -- routing and endpoints ----------------------------------------------------------


def core_with(seq: Sequence[tuple[int, int]], clock: Clock | None = None) -> WatcherCore:
    clock = clock or Clock(1_000_000.0)
    core = WatcherCore([L], clock=clock, fetch=fixed({}), delay=1.0)
    for active, queued in seq:
        core.engine.record({L: Stats(active, queued)})
        clock.now += 1
    return core


def test_queued_txt_headers_and_body() -> None:
    """GET /queued/<L>.txt: every X-* header exact, Expires is the next sample, text body."""
    core = core_with([(1, 0), (2, 4), (1, 4), (0, 2)])
    reply = core.handle("GET", "/queued/127.0.0.1:8080.txt", "")
    assert isinstance(reply, Reply)
    h = headers(reply)
    assert reply.status == 200
    assert h["X-Count"] == "4"
    assert h["X-Min"] == "0"
    assert h["X-Max"] == "4"
    assert h["X-Mean"] == "2.5"
    assert h["X-Std-Dev"] == format_number(math.sqrt(2.75))
    assert (h["X-Outliers-Low"], h["X-Outliers-High"], h["X-Current"]) == ("0", "0", "2")
    assert h["X-First-Peak-At"] == http_date(1_000_001.0)
    assert h["X-Last-Peak-At"] == http_date(1_000_002.0)
    assert h["X-Last-Reset"] == http_date(1_000_000.0)
    assert h["Expires"] == http_date(1_000_004.0)
    assert h["Content-Type"] == "text/plain; charset=utf-8"
    assert h["Content-Length"] == str(len(reply.body))
    assert reply.body == histogram_text([(0, 2, 1), (2, 4, 1), (4, 8, 2)]).encode()


def test_active_json_and_html() -> None:
    """The .json variant carries the same numbers; the .html page escapes and draws SVG."""
    core = core_with([(1, 0), (3, 0)])
    reply = core.handle("GET", "/active/127.0.0.1:8080.json", "")
    assert isinstance(reply, Reply)
    doc = json.loads(reply.body)
    assert (doc["listener"], doc["kind"], doc["count"], doc["max"], doc["mean"]) == (
        L, "active", 2, 3, 2.0,
    )  # fmt: skip
    assert doc["buckets"] == [{"low": 0, "high": 2, "count": 1}, {"low": 2, "high": 4, "count": 1}]
    assert [v for _, v in doc["history"]] == [1, 3]
    page = core.handle("GET", "/active/127.0.0.1:8080.html", "", base="/w")
    assert isinstance(page, Reply)
    text = page.body.decode()
    assert headers(page)["Content-Type"] == "text/html; charset=utf-8"
    assert text.count("<svg") == 2
    assert 'action="/w/reset/127.0.0.1%3A8080"' in text
    assert "<script" not in text
    assert "http://" not in text.replace('"http://www.w3.org/', "")


def test_index_lists_listeners_with_links() -> None:
    """GET / lists each listener with its current counts, links under the mount point."""
    core = core_with([(5, 7)])
    reply = core.handle("GET", "/", "", base="/mon")
    assert isinstance(reply, Reply)
    text = reply.body.decode()
    assert '<a href="/mon/queued/127.0.0.1%3A8080.html">7</a>' in text
    assert '<a href="/mon/active/127.0.0.1%3A8080.html">5</a>' in text
    assert '<a href="/mon/tail/127.0.0.1%3A8080.txt">127.0.0.1:8080</a>' in text
    doc = json.loads(core.handle("GET", "/index.json", "").body)  # type: ignore[union-attr]
    assert doc["listeners"] == {L: {"active": 5, "queued": 7}}


def test_names_are_escaped_in_html() -> None:
    """A listener name with markup is HTML-escaped everywhere on the pages."""
    evil = "/tmp/<b>&'\".sock"
    clock = Clock()
    core = WatcherCore(None, clock=clock, fetch=fixed({}))
    core.engine.record({evil: Stats(1, 1)})
    for path in ("/", f"/active/{evil}.html"):
        reply = core.handle("GET", path, "")
        assert isinstance(reply, Reply)
        text = reply.body.decode()
        assert "<b>" not in text
        assert "&lt;b&gt;&amp;&#x27;&quot;.sock" in text


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("GET", "/nope", 404, None),
        ("GET", "/active/10.0.0.1:1.txt", 404, None),
        ("GET", "/active/%zz<>.txt", 404, None),
        ("GET", "/active/\udcff.html", 404, None),
        ("GET", "/active/127.0.0.1:8080.xml", 404, None),
        ("POST", "/active/127.0.0.1:8080.txt", 405, "GET, HEAD"),
        ("PUT", "/", 405, "GET, HEAD"),
        ("DELETE", "/tail/127.0.0.1:8080.txt", 405, "GET, HEAD"),
        ("GET", "/reset/127.0.0.1:8080", 405, "POST"),
        ("POST", "/reset/10.0.0.1:1", 404, None),
    ],
)
def test_errors(method: str, path: str, status: int, allow: str | None) -> None:
    """Unknown paths and listeners are 404 (never 500); wrong methods 405 with Allow."""
    reply = core_with([(1, 1)]).handle(method, path, "")
    assert isinstance(reply, Reply)
    assert reply.status == status
    assert headers(reply).get("Allow") == allow


def test_reset_redirects() -> None:
    """POST /reset/<L> clears it and answers 303 to the same-host Referer or the index."""
    core = core_with([(1, 1)])
    reply = core.handle("POST", "/reset/127.0.0.1:8080", "", base="/w")
    assert isinstance(reply, Reply)
    assert (reply.status, headers(reply)["Location"]) == (303, "/w/")
    assert core.engine.report(L).active.count == 0  # type: ignore[union-attr]
    back = "http://h:1/w/queued/x.html"
    reply = core.handle("POST", "/reset/127.0.0.1:8080", "", referer=back, host="h:1")
    assert headers(reply)["Location"] == back  # type: ignore[union-attr]
    reply = core.handle("POST", "/reset/127.0.0.1:8080", "", referer="http://evil/", host="h:1")
    assert headers(reply)["Location"] == "/"  # type: ignore[union-attr]


def test_tail_plan_and_thresholds() -> None:
    """Tail lines need active >= active_min and queued >= queued_min; bad numbers are 400."""
    core = core_with([(1, 1)])
    plan = core.handle("GET", "/tail/127.0.0.1:8080.txt", "active_min=2&queued_min=1")
    assert isinstance(plan, TailPlan)
    assert (plan.active_min, plan.queued_min, plan.as_json) == (2, 1, False)
    assert plan.line(0.0, {L: (1, 5)}) is None
    assert plan.line(0.0, {L: (2, 0)}) is None
    assert plan.line(0.0, {L: (2, 1)}) == b"1970-01-01T00:00:00Z 127.0.0.1:8080 2 1\n"
    assert plan.line(0.0, {"other:1": (9, 9)}) is None
    bad = core.handle("GET", "/tail/127.0.0.1:8080.txt", "active_min=-1")
    assert isinstance(bad, Reply)
    assert (bad.status, bad.body) == (
        400,
        b"400 Bad Request: active_min must be a non-negative integer, not '-1'\n",
    )


def test_tail_generator_streams_and_unsubscribes() -> None:
    """The sync tail yields one line per qualifying round and unsubscribes on close."""
    clock = Clock(0.0)
    core = WatcherCore([L], clock=clock, fetch=fixed({}), delay=0.05)
    plan = core.handle("GET", "/tail/127.0.0.1:8080.txt", "queued_min=1")
    assert isinstance(plan, TailPlan)
    gen = core.tail(plan)
    got: list[bytes] = []

    def feed() -> None:
        time.sleep(0.05)
        for q in (0, 2, 3):
            core.engine.record({L: Stats(1, q)})
            clock.now += 1

    feeder = threading.Thread(target=feed)
    feeder.start()
    got.append(next(gen))
    got.append(next(gen))
    feeder.join()
    assert core.engine.subscribers == 1
    gen.close()
    assert core.engine.subscribers == 0
    assert got == [
        b"1970-01-01T00:00:01Z 127.0.0.1:8080 1 2\n",
        b"1970-01-01T00:00:02Z 127.0.0.1:8080 1 3\n",
    ]


def test_tail_max_seconds_ends_stream() -> None:
    """With tail_max_seconds the stream ends by itself and leaves no subscription."""
    core = WatcherCore([L], clock=Clock(), fetch=fixed({}), delay=0.05, tail_max_seconds=0.2)
    plan = core.handle("GET", "/tail/127.0.0.1:8080.txt", "")
    assert isinstance(plan, TailPlan)
    began = time.monotonic()
    assert list(core.tail(plan)) == []
    assert time.monotonic() - began < 5
    assert core.engine.subscribers == 0


def test_async_tail_streams() -> None:
    """The async tail yields lines fed from another thread and unsubscribes on aclose."""
    core = WatcherCore([L], clock=Clock(0.0), fetch=fixed({}), delay=0.05)
    plan = core.handle("GET", "/tail/127.0.0.1:8080.json", "")
    assert isinstance(plan, TailPlan)

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


# -- LastDataRecv ---------------------------------------------------------------


def test_last_data_recv_report() -> None:
    """X-Count alone below two samples; all headers and a histogram from two on."""
    ldr = LastDataRecvCore(segment="anonymous")
    ldr.record(3)
    one = ldr.reply("GET", "", None, as_json=False)
    assert headers(one)["X-Count"] == "1"
    assert "X-Min" not in headers(one)
    ldr.record(5)
    ldr.record(10)
    reply = ldr.reply("GET", "", None, as_json=False)
    h = headers(reply)
    assert (h["X-Count"], h["X-Min"], h["X-Max"], h["X-Mean"]) == ("3", "3", "10", "6")
    assert h["X-Std-Dev"] == format_number(math.sqrt(26 / 3))
    assert (h["X-Outliers-Low"], h["X-Outliers-High"]) == ("0", "0")
    assert reply.body == histogram_text([(2, 4, 1), (4, 8, 1), (8, 16, 1)]).encode()
    doc = json.loads(ldr.reply("GET", "format=json", None, as_json=False).body)
    assert (doc["count"], doc["sum"], doc["min"], doc["max"]) == (3, 18, 3, 10)
    assert ldr.reply("POST", "", None, as_json=False).status == 405
    assert ldr.reply("GET", "format=xml", None, as_json=False).status == 400


def test_last_data_recv_named_segment_shared(tmp_path: object) -> None:
    """Two cores on one segment path see each other's samples (as workers do)."""
    import os

    path = os.path.join(str(tmp_path), "ldr.seg")
    a = LastDataRecvCore(segment=path)
    b = LastDataRecvCore(segment=path)
    a.record(1)
    b.record(7)
    assert headers(a.reply("GET", "", None, as_json=False))["X-Count"] == "2"
    with pytest.raises(ConfigError, match="not an absolute path"):
        LastDataRecvCore(segment="relative.seg")


@pytest.mark.linux
def test_set_defer_accept() -> None:
    """TCP_DEFER_ACCEPT is set on TCP listeners and Unix sockets are left alone."""
    import socket

    with socket.socket() as tcp, socket.socket(socket.AF_UNIX) as unix:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        assert set_defer_accept(tcp, 2) is True
        assert tcp.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) > 0
        assert set_defer_accept(unix) is False
