"""Counters in anonymous shared memory: values, errors, lifecycle, fork."""

from __future__ import annotations

import enum
import errno
import mmap
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from decimal import Decimal

import pytest
import shm_counters
from shm_counters import (
    CACHE_LINE_SIZE,
    MAX,
    PAGE_SIZE,
    CapacityError,
    ClosedError,
    CounterIndexError,
    Counters,
    CounterSizeError,
    CounterValueError,
    Scoreboard,
    SegmentError,
    ShmCountersError,
)

if sys.platform != "win32":
    import resource

FORK = multiprocessing.get_context("fork")


def test_new_counters_are_zero_with_page_granular_capacity() -> None:
    """A new segment holds zeros and as many slots as fit in whole pages."""
    c = Counters(3)
    assert len(c) == 3
    assert c.to_list() == [0, 0, 0]
    assert c.capacity == PAGE_SIZE // CACHE_LINE_SIZE
    big = Counters(PAGE_SIZE // CACHE_LINE_SIZE + 1)
    assert big.capacity == 2 * PAGE_SIZE // CACHE_LINE_SIZE
    assert c.path is None


def test_incr_decr_return_new_values() -> None:
    """incr and decr return the new value and default to 1."""
    c = Counters(2)
    assert c.incr(0) == 1
    assert c.incr(0, 10) == 11
    assert c.decr(0, 4) == 7
    assert c.decr(0) == 6
    assert c.incr(1, 0) == 0
    assert c.to_list() == [6, 0]


def test_getitem_setitem_and_iteration() -> None:
    """c[i] reads, c[i] = v writes, iteration yields the values in order."""
    c = Counters(3)
    c[1] = 42
    c[2] = MAX
    assert c[1] == 42
    assert c[2] == MAX
    assert list(c) == [0, 42, MAX]


def test_wraparound_both_ways() -> None:
    """Arithmetic is modulo 2**64: 0 - 1 is MAX and MAX + 1 is 0."""
    c = Counters(1)
    assert c.decr(0) == MAX
    assert c.incr(0) == 0
    assert c.incr(0, MAX) == MAX
    assert c.incr(0, 2) == 1
    assert c.decr(0, MAX) == 2


def test_constants() -> None:
    """MAX is 2**64 - 1, PAGE_SIZE the mmap page, CACHE_LINE_SIZE a power of two."""
    assert MAX == 2**64 - 1
    assert PAGE_SIZE == mmap.PAGESIZE
    assert CACHE_LINE_SIZE >= 8
    assert CACHE_LINE_SIZE & (CACHE_LINE_SIZE - 1) == 0


@pytest.mark.linux
def test_cache_line_size_read_from_sysfs() -> None:
    """On Linux CACHE_LINE_SIZE is the kernel's coherency line size of cpu0."""
    path = "/sys/devices/system/cpu/cpu0/cache/index0/coherency_line_size"
    try:
        with open(path) as f:
            expected = int(f.read())
    except OSError:
        pytest.skip("no cache information in sysfs")
    assert expected == CACHE_LINE_SIZE


@pytest.mark.parametrize("index", [4, 5, 2**64, 2**70])
def test_index_out_of_range(index: int) -> None:
    """Indexes at or past the size raise CounterIndexError naming both numbers."""
    c = Counters(4)
    message = f"index {index} out of range for 4 counters (allowed 0 <= index < 4)"
    for op in (c.incr, c.decr, c.__getitem__):
        with pytest.raises(CounterIndexError) as info:
            op(index)
        assert str(info.value) == message
    with pytest.raises(CounterIndexError, match=f"^index {index} out of range"):
        c[index] = 1
    assert c.to_list() == [0, 0, 0, 0]


@pytest.mark.parametrize("index", [-1, -4, -5])
def test_negative_index_is_not_wrapped(index: int) -> None:
    """Negative indexes raise instead of counting from the end."""
    c = Counters(4)
    message = f"index {index} out of range for 4 counters (allowed 0 <= index < 4)"
    for op in (c.incr, c.decr, c.__getitem__):
        with pytest.raises(CounterIndexError) as info:
            op(index)
        assert str(info.value) == message
    with pytest.raises(CounterIndexError):
        c[index] = 1
    assert c.to_list() == [0, 0, 0, 0]


def test_index_error_is_both_package_and_builtin_error() -> None:
    """CounterIndexError is an IndexError and a ShmCountersError."""
    with pytest.raises(IndexError):
        Counters(1)[1]
    with pytest.raises(ShmCountersError):
        Counters(1)[1]


class _Index:
    """An index like numpy's integers: not an int, but has __index__."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value


class _Slot(enum.IntEnum):
    FIRST = 0
    LAST = 3


def _index_ops(c: Counters) -> dict[str, Callable[[object], object]]:
    """Every operation that takes a counter index, as a one-argument callable."""
    return {
        "incr": c.incr,  # type: ignore[dict-item]
        "decr": c.decr,  # type: ignore[dict-item]
        "incr by 2": lambda i: c.incr(i, 2),  # type: ignore[arg-type]
        "getitem": c.__getitem__,  # type: ignore[dict-item]
        "setitem": lambda i: c.__setitem__(i, 5),  # type: ignore[arg-type]
        "bind_incr": c.bind_incr,  # type: ignore[dict-item]
    }


@pytest.mark.parametrize(
    ("index", "kind"),
    [
        (True, "bool"),
        (False, "bool"),
        (1.0, "float"),
        (0.5, "float"),
        ("0", "str"),
        (None, "NoneType"),
    ],
)
def test_non_int_index_is_a_type_error(index: object, kind: str) -> None:
    """bool, float, str and None indexes raise the same TypeError everywhere, changing nothing."""
    c = Counters(4)
    for name, op in _index_ops(c).items():
        with pytest.raises(TypeError) as info:
            op(index)
        assert str(info.value) == f"counter index must be an int, not {kind}", name
        assert type(info.value) is TypeError
    assert c.to_list() == [0, 0, 0, 0]


def test_index_with_dunder_index_is_accepted() -> None:
    """Objects with __index__ (numpy integers) and int subclasses index like ints."""
    c = Counters(4)
    assert c.incr(_Index(2)) == 1
    assert c.incr(_Index(2), 3) == 4
    assert c.decr(_Index(2)) == 3
    c[_Index(1)] = 9
    assert c[_Index(1)] == 9
    assert c.bind_incr(_Index(3))() == 1
    assert c.incr(_Slot.LAST) == 2
    assert c[_Slot.FIRST] == 0
    assert c.to_list() == [0, 9, 3, 2]
    with pytest.raises(CounterIndexError) as info:
        c.incr(_Index(4))
    assert str(info.value) == "index 4 out of range for 4 counters (allowed 0 <= index < 4)"
    with pytest.raises(CounterIndexError):
        c[_Index(-1)]


@pytest.mark.parametrize(
    ("amount", "kind"),
    [
        (True, "bool"),
        (False, "bool"),
        (1.0, "float"),
        (Decimal("1.5"), "Decimal"),
        (None, "NoneType"),
    ],
)
def test_non_int_amounts_and_values_are_type_errors(amount: object, kind: str) -> None:
    """Amounts and written values refuse bool, float, Decimal and None (cffi would take some)."""
    c = Counters(5000)
    for op, name in ((c.incr, "amount"), (c.decr, "amount"), (c.__setitem__, "value")):
        for i in (0, 4999):  # with a prebuilt pointer, and past them
            with pytest.raises(TypeError) as info:
                op(i, amount)  # type: ignore[operator]
            assert str(info.value) == f"{name} must be an int, not {kind}"
    assert set(c.to_list()) == {0}


def test_amounts_and_values_with_dunder_index_are_accepted() -> None:
    """Amounts and values that are numpy-like integers count like ints."""
    c = Counters(5000)
    assert c.incr(0, _Index(5)) == 5
    assert c.decr(0, _Index(2)) == 3
    assert c.incr(4999, _Index(7)) == 7
    c[1] = _Index(11)  # type: ignore[assignment]
    c[4998] = _Index(12)  # type: ignore[assignment]
    assert (c[0], c[1], c[4998], c[4999]) == (3, 11, 12, 7)


@pytest.mark.parametrize("amount", [-1, 2**64, 2**100])
def test_bad_amounts(amount: int) -> None:
    """incr/decr by a negative or >= 2**64 amount raise CounterValueError."""
    c = Counters(1)
    message = f"amount {amount} out of range: allowed 0 <= amount <= {MAX}"
    for op in (c.incr, c.decr):
        with pytest.raises(CounterValueError) as info:
            op(0, amount)
        assert str(info.value) == message
        assert isinstance(info.value, ValueError)
    assert c[0] == 0


@pytest.mark.parametrize("value", [-1, 2**64])
def test_bad_values(value: int) -> None:
    """Setting a negative or >= 2**64 value raises CounterValueError."""
    c = Counters(1)
    with pytest.raises(CounterValueError) as info:
        c[0] = value
    assert str(info.value) == f"value {value} out of range: allowed 0 <= value <= {MAX}"
    assert c[0] == 0


def test_float_amount_is_a_type_error() -> None:
    """A float amount raises TypeError naming the type."""
    with pytest.raises(TypeError, match=r"^amount must be an int, not float$"):
        Counters(1).incr(0, 1.5)  # type: ignore[arg-type]


def _machine_bytes() -> int:
    """The test's own reading of physical memory, capped at 2**40 (the oracle)."""
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return 2**40
    return min(2**40, pages * PAGE_SIZE) if pages > 0 else 2**40


MAX_BYTES = _machine_bytes()
MAX_SIZE = MAX_BYTES // CACHE_LINE_SIZE
RANGE = f"counters need 1 <= size <= {MAX_SIZE} ({MAX_BYTES} bytes of memory in"


@pytest.mark.parametrize(
    ("size", "message"),
    [
        (0, f"size 0 out of range: {RANGE} {CACHE_LINE_SIZE}-byte slots)"),
        (-3, f"size -3 out of range: {RANGE} {CACHE_LINE_SIZE}-byte slots)"),
        (
            MAX_SIZE + 1,
            f"size {MAX_SIZE + 1} out of range: {RANGE} {CACHE_LINE_SIZE}-byte slots)",
        ),
        (2**40, f"size {2**40} out of range: {RANGE} {CACHE_LINE_SIZE}-byte slots)"),
        ("3", "size must be an int, not str '3'"),
        (2.0, "size must be an int, not float 2.0"),
        (True, "size must be an int, not bool True"),
        (None, "size must be an int, not NoneType None"),
    ],
)
def test_bad_sizes(size: object, message: str) -> None:
    """Sizes below 1, beyond the machine's memory or not ints raise CounterSizeError."""
    with pytest.raises(CounterSizeError) as info:
        Counters(size)  # type: ignore[arg-type]
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)


