"""The examples in the public docstrings run as written."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "linux_inet_diag",
    "linux_inet_diag._address",
    "linux_inet_diag._api",
    "linux_inet_diag._escape",
    "linux_inet_diag._kernel",
    "linux_inet_diag._netstat",
    "linux_inet_diag._records",
    "linux_inet_diag._stats",
    "linux_inet_diag._steps",
    "linux_inet_diag._tcpinfo",
]


@pytest.mark.linux
@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    """Every docstring example of the module passes under doctest."""
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0
