"""The examples in Cells' and the liveness helpers' docstrings run as written."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize("name", ["shm_counters._cells", "shm_counters._liveness"])
def test_docstring_examples(name: str) -> None:
    """Every docstring example of the module passes under doctest."""
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0
