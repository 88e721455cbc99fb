"""Skip tests marked ``linux`` elsewhere: their oracle is the Linux kernel."""

from __future__ import annotations

import sys

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``@pytest.mark.linux`` tests off Linux, saying why."""
    if sys.platform.startswith("linux"):
        return
    skip = pytest.mark.skip(reason="needs Linux (netlink sock_diag, /proc)")
    for item in items:
        if "linux" in item.keywords:
            item.add_marker(skip)
