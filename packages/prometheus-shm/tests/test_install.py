"""install(): prometheus_client's own classes keep their values in the segment."""

from __future__ import annotations

import logging
import os
import socket
import threading

import prometheus_shm
import pytest
from helpers import scrape, values
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    Summary,
    generate_latest,
    multiprocess,
)
from prometheus_client import (
    values as pc_values,
)
from prometheus_shm import ConfigError, NotInstalledError


def test_install_replaces_the_value_class_and_uninstall_restores_it() -> None:
    """While installed, new values are SharedValue; after uninstall, prometheus_client's own."""
    before = pc_values.ValueClass
    inst = prometheus_shm.install("anonymous", capacity=128, processes=4)
    assert pc_values.ValueClass is not before
    assert (inst.path, inst.capacity, inst.processes, inst.heap_bytes) == (
        "anonymous",
        128,
        4,
        65536,
    )
    c = Counter("a_total", "A.", registry=None)
    assert type(c._value).__name__ == "SharedValue"
    prometheus_shm.uninstall()
    assert pc_values.ValueClass is before
    assert type(Counter("b_total", "B.", registry=None)._value).__name__ == "MutexValue"


def test_install_twice_with_the_same_path_returns_the_same_installation(seg_path: str) -> None:
    """A second install() with the same path is a no-op; with another path a ConfigError."""
    first = prometheus_shm.install(seg_path)
    assert prometheus_shm.install(seg_path) is first
    with pytest.raises(ConfigError, match=f"already installed with path '{seg_path}', not None"):
        prometheus_shm.install()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"capacity": 0}, "capacity 0 out of range: allowed 1 <= capacity <= 16777216"),
        ({"capacity": 1.5}, "capacity must be an int, not float 1.5"),
        ({"processes": 0}, "processes 0 out of range: allowed 1 <= processes <= 65536"),
        ({"heap_bytes": 10}, "heap_bytes 10 out of range: allowed 1024 <= heap_bytes <="),
        ({"liveness_ttl": -1}, "liveness_ttl -1 out of range: allowed 0 <= liveness_ttl <= 3600 s"),
        (
            {"path": "relative/seg"},
            "path must be None \\(the server's segment\\), 'anonymous' or an absolute file name,"
            " not 'relative/seg'",
        ),
        ({"mode": 0o666}, "mode 0o666 lets group or others write; allowed: owner-writable only"),
    ],
)
def test_bad_install_arguments(kwargs: dict[str, object], message: str) -> None:
    """Each bad argument is a ConfigError (a ValueError) naming the value and what is allowed."""
    with pytest.raises(ConfigError, match=message):
        prometheus_shm.install(**kwargs)  # type: ignore[arg-type]
    assert prometheus_shm.installed() is None


def test_collector_without_install_says_so() -> None:
    """A Collector with no path where install() was not called raises NotInstalledError."""
    with pytest.raises(NotInstalledError, match=r"install\(\) was not called in this process"):
        prometheus_shm.Collector(None)


def test_counter_gauge_summary_histogram_in_one_process() -> None:
    """Every kind of value reads back through get() and the collector with exact values."""
    prometheus_shm.install("anonymous")
    c = Counter("req", "Requests.", ["route"], registry=None)
    c.labels("/a").inc()
    c.labels(route="/a").inc(0.5)
    c.labels("/b").inc(3)
    g = Gauge("temp", "Temp.", registry=None, multiprocess_mode="max")
    g.set(4.25)
    g.dec(0.25)
    s = Summary("size", "Size.", registry=None)
    s.observe(10)
    s.observe(2.5)
    h = Histogram("lat", "Latency.", registry=None, buckets=[0.1, 1.0])
    for v in (0.05, 0.5, 0.7, 3.0):
        h.observe(v)
    assert c.labels("/a")._value.get() == 1.5
    got = values(scrape())
    assert got == {
        ("req_total", (("route", "/a"),)): 1.5,
        ("req_total", (("route", "/b"),)): 3.0,
        ("temp", ()): 4.0,
        ("size_count", ()): 2.0,
        ("size_sum", ()): 12.5,
        ("lat_sum", ()): 4.25,
        ("lat_bucket", (("le", "0.1"),)): 1.0,
        ("lat_bucket", (("le", "1.0"),)): 3.0,
        ("lat_bucket", (("le", "+Inf"),)): 4.0,
        ("lat_count", ()): 4.0,
    }


