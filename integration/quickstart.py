"""Run a README's quick start as a reader would: its files, its commands, its expected output.

A README marks each block of its quick start with an HTML comment on the
line before the fence (invisible when rendered)::

    <!-- quickstart: install -->   shell commands run first, on this machine (pip)
    <!-- quickstart: file app.py --> the block is written to app.py
    <!-- quickstart: console -->   "$ command" lines; the lines under one are its output
    <!-- quickstart: doctest -->   a Python doctest, run with doctest

Console commands run in order with ``bash -c`` in the work directory; one
whose first word is ``gunicorn``, ``uvicorn`` or ``hypercorn`` starts a
server in the background (stopped, by process group, at the end), and the
command after it is retried until it succeeds, bounded, as a reader waits
for the server to come up. Output is compared exactly, but for ``...``,
which matches anything (doctest's ``ELLIPSIS``).

Servers are started on the ports the README names (8000, ...): run on the
command line as ``python quickstart.py PLAN.json`` inside ``unshare --net``
(see :func:`run_isolated`), they have a loopback of their own.
"""

from __future__ import annotations

import doctest
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

SERVERS = ("gunicorn", "uvicorn", "hypercorn")
_MARK = re.compile(r"<!-- quickstart: (install|file|console|doctest)(?: (\S+))? -->")
_FENCE = re.compile(r"^(```+|~~~+)")
READY_SECONDS = 30.0


@dataclass(frozen=True)
class Block:
    """One marked block of a README: its kind, its argument (a file name), its text."""

    kind: str
    arg: str
    text: str
    line: int


def blocks(readme: Path) -> list[Block]:
    """The marked blocks of ``readme``, in order."""
    lines = readme.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        mark = _MARK.fullmatch(lines[i].strip())
        if mark is None:
            i += 1
            continue
        fence = _FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
        if fence is None:
            raise ValueError(f"{readme}:{i + 1}: a quickstart mark must be followed by a fence")
        body: list[str] = []
        j = i + 2
        while j < len(lines) and not lines[j].startswith(fence.group(1)):
            body.append(lines[j])
            j += 1
        found.append(Block(mark.group(1), mark.group(2) or "", "\n".join(body) + "\n", i + 1))
        i = j + 1
    return found


@dataclass(frozen=True)
class Command:
    """One ``$ command`` of a console block and the output shown under it."""

    line: str
    want: str


def commands(block: Block) -> list[Command]:
    """The ``$`` commands of a console (or install) block, each with its expected output."""
    out: list[Command] = []
    for raw in block.text.splitlines():
        if raw.startswith("$ "):
            out.append(Command(raw[2:], ""))
        elif out:
            out[-1] = Command(out[-1].line, out[-1].want + raw + "\n")
        elif raw.strip():
            raise ValueError(f"line {block.line}: output before any command: {raw!r}")
    return out


def matches(want: str, got: str) -> bool:
    """Exact, but ``...`` in ``want`` matches anything (doctest ELLIPSIS)."""
    return doctest.OutputChecker().check_output(want, got, doctest.ELLIPSIS)


def _loopback_up() -> None:
    """Bring ``lo`` up in a fresh network namespace (``ip link set lo up``, by ioctl)."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), siocgifflags, req))[1]
        fcntl.ioctl(s.fileno(), siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))


def _shell(line: str, cwd: str, env: dict[str, str], timeout: float = 60) -> tuple[int, str]:
    proc = subprocess.run(
        ["bash", "-c", line],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


@dataclass
class Result:
    """What one command printed, and whether it matched what the README shows."""

    block_line: int
    command: str
    want: str
    got: str
    ok: bool


def run_plan(plan: dict[str, object]) -> list[Result]:
    """Run the non-install blocks of a plan (see :func:`run_isolated`); stop servers after."""
    workdir = str(plan["workdir"])
    env = {str(k): str(v) for k, v in dict(plan["env"]).items()}  # type: ignore[call-overload]
    results: list[Result] = []
    servers: list[subprocess.Popen[bytes]] = []
    logs = Path(workdir) / ".quickstart-logs"
    logs.mkdir(exist_ok=True)
    try:
        for raw in plan["blocks"]:  # type: ignore[attr-defined]
            block = Block(**raw)
            if block.kind == "file":
                (Path(workdir) / block.arg).write_text(block.text)
            elif block.kind == "doctest":
                script = Path(workdir) / f".doctest-{block.line}.txt"
                script.write_text(block.text)
                code, got = _shell(f"python3 -m doctest -o ELLIPSIS {script.name}", workdir, env)
                results.append(Result(block.line, "doctest", "", got, code == 0))
            elif block.kind == "console":
                retry = False
                for cmd in commands(block):
                    if cmd.line.split()[0] in SERVERS:
                        log = (logs / f"server-{len(servers)}.log").open("wb")
                        servers.append(
                            subprocess.Popen(
                                ["bash", "-c", f"exec {cmd.line}"],
                                cwd=workdir,
                                env=env,
                                stdin=subprocess.DEVNULL,
                                stdout=log,
                                stderr=subprocess.STDOUT,
                                start_new_session=True,
                            )
                        )
                        retry = True
                        continue
                    code, got = _shell(cmd.line, workdir, env)
                    deadline = time.monotonic() + READY_SECONDS
                    while retry and code != 0 and time.monotonic() < deadline:
                        time.sleep(0.2)
                        code, got = _shell(cmd.line, workdir, env)
                    retry = False
                    ok = code == 0 and matches(cmd.want, got)
                    results.append(Result(block.line, cmd.line, cmd.want, got, ok))
    finally:
        for proc in servers:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=15)
    for log in sorted(logs.glob("server-*.log")):
        text = log.read_text(errors="replace")
        results.append(Result(0, f"(log of {log.name})", "", text, "Traceback" not in text))
    return results


def run_isolated(plan: dict[str, object], python: str) -> list[Result]:
    """Run ``plan`` in a network namespace of its own when this process may make one.

    The README's ports (8000, 8001, ...) are then free whatever runs on this
    machine. Without ``unshare`` (or the right to use it) the plan runs here.
    """
    path = Path(str(plan["workdir"])) / ".quickstart-plan.json"
    path.write_text(json.dumps(plan))
    argv = [python, __file__, str(path)]
    if shutil.which("unshare") and os.geteuid() == 0:
        argv = ["unshare", "--net", "--", *argv, "--loopback"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"quick start runner failed ({proc.returncode}):\n{proc.stderr}")
    return [Result(**r) for r in json.loads(proc.stdout)]


def main() -> int:
    plan = json.loads(Path(sys.argv[1]).read_text())
    if "--loopback" in sys.argv[2:]:
        _loopback_up()
    print(json.dumps([asdict(r) for r in run_plan(plan)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
