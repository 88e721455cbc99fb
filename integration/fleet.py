"""A fleet on one machine, a real Prometheus over it, and the kit under ``ops/``.

What ``test_fleet.py`` and ``test_ops.py`` share:

- the kit's files and what is in them (:func:`recording_names`,
  :func:`alert_rules`, :func:`dashboard_exprs`, :func:`kubernetes_docs`,
  :func:`kubernetes_queries`);
- :func:`scaled_rules`: the shipped rules with every duration divided by a
  factor (``for: 5m`` and ``[5m]`` become 20 s at 15), so that a fleet test
  under two minutes sees what the rules do over minutes;
- :func:`host`: a "host", a mount namespace with a private ``/dev/shm``
  (``unshare --mount``; root only), held by a ``sleep`` that the test stops;
  processes enter it with ``nsenter --mount=...`` (its ``wrapper``), which
  execs them, so the test's child is the server or exporter itself;
- :func:`prometheus`: Debian's ``prometheus`` on a free loopback port with a
  generated config and its own temporary data directory, stopped by process
  group at the end; :class:`PromAPI`, a small client of its HTTP API;
- :class:`Load`: client threads sending requests until told to stop (or a
  deadline), each on a fresh connection.

Nothing is ever killed by name; every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
OPS = ROOT / "ops"
RULES = OPS / "prometheus" / "raindrops.rules.yml"
RULES_TEST = OPS / "prometheus" / "raindrops.rules.test.yml"
DASHBOARD = OPS / "grafana" / "raindrops.json"
K8S = OPS / "kubernetes"
DOCS_PAGE = ROOT / "docs" / "operating-a-fleet.md"


# -- the kit's files --------------------------------------------------------------


def _rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def recording_names() -> list[str]:
    """Every ``record:`` name of the rules file, in order, once each."""
    return list(dict.fromkeys(r["record"] for r in _rules() if "record" in r))


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule of the rules file."""
    return [r for r in _rules() if "alert" in r]


_DURATION = re.compile(r"(\d+)([smh])")
_SECONDS = {"s": 1, "m": 60, "h": 3600}


def _scale(duration: str, factor: int) -> str:
    found = _DURATION.fullmatch(duration)
    if found is None:
        raise ValueError(f"duration {duration!r} is not N followed by s, m or h")
    seconds = int(found.group(1)) * _SECONDS[found.group(2)]
    if seconds % factor:
        raise ValueError(f"{duration} is not a whole number of seconds divided by {factor}")
    return f"{seconds // factor}s"


def scaled_rules(factor: int) -> str:
    """The shipped rules as YAML text, every ``for:`` and ``[range]`` divided by ``factor``.

    Names are kept (``rate1m`` then means a rate over ``60 / factor`` s):
    nothing else changes, so the fleet test runs the shipped expressions.

    Example::

        text = scaled_rules(15)  # for: 5m -> for: 20s, [1m] -> [4s]
    """
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = _scale(rule["for"], factor)
            rule["expr"] = re.sub(
                r"\[(\d+[smh])\]", lambda m: f"[{_scale(m.group(1), factor)}]", rule["expr"]
            )
    return str(yaml.safe_dump(doc, sort_keys=False))


def _dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def dashboard_exprs() -> list[tuple[str, str]]:
    """``(panel title, expr)`` of every target of every panel of the dashboard."""
    out = []
    for panel in _dashboard()["panels"]:
        for target in panel.get("targets", []):
            out.append((str(panel["title"]), str(target["expr"])))
    return out


def dashboard_variable_queries() -> list[tuple[str, str]]:
    """``(variable, the PromQL inside label_values(...))`` of each query variable."""
    out = []
    for var in _dashboard()["templating"]["list"]:
        if var["type"] != "query":
            continue
        found = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", var["definition"])
        if found is None:
            raise ValueError(f"variable {var['name']}: {var['definition']!r}")
        out.append((str(var["name"]), found.group(1)))
    return out


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_RULE_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*:[a-zA-Z0-9_:]+")


def rule_expr_names(expr: str) -> set[str]:
    """The recording-rule names (``a:b:c``) an expression reads, quoted strings left out."""
    return set(_RULE_NAME.findall(_STRING.sub('""', expr)))


def kubernetes_docs() -> list[tuple[Path, dict[str, Any]]]:
    """Every YAML document under ``ops/kubernetes/``, with its file."""
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path, dict(doc)))
    return out


