"""counter_struct: named counters in shared memory."""

from __future__ import annotations

import gc
import multiprocessing
from decimal import Decimal

import pytest
from shm_counters import (
    MAX,
    ClosedError,
    CounterIndexError,
    CounterStruct,
    CounterValueError,
    FieldNameError,
    counter_struct,
)

FORK = multiprocessing.get_context("fork")
Stats = counter_struct("Stats", ["calling", "writing"])


def test_fields_read_write_incr_decr() -> None:
    """Fields read, write, increment and decrement, returning new values."""
    s = Stats()
    assert s.incr_calling() == 1
    assert s.incr_calling(4) == 5
    assert s.decr_calling() == 4
    assert s.decr_writing() == MAX
    s.writing = 9
    assert (s.calling, s.writing) == (4, 9)
    assert s.to_dict() == {"calling": 4, "writing": 9}
    assert (s[0], s[1]) == (4, 9)
    assert list(s) == [4, 9]
    assert len(s) == 2
    assert repr(s) == "Stats(calling=4, writing=9)"


def test_class_shape() -> None:
    """The class is named, subclasses CounterStruct and lists its fields."""
    assert Stats.__name__ == "Stats"
    assert Stats.fields == ("calling", "writing")
    assert issubclass(Stats, CounterStruct)
    assert counter_struct("P", "a, b c").fields == ("a", "b", "c")


def test_fields_sit_on_separate_counters() -> None:
    """Field k is counter k of the underlying Counters."""
    s = Stats()
    s.incr_writing(3)
    assert s.counters.to_list() == [0, 3]
    assert s.path is None


def test_instances_are_independent() -> None:
    """Two anonymous instances do not share values."""
    a, b = Stats(), Stats()
    a.incr_calling()
    assert b.calling == 0


def test_positional_index_errors() -> None:
    """s[k] outside the fields raises CounterIndexError; non-ints TypeError."""
    s = Stats()
    with pytest.raises(CounterIndexError, match=r"^index 2 out of range for 2 fields"):
        s[2]
    with pytest.raises(CounterIndexError, match=r"^index -1 out of range for 2 fields"):
        s[-1]
    with pytest.raises(TypeError):
        s["calling"]  # type: ignore[index]


@pytest.mark.parametrize("amount", [-1, 2**64])
def test_bad_amounts_and_values(amount: int) -> None:
    """Out-of-range amounts and values raise CounterValueError, changing nothing."""
    s = Stats()
    with pytest.raises(CounterValueError, match=f"^amount {amount} out of range"):
        s.incr_calling(amount)
    with pytest.raises(CounterValueError, match=f"^amount {amount} out of range"):
        s.decr_writing(amount)
    with pytest.raises(CounterValueError, match=f"^value {amount} out of range"):
        s.calling = amount
    assert s.to_dict() == {"calling": 0, "writing": 0}


class _Index:
    """A numpy-like integer: not an int, but has __index__."""

    def __index__(self) -> int:
        return 1


@pytest.mark.parametrize(
    ("amount", "kind"), [(True, "bool"), (2.0, "float"), (Decimal("1.5"), "Decimal")]
)
def test_non_int_amounts_and_values(amount: object, kind: str) -> None:
    """incr_/decr_ amounts and field values refuse bool, float and Decimal; nothing changes."""
    s = Stats()
    for op, name in (
        (s.incr_calling, "amount"),
        (s.decr_writing, "amount"),
        (lambda v: setattr(s, "calling", v), "value"),
    ):
        with pytest.raises(TypeError) as info:
            op(amount)
        assert str(info.value) == f"{name} must be an int, not {kind}"
    with pytest.raises(TypeError) as info:
        s[amount]  # type: ignore[index]
    assert str(info.value) == f"field index must be an int, not {kind}"
    assert s.to_dict() == {"calling": 0, "writing": 0}


def test_numpy_like_amounts_values_and_indexes() -> None:
    """Objects with __index__ work as amounts, values and positional indexes."""
    s = Stats()
    assert s.incr_calling(_Index()) == 1  # type: ignore[arg-type]
    s.writing = _Index()
    assert s[_Index()] == 1  # type: ignore[index]
    assert s.to_dict() == {"calling": 1, "writing": 1}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ([], "fields must name at least one counter, got none"),
        ("", "fields must name at least one counter, got none"),
        (["a-b"], "field name 'a-b' is not a Python identifier"),
        (["1a"], "field name '1a' is not a Python identifier"),
        ([3], "field name 3 is not a Python identifier"),
        (["class"], "field name 'class' is a Python keyword"),
        (["_x"], "field name '_x' starts with an underscore (reserved)"),
        (["a", "b", "a"], "duplicate field name 'a'"),
        (["to_dict"], "field name 'to_dict' would hide a method"),
        (["close"], "field name 'close' would hide a method"),
        (["x", "incr_x"], "field name 'incr_x' clashes with the method of field 'x'"),
        (42, "fields must be an iterable of names, not int"),
    ],
)
def test_bad_field_names(fields: object, message: str) -> None:
    """Bad field lists raise FieldNameError (a ValueError) saying why."""
    with pytest.raises(FieldNameError) as info:
        counter_struct("S", fields)  # type: ignore[arg-type]
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)


