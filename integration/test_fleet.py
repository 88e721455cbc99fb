"""Three hosts, their exporters and a real Prometheus with the shipped rules: the fleet test.

Three hosts on one machine, each a mount namespace of its own with a private
``/dev/shm`` (``unshare --mount``: root), each on its own loopback address
and nothing else (127.0.0.11, .12, .13), each running a server and its
``raindrops-exporter``, started from their own command lines:

- ``web-1``, 127.0.0.11: gunicorn, 4 sync workers; a load of 16 clients
  looping on 200 ms requests saturates it (every worker busy, a few
  connections queued, far from its backlog of 2048);
- ``web-2``, 127.0.0.12: ``uvicorn --workers 2 --backlog 8``, moderately
  busy (one client, 50 ms requests with pauses), then a burst: both workers
  blocked by a CPU-bound request, 40 connections opened at once; its queue
  fills (Linux holds backlog + 1 = 9) and the kernel drops the rest's SYNs;
- ``web-3``, 127.0.0.13: gunicorn, 2 sync workers, moderately busy.

The three share the machine's network namespace, as the issue asks (only
loopback addresses), so their exporters report one and the same listen
overflow counter (asserted: it rises on all three): this is why the overflow
alert names the listener seen at its backlog while the counter rose (see
``docs/operating-a-fleet.md``, "Listen overflows: whose?"); tested here exactly.

Debian's ``prometheus`` runs on a free loopback port with a generated config
(1 s scrapes and evaluations, its own temporary data directory) and the
shipped rules, every duration divided by :data:`FACTOR` (``for: 5m`` is
20 s, ``[1m]`` 4 s; :func:`fleet.scaled_rules`; the unit tests in
``ops/prometheus/raindrops.rules.test.yml`` check the real durations). Its
targets carry the labels the Prometheus Operator gives a PodMonitor's
(``job="shop/raindrops-exporter"``, ``namespace``, ``pod``), so the
Kubernetes examples' queries run verbatim. Asserted through its HTTP API:

- every rule evaluates without error;
- the fleet's recording rules equal, at each evaluation, the sum of what the
  three exporters reported (their stored samples; a sample whose scrape may
  still have been in flight at that instant may be read as the one before,
  as Prometheus 2 does); the fleet rates and ratio equal the sum (quotient)
  of the instance rules at the same evaluation;
- RaindropsWorkersSaturated fires for web-1 only; RaindropsListenQueueOverflow
  and RaindropsListenQueueHalfFull for web-2 only; nothing fires for web-3,
  nor anything else for the others;
- every expression of the Grafana dashboard and of the Kubernetes examples
  evaluates and returns data for the loaded host;
- after the load, everything returns to idle (calling, writing, busy, queued
  0 in the fleet rules, and in each exporter's own ``/metrics``) and every
  alert resolves;
- web-3's exporter stopped: RaindropsExporterDown fires for web-3 only.

Skipped with the reason where ``unshare``, ``nsenter`` or ``prometheus`` is
missing or the test is not root; under CI (``$CI``) that is a failure.
Bounded: every wait has a deadline; the whole test runs in well under two
minutes on the 2-core development machine (timings printed with ``-s``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from exporter_harness import RunningExporter, exporter, samples
from fleet import (
    Host,
    Load,
    PromAPI,
    Series,
    close_enough,
    dashboard_exprs,
    dashboard_variable_queries,
    host,
    kubernetes_queries,
    prometheus,
    recording_names,
    scaled_rules,
    substitute,
)
from servers import Server, launch, tcp

FACTOR = 15
JOB = "shop/raindrops-exporter"
NAMESPACE = "shop"
HOSTS = (("web-1", "127.0.0.11"), ("web-2", "127.0.0.12"), ("web-3", "127.0.0.13"))
BACKLOG = 8
BURST = 40
#: Fleet recording rules that are sums of one exporter gauge.
FLEET_SUMS = {
    "job:raindrops_calling:sum": "raindrops_calling",
    "job:raindrops_writing:sum": "raindrops_writing",
    "job:raindrops_workers:sum": "raindrops_workers",
    "job:raindrops_workers_busy:sum": "raindrops_workers_busy",
    "job:raindrops_listener_queued:sum": "raindrops_listener_queued",
    "job:raindrops_listener_backlog:sum": "raindrops_listener_backlog",
}
#: Fleet rates that are sums of the instance rule of the same name.
FLEET_RATES = [
    "raindrops_listen_overflows:rate1m",
    "raindrops_listen_drops:rate1m",
    "process_utilization_requests:rate1m",
    "process_utilization_busy_seconds:rate1m",
    "raindrops_workers_reclaimed:rate5m",
]
EXPECTED_FIRING = {
    ("RaindropsWorkersSaturated", "web-1"),
    ("RaindropsListenQueueOverflow", "web-2"),
    ("RaindropsListenQueueHalfFull", "web-2"),
}


def _skip_reason() -> str | None:
    if sys.platform != "linux":
        return "needs Linux (mount namespaces, netlink)"
    if os.geteuid() != 0:
        return "needs root: each host is a mount namespace with a tmpfs on /dev/shm"
    for tool, package in (
        ("unshare", "util-linux"),
        ("nsenter", "util-linux"),
        ("prometheus", "prometheus"),
    ):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian's {package} package)"
    return None


pytestmark = [
    pytest.mark.linux,
    pytest.mark.slow,
    pytest.mark.timeout(300),
]


@pytest.fixture
def fleet_ready() -> None:
    reason = _skip_reason()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"the fleet test must run in CI: {reason} (.ci/run installs prometheus)")
    pytest.skip(reason)


class Clock:
    """Phase timings of one run, printed at the end (``pytest -s``)."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.marks: list[tuple[str, float]] = []

    def mark(self, what: str) -> None:
        self.marks.append((what, time.monotonic() - self.start))

    def report(self) -> str:
        return ", ".join(f"{what} {at:.1f}s" for what, at in self.marks)