def kubernetes_queries() -> dict[str, str]:
    """The PromQL the Kubernetes examples embed: KEDA's query, the adapter's queries."""
    out: dict[str, str] = {}
    for path, doc in kubernetes_docs():
        if doc["kind"] == "ScaledObject":
            for i, trigger in enumerate(doc["spec"]["triggers"]):
                out[f"{path.name}: KEDA trigger {i}"] = trigger["metadata"]["query"]
        if doc["kind"] == "ConfigMap" and "config.yaml" in doc["data"]:
            for i, rule in enumerate(yaml.safe_load(doc["data"]["config.yaml"])["rules"]):
                out[f"{path.name}: adapter rule {i} seriesQuery"] = rule["seriesQuery"]
                out[f"{path.name}: adapter rule {i} metricsQuery"] = rule["metricsQuery"]
    return out


# -- hosts: a mount namespace each, a private /dev/shm ----------------------------


@dataclass
class Host:
    """A mount namespace of its own with a private ``/dev/shm``, and its loopback address."""

    name: str
    address: str
    holder: subprocess.Popen[bytes]

    @property
    def wrapper(self) -> list[str]:
        """The command that runs a program in this host's mount namespace (it execs it)."""
        return ["nsenter", f"--mount=/proc/{self.holder.pid}/ns/mnt", "--"]


def _stop_group(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace)


@contextlib.contextmanager
def host(name: str, address: str, lifetime: float = 600.0) -> Iterator[Host]:
    """A host until the block ends: ``unshare --mount`` holding a tmpfs on ``/dev/shm``."""
    with tempfile.TemporaryDirectory(prefix=f"rd-{name}-") as tmp:
        ready = Path(tmp) / "ready"
        script = (
            "mount -t tmpfs -o mode=1777,size=64m tmpfs /dev/shm"
            f' && touch "{ready}" && exec sleep {int(lifetime)}'
        )
        errors = Path(tmp) / "stderr"
        with errors.open("wb") as err:
            proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + 10
            while not ready.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    why = errors.read_text(errors="replace")
                    raise RuntimeError(f"host {name}: unshare --mount failed: {why}")
                time.sleep(0.02)
            yield Host(name, address, proc)
        finally:
            _stop_group(proc)


# -- Prometheus ---------------------------------------------------------------------


class PromAPI:
    """The HTTP API of one Prometheus (``/api/v1/...``), answers decoded."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    def get(self, path: str, timeout: float = 10.0, **params: object) -> Any:
        query = urllib.parse.urlencode({k: str(v) for k, v in params.items()})
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request("GET", f"{path}?{query}" if query else path)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        doc = json.loads(body)
        if doc.get("status") != "success":
            raise PromQueryError(f"{path} {params}: {doc.get('errorType')}: {doc.get('error')}")
        return doc["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query (at ``at``, a Unix time, or now): the result list."""
        params: dict[str, object] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.get("/api/v1/query", **params)
        return list(data["result"])

    def vector(self, expr: str, at: float | None = None) -> dict[frozenset[tuple[str, str]], float]:
        """An instant query as ``{frozenset(labels): value}``."""
        return {frozenset(r["metric"].items()): float(r["value"][1]) for r in self.query(expr, at)}

    def samples(self, selector: str, seconds: float, at: float) -> list[Series]:
        """Every stored sample of ``selector`` in the ``seconds`` up to ``at``."""
        data = self.get("/api/v1/query", query=f"{selector}[{int(seconds)}s]", time=f"{at:.3f}")
        return [
            Series(dict(r["metric"]), [(float(t), float(v)) for t, v in r["values"]])
            for r in data["result"]
        ]

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing) with labels, state and value."""
        return list(self.get("/api/v1/alerts")["alerts"])

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule with its health and last error."""
        return [r for g in self.get("/api/v1/rules")["groups"] for r in g["rules"]]


class PromQueryError(RuntimeError):
    """Prometheus answered a query with an error (bad expression, bad parameters)."""


@dataclass
class Series:
    """One series' labels and its samples ``(unix time, value)``, oldest first."""

    labels: dict[str, str]
    values: list[tuple[float, float]] = field(default_factory=list)

    def candidates(self, at: float, in_flight: float) -> list[float]:
        """What a rule evaluated at ``at`` may have read: the latest sample, or the one before.

        A scrape's samples are stamped with its start and stored at its end:
        a sample stamped less than ``in_flight`` seconds before ``at`` may
        not have been stored yet when the rule ran (Prometheus 2's rule
        evaluation has no query offset), and the rule then read the one
        before it. Empty when no sample is in the lookback.
        """
        before = [(t, v) for t, v in self.values if t <= at]
        if not before:
            return []
        t, v = before[-1]
        out = [v]
        if at - t < in_flight and len(before) > 1:
            out.append(before[-2][1])
        return out


