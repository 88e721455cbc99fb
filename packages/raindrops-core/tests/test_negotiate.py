"""Choosing the format from ``?format=`` and the ``Accept`` header."""

from __future__ import annotations

import pytest
from raindrops_core import Format, FormatError, negotiate

PROMETHEUS_SERVER_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, Format.TEXT),
        ("", Format.TEXT),
        ("*/*", Format.TEXT),
        ("text/plain", Format.TEXT),
        ("application/json", Format.JSON),
        ("text/html, application/json;q=0.9", Format.JSON),
        ("text/plain; version=0.0.4", Format.PROMETHEUS),
        ("application/openmetrics-text; version=1.0.0", Format.OPENMETRICS),
        (PROMETHEUS_SERVER_ACCEPT, Format.OPENMETRICS),
        ("text/plain;version=0.0.4;q=0.3,*/*;q=0.2", Format.PROMETHEUS),
        ("application/json;q=0.5, text/plain;q=0.5", Format.JSON),
        ("application/json;q=0, text/plain", Format.TEXT),
        ("image/png", Format.TEXT),
        ("application/json;q=bogus, */*", Format.TEXT),
    ],
)
def test_accept_header_picks_the_best_supported_format(
    accept: str | None, expected: Format
) -> None:
    """The highest-q supported media range wins, the earliest on ties, text by default."""
    assert negotiate(accept) is expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("format=json", Format.JSON),
        ("format=prometheus", Format.PROMETHEUS),
        ("format=prom", Format.PROMETHEUS),
        ("format=openmetrics", Format.OPENMETRICS),
        ("a=1&format=TEXT", Format.TEXT),
        ("other=1", Format.JSON),
    ],
)
def test_query_overrides_accept(query: str, expected: Format) -> None:
    """``?format=`` wins over the ``Accept`` header (here asking for JSON)."""
    assert negotiate("application/json", query) is expected


def test_unknown_query_format_is_an_error_naming_the_choices() -> None:
    """An unknown ``?format=`` raises FormatError (a ValueError) listing the allowed names."""
    with pytest.raises(FormatError) as info:
        negotiate(None, "format=xml")
    assert isinstance(info.value, ValueError)
    assert str(info.value) == (
        "unknown format 'xml'; allowed: json, openmetrics, prom, prometheus, text, txt"
    )
