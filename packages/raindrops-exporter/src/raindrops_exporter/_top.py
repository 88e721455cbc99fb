"""``raindrops-top``: a full-screen terminal view of every server, like ``top``.

Drawn with curses (the standard library); ``--once`` prints one frame to
stdout. Every name from outside goes through ``linux_inet_diag.escape_name`` first, so a
listener path holding escape sequences cannot drive the terminal.
"""

from __future__ import annotations

import argparse
import curses
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType

from linux_inet_diag import escape_name
from process_utilization import WorkerStats

from ._errors import ConfigError
from ._exporter import Exporter, Reading, ServerReading

__all__ = ["SORTS", "main", "render_frame"]

#: Sort keys: key -> (title, how workers are ordered).
SORTS: dict[str, tuple[str, Callable[[WorkerStats], float]]] = {
    "b": ("busy %", lambda w: -w.percentage_active),
    "r": ("req/s", lambda w: -w.requests_per_second),
    "a": ("avg ms", lambda w: -w.average_response_time),
    "i": ("in flight", lambda w: -w.in_flight),
    "p": ("pid", lambda w: w.pid),
}
_HELP = "q quit  b busy%  r req/s  a avg ms  i in flight  p pid"


def _bar(queued: int, backlog: int | None, width: int) -> str:
    if not backlog:
        return "[" + "?" * width + "]"
    filled = min(width, round(width * queued / backlog))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _server_lines(server: ServerReading, sort: str, width: int) -> list[str]:
    calling = "-" if server.calling is None else str(server.calling)
    writing = "-" if server.writing is None else str(server.writing)
    lines = [
        f"server {escape_name(server.server)}",
        f"  calling {calling:>4}   writing {writing:>4}   workers {len(server.busy_pids)}/"
        f"{len(server.worker_pids)} busy   reclaimed {server.reclaimed or 0}",
    ]
    bar = max(10, min(40, width - 80))  # the text before the bar takes 78 columns
    for name, stats in server.listeners.items():
        backlog = "-" if stats.backlog is None else str(stats.backlog)
        lines.append(
            f"  {escape_name(name)[:40]:<40} active {stats.active:>5}  queued "
            f"{stats.queued:>5}/{backlog:<5} {_bar(stats.queued, stats.backlog, bar)}"
        )
    lines.append(
        f"  {'worker':>6} {'pid':>8} {'busy%':>6} {'req/s':>8} {'avg_ms':>8} {'in_flight':>9}"
        f" {'requests':>9}"
    )
    rows: list[tuple[float, str]] = []
    for w in server.workers:
        rows.append(
            (
                SORTS[sort][1](w),
                f"  {w.index:>6} {w.pid:>8} {w.percentage_active:>6.1f}"
                f" {w.requests_per_second:>8.1f} {w.average_response_time:>8.1f}"
                f" {w.in_flight:>9} {w.requests_total:>9}",
            )
        )
    # Live workers with no utilization row yet (no request served): listed, no figures.
    listed = {w.pid for w in server.workers}
    for pid in server.worker_pids:
        if pid not in listed:
            key = float(pid) if sort == "p" else float("inf")
            rows.append((key, f"  {'-':>6} {pid:>8} {'-':>6} {'-':>8} {'-':>8} {'-':>9} {'-':>9}"))
    rows.sort(key=lambda row: row[0])
    return lines + [line for _, line in rows]


def render_frame(reading: Reading, *, sort: str = "b", width: int = 100) -> list[str]:
    """One frame of ``raindrops-top``: a header, then each server and its workers.

    Example::

        print("\\n".join(render_frame(Exporter().sample())))
    """
    when = time.strftime("%H:%M:%S", time.localtime(reading.time))
    over = reading.overflows
    overflows = (
        "-" if over is None else f"{over.listen_overflows} overflows, {over.listen_drops} drops"
    )
    lines = [
        f"raindrops-top {when}  sort: {SORTS[sort][0]}  {len(reading.servers)} server(s)"
        f"  listen queues: {overflows}",
        _HELP,
    ]
    for part, reason in reading.unavailable.items():
        lines.append(f"! {part} unavailable: {escape_name(reason)}")
    if not reading.servers:
        lines.append("no server of this user found")
    for server in reading.servers:
        lines.append("")
        lines += _server_lines(server, sort, width)
    return [line[:width] for line in lines]


def _loop(screen: curses.window, exporter: Exporter, delay: float, sort: str) -> None:
    curses.curs_set(0)
    screen.timeout(int(delay * 1000))
    while True:
        reading = exporter.sample()
        height, width = screen.getmaxyx()
        screen.erase()
        for y, line in enumerate(render_frame(reading, sort=sort, width=width - 1)[:height]):
            screen.addstr(y, 0, line)
        screen.refresh()
        key = screen.getch()
        if key in (ord("q"), ord("Q")):
            return
        if 0 <= key < 256 and chr(key) in SORTS:
            sort = chr(key)


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``raindrops-top`` (``--once``: one frame on stdout).

    Example::

        raindrops-top -d 2
        raindrops-top --once | head
    """
    p = argparse.ArgumentParser(
        prog="raindrops-top",
        description="Every gunicorn/uvicorn/hypercorn server of this user, like top.",
    )
    p.add_argument("-d", "--delay", type=float, default=1.0, help="seconds between frames")
    p.add_argument("--server", action="append", default=[], metavar="NAME", help="only this server")
    p.add_argument("--segment", action="append", default=[], metavar="PATH", help="a named segment")
    p.add_argument("-s", "--sort", choices=sorted(SORTS), default="b", help="initial sort key")
    p.add_argument("--once", action="store_true", help="print one frame to stdout and exit")
    args = p.parse_args(argv)
    try:
        if args.delay <= 0 or args.delay != args.delay:
            raise ConfigError(f"delay must be a positive number of seconds, not {args.delay!r}")
        exporter = Exporter(servers=args.server, segments=args.segment, interval=args.delay)
    except (ConfigError, OSError) as exc:
        print(f"raindrops-top: {exc}", file=sys.stderr)
        return 2
    if args.once or not sys.stdout.isatty():
        try:
            sys.stdout.write("\n".join(render_frame(exporter.sample(), sort=args.sort)) + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            # The reader went away (| head): say nothing, and let Python not complain either.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 0
    signal.signal(signal.SIGTERM, _stop)
    try:
        curses.wrapper(_loop, exporter, args.delay, args.sort)
    except KeyboardInterrupt:
        pass
    finally:
        exporter.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
