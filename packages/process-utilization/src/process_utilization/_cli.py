"""``process-utilization-top SEGMENT``: the per-worker table of a segment."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from ._board import DEFAULT_SLOTS, open_scoreboard, render_json, render_text, worker_stats

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Print the table of every worker sharing SEGMENT; ``--interval`` repeats.

    Example::

        process-utilization-top /dev/shm/myapp-utilization --interval 1
    """
    parser = argparse.ArgumentParser(
        prog="process-utilization-top",
        description="Show how busy every worker sharing a segment is.",
    )
    parser.add_argument("segment", help="segment file (PROCESS_UTILIZATION_SEGMENT)")
    parser.add_argument(
        "--slots",
        type=int,
        default=DEFAULT_SLOTS,
        help=f"rows the segment was created with (default {DEFAULT_SLOTS})",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--interval", type=float, default=0.0, help="repeat every N seconds")
    parser.add_argument("--count", type=int, default=0, help="stop after N tables (0: forever)")
    args = parser.parse_args(argv)
    try:
        board = open_scoreboard(args.segment, slots=args.slots, create=False)
    except (OSError, ValueError) as exc:
        print(f"process-utilization-top: {exc}", file=sys.stderr)
        return 1
    shown = 0
    while True:
        workers = worker_stats(board)
        out = render_json(workers) + "\n" if args.json else render_text(workers)
        sys.stdout.write(out)
        sys.stdout.flush()
        shown += 1
        if args.interval <= 0 or (args.count and shown >= args.count):
            return 0
        time.sleep(args.interval)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
