"""``linux-listener-stats``: print listener active/queued rows, repeatedly."""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence

from ._address import parse_address
from ._api import DiagSocket
from ._errors import LinuxInetDiagError
from ._escape import escape_name
from ._stats import ListenStats

__all__ = ["MIN_DELAY", "main"]

#: The shortest -d: each sample walks the kernel's whole socket table, so more
#: often than this is a busy loop over it (seconds).
MIN_DELAY = 0.1


def _delay(text: str) -> float:
    """argparse type of -d: a finite number of seconds, at least MIN_DELAY."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= MIN_DELAY):
        raise argparse.ArgumentTypeError(
            f"invalid DELAY {text!r}: expected a finite number of seconds >= {MIN_DELAY}"
        )
    return value


def _at_least(minimum: int, what: str) -> Callable[[str], int]:
    """argparse type: a whole number >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f"invalid {what} {text!r}: expected a whole number >= {minimum}"
            )
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="linux-listener-stats",
        description=(
            "Print active (accepted) and queued (not yet accepted) connections "
            "of TCP and Unix listeners, read from the kernel over netlink."
        ),
        epilog=(
            "ADDR: 127.0.0.1:8080, [::1]:8080, 0.0.0.0:8080, [::]:8080, "
            "/path/to/unix.sock or @abstract. No ADDR: every listener."
        ),
    )
    p.add_argument("addrs", nargs="*", metavar="ADDR", help="listener names")
    p.add_argument(
        "-d", "--delay", type=_delay, default=None, metavar="DELAY",
        help=f"repeat every DELAY seconds (at least {MIN_DELAY}) until interrupted",
    )  # fmt: skip
    p.add_argument(
        "-n", "--count", type=_at_least(1, "COUNT"), default=None, metavar="COUNT",
        help="with -d: stop after COUNT samples (default: until interrupted)",
    )  # fmt: skip
    p.add_argument(
        "-t", "--threshold", type=_at_least(0, "QUEUED_THRESHOLD"), default=0,
        metavar="QUEUED_THRESHOLD",
        help="only print rows with queued >= QUEUED_THRESHOLD (default 0)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="one JSON object per sample")
    return p


def _sample(diag: DiagSocket, addrs: list[str]) -> dict[str, ListenStats]:
    if not addrs:
        return {**diag.tcp_listener_stats(), **diag.unix_listener_stats()}
    tcp = [a for a in addrs if not parse_address(a).is_unix]
    unix = [a for a in addrs if parse_address(a).is_unix]
    out: dict[str, ListenStats] = {}
    if tcp:
        out.update(diag.tcp_listener_stats(tcp))
    if unix:
        out.update(diag.unix_listener_stats(unix))
    return out


def _hints(diag: DiagSocket, stats: dict[str, ListenStats]) -> list[str]:
    """'did you mean' lines for 127.x names only listening as a wildcard."""
    hints = []
    missing = [
        n
        for n, s in stats.items()
        if s.backlog is None and not parse_address(n).is_unix
        and parse_address(n).host.startswith("127.")
    ]  # fmt: skip
    if missing:
        every = diag.tcp_listener_stats()
        for n in missing:
            port = parse_address(n).port
            for wild in (f"0.0.0.0:{port}", f"[::]:{port}"):
                if wild in every:
                    hints.append(f"{escape_name(n)}: nothing listens there; did you mean {wild}?")
                    break
    return hints


def _quiet_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the exit's flush cannot fail again."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError, AttributeError):  # not a real file (captured)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``linux-listener-stats``; returns the exit status.

    Listener names are printed through :func:`~linux_inet_diag.escape_name`
    in the text rows (JSON quotes them itself).  A reader that goes away
    (``linux-listener-stats -d 1 | head -3``) ends the command quietly,
    with status 0.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.count is not None and args.count > 1 and args.delay is None:
        parser.error(f"argument -n/--count: {args.count} samples need -d/--delay to repeat")
    try:
        return _run(args)
    except BrokenPipeError:
        _quiet_stdout()
        return 0


def _run(args: argparse.Namespace) -> int:
    samples = args.count if args.delay is not None else 1
    try:
        for a in args.addrs:
            parse_address(a)
        with DiagSocket() as diag:
            first = True
            taken = 0
            while True:
                stats = _sample(diag, args.addrs)
                now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
                rows = {n: s for n, s in stats.items() if s.queued >= args.threshold}
                if args.json:
                    print(json.dumps({
                        "timestamp": now,
                        "listeners": {
                            n: {"active": s.active, "queued": s.queued,
                                "backlog": s.backlog}
                            for n, s in rows.items()
                        },
                    }))  # fmt: skip
                else:
                    if first:
                        print("timestamp address active queued backlog")
                    for n, s in rows.items():
                        backlog = "-" if s.backlog is None else s.backlog
                        print(f"{now} {escape_name(n)} {s.active} {s.queued} {backlog}")
                if first:
                    for h in _hints(diag, stats):
                        print(h, file=sys.stderr)
                first = False
                sys.stdout.flush()
                taken += 1
                if samples is not None and taken >= samples:
                    return 0
                time.sleep(args.delay)
    except KeyboardInterrupt:
        return 130
    except LinuxInetDiagError as e:
        print(f"linux-listener-stats: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
