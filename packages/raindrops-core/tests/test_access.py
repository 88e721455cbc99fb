"""The endpoint's allow-list of client networks."""

from __future__ import annotations

import pytest
from raindrops_core import ALLOW_ALL, DEFAULT_ALLOW, AccessList, ConfigError


@pytest.mark.parametrize(
    ("client", "allowed"),
    [
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.1", False),
        ("2001:db8::1", False),
        ("testclient", False),
        (None, True),
        ("", True),
    ],
)
def test_default_allows_loopback_and_unix_peers_only(client: str | None, allowed: bool) -> None:
    """By default only loopback clients and Unix-socket peers (no address) get in."""
    assert AccessList.parse(DEFAULT_ALLOW).allows(client) is allowed


def test_allow_all_lets_any_ip_in_but_not_a_non_address() -> None:
    """ALLOW_ALL admits every IPv4 and IPv6 client; a name that is no IP stays out."""
    acl = AccessList.parse(ALLOW_ALL)
    assert (acl.allows("203.0.113.9"), acl.allows("2001:db8::1"), acl.allows("bogus")) == (
        True,
        True,
        False,
    )


def test_networks_and_bare_addresses_are_accepted() -> None:
    """Entries may be networks (host bits allowed) or single addresses."""
    acl = AccessList.parse(["10.1.2.3/8", "192.0.2.7", "fd00::/8"])
    assert [acl.allows(a) for a in ("10.200.0.1", "192.0.2.7", "192.0.2.8", "fd12::1")] == [
        True,
        True,
        False,
        True,
    ]


@pytest.mark.parametrize(
    ("allow", "message"),
    [
        (
            ["10.0.0.0/33"],
            "allow entry '10.0.0.0/33' is not an IP network like '10.0.0.0/8' or '::1/128'",
        ),
        ("127.0.0.1", "allow must be a list of networks, not the single string '127.0.0.1'"),
        ([7], "allow entry 7 is not a string like '10.0.0.0/8'"),
    ],
)
def test_malformed_allow_list_is_a_config_error(allow: object, message: str) -> None:
    """A bad entry raises ConfigError (a ValueError) naming it and what is expected."""
    with pytest.raises(ConfigError) as info:
        AccessList.parse(allow)  # type: ignore[arg-type]
    assert str(info.value) == message
