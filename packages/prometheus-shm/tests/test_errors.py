"""Every bad input gets a clear error where it is made, and the other metrics stay intact."""

from __future__ import annotations

import errno
import logging
import os

import prometheus_shm
import pytest
from helpers import scrape, values
from prometheus_client import Counter, Histogram
from prometheus_shm import (
    LabelValueTooLongError,
    SegmentLayoutError,
    SeriesTableFullError,
    UnsafeSegmentError,
)
from shm_counters import Cells, Counters, SegmentError


def test_a_full_series_table_fails_where_the_series_is_made() -> None:
    """The value past capacity raises SeriesTableFullError naming it; the others keep counting."""
    prometheus_shm.install("anonymous", capacity=3)
    c = Counter("req", "Requests.", ["route"], registry=None)
    for route in ("/a", "/b", "/c"):
        c.labels(route).inc()
    with pytest.raises(SeriesTableFullError) as e:
        c.labels("/d")
    assert str(e.value) == (
        'cannot add req_total{route="/d"}: the series table of the anonymous segment is full'
        " (3 of capacity=3 values used); install(capacity=...) sets a larger one for a new segment"
    )
    assert isinstance(e.value, RuntimeError)
    c.labels("/a").inc(2)
    assert values(scrape()) == {
        ("req_total", (("route", "/a"),)): 3.0,
        ("req_total", (("route", "/b"),)): 1.0,
        ("req_total", (("route", "/c"),)): 1.0,
    }
    with pytest.raises(SeriesTableFullError):
        c.labels("/d")  # still refused, never half made


def test_a_histogram_that_does_not_fit_is_not_shown_half_made() -> None:
    """A histogram child whose buckets run out of room raises, and none of its samples appear."""
    prometheus_shm.install("anonymous", capacity=6)
    done = Histogram("h1", "One.", ["k"], registry=None, buckets=[1.0, 2.0])  # sum + 3 buckets
    done.labels("x").observe(1.5)
    late = Histogram("h2", "Two.", ["k"], registry=None, buckets=[1.0, 2.0])
    with pytest.raises(SeriesTableFullError, match=r'cannot add h2_bucket\{k="y",le="2.0"\}'):
        late.labels("y")
    assert values(scrape()) == {
        ("h1_sum", (("k", "x"),)): 1.5,
        ("h1_bucket", (("k", "x"), ("le", "1.0"))): 0.0,
        ("h1_bucket", (("k", "x"), ("le", "2.0"))): 1.0,
        ("h1_bucket", (("k", "x"), ("le", "+Inf"))): 1.0,
        ("h1_count", (("k", "x"),)): 1.0,
    }


def test_a_full_heap_names_its_size() -> None:
    """Names that do not fit the heap raise SeriesTableFullError naming heap_bytes."""
    prometheus_shm.install("anonymous", capacity=100, heap_bytes=1024)
    c = Counter("n", "N.", ["v"], registry=None)
    for i in range(3):  # about 270 bytes each
        c.labels("x" * 200 + str(i))
    with pytest.raises(
        SeriesTableFullError, match=r"of heap_bytes=1024 left\); install\(heap_bytes"
    ):
        c.labels("x" * 200 + "3")
    c.labels("x" * 200 + "0").inc()
    assert values(scrape())[("n_total", (("v", "x" * 200 + "0"),))] == 1.0


def test_a_label_value_too_long_is_refused_before_anything_is_written() -> None:
    """A label value over 1024 bytes raises LabelValueTooLongError; the table is untouched."""
    prometheus_shm.install("anonymous")
    c = Counter("lv", "LV.", ["path"], registry=None)
    c.labels("ok").inc()
    with pytest.raises(LabelValueTooLongError) as e:
        c.labels("é" * 600)
    assert str(e.value) == (
        "label 'path' of metric 'lv' is 1200 bytes long (UTF-8); at most 1024 are allowed"
    )
    assert isinstance(e.value, ValueError)
    assert prometheus_shm.segment_info().values_used == 1
    assert values(scrape()) == {("lv_total", (("path", "ok"),)): 1.0}


