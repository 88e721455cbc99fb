"""Shared memory segments: anonymous (inherited across fork) or named files.

A named segment is a file, typically under ``/dev/shm``, laid out as a
header then data::

    offset  size  field
    0       8     magic            b"SHMCTRS\\0"
    8       4     layout version   1
    12      4     kind             1 counters, 2 scoreboard, 3 histogram
    16      4     slot size        the cache line size of the creator
    20      4     header size      bytes before the data, a multiple of slot size
    24      8     count            counters / rows / buckets
    32      8     capacity         data size in slots
    40      4     param            fields per row / 1 for log2 buckets
    44      4     extra length     bytes of kind-specific extra after offset 64
    64      ...   extra            e.g. the scoreboard's field names

All integers are little-endian (the machine's order on every platform this
runs on, checked at attach). A new file is created atomically: written
whole under a temporary name in the same directory, then ``os.link()``-ed
into place, so racing processes all end up on one segment.
"""

from __future__ import annotations

import enum
import errno
import mmap
import os
import secrets
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

from ._errors import SegmentError
from ._native import CACHE_LINE_SIZE, PAGE_SIZE, at, lib, map_base

__all__ = ["Kind", "Layout", "PathArg", "Segment", "page_round", "unlink"]

PathArg = Union[str, "os.PathLike[str]"]

MAGIC = b"SHMCTRS\x00"
VERSION = 1
_HEADER = struct.Struct("<8sIIIIQQII")
_EXTRA_OFFSET = 64
_MAX_BYTES = 2**40


class Kind(enum.IntEnum):
    """What a named segment holds."""

    COUNTERS = 1
    SCOREBOARD = 2
    HISTOGRAM = 3


@dataclass(frozen=True, slots=True)
class Layout:
    """The header of a named segment."""

    kind: Kind
    count: int
    capacity: int
    param: int = 0
    extra: bytes = b""
    slot_size: int = CACHE_LINE_SIZE

    @property
    def header_size(self) -> int:
        return _round_up(_EXTRA_OFFSET + len(self.extra), self.slot_size)

    @property
    def file_size(self) -> int:
        return self.header_size + self.capacity * self.slot_size


def _round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit


def page_round(nbytes: int) -> int:
    """Round a byte count up to whole pages (at least one)."""
    return max(PAGE_SIZE, _round_up(nbytes, PAGE_SIZE))


def _fspath(path: object) -> str:
    try:
        value = os.fspath(path)  # type: ignore[call-overload]
    except TypeError:
        raise SegmentError(
            errno.EINVAL, f"path must be a str or os.PathLike, not {type(path).__name__}"
        ) from None
    if isinstance(value, bytes):
        value = os.fsdecode(value)
    if not value or "\x00" in value:
        raise SegmentError(errno.EINVAL, "path must be a non-empty file name", value)
    return str(value)


def _os_error(exc: OSError, what: str, path: str) -> SegmentError:
    code = exc.errno if exc.errno is not None else errno.EIO
    return SegmentError(code, f"cannot {what} segment: {os.strerror(code)}", path)


def _invalid(path: str, message: str) -> SegmentError:
    return SegmentError(errno.EINVAL, message, path)


