"""The linux-listener-stats command line."""

from __future__ import annotations

import errno
import json
import os
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


def test_every_listener_without_addr(
    capsys: pytest.CaptureFixture[str], tmp_path: os.PathLike[str]
) -> None:
    """No ADDR: TCP and Unix listeners the test made are rows with their exact numbers."""
    path = os.path.join(tmp_path, "cli.sock")
    with (
        socket.create_server(("127.0.0.1", 0), backlog=13) as srv,
        socket.socket(socket.AF_UNIX) as usrv,
    ):
        usrv.bind(path)
        usrv.listen(5)
        name = f"127.0.0.1:{srv.getsockname()[1]}"
        held = [socket.create_connection(srv.getsockname(), timeout=5) for _ in range(2)]
        srv.settimeout(5)
        held.append(srv.accept()[0])
        ucli = socket.socket(socket.AF_UNIX)
        ucli.connect(path)
        held.append(ucli)
        try:
            deadline = time.monotonic() + 5  # the 2nd handshake ends asynchronously
            rows: dict[str, str] = {}
            while rows.get(name) != "1 1 13" and time.monotonic() < deadline:
                capsys.readouterr()
                assert main([]) == 0
                out = capsys.readouterr().out.splitlines()
                rows = {ln.split()[1]: " ".join(ln.split()[2:]) for ln in out[1:]}
        finally:
            for h in held:
                h.close()
    assert out[0] == "timestamp address active queued backlog"
    assert rows[name] == "1 1 13"
    assert rows[path] == "0 1 5"


def test_text_threshold_filters_rows(capsys: pytest.CaptureFixture[str]) -> None:
    """In text mode -t keeps only rows with queued >= QUEUED_THRESHOLD."""
    with (
        socket.create_server(("127.0.0.1", 0), backlog=4) as busy,
        socket.create_server(("127.0.0.1", 0), backlog=6) as idle,
    ):
        busy_name = f"127.0.0.1:{busy.getsockname()[1]}"
        idle_name = f"127.0.0.1:{idle.getsockname()[1]}"
        c = socket.create_connection(busy.getsockname(), timeout=5)
        try:
            deadline = time.monotonic() + 5
            out: list[str] = []
            while len(out) != 2 and time.monotonic() < deadline:
                assert main(["-t", "1", busy_name, idle_name]) == 0
                out = capsys.readouterr().out.splitlines()
        finally:
            c.close()
    assert out[0] == "timestamp address active queued backlog"
    assert re.fullmatch(rf"\S+ {re.escape(busy_name)} 0 1 4", out[1])


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["-d", "-1"], "argument -d/--delay: invalid DELAY '-1': "
                       "expected a finite number of seconds >= 0.1"),
        (["-d", "0"], "argument -d/--delay: invalid DELAY '0': "
                      "expected a finite number of seconds >= 0.1"),
        (["-d", "1e-9"], "argument -d/--delay: invalid DELAY '1e-9': "
                         "expected a finite number of seconds >= 0.1"),
        (["-d", "0.09"], "argument -d/--delay: invalid DELAY '0.09': "
                         "expected a finite number of seconds >= 0.1"),
        (["-d", "inf"], "argument -d/--delay: invalid DELAY 'inf': "
                        "expected a finite number of seconds >= 0.1"),
        (["-d", "soon"], "argument -d/--delay: invalid DELAY 'soon': "
                         "expected a finite number of seconds >= 0.1"),
        (["-t", "-2"], "argument -t/--threshold: invalid QUEUED_THRESHOLD '-2': "
                       "expected a whole number >= 0"),
        (["-t", "1.5"], "argument -t/--threshold: invalid QUEUED_THRESHOLD '1.5': "
                        "expected a whole number >= 0"),
        (["-n", "0"], "argument -n/--count: invalid COUNT '0': expected a whole number >= 1"),
        (["-n", "3"], "argument -n/--count: 3 samples need -d/--delay to repeat"),
    ],
)  # fmt: skip
def test_bad_options_are_usage_errors(
    capsys: pytest.CaptureFixture[str], args: list[str], error: str
) -> None:
    """A bad -d, -t or -n exits 2 with an argparse error naming the value."""
    with pytest.raises(SystemExit) as info:
        main([*args, "127.0.0.1:1"])
    assert info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == f"linux-listener-stats: error: {error}"


