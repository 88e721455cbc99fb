"""The fleet kit under ``ops/`` holds together without a running fleet.

Package-free checks (no server is started):

- ``promtool check rules`` accepts ``ops/prometheus/raindrops.rules.yml`` and
  ``promtool test rules`` passes its unit tests; every recording rule is
  evaluated by a unit test and every alert has a series that fires and one
  that must not; every alert has a summary, a description quoting its value
  and a runbook section in ``docs/operating-a-fleet.md``; names follow
  ``level:metric:operations``;
- the Grafana dashboard is well formed (unique panel ids, every panel on the
  grid, templated by instance and server) and each of its expressions is a
  recording rule of the file (with label matchers) or is listed for the
  fleet test, which evaluates every one of them against a real Prometheus;
- the Kubernetes examples parse, carry the keys their kinds require, and
  agree with each other (ports, labels, names); the PromQL they embed is
  also evaluated by the fleet test.

``promtool`` is Debian's ``prometheus`` package (``.ci/run`` installs it);
without it the promtool tests skip with that reason (and fail under CI).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from fleet import (
    DASHBOARD,
    DOCS_PAGE,
    K8S,
    RULES,
    RULES_TEST,
    alert_rules,
    dashboard_exprs,
    kubernetes_docs,
    recording_names,
    rule_expr_names,
)

pytestmark = pytest.mark.timeout(120)

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None and not os.environ.get("CI"),
    reason="promtool is not installed (apt-get install prometheus)",
)


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is not installed: .ci/run installs Debian's prometheus package")
    return subprocess.run(
        ["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    """``promtool check rules`` accepts the shipped rules file."""
    proc = _promtool("check", "rules", RULES.name, cwd=RULES.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout, proc.stdout


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    """``promtool test rules`` passes every unit test of the rules."""
    proc = _promtool("test", "rules", RULES_TEST.name, cwd=RULES.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout, proc.stdout


def _tests() -> list[dict[str, Any]]:
    return list(yaml.safe_load(RULES_TEST.read_text())["tests"])


def test_every_recording_rule_is_unit_tested() -> None:
    """Each recording rule's name is the expression of at least one promql_expr_test."""
    tested = {
        re.split(r"[{\[]", t["expr"], maxsplit=1)[0].strip()
        for case in _tests()
        for t in case.get("promql_expr_test", [])
    }
    missing = sorted(set(recording_names()) - tested)
    assert not missing, f"recording rules without a unit test: {missing}"


def test_every_alert_fires_and_holds_in_a_unit_test() -> None:
    """Each alert fires for some series of its tests and stays silent for another."""
    problems = []
    for alert in alert_rules():
        name = alert["alert"]
        fired: set[str] = set()
        fed: set[str] = set()
        for case in _tests():
            checks = [t for t in case.get("alert_rule_test", []) if t["alertname"] == name]
            if not checks:
                continue
            for series in case["input_series"]:
                found = re.search(r'instance="([^"]+)"', series["series"])
                if found:
                    fed.add(found.group(1))
            for check in checks:
                for exp in check.get("exp_alerts") or []:
                    fired.add(exp["exp_labels"]["instance"])
        if not fired:
            problems.append(f"{name}: never fires in a unit test")
        if not fed - fired:
            problems.append(f"{name}: no series that must not fire (all of {sorted(fed)} fire)")
    assert not problems, "\n".join(problems)


def test_every_alert_is_explained_with_its_value_and_a_runbook() -> None:
    """Each alert has a summary, a description quoting $value and a runbook section."""
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in DOCS_PAGE.read_text().splitlines()
        if line.startswith("#")
    }
    problems = []
    for alert in alert_rules():
        name, notes = alert["alert"], alert.get("annotations", {})
        if not notes.get("summary"):
            problems.append(f"{name}: no summary")
        if "$value" not in notes.get("description", ""):
            problems.append(f"{name}: the description does not give the value")
        want = f"docs/operating-a-fleet.md#{name.lower()}"
        if notes.get("runbook_url") != want:
            problems.append(f"{name}: runbook_url is {notes.get('runbook_url')!r}, not {want!r}")
        if name.lower() not in headings:
            problems.append(f"{name}: no section '### {name}' in {DOCS_PAGE.name}")
        if alert.get("labels", {}).get("severity") not in ("warning", "critical"):
            problems.append(f"{name}: severity must be warning or critical")
    assert not problems, "\n".join(problems)


