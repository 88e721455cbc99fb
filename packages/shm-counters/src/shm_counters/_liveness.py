"""Whether a process is alive, decided the way the scoreboard decides it.

For layouts of one's own (``Cells``) that keep per-process rows: record the
owner's PID and :func:`process_start_time`, and ask :func:`process_alive`
with both, so that a reused PID is not mistaken for the dead owner.
"""

from __future__ import annotations

# One copy of the /proc parsing: it lives beside the scoreboard, which is
# being changed on another branch; it moves to a home of its own after that
# lands, and this module keeps the public names.
from ._scoreboard import _proc_stat, process_alive

__all__ = ["process_alive", "process_start_time"]


def process_start_time(pid: int) -> int:
    """The start time of ``pid`` as the scoreboard records it; 0 when unknown.

    Linux: ``/proc/<pid>/stat`` field 22 (clock ticks after boot); 0
    elsewhere or when the process is gone. Pass it to :func:`process_alive`.

    Example::

        >>> import os
        >>> process_alive(os.getpid(), process_start_time(os.getpid()))
        True
    """
    stat = _proc_stat(pid)
    return stat[1] if stat is not None else 0
