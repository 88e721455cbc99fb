"""The compiled module: calls into it keep the GIL (see src/_ffi_build.py)."""

from __future__ import annotations

from shm_counters._native import lib


def test_calls_keep_the_gil() -> None:
    """A call into shm-counters' C runs with the GIL held (cffi's release is compiled out)."""
    # cffi's standard wrapper releases the GIL around the call, so this would
    # read 0; the builder's preamble redefines the macros that do it.
    assert lib.shmc_gil_held() == 1
