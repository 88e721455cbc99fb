"""Shared fixtures: a settable clock, private scoreboards, and the ``linux`` marker's skip."""

from __future__ import annotations

import sys

import pytest
from process_utilization import SEGMENT_ENV
from shm_counters import SERVER_DIR_ENV


@pytest.fixture(autouse=True)
def _private_scoreboards(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Every middleware a test builds keeps its rows in anonymous memory, unless it says so.

    The default (the server's own segment, found from its sockets) has
    tests of its own, which delete ``$PROCESS_UTILIZATION_SEGMENT``; the
    server segment directory is a temp one, never the real ``/dev/shm``.
    """
    monkeypatch.setenv(SEGMENT_ENV, "anonymous")
    monkeypatch.setenv(SERVER_DIR_ENV, str(tmp_path_factory.mktemp("shm")))


#: What ``FakeClock.wall`` adds to the monotonic reading: a wall-clock epoch.
EPOCH = 1_700_000_000.0


class FakeClock:
    """A clock that reads whatever the test set, in seconds.

    Calling it is the monotonic clock; ``wall`` is a wall clock that moves
    with it, ``EPOCH`` seconds ahead.
    """

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def wall(self) -> float:
        return EPOCH + self.t


@pytest.fixture
def clock() -> FakeClock:
    """A fake monotonic clock starting at 1000 s."""
    return FakeClock()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``@pytest.mark.linux`` tests off Linux."""
    if sys.platform.startswith("linux"):
        return
    skip = pytest.mark.skip(reason="needs Linux (/proc, CLOCK_MONOTONIC shared)")
    for item in items:
        if "linux" in item.keywords:
            item.add_marker(skip)
