"""Helpers shared by the tests: parsing expositions, collecting, workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import prometheus_shm
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

WORKLOAD = str(Path(__file__).resolve().parent / "promshm_workload.py")

Sample = tuple[str, str, str, str, tuple[tuple[str, str], ...], float]


def scrape(**kwargs: Any) -> str:
    """The exposition text of a fresh registry holding a prometheus_shm.Collector."""
    registry = CollectorRegistry()
    prometheus_shm.Collector(registry, **kwargs)
    return generate_latest(registry).decode()


def samples(text: str, pids: list[int] | None = None) -> set[Sample]:
    """Parsed samples as (family, type, help, sample, labels, value); pids renamed by order."""
    names = {str(p): f"proc{i}" for i, p in enumerate(pids or [])}
    out: set[Sample] = set()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = tuple(
                sorted((k, names.get(v, v) if k == "pid" else v) for k, v in s.labels.items())
            )
            out.add((fam.name, fam.type, fam.documentation, s.name, labels, round(s.value, 9)))
    return out


def values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of an exposition."""
    return {(s[3], s[4]): s[5] for s in samples(text)}


def families(text: str) -> set[str]:
    """Each family's exposition text, its HELP/TYPE lines then its sample lines sorted.

    A set, and sorted lines: MultiProcessCollector's order follows glob()'s.
    """
    blocks: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("# HELP "):
            blocks.append([])
        blocks[-1].append(line)
    return {"\n".join(b[:2] + sorted(b[2:])) for b in blocks}


def run_workload(mode: str, directory: str, workload: dict[str, Any]) -> dict[str, Any]:
    """Run ``workload`` in a fresh interpreter (see promshm_workload.py); its JSON answer."""
    env = {k: v for k, v in os.environ.items() if k.upper() != "PROMETHEUS_MULTIPROC_DIR"}
    proc = subprocess.run(
        [sys.executable, WORKLOAD, mode, directory],
        input=json.dumps(workload),
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"workload failed in {mode} mode:\n{proc.stderr}")
    answer: dict[str, Any] = json.loads(proc.stdout)
    return answer
