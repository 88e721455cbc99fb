"""Which row owners are alive: pidfds polled at once on Linux, a timed check elsewhere."""

from __future__ import annotations

import math
import os
import select
import weakref
from collections.abc import Iterable

from shm_counters import process_alive

__all__ = ["Liveness"]

_PIDFD = hasattr(os, "pidfd_open") and hasattr(select, "poll")


class Liveness:
    """A reader's view of which row owners are alive.

    An owner is (PID, start time). The first time one is seen it is checked
    as the scoreboard checks (``shm_counters.process_alive``: a zombie is
    dead, another start time means the PID was reused). On Linux a pidfd is
    then kept for it: the kernel marks it readable once that very process
    exits, so one ``poll()`` over every owner's pidfd answers, exactly, at
    each call, for a few microseconds, and a reused PID cannot fool it.
    Without pidfds (not Linux, an old kernel), an answer is trusted ``ttl``
    seconds and one call re-checks at most ``per_call`` owners, the ones due
    longest; a new owner counts as alive until its first check. A dead owner
    stays dead.
    """

    __slots__ = ("__weakref__", "_cache", "_dead", "_fds", "_poll", "per_call", "ttl")

    def __init__(self, ttl: float, per_call: int = 32) -> None:
        self.ttl = ttl
        self.per_call = per_call
        self._cache: dict[tuple[int, int], tuple[bool, float]] = {}
        self._dead: set[tuple[int, int]] = set()
        self._fds: dict[tuple[int, int], int] = {}
        self._poll = select.poll() if _PIDFD else None
        weakref.finalize(self, _close_fds, self._fds)

    def close(self) -> None:
        """Close every pidfd held (a forked child does, for its parent's)."""
        _close_fds(self._fds)
        self._poll = select.poll() if _PIDFD else None

    def mark_dead(self, pid: int) -> None:
        """Forget every cached answer for ``pid``: it is checked again at once."""
        for key in [k for k in self._cache if k[0] == pid]:
            del self._cache[key]
        for key in [k for k in self._fds if k[0] == pid]:
            self._forget_fd(key)

    def _forget_fd(self, key: tuple[int, int]) -> None:
        fd = self._fds.pop(key, None)
        if fd is not None:
            if self._poll is not None:
                self._poll.unregister(fd)
            os.close(fd)

    def _watch(self, key: tuple[int, int]) -> bool:
        """First sight of an owner: check it, and keep a pidfd if it is alive."""
        try:
            fd = os.pidfd_open(key[0])
        except OSError:  # gone already (ESRCH), or pidfds refused: the plain check
            return process_alive(key[0], key[1])
        # The pidfd names whatever process has the PID now: keep it only if
        # that is the owner (same start time, not a zombie).
        if not process_alive(key[0], key[1]):
            os.close(fd)
            return False
        self._fds[key] = fd
        if self._poll is not None:
            self._poll.register(fd, select.POLLIN)
        return True

    def alive(self, owners: Iterable[tuple[int, int]], now: float) -> dict[tuple[int, int], bool]:
        """The liveness of each (pid, start time)."""
        keys = list(dict.fromkeys(owners))
        answers: dict[tuple[int, int], bool] = {}
        if self._poll is not None:
            exited = {fd for fd, _ in self._poll.poll(0)} if self._fds else set()
            for key in keys:
                if key in self._dead:
                    answers[key] = False
                    continue
                fd = self._fds.get(key)
                if fd is None:
                    ok = self._watch(key)
                elif fd in exited:
                    ok = False
                    self._forget_fd(key)
                else:
                    ok = True
                answers[key] = ok
                if not ok:
                    self._dead.add(key)
            for key in [k for k in self._fds if k not in answers]:
                self._forget_fd(key)  # its row was reused or freed
        else:
            due: list[tuple[float, tuple[int, int]]] = []
            for key in keys:
                if key in self._dead:
                    answers[key] = False
                    continue
                cached = self._cache.get(key)
                if cached is None:
                    answers[key] = True
                    due.append((-math.inf, key))
                else:
                    answers[key] = cached[0]
                    if now >= cached[1]:
                        due.append((cached[1], key))
            due.sort()
            for _, key in due[: self.per_call]:
                ok = process_alive(key[0], key[1])
                answers[key] = ok
                if ok:
                    self._cache[key] = (True, now + self.ttl)
                else:
                    self._cache.pop(key, None)
                    self._dead.add(key)
        if len(self._dead) > 4096:  # owners long gone: their rows were folded
            self._dead &= set(answers)
        return answers


def _close_fds(fds: dict[tuple[int, int], int]) -> None:
    for fd in fds.values():
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()
