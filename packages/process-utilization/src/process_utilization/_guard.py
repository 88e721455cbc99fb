"""Who may change the figures when: the lock policy, and the one trick that skips the lock.

The policy, in one sentence: **a request's accounting takes no lock while
its server runs requests one at a time on one thread, and a plain lock
otherwise; everything else takes that lock, and keeps the lock-free
requests out while it holds it.**

"One at a time on one thread" is the server's word: a WSGI request whose
``environ["wsgi.multithread"]`` is false (PEP 3333's promise that no other
thread calls the app at the same time: gunicorn ``sync``), an ASGI request
on the thread of the first request's event loop. A WSGI request saying
true (gunicorn ``gthread``, waitress, ...) or nothing, an ASGI request from
a second thread, and a free-threaded build with the GIL off make the
instance *threaded* for good: every request section locks. "Everything
else" is what may run in any thread at any time: ``stats()`` and the
figures read through it, ``reset_stats()``, ``record_request()``,
``first_request()``, ``reset_horizon()``, the periodic report and title.

**The trick** is how a lock holder keeps the lock-free sections out: a
section first sets ``_inside``, then reads ``_detour``; a lock holder first
raises ``_detour``, then waits while ``_inside`` is set (:meth:`_lock_out`).
Under the GIL every load and store happens in one order, so one of the two
sees the other (Dekker's handshake): the section steps back and takes the
lock, or the holder waits for the section to end. A section calls only the
clock, the accounting and the row's C steps, so that wait is short; a
holder on the requests' own thread never waits (no section can be running
beside it there, only under it, in a signal handler). The same counter
sends every section the locked way while the instance is threaded or this
process has not served its first request (then the row is claimed, under
the lock). What it buys, measured by ``nox -s bench``: the default WSGI row
against the ``wsgi.multithread true (locks)`` row, 21,904 against 24,846
CPU instructions a request (13 %; README, "Performance").
"""

from __future__ import annotations

import logging
import sys
import threading
import time

__all__ = ["Guarded"]

_log = logging.getLogger("process_utilization")


def _gil_enabled() -> bool:
    check = getattr(sys, "_is_gil_enabled", None)
    return True if check is None else bool(check())


class Guarded:
    """The lock and the handshake of the policy above, for the accounting's owner.

    A base class (its slots are read on the per-request path, at a fixed
    offset of the instance: no second object to reach). Each request
    section of the owner is the counterpart of :meth:`_lock_out`::

        self._inside = True
        held = self._detour and self._hold(env)  # _inside = False, the lock taken
        try:
            ...  # the section, once
        finally:
            if held:
                self._lock.release()
            else:
                self._inside = False
    """

    __slots__ = ("_cold", "_detour", "_inside", "_lock", "_owner", "_threaded")

    def _guard_reset(self) -> None:
        """A fresh policy: not served yet, one thread (construction, and in a forked child)."""
        # Re-entrant: a caller holding it (reset_stats(), record_request())
        # runs the request sections, which take it again.
        self._lock = threading.RLock()
        self._inside = False  # a lock-free section is running
        self._owner: int | None = None  # the requests' thread (set by their first)
        self._cold = True  # this process has not served its first request yet
        self._threaded = False  # for good: every section locks
        # How many reasons a section has to take the lock: cold, threaded,
        # and one per caller holding it (see the module docstring).
        self._detour = 1
        if not _gil_enabled():
            self._threaded = True
            self._detour += 1

    def _warmed(self) -> None:
        """This process served its first request (lock held): the lock-free way opens."""
        if self._cold:
            self._cold = False
            self._detour -= 1

    def _lock_out(self) -> None:
        """Take the lock and keep the lock-free sections out until :meth:`_unlock`."""
        self._lock.acquire()
        self._detour += 1
        if self._inside and threading.get_ident() != self._owner:
            while self._inside:  # a section on the requests' thread, about to end
                time.sleep(0)

    def _unlock(self) -> None:
        self._detour -= 1
        self._lock.release()

    def _thread_up(self) -> bool:
        """Make every section lock from now on; true if this call did (once per process)."""
        self._lock_out()
        try:
            if self._threaded:
                return False
            self._threaded = True
            self._detour += 1  # never taken back
            return True
        finally:
            self._unlock()

    def _foreign_thread(self) -> None:
        """An ASGI request on a thread other than the requests' (or the first one).

        The first makes its thread the requests' thread; a later one (a
        second event loop in the process) makes the instance threaded.
        """
        ident = threading.get_ident()
        self._lock.acquire()
        try:
            if self._owner is None:
                self._owner = ident
                return
        finally:
            self._lock.release()
        if not self._threaded and self._thread_up():
            _log.info(
                "process_utilization: ASGI requests on a second thread "
                "(several event loops?): every request takes a lock from now on"
            )