def test_count_stops_after_n_samples(capsys: pytest.CaptureFixture[str]) -> None:
    """-d with -n N prints N samples, then exits 0."""
    assert main(["-d", "0.1", "-n", "3", "127.0.0.1:1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "timestamp address active queued backlog"
    assert len(out) == 4
    assert all(re.fullmatch(r"\S+ 127\.0\.0\.1:1 0 0 -", ln) for ln in out[1:])
    assert main(["--json", "-d", "0.1", "-n", "2", "127.0.0.1:1"]) == 0
    docs = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [d["listeners"] for d in docs] == [
        {"127.0.0.1:1": {"active": 0, "queued": 0, "backlog": None}}
    ] * 2


def test_bad_address_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed ADDR exits 2 with the error naming the value."""
    assert main(["::1:80"]) == 2
    assert "invalid listener name '::1:80'" in capsys.readouterr().err


def test_repeats_with_delay_until_interrupted() -> None:
    """With -d the command keeps sampling until it is interrupted (bounded here)."""
    with subprocess.Popen(
        [sys.executable, "-c", "from linux_inet_diag._cli import main; main()",
         "-d", "0.1", "127.0.0.1:1"],
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


def test_hostile_unix_names_are_escaped_in_rows(
    capsys: pytest.CaptureFixture[str], tmp_path: os.PathLike[str]
) -> None:
    """An abstract name with a newline and ESC, and a non-UTF-8 path, print as one escaped row.

    Any user can bind such names; printed raw, the first forged a row and
    sent a terminal escape, the second could not be printed at all.
    """
    forged = b"\0rd-cli-\n2026-01-01T00:00:00+00:00 0.0.0.0:80 999 999 -\x1b[2J"
    raw_path = os.path.join(os.fsencode(tmp_path), b"caf\xe9.sock")
    with socket.socket(socket.AF_UNIX) as abstract, socket.socket(socket.AF_UNIX) as path_sock:
        abstract.bind(forged)
        abstract.listen(3)
        path_sock.bind(raw_path)
        path_sock.listen(4)
        names = ["@" + os.fsdecode(forged[1:]), os.fsdecode(raw_path)]
        assert main(names) == 0
        assert main(["--json", *names]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "timestamp address active queued backlog"
    assert [line.split(" ", 1)[1] for line in out[1:3]] == [
        "@rd-cli-\\n2026-01-01T00:00:00+00:00 0.0.0.0:80 999 999 -\\x1b[2J 0 0 3",
        f"{os.fsdecode(tmp_path)}/caf\\xe9.sock 0 0 4",
    ]
    assert json.loads(out[3])["listeners"] == {
        names[0]: {"active": 0, "queued": 0, "backlog": 3},
        names[1]: {"active": 0, "queued": 0, "backlog": 4},
    }
    assert "\x1b" not in "".join(out)


def test_a_reader_that_goes_away_ends_the_command_quietly() -> None:
    """``linux-listener-stats -d 0.1 | head -1``: exit 0, nothing on stderr, no traceback."""
    with subprocess.Popen(
        [sys.executable, "-c", "import sys; from linux_inet_diag._cli import main; "
         "sys.exit(main())", "-d", "0.1", "127.0.0.1:1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    ) as proc:  # fmt: skip
        try:
            assert proc.stdout is not None
            assert proc.stderr is not None
            first = proc.stdout.readline()
            proc.stdout.close()  # what head does once it has its line
            code = proc.wait(timeout=20)
            err = proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    assert first == b"timestamp address active queued backlog\n"
    assert (code, err) == (0, b"")


def test_a_refused_netlink_socket_says_what_was_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """socket(AF_NETLINK) refused with EPERM (a seccomp filter) is named as refused, exit 2."""
    real = socket.socket

    def refusing(family: int = -1, *args: object, **kwargs: object) -> socket.socket:
        if family == socket.AF_NETLINK:
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))
        return real(family, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "socket", refusing)
    assert main(["127.0.0.1:1"]) == 2
    assert capsys.readouterr().err == (
        "linux-listener-stats: [Errno 1] netlink sock_diag was refused: "
        "socket(AF_NETLINK, SOCK_RAW, NETLINK_SOCK_DIAG) failed with Operation not permitted "
        "(the kernel has netlink, but this process may not use it: a seccomp filter, "
        "a container or sandbox policy)\n"
    )