def test_recording_rules_are_named_level_metric_operations() -> None:
    """Every record is ``level:metric:operations``; its metric is one the exporter serves."""
    exported = re.compile(r"(raindrops|process_utilization)_[a-z_]+")
    levels = {"instance", "instance_server", "instance_server_listener", "instance_le"}
    levels |= {"instance_quantile", "job", "job_le", "job_quantile"}
    for name in recording_names():
        level, metric, operations = name.split(":")
        assert level in levels, name
        assert exported.fullmatch(metric), name
        assert not metric.endswith("_total"), f"{name}: _total is stripped after rate()"
        assert re.fullmatch(r"[a-z0-9_]+", operations), name


# -- the Grafana dashboard ------------------------------------------------------


def _dashboard() -> dict[str, Any]:
    import json

    return dict(json.loads(DASHBOARD.read_text()))


def test_dashboard_is_well_formed_and_templated() -> None:
    """Unique panel ids, every panel on the grid with a target, instance and server variables."""
    board = _dashboard()
    assert board["title"]
    assert board["uid"]
    panels = board["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), ids
    for p in panels:
        assert set(p["gridPos"]) == {"h", "w", "x", "y"}, p["title"]
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["targets"], p["title"]
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs)), p["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance", "server"):
        assert variables[name]["type"] == "query", name
        assert variables[name]["includeAll"] is True, name
    assert "$job" in variables["instance"]["definition"]
    assert "$instance" in variables["server"]["definition"]


def test_dashboard_shows_what_an_operator_looks_at_first() -> None:
    """Saturation, queue vs backlog, requests and latency, workers and restarts, overflows."""
    exprs = " ".join(e for _, e in dashboard_exprs())
    for needed in (
        "instance_server:raindrops_workers_busy_per_workers:ratio",
        "raindrops_listener_queued",
        "raindrops_listener_backlog",
        "instance:process_utilization_requests:rate1m",
        "instance_quantile:process_utilization_request_duration_seconds:histogram_quantile_rate1m",
        "raindrops_workers",
        "raindrops_workers_reclaimed",
        "instance:raindrops_listen_overflows:rate1m",
    ):
        assert needed in exprs, needed


def test_dashboard_expressions_are_rules_or_evaluated_by_the_fleet_test() -> None:
    """Each expr names a recording rule of the file, or is evaluated by the fleet test."""
    records = set(recording_names())
    for title, expr in dashboard_exprs():
        names = rule_expr_names(expr)
        unknown = {n for n in names if ":" in n} - records
        assert not unknown, f"{title}: {expr} names no recording rule {unknown}"
    # The fleet test (integration/test_fleet.py) evaluates every one of them,
    # rules and raw expressions alike, for the loaded host: see there.


# -- Kubernetes -------------------------------------------------------------------

REQUIRED = {
    ("keda.sh/v1alpha1", "ScaledObject"): ["spec.scaleTargetRef.name", "spec.triggers"],
    ("monitoring.coreos.com/v1", "PodMonitor"): ["spec.selector", "spec.podMetricsEndpoints"],
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ["spec.selector", "spec.endpoints"],
    ("apps/v1", "Deployment"): ["spec.selector.matchLabels", "spec.template.spec.containers"],
    ("v1", "Service"): ["spec.selector", "spec.ports"],
    ("v1", "ConfigMap"): ["data"],
    ("autoscaling/v2", "HorizontalPodAutoscaler"): ["spec.scaleTargetRef", "spec.metrics"],
}


def _get(doc: dict[str, Any], dotted: str) -> Any:
    node: Any = doc
    for part in dotted.split("."):
        node = node[part]
    return node


