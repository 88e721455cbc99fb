"""Skip Linux-only tests elsewhere; shared loopback scenario helpers."""

from __future__ import annotations

import sys

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if sys.platform.startswith("linux"):
        return
    skip = pytest.mark.skip(reason="needs Linux netlink sock_diag and /proc")
    for item in items:
        if "linux" in item.keywords:
            item.add_marker(skip)