def test_counter_reset_and_gauge_set_function_behave_as_in_multiprocess_mode() -> None:
    """reset() zeroes this process's share; a set_function gauge is not shared (as with files)."""
    prometheus_shm.install("anonymous")
    c = Counter("jobs", "Jobs.", registry=None)
    c.inc(7)
    c.reset()
    c.inc(2)
    g = Gauge("cb", "Callback.", registry=None, multiprocess_mode="sum")
    g.set_function(lambda: 42.0)
    assert values(scrape()) == {("jobs_total", ()): 2.0, ("cb", ()): 0.0}


def test_mostrecent_gauge_keeps_the_latest_set_and_refuses_inc() -> None:
    """A mostrecent gauge shows the last value set; inc() raises as prometheus_client says."""
    prometheus_shm.install("anonymous")
    g = Gauge("last", "Last.", registry=None, multiprocess_mode="mostrecent")
    assert values(scrape()) == {}
    g.set(3)
    g.set(9.5)
    with pytest.raises(RuntimeError, match="inc must not be used with the mostrecent mode"):
        g.inc()
    assert values(scrape()) == {("last", ()): 9.5}


def test_info_and_enum_are_shared() -> None:
    """Info and Enum, unsupported by multiprocess mode, show their latest value."""
    prometheus_shm.install("anonymous")
    i = Info("build", "Build.", ["app"], registry=None)
    i.labels("web").info({"version": "1.2.3", "commit": "abc"})
    plain = Info("plain", "Plain.", registry=None)
    e = Enum("state", "State.", registry=None, states=["starting", "running", "stopped"])
    assert values(scrape())[("state", (("state", "starting"),))] == 1.0
    e.state("running")
    got = values(scrape())
    assert got == {
        ("build_info", (("app", "web"), ("commit", "abc"), ("version", "1.2.3"))): 1.0,
        ("plain_info", ()): 1.0,
        ("state", (("state", "starting"),)): 0.0,
        ("state", (("state", "running"),)): 1.0,
        ("state", (("state", "stopped"),)): 0.0,
    }
    i.labels("web").info({"version": "1.2.4"})
    assert values(scrape())[("build_info", (("app", "web"), ("version", "1.2.4")))] == 1.0
    assert plain._value == {}


def test_exemplars_are_accepted_and_not_kept() -> None:
    """Exemplars are ignored, as in multiprocess mode, and never break an increment."""
    prometheus_shm.install("anonymous")
    c = Counter("ex", "Ex.", registry=None)
    c.inc(1, exemplar={"trace_id": "abc"})
    assert c._value.get_exemplar() is None
    assert values(scrape()) == {("ex_total", ()): 1.0}


def test_threads_increment_exactly() -> None:
    """8 threads x 10,000 inc(0.5) on one labelled counter, and observe(0.25), lose nothing."""
    prometheus_shm.install("anonymous")
    c = Counter("t", "T.", ["k"], registry=None)
    h = Histogram("th", "TH.", registry=None, buckets=[1.0])

    def work() -> None:
        child = c.labels("x")
        for _ in range(10_000):
            child.inc(0.5)
            h.observe(0.25)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = values(scrape())
    assert got[("t_total", (("k", "x"),))] == 40_000.0
    assert got[("th_sum", ())] == 20_000.0
    assert got[("th_count", ())] == 80_000.0


def test_multiprocess_names_point_at_prometheus_shm_while_installed() -> None:
    """multiprocess.MultiProcessCollector and mark_process_dead are ours while installed."""
    prometheus_shm.install("anonymous")
    Counter("mp", "MP.", registry=None).inc()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    multiprocess.mark_process_dead(os.getpid() + 10_000_000)
    assert generate_latest(registry).decode().splitlines()[2] == "mp_total 1.0"
    prometheus_shm.uninstall()
    assert multiprocess.MultiProcessCollector.__name__ == "MultiProcessCollector"


