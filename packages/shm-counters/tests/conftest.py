"""Test setup: the ``linux`` marker skips elsewhere; spawned workers import helpers."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Spawned processes re-import their target function by module name: put
# this folder on sys.path (multiprocessing passes sys.path to spawn children).
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if sys.platform.startswith("linux"):
        return
    skip = pytest.mark.skip(reason="needs Linux (/proc)")
    for item in items:
        if "linux" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def shm_path(tmp_path: Path) -> Iterator[str]:
    """A path for a named segment, on /dev/shm when it exists."""
    base = Path("/dev/shm")
    if base.is_dir():
        d = base / f"shmc-test-{tmp_path.name}"
        d.mkdir(exist_ok=True)
        yield str(d / "seg")
        for f in d.iterdir():
            f.unlink()
        d.rmdir()
    else:
        yield str(tmp_path / "seg")
