"""Named segments: create, attach, header checks, spawned processes."""

from __future__ import annotations

import errno
import gc
import multiprocessing
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import shm_counters._segment
import shmc_test_workers as workers
from shm_counters import (
    CACHE_LINE_SIZE,
    PAGE_SIZE,
    Counters,
    CounterSizeError,
    Histogram,
    Scoreboard,
    SegmentError,
    counter_struct,
    unlink,
)

if sys.platform != "win32":
    import resource

SPAWN = multiprocessing.get_context("spawn")
FORK = multiprocessing.get_context("fork")
HEADER = struct.Struct("<8sIIIIQQII")


def _header(path: str) -> tuple[object, ...]:
    with open(path, "rb") as f:
        return HEADER.unpack(f.read(HEADER.size))


def _patch(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_named_segment_is_shared_between_objects(shm_path: str) -> None:
    """Two objects on one path see each other's increments."""
    a = Counters(3, path=shm_path)
    b = Counters.attach(shm_path)
    a.incr(2, 5)
    assert b.incr(2) == 6
    assert a.to_list() == [0, 0, 6]
    assert len(b) == 3
    assert b.path == shm_path
    assert repr(b) == f"<Counters size=3 capacity={b.capacity} path={shm_path!r}>"


def test_header_layout(shm_path: str) -> None:
    """The file starts with magic, version, kind, slot size, header size, count, capacity."""
    c = Counters(3, path=shm_path)
    magic, version, kind, slot, header_size, count, capacity, param, extra = _header(shm_path)
    assert (magic, version, kind, slot) == (b"SHMCTRS\x00", 1, 1, CACHE_LINE_SIZE)
    assert header_size == max(64, CACHE_LINE_SIZE)
    assert (count, capacity, param, extra) == (3, c.capacity, 0, 0)
    assert os.path.getsize(shm_path) == header_size + capacity * CACHE_LINE_SIZE
    assert os.path.getsize(shm_path) % PAGE_SIZE == 0


def test_default_mode_is_0600(shm_path: str) -> None:
    """A new segment file is created with mode 0600 whatever the umask."""
    old = os.umask(0)
    try:
        Counters(1, path=shm_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(shm_path).st_mode) == 0o600


def test_explicit_mode(shm_path: str) -> None:
    """mode= sets the new file's permission bits exactly."""
    Counters(1, path=shm_path, mode=0o640)
    assert stat.S_IMODE(os.stat(shm_path).st_mode) == 0o640


def test_bad_mode(shm_path: str) -> None:
    """A mode outside 0..0o7777 is a SegmentError with EINVAL."""
    with pytest.raises(SegmentError) as info:
        Counters(1, path=shm_path, mode=0o10000)
    assert info.value.errno == errno.EINVAL
    assert not os.path.exists(shm_path)


def test_attach_missing_is_enoent(shm_path: str) -> None:
    """attach() and create=False on a missing file raise ENOENT with the path."""
    for make in (
        lambda: Counters.attach(shm_path),
        lambda: Counters(2, path=shm_path, create=False),
    ):
        with pytest.raises(SegmentError) as info:
            make()
        assert info.value.errno == errno.ENOENT
        assert info.value.filename == shm_path
        assert isinstance(info.value, OSError)
    assert not os.path.exists(shm_path)


def test_create_in_missing_directory_is_enoent(tmp_path: object) -> None:
    """Creating under a directory that does not exist raises ENOENT."""
    path = os.path.join(str(tmp_path), "nope", "seg")
    with pytest.raises(SegmentError) as info:
        Counters(1, path=path)
    assert info.value.errno == errno.ENOENT
    assert info.value.filename == path


@pytest.mark.parametrize("path", ["", "a\x00b", 42])
def test_bad_path_is_einval(path: object) -> None:
    """An empty path, a NUL byte or a non-path raise SegmentError EINVAL."""
    with pytest.raises(SegmentError) as info:
        Counters(1, path=path)  # type: ignore[arg-type]
    assert info.value.errno == errno.EINVAL


def test_create_true_attaches_to_existing(shm_path: str) -> None:
    """create=True on an existing valid segment attaches and keeps its values."""
    a = Counters(2, path=shm_path)
    a.incr(1, 9)
    b = Counters(2, path=shm_path)
    assert b.to_list() == [0, 9]
    c = Counters(5, path=shm_path)  # within capacity
    assert c.to_list() == [0, 9, 0, 0, 0]


def test_create_true_beyond_capacity_is_segment_error(shm_path: str) -> None:
    """Asking an existing segment for more counters than its capacity raises EINVAL."""
    a = Counters(2, path=shm_path)
    with pytest.raises(SegmentError) as info:
        Counters(a.capacity + 1, path=shm_path)
    assert info.value.errno == errno.EINVAL
    assert f"holds {a.capacity} counters at most, {a.capacity + 1} asked" in str(info.value)


def test_zero_true_zeroes_existing_values(shm_path: str) -> None:
    """zero=True clears an existing segment's values."""
    a = Counters(2, path=shm_path)
    a.incr(0, 3)
    b = Counters(2, path=shm_path, zero=True)
    assert b.to_list() == [0, 0]
    assert a[0] == 0


def test_size_is_required_to_create(shm_path: str) -> None:
    """Creating a named segment without a size raises CounterSizeError."""
    with pytest.raises(CounterSizeError):
        Counters(path=shm_path)
    assert not os.path.exists(shm_path)


def test_close_keeps_file_and_unlink_removes_it(shm_path: str) -> None:
    """close() never deletes the file; unlink() does; a second unlink is ENOENT."""
    c = Counters(1, path=shm_path)
    c.incr(0)
    c.close()
    assert Counters.attach(shm_path)[0] == 1
    unlink(shm_path)
    assert not os.path.exists(shm_path)
    with pytest.raises(SegmentError) as info:
        unlink(shm_path)
    assert info.value.errno == errno.ENOENT


def test_counters_unlink_method(shm_path: str) -> None:
    """Counters.unlink() removes its own file; anonymous counters have none."""
    c = Counters(1, path=shm_path)
    c.unlink()
    assert not os.path.exists(shm_path)
    with pytest.raises(SegmentError):
        Counters(1).unlink()


def test_size_on_attach_grows_the_recorded_count(shm_path: str) -> None:
    """Asking an existing segment for more counters records them; asking fewer changes nothing."""
    a = Counters(2, path=shm_path)
    b = Counters(5, path=shm_path)
    assert (len(a), len(b)) == (2, 5)
    assert _header(shm_path)[5] == 5
    assert len(Counters.attach(shm_path)) == 5
    c = Counters(3, path=shm_path)
    assert len(c) == 3
    assert _header(shm_path)[5] == 5
    assert len(Counters.attach(shm_path)) == 5
    b.incr(4)
    assert Counters.attach(shm_path).to_list() == [0, 0, 0, 0, 1]


def test_resize_of_named_segment_is_seen_by_attach(shm_path: str) -> None:
    """resize() records the new count in the header for later attachers."""
    c = Counters(2, path=shm_path)
    c.resize(7)
    assert len(Counters.attach(shm_path)) == 7
    assert _header(shm_path)[5] == 7


def _expect_einval(path: str, fragment: str) -> None:
    with pytest.raises(SegmentError) as info:
        Counters.attach(path)
    assert info.value.errno == errno.EINVAL
    assert info.value.filename == path
    assert fragment in str(info.value)


def test_attach_to_foreign_file(shm_path: str) -> None:
    """A file without our magic is refused with EINVAL."""
    with open(shm_path, "wb") as f:
        f.write(b"#!/bin/sh\n" + b"\0" * 4086)
    _expect_einval(shm_path, "not a shm-counters segment: magic b'#!/bin/s'")


def test_attach_to_short_file(shm_path: str) -> None:
    """A file shorter than a header is refused with EINVAL."""
    with open(shm_path, "wb") as f:
        f.write(b"SHMCTRS\0")
    _expect_einval(shm_path, "8 bytes is too short")


def test_attach_to_empty_file(shm_path: str) -> None:
    """An empty file is refused with EINVAL."""
    open(shm_path, "wb").close()
    _expect_einval(shm_path, "0 bytes is too short")


def test_attach_to_truncated_segment(shm_path: str) -> None:
    """A segment cut short is refused with EINVAL, naming both sizes."""
    Counters(3, path=shm_path)
    full = os.path.getsize(shm_path)
    os.truncate(shm_path, full - CACHE_LINE_SIZE)
    _expect_einval(
        shm_path, f"segment truncated: {full - CACHE_LINE_SIZE} bytes, its header says {full}"
    )


def test_attach_to_oversized_segment(shm_path: str) -> None:
    """A segment longer than its header says is refused with EINVAL."""
    Counters(3, path=shm_path)
    full = os.path.getsize(shm_path)
    os.truncate(shm_path, full + PAGE_SIZE)
    _expect_einval(shm_path, "segment oversized")


def test_attach_to_other_version(shm_path: str) -> None:
    """A segment of another layout version is refused with EINVAL."""
    Counters(3, path=shm_path)
    _patch(shm_path, 8, struct.pack("<I", 2))
    _expect_einval(shm_path, "segment layout version 2, this reads 1")


def test_attach_to_other_slot_size(shm_path: str) -> None:
    """A segment laid out for another cache line size is refused with EINVAL."""
    Counters(3, path=shm_path)
    _patch(shm_path, 16, struct.pack("<I", CACHE_LINE_SIZE * 2))
    _expect_einval(
        shm_path,
        f"segment slot size {CACHE_LINE_SIZE * 2} bytes, this machine's cache line is "
        f"{CACHE_LINE_SIZE}",
    )


def test_attach_to_bad_count(shm_path: str) -> None:
    """A header whose count exceeds its capacity is refused with EINVAL."""
    c = Counters(3, path=shm_path)
    _patch(shm_path, 24, struct.pack("<Q", c.capacity + 1))
    _expect_einval(shm_path, f"segment count {c.capacity + 1} exceeds capacity {c.capacity}")


def test_attach_to_bad_header_size(shm_path: str) -> None:
    """A header size that disagrees with the layout is refused with EINVAL."""
    Counters(3, path=shm_path)
    _patch(shm_path, 20, struct.pack("<I", 4 * CACHE_LINE_SIZE))
    _expect_einval(shm_path, "header size")


def test_attach_to_other_kind(shm_path: str) -> None:
    """Counters refuse a scoreboard or histogram segment, and the reverse."""
    Scoreboard(2, ["a"], path=shm_path)
    _expect_einval(shm_path, "segment holds scoreboard, not counters")
    with pytest.raises(SegmentError, match="holds scoreboard, not histogram"):
        Histogram.attach(shm_path)
    unlink(shm_path)
    Counters(1, path=shm_path)
    with pytest.raises(SegmentError, match="holds counters, not scoreboard"):
        Scoreboard(2, ["a"], path=shm_path)


A = counter_struct("A", ["calling", "writing"])
B = counter_struct("B", ["requests", "bytes", "errors"])


def test_struct_header_records_its_field_names(shm_path: str) -> None:
    """A named struct's header holds its field count and names after the fixed header."""
    A(path=shm_path)
    magic, version, kind, _slot, header_size, count, capacity, param, extra = _header(shm_path)
    assert (magic, version, kind, count, param, extra) == (b"SHMCTRS\x00", 1, 1, 2, 2, 15)
    assert header_size == max(128, CACHE_LINE_SIZE)
    with open(shm_path, "rb") as f:
        f.seek(64)
        assert f.read(15) == b"calling\nwriting"
    assert os.path.getsize(shm_path) == header_size + capacity * CACHE_LINE_SIZE


def test_struct_refuses_another_structs_segment(shm_path: str) -> None:
    """A struct attaching to a file laid out for other fields raises, naming both lists."""
    a = A(path=shm_path)
    a.incr_calling(5)
    for make in (lambda: B(path=shm_path), lambda: B(path=shm_path, create=False, zero=True)):
        with pytest.raises(SegmentError) as info:
            make()
        assert info.value.errno == errno.EINVAL
        assert info.value.filename == shm_path
        assert info.value.strerror == (
            "segment holds fields (calling, writing), not B's fields (requests, bytes, errors)"
        )
    narrower = counter_struct("A", ["calling"])
    with pytest.raises(
        SegmentError, match=r"fields \(calling, writing\), not A's fields \(calling\)"
    ):
        narrower(path=shm_path)
    assert a.to_dict() == {"calling": 5, "writing": 0}
    same = counter_struct("Other", ["calling", "writing"])(path=shm_path)
    assert same.calling == 5  # the names decide, not the class name


def test_struct_refuses_a_plain_counters_segment(shm_path: str) -> None:
    """A struct will not read a file of plain counters: it has no field names to check."""
    Counters(3, path=shm_path).incr(0)
    with pytest.raises(SegmentError) as info:
        A(path=shm_path)
    assert info.value.errno == errno.EINVAL
    assert info.value.strerror == (
        "segment holds plain counters (no field names), not A's fields (calling, writing)"
    )
    assert Counters.attach(shm_path).to_list() == [1, 0, 0]


def test_plain_counters_attach_to_a_structs_segment(shm_path: str) -> None:
    """Counters.attach() reads a struct's file as counters, field k at index k."""
    b = B(path=shm_path)
    b.incr_bytes(300)
    c = Counters.attach(shm_path)
    assert c.to_list() == [0, 300, 0]
    c.incr(2)
    assert b.errors == 1
    wider = Counters(5, path=shm_path)  # more counters than fields: the struct still fits
    assert len(wider) == 5
    assert B(path=shm_path).to_dict() == {"requests": 0, "bytes": 300, "errors": 1}


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (b"\xff\xfeling\nwriting", "segment field names are not UTF-8"),
        (b"calling writing", "segment field names b'calling writing' do not make 2 identifiers"),
        (b"calling\nwrit-ng", "segment field names b'calling\\nwrit-ng' do not make 2"),
    ],
)
def test_malformed_field_names_are_refused(shm_path: str, extra: bytes, fragment: str) -> None:
    """Field names in a header that are not UTF-8 identifiers make the file refused."""
    A(path=shm_path)
    _patch(shm_path, 64, extra)
    _expect_einval(shm_path, fragment)
    with pytest.raises(SegmentError, match="segment field names"):
        A(path=shm_path)