def test_bad_struct_name() -> None:
    """A struct name that is not an identifier raises FieldNameError."""
    with pytest.raises(FieldNameError, match=r"^struct name 'a b' is not a Python identifier$"):
        counter_struct("a b", ["x"])


def test_closed_struct_raises() -> None:
    """After close, reads, writes and bound incr/decr raise ClosedError."""
    s = Stats()
    incr = s.incr_calling  # bound before close
    s.close()
    assert s.closed
    for op in (
        incr,
        s.decr_writing,
        lambda: s.calling,
        lambda: setattr(s, "writing", 1),
        lambda: s[0],
        s.to_dict,
        lambda: s.counters[0],
    ):
        with pytest.raises(ClosedError, match=r"^operation on closed (Stats|Counters)$"):
            op()
    assert repr(s) == "<Stats closed>"


def test_context_manager() -> None:
    """Leaving a with block closes the struct."""
    with Stats() as s:
        s.incr_calling()
    assert s.closed


def test_named_struct_is_shared(shm_path: str) -> None:
    """Two instances on one path share their fields."""
    a = Stats(path=shm_path)
    b = Stats(path=shm_path, create=False)
    a.incr_writing(2)
    assert b.writing == 2
    assert b.path == shm_path
    c = Stats(path=shm_path, zero=True)
    assert a.writing == 0
    assert c.to_dict() == {"calling": 0, "writing": 0}


def _work(s: CounterStruct, times: int) -> None:
    for _ in range(times):
        s.incr_calling()
        s.decr_writing()


def test_forked_processes_count_exactly() -> None:
    """3 forked processes x 100,000 incr/decr on a struct give exact values."""
    s = Stats()
    procs = [FORK.Process(target=_work, args=(s, 100_000)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert s.to_dict() == {"calling": 300_000, "writing": 2**64 - 300_000}


def test_bound_steps_count_and_return_new_values() -> None:
    """bind_incr/bind_decr give zero-argument callables that step a field by one."""
    s = Stats()
    enter, leave = s.bind_incr("calling"), s.bind_decr("calling")
    assert (enter(), enter(), leave()) == (1, 2, 1)
    assert s.bind_decr("writing")() == MAX
    assert s.to_dict() == {"calling": 1, "writing": MAX}


def test_bound_step_unknown_field() -> None:
    """Binding a field the struct does not have names it and the fields there are."""
    s = Stats()
    with pytest.raises(
        FieldNameError, match=r"^no field 'bytes' in Stats: fields are calling, writing$"
    ):
        s.bind_incr("bytes")
    with pytest.raises(FieldNameError, match=r"^no field 0 in Stats: fields are calling, writing$"):
        s.bind_decr(0)  # type: ignore[arg-type]


def test_bound_steps_raise_after_close_and_outlive_the_struct() -> None:
    """A bound step held past close() raises ClosedError; one outliving its struct still counts."""
    s = Stats()
    enter = s.bind_incr("calling")
    s.close()
    with pytest.raises(ClosedError, match=r"^operation on closed Stats$"):
        enter()
    with pytest.raises(ClosedError, match=r"^operation on closed Stats$"):
        s.bind_incr("calling")
    t = Stats()
    step = t.bind_incr("writing")
    counters = t.counters
    del t
    gc.collect()
    assert (step(), step()) == (1, 2)  # the mapping is kept alive by the step itself
    assert counters.to_list() == [0, 2]


def _bound_work(step: object, times: int) -> None:
    for _ in range(times):
        step()  # type: ignore[operator]


def test_bound_steps_count_exactly_across_forks() -> None:
    """3 forked processes x 100,000 calls of one bound step give an exact total."""
    s = Stats()
    step = s.bind_incr("writing")
    procs = [FORK.Process(target=_bound_work, args=(step, 100_000)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert s.to_dict() == {"calling": 0, "writing": 300_000}


def test_bound_add_and_store() -> None:
    """bind_add adds amounts and bind_store writes values, one C call each; close retires them."""
    s = Stats()
    add, store = s.bind_add("calling"), s.bind_store("writing")
    assert (add(5), add(0), add(MAX)) == (5, 5, 4)  # modulo 2**64
    assert store(7) is None
    assert s.to_dict() == {"calling": 4, "writing": 7}
    with pytest.raises(OverflowError):
        add(-1)
    with pytest.raises(TypeError):
        store(1.5)  # type: ignore[arg-type]
    assert s.to_dict() == {"calling": 4, "writing": 7}  # nothing written by refused calls
    s.close()
    for op in (add, store):
        with pytest.raises(ClosedError, match=r"^operation on closed Stats$"):
            op(1)
