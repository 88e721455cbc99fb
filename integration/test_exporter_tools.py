"""raindrops-exporter inside gunicorn's arbiter, and raindrops-top in a terminal.

- ``gunicorn -c gunicorn.conf.py`` with the documented recipe
  (``when_ready, on_exit = exporter_hooks(...)``), 4 sync workers: the
  arbiter serves ``/metrics`` on its own port, and answers with every worker
  held (calling 4); no worker holds the exporter's socket (fork safety: the
  in-band endpoint lists the server's one listener only); SIGTERM stops it
  all, the port is closed, no traceback in the log.
- ``raindrops-top`` under tmux (``send-keys``, ``capture-pane``): the frame
  shows the server, its listener and every worker; ``p`` sorts by PID, ``r``
  by requests/s, ``q`` exits 0. ``--once`` prints one frame; a closed pipe
  ends it quietly, exit 0.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from exporter_harness import samples, tool, value
from raindrops_exporter import listening_sockets, socket_inodes
from servers import free_port, launch, tcp, wait_until

pytestmark = [
    pytest.mark.linux,
    pytest.mark.skipif(sys.platform != "linux", reason="needs Linux (netlink, /proc)"),
    pytest.mark.timeout(180),
]

RECIPE = """\
# gunicorn.conf.py
from raindrops_exporter.gunicorn import exporter_hooks

when_ready, on_exit = exporter_hooks("127.0.0.1:{port}")
"""


def _get(port: int, path: str) -> tuple[int, bytes]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_gunicorn_arbiter_serves_metrics_while_every_worker_is_held(tmp_path: Path) -> None:
    """The recipe's exporter answers from the arbiter with 4 of 4 workers held, fork-safely."""
    shm = tmp_path / "shm"
    shm.mkdir()
    env = {"RAINDROPS_SHM_DIR": str(shm), "RD_GATE_DIR": str(tmp_path)}
    port = free_port()
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(RECIPE.format(port=port))
    extra = ["-c", str(conf)]
    with launch(
        "gunicorn-sync",
        "exporter_stack:wsgi",
        tcp(),
        workers=4,
        extra=extra,
        env=env,
        ready_path="/hello",
    ) as srv:
        status, body = _get(port, "/metrics")
        assert status == 200, body
        # No worker inherited the exporter's socket: the server has one listener.
        listeners = json.loads(srv.get("/_raindrops?format=json")[2])["listeners"]
        assert list(listeners) == [srv.name]
        exporter_inodes = {
            i for i, s in listening_sockets().items() if s.name == f"127.0.0.1:{port}"
        }
        assert len(exporter_inodes) == 1
        for pid in srv.worker_pids():
            assert not socket_inodes(pid) & exporter_inodes, pid
        assert exporter_inodes <= socket_inodes(srv.proc.pid)  # the arbiter serves it
        conns = []
        try:
            for i in range(4):
                conn = srv.connect(timeout=30)
                conn.sendall(f"GET /hold?gate=go&id={i} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                conns.append(conn)
                wait_until((tmp_path / f"pid-{i}").exists, timeout=15)
            assert len({(tmp_path / f"pid-{i}").read_text() for i in range(4)}) == 4
            status, body = _get(port, "/metrics")
            got = samples(body.decode())
            assert value(got, "raindrops_calling", server=srv.name) == 4
            assert value(got, "raindrops_workers_busy", server=srv.name) == 4
            assert value(got, "raindrops_exporter_servers") == 1
        finally:
            (tmp_path / "go").write_text("")
            for conn in conns:
                conn.close()
        srv.stop()
        log = srv.log()
        assert f"raindrops-exporter: serving on http://127.0.0.1:{port}/" in log
        assert "Traceback" not in log
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0


def _tmux(sock: str, *args: str) -> str:
    return subprocess.run(
        ["tmux", "-L", sock, *args], capture_output=True, text=True, check=True, timeout=10
    ).stdout


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (apt-get install tmux)")
def test_raindrops_top_shows_servers_and_workers_sorts_and_quits(tmp_path: Path) -> None:
    """Under tmux, the frame lists the server and each worker; p and r sort; q exits 0."""
    shm = tmp_path / "shm"
    shm.mkdir()
    env = {"RAINDROPS_SHM_DIR": str(shm), "RD_GATE_DIR": str(tmp_path)}
    sock = f"rd-top-{os.getpid()}"
    status = tmp_path / "status"
    with launch(
        "gunicorn-sync", "exporter_stack:wsgi", tcp(), workers=3, env=env, ready_path="/hello"
    ) as srv:
        for _ in range(12):
            srv.get("/hello", headers={"Connection": "close"})
        pids = srv.worker_pids()
        command = (
            f"env RAINDROPS_SHM_DIR={shm} {tool('raindrops-top')} -d 0.3; "
            f"echo exit=$? > {status}; sleep 30"
        )
        _tmux(sock, "new-session", "-d", "-s", "top", "-x", "150", "-y", "40", command)
        try:

            def screen() -> str:
                return _tmux(sock, "capture-pane", "-p", "-t", "top")

            wait_until(
                lambda: srv.name in screen() and all(str(p) in screen() for p in pids), timeout=15
            )
            frame = screen()
            assert f"server {srv.name}" in frame
            assert "sort: busy %" in frame
            _tmux(sock, "send-keys", "-t", "top", "p")
            wait_until(lambda: "sort: pid" in screen(), timeout=10)
            shown = []
            for line in screen().splitlines():
                cells = line.split()
                if len(cells) > 1 and cells[1].isdigit() and int(cells[1]) in pids:
                    shown.append(int(cells[1]))
            assert shown == sorted(pids)
            _tmux(sock, "send-keys", "-t", "top", "r")
            wait_until(lambda: "sort: req/s" in screen(), timeout=10)
            _tmux(sock, "send-keys", "-t", "top", "q")
            wait_until(status.exists, timeout=10)
            assert status.read_text().strip() == "exit=0"
        finally:
            subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True, check=False)

        once = subprocess.run(
            [tool("raindrops-top"), "--once"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert once.returncode == 0, once.stderr
        assert f"server {srv.name}" in once.stdout
        assert all(str(p) in once.stdout for p in pids)

        # A reader that went away: exit 0, nothing on stderr.
        proc = subprocess.Popen(
            [tool("raindrops-top"), "--once"],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        assert proc.stderr is not None
        proc.stdout.close()
        assert proc.wait(timeout=60) == 0
        with proc.stderr:
            assert proc.stderr.read() == b""