def test_self_metrics_describe_the_segment() -> None:
    """Collector(self_metrics=True) adds the segment's size, use and folds."""
    inst = prometheus_shm.install("anonymous", capacity=64, processes=2)
    Counter("sm", "SM.", registry=None).inc()
    got = values(scrape(self_metrics=True))
    assert got[("prometheus_shm_values", ())] == 1.0
    assert got[("prometheus_shm_values_capacity", ())] == float(inst.capacity)
    assert got[("prometheus_shm_process_rows", ())] == 1.0
    assert got[("prometheus_shm_process_rows_capacity", ())] == 2.0
    assert got[("prometheus_shm_rows_folded_total", ())] == 0.0
    assert got[("prometheus_shm_segment_bytes", ())] > 0


def test_install_finds_the_server_segment_from_the_listening_socket(
    seg_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """install() with no path uses <dir>/raindrops-<uid>/prometheus-<socket inode>."""
    monkeypatch.setenv("RAINDROPS_SHM_DIR", seg_dir)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        prometheus_shm.install()
        Counter("found", "Found.", registry=None).inc()
        info = prometheus_shm.segment_info()
        inode = os.fstat(listener.fileno()).st_ino
        assert info.path == os.path.join(
            seg_dir, f"raindrops-{os.geteuid()}", f"prometheus-{inode}"
        )
        assert info.local_reason is None
        assert os.path.isfile(info.path)
        assert values(scrape()) == {("found_total", ()): 1.0}


def test_no_server_socket_falls_back_to_own_memory_and_says_so(
    seg_dir: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No socket to find: one warning, counting goes on in private memory, the scrape says so."""
    monkeypatch.setenv("RAINDROPS_SHM_DIR", seg_dir)
    with caplog.at_level(logging.WARNING, logger="prometheus_shm"):
        prometheus_shm.install()
        c = Counter("alone", "Alone.", registry=None)
        c.inc()
        c.inc()
        text = scrape()
        scrape()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith("prometheus-shm: no shared segment for this server (found no")
    assert f"PID {os.getpid()} keeps its metrics in its own memory" in warnings[0]
    info = prometheus_shm.segment_info()
    assert info.path is None
    assert info.local_reason is not None
    got = values(text)
    assert got[("alone_total", ())] == 2.0
    assert (
        got[
            (
                "prometheus_shm_local_only",
                (("pid", str(os.getpid())), ("reason", info.local_reason)),
            )
        ]
        == 1.0
    )
    assert os.listdir(seg_dir) in ([], [f"raindrops-{os.geteuid()}"])


def test_an_existing_segment_keeps_its_own_sizes(seg_path: str) -> None:
    """Installing on an existing file with other sizes attaches with the file's sizes."""
    prometheus_shm.install(seg_path, capacity=64, processes=4)
    Counter("kept", "Kept.", registry=None).inc(3)
    prometheus_shm.uninstall()
    inst = prometheus_shm.install(seg_path, capacity=4096, processes=64)
    assert (inst.capacity, inst.processes) == (64, 4)
    info = prometheus_shm.segment_info()
    assert (info.capacity, info.rows, info.values_used) == (64, 4, 1)
    Counter("kept", "Kept.", registry=None).inc(1)
    assert values(scrape()) == {("kept_total", ()): 4.0}


def test_a_discovered_segment_that_cannot_be_used_falls_back_and_says_why(
    seg_dir: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A junk file where the server's segment should be: a warning naming it, local figures."""
    monkeypatch.setenv("RAINDROPS_SHM_DIR", seg_dir)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        inode = os.fstat(listener.fileno()).st_ino
        home = os.path.join(seg_dir, f"raindrops-{os.geteuid()}")
        os.mkdir(home, 0o700)
        junk = os.path.join(home, f"prometheus-{inode}")
        with open(junk, "wb") as f:
            f.write(b"\x00" * 8192)
        os.chmod(junk, 0o600)
        with caplog.at_level(logging.WARNING, logger="prometheus_shm"):
            prometheus_shm.install()
            Counter("still", "Still.", registry=None).inc()
        info = prometheus_shm.segment_info()
        assert info.path is None
        assert info.local_reason is not None
        assert info.local_reason.startswith(f"cannot use {junk}: [Errno 22] not a prometheus-shm")
        assert [r.levelno for r in caplog.records] == [logging.WARNING]
        assert values(scrape())[("still_total", ())] == 1.0
