"""A query as steps, and one dump's bookkeeping: the protocol without the I/O.

A query (:func:`~linux_inet_diag._stats.tcp_steps`, ``unix_steps``,
``record_steps``, ...) is a generator. It yields a :data:`Step`, ``(make,
parse)``: ``make(seq)`` builds the request with netlink sequence number
``seq``; ``parse(datagram)`` turns each answer datagram into ``(items, done,
interrupted)``. It is sent the items of the whole dump, and finally returns
the answer. :class:`Dump` runs one step's dump again while the kernel says
NLM_F_DUMP_INTR. ``DiagSocket`` and ``AsyncDiagSocket`` drive the same steps
with a blocking and an asyncio socket: the read is described once here and
run twice.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Generator
from typing import Any, TypeVar

from ._errors import DumpInterruptedError

__all__ = ["MAX_ATTEMPTS", "Dump", "Parser", "Step", "Steps"]

T = TypeVar("T")
#: A datagram's ``(items, done, interrupted)`` (see ``_kernel.messages``).
Parser = Callable[[bytes], tuple[list[Any], bool, bool]]
#: ``(make, parse)``: the request for a sequence number, and its datagrams' parser.
Step = tuple[Callable[[int], bytes], Parser]
#: A query: yields steps, is sent each dump's items, returns its answer.
Steps = Generator[Step, list[Any], T]

#: How many times in a row one dump may come back interrupted before giving up.
MAX_ATTEMPTS = 5


class Dump:
    """One step's dump, without I/O: requests out, datagrams in, retried if interrupted.

    A driver sends each :meth:`request` and feeds the answer's datagrams to
    :meth:`feed` until it returns True; :meth:`request` then returns None
    when that attempt's :attr:`items` are the answer, or a new request when
    a datagram carried NLM_F_DUMP_INTR (the socket table changed while the
    kernel walked it), and raises DumpInterruptedError after
    :data:`MAX_ATTEMPTS` interrupted attempts.

    >>> dump = Dump(lambda seq: b"request %d" % seq, lambda data: ([data], True, False))
    >>> dump.request(lambda: 7)
    b'request 7'
    >>> dump.feed(b"answer")
    True
    >>> dump.request(lambda: 8) is None, dump.items
    (True, [b'answer'])
    """

    __slots__ = ("_make", "_parse", "attempts", "interrupted", "items")

    def __init__(self, make: Callable[[int], bytes], parse: Parser) -> None:
        self._make = make
        self._parse = parse
        self.attempts = 0
        self.items: list[Any] = []
        self.interrupted = False

    def request(self, next_seq: Callable[[], int]) -> bytes | None:
        """The request to send next, or None when the last attempt's items are the answer."""
        if self.attempts and not self.interrupted:
            return None
        if self.attempts == MAX_ATTEMPTS:
            raise DumpInterruptedError(
                errno.EINTR, f"sock_diag dump interrupted {MAX_ATTEMPTS} times in a row"
            )
        self.attempts += 1
        self.items = []
        self.interrupted = False
        return self._make(next_seq())

    def feed(self, datagram: bytes) -> bool:
        """Parse one answer datagram; True when it ended the answer."""
        items, done, interrupted = self._parse(datagram)
        self.items += items
        self.interrupted |= interrupted
        return done
