"""Who may read the stats: the allow-list of networks and the request rule (Peer, refusal)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from raindrops_core import ALLOW_ALL, DEFAULT_ALLOW, AccessList, ConfigError
from raindrops_core.adapter import FORWARDING_HEADERS, Peer, listens_on_unix

ACL = AccessList.parse(DEFAULT_ALLOW)


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("fe80::1%eth0", False),
        ("10.0.0.1", False),
        ("2001:db8::1", False),
        ("testclient", False),
        (None, False),
        ("", False),
    ],
)
def test_default_networks_are_loopback_only(address: str | None, allowed: bool) -> None:
    """The default networks hold the loopback addresses; no address is in no network."""
    assert ACL.allows(address) is allowed


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


def test_proxied_must_be_a_bool_and_a_ready_list_passes_through() -> None:
    """``proxied`` takes True or False only; parse() returns an AccessList given as it is."""
    with pytest.raises(ConfigError) as info:
        AccessList.parse(DEFAULT_ALLOW, proxied="yes")  # type: ignore[arg-type]
    assert str(info.value) == "proxied must be True or False, not 'yes'"
    ready = AccessList.parse(["10.0.0.0/8"], proxied=True)
    assert AccessList.parse(ready) is ready


UNIX_VIA_PROXY = (
    "the request came over a Unix socket with X-Forwarded-For: a proxy relayed it, "
    "and its client is unknown"
)
NO_ADDRESS = (
    "the server gave no client address (REMOTE_ADDR, scope['client']), so the client is unknown"
)


@pytest.mark.parametrize(
    ("peer", "reason"),
    [
        (Peer("127.0.0.1"), None),
        (Peer("", unix=True), None),
        (Peer(None, unix=True), None),
        (Peer("", unix=True, forwarded=("x-forwarded-for",)), UNIX_VIA_PROXY),
        (Peer("203.0.113.9", unix=True, forwarded=("x-forwarded-for",)), UNIX_VIA_PROXY),
        (
            Peer("", unix=True, forwarded=("forwarded", "x-real-ip")),
            "the request came over a Unix socket with Forwarded, X-Real-IP: a proxy "
            "relayed it, and its client is unknown",
        ),
        (
            Peer(None, forwarded=("x-real-ip",)),
            "the request came with no client address with X-Real-IP: a proxy relayed it, "
            "and its client is unknown",
        ),
        (Peer(None), NO_ADDRESS),
        (Peer(""), NO_ADDRESS),
        (None, NO_ADDRESS),
        (
            Peer("127.0.0.1", forwarded=("x-forwarded-for",)),
            "the request carries X-Forwarded-For: a proxy relayed it (peer 127.0.0.1); to "
            "check the client address your server resolves from it, pass "
            "allow=AccessList.parse([...], proxied=True)",
        ),
        (
            "192.0.2.1",
            "client 192.0.2.1 is not in the allow-list (loopback only by default); to allow "
            "more, pass allow=['10.0.0.0/8', ...] or allow=ALLOW_ALL",
        ),
        (
            Peer("203.0.113.9", unix=True),
            "client 203.0.113.9 is not in the allow-list (loopback only by default); to allow "
            "more, pass allow=['10.0.0.0/8', ...] or allow=ALLOW_ALL",
        ),
    ],
)
def test_the_default_rule_refuses_unknown_and_relayed_clients(
    peer: Peer | str | None, reason: str | None
) -> None:
    """Loopback and local Unix peers get in; no address, or a proxy in between, is refused."""
    assert ACL.refusal(peer) == reason
    assert ACL.allows_request(peer) is (reason is None)


def test_proxied_checks_the_address_the_server_resolved() -> None:
    """With proxied=True a relayed TCP request is judged by its address; over Unix, never."""
    acl = AccessList.parse(["10.0.0.0/8"], proxied=True)
    relayed = ("x-forwarded-for",)
    assert acl.refusal(Peer("10.1.2.3", forwarded=relayed)) is None
    assert acl.refusal(Peer("203.0.113.9", forwarded=relayed)) == (
        "client 203.0.113.9 is not in the allow-list (loopback only by default); to allow "
        "more, pass allow=['10.0.0.0/8', ...] or allow=ALLOW_ALL"
    )
    assert acl.refusal(Peer("10.1.2.3", unix=True, forwarded=relayed)) == UNIX_VIA_PROXY


def test_a_client_text_in_the_reason_is_escaped() -> None:
    """An address a server resolved from a header is quoted with its control bytes escaped."""
    reason = ACL.refusal(Peer("\x1b[2J<b>\n"))
    assert reason == (
        "client \\x1b[2J<b>\\n is not in the allow-list (loopback only by default); to allow "
        "more, pass allow=['10.0.0.0/8', ...] or allow=ALLOW_ALL"
    )


@pytest.fixture
def unix_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """A connected AF_UNIX socket, as gunicorn's ``environ["gunicorn.socket"]`` over ``unix:``."""
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        yield a


