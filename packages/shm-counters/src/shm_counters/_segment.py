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
    40      4     param            counters: number of field names (0 for plain
                                   counters); scoreboard: fields per row;
                                   histogram: 1 for log2 buckets
    44      4     extra length     bytes of kind-specific extra after offset 64
    48      8     reclaimed        scoreboard: rows taken back from dead owners
                                   (an atomic counter; 0 in other kinds)
    56      8     (reserved, 0)
    64      ...   extra            field names, UTF-8, separated by newlines:
                                   a counter struct's or a scoreboard's

All integers are little-endian (the machine's order on every platform this
runs on, checked at attach). A new file is created atomically: written
whole under a temporary name in the same directory, then ``os.link()``-ed
into place, so racing processes all end up on one segment.

No segment, anonymous or named, may exceed :data:`MAX_BYTES`: the machine's
physical memory (at most 2**40 bytes). Shared memory lives in RAM (or swap);
a segment larger than RAM could never be used in full, and Linux's default
overcommit heuristic refuses to map one much larger anyway. When the system
still refuses (a stricter overcommit policy, ``RLIMIT_AS``, ``RLIMIT_FSIZE``,
a full tmpfs), the error is a :class:`SegmentError` naming the bytes asked.
A new file's blocks are reserved when it is created (``posix_fallocate``),
so a full tmpfs is that error at creation, never a SIGBUS on first touch.

A named segment is trusted only if it is this user's own: its path is
opened without following a symbolic link in its last component
(``O_NOFOLLOW``), and it must be a regular file owned by the effective uid
with no group or other write permission; anything else is a
:class:`SegmentError` (``ELOOP``, ``EPERM``) naming the path, the owner and
the mode, and what is required. A new file's mode may not give group or
other write permission either. So another local user can neither forge the
figures (a world-writable file made first), nor truncate a mapped file
(SIGBUS in every reader), nor point one server's path at another's.

