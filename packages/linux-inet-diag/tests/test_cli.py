"""The linux-listener-stats command line."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time

import pytest
from linux_inet_diag._cli import main

pytestmark = pytest.mark.linux


def test_rows_for_named_listener(capsys: pytest.CaptureFixture[str]) -> None:
    """One row per name: timestamp, address, active, queued, backlog."""
    with socket.create_server(("127.0.0.1", 0), backlog=11) as srv:
        name = f"127.0.0.1:{srv.getsockname()[1]}"
        assert main([name, "127.0.0.1:1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "timestamp address active queued backlog"
    assert re.fullmatch(rf"\S+ {re.escape(name)} 0 0 11", out[1])
    assert re.fullmatch(r"\S+ 127\.0\.0\.1:1 0 0 -", out[2])


def test_threshold_json_and_hint(capsys: pytest.CaptureFixture[str]) -> None:
    """--json honours -t, and a 127.x name on a wildcard port gets a hint."""
    with socket.create_server(("0.0.0.0", 0), backlog=3) as srv:
        port = srv.getsockname()[1]
        c = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            time.sleep(0.05)
            names = [f"0.0.0.0:{port}", f"127.0.0.1:{port}"]
            assert main(["--json", "-t", "1", *names]) == 0
        finally:
            c.close()
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["listeners"] == {f"0.0.0.0:{port}": {"active": 0, "queued": 1, "backlog": 3}}
    assert f"127.0.0.1:{port}: nothing listens there; did you mean 0.0.0.0:{port}?" in (
        captured.err
    )


def test_bad_address_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed ADDR exits 2 with the error naming the value."""
    assert main(["::1:80"]) == 2
    assert "invalid listener name '::1:80'" in capsys.readouterr().err


def test_repeats_with_delay_until_interrupted() -> None:
    """With -d the command keeps sampling until it is interrupted (bounded here)."""
    with subprocess.Popen(
        [sys.executable, "-c", "from linux_inet_diag._cli import main; main()",
         "-d", "0.05", "127.0.0.1:1"],
        stdout=subprocess.PIPE, text=True,
    ) as proc:  # fmt: skip
        try:
            assert proc.stdout is not None
            lines = [proc.stdout.readline() for _ in range(4)]
        finally:
            proc.kill()
            proc.wait(timeout=10)
    assert lines[0] == "timestamp address active queued backlog\n"
    assert all(" 127.0.0.1:1 0 0 -" in ln for ln in lines[1:])


def test_help() -> None:
    """--help describes the arguments and exits 0."""
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
