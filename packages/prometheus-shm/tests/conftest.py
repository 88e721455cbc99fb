"""Test setup: installs are undone after each test; named segments live in a temp dir."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import prometheus_shm
import pytest

# Spawned processes re-import helpers by module name: put this folder on sys.path.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture(autouse=True)
def _uninstall_after() -> Iterator[None]:
    """Every test starts and ends with prometheus_client's own value class."""
    prometheus_shm.uninstall()
    yield
    prometheus_shm.uninstall()


@pytest.fixture
def seg_dir() -> Iterator[str]:
    """A private directory for segment files, on /dev/shm when it exists."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    d = tempfile.mkdtemp(prefix="promshm-test-", dir=base)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def seg_path(seg_dir: str) -> str:
    """A path for a named segment (not created yet)."""
    return os.path.join(seg_dir, "segment")
