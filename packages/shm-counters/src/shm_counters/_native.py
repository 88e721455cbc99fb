"""The only module that touches the compiled ``_ffi`` extension.

It also reads the machine constants (cache line, page size) and tells the C
side the slot stride once, at import.
"""

from __future__ import annotations

import mmap
import os
from typing import Any

from ._ffi import ffi, lib

__all__ = [
    "CACHE_LINE_SIZE",
    "CLAIMING",
    "H_DATA",
    "MAX",
    "PAGE_SIZE",
    "at",
    "cas",
    "ffi",
    "lib",
    "map_base",
    "new_u8",
    "new_u64",
]

MAX = 2**64 - 1
CLAIMING: int = lib.SHMC_CLAIMING
H_DATA: int = lib.SHMC_H_DATA

_SYSFS_LINE = "/sys/devices/system/cpu/cpu0/cache/index0/coherency_line_size"


def _valid_line(value: int) -> bool:
    return 8 <= value <= 4096 and value & (value - 1) == 0


def _read_cache_line_size() -> int:
    """Return the data cache line size of this machine, 64 when unknown."""
    try:
        with open(_SYSFS_LINE, "rb") as f:
            value = int(f.read().strip())
        if _valid_line(value):
            return value
    except (OSError, ValueError):
        pass
    try:
        value = os.sysconf("SC_LEVEL1_DCACHE_LINESIZE")
        if _valid_line(value):
            return value
    except (OSError, ValueError):
        pass
    return 64


CACHE_LINE_SIZE = _read_cache_line_size()
PAGE_SIZE = mmap.PAGESIZE
lib.shmc_set_stride(CACHE_LINE_SIZE)


def map_base(mm: mmap.mmap) -> Any:
    """Return a ``char[]`` cdata over a whole mapping; it keeps the mapping alive.

    Pointers into the mapping are derived from it with :func:`at`; whoever
    holds such a pointer also holds this object, so the memory stays mapped
    for as long as any pointer into it can be used.
    """
    return ffi.from_buffer("char[]", mm)


def at(base: Any, offset: int, ctype: str = "uint64_t *") -> Any:
    """A raw pointer ``offset`` bytes into ``base`` (does not keep it alive)."""
    return ffi.cast(ctype, base + offset)


def new_u64(n: int) -> Any:
    """Return a zeroed private ``uint64_t[n]``."""
    return ffi.new("uint64_t[]", n)


def new_u8(n: int) -> Any:
    """Return a zeroed private ``uint8_t[n]``."""
    return ffi.new("uint8_t[]", n)


def cas(cell: Any, expected: int, desired: int) -> bool:
    """Compare-and-swap one cell (sequentially consistent)."""
    return bool(lib.shmc_cas(cell, expected, desired))