class Watch:
    """Every (alert, pod, state) Prometheus reported, polled between the test's steps."""

    def __init__(self, api: PromAPI) -> None:
        self.api = api
        self.seen: set[tuple[str, str, str]] = set()
        self.first_firing: dict[tuple[str, str], float] = {}

    def poll(self) -> list[dict[str, Any]]:
        alerts = self.api.alerts()
        for a in alerts:
            key = (a["labels"]["alertname"], a["labels"].get("pod", ""))
            self.seen.add((*key, a["state"]))
            if a["state"] == "firing":
                self.first_firing.setdefault(key, time.time())
        return alerts

    def firing(self) -> set[tuple[str, str]]:
        return {(n, p) for n, p, s in self.seen if s == "firing"}

    def wait(self, done: Callable[[list[dict[str, Any]]], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            alerts = self.poll()
            if done(alerts):
                return
            if time.monotonic() > deadline:
                states = sorted(
                    (a["labels"]["alertname"], a["labels"].get("pod"), a["state"]) for a in alerts
                )
                raise AssertionError(f"{what}: not within {timeout}s; active alerts {states}")
            time.sleep(0.5)


def _firing(alerts: list[dict[str, Any]], name: str, pod: str) -> bool:
    return any(
        a["labels"]["alertname"] == name
        and a["labels"].get("pod") == pod
        and a["state"] == "firing"
        for a in alerts
    )


def _block_every_worker(srv: Server, gates: Path, workers: int) -> list[socket.socket]:
    """A CPU-bound request on each worker (asserted by PID): none accepts any more."""
    conns, pids = [], set()
    for i in range(workers):
        conn = srv.connect(timeout=30)
        conn.sendall(
            f"GET /block?gate=go&id={i} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
        )
        conns.append(conn)
        mark = gates / f"pid-{i}"
        deadline = time.monotonic() + 15
        while not mark.exists():
            assert time.monotonic() < deadline, f"request {i} never reached a worker"
            time.sleep(0.01)
        pids.add(int(mark.read_text()))
    assert len(pids) == workers, pids
    return conns


def _burst(address: tuple[str, int], n: int) -> list[socket.socket]:
    """``n`` connections opened at once, without waiting: queued, or their SYNs dropped."""
    out = []
    for _ in range(n):
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.setblocking(False)
        c.connect_ex(address)
        out.append(c)
    return out


def _exact_sums(api: PromAPI, at: float, seconds: float) -> tuple[int, int, int]:
    """Each fleet sum equals what the exporters reported at that evaluation.

    Returns how many evaluations were checked, how many were not 0, and how
    many matched only with a sample read as the one before it (its scrape in
    flight at that instant).
    """
    durations = {
        s.labels["instance"]: s
        for s in api.samples(f'scrape_duration_seconds{{job="{JOB}"}}', seconds, at)
    }

    def in_flight(series: Series, t: float) -> float:
        scrape = durations[series.labels["instance"]]
        took = max((v for ts, v in scrape.values if abs(ts - t) < 0.5), default=1.0)
        return took + 0.2

    checked = nonzero = late = 0
    for record, raw in FLEET_SUMS.items():
        (rule,) = api.samples(f'{record}{{job="{JOB}"}}', seconds, at)
        series = api.samples(f'{raw}{{job="{JOB}"}}', seconds, at)
        assert len({s.labels["instance"] for s in series}) == len(HOSTS), (raw, series)
        for t, value in rule.values:
            options = []
            for s in series:
                before = [ts for ts, _ in s.values if ts <= t]
                margin = in_flight(s, before[-1]) if before else 0.0
                options.append(s.candidates(t, margin) or [0.0])
            sums = {sum(combo) for combo in itertools.product(*options)}
            assert any(close_enough(value, s) for s in sums), (
                f"{record} at {t}: {value}, but the exporters reported {sorted(sums)}"
            )
            checked += 1
            nonzero += value != 0
            late += not close_enough(value, sum(o[0] for o in options))
    return checked, nonzero, late


def _fleet_rates_are_sums(api: PromAPI, at: float, seconds: float) -> int:
    """Each fleet rate is the sum of the instances' at the same evaluation; the ratio too."""
    checked = 0
    for name in FLEET_RATES:
        (fleet,) = api.samples(f'job:{name}{{job="{JOB}"}}', seconds, at)
        parts = api.samples(f'instance:{name}{{job="{JOB}"}}', seconds, at)
        by_time: dict[float, list[float]] = {}
        for s in parts:
            for t, v in s.values:
                by_time.setdefault(t, []).append(v)
        for t, v in fleet.values:
            # (A rate needs two samples in its window: an instance just scraped has none yet.)
            assert close_enough(v, sum(by_time[t])), (name, t, v, by_time[t])
            checked += len(by_time[t]) == len(HOSTS)
    (ratio,) = api.samples(
        f'job:raindrops_workers_busy_per_workers:ratio{{job="{JOB}"}}', seconds, at
    )
    (busy,) = api.samples(f'job:raindrops_workers_busy:sum{{job="{JOB}"}}', seconds, at)
    (workers,) = api.samples(f'job:raindrops_workers:sum{{job="{JOB}"}}', seconds, at)
    busy_at, workers_at = dict(busy.values), dict(workers.values)
    for t, v in ratio.values:
        assert close_enough(v, busy_at[t] / workers_at[t]), (t, v, busy_at[t], workers_at[t])
        checked += 1
    return checked


def _dashboard_and_kubernetes_answer(
    api: PromAPI, at: float, instance: str, pods: dict[str, str]
) -> None:
    """Every dashboard and Kubernetes expression evaluates and returns data for the loaded host."""
    # As Grafana fills a one-value selection in ``=~``; "." matches itself too.
    values = {"job": JOB, "instance": instance, "server": ".+"}
    for title, expr in dashboard_exprs():
        result = api.query(substitute(expr, values), at)
        assert result, f"dashboard panel {title!r}: {expr} returned no data for {instance}"
        for r in result:
            assert r["metric"].get("instance", instance) == instance, (title, r["metric"])
    for name, expr in dashboard_variable_queries():
        result = api.query(substitute(expr, values), at)
        assert result, f"dashboard variable {name}: {expr} returned nothing"
    queries = kubernetes_queries()
    (keda,) = [q for k, q in queries.items() if "KEDA" in k]
    result = api.query(keda, at)
    assert len(result) == 1, f"KEDA's query must answer one element: {result}"
    assert 0 < float(result[0]["value"][1]) <= 1, result
    (series_query,) = [q for k, q in queries.items() if k.endswith("seriesQuery")]
    assert {r["metric"]["pod"] for r in api.query(series_query, at)} == set(pods.values())
    (metrics_query,) = [q for k, q in queries.items() if k.endswith("metricsQuery")]
    expr = (
        metrics_query.replace(
            "<<.Series>>", "instance:raindrops_workers_busy_per_workers:ratio_avg1m"
        )
        .replace("<<.LabelMatchers>>", f'namespace="{NAMESPACE}",pod=~"{"|".join(pods.values())}"')
        .replace("<<.GroupBy>>", "pod")
    )
    per_pod = {r["metric"]["pod"]: float(r["value"][1]) for r in api.query(expr, at)}
    assert set(per_pod) == set(pods.values()), per_pod
    assert per_pod["web-1"] > 0.9 > per_pod["web-3"], per_pod


def _idle(api: PromAPI) -> bool:
    for record in (
        "job:raindrops_calling:sum",
        "job:raindrops_writing:sum",
        "job:raindrops_workers_busy:sum",
        "job:raindrops_listener_queued:sum",
    ):
        got = api.vector(f'{record}{{job="{JOB}"}}')
        if list(got.values()) != [0.0]:
            return False
    return True


def test_fleet_under_a_real_prometheus(fleet_ready: None, tmp_path: Path) -> None:
    """Fleet rules are the exporters' sums; alerts fire for the right host only, then resolve."""
    clock = Clock()
    gates = tmp_path / "gates"
    gates.mkdir()
    env = {"RD_GATE_DIR": str(gates)}
    loads: list[Load] = []
    held: list[socket.socket] = []
    with contextlib.ExitStack() as stack:
        hosts: dict[str, Host] = {n: stack.enter_context(host(n, a)) for n, a in HOSTS}
        servers = {
            "web-1": stack.enter_context(
                launch(
                    "gunicorn-sync",
                    "fleet_apps:wsgi",
                    tcp(hosts["web-1"].address),
                    workers=4,
                    env=env,
                    ready_path="/hello",
                    wrapper=hosts["web-1"].wrapper,
                )
            ),
            "web-2": stack.enter_context(
                launch(
                    "uvicorn",
                    "fleet_apps:asgi",
                    tcp(hosts["web-2"].address),
                    workers=2,
                    extra=["--backlog", str(BACKLOG)],
                    env=env,
                    ready_path="/hello",
                    wrapper=hosts["web-2"].wrapper,
                )
            ),
            "web-3": stack.enter_context(
                launch(
                    "gunicorn-sync",
                    "fleet_apps:wsgi",
                    tcp(hosts["web-3"].address),
                    workers=2,
                    env=env,
                    ready_path="/hello",
                    wrapper=hosts["web-3"].wrapper,
                )
            ),
        }
        exporters: dict[str, RunningExporter] = {
            n: stack.enter_context(exporter(bind=f"{h.address}:0", wrapper=h.wrapper))
            for n, h in hosts.items()
        }
        instances = {n: f"{e.host}:{e.port}" for n, e in exporters.items()}
        pods = {n: n for n in hosts}
        clock.mark("servers and exporters up")
        # Each exporter shows its own host's server only: private /dev/shm each.
        for n, e in exporters.items():
            shown = {s["server"] for s in e.json()["servers"]}
            assert shown == {servers[n].name}, (n, shown)

        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "scrape_configs": [
                {
                    "job_name": JOB,
                    "static_configs": [
                        {
                            "targets": [instances[n]],
                            "labels": {"namespace": NAMESPACE, "pod": pods[n]},
                        }
                        for n in hosts
                    ],
                }
            ],
        }
        prom = stack.enter_context(prometheus(config, scaled_rules(FACTOR)))
        api = prom.api
        began = time.time()
        watch = Watch(api)
        deadline = time.monotonic() + 20
        while len(api.vector(f'raindrops_workers{{job="{JOB}"}}')) < len(HOSTS):
            assert time.monotonic() < deadline, "Prometheus never scraped the three exporters"
            time.sleep(0.2)
        clock.mark("Prometheus scraping")
        try:
            address = {n: s.address for n, s in servers.items()}
            loads = [
                # 200 ms requests: a worker's time between two (under a busy CPU, some
                # milliseconds) is a small part of its time, so it reads busy at scrapes.
                Load(address["web-1"], "/slow?ms=200", clients=16, limit=90).start(),
                Load(address["web-2"], "/slow?ms=50", clients=1, pause=0.1, limit=90).start(),
                Load(address["web-3"], "/slow?ms=50", clients=1, pause=0.1, limit=90).start(),
            ]
            time.sleep(2)
            # The burst: web-2's two workers blocked, then 40 connections at once.
            held = _block_every_worker(servers["web-2"], gates, 2)
            held += _burst(address["web-2"], BURST)
            clock.mark("burst sent")
            watch.wait(
                lambda a: (
                    _firing(a, "RaindropsListenQueueOverflow", "web-2")
                    and _firing(a, "RaindropsListenQueueHalfFull", "web-2")
                ),
                timeout=12,
                what="web-2's overflow and half-full alerts",
            )
            clock.mark("web-2 overflow firing")
            (gates / "go").write_text("")
            for c in held:
                c.close()
            held = []
            watch.wait(
                lambda a: _firing(a, "RaindropsWorkersSaturated", "web-1"),
                timeout=60,
                what="web-1's saturation alert",
            )
            saturated_at = time.time()
            clock.mark("web-1 saturated firing")
        finally:
            (gates / "go").write_text("")
            for c in held:
                c.close()
            for load in loads:
                load.stop()
        for load in loads:
            assert load.failures == [], load.failures[:5]
            assert load.ok > 0
        # The namespace's overflow counter rose on all three exporters: one namespace.
        rose = api.vector(f'increase(raindrops_listen_overflows_total{{job="{JOB}"}}[2m])')
        assert {dict(k)["pod"] for k, v in rose.items() if v > 0} == set(pods.values()), rose

        _dashboard_and_kubernetes_answer(api, saturated_at, instances["web-1"], pods)

        watch.wait(lambda a: not a and _idle(api), timeout=45, what="idle, every alert resolved")
        clock.mark("idle, resolved")
        window = time.time() - began + 2
        now = time.time()
        # Prometheus' own record of every alert's state at every evaluation (ALERTS),
        # not only what the polls saw.
        history = {
            (s.labels["alertname"], s.labels.get("pod", ""), s.labels["alertstate"])
            for s in api.samples("ALERTS", window, now)
        }
        assert {(n, p) for n, p, state in history if state == "firing"} == EXPECTED_FIRING, history
        assert watch.firing() == EXPECTED_FIRING, watch.seen
        assert not {(n, p) for n, p, _ in history if p == "web-3"}, history
        checked, nonzero, late = _exact_sums(api, now, window)
        assert checked >= len(FLEET_SUMS) * 20, checked
        assert nonzero >= 30, (checked, nonzero)
        rates = _fleet_rates_are_sums(api, now, window)
        assert rates >= len(FLEET_RATES) * 20, rates
        # Idle, what each exporter serves is what Prometheus holds.
        for n, e in exporters.items():
            status, _, body = e.get("/metrics")
            assert status == 200
            own = samples(body.decode())
            for name in ("raindrops_workers", "raindrops_calling", "raindrops_listener_backlog"):
                mine = sum(v for (metric, _), v in own.items() if metric == name)
                stored = api.vector(f'sum({name}{{job="{JOB}", pod="{n}"}})')
                assert list(stored.values()) == [mine], (n, name, mine, stored)
        unhealthy = [(r["name"], r.get("lastError")) for r in api.rules() if r["health"] != "ok"]
        assert not unhealthy, unhealthy
        assert {r["name"] for r in api.rules() if r["type"] == "recording"} == set(
            recording_names()
        )
        clock.mark("sums checked")

        # web-3's exporter stops: its target is down, and only its.
        os.killpg(exporters["web-3"].proc.pid, 15)
        exporters["web-3"].proc.wait(timeout=10)
        watch.wait(
            lambda a: _firing(a, "RaindropsExporterDown", "web-3"), timeout=20, what="web-3 down"
        )
        assert {(a["labels"]["alertname"], a["labels"].get("pod")) for a in api.alerts()} == {
            ("RaindropsExporterDown", "web-3")
        }
        clock.mark("web-3 down firing")
    clock.mark("stopped")
    print(
        f"\nfleet test: {clock.report()}; checked {checked} fleet sums ({nonzero} non-zero, "
        f"{late} read a sample in flight as the one before), "
        f"{rates} rates; requests {[load.ok for load in loads]}"
    )
