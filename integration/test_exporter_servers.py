"""The exporter's figures are the middleware's and the kernel's, for every server of the user.

Servers start from their own command lines with no segment configured;
``raindrops-exporter`` from its own, beside them. Checked:

- exactness, idle after a known number of requests (gunicorn sync with 4
  workers, ``uvicorn --workers 2``): ``calling``/``writing``, every worker's
  counters and the listener's figures equal the middleware's own
  (``/_raindrops?format=json``, ``/_utilization?format=json``; the in-band
  ``active`` counts its own connection, one more) and the kernel's (netlink,
  read by the test); every in-band ``?format=prometheus`` family is in the
  exporter's output, with the same value and a ``server`` label; the output
  is parsed by prometheus_client's parsers (text and OpenMetrics) and passes
  ``promtool check metrics``;
- two servers at once (gunicorn on TCP, uvicorn on a Unix socket): both
  found, labelled apart by their listener names; one stopped: its series are
  gone at the first scrape after its sockets close (asserted within 2 s);
- another user's server (``setpriv`` as ``nobody``, same ``$RAINDROPS_SHM_DIR``
  base): never shown, nor a segment file of another owner in this user's
  directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import pytest
from exporter_harness import exporter, promtool_check, run_once, samples, value
from linux_inet_diag import tcp_listener_stats, unix_listener_stats
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families
from servers import launch, tcp, unix, wait_for_value, wait_until

pytestmark = [
    pytest.mark.linux,
    pytest.mark.skipif(sys.platform != "linux", reason="needs Linux (netlink, /proc)"),
    pytest.mark.timeout(180),
]

REQUESTS = 24
NOBODY = 65534


def _in_band(srv, path: str) -> dict:
    status, _, body = srv.get(path, headers={"Connection": "close"})
    assert status == 200, body
    return json.loads(body)


CASES = [("gunicorn-sync", "exporter_stack:wsgi", 4), ("uvicorn", "exporter_stack:asgi", 2)]


@pytest.mark.parametrize(("kind", "app", "workers"), CASES, ids=[c[0] for c in CASES])
def test_figures_equal_the_middlewares_and_the_kernels(
    kind: str, app: str, workers: int, tmp_path: Path
) -> None:
    """Idle after 24 more requests, every figure equals the in-band endpoints' and netlink's."""
    shm = tmp_path / "shm"
    shm.mkdir()
    env = {"RAINDROPS_SHM_DIR": str(shm), "RD_GATE_DIR": str(tmp_path)}
    with launch(kind, app, tcp("127.0.0.1"), workers=workers, env=env, ready_path="/hello") as srv:
        # The start's readiness probes (one or more) were requests too: count from
        # here, once none is in flight (a probe's client has its answer before the
        # worker's accounting of it ends).
        def total() -> int:
            return int(_in_band(srv, "/_utilization?format=json")["total"]["requests_total"])

        def settled() -> int | None:
            doc = _in_band(srv, "/_utilization?format=json")["total"]
            return None if doc["in_flight"] else int(doc["requests_total"])

        wait_until(lambda: settled() is not None)
        before = total()
        for _ in range(REQUESTS):
            assert srv.get("/hello", headers={"Connection": "close"})[0] == 200
        served = before + REQUESTS
        wait_for_value(total, served)  # idle: every request has ended in its worker
        name = srv.name
        with exporter(env=env) as exp:
            rd = _in_band(srv, "/_raindrops?format=json")
            util = _in_band(srv, "/_utilization?format=json")
            status, _, prom_in_band = srv.get("/_raindrops?format=prometheus")
            assert status == 200
            # The sampler's connection count settles once the in-band requests are closed.
            wait_for_value(
                lambda: exp.json()["servers"][0]["listeners"][name]["active"],
                tcp_listener_stats([name])[name].active,
            )
            doc = exp.json()
            kernel = tcp_listener_stats([name])[name]
            (server,) = doc["servers"]
            assert server["server"] == name
            assert (
                (server["calling"], server["writing"]) == (rd["calling"], rd["writing"]) == (0, 0)
            )
            mine = server["listeners"][name]
            theirs = rd["listeners"][name]
            assert mine == {
                "active": kernel.active,
                "queued": kernel.queued,
                "backlog": kernel.backlog,
            }
            assert mine["active"] == theirs["active"] - 1  # the in-band read's own connection
            assert (mine["queued"], mine["backlog"]) == (theirs["queued"], theirs["backlog"])
            keys = (
                "pid",
                "in_flight",
                "requests_total",
                "busy_seconds_total",
                "response_seconds_total",
            )
            by_pid = {w["pid"]: {k: w[k] for k in keys} for w in server["worker_table"]}
            assert by_pid == {w["pid"]: {k: w[k] for k in keys} for w in util["workers"]}
            assert server["requests_total"] == util["total"]["requests_total"] == served
            assert server["request_duration_seconds"]["count"] == served
            assert server["workers"] == workers
            assert server["workers_busy"] == 0

            status, headers, body = exp.get("/metrics")
            assert status == 200
            assert headers["content-type"].startswith("text/plain; version=0.0.4")
            text = body.decode()
            promtool_check(text)
            got = samples(text)
            assert value(got, "process_utilization_requests_total", server=name) == served
            assert (
                value(got, "process_utilization_request_duration_seconds_count", server=name)
                == served
            )
            for (metric, labels), v in samples(prom_in_band.decode()).items():
                mine_v = (
                    got[(metric, tuple(sorted({**dict(labels), "server": name}.items())))]
                    if metric.startswith(
                        (
                            "raindrops_calling",
                            "raindrops_writing",
                            "raindrops_shared",
                            "raindrops_listeners_available",
                            "raindrops_listener_",
                        )
                    )
                    else got[(metric, labels)]
                )
                if metric == "raindrops_listener_active":
                    assert mine_v == v - 1
                elif not metric.startswith("raindrops_listen_"):  # machine-wide counters move
                    assert mine_v == v, metric

            status, headers, body = exp.get(
                "/metrics", headers={"Accept": "application/openmetrics-text"}
            )
            assert headers["content-type"].startswith("application/openmetrics-text")
            om = body.decode()
            assert om.endswith("# EOF\n")
            assert "# UNIT process_utilization_busy_seconds seconds\n" in om
            families = {f.name: f for f in om_families(om)}
            assert families["raindrops_calling"].samples[0].labels == {"server": name}

            # --once prints the same figures and exits.
            once = samples(run_once(env=env))
            assert value(once, "raindrops_calling", server=name) == 0
            assert value(once, "process_utilization_requests_total", server=name) == served


def _labels(exp) -> list[str]:
    return [s["server"] for s in exp.json()["servers"]]


def test_two_servers_are_found_apart_and_a_stopped_one_goes(tmp_path: Path) -> None:
    """gunicorn on TCP and uvicorn on a Unix socket are both shown; a stopped one disappears."""
    shm = tmp_path / "shm"
    shm.mkdir()
    env = {"RAINDROPS_SHM_DIR": str(shm), "RD_GATE_DIR": str(tmp_path)}
    sock = str(tmp_path / "uv.sock")
    with contextlib.ExitStack() as stack:
        gun = stack.enter_context(
            launch(
                "gunicorn-sync",
                "exporter_stack:wsgi",
                tcp("127.0.0.1"),
                workers=2,
                env=env,
                ready_path="/hello",
            )
        )
        uv = stack.enter_context(
            launch(
                "uvicorn",
                "exporter_stack:asgi",
                unix(sock),
                workers=2,
                env=env,
                ready_path="/hello",
            )
        )
        exp = stack.enter_context(exporter(env=env))
        assert _labels(exp) == sorted([gun.name, sock])
        got = samples(exp.get("/metrics")[2].decode())
        assert value(got, "raindrops_workers", server=gun.name) == 2
        assert value(got, "raindrops_workers", server=sock) == 2
        unix_kernel = unix_listener_stats([sock])[sock]
        assert (
            value(got, "raindrops_listener_backlog", server=sock, listener=sock)
            == unix_kernel.backlog
        )
        assert value(got, "raindrops_exporter_servers") == 2
        # Selected servers only: by label.
        assert [
            s["server"]
            for s in json.loads(run_once("--json", "--server", sock, env=env))["servers"]
        ] == [sock]

        uv.stop()
        wait_until(lambda: _labels(exp) == [gun.name], timeout=2.0)
        text = exp.get("/metrics")[2].decode()
        assert sock not in text
        assert value(samples(text), "raindrops_exporter_servers") == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to give files to another user)")
def test_another_users_servers_are_never_shown(tmp_path: Path) -> None:
    """A live server's segments in nobody's directory, or owned by nobody in ours, are not shown.

    The other user's server is a real one whose segment directory is then
    handed to ``nobody`` (renamed ``raindrops-65534``, chowned): this
    machine's Python cannot run as nobody (pyenv lives under /root), and
    what the exporter sees is the same: another user's directory and files.
    """
    base = tmp_path / "shm"
    base.mkdir()
    env = {"RAINDROPS_SHM_DIR": str(base), "RD_GATE_DIR": str(tmp_path)}
    own = base / f"raindrops-{os.geteuid()}"
    foreign = base / f"raindrops-{NOBODY}"
    stack = "exporter_stack:wsgi"
    with launch(
        "gunicorn-sync", stack, tcp("127.0.0.1"), workers=2, env=env, ready_path="/hello"
    ) as theirs:
        own.rename(foreign)
        for path in [foreign, *foreign.iterdir()]:
            os.chown(path, NOBODY, NOBODY)
        with launch(
            "gunicorn-sync", stack, tcp("127.0.0.1"), workers=2, env=env, ready_path="/hello"
        ) as mine:
            # A file of another owner, named like a segment of our live server, in our directory.
            inode = min(
                int(p.name.split("-")[1]) for p in own.iterdir() if p.name.startswith("raindrops-")
            )
            planted = own / f"latency-{inode}"
            planted.unlink(missing_ok=True)
            planted.write_bytes(b"\0" * 4096)
            os.chown(planted, NOBODY, NOBODY)
            with exporter(env=env) as exp:
                doc = exp.json()
                assert [s["server"] for s in doc["servers"]] == [mine.name]
                assert "latency" not in doc["servers"][0]["segments"]
                assert theirs.name not in exp.get("/metrics")[2].decode()
