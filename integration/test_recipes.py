"""The framework recipes of ``docs/frameworks.md`` run as written, exporter included.

Each recipe is a directory under ``integration/recipes/`` whose files the
docs page shows verbatim (each block marked ``<!-- recipe: PATH -->``; the
first test compares them byte for byte). Each is started by its server's own
command line with the recipe's configuration, the way the page says:

- Django under gunicorn's sync workers (``gunicorn -c gunicorn.conf.py
  mysite.wsgi``), the exporter in gunicorn's arbiter;
- Flask under gunicorn's gthread workers (``gunicorn -c gunicorn.conf.py
  app:app``), the exporter in the arbiter;
- FastAPI under ``uvicorn --workers 4 main:app``, the exporter as a sidecar.

Django, Flask and FastAPI come from the package index (the integration
session installs them). Asserted, through the exporter's ``/metrics``: the
framework answers; four slow requests at once read ``raindrops_calling`` 4
and 4 busy workers while they run; once idle, calling and busy are 0, the
server's worker count is the configured one, and the completed requests and
the latency histogram count exactly the requests sent, the four slow ones in
buckets of at least their 0.5 s.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from pathlib import Path

import pytest
from exporter_harness import exporter, samples
from fleet import ROOT, free_port
from servers import Server, launch, tcp, wait_until

pytestmark = [
    pytest.mark.linux,
    pytest.mark.skipif(sys.platform != "linux", reason="needs Linux (netlink, /proc)"),
    pytest.mark.timeout(180),
]

RECIPES = Path(__file__).resolve().parent / "recipes"
PAGE = ROOT / "docs" / "frameworks.md"
_MARK = re.compile(r"<!-- recipe: (\S+) -->")
PLAIN = 6
SLOW = 4


def _blocks() -> dict[str, str]:
    """``{path: text}`` of every marked block of the docs page."""
    lines = PAGE.read_text().splitlines()
    out: dict[str, str] = {}
    for i, line in enumerate(lines):
        mark = _MARK.fullmatch(line.strip())
        if mark is None:
            continue
        assert lines[i + 1].startswith("```"), f"{PAGE.name}:{i + 1}: a fence must follow"
        end = next(j for j in range(i + 2, len(lines)) if lines[j].startswith("```"))
        out[mark.group(1)] = "\n".join(lines[i + 2 : end]) + "\n"
    return out


def test_the_docs_show_each_recipe_file_verbatim() -> None:
    """Every file of every recipe is on the page, byte for byte, and nothing else is marked."""
    shown = _blocks()
    files = {
        str(p.relative_to(ROOT)): p.read_text()
        for p in sorted(RECIPES.rglob("*.py"))
        if p.name != "__init__.py"
    }
    assert set(shown) == set(files)
    for path, text in files.items():
        assert shown[path] == text, f"{PAGE.name} shows {path} differently"


def _scrape(port: int, name: str) -> dict[str, float]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        body = conn.getresponse().read().decode()
    finally:
        conn.close()
    out: dict[str, float] = {}
    for (metric, labels), value in samples(body).items():
        if ("server", name) in labels:
            le = dict(labels).get("le")
            out[f"{metric}{{le={le}}}" if le else metric] = value
    return out


def _exercise(srv: Server, port: int, workers: int, body: bytes) -> None:
    name = srv.name
    wait_until(lambda: "raindrops_workers" in _scrape(port, name), timeout=20)
    before = _scrape(port, name)
    for _ in range(PLAIN):
        status, _, got = srv.get("/", headers={"Connection": "close"})
        assert status == 200
        assert body in got, got
    answers: list[int] = []

    def slow() -> None:
        answers.append(srv.get("/report", headers={"Connection": "close"}, timeout=30)[0])

    threads = [threading.Thread(target=slow) for _ in range(SLOW)]
    for t in threads:
        t.start()
    peak = {"raindrops_calling": 0.0, "raindrops_workers_busy": 0.0}
    while any(t.is_alive() for t in threads):
        now = _scrape(port, name)
        for key in peak:
            peak[key] = max(peak[key], now.get(key, 0.0))
        time.sleep(0.01)
    for t in threads:
        t.join(timeout=30)
    assert answers == [200] * SLOW
    assert peak["raindrops_calling"] == SLOW, peak
    # gthread and async workers hold several requests each: busy is at least one worker.
    assert 1 <= peak["raindrops_workers_busy"] <= min(SLOW, workers), peak

    sent = PLAIN + SLOW
    key = "process_utilization_requests_total"
    wait_until(lambda: _scrape(port, name).get(key, 0) - before.get(key, 0) == sent, timeout=10)
    after = _scrape(port, name)
    assert after["raindrops_calling"] == 0
    assert after["raindrops_workers_busy"] == 0
    assert after["raindrops_workers"] == workers
    hist = "process_utilization_request_duration_seconds"
    counted = after[f"{hist}_count"] - before.get(f"{hist}_count", 0)
    assert counted == sent
    quick = after[f"{hist}_bucket{{le=0.25}}"] - before.get(f"{hist}_bucket{{le=0.25}}", 0)
    assert quick == PLAIN, after  # the four slow ones are above 0.25 s
    assert after[f"{hist}_sum"] - before.get(f"{hist}_sum", 0) >= SLOW * 0.5


@pytest.mark.parametrize(
    ("recipe", "kind", "app", "workers", "body"),
    [
        ("django", "gunicorn-sync", "mysite.wsgi", 4, b"hello from Django"),
        ("flask", "gunicorn-gthread", "app:app", 2, b"hello from Flask"),
    ],
    ids=["django-gunicorn-sync", "flask-gunicorn-gthread"],
)
def test_gunicorn_recipe_with_the_exporter_in_the_arbiter(
    recipe: str, kind: str, app: str, workers: int, body: bytes, tmp_path: Path
) -> None:
    """The recipe's gunicorn.conf.py starts the exporter in the arbiter; its figures are exact."""
    port = free_port()
    env = {"RAINDROPS_SHM_DIR": str(tmp_path), "RAINDROPS_EXPORTER_BIND": f"127.0.0.1:{port}"}
    with launch(
        kind,
        app,
        tcp("127.0.0.1"),
        workers=workers,
        extra=["-c", "gunicorn.conf.py"],
        env=env,
        app_dir=RECIPES / recipe,
    ) as srv:
        _exercise(srv, port, workers, body)
        assert "Traceback" not in srv.log(), srv.log()


def test_fastapi_recipe_under_uvicorn_with_the_exporter_beside_it(tmp_path: Path) -> None:
    """``uvicorn --workers 4 main:app`` and ``raindrops-exporter`` beside it; figures exact."""
    env = {"RAINDROPS_SHM_DIR": str(tmp_path)}
    with (
        launch(
            "uvicorn", "main:app", tcp("127.0.0.1"), workers=4, env=env, app_dir=RECIPES / "fastapi"
        ) as srv,
        exporter(env=env) as exp,
    ):
        _exercise(srv, exp.port, 4, b'{"hello":"FastAPI"}')
        assert "Traceback" not in srv.log(), srv.log()
