"""raindrops_core.adapter: the protocol helpers adapters share."""

from __future__ import annotations

import raindrops_core
from raindrops_core.adapter import AccessList, Peer, Reply, Steps, app_path, asgi_header, asgi_query


def test_asgi_header_is_the_first_of_that_name_case_insensitively() -> None:
    """The first header named so, whatever its case, latin-1 decoded; None when absent."""
    scope = {"headers": [(b"Accept", b"a/\xe9"), (b"accept", b"second")]}
    assert asgi_header(scope, b"accept") == "a/\xe9"
    assert asgi_header(scope, b"x-missing") is None
    assert asgi_header({}, b"accept") is None


def test_asgi_query_decodes_latin1_and_defaults_to_empty() -> None:
    """The raw query string as latin-1 text; no query string is ''."""
    assert asgi_query({"query_string": b"format=json&x=%E9\xe9"}) == "format=json&x=%E9\xe9"
    assert asgi_query({}) == ""


def test_the_plumbing_is_the_packages_own() -> None:
    """The adapter's access rule, steps and replies are the very ones the state uses."""
    state = raindrops_core.RaindropsState(listeners=[], segment="anonymous")
    assert AccessList is raindrops_core.AccessList
    assert isinstance(state.access, AccessList)
    assert isinstance(state.prepare(), Steps)
    refused = state.respond("HEAD", Peer("192.0.2.1"), None, "")
    assert isinstance(refused, Reply)
    assert (refused.status, refused.body) == (403, b"")
    assert app_path("/ops/_raindrops", "/ops") == "/_raindrops"