@dataclass
class RunningPrometheus:
    """A Prometheus process, where it listens, its API and its log."""

    proc: subprocess.Popen[bytes]
    api: PromAPI
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the kernel's pick for port 0)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def prometheus(
    config: Mapping[str, Any], rules: str, *, startup_timeout: float = 30.0
) -> Iterator[RunningPrometheus]:
    """Debian's ``prometheus`` with ``config`` (and ``rules`` as its one rule file).

    Listens on ``127.0.0.1`` on a free port (picked again if taken meanwhile),
    keeps its data in a temporary directory, and is stopped by process group
    when the block ends.
    """
    with tempfile.TemporaryDirectory(prefix="rd-prom-") as tmp:
        rules_path = Path(tmp) / "raindrops.rules.yml"
        rules_path.write_text(rules)
        config_path = Path(tmp) / "prometheus.yml"
        config_path.write_text(yaml.safe_dump({**config, "rule_files": [str(rules_path)]}))
        for attempt in range(5):
            port = free_port()
            log_path = Path(tmp) / f"prometheus-{attempt}.log"
            data = Path(tmp) / f"data-{attempt}"
            with log_path.open("wb") as log:
                proc = subprocess.Popen(
                    [
                        "prometheus",
                        f"--config.file={config_path}",
                        f"--storage.tsdb.path={data}",
                        f"--web.listen-address=127.0.0.1:{port}",
                        "--storage.tsdb.retention.time=1h",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=tmp,
                    start_new_session=True,
                )
            running = RunningPrometheus(proc, PromAPI("127.0.0.1", port), log_path)
            try:
                if _wait_prometheus(running, startup_timeout):
                    yield running
                    return
            finally:
                _stop_group(proc)
            if "address already in use" not in running.log():
                raise RuntimeError(f"prometheus did not start:\n{running.log()}")
        raise RuntimeError("prometheus found no free port in 5 attempts")


def _wait_prometheus(running: RunningPrometheus, timeout: float) -> bool:
    """True once ``/-/ready`` answers 200; False if it exited; raises at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running.proc.poll() is not None:
            return False
        conn = http.client.HTTPConnection(running.api.host, running.api.port, timeout=2)
        try:
            conn.request("GET", "/-/ready")
            if conn.getresponse().status == 200:
                return True
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.1)
    raise RuntimeError(f"prometheus not ready in {timeout}s:\n{running.log()}")


# -- load -----------------------------------------------------------------------------


@dataclass
class Load:
    """``clients`` threads, each sending ``GET path`` on a fresh connection, pausing between.

    Runs from :meth:`start` until :meth:`stop` or ``limit`` seconds; counts
    answers and keeps what went wrong.

    Example::

        load = Load(("127.0.0.11", 8000), "/slow?ms=100", clients=10).start()
        ...
        load.stop()
        assert load.failures == []
    """

    address: tuple[str, int]
    path: str
    clients: int = 1
    pause: float = 0.0
    timeout: float = 30.0
    limit: float = 120.0
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        deadline = time.monotonic() + self.limit
        for i in range(self.clients):
            thread = threading.Thread(
                target=self._client, args=(deadline,), name=f"load-{i}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def _client(self, deadline: float) -> None:
        request = f"GET {self.path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                with socket.create_connection(self.address, timeout=self.timeout) as conn:
                    conn.sendall(request)
                    chunks = []
                    while chunk := conn.recv(65536):
                        chunks.append(chunk)
                status = b"".join(chunks).split(b"\r\n", 1)[0]
                with self._lock:
                    if status.startswith(b"HTTP/1.1 200"):
                        self.ok += 1
                    else:
                        self.failures.append(repr(status))
            except OSError as exc:
                with self._lock:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
            if self.pause:
                self._stop.wait(self.pause)

    def stop(self) -> None:
        """Ask every client to stop after its current request, and wait for them (bounded)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 5)


def close_enough(a: float, b: float) -> bool:
    """Equal, or within float rounding of a different summation order."""
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Grafana's ``$name`` / ``${name}`` variables in ``expr`` replaced by ``values``."""

    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in values:
            raise KeyError(f"no value for ${name} in {expr!r}")
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, expr)


__all__ = [
    "DASHBOARD",
    "DOCS_PAGE",
    "K8S",
    "RULES",
    "RULES_TEST",
    "Host",
    "Load",
    "PromAPI",
    "PromQueryError",
    "RunningPrometheus",
    "Series",
    "alert_rules",
    "close_enough",
    "dashboard_exprs",
    "dashboard_variable_queries",
    "free_port",
    "host",
    "kubernetes_docs",
    "kubernetes_queries",
    "prometheus",
    "recording_names",
    "rule_expr_names",
    "scaled_rules",
    "substitute",
]
