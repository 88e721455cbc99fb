"""The same workload gives the same exposition as prometheus_client's MultiProcessCollector.

Each workload runs twice in fresh interpreters (promshm_workload.py): once
in multiprocess mode (files, ``mark_process_dead`` called for every process
that ended, as gunicorn's ``child_exit`` hook does), once with prometheus-shm
(no hook). Processes are forked and spawned; some are SIGKILLed. The parsed
expositions must match: families, types, help, sample names, labels
(``pid`` values renamed by process order) and values (to 1e-9: both sum the
same doubles, in different orders).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from helpers import families, run_workload, samples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MODES = ["all", "liveall", "sum", "livesum", "min", "livemin", "max", "livemax"]
RECENT = ["mostrecent", "livemostrecent"]


def _both(tmp_path: Any, workload: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    mpc_dir, shm_dir = tmp_path / "mpc", tmp_path / "shm"
    mpc_dir.mkdir()
    shm_dir.mkdir()
    return run_workload("mpc", str(mpc_dir), workload), run_workload("shm", str(shm_dir), workload)


def _assert_same(mpc: dict[str, Any], shm: dict[str, Any]) -> None:
    a = samples(mpc["exposition"], mpc["pids"])
    b = samples(shm["exposition"], shm["pids"])
    assert sorted(a - b) == []
    assert sorted(b - a) == []


EVERY_KIND: dict[str, Any] = {
    "metrics": [
        ["counter", "req", ["route", "method"], None],
        ["gauge", "g_all", ["k"], "all"],
        ["gauge", "g_liveall", [], "liveall"],
        ["gauge", "g_sum", [], "sum"],
        ["gauge", "g_livesum", [], "livesum"],
        ["gauge", "g_min", [], "min"],
        ["gauge", "g_livemin", [], "livemin"],
        ["gauge", "g_max", [], "max"],
        ["gauge", "g_livemax", [], "livemax"],
        ["gauge", "g_recent", [], "mostrecent"],
        ["gauge", "g_liverecent", ["k"], "livemostrecent"],
        ["histogram", "lat", ["m"], [0.01, 0.1, 1.0, 10.0]],
        ["summary", "size", ["m"], None],
    ],
    "parent": [["inc", 0, ["/", "GET"], 1], ["set", 4, [], 2]],
    "children": [
        {
            "start": "fork",
            "ops": [
                ["inc", 0, ["/", "GET"], 2],
                ["set", 1, ["a"], 3.5],
                ["set", 2, [], 7],
                ["inc", 3, [], 1.25],
                ["inc", 4, [], 1],
                ["set", 5, [], -4],
                ["set", 6, [], 5],
                ["set", 7, [], 40],
                ["set", 8, [], 50],
                ["set", 9, [], 1],
                ["set", 10, ["x"], 8],
                ["observe", 11, ["get"], 0.05],
                ["observe", 12, ["get"], 100],
            ],
            "end": "kill",
        },
        {
            "start": "fork",
            "ops": [
                ["inc", 0, ["/x", "POST"], 0.5],
                ["set", 1, ["a"], 1.5],
                ["set", 2, [], 8],
                ["inc", 3, [], 2],
                ["inc", 4, [], 3],
                ["set", 5, [], 6],
                ["set", 6, [], 3],
                ["set", 7, [], 1],
                ["set", 8, [], 2],
                ["set", 9, [], 2],
                ["observe", 11, ["get"], 5],
                ["observe", 12, ["put"], 1],
            ],
            "end": "exit",
        },
        {
            "start": "spawn",
            "ops": [
                ["inc", 0, ["/", "GET"], 4],
                ["set", 1, ["b"], 9],
                ["inc", 4, [], 1],
                ["set", 6, [], 9],
                ["set", 8, [], 0.5],
                ["set", 10, ["x"], 11],
                ["observe", 11, ["put"], 0.5],
            ],
            "end": "stay",
        },
        {"start": "fork", "ops": [["touch", 0, ["/", "GET"], None]], "end": "stay"},
        {"start": "fork", "ops": [], "end": "kill"},
    ],
    "after": [["inc", 0, ["/", "GET"], 10]],
}


def test_every_metric_type_and_gauge_mode_matches(tmp_path: Any) -> None:
    """Counters, histograms, summaries, all ten gauge modes: forked, spawned, killed, the same."""
    mpc, shm = _both(tmp_path, EVERY_KIND)
    _assert_same(mpc, shm)
    # and the text itself, family by family, once pids are the same spelling
    mpc_text, shm_text = mpc["exposition"], shm["exposition"]
    for i, (p, q) in enumerate(zip(mpc["pids"], shm["pids"], strict=True)):
        mpc_text = mpc_text.replace(f'pid="{p}"', f'pid="p{i}"')
        shm_text = shm_text.replace(f'pid="{q}"', f'pid="p{i}"')
    assert families(mpc_text) == families(shm_text)


def test_a_child_that_creates_its_own_labels_matches(tmp_path: Any) -> None:
    """Label sets first made in children (forked and spawned) merge the same way."""
    workload = {
        "metrics": [["counter", "c", ["user"], None], ["gauge", "g", ["user"], "max"]],
        "children": [
            {
                "start": start,
                "ops": [["inc", 0, [f"u{i}"], i + 0.5], ["set", 1, [f"u{i % 2}"], i]],
                "end": end,
            }
            for i, (start, end) in enumerate(
                [("fork", "exit"), ("spawn", "kill"), ("fork", "kill"), ("spawn", "stay")]
            )
        ],
    }
    _assert_same(*_both(tmp_path, workload))


# -- property: random workloads ---------------------------------------------------

_LABELS = st.sampled_from(["a", "b", "c"])
_AMOUNTS = st.sampled_from([0, 0.25, 0.5, 1, 2, 3.75, 100])
_SETS = st.sampled_from([-2.5, 0, 0.5, 1, 7, 1e6])


@st.composite
def _metric(draw: Any, i: int) -> list[Any]:
    kind = draw(st.sampled_from(["counter", "gauge", "gauge", "histogram", "summary"]))
    labelled = draw(st.booleans())
    labels = ["k"] if labelled else []
    if kind == "gauge":
        return [kind, f"m{i}", labels, draw(st.sampled_from(MODES + RECENT))]
    if kind == "histogram":
        return [kind, f"m{i}", labels, [0.5, 2.0, 50.0]]
    return [kind, f"m{i}", labels, None]


def _op(draw: Any, metrics: list[list[Any]]) -> list[Any]:
    index = draw(st.integers(0, len(metrics) - 1))
    kind, _, labels, option = metrics[index]
    labelvalues = [draw(_LABELS)] if labels else []
    if kind == "counter":
        return ["inc", index, labelvalues, draw(_AMOUNTS)]
    if kind in ("histogram", "summary"):
        return ["observe", index, labelvalues, draw(_AMOUNTS)]
    if option in RECENT or draw(st.booleans()):
        return ["set", index, labelvalues, draw(_SETS)]
    return [draw(st.sampled_from(["inc", "dec"])), index, labelvalues, draw(_AMOUNTS)]


@st.composite
def _workload(draw: Any) -> dict[str, Any]:
    n = draw(st.integers(1, 4))
    metrics = [draw(_metric(i)) for i in range(n)]

    def some_ops(most: int) -> list[Any]:
        return [_op(draw, metrics) for _ in range(draw(st.integers(0, most)))]

    children = [
        {
            "start": draw(st.sampled_from(["fork", "fork", "spawn"])),
            "ops": some_ops(5),
            "end": draw(st.sampled_from(["exit", "kill", "stay"])),
        }
        for _ in range(draw(st.integers(0, 3)))
    ]
    return {"metrics": metrics, "parent": some_ops(3), "children": children, "after": some_ops(2)}


@pytest.mark.slow
@settings(
    max_examples=int(os.environ.get("PROMSHM_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(workload=_workload())
def test_random_workloads_match_multiprocess_collector(
    tmp_path_factory: pytest.TempPathFactory, workload: dict[str, Any]
) -> None:
    """Random metrics, label sets, forked/spawned/killed processes: the same parsed exposition."""
    _assert_same(*_both(tmp_path_factory.mktemp("w"), workload))
