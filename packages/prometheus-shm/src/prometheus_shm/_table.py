"""Series table entries: what one shared value is, as bytes and as a record.

Each value prometheus_client creates (one per counter child, gauge child,
histogram bucket and sum, summary count and sum) is one *entry* of the
segment's series table, made once by the first process that creates it and
found by key by every other. The key is the UTF-8 JSON array::

    [type, mode, metric name, sample name, label names, label values, help, extra]

``mode`` is a gauge's ``multiprocess_mode`` ("" otherwise); ``extra`` is an
Enum's states or an Info's label dict (null otherwise). An entry owns one
value cell in every process row, or two (value, then timestamp) for the
kinds whose merge picks the most recent value.

This module is pure: no shared memory, only bytes and records.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass

from ._errors import LabelValueTooLongError

__all__ = [
    "MAX_KEY_BYTES",
    "MAX_LABEL_VALUE_BYTES",
    "Entry",
    "Merge",
    "cells_for",
    "decode_entry",
    "encode_key",
    "merge_of",
]

#: The longest label value accepted, in UTF-8 bytes.
MAX_LABEL_VALUE_BYTES = 1024
#: The longest whole key (names, label values, help text), in UTF-8 bytes.
MAX_KEY_BYTES = 16384


class Merge(enum.IntEnum):
    """How the values of one entry in every process row make one sample."""

    SUM = 1  # counters, histograms, summaries, gauge "sum": dead processes count
    LIVESUM = 2
    MIN = 3
    LIVEMIN = 4
    MAX = 5
    LIVEMAX = 6
    RECENT = 7  # two cells: value, timestamp (gauge "mostrecent", Info, Enum)
    LIVERECENT = 8
    ALL = 9  # one sample per process, alive or dead, labelled pid
    LIVEALL = 10

    @property
    def live_only(self) -> bool:
        """True for the ``live*`` modes: dead processes' values are dropped."""
        return self in _LIVE


_LIVE = frozenset({Merge.LIVESUM, Merge.LIVEMIN, Merge.LIVEMAX, Merge.LIVERECENT, Merge.LIVEALL})

_GAUGE_MODES = {
    "all": Merge.ALL,
    "liveall": Merge.LIVEALL,
    "sum": Merge.SUM,
    "livesum": Merge.LIVESUM,
    "min": Merge.MIN,
    "livemin": Merge.LIVEMIN,
    "max": Merge.MAX,
    "livemax": Merge.LIVEMAX,
    "mostrecent": Merge.RECENT,
    "livemostrecent": Merge.LIVERECENT,
}

_TYPES = frozenset({"counter", "gauge", "histogram", "summary", "info", "stateset"})


def merge_of(typ: str, mode: str) -> Merge:
    """The merge rule for a value of metric type ``typ`` (gauges: ``mode``).

    Example::

        >>> merge_of("gauge", "livesum"), merge_of("counter", "")
        (<Merge.LIVESUM: 2>, <Merge.SUM: 1>)
    """
    if typ == "gauge":
        try:
            return _GAUGE_MODES[mode]
        except KeyError:
            raise ValueError(
                f"gauge multiprocess_mode {mode!r} is not one of {sorted(_GAUGE_MODES)}"
            ) from None
    if typ in ("info", "stateset"):
        return Merge.RECENT
    if typ in _TYPES:
        return Merge.SUM
    raise ValueError(f"metric type {typ!r} is not one of {sorted(_TYPES)}")


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of the series table: a shared value and where it lives."""

    typ: str
    mode: str
    metric_name: str
    name: str
    labelnames: tuple[str, ...]
    labelvalues: tuple[str, ...]
    help: str
    extra: object
    first_cell: int
    ncells: int

    @property
    def merge(self) -> Merge:
        """How this value's per-process cells are merged."""
        return merge_of(self.typ, self.mode)


def cells_for(merge: Merge) -> int:
    """Value cells an entry of this merge rule takes in each row (2 with a timestamp)."""
    return 2 if merge in (Merge.RECENT, Merge.LIVERECENT) else 1


def encode_key(
    typ: str,
    mode: str,
    metric_name: str,
    name: str,
    labelnames: Sequence[str],
    labelvalues: Sequence[str],
    help_text: str,
    extra: object = None,
) -> bytes:
    """The key bytes of one value; checks label values and the key's length.

    Raises :class:`LabelValueTooLongError` naming the metric, the label and
    the limit.

    Example::

        >>> encode_key("counter", "", "req", "req_total", ["route"], ["/"], "Requests.")
        b'["counter","","req","req_total",["route"],["/"],"Requests.",null]'
    """
    values = [str(v) for v in labelvalues]
    for label, value in zip(labelnames, values, strict=False):
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > MAX_LABEL_VALUE_BYTES:
            raise LabelValueTooLongError(
                f"label {label!r} of metric {metric_name!r} is {size} bytes long (UTF-8);"
                f" at most {MAX_LABEL_VALUE_BYTES} are allowed"
            )
    key = json.dumps(
        [typ, mode, metric_name, name, list(labelnames), values, help_text, extra],
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode("utf-8", "surrogatepass")
    if len(key) > MAX_KEY_BYTES:
        raise LabelValueTooLongError(
            f"series of metric {metric_name!r} takes {len(key)} bytes (names, label values"
            f" and help text); at most {MAX_KEY_BYTES} are allowed"
        )
    return key


def decode_entry(key: bytes, first_cell: int, ncells: int) -> Entry:
    """Parse one entry's key; ``ValueError`` if it is not a key :func:`encode_key` makes.

    Example::

        >>> e = decode_entry(b'["gauge","max","g","g",[],[],"G.",null]', 3, 1)
        >>> e.metric_name, e.merge, e.first_cell
        ('g', <Merge.MAX: 5>, 3)
    """
    try:
        parts = json.loads(key.decode("utf-8", "surrogatepass"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"series key is not UTF-8 JSON: {exc}") from None
    if not isinstance(parts, list) or len(parts) != 8:
        raise ValueError("series key is not an array of 8 items")
    typ, mode, metric_name, name, labelnames, labelvalues, help_text, extra = parts
    strings = (typ, mode, metric_name, name, help_text)
    if not all(isinstance(s, str) for s in strings):
        raise ValueError("series key has a name that is not a string")
    if not (
        isinstance(labelnames, list)
        and isinstance(labelvalues, list)
        and len(labelnames) == len(labelvalues)
        and all(isinstance(s, str) for s in labelnames + labelvalues)
    ):
        raise ValueError("series key has malformed labels")
    merge = merge_of(typ, mode)
    if ncells != cells_for(merge):
        raise ValueError(f"series key of merge {merge.name} takes {cells_for(merge)} cells")
    return Entry(
        typ,
        mode,
        metric_name,
        name,
        tuple(labelnames),
        tuple(labelvalues),
        help_text,
        extra,
        first_cell,
        ncells,
    )