def _by_kind() -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for _, doc in kubernetes_docs():
        out.setdefault(doc["kind"], []).append(doc)
    return out


def test_kubernetes_examples_parse_with_their_required_keys() -> None:
    """Every document has apiVersion, kind, metadata.name and its kind's required keys."""
    seen = set()
    for path, doc in kubernetes_docs():
        key = (doc["apiVersion"], doc["kind"])
        assert key in REQUIRED, f"{path.name}: unexpected {key}"
        assert doc["metadata"]["name"], path.name
        for dotted in REQUIRED[key]:
            assert _get(doc, dotted), f"{path.name}: {doc['kind']} lacks {dotted}"
        seen.add(doc["kind"])
    assert {"ScaledObject", "PodMonitor", "ServiceMonitor", "Deployment", "ConfigMap"} <= seen


def test_kubernetes_examples_agree_with_each_other() -> None:
    """Monitors select the pods and port the sidecar serves; scalers name the Deployment."""
    kinds = _by_kind()
    (deployment,) = kinds["Deployment"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    sidecar = containers["raindrops-exporter"]
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert sidecar["command"][0] == "raindrops-exporter"
    assert (
        sidecar["command"][sidecar["command"].index("--bind") + 1] == f"0.0.0.0:{ports['metrics']}"
    )
    # One /dev/shm for both containers, in memory, and one user for both.
    shm = {v["name"] for v in pod["spec"]["volumes"] if v.get("emptyDir", {}).get("medium")}
    for c in containers.values():
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert mounts.get("/dev/shm") in shm, c["name"]
    assert pod["spec"]["securityContext"]["runAsUser"]
    (podmonitor,) = kinds["PodMonitor"]
    assert podmonitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert [e["port"] for e in podmonitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    (service,) = kinds["Service"]
    assert service["spec"]["selector"].items() <= labels.items()
    svc_ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert svc_ports["metrics"]["targetPort"] == "metrics"
    (servicemonitor,) = kinds["ServiceMonitor"]
    assert servicemonitor["spec"]["selector"]["matchLabels"].items() <= (
        service["metadata"]["labels"].items()
    )
    assert [e["port"] for e in servicemonitor["spec"]["endpoints"]] == ["metrics"]
    # The alerts find the exporter's targets by a job name containing "raindrops":
    # PodMonitor jobs are NAMESPACE/NAME, ServiceMonitor jobs the Service's name.
    assert "raindrops" in podmonitor["metadata"]["name"]
    assert "raindrops" in service["metadata"]["name"]
    name = deployment["metadata"]["name"]
    (scaled,) = kinds["ScaledObject"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == name
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    meta = trigger["metadata"]
    assert {"serverAddress", "query", "threshold"} <= set(meta)
    assert 0 < float(meta["threshold"]) < 1
    (hpa,) = kinds["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == name
    for doc in (deployment, podmonitor, service, servicemonitor, scaled, hpa):
        assert doc["metadata"]["namespace"] == deployment["metadata"]["namespace"]


def test_prometheus_adapter_rule_serves_the_metric_the_hpa_reads() -> None:
    """The adapter's rule names the custom metric the HPA targets, per pod, below 1."""
    kinds = _by_kind()
    (config,) = kinds["ConfigMap"]
    adapter = yaml.safe_load(config["data"]["config.yaml"])
    (rule,) = adapter["rules"]
    assert {"seriesQuery", "resources", "name", "metricsQuery"} <= set(rule)
    overrides = rule["resources"]["overrides"]
    assert overrides["namespace"] == {"resource": "namespace"}
    assert overrides["pod"] == {"resource": "pod"}
    for template in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
        assert template in rule["metricsQuery"], template
    (hpa,) = kinds["HorizontalPodAutoscaler"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    target = metric["pods"]["target"]
    assert target["type"] == "AverageValue"
    assert target["averageValue"].endswith("m")
    assert 0 < int(target["averageValue"][:-1]) < 1000
    series = re.search(r'__name__="([^"]+)"', rule["seriesQuery"])
    assert series
    assert series.group(1) in recording_names()
    assert K8S.is_dir()
