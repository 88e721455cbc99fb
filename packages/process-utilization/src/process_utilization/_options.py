"""Checks of the middleware's options: a bad value raises ConfigError naming it and what is allowed.

The checks of one part live with that part (``statsd`` in ``_statsd``,
``report_to`` in ``_report``, ``stats_path`` and ``allow`` in
``_endpoint``, ``segment`` and ``latency_buckets`` in ``_board``); these
are the plain ones.
"""

from __future__ import annotations

from ._errors import ConfigError

__all__ = ["check_callable", "check_seconds", "check_slots", "check_text"]


def check_seconds(name: str, value: object, *, allow_none: bool = False) -> None:
    """``value`` must be a positive finite number of seconds (or ``None`` if allowed).

    Example::

        check_seconds("window", 0)  # ConfigError: window must be a positive number ...
    """
    if value is None and allow_none:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not value > 0
        or value == float("inf")
    ):
        allowed = "a positive number of seconds" + (" or None" if allow_none else "")
        raise ConfigError(f"{name} must be {allowed}, got {value!r}")


def check_callable(name: str, value: object) -> None:
    """``value`` must be a callable (a clock returning seconds)."""
    if not callable(value):
        raise ConfigError(f"{name} must be a callable returning seconds, got {value!r}")


def check_text(name: str, value: object) -> None:
    """``value`` must be ``None`` or a string."""
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{name} must be None or a string, got {value!r}")


def check_slots(value: object) -> None:
    """``value`` must be a positive int (the rows of a scoreboard)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"slots must be a positive integer, got {value!r}")