A named segment whose file was deleted while processes still map it (an
operator's ``rm``, a /dev/shm cleaner) is *adopted*, not replaced, by a new
process of the same family: before creating a file at a path that does not
exist, :meth:`Segment.named` looks at the processes of the caller's family
(its parent and the parent's other children: a server's master and its
workers) for an open descriptor of ``PATH (deleted)`` and maps that same
file through ``/proc/PID/fd/N`` (Linux; the kernel allows it for the same
user). So a worker respawned after the file vanished keeps counting with
its siblings instead of starting a second, disjoint segment. The path stays
missing (the kernel cannot link a deleted file back); once no process maps
the old segment any more, the next one creates a new file.
"""

from __future__ import annotations

import enum
import errno
import mmap
import os
import secrets
import stat
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

from ._errors import SegmentError
from ._native import CACHE_LINE_SIZE, PAGE_SIZE, at, cas, lib, map_base
from ._server import owner_text

__all__ = [
    "MAX_BYTES",
    "RECLAIMED_OFFSET",
    "Kind",
    "Layout",
    "PathArg",
    "Segment",
    "encode_names",
    "format_names",
    "page_round",
    "unlink",
]

PathArg = Union[str, "os.PathLike[str]"]

MAGIC = b"SHMCTRS\x00"
VERSION = 1
_HEADER = struct.Struct("<8sIIIIQQII")
_EXTRA_OFFSET = 64
#: The header cell where a scoreboard counts the rows taken back from dead owners.
RECLAIMED_OFFSET = 48
_COUNT_OFFSET = 24
# The format's own bound on a segment's data (capacity x slot size).
_FORMAT_BYTES = 2**40


def _machine_bytes() -> int:
    """The machine's physical memory in bytes, at most 2**40 (2**40 when unknown)."""
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return _FORMAT_BYTES
    if pages <= 0:
        return _FORMAT_BYTES
    return min(_FORMAT_BYTES, pages * PAGE_SIZE)


#: The largest segment made here, in bytes: physical memory, at most 2**40.
MAX_BYTES = _machine_bytes()


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


def _map_error(exc: OSError, message: str, path: str | None = None) -> SegmentError:
    """The error for a mapping (or file size) the system refused."""
    code = exc.errno if exc.errno is not None else errno.ENOMEM
    if path is None:
        return SegmentError(code, f"{message}: {os.strerror(code)}")
    return SegmentError(code, f"{message}: {os.strerror(code)}", path)


def encode_names(names: tuple[str, ...]) -> bytes:
    """Field names as a segment header stores them (the ``extra`` bytes)."""
    return "\n".join(names).encode()


def format_names(names: tuple[str, ...]) -> str:
    """Field names for an error message: ``(calling, writing)``."""
    return f"({', '.join(names)})"


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

    def field_names(self) -> tuple[str, ...]:
        """The field names in a named segment's header; ``()`` when it has none.

        Raises :class:`SegmentError` when the names are not as many as the
        header's ``param`` says, or not UTF-8 identifiers.
        """
        layout = self.header()
        path = self.path or ""
        if not layout.extra:
            if layout.kind == Kind.COUNTERS and layout.param == 0:
                return ()
            raise _invalid(path, f"segment says {layout.param} field names but holds none")
        try:
            names = tuple(layout.extra.decode().split("\n"))
        except UnicodeDecodeError:
            raise _invalid(path, "segment field names are not UTF-8") from None
        if len(names) != layout.param or not all(n.isidentifier() for n in names):
            raise _invalid(
                path,
                f"segment field names {layout.extra!r} do not make {layout.param} identifiers",
            )
        return names

    @classmethod
    def anonymous(cls, nbytes: int, what: str) -> Segment:
        """Map ``nbytes`` (page-rounded) of zeroed anonymous shared memory.

        ``what`` says what the memory is for, in an error (``"4 counters"``).
        """
        size = page_round(nbytes)
        try:
            mm = mmap.mmap(-1, size)
        except OSError as exc:
            raise _map_error(
                exc, f"cannot map {what} ({size} bytes) of anonymous shared memory"
            ) from None
        return cls(mm, 0, None, None)

    def chars(self, offset: int) -> Any:
        """A raw ``char *`` to data byte ``offset``: keep ``self`` while using it."""
        return at(self.base, self.data_offset + offset, "char *")

    def cells(self, offset: int) -> Any:
        """A raw ``uint64_t *`` to data byte ``offset``: keep ``self`` while using it."""
        return at(self.base, self.data_offset + offset)

    def header_cell(self, offset: int) -> Any:
        """A raw ``uint64_t *`` to a named segment's header at ``offset`` (8-aligned, < 64)."""
        if self.layout is None or offset % 8 or not _HEADER.size <= offset < _EXTRA_OFFSET:
            raise SegmentError(errno.EINVAL, f"no header cell at offset {offset}", self.path)
        return at(self.base, offset)

    def set_count(self, count: int) -> None:
        """Record a new count in a named segment's header."""
        lib.shmc_store(at(self.base, _COUNT_OFFSET), count)

    def grow_count(self, count: int) -> int:
        """Raise a named segment's recorded count to at least ``count``; return it.

        A compare-and-swap, so processes growing it at once keep the largest.
        """
        cell = at(self.base, _COUNT_OFFSET)
        for _ in range(1000):
            recorded = int(lib.shmc_load_sc(cell))
            if recorded >= count or cas(cell, recorded, count):
                return max(recorded, count)
        raise SegmentError(errno.EAGAIN, "segment count keeps changing", self.path)

    @classmethod
    def named(
        cls,
        path: object,
        *,
        kind: Kind,
        want: Callable[[], Layout] | None,
        mode: int,
        init: Callable[[Segment], None] | None = None,
        what: str = "",
    ) -> Segment:
        """Attach to the segment at ``path``, creating it when ``want`` is given.

        ``want()`` builds the layout of a new file (it may raise for missing
        parameters); ``init`` fills its data before it is linked into place;
        ``what`` says what it holds, in an error (``"4 counters"``).
        """
        name = _fspath(path)
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
            raise SegmentError(errno.EINVAL, f"mode {mode!r} is not a file mode 0..0o7777", name)
        if mode & _FOREIGN_WRITE:
            raise SegmentError(
                errno.EINVAL,
                f"mode 0o{mode:03o} lets group or others write; a segment is writable "
                "by its owner only (for example 0o600 or 0o640)",
                name,
            )
        for _ in range(5):
            try:
                fd = os.open(name, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
            except FileNotFoundError:
                if want is None:
                    raise SegmentError(errno.ENOENT, "no segment to attach to", name) from None
                adopted = _adopt_orphan(name, kind)
                if adopted is not None:
                    return adopted
                made = _create(name, want(), mode, init, what or kind.name.lower())
                if made is not None:
                    return made
                continue  # someone else won the race: attach to theirs
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise SegmentError(
                        errno.ELOOP,
                        "segment path is a symbolic link; segments are never opened "
                        "through one (name the real file)",
                        name,
                    ) from None
                raise _os_error(exc, "open", name) from None
            try:
                _check_owned(os.fstat(fd), name)
                return _attach(fd, name, kind)
            finally:
                os.close(fd)
        raise SegmentError(errno.EAGAIN, "segment keeps appearing and vanishing", name)


#: Mode bits a segment must not have: group and other write.
_FOREIGN_WRITE = 0o022


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _check_owned(st: os.stat_result, path: str) -> None:
    """Refuse a file that is not a regular file of this user's with no foreign write bit."""
    euid = os.geteuid()
    regular = stat.S_ISREG(st.st_mode)
    if regular and st.st_uid == euid and not st.st_mode & _FOREIGN_WRITE:
        return
    what = "a regular file" if regular else _file_kind(st.st_mode)
    raise SegmentError(
        errno.EPERM,
        f"segment is {what} owned by {owner_text(st.st_uid)} with mode "
        f"0o{stat.S_IMODE(st.st_mode):03o}; a segment must be a regular file owned by "
        f"{owner_text(euid)} with no group or other write permission",
        path,
    )


def _create(
    path: str, layout: Layout, mode: int, init: Callable[[Segment], None] | None, what: str
) -> Segment | None:
    """Create ``path`` atomically; return None when another process won."""
    if layout.file_size > MAX_BYTES:
        raise _invalid(
            path,
            f"segment for {what} ({layout.file_size} bytes) exceeds {MAX_BYTES} bytes"
            " (this machine's memory)",
        )
    directory, base = os.path.split(path)
    tmp = os.path.join(directory, f".{base}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except OSError as exc:
        raise _os_error(exc, "create", path) from None
    try:
        os.fchmod(fd, mode)
        try:
            os.ftruncate(fd, layout.file_size)
            _reserve(fd, layout.file_size)
            mm = mmap.mmap(fd, layout.file_size)
        except OSError as exc:
            raise _map_error(
                exc, f"cannot create segment for {what} ({layout.file_size} bytes)", path
            ) from None
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
    except SegmentError:
        raise
    except OSError as exc:
        raise _os_error(exc, "create", path) from None
    finally:
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _reserve(fd: int, size: int) -> None:
    """Allocate the file's blocks now, so a full tmpfs fails here, not with SIGBUS later.

    Filesystems without fallocate (EOPNOTSUPP, EINVAL) keep a sparse file.
    """
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is None:  # pragma: no cover - not on Linux
        return
    try:
        fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise


def _family() -> list[int]:
    """The caller's parent and the parent's other children (a server's master and workers).

    Empty when the parent is init (pid 1) or not readable: a process with no
    family of its own must not go through every process on the machine.
    """
    me, parent = os.getpid(), os.getppid()
    if parent <= 1:
        return []
    pids = [parent]
    try:
        tasks = os.listdir(f"/proc/{parent}/task")
    except OSError:
        return []
    for tid in tasks:
        try:
            with open(f"/proc/{parent}/task/{tid}/children", "rb") as f:
                pids += [int(p) for p in f.read().split()]
        except (OSError, ValueError):
            continue
    return [p for p in dict.fromkeys(pids) if p != me]


def _adopt_orphan(path: str, kind: Kind) -> Segment | None:
    """Map the deleted file still open as ``path`` in the caller's family, if any.

    Every match is checked like any file (header, kind) and must really be
    deleted (no links left); the first that passes is returned.
    """
    directory, base = os.path.split(path)
    try:
        real_dir = os.path.realpath(directory or ".")
    except (OSError, ValueError):
        return None
    # A process that attached shows the path; the one that created the file
    # shows the temporary name it was written under before os.link().
    wanted = os.path.join(real_dir, base) + " (deleted)"
    creator_prefix = os.path.join(real_dir, f".{base}.")

    def names_path(link: str) -> bool:
        return link == wanted or (
            link.startswith(creator_prefix) and link.endswith(".tmp (deleted)")
        )

    for pid in _family():
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for entry in fds:
            link = f"{fd_dir}/{entry}"
            try:
                if not names_path(os.readlink(link)):
                    continue
                fd = os.open(link, os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                st = os.fstat(fd)
                if st.st_nlink != 0:
                    continue
                _check_owned(st, path)
                return _attach(fd, path, kind)
            except (SegmentError, OSError):
                continue
            finally:
                os.close(fd)
    return None


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
    if extra_len > size - _EXTRA_OFFSET or header_size > size:
        raise _invalid(path, f"segment header size {header_size} is inconsistent")
    layout = Layout(Kind(got_kind), count, capacity, param, os.pread(fd, extra_len, _EXTRA_OFFSET))
    if len(layout.extra) != extra_len or header_size != layout.header_size:
        raise _invalid(path, f"segment header size {header_size} is inconsistent")
    if capacity * slot > _FORMAT_BYTES:
        raise _invalid(path, f"segment capacity {capacity} exceeds 2**40 bytes")
    # Counters and scoreboards count slots; a histogram's count is its number
    # of buckets, packed 8 per slot, so only the byte bound applies to it.
    if got_kind != Kind.HISTOGRAM and count > capacity:
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
        raise _map_error(exc, f"cannot map segment of {size} bytes", path) from None
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
