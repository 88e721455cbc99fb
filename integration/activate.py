"""Socket activation as systemd does it: listen, hand the sockets over as fds 3.., exec the server.

Usage::

    python activate.py --listen 127.0.0.1:8000 [--listen unix:/run/app.sock] -- gunicorn app:app

What systemd does for a ``.socket`` unit with ``Accept=no``: it creates and
listens on every socket, then starts the service with them as descriptors
3, 4, ... and ``LISTEN_FDS`` (their number), ``LISTEN_PID`` (the service's
own PID: this process execs, so its PID is the server's) and
``LISTEN_FDNAMES``. gunicorn reads them (``gunicorn/systemd.py``) and binds
nothing itself. A port already in use exits 98 with ``Address already in
use``, as a server's own bind would.
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys

SD_LISTEN_FDS_START = 3


def _listen(spec: str, backlog: int) -> socket.socket:
    if spec.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(spec[5:])
    else:
        host, _, port = spec.rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, int(port)))
    sock.listen(backlog)
    return sock


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", action="append", required=True, help="HOST:PORT or unix:PATH")
    parser.add_argument("--backlog", type=int, default=2048)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run")
    socks = []
    for spec in args.listen:
        try:
            socks.append(_listen(spec, args.backlog))
        except OSError as exc:
            print(f"activate: cannot listen on {spec}: {exc}", file=sys.stderr)
            return 98 if exc.errno == errno.EADDRINUSE else 1
    # Move them to 3, 4, ... without clobbering one another on the way.
    moved = [os.dup(s.fileno()) for s in socks]
    for s in socks:
        s.close()
    for i, fd in enumerate(moved):
        target = SD_LISTEN_FDS_START + i
        os.dup2(fd, target, inheritable=True)
    for fd in moved:
        if fd >= SD_LISTEN_FDS_START + len(moved):
            os.close(fd)
    os.environ["LISTEN_FDS"] = str(len(moved))
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.environ["LISTEN_FDNAMES"] = ":".join("server" for _ in moved)
    os.execvp(command[0], command)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
