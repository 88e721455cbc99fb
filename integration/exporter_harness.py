"""Run ``raindrops-exporter`` and ``raindrops-top`` as their users do: from their own command line.

The exporter is started with ``--bind 127.0.0.1:0`` (the kernel picks a free
port, the exporter prints where it serves), in a process group of its own
that the test stops in ``finally``. Nothing is ever killed by name.

Example::

    with exporter(env={"RAINDROPS_SHM_DIR": shm}) as exp:
        status, headers, body = exp.get("/metrics")
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
_SERVING = re.compile(r"serving on http://([0-9.]+):([0-9]+)/")


def tool(name: str) -> str:
    """The console script ``name`` installed beside this Python (the integration venv's)."""
    return str(BIN / name)


@dataclass
class RunningExporter:
    """A ``raindrops-exporter`` process and a small HTTP client for it."""

    proc: subprocess.Popen[bytes]
    host: str
    port: int
    log_path: Path

    def request(
        self, path: str, headers: Mapping[str, str] | None = None, timeout: float = 10.0
    ) -> tuple[int, dict[str, str], bytes]:
        """One GET on a fresh connection: status, headers (lower-case), body."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request("GET", path, headers=dict(headers or {}))
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    get = request

    def json(self, path: str = "/json") -> Any:
        status, _, body = self.request(path)
        assert status == 200, body
        return json.loads(body)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextlib.contextmanager
def exporter(
    *args: str,
    env: Mapping[str, str] | None = None,
    startup_timeout: float = 30.0,
    bind: str = "127.0.0.1:0",
    wrapper: Sequence[str] = (),
) -> Iterator[RunningExporter]:
    """``raindrops-exporter --bind 127.0.0.1:0 ARGS`` until the block ends.

    ``bind`` is another loopback address (port 0: the kernel picks one);
    ``wrapper`` a command that execs the rest (``nsenter --mount=...``), so the
    process started is the exporter itself.
    """
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with tempfile.TemporaryDirectory(prefix="rd-exp-") as logdir:
        log_path = Path(logdir) / "exporter.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [*wrapper, tool("raindrops-exporter"), "--bind", bind, *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + startup_timeout
            while True:
                found = _SERVING.search(log_path.read_text(errors="replace"))
                if found:
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"raindrops-exporter did not start:\n{log_path.read_text()}")
                time.sleep(0.05)
            yield RunningExporter(proc, found.group(1), int(found.group(2)), log_path)
        finally:
            _stop(proc)


def run_once(*args: str, env: Mapping[str, str] | None = None) -> str:
    """``raindrops-exporter --once ARGS``: what it printed (it must exit 0)."""
    proc = subprocess.run(
        [tool("raindrops-exporter"), "--once", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text parsed by prometheus_client's parser: {(name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(parsed: Mapping[Any, float], name: str, **labels: str) -> float:
    """The one sample ``name{labels}`` of :func:`samples`' answer (KeyError if absent)."""
    return parsed[(name, tuple(sorted(labels.items())))]


def promtool_check(text: str) -> None:
    """``promtool check metrics`` accepts ``text`` (Debian's prometheus package)."""
    proc = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