@pytest.mark.skipif(MAX_BYTES >= 2**40, reason="machine memory reaches the 2**40 cap")
def test_size_beyond_memory_is_refused_before_mapping() -> None:
    """Counters(2**34) (1 TiB) is a CounterSizeError on a machine with less memory, not ENOMEM."""
    with pytest.raises(CounterSizeError) as info:
        Counters(2**34)
    assert str(info.value) == f"size {2**34} out of range: {RANGE} {CACHE_LINE_SIZE}-byte slots)"


def _in_child_with_limit(limit: int, amount: int, make: Callable[[], object]) -> str:
    """Run ``make()`` in a forked child whose resource ``limit`` allows ``amount`` more bytes.

    Returns ``"<errno> <message>"`` of the SegmentError it raised, or what
    went wrong instead.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            if limit == resource.RLIMIT_AS:
                with open("/proc/self/statm") as f:
                    used = int(f.read().split()[0]) * PAGE_SIZE
                amount += used
            else:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(limit, (amount, resource.getrlimit(limit)[1]))
            try:
                make()
                out = "no error"
            except SegmentError as exc:
                out = f"{exc.errno} {exc}"
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


@pytest.mark.linux
def test_anonymous_memory_the_system_refuses_is_a_segment_error() -> None:
    """A mapping the system refuses (RLIMIT_AS here) raises SegmentError naming size and bytes."""
    mib = 2**20
    n = 256 * mib // CACHE_LINE_SIZE
    got = _in_child_with_limit(resource.RLIMIT_AS, 32 * mib, lambda: Counters(n))
    assert got == (
        f"{errno.ENOMEM} [Errno {errno.ENOMEM}] cannot map {n} counters ({256 * mib} bytes)"
        " of anonymous shared memory: Cannot allocate memory"
    )
    got = _in_child_with_limit(
        resource.RLIMIT_AS, 32 * mib, lambda: Scoreboard(2**20, ["a", "b", "c"])
    )
    rows = 2**20 * (-(-5 * 8 // CACHE_LINE_SIZE) * CACHE_LINE_SIZE)
    nbytes = rows + PAGE_SIZE  # one more line (the reclaimed counter), page-rounded
    assert got == (
        f"{errno.ENOMEM} [Errno {errno.ENOMEM}] cannot map a scoreboard of 1048576 rows"
        f" of 3 fields ({nbytes} bytes) of anonymous shared memory: Cannot allocate memory"
    )


def test_resize_within_capacity_keeps_values() -> None:
    """resize grows and shrinks within capacity and keeps the values."""
    c = Counters(2)
    c.incr(1, 5)
    c.resize(c.capacity)
    assert len(c) == c.capacity
    assert c[1] == 5
    c.incr(c.capacity - 1)
    c.resize(2)
    assert c.to_list() == [0, 5]
    with pytest.raises(CounterIndexError):
        c[2]
    c.resize(3)
    assert c.to_list() == [0, 5, 0]


def test_resize_beyond_capacity() -> None:
    """resize past capacity raises CapacityError naming both numbers."""
    c = Counters(1)
    cap = c.capacity
    with pytest.raises(CapacityError) as info:
        c.resize(cap + 1)
    assert str(info.value) == f"cannot resize to {cap + 1} counters: capacity is {cap}"
    assert isinstance(info.value, ValueError)
    with pytest.raises(CounterSizeError):
        c.resize(0)
    assert len(c) == 1


def test_copy_is_independent() -> None:
    """copy() makes a fresh anonymous segment with the same values."""
    c = Counters(3)
    c.incr(0, 7)
    c[2] = MAX
    d = c.copy()
    assert d.to_list() == [0 + 7, 0, MAX]
    d.incr(0)
    assert c[0] == 7
    assert d[0] == 8
    assert d.path is None


def test_use_after_close_raises_closed_error() -> None:
    """Every operation on a closed Counters raises ClosedError."""
    c = Counters(2)
    c.close()
    assert c.closed
    ops = [
        lambda: c.incr(0),
        lambda: c.bind_incr(0),
        lambda: c.incr(-1),
        lambda: c.decr(1),
        lambda: c[0],
        lambda: c[-1],
        lambda: c.__setitem__(0, 1),
        lambda: len(c),
        lambda: c.capacity,
        lambda: c.resize(1),
        c.to_list,
        c.copy,
        lambda: list(c),
    ]
    for op in ops:
        with pytest.raises(ClosedError, match=r"^operation on closed Counters$"):
            op()
    c.close()  # closing twice is fine
    assert repr(c) == "<Counters closed>"


def test_bound_steps_on_counters() -> None:
    """bind_incr/bind_decr step one counter by one, check the index once, and die with close()."""
    c = Counters(3)
    hit, miss = c.bind_incr(2), c.bind_decr(0)
    assert (hit(), hit(), miss()) == (1, 2, shm_counters.MAX)
    assert c.to_list() == [shm_counters.MAX, 0, 2]
    with pytest.raises(CounterIndexError, match=r"^index 3 out of range for 3 counters"):
        c.bind_incr(3)
    with pytest.raises(CounterIndexError, match=r"^index -1 out of range for 3 counters"):
        c.bind_decr(-1)
    c.close()
    for step in (hit, miss):
        with pytest.raises(ClosedError, match=r"^operation on closed Counters$"):
            step()


def test_context_manager_closes() -> None:
    """Leaving a with block closes the counters."""
    with Counters(1) as c:
        assert c.incr(0) == 1
    assert c.closed
    with pytest.raises(ClosedError):
        c.incr(0)
    with pytest.raises(ClosedError):
        c.__enter__()


def test_repr() -> None:
    """repr shows size and capacity."""
    c = Counters(2)
    assert repr(c) == f"<Counters size=2 capacity={c.capacity}>"


def _hammer(c: Counters, index: int, times: int) -> None:
    incr = c.incr
    for _ in range(times):
        incr(index)


def _run_forked(targets: list[tuple[object, ...]]) -> None:
    procs = [FORK.Process(target=_hammer, args=args) for args in targets]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0


@pytest.mark.skipif(sys.platform == "win32", reason="needs fork")
def test_exact_total_from_forked_processes_on_one_counter() -> None:
    """4 forked processes x 250,000 incr on one counter give exactly 1,000,000."""
    c = Counters(2)
    _run_forked([(c, 0, 250_000)] * 4)
    assert c.to_list() == [1_000_000, 0]


@pytest.mark.skipif(sys.platform == "win32", reason="needs fork")
def test_exact_totals_from_forked_processes_on_several_counters() -> None:
    """Forked processes on separate counters and a shared one all add up exactly."""
    c = Counters(3)
    _run_forked([(c, 0, 100_000), (c, 1, 100_000), (c, 2, 50_000), (c, 2, 50_000)])
    assert c.to_list() == [100_000, 100_000, 100_000]


def test_error_classes_are_exported_and_rooted() -> None:
    """Every exported error subclasses ShmCountersError and its builtin."""
    pairs = {
        "CounterIndexError": IndexError,
        "CounterValueError": ValueError,
        "CounterSizeError": ValueError,
        "CapacityError": ValueError,
        "ClosedError": ValueError,
        "FieldNameError": ValueError,
        "BoundsError": ValueError,
        "ScoreboardFullError": RuntimeError,
        "SegmentError": OSError,
    }
    for name, builtin in pairs.items():
        cls = getattr(shm_counters, name)
        assert issubclass(cls, ShmCountersError)
        assert issubclass(cls, builtin)
        assert name in shm_counters.__all__


def test_counters_past_the_prebuilt_pointers() -> None:
    """Counters beyond the first 4,096 (no prebuilt pointer) count the same way."""
    c = Counters(5000)
    assert c.incr(4999) == 1
    assert c.decr(4999) == 0
    assert c.decr(4999) == MAX
    assert c.incr(4095) == 1
    assert c.incr(4096) == 1
    with pytest.raises(CounterIndexError):
        c.incr(5000)


def test_float_one_is_refused() -> None:
    """An amount of 1.0 is refused like any float, even though it equals 1."""
    c = Counters(1)
    with pytest.raises(TypeError):
        c.incr(0, 1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        c.decr(0, 1.0)  # type: ignore[arg-type]
    assert c[0] == 0


def test_garbage_collected_cycles_unmap_cleanly() -> None:
    """Objects in reference cycles, closed or not, are collected without a crash."""
    import gc
    import weakref

    from shm_counters import Histogram, Scoreboard, counter_struct

    stats = counter_struct("Cyc", ["a"])
    refs = []
    for k in range(50):
        s = stats()
        s.incr_a()
        board = Scoreboard(2, ["a"])
        board.claim().incr_a()
        h = Histogram()
        h.record(k)
        holder: list[object] = [s, board, h]
        holder.append(holder)
        if k % 2:
            s.close()
            board.close()
        refs.append(weakref.ref(board))
        del s, board, h, holder
    gc.collect()
    assert [r() for r in refs] == [None] * 50
