"""The examples in the public docstrings run as written."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "prometheus_shm._table",
    "prometheus_shm._runtime",
    "prometheus_shm._values",
    "prometheus_shm._install",
    "prometheus_shm._collector",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    """Every docstring example of the module passes under doctest."""
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0
