"""Integration tests run real servers; they need Linux-style process groups."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip every integration test off POSIX: the harness uses process groups."""
    if sys.platform == "win32":
        skip = pytest.mark.skip(reason="integration tests need POSIX process groups")
        for item in items:
            item.add_marker(skip)