def test_names_count_without_names_is_refused(shm_path: str) -> None:
    """A counters header claiming field names but holding none is refused."""
    Counters(2, path=shm_path)
    _patch(shm_path, 40, struct.pack("<I", 2))
    _expect_einval(shm_path, "segment says 2 field names but holds none")


def test_named_scoreboard_header_uses_the_same_names(shm_path: str) -> None:
    """A scoreboard's file names its fields the same way, and a mismatch names both lists."""
    Scoreboard(2, ["calling", "writing"], path=shm_path)
    with open(shm_path, "rb") as f:
        f.seek(64)
        assert f.read(15) == b"calling\nwriting"
    with pytest.raises(SegmentError) as info:
        Scoreboard(2, ["calling"], path=shm_path)
    assert info.value.strerror == "scoreboard fields are (calling, writing), not (calling)"


def _segment_error_in_child(make: object, fsize_limit: int) -> str:
    """Call ``make()`` in a forked child limited to files of ``fsize_limit`` bytes."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, hard))
            try:
                make()  # type: ignore[operator]
                out = "no error"
            except SegmentError as exc:
                out = f"{exc.errno} {exc.strerror}"
            except BaseException as exc:
                out = f"{type(exc).__name__}: {exc}"
            os.write(w, out.encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as f:
            return f.read().decode()
    finally:
        os.waitpid(pid, 0)


@pytest.mark.skipif(sys.platform == "win32", reason="needs fork and RLIMIT_FSIZE")
def test_file_size_the_system_refuses_is_a_segment_error(shm_path: str) -> None:
    """A segment file the system will not size (RLIMIT_FSIZE here) raises, naming the bytes."""
    n = 2**16
    header = max(64, CACHE_LINE_SIZE)
    nbytes = -(-(header + n * CACHE_LINE_SIZE) // PAGE_SIZE) * PAGE_SIZE
    got = _segment_error_in_child(lambda: Counters(n, path=shm_path), 2**20)
    assert got == (
        f"{errno.EFBIG} cannot create segment for {n} counters ({nbytes} bytes): File too large"
    )
    assert os.listdir(os.path.dirname(shm_path)) == []  # no file, no temporary left


def _refuse_mmap(*args: object) -> object:
    raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))


def test_histogram_mapping_refused_is_a_segment_error(
    shm_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Histogram memory the system refuses raises SegmentError naming the buckets and bytes."""
    monkeypatch.setattr(shm_counters._segment, "mmap", SimpleNamespace(mmap=_refuse_mmap))
    with pytest.raises(SegmentError) as info:
        Histogram(log2_buckets=8)
    assert info.value.errno == errno.ENOMEM
    assert str(info.value) == (
        f"[Errno {errno.ENOMEM}] cannot map a histogram of 8 buckets ({PAGE_SIZE} bytes)"
        " of anonymous shared memory: Cannot allocate memory"
    )
    with pytest.raises(SegmentError) as info:
        Histogram(log2_buckets=8, path=shm_path)
    nbytes = max(64, CACHE_LINE_SIZE) + -(-(16 + 8) * 8 // CACHE_LINE_SIZE) * CACHE_LINE_SIZE
    assert info.value.strerror == (
        f"cannot create segment for a histogram of 8 buckets ({nbytes} bytes)"
        ": Cannot allocate memory"
    )
    assert info.value.filename == shm_path
    assert os.listdir(os.path.dirname(shm_path)) == []


def test_exact_total_from_spawned_processes(shm_path: str) -> None:
    """4 spawned processes attached by path x 50,000 incr give exactly 200,000."""
    c = Counters(2, path=shm_path)
    procs = [
        SPAWN.Process(target=workers.incr_counters, args=(shm_path, 1, 50_000)) for _ in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert c.to_list() == [0, 200_000]


def test_racing_creators_end_up_on_one_segment(shm_path: str) -> None:
    """Processes creating the same path at once all share one segment."""
    start = FORK.Event()
    procs = [
        FORK.Process(target=workers.create_and_incr, args=(shm_path, 1, start)) for _ in range(6)
    ]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert Counters.attach(shm_path).to_list() == [6]
    leftovers = [n for n in os.listdir(os.path.dirname(shm_path)) if n.endswith(".tmp")]
    assert leftovers == []


def _hold_segment(path: str, ready: object, done: object) -> None:
    """Create a named Counters, count once, and keep it mapped until told to stop."""
    c = Counters(2, path=path)
    c.incr(0)
    ready.set()  # type: ignore[attr-defined]
    done.wait(30)  # type: ignore[attr-defined]
    os._exit(0 if c[0] == 2 else 1)


def _adopt_segment(path: str, out: object) -> None:
    """Open the (deleted) path as a sibling would: count once and report what it sees."""
    c = Counters(2, path=path)
    out.put((c.incr(0), os.path.exists(path)))  # type: ignore[attr-defined]


@pytest.mark.linux
def test_deleted_segment_is_adopted_by_a_sibling(shm_path: str) -> None:
    """A sibling opening a deleted-but-mapped path maps the same memory, not a new file."""
    ready, done, out = FORK.Event(), FORK.Event(), FORK.Queue()
    holder = FORK.Process(target=_hold_segment, args=(shm_path, ready, done))
    holder.start()
    try:
        assert ready.wait(30)
        os.unlink(shm_path)
        sibling = FORK.Process(target=_adopt_segment, args=(shm_path, out))
        sibling.start()
        sibling.join(30)
        # The sibling saw the holder's count (1 -> 2) and made no new file.
        assert (sibling.exitcode, out.get(timeout=5)) == (0, (2, False))
        done.set()
        holder.join(30)
        assert holder.exitcode == 0  # and the holder saw the sibling's increment
    finally:
        done.set()
        if holder.is_alive():
            holder.kill()
            holder.join(5)


@pytest.mark.linux
def test_deleted_segment_nobody_maps_is_created_afresh(shm_path: str) -> None:
    """With no process of the family mapping the deleted file, a new file is created."""
    c = Counters(2, path=shm_path)
    c.incr(0)
    os.unlink(shm_path)
    out = FORK.Queue()
    # This process is the child's parent, so family: drop its mapping first.
    c.close()
    del c
    gc.collect()
    child = FORK.Process(target=_adopt_segment, args=(shm_path, out))
    child.start()
    child.join(30)
    assert (child.exitcode, out.get(timeout=5)) == (0, (1, True))


def test_full_filesystem_is_an_error_at_creation(
    shm_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filesystem that cannot hold the segment is a SegmentError at creation, not a SIGBUS."""

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    with pytest.raises(SegmentError) as info:
        Counters(4, path=shm_path)
    assert info.value.errno == errno.ENOSPC
    assert not os.path.exists(shm_path)


# -- whose segment it is -------------------------------------------------------

_EUID = os.geteuid()
_NOBODY = 65534
_REQUIRED = (
    f"a segment must be a regular file owned by uid {_EUID} (root) with no group or other "
    "write permission"
    if _EUID == 0
    else None
)


def _openers() -> list[object]:
    return [
        lambda p: Counters(2, path=p),
        lambda p: counter_struct("calling", "writing")(path=p),
        lambda p: Scoreboard(2, ("calling",), path=p, create=True),
        lambda p: Histogram(path=p),
    ]


@pytest.mark.parametrize("make", _openers(), ids=["counters", "struct", "scoreboard", "histogram"])
def test_a_symlink_at_the_path_is_refused_and_its_target_untouched(
    make: object, shm_path: str
) -> None:
    """No segment is opened through a symbolic link: ELOOP, and the target keeps its bytes."""
    target = shm_path + ".target"
    Counters(2, path=target).incr(1, 7)
    before = Path(target).read_bytes()
    os.symlink(target, shm_path)
    with pytest.raises(SegmentError) as info:
        make(shm_path)  # type: ignore[operator]
    assert info.value.errno == errno.ELOOP
    assert str(info.value) == (
        f"[Errno {errno.ELOOP}] segment path is a symbolic link; segments are never opened "
        f"through one (name the real file): '{shm_path}'"
    )
    assert Path(target).read_bytes() == before


@pytest.mark.skipif(_EUID != 0, reason="making another user's file needs root")
@pytest.mark.parametrize("make", _openers(), ids=["counters", "struct", "scoreboard", "histogram"])
def test_another_users_segment_is_refused(make: object, shm_path: str) -> None:
    """A valid segment owned by another user (forged rows) is EPERM, naming owner and mode."""
    make(shm_path)  # type: ignore[operator]
    os.chown(shm_path, _NOBODY, _NOBODY)
    with pytest.raises(SegmentError) as info:
        make(shm_path)  # type: ignore[operator]
    assert info.value.errno == errno.EPERM
    assert str(info.value) == (
        f"[Errno {errno.EPERM}] segment is a regular file owned by uid {_NOBODY} (nobody) "
        f"with mode 0o600; {_REQUIRED}: '{shm_path}'"
    )


def test_a_segment_others_may_write_is_refused(shm_path: str) -> None:
    """Our own file with group or other write permission is refused: anyone could forge it."""
    Counters(2, path=shm_path)
    os.chmod(shm_path, 0o666)
    with pytest.raises(
        SegmentError, match=r"owned by uid \d+ .*with mode 0o666; a segment"
    ) as info:
        Counters.attach(shm_path)
    assert info.value.errno == errno.EPERM


def test_a_fifo_at_the_path_is_refused_without_blocking(shm_path: str) -> None:
    """A FIFO (or anything not a regular file) is refused at once, never read."""
    os.mkfifo(shm_path, 0o600)
    with pytest.raises(SegmentError, match="segment is a FIFO owned by") as info:
        Counters(2, path=shm_path)
    assert info.value.errno == errno.EPERM


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_a_mode_letting_others_write_is_refused_at_creation(mode: int, shm_path: str) -> None:
    """A new segment's mode may not give group or other write permission; nothing is made."""
    with pytest.raises(SegmentError) as info:
        Counters(1, path=shm_path, mode=mode)
    assert str(info.value) == (
        f"[Errno {errno.EINVAL}] mode 0o{mode:03o} lets group or others write; a segment is "
        f"writable by its owner only (for example 0o600 or 0o640): '{shm_path}'"
    )
    assert not os.path.lexists(shm_path)


@pytest.mark.skipif(_EUID != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_a_segment_forged_by_another_user_first_is_refused() -> None:
    """Another user creates the file first, with forged figures: it is refused, never counted."""
    shared = Path(tempfile.mkdtemp(prefix="shmc-shared-", dir="/tmp"))
    try:
        shared.chmod(0o1777)  # like /dev/shm: anyone may create files here
        forged = shared / "forged"
        Counters(2, path=forged)[0] = 31337
        forged.chmod(0o644)
        path = shared / "board"
        subprocess.run(
            [
                *("setpriv", f"--reuid={_NOBODY}", f"--regid={_NOBODY}", "--clear-groups"),
                *("cp", str(forged), str(path)),
            ],
            check=True,
            capture_output=True,
        )
        assert os.stat(path).st_uid == _NOBODY
        with pytest.raises(SegmentError) as info:
            Counters(2, path=path)
        assert info.value.errno == errno.EPERM
        assert "owned by uid 65534 (nobody) with mode 0o644" in str(info.value)
    finally:
        shutil.rmtree(shared)
