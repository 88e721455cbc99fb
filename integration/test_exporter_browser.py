"""The exporter's dashboard in headless Chromium: the figures of ``/json``, a time axis, live.

gunicorn (3 sync workers) listens on TCP and on a Unix socket whose path
holds markup (``<b>&amp;x.sock``); two requests are held inside the app;
``raindrops-exporter --interval 0.5`` runs beside it. The page, loaded
once, shows per server the values ``/json`` gives at the same moment
(calling, writing, busy/live workers, each listener's active, queued and
backlog, the worker table's PIDs and in-flight counts); the listener name
is text, not markup; the chart has a time axis (``HH:MM:SS`` ticks) and
lines; releasing one request changes ``calling`` on the page from 2 to 1
without a reload (a marker set in the page survives). With
``$RD_EXPORTER_SCREENSHOT`` set, the page's screenshot is written there
(the package README's picture).
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any

import pytest
from exporter_harness import exporter
from servers import launch, tcp, unix, wait_until
from test_browser_watcher import CHROMEDRIVER, CHROMIUM, browser

pytestmark = [
    pytest.mark.browser,
    pytest.mark.linux,
    pytest.mark.slow,
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="chromium or chromedriver is not installed "
        "(Debian: apt-get install chromium chromium-driver)",
    ),
]

__all__ = ["browser"]  # the fixture, imported


def _page(driver: Any, label: str) -> dict[str, Any]:
    """What the page shows for one server, read from the DOM."""
    return driver.execute_script(
        """
        const box = [...document.querySelectorAll("section.server")]
            .find(s => s.getAttribute("data-server") === arguments[0]);
        if (!box) return null;
        const field = f => box.querySelector('.figures [data-field="' + f + '"]').textContent;
        const listeners = {};
        for (const row of box.querySelectorAll('table[data-table="listeners"] tr[data-listener]')) {
            const get = f => row.querySelector('[data-field="' + f + '"]').textContent;
            const name = row.getAttribute("data-listener");
            listeners[name] = [get("active"), get("queued"), get("backlog")];
        }
        const workers = {};
        for (const row of box.querySelectorAll('table[data-table="workers"] tr[data-pid]')) {
            const cell = row.querySelector('[data-field="in_flight"]');
            workers[row.getAttribute("data-pid")] = cell.textContent;
        }
        const tickNodes = box.querySelectorAll("svg[data-chart] text.tick");
        const ticks = [...tickNodes].map(t => t.textContent);
        const lines = box.querySelectorAll("svg[data-chart] polyline").length;
        return {calling: field("calling"), writing: field("writing"), workers: field("workers"),
                listeners, workers_table: workers, ticks, lines,
                heading: box.querySelector("h2").textContent,
                markup: box.querySelectorAll("h2 b, td.name b").length,
                updates: Number(document.body.getAttribute("data-updates") || 0)};
        """,
        label,
    )


def _expected(doc: dict[str, Any], label: str) -> dict[str, Any]:
    (s,) = [s for s in doc["servers"] if s["server"] == label]
    return {
        "calling": str(s["calling"]),
        "writing": str(s["writing"]),
        "workers": f"{s['workers_busy']}/{s['workers']}",
        "listeners": {
            n: [str(v["active"]), str(v["queued"]), str(v["backlog"])]
            for n, v in s["listeners"].items()
        },
        "workers_table": {str(w["pid"]): str(w["in_flight"]) for w in s["worker_table"]},
    }


def test_dashboard_shows_json_with_a_time_axis_and_updates_itself(
    browser: Any, tmp_path: Path
) -> None:
    """The page's figures equal /json's; the chart has a time axis; it updates without reload."""
    shm = tmp_path / "shm"
    shm.mkdir()
    env = {"RAINDROPS_SHM_DIR": str(shm), "RD_GATE_DIR": str(tmp_path)}
    marked = tmp_path / "<b>&amp;x.sock"
    with launch(
        "gunicorn-sync",
        "exporter_stack:wsgi",
        tcp(),
        unix(marked),
        workers=3,
        env=env,
        ready_path="/hello",
    ) as srv:
        label = f"{srv.name},{marked}"
        conns: list[socket.socket] = []
        try:
            for i, gate in enumerate(["one", "two"]):
                conn = srv.connect(timeout=30)
                conn.sendall(f"GET /hold?gate={gate}&id={i} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                conns.append(conn)
                wait_until((tmp_path / f"pid-{i}").exists, timeout=15)
            with exporter("--interval", "0.5", env=env) as exp:
                browser.get(f"http://{exp.host}:{exp.port}/")
                wait_until(lambda: (_page(browser, label) or {}).get("updates", 0) >= 2, timeout=20)
                # Held requests keep the figures still: the page and /json read the same moment.
                shown = _page(browser, label)
                want = _expected(exp.json(), label)
                assert {k: shown[k] for k in want} == want
                assert shown["calling"] == "2"
                assert shown["workers"] == "2/3"
                assert shown["heading"] == label
                assert shown["markup"] == 0  # the markup in the path is text
                assert len(shown["ticks"]) >= 2
                assert all(re.fullmatch(r"\d\d:\d\d:\d\d", t) for t in shown["ticks"]), shown[
                    "ticks"
                ]
                assert shown["lines"] >= 1
                if os.environ.get("RD_EXPORTER_SCREENSHOT"):
                    browser.set_window_size(1100, 1000)
                    wait_until(
                        lambda: _page(browser, label)["updates"] >= shown["updates"] + 4, timeout=20
                    )
                    browser.save_screenshot(os.environ["RD_EXPORTER_SCREENSHOT"])

                browser.execute_script("window.__noReload = 42;")
                (tmp_path / "one").write_text("")
                wait_until(lambda: _page(browser, label)["calling"] == "1", timeout=20)
                assert browser.execute_script("return window.__noReload;") == 42
                assert _page(browser, label)["workers"] == "1/3"
        finally:
            (tmp_path / "two").write_text("")
            (tmp_path / "one").write_text("")
            for conn in conns:
                conn.close()