class Segment:
    """One mapping and where its data starts."""

    __slots__ = ("base", "data_offset", "layout", "path")

    def __init__(
        self, mm: mmap.mmap, data_offset: int, path: str | None, layout: Layout | None
    ) -> None:
        self.base = map_base(mm)
        self.data_offset = data_offset
        self.path = path
        self.layout = layout

    def header(self) -> Layout:
        """The layout of a named segment (anonymous ones have none)."""
        if self.layout is None:
            raise SegmentError(errno.EINVAL, "anonymous memory has no header")
        return self.layout

    @classmethod
    def anonymous(cls, nbytes: int) -> Segment:
        """Map ``nbytes`` (page-rounded) of zeroed anonymous shared memory."""
        return cls(mmap.mmap(-1, page_round(nbytes)), 0, None, None)

    def chars(self, offset: int) -> Any:
        """A raw ``char *`` to data byte ``offset``: keep ``self`` while using it."""
        return at(self.base, self.data_offset + offset, "char *")

    def cells(self, offset: int) -> Any:
        """A raw ``uint64_t *`` to data byte ``offset``: keep ``self`` while using it."""
        return at(self.base, self.data_offset + offset)

    def set_count(self, count: int) -> None:
        """Record a new count in a named segment's header."""
        lib.shmc_store(at(self.base, 24), count)

    @classmethod
    def named(
        cls,
        path: object,
        *,
        kind: Kind,
        want: Callable[[], Layout] | None,
        mode: int,
        init: Callable[[Segment], None] | None = None,
    ) -> Segment:
        """Attach to the segment at ``path``, creating it when ``want`` is given.

        ``want()`` builds the layout of a new file (it may raise for missing
        parameters); ``init`` fills its data before it is linked into place.
        """
        name = _fspath(path)
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
            raise SegmentError(errno.EINVAL, f"mode {mode!r} is not a file mode 0..0o7777", name)
        for _ in range(5):
            try:
                fd = os.open(name, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                if want is None:
                    raise SegmentError(errno.ENOENT, "no segment to attach to", name) from None
                made = _create(name, want(), mode, init)
                if made is not None:
                    return made
                continue  # someone else won the race: attach to theirs
            except OSError as exc:
                raise _os_error(exc, "open", name) from None
            try:
                return _attach(fd, name, kind)
            finally:
                os.close(fd)
        raise SegmentError(errno.EAGAIN, "segment keeps appearing and vanishing", name)


def _create(
    path: str, layout: Layout, mode: int, init: Callable[[Segment], None] | None
) -> Segment | None:
    """Create ``path`` atomically; return None when another process won."""
    if layout.file_size > _MAX_BYTES:
        raise _invalid(path, f"segment of {layout.file_size} bytes exceeds 2**40")
    directory, base = os.path.split(path)
    tmp = os.path.join(directory, f".{base}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except OSError as exc:
        raise _os_error(exc, "create", path) from None
    try:
        os.fchmod(fd, mode)
        os.ftruncate(fd, layout.file_size)
        mm = mmap.mmap(fd, layout.file_size)
        _HEADER.pack_into(
            mm,
            0,
            MAGIC,
            VERSION,
            layout.kind,
            layout.slot_size,
            layout.header_size,
            layout.count,
            layout.capacity,
            layout.param,
            len(layout.extra),
        )
        mm[_EXTRA_OFFSET : _EXTRA_OFFSET + len(layout.extra)] = layout.extra
        segment = Segment(mm, layout.header_size, path, layout)
        if init is not None:
            init(segment)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return None
        return segment
    except OSError as exc:
        raise _os_error(exc, "create", path) from None
    finally:
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _attach(fd: int, path: str, kind: Kind) -> Segment:
    """Map an existing segment file after checking every header field."""
    size = os.fstat(fd).st_size
    if size < _EXTRA_OFFSET:
        raise _invalid(path, f"not a shm-counters segment: {size} bytes is too short")
    head = os.pread(fd, _EXTRA_OFFSET, 0)
    if len(head) < _EXTRA_OFFSET:
        raise _invalid(path, "not a shm-counters segment: short read of the header")
    (magic, version, got_kind, slot, header_size, count, capacity, param, extra_len) = (
        _HEADER.unpack_from(head)
    )
    if magic != MAGIC:
        raise _invalid(path, f"not a shm-counters segment: magic {magic!r}")
    if version != VERSION:
        raise _invalid(path, f"segment layout version {version}, this reads {VERSION}")
    if sys.byteorder != "little":  # pragma: no cover - no big-endian CI
        raise _invalid(path, "segments are little-endian, this machine is not")
    if slot != CACHE_LINE_SIZE:
        raise _invalid(
            path,
            f"segment slot size {slot} bytes, this machine's cache line is {CACHE_LINE_SIZE}",
        )
    if got_kind not in Kind._value2member_map_:
        raise _invalid(path, f"unknown segment kind {got_kind}")
    if got_kind != kind:
        raise _invalid(
            path,
            f"segment holds {Kind(got_kind).name.lower()}, not {kind.name.lower()}",
        )
    layout = Layout(Kind(got_kind), count, capacity, param, os.pread(fd, extra_len, _EXTRA_OFFSET))
    if len(layout.extra) != extra_len or header_size != layout.header_size:
        raise _invalid(path, f"segment header size {header_size} is inconsistent")
    # Counters and scoreboards count slots; a histogram's count is its number
    # of buckets, packed 8 per slot, so only the byte bound applies to it.
    if capacity * slot > _MAX_BYTES or (got_kind != Kind.HISTOGRAM and count > capacity):
        raise _invalid(path, f"segment count {count} exceeds capacity {capacity}")
    if size != layout.file_size:
        problem = "truncated" if size < layout.file_size else "oversized"
        raise _invalid(
            path,
            f"segment {problem}: {size} bytes, its header says {layout.file_size}",
        )
    try:
        mm = mmap.mmap(fd, size)
    except OSError as exc:
        raise _os_error(exc, "map", path) from None
    return Segment(mm, header_size, path, layout)


def unlink(path: object) -> None:
    """Remove a named segment file; processes attached to it keep their mapping.

    Example::

        shm_counters.unlink("/dev/shm/myapp.counters")
    """
    name = _fspath(path)
    try:
        os.unlink(name)
    except OSError as exc:
        raise _os_error(exc, "unlink", name) from None
