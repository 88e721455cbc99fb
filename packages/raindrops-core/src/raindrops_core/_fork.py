"""Fork safety, one pattern for the whole package.

A forked child inherits the parent's memory but not its threads, and must
not use what belongs to the parent process: a scoreboard row, a sampler
thread or task, a netlink socket, a lock another thread held at the fork.
Each module whose objects keep such per-process state makes one
:class:`LiveInstances` at import: a ``weakref.WeakSet`` of its live
instances and ONE ``os.register_at_fork(after_in_child=...)`` hook, which
calls every instance's ``_after_fork()`` in the child.  No per-instance
hooks, no PID checks: the hook runs before any other code of the child.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

__all__ = ["AfterFork", "LiveInstances"]


class AfterFork(Protocol):
    """What a :class:`LiveInstances` member has: ``_after_fork()``, run in a forked child."""

    def _after_fork(self) -> None: ...


T = TypeVar("T", bound=AfterFork)


class LiveInstances(Generic[T]):
    """A module's live instances, each told ``_after_fork()`` in a forked child.

    Make one per module, at import (it registers its one fork hook then);
    :meth:`add` each instance in its ``__init__``.  Instances are held
    weakly: a collected one is simply gone.

    Example::

        _LIVE: LiveInstances[Engine] = LiveInstances()

        class Engine:
            def __init__(self) -> None:
                self._lock = threading.Lock()
                _LIVE.add(self)

            def _after_fork(self) -> None:
                self._lock = threading.Lock()
    """

    __slots__ = ("_live",)

    def __init__(self) -> None:
        self._live: weakref.WeakSet[T] = weakref.WeakSet()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork_in_child)

    def add(self, instance: T) -> None:
        """Tell ``instance`` about every later fork (in the child)."""
        self._live.add(instance)

    def __iter__(self) -> Iterator[T]:
        """The live instances now (a copy: safe while instances come and go)."""
        return iter(list(self._live))

    def _after_fork_in_child(self) -> None:
        for instance in list(self._live):
            instance._after_fork()