def test_wsgi_peer_as_gunicorn_sets_it(unix_socket: socket.socket) -> None:
    """gunicorn over ``unix:``: REMOTE_ADDR "" and an AF_UNIX gunicorn.socket: a Unix peer."""
    tcp = socket.socket(socket.AF_INET)
    with tcp:
        environ: dict[str, Any] = {"REMOTE_ADDR": "127.0.0.1", "gunicorn.socket": tcp}
        assert Peer.from_wsgi(environ) == Peer("127.0.0.1", False, ())
    via = {
        "REMOTE_ADDR": "",
        "gunicorn.socket": unix_socket,
        "HTTP_X_FORWARDED_FOR": "203.0.113.9",
        "HTTP_FORWARDED": "for=203.0.113.9",
        "HTTP_X_REAL_IP": "203.0.113.9",
    }
    assert Peer.from_wsgi(via) == Peer("", True, FORWARDING_HEADERS)
    local = {"REMOTE_ADDR": "", "gunicorn.socket": unix_socket}
    assert Peer.from_wsgi(local) == Peer("", True, ())
    assert ACL.refusal(Peer.from_wsgi(local)) is None
    assert ACL.refusal(Peer.from_wsgi(via)) == (
        "the request came over a Unix socket with Forwarded, X-Forwarded-For, X-Real-IP: a "
        "proxy relayed it, and its client is unknown"
    )


def test_wsgi_without_remote_addr_is_no_address() -> None:
    """An environ without REMOTE_ADDR (or with a non-string one) is refused."""
    assert Peer.from_wsgi({}) == Peer(None, False, ())
    assert Peer.from_wsgi({"REMOTE_ADDR": None}) == Peer(None, False, ())
    assert ACL.refusal(Peer.from_wsgi({})) == NO_ADDRESS


@pytest.mark.parametrize(
    ("scope", "peer"),
    [
        (
            {"client": ("127.0.0.1", 5), "server": ("127.0.0.1", 80), "headers": []},
            Peer("127.0.0.1", False, ()),
        ),
        (
            {"client": None, "server": ["/run/app.sock", None], "headers": []},
            Peer(None, True, ()),
        ),
        (
            {
                "client": None,
                "server": ("/run/app.sock", None),
                "headers": [(b"X-Forwarded-For", b"203.0.113.9")],
            },
            Peer(None, True, ("x-forwarded-for",)),
        ),
        (
            {
                "client": ("203.0.113.9", 0),
                "server": ("/run/app.sock", None),
                "headers": [(b"x-forwarded-for", b"203.0.113.9")],
            },
            Peer("203.0.113.9", True, ("x-forwarded-for",)),
        ),
        ({"server": ("127.0.0.1", 80), "headers": []}, Peer(None, False, ())),
        ({"client": ("testclient", 50000), "headers": []}, Peer("testclient", False, ())),
    ],
)
def test_asgi_peer_as_uvicorn_sets_it(scope: dict[str, Any], peer: Peer) -> None:
    """uvicorn --uds says ``server == [path, None]``; forwarded headers are found by name."""
    assert Peer.from_asgi(scope) == peer


def test_asgi_with_neither_client_nor_server_asks_for_unix_listeners(tmp_path: Path) -> None:
    """hypercorn over ``unix:`` gives neither: a Unix peer once this process listens on Unix."""
    scope = {"client": None, "server": None, "headers": [(b"x-real-ip", b"1.2.3.4")]}
    before = listens_on_unix()
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(tmp_path / "s.sock"))
        listener.listen(1)
        assert listens_on_unix() is True
        assert Peer.from_asgi(scope) == Peer(None, True, ("x-real-ip",))
        assert Peer.from_asgi({"client": None, "server": None}) == Peer(None, True, ())
    assert before in (False, True)  # another test may have made one already