def test_a_help_text_too_long_is_refused() -> None:
    """A series whose key exceeds 16 KiB (a huge help text) raises naming the metric."""
    prometheus_shm.install("anonymous")
    with pytest.raises(LabelValueTooLongError, match=r"series of metric 'big' takes 2\d{4} bytes"):
        Counter("big", "h" * 20_000, registry=None)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_a_segment_of_another_user_is_refused(seg_path: str) -> None:
    """A segment file owned by another uid raises UnsafeSegmentError (EPERM) naming the owner."""
    prometheus_shm.install(seg_path)
    prometheus_shm.uninstall()
    os.chown(seg_path, 12345, 12345)
    with pytest.raises(UnsafeSegmentError) as e:
        prometheus_shm.install(seg_path)
    assert e.value.errno == errno.EPERM
    assert e.value.filename == seg_path
    assert e.value.strerror == (
        "segment is a regular file owned by uid 12345 with mode 0o600; a segment must be a"
        " regular file owned by uid 0 (root) with no group or other write permission"
    )
    assert prometheus_shm.installed() is None


def test_a_segment_others_may_write_or_a_symlink_is_refused(seg_path: str, seg_dir: str) -> None:
    """A group/other-writable segment, or a symlink to one, raises UnsafeSegmentError."""
    prometheus_shm.install(seg_path)
    prometheus_shm.uninstall()
    os.chmod(seg_path, 0o620)
    with pytest.raises(UnsafeSegmentError, match=r"with mode 0o620; a segment must be a regular"):
        prometheus_shm.install(seg_path)
    os.chmod(seg_path, 0o600)
    link = os.path.join(seg_dir, "link")
    os.symlink(seg_path, link)
    with pytest.raises(UnsafeSegmentError, match="segment path is a symbolic link") as e:
        prometheus_shm.install(link)
    assert e.value.errno == errno.ELOOP


def test_a_segment_of_another_layout_is_refused(seg_path: str) -> None:
    """Counters, other Cells, another layout version or junk: SegmentLayoutError EINVAL."""
    Counters(8, path=seg_path)
    with pytest.raises(SegmentLayoutError) as e:
        prometheus_shm.install(seg_path)
    assert (e.value.errno, e.value.filename) == (errno.EINVAL, seg_path)
    assert e.value.strerror == (
        "not a prometheus-shm segment"
        " (segment holds plain counters, not cells tagged 'prometheus_shm_v1')"
    )
    os.unlink(seg_path)
    Cells(64, path=seg_path, tag="something_else")
    with pytest.raises(SegmentLayoutError, match="fields \\(something_else\\)"):
        prometheus_shm.install(seg_path)
    os.unlink(seg_path)
    prometheus_shm.install(seg_path)
    prometheus_shm.uninstall()
    raw = Cells.attach(seg_path, tag="prometheus_shm_v1")
    raw.store(1, 2)
    with pytest.raises(SegmentLayoutError, match="prometheus-shm segment layout 2, this reads 1"):
        prometheus_shm.install(seg_path)
    os.unlink(seg_path)
    with open(seg_path, "wb") as f:
        f.write(b"\x00" * 4096)
    os.chmod(seg_path, 0o600)
    with pytest.raises(SegmentLayoutError, match="not a prometheus-shm segment"):
        prometheus_shm.install(seg_path)
    assert prometheus_shm.installed() is None


def test_a_collector_on_a_missing_segment_says_so(seg_path: str) -> None:
    """Collector(path=...) on a missing file raises shm-counters' SegmentError ENOENT."""
    with pytest.raises(SegmentError) as e:
        prometheus_shm.Collector(None, seg_path)
    assert e.value.errno == errno.ENOENT


def test_a_corrupt_table_entry_never_breaks_the_scrape(caplog: pytest.LogCaptureFixture) -> None:
    """Junk after the last entry (a damaged segment) is logged once; earlier series still show."""
    from prometheus_shm import _layout, _runtime, _store

    prometheus_shm.install("anonymous")
    Counter("good", "Good.", registry=None).inc(4)
    store = _runtime.active().store
    cells, geo = store.cells, store.geo
    used = cells.load_sc(_layout.H_USED_HEAP)
    cells.store_many(geo.heap + used // 8, [1 | 1 << 40, 8])
    cells.write_bytes(geo.heap + used // 8 + 2, b"not json")
    cells.store_sc(_layout.H_USED_HEAP, used + 24)
    fresh = _store.Store(cells, geo, None)
    with caplog.at_level(logging.ERROR, logger="prometheus_shm._store"):
        fresh.sync()
        fresh.sync()
    assert [e.metric_name for e in fresh.entries] == ["good"]
    assert fresh.corrupt is not None
    assert fresh.corrupt.startswith("series table entry at byte")
    assert len(caplog.records) == 1
    assert values(scrape()) == {("good_total", ()): 4.0}
