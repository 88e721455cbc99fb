"""Run one metrics workload in a fresh interpreter, in multiprocess mode or with prometheus-shm.

``python promshm_workload.py MODE DIR`` reads a workload (JSON) on stdin and
prints one JSON object: the exposition text and the PID of every process,
so a test can run the same workload both ways and compare.

MODE is ``mpc`` (prometheus_client's multiprocess mode: PROMETHEUS_MULTIPROC_DIR
is DIR, set before prometheus_client is imported; ``mark_process_dead`` is
called for every process that ended, as gunicorn's ``child_exit`` hook
would) or ``shm`` (``prometheus_shm.install(path=DIR/segment)``; no hook).

A workload::

    {"metrics": [[kind, name, labelnames, option], ...],
     "parent": [op, ...],                   # in the parent, before any child
     "children": [{"start": "fork"|"spawn", "ops": [op, ...],
                   "end": "exit"|"kill"|"stay"}, ...],
     "after": [op, ...]}                    # in the parent, after the children

kind: counter | gauge (option: multiprocess_mode) | histogram (option:
buckets) | summary | info | enum (option: states). op: [verb, metric index,
label values, argument]; verbs: inc, dec, set, observe, info, state, touch.
Children run one after the other; "kill" children are SIGKILLed after
their ops, "stay" children stay alive until the parent has collected.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
from typing import Any


def _setup(mode: str, directory: str) -> None:
    if mode == "mpc":
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    elif mode == "shm":
        import prometheus_shm

        prometheus_shm.install(os.path.join(directory, "segment"), capacity=4096, processes=64)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


def _define(metrics: list[list[Any]]) -> list[Any]:
    from prometheus_client import Counter, Enum, Gauge, Histogram, Info, Summary

    made: list[Any] = []
    for kind, name, labelnames, option in metrics:
        doc = f"{kind} {name}"
        if kind == "counter":
            made.append(Counter(name, doc, labelnames, registry=None))
        elif kind == "gauge":
            made.append(Gauge(name, doc, labelnames, registry=None, multiprocess_mode=option))
        elif kind == "histogram":
            made.append(Histogram(name, doc, labelnames, registry=None, buckets=option))
        elif kind == "summary":
            made.append(Summary(name, doc, labelnames, registry=None))
        elif kind == "info":
            made.append(Info(name, doc, labelnames, registry=None))
        elif kind == "enum":
            made.append(Enum(name, doc, labelnames, registry=None, states=option))
        else:
            raise SystemExit(f"unknown metric kind {kind!r}")
    return made


def _run(made: list[Any], ops: list[list[Any]]) -> None:
    for verb, index, labelvalues, arg in ops:
        metric = made[index]
        if labelvalues:
            metric = metric.labels(*labelvalues)
        if verb == "touch":
            continue
        getattr(metric, verb)(arg) if arg is not None else getattr(metric, verb)()


def _child(
    mode: str,
    directory: str,
    spawned: bool,
    metrics: list[Any],
    ops: list[Any],
    ready: Any,
    go: Any,
) -> None:
    if spawned:
        _setup(mode, directory)
        made = _define(metrics)
    else:
        made = _PARENT_METRICS
    _run(made, ops)
    ready.set()
    go.wait(60)


_PARENT_METRICS: list[Any] = []


def main() -> None:
    mode, directory = sys.argv[1], sys.argv[2]
    workload = json.load(sys.stdin)
    _setup(mode, directory)
    from prometheus_client import CollectorRegistry, generate_latest

    made = _define(workload["metrics"])
    _PARENT_METRICS[:] = made
    _run(made, workload.get("parent", []))
    pids: list[int] = [os.getpid()]
    ended: list[int] = []
    staying: list[tuple[Any, Any]] = []
    for child in workload.get("children", []):
        ctx = multiprocessing.get_context(child["start"])
        ready, go = ctx.Event(), ctx.Event()
        proc = ctx.Process(
            target=_child,
            args=(
                mode,
                directory,
                child["start"] == "spawn",
                workload["metrics"],
                child["ops"],
                ready,
                go,
            ),
        )
        proc.start()
        if not ready.wait(60):
            raise SystemExit("a child did not get ready")
        pids.append(proc.pid or 0)
        if child["end"] == "kill":
            os.kill(proc.pid or 0, signal.SIGKILL)
            proc.join(30)
            ended.append(proc.pid or 0)
        elif child["end"] == "exit":
            go.set()
            proc.join(30)
            ended.append(proc.pid or 0)
        else:
            staying.append((proc, go))
    if mode == "mpc":
        from prometheus_client import multiprocess

        for pid in ended:
            multiprocess.mark_process_dead(pid)
    _run(made, workload.get("after", []))
    registry = CollectorRegistry()
    if mode == "mpc":
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        import prometheus_shm

        prometheus_shm.Collector(registry)
    text = generate_latest(registry).decode()
    for proc, go in staying:
        go.set()
        proc.join(30)
    json.dump({"exposition": text, "pids": pids}, sys.stdout)


if __name__ == "__main__":
    main()
